"""Batched augmentation on the training device: random crop with padding and horizontal flip.

Works on a whole uint8 batch at once with index arithmetic, so no per-image
PIL or Python work sits in the training loop. The random numbers are drawn on
the CPU (so a seed fixes the augmentation on any device) by
:func:`draw_crop_flip`; :func:`crop_flip` applies them on the images' device.
Splitting the two lets the trainer draw a whole epoch's numbers up front and
move them to the GPU in one copy, instead of one blocking copy per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4


def draw_crop_flip(n: int, generator: torch.Generator, pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """``(offsets, flips)`` for ``n`` images, on the CPU: (2, n) crop offsets in ``0..2*pad`` and (n,) bools."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Crop each ``pad``-padded image of a uint8 batch (N, C, H, W) at ``offsets`` and flip where ``flips``.

    ``offsets`` and ``flips`` must be on ``x``'s device (see :func:`draw_crop_flip`).
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Random ``pad``-pixel-padded crop and random horizontal flip of a uint8 batch (N, C, H, W).

    Random numbers come from ``generator`` (which lives on the CPU) so a seed
    fixes the augmentation on any device.
    """
    offsets, flips = draw_crop_flip(len(x), generator, pad)
    return crop_flip(x, offsets.to(x.device), flips.to(x.device), pad)
