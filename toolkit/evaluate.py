"""One evaluation for every model of a run, so numbers are comparable across defenses."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .api import Predictor
from .context import Target
from .data import Dataset
from .train import predict_proba


def probabilities(predictor: nn.Module | Predictor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(predictor, nn.Module):
        return predict_proba(predictor, x)
    return predictor.predict_proba(x).float()


def evaluate(predictor: nn.Module | Predictor, data: Dataset, target: Target) -> dict[str, Any]:
    """Test accuracy (overall and per class) and the target image's class probabilities."""
    probs = probabilities(predictor, data.x_test)
    pred = probs.argmax(1)
    correct = (pred == data.y_test).float()
    per_class = {
        name: round(correct[data.y_test == c].mean().item(), 6) if (data.y_test == c).any() else None
        for c, name in enumerate(data.classes)
    }
    tp = probabilities(predictor, target.image)[0]
    target_pred = int(tp.argmax())
    return {
        "test_accuracy": round(correct.mean().item(), 6),
        "per_class_accuracy": per_class,
        "target_probs": {name: round(tp[c].item(), 6) for c, name in enumerate(data.classes)},
        "target_pred": data.classes[target_pred],
        "attack_success": target_pred == target.target_class,
    }


def suspicion_auroc(scores: torch.Tensor, poison: torch.Tensor) -> float | None:
    """AUROC of per-sample suspicion ``scores`` against the true poison mask: the chance a random poisoned
    sample scores above a random clean one (ties count half). Threshold-free, so it compares defenses
    without choosing how many to remove; 0.5 is chance. None when either group is empty.
    """
    from sklearn.metrics import roc_auc_score

    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[poison.cpu().long()] = True
    if mask.all() or not mask.any():
        return None
    return round(float(roc_auc_score(mask.numpy(), scores.detach().double().cpu().numpy())), 6)


def removal_scores(removed: torch.Tensor, poison: torch.Tensor) -> dict[str, Any]:
    """How many removed, and precision / recall of the removal against the true poison indices."""
    removed_set = set(removed.cpu().tolist())
    poison_set = set(poison.cpu().tolist())
    hit = len(removed_set & poison_set)
    return {
        "removed_indices": sorted(removed_set),
        "removed_count": len(removed_set),
        "removal_precision": round(hit / len(removed_set), 6) if removed_set else None,
        "removal_recall": round(hit / len(poison_set), 6) if poison_set else None,
    }
