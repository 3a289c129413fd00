"""Ensembles of models as one predictor: averaged softmax, plurality vote, certified tolerance.

Public API: defenses that aggregate several models return an
:class:`EnsemblePredictor`; the runner then reports vote results for the target.
"""

from __future__ import annotations

import torch
from torch import nn


class EnsemblePredictor:
    """Averaged softmax of its members; :meth:`votes` gives the plurality-vote counts."""

    def __init__(self, members: list[nn.Module], proba, certified: bool = False) -> None:
        self.members = members
        self._proba = proba
        #: True when members saw disjoint data (partition), so vote gaps certify robustness.
        self.certified = certified

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._proba(m, x) for m in self.members])  # (K, N, C)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.member_probs(x).mean(0)

    def votes(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.member_probs(x)
        return nn.functional.one_hot(probs.argmax(2), probs.shape[2]).sum(0)  # (N, C)


def vote_prediction_and_tolerance(votes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plurality vote (ties to the smaller class index) and DPA's certified tolerance per sample."""
    n_classes = votes.shape[1]
    # Ties go to the smaller index: rank by votes, then by -index.
    score = votes * (n_classes + 1) + (n_classes - torch.arange(n_classes, device=votes.device))
    top2 = score.topk(2, dim=1).indices
    top, second = top2[:, 0], top2[:, 1]
    gap = votes.gather(1, top[:, None]).squeeze(1) - votes.gather(1, second[:, None]).squeeze(1)
    tolerance = (gap - (second < top).long()).div(2, rounding_mode="floor").clamp_min(0)
    return top, tolerance
