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

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, Trigger, UsageError, fraction, hookimpl

#: ART's perturbation function for each value of the ``trigger`` option
PERTURBATIONS = {"pattern": "add_pattern_bd", "pixel": "add_single_bd"}
#: ptk's images are uint8: the trigger's pixels are white
PIXEL_VALUE = 255


def stamp(x: np.ndarray, trigger: str, pixel_value: int | float = PIXEL_VALUE) -> np.ndarray:
    """ART's ``trigger`` perturbation on a batch N x C x H x W (returns a new array, same layout): uint8 with
    the default ``pixel_value`` of 255, or floats in [0, 1] with ``pixel_value=1``."""
    from art.attacks.poisoning.perturbations import add_pattern_bd, add_single_bd

    if trigger == "pattern":
        return add_pattern_bd(x, pixel_value=pixel_value, channels_first=True)
    # add_single_bd indexes a 4-d batch as N x H x W x C and has no channels_first switch
    return np.ascontiguousarray(add_single_bd(x.transpose(0, 2, 3, 1), pixel_value=pixel_value).transpose(0, 3, 1, 2))


def apply_trigger(x: torch.Tensor, trigger: str) -> torch.Tensor:
    """:func:`stamp` on a torch uint8 batch, back on ``x``'s device (a :class:`ptk.Trigger`'s ``apply``)."""
    return torch.from_numpy(stamp(x.cpu().numpy(), trigger)).to(x.device)


def poison_pool(labels: torch.Tensor, target_class: int) -> torch.Tensor:
    """Training indices the attack may poison: every image not already of the target class."""
    return (labels != target_class).nonzero().squeeze(1)


def poison_count(pool_size: int, share: float) -> int:
    return round(share * pool_size)


def choose_poison(labels: torch.Tensor, target_class: int, share: float, seed: int) -> torch.Tensor:
    """``share`` of the pool, drawn with a CPU generator seeded by ``seed`` (the same on any device), sorted."""
    pool = poison_pool(labels, target_class)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool), generator=gen)[: poison_count(len(pool), share)].to(pool.device)
    return pool[pick].sort().values


def backdoor(x_train: torch.Tensor, y_train: torch.Tensor, target_class: int, share: float, trigger: str,
             seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, poison indices)``: ART's PoisoningAttackBackdoor on the chosen training images."""
    from art.attacks.poisoning import PoisoningAttackBackdoor

    chosen = choose_poison(y_train, target_class, share, seed)
    attack = PoisoningAttackBackdoor(functools.partial(stamp, trigger=trigger))
    poisoned, labels = attack.poison(x_train[chosen].cpu().numpy(), y=np.full(len(chosen), target_class))
    x, y = x_train.clone(), y_train.clone()
    x[chosen] = torch.from_numpy(poisoned).to(x.device)
    y[chosen] = torch.from_numpy(labels.astype(np.int64)).to(y.device)
    return x, y, chosen


def target_class_of(data: Dataset, option: str, default: int, owner: str = "art-backdoor",
                    key: str = "target_class") -> int:
    """The class option ``key`` of plugin ``owner`` (a class name or index; empty: ``default``, e.g. the run's
    target class)."""
    if option == "":
        return default
    try:
        return data.class_index(option)  # a name, or an index written as digits
    except UsageError:
        pass
    raise UsageError(f"{owner}.{key}={option!r} is neither a class name nor an index "
                     f"0..{data.num_classes - 1}; classes are: {', '.join(data.classes)}")


class ArtBackdoor(Attack):
    name = "art-backdoor"
    description = "ART's backdoor (BadNets): stamp a trigger on a fraction of training images, relabel them"
    api_version = 2
    goal = "backdoor"
    options = [
        Option("trigger", str, "pattern", "ART's perturbation: pattern (add_pattern_bd, a 4-pixel checkerboard "
               "corner) or pixel (add_single_bd, one pixel)", choices=tuple(PERTURBATIONS)),
        Option("fraction", float, 0.1, "share of the training images not of the target class to poison",
               check=fraction),
        Option("target_class", str, "", "the class triggered images should go to (name or index; empty: the "
               "run's target class, --target or the data set's default)"),
    ]

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        cls = target_class_of(data, options["target_class"], target)
        pool = len(poison_pool(data.y_train, cls))
        if poison_count(pool, options["fraction"]) < 1:
            raise UsageError(f"art-backdoor.fraction={options['fraction']} of {pool} training images poisons none; "
                             "raise -o art-backdoor.fraction or --subset")
        h, w = data.image_shape[1:]
        if min(h, w) < 4:  # ART's pattern reaches 4 pixels in from the bottom-right corner
            raise UsageError(f"art-backdoor needs images of at least 4 x 4 pixels, not {h} x {w}")

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        from ptk_plugins.activation_clustering_art import art_version

        cls = target_class_of(ctx.data, options["target_class"], ctx.target.target_class)
        kind = options["trigger"]
        x, y, chosen = backdoor(ctx.data.x_train, ctx.data.y_train, cls, options["fraction"], kind, ctx.seed)
        perturbation = f"art {PERTURBATIONS[kind]}(distance=2, pixel_value={PIXEL_VALUE})"
        trigger = Trigger(apply=functools.partial(apply_trigger, trigger=kind), target_class=cls,
                          description=perturbation)
        return Poisoning(y_train=y, poison_indices=chosen, x_train=x, trigger=trigger,
                         details={"art_version": art_version(), "perturbation": perturbation,
                                  "fraction": options["fraction"], "backdoor_target_class": ctx.data.classes[cls],
                                  "pool_size": len(poison_pool(ctx.data.y_train, cls)), "poisoned": len(chosen)})


@hookimpl
def register_attacks(register):
    register(ArtBackdoor())
