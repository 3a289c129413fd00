"""Batched augmentation on the training device: random crop of a padded image, horizontal flip, cutout.

Works on a whole uint8 batch at once with index arithmetic, so no per-image
PIL or Python work sits in the training loop. The random numbers are drawn on
the CPU (so a seed fixes the augmentation on any device) by
:func:`draw_crop_flip` / :func:`draw_cutout`; :func:`crop_flip` / :func:`cutout`
apply them on the images' device. Splitting the two lets the trainer draw a
whole epoch's numbers up front and move them to the GPU in one copy, instead of
one blocking copy per step.

The crop never builds the padded image: each output pixel's source row and column
are computed, and a position in the padding is either zero (``pad_mode="zeros"``,
torchvision's RandomCrop default) or the mirrored pixel (``"reflect"``, the
published ResNet-18 recipe's translate).
"""

from __future__ import annotations

import torch

PAD = 4


def draw_crop_flip(n: int, generator: torch.Generator, pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """``(offsets, flips)`` for ``n`` images, on the CPU: (2, n) crop offsets in ``0..2*pad`` and (n,) bools."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside ``0..size-1`` mirrored back inside (the edge pixel not repeated: numpy's "reflect")."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = PAD,
              pad_mode: str = "zeros") -> torch.Tensor:
    """Crop each ``pad``-padded image of a uint8 batch (N, C, H, W) at ``offsets`` and flip where ``flips``.

    ``offsets`` and ``flips`` must be on ``x``'s device (see :func:`draw_crop_flip`).
    """
    n, c, h, w = x.shape
    rows = offsets[0, :, None] - pad + torch.arange(h, device=x.device)  # (N, H) source rows
    cols = offsets[1, :, None] - pad + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    if pad_mode == "reflect":
        return x[batch, chan, reflect(rows, h)[:, None, :, None], reflect(cols, w)[:, None, None, :]]
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    out = x[batch, chan, rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
    return out * inside.to(out.dtype)


def draw_cutout(n: int, generator: torch.Generator, size: int, h: int, w: int) -> torch.Tensor:
    """(2, n) top-left corners of ``size`` x ``size`` squares; a square may hang over the edge (DeVries and
    Taylor's cutout, whose centre is uniform over the image)."""
    centres = torch.stack([torch.randint(0, h, (n,), generator=generator),
                           torch.randint(0, w, (n,), generator=generator)])
    return centres - size // 2


def cutout(x: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with each image's square at ``corners`` (from :func:`draw_cutout`, on ``x``'s device) set to 0."""
    _, _, h, w = x.shape
    r = torch.arange(h, device=x.device)[None, :] - corners[0, :, None]  # (N, H): row offset inside the square
    c = torch.arange(w, device=x.device)[None, :] - corners[1, :, None]
    inside = ((r >= 0) & (r < size))[:, None, :, None] & ((c >= 0) & (c < size))[:, None, None, :]
    return x * (~inside).to(x.dtype)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Random ``pad``-pixel-padded crop and random horizontal flip of a uint8 batch (N, C, H, W).

    Random numbers come from ``generator`` (which lives on the CPU) so a seed
    fixes the augmentation on any device.
    """
    offsets, flips = draw_crop_flip(len(x), generator, pad)
    return crop_flip(x, offsets.to(x.device), flips.to(x.device), pad)
