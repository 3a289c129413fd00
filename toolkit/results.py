"""A run's results as dataclasses: :class:`RunResults` with one :class:`ModelRow` per model.

Built by the runner (rows in :mod:`ptk.evaluate`), written as results.json by
:meth:`RunResults.to_dict`, the one serialisation; docs/results.md lists its keys.
Every field is named as its results.json key. A field that defaults to ``None`` (or
``False``) is optional: it is left out while it has that default, as a defense that
removes nothing has no ``removed_count``. A group of fields that only comes together
(:class:`Removal`, :class:`Suspicion`, :class:`WeightMeans`, :class:`Vote`, :class:`Rejection`) is a
dataclass of its own whose keys sit in the row beside the others: the group is there
or not as a whole, and a required field of a group is written even when it is null
(``removal_precision`` of an empty removal).
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


def to_json_dict(obj: Any) -> dict[str, Any]:
    """``obj``'s fields as results.json keys, in field order: optional fields at their default left out,
    a group's keys in place of the group, rows as dicts."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if (f.default is None or f.default is False) and value is f.default:
            continue
        if is_dataclass(value):
            out.update(to_json_dict(value))
        elif isinstance(value, list) and value and all(is_dataclass(v) for v in value):
            out[f.name] = [to_json_dict(v) for v in value]
        else:
            out[f.name] = value
    return out


@dataclass(frozen=True)
class Removal:
    """A defense's removed training samples against the true poison (precision: poisoned among removed,
    None when nothing was removed; recall: removed among poisoned, None when nothing was poisoned)."""

    removed_indices: list[int]
    removed_count: int
    removal_precision: float | None
    removal_recall: float | None


@dataclass(frozen=True)
class Suspicion:
    """AUROC of a defense's per-sample suspicion scores against the true poison (None when either group
    is empty), and the ROC curve it is the area under, thinned to at most ``ROC_POINTS`` points
    (``{"fpr": [...], "tpr": [...]}``), so report.html can draw it from results.json alone."""

    suspicion_auroc: float | None
    suspicion_roc: dict[str, list[float]] | None = None


@dataclass(frozen=True)
class WeightMeans:
    """A reweighting defense's mean final weight of poisoned (None when there are none) and other samples."""

    mean_weight_poison: float | None
    mean_weight_clean: float


@dataclass(frozen=True)
class Vote:
    """An ensemble's plurality vote on the target image. The vote is the ensemble's prediction (the row's
    ``target_pred`` and ``attack_success``); the averaged softmax's choice stays beside it. The certificate
    (disjoint members only): how many poisoned samples provably cannot change the vote, and whether the
    attack's budget exceeds that."""

    target_votes: dict[str, int]
    target_vote_pred: str
    softmax_target_pred: str
    target_certified_tolerance: int | None = None
    budget_exceeds_certificate: bool | None = None


@dataclass(frozen=True)
class Rejection:
    """A test-time input filter's refusals: the share of clean test images it rejects (its cost), of triggered
    ones (backdoor attacks; its catch), and whether it rejects the target image. A rejected input counts as
    an attack that failed: the row's ``attack_success`` and ``backdoor_asr`` are measured after the filter."""

    rejected_clean: float
    rejected_triggered: float | None
    target_rejected: bool


def model_seconds(m: dict[str, Any]) -> float | None:
    """What one model cost a run, in seconds: for a defense its whole time (``defense_seconds`` already includes
    its trainings), for a clean or poisoned model its training; a model read from the cache counted at the time
    it took when it was trained (``cost_seconds``, where the cache entry recorded it). ``m`` is a results.json
    model or a store row (whose ``row`` column holds the model's JSON)."""
    cost = m.get("cost_seconds")
    if cost is None and isinstance(m.get("row"), str):
        cost = json.loads(m["row"]).get("cost_seconds")
    if cost is not None:
        return cost
    return m.get("defense_seconds") if m.get("defense_seconds") is not None else m.get("train_seconds")


@dataclass
class ModelRow:
    """One model of a run (clean, poisoned, or a defense's), an entry of results.json's ``models``."""

    name: str
    test_accuracy: float | None = None
    per_class_accuracy: dict[str, float | None] | None = None
    target_probs: dict[str, float] | None = None
    target_pred: str | None = None  # an ensemble's: its plurality vote
    attack_success: bool | None = None
    backdoor_asr: float | None = None  # backdoor attacks: triggered non-target test images classified as the target
    filter_auroc: float | None = None  # test-time detectors (input_scores): AUROC of triggered vs clean test images
    train_seconds: float | None = None  # 0 for a model from the cache
    cached: bool | None = None  # clean and poisoned models only
    defense_seconds: float | None = None  # the whole defense: its analysis and its trainings
    cost_seconds: float | None = None  # what the model cost, a cached training counted at its recorded time
    threat_model: str | None = None
    removal: Removal | None = None
    suspicion: Suspicion | None = None
    weights: WeightMeans | None = None
    details: dict[str, Any] | None = None
    vote: Vote | None = None
    rejection: Rejection | None = None
    failed: bool = False
    error: str | None = None

    @classmethod
    def failure(cls, name: str, exc: BaseException) -> ModelRow:
        """The row of a defense that raised: its name and the exception, nothing else."""
        return cls(name, failed=True, error=f"{type(exc).__name__}: {exc}")

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)


@dataclass
class RunResults:
    """A run: its settings and provenance, the target, the attack, and one row per model.

    ``status`` is ``running`` until the run ends ``complete`` or ``failed``; ``error`` is set only when the
    attack or a clean/poisoned training raised. ``target``, ``attack``, ``cache`` and ``finished`` are set as
    the run gets there.
    """

    status: str
    config: dict[str, Any]
    resolved: dict[str, Any]
    versions: dict[str, str]
    data: dict[str, Any]
    plugins: dict[str, dict[str, Any]]
    started: str
    models: list[ModelRow] = field(default_factory=list)
    target: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None
    cache: dict[str, int] | None = None
    finished: str | None = None
    error: str | None = None
    skipped_defenses: dict[str, str] | None = None  # `--defense all` only: defense -> why it cannot run here

    @property
    def failures(self) -> list[str]:
        """Names of the models (defenses) that failed."""
        return [m.name for m in self.models if m.failed]

    def to_dict(self) -> dict[str, Any]:
        """results.json's content (docs/results.md)."""
        return to_json_dict(self)
