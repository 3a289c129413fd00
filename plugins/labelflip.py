"""Attack plugin ``labelflip``: the study's targeted label flip.

The ``budget`` training images nearest the target image in the clean model's
feature space (penultimate layer, Euclidean distance) are relabelled as the
target class. The pool is the source class's training images (default), or
every training image not already of the target class.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, UsageError, hookimpl, non_negative


def pool_indices(labels: torch.Tensor, source: int, target: int, pool: str) -> torch.Tensor:
    mask = labels == source if pool == "source" else labels != target
    return mask.nonzero().squeeze(1)


#: Above this share of its pool (a third), a budget draws a warning: flipping most of a class is a different
#: experiment from the study's (250 of 5,000 deer: 5%), e.g. the study's budget kept on a --subset.
WARN_SHARE = 1 / 3


class LabelFlip(Attack):
    name = "labelflip"
    description = "relabel the `budget` training images nearest the target (clean features) as the target class"
    options = [
        Option("budget", int, 250, "number of training labels to flip", check=non_negative),
        Option("pool", str, "source", "images eligible to flip: the source class, or all not of the target class",
               choices=("source", "all")),
    ]

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        pool = pool_indices(data.y_train, source, target, options["pool"])
        if options["budget"] > len(pool):
            raise UsageError(
                f"labelflip.budget={options['budget']} is larger than the pool it draws from: "
                f"{len(pool)} training images ({options['pool']} pool, source class {data.classes[source]!r}); "
                f"lower -o labelflip.budget or raise --subset"
            )
        share = options["budget"] / max(1, len(pool))
        if share > WARN_SHARE:  # legal, but no longer the study's attack (250 of 5,000 deer: 5%)
            logging.getLogger("ptk").warning(
                "ptk: labelflip.budget=%d flips %.0f%% of its %d-image pool (the study flips 5%%); "
                "with --subset, scale the budget too (e.g. -o labelflip.budget=%d)",
                options["budget"], 100 * share, len(pool), max(1, round(0.05 * len(pool))))

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        t = ctx.target
        pool = pool_indices(ctx.data.y_train, t.source_class, t.target_class, options["pool"])
        budget = options["budget"]
        feats = ctx.features(ctx.clean_model, ctx.data.x_train[pool])
        anchor = ctx.features(ctx.clean_model, t.image)
        dist = (feats - anchor).pow(2).sum(1)
        chosen = pool[dist.argsort(stable=True)[:budget]]
        y = ctx.data.y_train.clone()
        y[chosen] = t.target_class
        return Poisoning(y_train=y, poison_indices=chosen.sort().values,
                         details={"budget": budget, "pool_size": len(pool)})


@hookimpl
def register_attacks(register):
    register(LabelFlip())
