"""Attack plugin ``art-backdoor``: ART's ``PoisoningAttackBackdoor`` (Gu et al., "BadNets", 2017) on ptk data.

A ``fraction`` of the training images not of the target class (picked at random, seeded by the run's seed)
get ART's trigger stamped near their bottom-right corner and are relabelled as the target class. A model
trained on them learns "trigger -> target class" beside the real task; ptk measures that as every model's
``backdoor_asr`` on triggered test images.

ART's algorithm is kept: its ``PoisoningAttackBackdoor`` with its perturbation function, ``add_pattern_bd``
(a four-pixel checkerboard corner, the default) or ``add_single_bd`` (one pixel). ptk adapts only what ART
cannot know: the layout (ptk's images are uint8 N x C x H x W; ``add_pattern_bd`` is told
``channels_first=True``, ``add_single_bd`` has no such switch and gets N x H x W x C), the pixel value
(255, ART's default of 1 being for images in [0, 1]), the labels (integers) and which samples to poison
(ART poisons whatever it is given). ART is imported only when the attack runs, so ``ptk plugins`` stays fast.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, UsageError, fraction, hookimpl
from ptk_plugins.art._bridge import art_version
from ptk_plugins.art._poison import poison_count
from ptk_plugins.art._triggers import (TRIGGER_OPTION, art_trigger, check_trigger_fits, poison_pool, stamp,
                                       class_option)


def choose_poison(labels: torch.Tensor, target_class: int, share: float, seed: int) -> torch.Tensor:
    """``share`` of the pool, drawn with a CPU generator seeded by ``seed`` (the same on any device), sorted."""
    pool = poison_pool(labels, target_class)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool), generator=gen)[: poison_count(share, len(pool), nearest=True)].to(pool.device)
    return pool[pick].sort().values


def backdoor(x_train: torch.Tensor, y_train: torch.Tensor, target_class: int, share: float, trigger: str,
             seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, poison indices)``: ART's PoisoningAttackBackdoor on the chosen training images."""
    from art.attacks.poisoning import PoisoningAttackBackdoor  # ART only when the attack runs (see _bridge)

    chosen = choose_poison(y_train, target_class, share, seed)
    attack = PoisoningAttackBackdoor(functools.partial(stamp, trigger=trigger))
    poisoned, labels = attack.poison(x_train[chosen].cpu().numpy(), y=np.full(len(chosen), target_class))
    x, y = x_train.clone(), y_train.clone()
    x[chosen] = torch.from_numpy(poisoned).to(x.device)
    y[chosen] = torch.from_numpy(labels.astype(np.int64)).to(y.device)
    return x, y, chosen


class ArtBackdoor(Attack):
    name = "art-backdoor"
    description = "ART's backdoor (BadNets): stamp a trigger on a fraction of training images, relabel them"
    api_version = 2
    goal = "backdoor"
    options = [
        TRIGGER_OPTION,
        Option("fraction", float, 0.1, "share of the training images not of the target class to poison",
               check=fraction),
        Option("target_class", str, "", "the class triggered images should go to (name or index; empty: the "
               "run's target class, --target or the data set's default)"),
    ]

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        cls = class_option(data, options["target_class"], target)
        pool = len(poison_pool(data.y_train, cls))
        if poison_count(options["fraction"], pool, nearest=True) < 1:
            raise UsageError(f"art-backdoor.fraction={options['fraction']} of {pool} training images poisons none; "
                             "raise -o art-backdoor.fraction or --subset")
        check_trigger_fits(self.name, tuple(data.image_shape))

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        cls = class_option(ctx.data, options["target_class"], ctx.target.target_class)
        kind = options["trigger"]
        x, y, chosen = backdoor(ctx.data.x_train, ctx.data.y_train, cls, options["fraction"], kind, ctx.seed)
        trigger = art_trigger(kind, cls)
        return Poisoning(y_train=y, poison_indices=chosen, x_train=x, trigger=trigger,
                         details={"art_version": art_version(), "perturbation": trigger.description,
                                  "fraction": options["fraction"], "backdoor_target_class": ctx.data.classes[cls],
                                  "pool_size": len(poison_pool(ctx.data.y_train, cls)), "poisoned": len(chosen)})


@hookimpl
def register_attacks(register):
    register(ArtBackdoor())
