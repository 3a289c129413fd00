"""What ptk's two ART-backed clean-label attacks share (``art-gradient-matching``, ``art-bullseye-polytope``):
the surrogate model as ART sees it, the seeding of ART's global random number generators, and the round
trip of ART's float poisons back to ptk's uint8 images.

Not a plugin (no entry point): imported by the two attack plugins when they run.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

#: ptk's images are uint8: an ART perturbation budget of ``epsilon / LEVELS`` is ``epsilon`` grey levels
LEVELS = 255


def levels(value: float) -> str | None:
    """Option check for a budget in grey levels: below one level, rounding to uint8 erases every poison."""
    if value >= 1:
        return None
    hint = f"; ART's epsilon={value} is epsilon={value * LEVELS:g} here" if value > 0 else ""
    return (f"must be at least 1 (grey levels of {LEVELS}: uint8 images cannot move by less than one level), "
            f"got {value}{hint}")


def surrogate(network: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device):
    """An ART PyTorchClassifier over a *copy* of ``network`` (floats in [0, 1] in, logits out, its last layer
    the penultimate features; see :class:`ptk_plugins.activation_clustering_art.FeaturesLast`).

    A copy, because ART's attacks back-propagate into the model's parameters (gradient matching's loss is a
    gradient of a gradient) and move it to their device; the run's clean model stays as it was.
    """
    from ptk_plugins.activation_clustering_art import art_classifier

    return art_classifier(copy.deepcopy(network).eval(), image_shape, num_classes, device)



def to_uint8(poisoned: np.ndarray, original: torch.Tensor, epsilon: float) -> torch.Tensor:
    """ART's poisons (floats in [0, 1], N x C x H x W) as uint8 images on ``original``'s device.

    Each pixel is rounded to the nearest grey level, so a perturbation under half a level (0.5 / 255)
    vanishes, and then held within ``epsilon`` whole levels of the original pixel (rounding could otherwise
    take a non-integer budget up to half a level past it).
    """
    base = original.cpu().numpy().astype(np.int16)
    rounded = np.rint(np.asarray(poisoned, dtype=np.float64) * LEVELS).astype(np.int16)
    bound = int(np.floor(epsilon + 1e-9))
    out = np.clip(np.clip(rounded, base - bound, base + bound), 0, LEVELS).astype(np.uint8)
    return torch.from_numpy(out).to(original.device)


def perturbation_stats(before: torch.Tensor, after: torch.Tensor) -> dict[str, float | int]:
    """What the uint8 poisons changed, for ``details``: the largest and mean absolute change (grey levels,
    mean over all pixels of the poisoned images) and how many images rounding left unchanged."""
    diff = (after.to(torch.int16) - before.to(torch.int16)).abs()
    changed = diff.flatten(1).amax(1) > 0
    return {"max_change_levels": int(diff.max()) if diff.numel() else 0,
            "mean_change_levels": round(float(diff.float().mean()), 4) if diff.numel() else 0.0,
            "unchanged_after_rounding": int((~changed).sum())}
