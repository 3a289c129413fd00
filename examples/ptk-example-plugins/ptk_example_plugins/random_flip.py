"""Attack ``random-flip``: relabel ``budget`` random source-class training images as the target class.

The untargeted baseline for ptk's ``labelflip``: same classes, same number of
flipped labels, but the images are drawn at random instead of being the ones
nearest the target in feature space. Comparing the two shows what the study's
nearest-neighbour selection adds.
"""

from __future__ import annotations

from typing import Any

import torch

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, UsageError, hookimpl


def at_least_zero(value: int) -> str | None:
    """Option check: an error message for a bad value, None for a good one."""
    return None if value >= 0 else f"must be >= 0, got {value}"


class RandomFlip(Attack):
    name = "random-flip"
    description = "relabel `budget` random training images of the source class as the target class"
    options = [Option("budget", int, 250, "number of training labels to flip", check=at_least_zero)]

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        # Runs before any training, so an impossible budget costs a second, not a run.
        available = int((data.y_train == source).sum())
        if options["budget"] > available:
            raise UsageError(
                f"random-flip.budget={options['budget']} is more than the {available} training images of the "
                f"source class {data.classes[source]!r}; lower -o random-flip.budget or raise --subset"
            )

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        source, target = ctx.target.source_class, ctx.target.target_class
        pool = (ctx.data.y_train == source).nonzero().squeeze(1)
        # A CPU generator seeded from the run's seed: the same run flips the same images on any device.
        gen = torch.Generator().manual_seed(ctx.seed)
        pick = torch.randperm(len(pool), generator=gen)[: options["budget"]].to(pool.device)
        chosen = pool[pick].sort().values
        labels = ctx.data.y_train.clone()
        labels[chosen] = target
        return Poisoning(y_train=labels, poison_indices=chosen,
                         details={"budget": options["budget"], "pool_size": len(pool)})


@hookimpl
def register_attacks(register):
    register(RandomFlip())
