"""The public types a plugin author builds on.

An attack, defense, data set or model is an instance of one of the base
classes below, handed to ptk through a ``register`` callback (see
:mod:`ptk.hookspecs`). Everything a plugin needs at run time arrives in its
context object (:class:`ptk.context.AttackContext` /
:class:`ptk.context.DefenseContext`), so plugins never import ptk internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from .errors import DataMissing
from .options import Option
from .types import GOALS, DefenseResult, Poisoning, Predictor, Target, ThreatModel, Trigger

if TYPE_CHECKING:
    from .context import AttackContext, DefenseContext
    from .data import Dataset

__all__ = ["API_VERSION", "SUPPORTED_API_VERSIONS", "Attack", "DataMissing", "DatasetSource", "Defense",
           "DefenseResult", "GOALS", "ModelSpec", "Plugin", "Poisoning", "Predictor", "ThreatModel", "Trigger",
           "Target", "defense_goals", "goal_refusal"]

#: Version of the plugin API. A plugin may declare ``api_version``; ptk refuses
#: versions outside SUPPORTED_API_VERSIONS with a message naming the supported ones.
#: Version 2 added attack goals (``Attack.goal``, ``Poisoning.trigger``) and
#: ``ThreatModel.knows_trigger``; a version-1 plugin runs unchanged (it has neither).
API_VERSION = 2
SUPPORTED_API_VERSIONS = (1, 2)

class Plugin:
    """Common fields: a unique ``name``, a one-line ``description``, declared ``options``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[list[Option]] = []
    api_version: ClassVar[int] = API_VERSION
    kind: ClassVar[str] = ""


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
    #: What the defense costs when that does not scale to a full run, in a few words ("one fine-tune per training
    #: sample"); a defense that declares it is left out of ``--defense all`` (named, it runs).
    cost: ClassVar[str | None] = None

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


def all_refusal(defense: Defense, attack: Attack) -> str | None:
    """Why ``--defense all`` leaves ``defense`` out against ``attack`` (None: it runs): its goals, or its cost."""
    why = goal_refusal(defense, attack)
    if why is None and defense.cost:
        why = f"it costs {defense.cost}; name it (--defense {defense.name}) to run it"
    return why


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
