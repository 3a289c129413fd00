"""The public types a plugin author builds on.

An attack, defense, data set or model is an instance of one of the base
classes below, handed to ptk through a ``register`` callback (see
:mod:`ptk.hookspecs`). Everything a plugin needs at run time arrives in its
context object (:class:`ptk.context.AttackContext` /
:class:`ptk.context.DefenseContext`), so plugins never import ptk internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from .errors import DataMissing
from .options import Option

if TYPE_CHECKING:
    from .context import AttackContext, DefenseContext
    from .data import Dataset

__all__ = ["API_VERSION", "SUPPORTED_API_VERSIONS", "Attack", "DataMissing", "DatasetSource", "Defense",
           "DefenseResult", "GOALS", "ModelSpec", "Plugin", "Poisoning", "Predictor", "ThreatModel", "Trigger",
           "defense_goals", "goal_refusal"]

#: Version of the plugin API. A plugin may declare ``api_version``; ptk refuses
#: versions outside SUPPORTED_API_VERSIONS with a message naming the supported ones.
#: Version 2 added attack goals (``Attack.goal``, ``Poisoning.trigger``) and
#: ``ThreatModel.knows_trigger``; a version-1 plugin runs unchanged (it has neither).
API_VERSION = 2
SUPPORTED_API_VERSIONS = (1, 2)

#: What an attack is after (``Attack.goal``): ``target``, one test image misclassified as the target class
#: (the study's goal); ``backdoor``, every image carrying a trigger classified as the trigger's target class.
GOALS = ("target", "backdoor")


class Plugin:
    """Common fields: a unique ``name``, a one-line ``description``, declared ``options``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[list[Option]] = []
    api_version: ClassVar[int] = API_VERSION
    kind: ClassVar[str] = ""


@dataclass(frozen=True)
class ThreatModel:
    """What a defense assumes it knows. Shown by ``ptk plugins`` and in every report.

    A defense that does not declare ``knows_target`` cannot read the target image,
    and one that does not declare ``knows_budget`` cannot read the number of
    poisoned samples: its context raises if it tries, so results honestly reflect
    the threat model (a removal count equal to the true poison count is an oracle
    no defender has in practice).
    """

    knows_target: bool = False
    trusted_data: bool = False
    uses_poisoned_model: bool = True
    knows_budget: bool = False
    knows_trigger: bool = False

    def describe(self) -> str:
        """The one-line summary reports show. ``knows the trigger`` appears only when declared, so the
        summaries of defenses written before API version 2 (and sweep stores holding them) stay as they were."""
        parts = [
            "knows the target" if self.knows_target else "target unknown",
            "needs trusted clean data" if self.trusted_data else "no trusted data",
            "uses the poisoned model" if self.uses_poisoned_model else "does not use the poisoned model",
            *(["knows the trigger"] if self.knows_trigger else []),
            "knows the poison budget" if self.knows_budget else "poison budget unknown",
        ]
        return ", ".join(parts)


@dataclass(frozen=True)
class Trigger:
    """A backdoor attack's trigger: ``apply`` stamps it on a uint8 image batch (N, C, H, W) and returns the
    stamped uint8 batch (same shape, same device; the input is left unchanged); an image carrying it should be
    classified as ``target_class``. ``description`` is one line for results.json and reports."""

    apply: Callable[[torch.Tensor], torch.Tensor]
    target_class: int
    description: str = ""


@dataclass
class Poisoning:
    """What an attack returns: the poisoned training labels (and images, if it changes them), and for a
    backdoor attack (``goal = "backdoor"``) its :class:`Trigger`, from which ptk measures every model's
    attack success rate on triggered test images."""

    y_train: torch.Tensor
    poison_indices: torch.Tensor
    x_train: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    trigger: Trigger | None = None


@runtime_checkable
class Predictor(Protocol):
    """Anything that maps uint8 images (N, C, H, W) to class probabilities (N, classes)."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class DefenseResult:
    """What a defense returns.

    ``predictor`` is a trained ``nn.Module`` (from ``ctx.train``) or any
    :class:`Predictor` such as an ensemble. ``rejects`` makes the defense a test-time
    input filter (STRIP, say): given uint8 images (N, C, H, W) it returns a bool per image,
    True for one it refuses to classify; ptk then reports the share of clean and of
    triggered test images it rejects, and counts a rejected input as an attack that failed. ``removed_indices`` (training indices
    the defense dropped) lets ptk score removal precision and recall against the
    true poison; ``sample_weights`` is for reweighting defenses; ``scores`` is a
    per-training-sample suspicion score (higher = more likely poison), from which
    ptk reports a threshold-free AUROC against the true poison, so defenses can be
    compared without choosing how many to remove; ``details`` holds any
    JSON-serialisable extras for results.json.
    """

    predictor: nn.Module | Predictor
    removed_indices: torch.Tensor | None = None
    sample_weights: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    rejects: Callable[[torch.Tensor], torch.Tensor] | None = None


class Attack(Plugin):
    """A poisoning attack. Override :meth:`poison`; declare ``goal`` (one of :data:`GOALS`) if it is not
    ``"target"``: a ``"backdoor"`` attack returns a :class:`Trigger` in its :class:`Poisoning`."""

    kind: ClassVar[str] = "attack"
    goal: ClassVar[str] = "target"

    def poison(self, ctx: "AttackContext", options: dict[str, Any]) -> Poisoning:
        raise NotImplementedError

    def check(self, data: "Dataset", source: int, target: int, options: dict[str, Any]) -> None:
        """Refuse impossible settings before any training (raise :class:`ptk.UsageError`)."""


class Defense(Plugin):
    """A defense. Override :meth:`defend` and declare ``threat``.

    ``goals``: the attack goals (:data:`GOALS`) it can defend against. Left None, they follow from the threat
    model: a defense that reads the target image defends a ``target`` goal only (a backdoor attack has no
    target image); any other defends both (one that reads the trigger gets None from a ``target`` attack). ptk refuses a
    named defense against an attack outside its goals before any training, and ``--defense all`` skips it.
    """

    kind: ClassVar[str] = "defense"
    threat: ClassVar[ThreatModel] = ThreatModel()
    goals: ClassVar[tuple[str, ...] | None] = None

    def defend(self, ctx: "DefenseContext", options: dict[str, Any]) -> DefenseResult:
        raise NotImplementedError

    def check(self, data: "Dataset", options: dict[str, Any]) -> None:
        """Refuse impossible settings before any training (raise :class:`ptk.UsageError`).

        ``data`` is the run's data after subsetting (clean labels: the attack has
        not run yet). Without this, a bad option would surface only after the clean
        and poisoned models are trained, as a failed defense.
        """


class DatasetSource(Plugin):
    """A data set. Override :meth:`load`; raise :class:`ptk.DataMissing` when files are absent.

    ``default_source`` / ``default_target`` name the classes the label-flip attack
    uses when the user gives none (CIFAR-10: deer -> dog, as in the study).
    """

    kind: ClassVar[str] = "dataset"
    default_source: ClassVar[str | None] = None
    default_target: ClassVar[str | None] = None

    def load(self, data_dir: Path, options: dict[str, Any]) -> "Dataset":
        raise NotImplementedError


class ModelSpec(Plugin):
    """A model architecture. :meth:`build` returns an ``nn.Module`` that takes
    normalised float images and has a ``features(x)`` method giving the
    penultimate-layer activations."""

    kind: ClassVar[str] = "model"

    def build(self, num_classes: int, image_shape: tuple[int, int, int], options: dict[str, Any]) -> nn.Module:
        raise NotImplementedError


def defense_goals(defense: Defense) -> tuple[str, ...]:
    """The attack goals ``defense`` can defend against: its ``goals``, or those its threat model allows."""
    if defense.goals is not None:
        return tuple(defense.goals)
    if defense.threat.knows_target:
        return ("target",)
    return GOALS


def goal_refusal(defense: Defense, attack: Attack) -> str | None:
    """Why ``defense`` cannot run against ``attack`` (None when it can): one sentence for a usage error or a note."""
    goals = defense_goals(defense)
    if attack.goal in goals:
        return None
    if defense.goals is None and defense.threat.knows_target:
        why = f"it works from the target image (its threat model: {defense.threat.describe()})"
    else:
        why = f"it declares goals = {goals}"
    return (f"defense {defense.name!r} defends only against {' or '.join(map(repr, goals))} attacks: {why}, and "
            f"attack {attack.name!r} has the goal {attack.goal!r}")
