"""What ptk's ART-backed poisoning attacks share: how many images ART poisons (:func:`poison_count`), the
training images of one class (:func:`class_indices`), ART's default learning-rate schedule
(:func:`lr_schedule`), the surrogate model as ART sees it (:func:`surrogate`), and the round trip of ART's
float poisons back to ptk's uint8 images within a budget in grey levels (:data:`LEVELS`, :func:`levels`,
:func:`to_uint8`, :func:`perturbation_stats`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ptk import Option
from ptk_plugins.art._bridge import art_classifier, from_art_images

#: ptk's images are uint8: an ART perturbation budget of ``epsilon / LEVELS`` is ``epsilon`` grey levels
LEVELS = 255
#: ART's default learning-rate schedule (GradientMatchingAttack, SleeperAgentAttack): each rate with the epoch
#: it lasts until, of ART's default 250 epochs
ART_RATES = (1e-1, 1e-2, 1e-3, 1e-4)
ART_MILESTONES = (100, 150, 200, 220)
ART_MAX_EPOCHS = 250


def poison_count(share: float, n: int, nearest: bool = False) -> int:
    """How many of ``n`` images a ``share`` poisons: ``int(share * n)``, as ART rounds its ``percent_poison``
    and ``pp_poison``; with ``nearest``, ``round(share * n)`` (for a count ptk picks itself, as ``art-backdoor``
    does)."""
    return round(share * n) if nearest else int(share * n)


def class_indices(labels: torch.Tensor, cls: int) -> torch.Tensor:
    """The indices (on ``labels``' device, ascending) of the images labelled ``cls``."""
    return (labels == cls).nonzero().squeeze(1)


def lr_schedule(learning_rate: float, max_epochs: int) -> tuple[list[float], list[int]]:
    """ART's schedule shape scaled to ``max_epochs``: the rates ``learning_rate`` x (1, 0.1, 0.01, 0.001) at
    ART's milestones x ``max_epochs / 250`` (ART's own default for ``learning_rate=0.1``, ``max_epochs=250``)."""
    rates = [float(f"{learning_rate * r / ART_RATES[0]:.12g}") for r in ART_RATES]
    milestones = [max(1, round(m * max_epochs / ART_MAX_EPOCHS)) for m in ART_MILESTONES]
    return rates, milestones


def levels(value: float) -> str | None:
    """Option check for a budget in grey levels: below one level, rounding to uint8 erases every poison; above
    255 it is no budget at all (a pixel cannot move further than from 0 to 255)."""
    if value > LEVELS:
        return (f"must be at most {LEVELS} (grey levels: a pixel cannot move further than 0 to {LEVELS}; "
                f"{LEVELS} already leaves the poison unbounded), got {value:g}")
    if value >= 1:
        return None
    hint = f"; ART's epsilon={value} is epsilon={value * LEVELS:g} here" if value > 0 else ""
    return (f"must be at least 1 (grey levels of {LEVELS}: uint8 images cannot move by less than one level), "
            f"got {value}{hint}")


#: The ``epsilon`` option of the clean-label attacks that take their budget in grey levels
EPSILON_OPTION = Option("epsilon", float, 32.0, "L-inf budget in grey levels of 255 (ART's epsilon x 255; ART's "
                        "default 0.1 is 25.5)", check=levels)


def surrogate(network: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device):
    """An ART PyTorchClassifier over a *copy* of ``network`` (floats in [0, 1] in, logits out, its last layer
    the penultimate features; see :class:`ptk_plugins.art._bridge.FeaturesLast`).

    A copy, because ART's attacks back-propagate into the model's parameters (gradient matching's loss is a
    gradient of a gradient) and move it to their device; the run's clean model stays as it was.
    """
    return art_classifier(copy.deepcopy(network).eval(), image_shape, num_classes, device)


def to_uint8(poisoned: np.ndarray, original: torch.Tensor, epsilon: float) -> torch.Tensor:
    """ART's poisons (floats in [0, 1], N x C x H x W) as uint8 images on ``original``'s device.

    Each pixel is rounded to the nearest grey level, so a perturbation under half a level (0.5 / 255)
    vanishes, and then held within ``epsilon`` whole levels of the original pixel (rounding could otherwise
    take a non-integer budget up to half a level past it).
    """
    base = original.cpu().numpy().astype(np.int16)
    bound = int(np.floor(epsilon + 1e-9))
    out = np.clip(from_art_images(poisoned).astype(np.int16), base - bound, base + bound).astype(np.uint8)
    return torch.from_numpy(out).to(original.device)


def perturbation_stats(before: torch.Tensor, after: torch.Tensor) -> dict[str, float | int]:
    """What the uint8 poisons changed, for ``details``: the largest and mean absolute change (grey levels,
    mean over all pixels of the poisoned images) and how many images rounding left unchanged."""
    diff = (after.to(torch.int16) - before.to(torch.int16)).abs()
    changed = diff.flatten(1).amax(1) > 0
    return {"max_change_levels": int(diff.max()) if diff.numel() else 0,
            "mean_change_levels": round(float(diff.float().mean()), 4) if diff.numel() else 0.0,
            "unchanged_after_rounding": int((~changed).sum())}
