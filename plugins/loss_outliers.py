"""Defense plugin ``loss-outliers`` (the study's Defense 1): drop the samples the poisoned model fits worst.

A flipped label on an image that still looks like its true class is hard to
fit, so after training its cross-entropy under the poisoned model tends to be
high. The defense computes each training sample's loss under the poisoned
model (eval mode, no augmentation), removes the outliers and retrains with the
run's recipe. Two rules:

* ``zscore`` (default): within each *labelled* class, the modified z-score of
  Iglewicz & Hoaglin, ``z = 0.6745 (loss - median) / MAD``; samples with
  ``z > threshold`` (3.5, their recommendation) go. Per class, because classes
  differ in difficulty: a hard class's typical loss is not an outlier.
  Median and MAD, because the poison itself inflates a mean and a standard
  deviation. Needs no knowledge of the attack.
* ``topk``: remove the ``k`` highest-loss samples overall (``k`` = 0: the
  ``fraction`` of the training set, 1% by default). The true poison count is
  never used: a defender does not know it.

Every sample's score (its z-score, or its loss under ``topk``) is returned, so
ptk reports the AUROC of the ranking whatever the cut.

Where a class's MAD is 0 (at least half its losses identical, e.g. a fully
saturated model), the mean absolute deviation from the median, scaled by
1.2533 (the normal-consistent factor), stands in; if that is 0 too, every loss
in the class equals the median and nothing is an outlier.
"""

from __future__ import annotations

from typing import Any

import torch

from ptk import (
    Dataset,
    Defense,
    DefenseContext,
    DefenseResult,
    Option,
    ThreatModel,
    UsageError,
    check_removal_count,
    fraction,
    hookimpl,
    non_negative,
    positive,
    removal_count,
)

#: 0.6745 = Phi^-1(0.75): makes MAD a consistent estimate of a normal sigma.
MAD_SCALE = 0.6745
#: sqrt(pi / 2): the same for the mean absolute deviation (fallback when MAD is 0).
MEANAD_SCALE = 1.2533


def _median(v: torch.Tensor) -> torch.Tensor:
    """The midpoint median (torch.median returns the lower middle value of an even count)."""
    s = v.sort().values
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def robust_zscores(losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Modified z-score of each loss within its labelled class (median / MAD, MeanAD fallback)."""
    losses = losses.double()
    z = torch.zeros_like(losses)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        v = losses[idx]
        med = _median(v)
        dev = (v - med).abs()
        mad = _median(dev)
        if mad > 0:
            z[idx] = MAD_SCALE * (v - med) / mad
        elif dev.mean() > 0:
            z[idx] = (v - med) / (MEANAD_SCALE * dev.mean())
    return z


def zscore_outliers(z: torch.Tensor, threshold: float) -> torch.Tensor:
    """Sorted indices whose robust z-score (:func:`robust_zscores`) exceeds ``threshold`` (high losses only)."""
    return (z > threshold).nonzero().squeeze(1)


def topk_outliers(losses: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the ``k`` highest losses."""
    return losses.topk(k).indices.sort().values


class LossOutliers(Defense):
    name = "loss-outliers"
    description = "remove training samples with outlying loss under the poisoned model, then retrain"
    threat = ThreatModel(knows_target=False, trusted_data=False, uses_poisoned_model=True)
    options = [
        Option("rule", str, "zscore", "zscore: per-class median/MAD z-score > threshold; topk: the k highest losses",
               choices=("zscore", "topk")),
        Option("threshold", float, 3.5, "rule=zscore: remove samples with robust z-score above this", check=positive),
        Option("k", int, 0, "rule=topk: samples to remove (0 = `fraction` of the training set)", check=non_negative),
        Option("fraction", float, 0.01, "rule=topk with k=0: fraction of the training set to remove", check=fraction),
    ]

    def check(self, data: Dataset, options: dict[str, Any]) -> None:
        if options["rule"] == "zscore" and options["k"]:
            raise UsageError("option loss-outliers.k applies to rule=topk only; "
                             "add -o loss-outliers.rule=topk or drop the k option")
        check_removal_count("loss-outliers.k", options["k"], len(data.y_train))

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        rule = options["rule"]
        y = ctx.data.y_train
        n = len(y)
        k = removal_count(options["k"], options["fraction"], n)
        losses = ctx.per_sample_loss(ctx.poisoned_model, ctx.data.x_train, y)
        details: dict[str, Any] = {"rule": rule}
        if rule == "topk":
            removed = topk_outliers(losses, k)
            scores = losses
            details.update(k=k, why=f"the {k} highest training losses under the poisoned model",
                           loss_cutoff=round(losses[removed].min().item(), 6) if k else None)
        else:
            threshold = options["threshold"]
            scores = robust_zscores(losses, y)
            removed = zscore_outliers(scores, threshold)  # at most half of each class: z > 0 is above the median
            details.update(threshold=threshold,
                           why=f"robust z-score (median/MAD of its labelled class) above {threshold}")
        classes = ctx.data.classes
        counts = torch.bincount(y[removed].cpu(), minlength=len(classes)).tolist()
        details["removed_by_label"] = {c: v for c, v in zip(classes, counts) if v}
        details["median_loss"] = round(losses.median().item(), 6)
        details["median_removed_loss"] = round(losses[removed].median().item(), 6) if len(removed) else None
        retrained = ctx.train_without(removed, desc="loss-outliers retrain")
        return DefenseResult(predictor=retrained, removed_indices=removed, scores=scores, details=details)


@hookimpl
def register_defenses(register):
    register(LossOutliers())
