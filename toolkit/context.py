"""What plugins receive at run time: data, models and the shared training service.

:class:`Session` owns the model plugin, recipe, cache, device and seed; every
model of a run (clean, poisoned, each defense's retrain, each ensemble member)
is trained through :meth:`Session.train`, so all share one recipe and one cache.
Contexts expose a Session to attacks and defenses, limited by the threat model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, TypeVar

import torch
from torch import nn

from . import train as trainlib
from .api import ThreatModel, Trigger
from .cache import ModelCache, cache_key, code_identity, tensor_digest
from .data import Dataset, stratified_indices
from .errors import ThreatModelViolation
from .network import Network, channel_stats
from .registry import Entry

T = TypeVar("T")


@dataclass(frozen=True)
class TrainingRecord:
    """One :meth:`Session.train` call (or one ``own_training`` block): what it trained and for how long."""

    desc: str
    key: str | None  # the cache key; None for a plugin's own training loop
    cached: bool
    seconds: float


@dataclass(frozen=True)
class Trained:
    """A model from :meth:`Session.train_tracked` and its cost: ``seconds`` of training, 0 when ``cached``."""

    model: Network
    seconds: float
    cached: bool


@dataclass(frozen=True)
class Target:
    """The test image the attack aims at, and the misclassification it wants."""

    index: int
    source_class: int
    target_class: int
    image: torch.Tensor  # uint8 (1, C, H, W)


class Session:
    """Builds and trains models for one run: model plugin + recipe + cache + device + seed."""

    def __init__(self, data: Dataset, model: Entry, model_options: dict[str, Any], recipe: trainlib.Recipe,
                 cache: ModelCache, device: torch.device, seed: int) -> None:
        self.data = data
        self.model_entry = model
        self.model_options = model_options
        self.recipe = recipe
        self.cache = cache
        self.device = device
        self.seed = seed
        self.mean, self.std = channel_stats(data.x_train)
        self.trained: list[TrainingRecord] = []  # one per train() call and own_training block, for the report
        self._identities: dict[type, dict[str, Any]] = {}

    def model_identity(self, net: nn.Module) -> dict[str, Any]:
        """What a cached model of this run's architecture depends on besides its data: the model
        plugin's name, distribution, version and the code of its ModelSpec and of ``net``'s class.

        Read once per Session and network class, so every model of a run gets the same key
        even if the plugin's file is edited while the run goes on.
        """
        cls = type(net)
        if cls not in self._identities:
            e = self.model_entry
            self._identities[cls] = {"name": e.name, "distribution": e.dist, "version": e.version,
                                     "code": code_identity(type(e.plugin), cls)}
        return self._identities[cls]

    def build(self, seed: int) -> Network:
        torch.manual_seed(seed)
        net = self.model_entry.plugin.build(self.data.num_classes, self.data.image_shape, self.model_options)
        return Network(net, self.mean, self.std).to(self.device)

    def train(self, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor | None = None,
              weights: torch.Tensor | None = None, seed: int | None = None, desc: str = "train") -> Network:
        """A model trained with the run's recipe on ``x[keep]``, ``y[keep]`` (cached by content)."""
        return self.train_tracked(x, y, keep, weights, seed, desc).model

    def train_tracked(self, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor | None = None,
                      weights: torch.Tensor | None = None, seed: int | None = None, desc: str = "train") -> Trained:
        """:meth:`train`, with what the model cost beside it (for its row in the results)."""
        seed = self.seed if seed is None else seed
        if keep is not None:
            keep = torch.as_tensor(keep, device=x.device).long()
            if keep.numel() < 2:
                from .options import UsageError

                raise UsageError(f"{desc}: only {keep.numel()} training samples left; cannot train")
        with trainlib.Timer() as timer:
            built = self.build(seed)
            key = self.key_for(built, x, y, keep, weights, seed)
            xs, ys = (x, y) if keep is None else (x[keep], y[keep])
            ws = weights if weights is None or keep is None else weights[keep]
            model, cached = self.cache.get_or_train(
                key,
                build=lambda: built,
                train=lambda m: self.fit(m, xs, ys, ws, seed, desc),
                info={"desc": desc, "samples": len(ys), "seed": seed, "model": self.model_identity(built.net)},
            )
        if cached:
            trainlib.progress_line(f"{desc}: loaded from the cache")
        self.trained.append(TrainingRecord(desc, key, cached, timer.seconds))
        return Trained(model, 0.0 if cached else timer.seconds, cached)

    def training_seconds(self, since: int = 0) -> float:
        """Seconds spent training (models from the cache cost none) in ``trained[since:]``."""
        return sum(r.seconds for r in self.trained[since:] if not r.cached)

    def key_for(self, built: Network, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor | None,
                weights: torch.Tensor | None, seed: int) -> str:
        """The cache key of training ``built`` on ``x[keep]``, ``y[keep]``: everything the weights depend on."""
        return cache_key({
            "data": self.data.fingerprint(),
            "x": tensor_digest(x) if x is not self.data.x_train else "clean",
            "y": tensor_digest(y),
            "keep": tensor_digest(keep),
            "weights": tensor_digest(weights),
            "model": self.model_identity(built.net),
            "model_options": self.model_options,
            "recipe": self.recipe.to_dict(),
            "seed": seed,
        })

    def fit(self, model: Network, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, seed: int,
            desc: str) -> Network:
        """Train ``model`` with the run's recipe, with a line before and after when stderr is not a
        terminal (tqdm's bar shows nothing in a log file, and a model can train for many minutes)."""
        epochs = self.recipe.epochs
        trainlib.progress_line(f"training {desc} ({len(y)} samples, {epochs} epoch{'s' if epochs != 1 else ''}) ...")
        with trainlib.Timer() as timer:
            model = trainlib.train_model(model, x, y, self.recipe, seed, weights, desc=desc)
        trainlib.progress_line(f"training {desc} done in {timer.seconds:.1f} s")
        return model


class BaseContext:
    """Services shared by attack and defense contexts."""

    def __init__(self, session: Session, data: Dataset, options_of: dict[str, dict[str, Any]]) -> None:
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
    def recipe(self) -> trainlib.Recipe:
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
        with trainlib.Timer() as timer:
            yield
        self._session.trained.append(TrainingRecord(desc, None, False, timer.seconds))

    @staticmethod
    def features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate-layer activations (eval mode, no augmentation)."""
        return trainlib.features(model, x, batch_size)

    @staticmethod
    def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return trainlib.predict_proba(model, x, batch_size)

    @staticmethod
    def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return trainlib.per_sample_loss(model, x, y, batch_size)

    @staticmethod
    def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        return trainlib.progress(items, desc, total)


class AttackContext(BaseContext):
    """Given to :meth:`ptk.Attack.poison`: the clean data, the clean model and the target."""

    def __init__(self, session: Session, data: Dataset, options_of: dict, clean_model: Network, target: Target) -> None:
        super().__init__(session, data, options_of)
        self.clean_model = clean_model
        self.target = target


class DefenseContext(BaseContext):
    """Given to :meth:`ptk.Defense.defend`: the poisoned training set and the poisoned model.

    ``target``, ``trigger``, ``trusted_data`` and ``attack_budget`` are available only
    when the defense's threat model declares them; otherwise reading them raises
    ThreatModelViolation.
    """

    def __init__(self, session: Session, data: Dataset, options_of: dict, poisoned_model: Network,
                 target: Target, threat: ThreatModel, attack_budget: int, clean_labels: torch.Tensor,
                 poison_indices: torch.Tensor, defense_name: str, trigger: Trigger | None = None) -> None:
        super().__init__(session, data, options_of)
        self.poisoned_model = poisoned_model
        self.threat = threat
        self._budget = attack_budget
        self._target = target
        self._clean_labels = clean_labels
        self._poison = poison_indices
        self._name = defense_name
        self._trigger = trigger

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
        """``n`` training images with verified clean labels (stratified; never a poisoned sample)."""
        if not self.threat.trusted_data:
            raise ThreatModelViolation(
                f"defense {self._name!r} asked for trusted data but its threat model says trusted_data=False"
            )
        mask = torch.ones(len(self._clean_labels), dtype=torch.bool, device=self._clean_labels.device)
        mask[self._poison] = False
        pool = mask.nonzero().squeeze(1)
        pick = pool[stratified_indices(self._clean_labels[pool], min(n, len(pool)), self.seed + 7)]
        return self.data.x_train[pick], self._clean_labels[pick]
