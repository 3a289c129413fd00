"""What plugins receive at run time: data, models and the run's training service.

Every model of a run is trained through one :class:`ptk.session.Session`; a context exposes it to an
attack or a defense, limited by the defense's threat model (reading what it does not declare raises
:class:`ptk.ThreatModelViolation`). Contexts are built with keywords only: they have many fields, and a
swapped pair of positional tensors would train on the wrong labels without an error.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TypeVar

import torch
from torch import nn

from .data import Dataset, stratified_indices
from .errors import ThreatModelViolation
from .network import Network
from .progress import Timer, progress
from .session import Session, TrainingRecord
from .train import Recipe, per_sample_loss, predict_proba
from .train import features as penultimate_features
from .types import Target, ThreatModel, Trigger

T = TypeVar("T")
log = logging.getLogger("ptk")


class BaseContext:
    """Services shared by attack and defense contexts."""

    def __init__(self, *, session: Session, data: Dataset, options_of: dict[str, dict[str, Any]]) -> None:
        self._session = session
        self.data = data
        self.options_of = options_of

    @property
    def device(self) -> torch.device:
        return self._session.device

    @property
    def seed(self) -> int:
        return self._session.seed

    @property
    def recipe(self) -> Recipe:
        return self._session.recipe

    def train(self, labels: torch.Tensor | None = None, keep: torch.Tensor | None = None,
              weights: torch.Tensor | None = None, seed: int | None = None, desc: str = "train") -> Network:
        """Train a fresh model on this context's training images with the run's recipe and cache.

        ``labels`` default to this context's training labels; ``keep`` selects training
        indices; ``weights`` are per-sample loss weights; ``seed`` defaults to the run's.
        """
        y = self.data.y_train if labels is None else labels
        return self._session.train(self.data.x_train, y, keep=keep, weights=weights, seed=seed, desc=desc)

    def build_model(self, seed: int | None = None) -> Network:
        """An untrained model of the run's architecture (for defenses with their own loop)."""
        return self._session.build(self.seed if seed is None else seed)

    @contextmanager
    def own_training(self, desc: str) -> Iterator[None]:
        """Wrap a training loop of your own (not :meth:`train`) in this, so its time is counted
        as training in the report's "train s", like every :meth:`train` call's."""
        with Timer() as timer:
            yield
        self._session.trained.append(TrainingRecord(desc, None, False, timer.seconds, timer.seconds))

    @staticmethod
    def features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate-layer activations (eval mode, no augmentation)."""
        return penultimate_features(model, x, batch_size)

    @staticmethod
    def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return predict_proba(model, x, batch_size)

    @staticmethod
    def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return per_sample_loss(model, x, y, batch_size)

    @staticmethod
    def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        return progress(items, desc, total)


class AttackContext(BaseContext):
    """Given to :meth:`ptk.Attack.poison`: the clean data, the clean model and the target."""

    def __init__(self, *, session: Session, data: Dataset, options_of: dict[str, dict[str, Any]],
                 clean_model: Network, target: Target) -> None:
        super().__init__(session=session, data=data, options_of=options_of)
        self.clean_model = clean_model
        self.target = target


class DefenseContext(BaseContext):
    """Given to :meth:`ptk.Defense.defend`: the poisoned training set and the poisoned model.

    ``target``, ``trigger``, ``trusted_data`` and ``attack_budget`` are available only
    when the defense's threat model declares them; otherwise reading them raises
    ThreatModelViolation.
    """

    def __init__(self, *, session: Session, data: Dataset, options_of: dict[str, dict[str, Any]],
                 poisoned_model: Network, target: Target, threat: ThreatModel, attack_budget: int,
                 clean_labels: torch.Tensor, poison_indices: torch.Tensor, defense_name: str,
                 trigger: Trigger | None = None, trusted_pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__(session=session, data=data, options_of=options_of)
        self.poisoned_model = poisoned_model
        self.threat = threat
        self._budget = attack_budget
        self._target = target
        self._clean_labels = clean_labels
        self._poison = poison_indices
        self._name = defense_name
        self._trigger = trigger
        self._trusted_pool = trusted_pool

    @property
    def target(self) -> Target:
        if not self.threat.knows_target:
            raise ThreatModelViolation(
                f"defense {self._name!r} read the target image but its threat model says knows_target=False"
            )
        return self._target

    @property
    def trigger(self) -> Trigger | None:
        """A backdoor attack's trigger (None for an attack without one), only for ``ThreatModel(knows_trigger=True)``."""
        if not self.threat.knows_trigger:
            raise ThreatModelViolation(
                f"defense {self._name!r} read the backdoor trigger but its threat model says knows_trigger=False"
            )
        return self._trigger

    @property
    def attack_budget(self) -> int:
        """The true number of poisoned training samples (only for ``ThreatModel(knows_budget=True)``)."""
        if not self.threat.knows_budget:
            raise ThreatModelViolation(
                f"defense {self._name!r} read the attack budget but its threat model says knows_budget=False; "
                "declare ThreatModel(knows_budget=True) (reported with every result) or take the count as an option"
            )
        return self._budget

    def train_without(self, removed: torch.Tensor, desc: str = "retrain") -> Network:
        """Retrain with the run's recipe on every training sample except ``removed`` (the usual
        last step of a data-removal defense; cached like every ``train`` call). Removing nothing leaves the
        poisoned training set, so the poisoned model is returned rather than trained again on the same data."""
        if len(removed) == 0:
            return self.poisoned_model
        keep = torch.ones(len(self.data.y_train), dtype=torch.bool, device=self.data.y_train.device)
        keep[torch.as_tensor(removed, device=keep.device).long()] = False
        return self.train(keep=keep.nonzero().squeeze(1), desc=desc)

    def trusted_data(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images with verified clean labels (stratified; never a poisoned sample). With the run's
        ``-o trusted.holdout=N`` they come from the N images held out before training, which no model of the run
        trained on (at most N); without it, from the training set."""
        if not self.threat.trusted_data:
            raise ThreatModelViolation(
                f"defense {self._name!r} asked for trusted data but its threat model says trusted_data=False"
            )
        if self._trusted_pool is not None:
            x, y = self._trusted_pool
            if n > len(y):
                log.warning("ptk: %s asked for %d trusted images; the run holds out %d (-o trusted.holdout): "
                            "using those", self._name, n, len(y))
            pick = stratified_indices(y, min(n, len(y)), self.seed + 7)
            return x[pick], y[pick]
        mask = torch.ones(len(self._clean_labels), dtype=torch.bool, device=self._clean_labels.device)
        mask[self._poison] = False
        pool = mask.nonzero().squeeze(1)
        if n > len(pool):
            log.warning("ptk: %s asked for %d trusted images; the training set holds %d clean ones: using those",
                        self._name, n, len(pool))
        pick = pool[stratified_indices(self._clean_labels[pool], min(n, len(pool)), self.seed + 7)]
        return self.data.x_train[pick], self._clean_labels[pick]
