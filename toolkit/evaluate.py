"""One evaluation for every model of a run, so numbers are comparable across defenses: the rows of
results.json's ``models`` are built here, a defense's scoring (removal, suspicion, weights, vote) included."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .session import Trained
from .types import DefenseResult, Predictor, Target, Trigger
from .data import Dataset
from .ensembles import EnsemblePredictor, vote_prediction_and_tolerance
from .results import ModelRow, Rejection, Removal, Suspicion, Vote, WeightMeans
from .train import predict_proba

#: A test-time input filter (``DefenseResult.rejects``): uint8 images in, one bool per image out (True: rejected)
Rejects = Callable[[torch.Tensor], torch.Tensor]


def probabilities(predictor: nn.Module | Predictor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(predictor, nn.Module):
        return predict_proba(predictor, x)
    return predictor.predict_proba(x).float()


def evaluate(predictor: nn.Module | Predictor, data: Dataset, target: Target) -> dict[str, Any]:
    """Test accuracy (overall and per class) and the target image's class probabilities, as ModelRow fields."""
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


def triggered_test_images(x_test: torch.Tensor, y_test: torch.Tensor, trigger: Trigger) -> torch.Tensor | None:
    """The test images not of the trigger's target class with the trigger stamped on (None when there are
    none): what a backdoor's success is measured on."""
    keep = y_test != trigger.target_class
    if not keep.any():
        return None
    clean = x_test[keep]
    stamped = trigger.apply(clean)
    if not isinstance(stamped, torch.Tensor) or stamped.dtype != torch.uint8 or stamped.shape != clean.shape:
        got = (f"{stamped.dtype} {tuple(stamped.shape)}" if isinstance(stamped, torch.Tensor)
               else type(stamped).__name__)
        raise ValueError(f"the trigger's apply returned {got}; expected uint8 {tuple(clean.shape)}")
    return stamped.to(x_test.device)


def backdoor_asr(predictor: nn.Module | Predictor, x_test: torch.Tensor, y_test: torch.Tensor,
                 trigger: Trigger) -> float | None:
    """A backdoor's attack success rate: the share of the test images whose true class is not the trigger's
    target class that ``predictor`` assigns to that class once the trigger is stamped on them (None when
    every test image is of the target class). A test-time filter's is :func:`filtered`'s."""
    stamped = triggered_test_images(x_test, y_test, trigger)
    return None if stamped is None else asr_of(predictor, stamped, trigger, None)


def asr_of(predictor: nn.Module | Predictor, stamped: torch.Tensor, trigger: Trigger,
           rejected: torch.Tensor | None) -> float:
    """The share of ``stamped`` (triggered test images) sent to the trigger's class and not ``rejected``."""
    hit = probabilities(predictor, stamped).argmax(1) == trigger.target_class
    if rejected is not None:
        hit &= ~rejected
    return round(hit.float().mean().item(), 6)


def rejection_mask(rejects: Rejects, x: torch.Tensor) -> torch.Tensor:
    """A defense's ``rejects`` on ``x``, checked: one bool per image."""
    mask = rejects(x)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (len(x),):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"the defense's rejects returned {got}; expected one bool per image, ({len(x)},)")
    return mask.to(x.device)


def input_score_vector(input_scores: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A defense's ``input_scores`` on ``x``, checked: one finite float per image."""
    s = input_scores(x)
    if not isinstance(s, torch.Tensor) or not s.is_floating_point() or s.shape != (len(x),) \
            or not torch.isfinite(s).all():
        got = f"{s.dtype} {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"the defense's input_scores returned {got}; expected one finite float per image, "
                         f"({len(x)},)")
    return s.detach().double().cpu()


def filter_auroc(input_scores: Callable[[torch.Tensor], torch.Tensor], data: Dataset,
                 trigger: Trigger) -> float | None:
    """How well a test-time detector's per-input scores separate triggered test images (those not of the
    trigger's class, stamped) from clean test images, whatever threshold it would pick: the chance a random
    triggered image scores above a random clean one (None when there is no triggered image)."""
    from sklearn.metrics import roc_auc_score

    stamped = triggered_test_images(data.x_test, data.y_test, trigger)
    if stamped is None:
        return None
    clean, hit = input_score_vector(input_scores, data.x_test), input_score_vector(input_scores, stamped)
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(hit))])
    return round(float(roc_auc_score(labels.numpy(), torch.cat([clean, hit]).numpy())), 6)


def filtered(predictor: nn.Module | Predictor, rejects: Rejects, data: Dataset, target: Target,
             trigger: Trigger | None) -> tuple[Rejection, float | None]:
    """A test-time filter's refusals (of the clean test images, the triggered ones and the target image) and,
    with a ``trigger``, the ASR of what it lets through; ``rejects`` runs once on each set of images."""
    stamped = None if trigger is None else triggered_test_images(data.x_test, data.y_test, trigger)
    on_triggered = None if stamped is None else rejection_mask(rejects, stamped)
    refused = Rejection(
        rejected_clean=round(rejection_mask(rejects, data.x_test).float().mean().item(), 6),
        rejected_triggered=None if on_triggered is None else round(on_triggered.float().mean().item(), 6),
        target_rejected=bool(rejection_mask(rejects, target.image)[0]),
    )
    return refused, None if stamped is None else asr_of(predictor, stamped, trigger, on_triggered)


def model_row(name: str, trained: Trained, data: Dataset, target: Target, trigger: Trigger | None = None) -> ModelRow:
    """The row of a model the runner trained itself (clean, poisoned); with a backdoor ``trigger``, its ASR."""
    asr = None if trigger is None else backdoor_asr(trained.model, data.x_test, data.y_test, trigger)
    return ModelRow(name, **evaluate(trained.model, data, target), backdoor_asr=asr,
                    train_seconds=round(trained.seconds, 3), cached=trained.cached,
                    cost_seconds=None if trained.cost is None else round(trained.cost, 3))


def defense_row(name: str, out: DefenseResult, data: Dataset, target: Target, poison: torch.Tensor,
                n_train: int, trigger: Trigger | None = None, **fields: Any) -> ModelRow:
    """The row of a defense: its predictor evaluated like every model, and what it returned scored against the
    true ``poison`` indices of the ``n_train`` training samples: removal precision and recall, the AUROC of
    its suspicion scores (or of minus its sample weights), the mean weight of poisoned vs other samples, and
    an ensemble's vote on the target (its prediction). ``fields``: further ModelRow fields (timings, threat
    model). With a backdoor ``trigger``, the predictor's attack success rate too."""
    measured = evaluate(out.predictor, data, target)
    refused = None
    if out.rejects is not None:
        refused, asr = filtered(out.predictor, out.rejects, data, target, trigger)
        if trigger is not None:
            measured["backdoor_asr"] = asr
    elif trigger is not None:
        measured["backdoor_asr"] = backdoor_asr(out.predictor, data.x_test, data.y_test, trigger)
    if out.input_scores is not None and trigger is not None:
        measured["filter_auroc"] = filter_auroc(out.input_scores, data, trigger)
    removal = None if out.removed_indices is None else removal_scores(out.removed_indices, poison)
    scores = out.scores
    if scores is None and out.sample_weights is not None:
        scores = -out.sample_weights  # a reweighting defense suspects what it down-weights
    if scores is not None and len(scores) != n_train:
        raise ValueError(f"scores has {len(scores)} entries for {n_train} training samples")
    suspicion = None if scores is None else suspicion_of(scores, poison)
    weights = None if out.sample_weights is None else weight_means(out.sample_weights, poison)
    vote = None
    if isinstance(out.predictor, EnsemblePredictor):
        vote = target_vote(out.predictor, target, data.classes, len(poison), measured["target_pred"])
        measured.update(target_pred=vote.target_vote_pred,
                        attack_success=vote.target_vote_pred == data.classes[target.target_class])
    if refused is not None and refused.target_rejected:
        measured["attack_success"] = False  # the filter refuses the target image: the attack did not get its way
    return ModelRow(name, **measured, **fields, removal=removal, suspicion=suspicion, weights=weights,
                    details=out.details or None, vote=vote, rejection=refused)


def suspicion_auroc(scores: torch.Tensor, poison: torch.Tensor) -> float | None:
    """AUROC of per-sample suspicion ``scores`` against the true poison mask: the chance a random poisoned
    sample scores above a random clean one (ties count half). Threshold-free, so it compares defenses
    without choosing how many to remove; 0.5 is chance. None when either group is empty.
    """
    from sklearn.metrics import roc_auc_score

    mask = poison_mask(len(scores), poison)
    if mask.all() or not mask.any():
        return None
    return round(float(roc_auc_score(mask.numpy(), scores.detach().double().cpu().numpy())), 6)


#: At most this many points of a defense's ROC curve go into results.json: enough to draw, small to store.
ROC_POINTS = 101


def suspicion_roc(scores: torch.Tensor, poison: torch.Tensor, points: int = ROC_POINTS) -> dict[str, list[float]] | None:
    """The ROC curve of suspicion ``scores`` against the true poison (None when either group is empty): its
    corners (scikit-learn's, collinear ones dropped), thinned evenly to at most ``points`` while keeping the
    first (0, 0) and last (1, 1), and rounded to 4 digits. A plot needs no more, and results.json stays small
    whatever the training set's size."""
    import numpy as np
    from sklearn.metrics import roc_curve

    mask = poison_mask(len(scores), poison)
    if mask.all() or not mask.any():
        return None
    fpr, tpr, _ = roc_curve(mask.numpy(), scores.detach().double().cpu().numpy())
    if len(fpr) > points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]}


def suspicion_of(scores: torch.Tensor, poison: torch.Tensor) -> Suspicion:
    """A defense's suspicion scores against the true poison: their AUROC and ROC curve."""
    return Suspicion(suspicion_auroc(scores, poison), suspicion_roc(scores, poison))


def poison_mask(n: int, poison: torch.Tensor) -> torch.Tensor:
    """A bool mask of ``n`` training samples, True at the ``poison`` indices (on the CPU)."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[poison.cpu().long()] = True
    return mask


def removal_scores(removed: torch.Tensor, poison: torch.Tensor) -> Removal:
    """How many removed, and precision / recall of the removal against the true poison indices."""
    removed_set = set(removed.cpu().tolist())
    poison_set = set(poison.cpu().tolist())
    hit = len(removed_set & poison_set)
    return Removal(
        removed_indices=sorted(removed_set),
        removed_count=len(removed_set),
        removal_precision=round(hit / len(removed_set), 6) if removed_set else None,
        removal_recall=round(hit / len(poison_set), 6) if poison_set else None,
    )


def weight_means(weights: torch.Tensor, poison: torch.Tensor) -> WeightMeans:
    """Mean sample weight of the poisoned samples (None if there are none) and of the others."""
    w = weights.float().cpu()
    mask = torch.zeros(len(w), dtype=torch.bool)
    mask[poison.cpu()] = True
    return WeightMeans(round(w[mask].mean().item(), 6) if mask.any() else None, round(w[~mask].mean().item(), 6))


def target_vote(ens: EnsemblePredictor, target: Target, classes: list[str], budget: int, softmax_pred: str) -> Vote:
    """The ensemble's vote on the target and, for disjoint members, whether the poison budget exceeds its certificate.

    The plurality vote is the ensemble's prediction (the row's ``target_pred``, ``attack_success``): it is
    what the certificate is about. The averaged softmax's choice stays beside it as ``softmax_target_pred``;
    the two can differ.
    """
    votes = ens.votes(target.image)
    pred, tol = vote_prediction_and_tolerance(votes)
    certified = {"target_certified_tolerance": int(tol[0]), "budget_exceeds_certificate": budget > int(tol[0])}
    return Vote(target_votes={c: int(v) for c, v in zip(classes, votes[0].tolist())},
                target_vote_pred=classes[int(pred[0])], softmax_target_pred=softmax_pred,
                **(certified if ens.certified else {}))
