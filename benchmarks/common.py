"""Measurement helpers the benchmarks share with the tests (which import them from here).

Kept apart from ``run.py`` and ``study.py`` so that neither the benchmarks nor the
tests have to import the other's scripts for them.
"""

from __future__ import annotations

import torch
from torch import nn


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|: the error on the scale of the scores that decide the ranking.

    (An element-wise ratio is undefined near the scores that cross zero, which
    carry no ranking weight.)
    """
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


class StubNetwork(nn.Module):
    """A "network" whose penultimate activations are its input, so ART and ptk can be fed the same activations."""

    def __init__(self, dims: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dims, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats)
