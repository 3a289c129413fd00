"""The wrapper every trained model lives in: uint8 in, logits or features out.

Normalisation statistics are buffers of the wrapper, so a cached state dict is
self-contained and every caller (ptk, ART, a plugin) feeds raw images.
"""

from __future__ import annotations

import torch
from torch import nn


class Network(nn.Module):
    """``net`` (a model plugin's module) behind per-channel normalisation.

    Accepts uint8 images (0..255) or floats already in [0, 1].
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.float().view(1, -1, 1, 1))
        self.register_buffer("std", std.float().view(1, -1, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (ResNet-18: the avg-pool output, width x 8 dims)."""
        return self.net.features(self.normalise(x))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from features: ``head(features(x)) == forward(x)``."""
        return self.net.head(feats)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, scaled to [0, 1], computed in chunks."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    sq = torch.zeros_like(total)
    for chunk in x.split(4096):
        c = chunk.double().div(255)
        total += c.sum((0, 2, 3))
        sq += c.pow(2).sum((0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (sq / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.float().cpu(), std.float().cpu()
