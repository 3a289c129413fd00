"""The training service of one run: every model (clean, poisoned, each defense's retrain, each ensemble member)
is built and trained through :class:`Session`, so all share one recipe, one cache, one device and one seed.

Plugins never see a Session: their contexts (:mod:`ptk.context`) expose what their threat model allows of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .cache import ModelCache, cache_key, code_identity, module_digest, tensor_digest
from .data import Dataset
from .errors import UsageError
from .network import Network, channel_stats
from .progress import Timer, progress_line
from .train import Recipe, train_model
from .version import __version__


#: The modules whose code shapes a trained model's weights besides the model plugin's own: the loop, the
#: augmentation, the recipe's schedule, the normalising wrapper and this service's fit.
TRAINER_MODULES = ("ptk.train", "ptk.compiled", "ptk.augment", "ptk.recipe", "ptk.network", "ptk.session")


def trainer_identity(device: torch.device, compile_mode: str = "off") -> dict[str, Any]:
    """What a cached model depends on in ptk and below it: ptk's version, the sha256 of each trainer module's
    source (an edit to the loop, the augmentation or a schedule misses the cache), torch's version, the device
    type, the precision the forward runs in (bf16 autocast on CUDA, fp32 on the CPU) and the resolved
    ``--compile`` mode (compiled kernels round differently from eager ones)."""
    return {"ptk": __version__, "code": {m: module_digest(m) for m in TRAINER_MODULES},
            "torch": torch.__version__, "device": device.type,
            "precision": "bf16-autocast" if device.type == "cuda" else "fp32", "compile": compile_mode}


class ModelBuilder(Protocol):
    """What a Session needs of a model plugin (a :class:`ptk.ModelSpec`): its ``build``."""

    def build(self, num_classes: int, image_shape: tuple[int, int, int], options: dict[str, Any]) -> nn.Module: ...


@dataclass(frozen=True)
class TrainingRecord:
    """One :meth:`Session.train` call (or one ``own_training`` block): what it trained and for how long."""

    desc: str
    key: str | None  # the cache key; None for a plugin's own training loop
    cached: bool
    seconds: float  # spent in this run: 0 when cached
    cost: float | None = None  # what the training took, also when it came from the cache (None: not recorded)


@dataclass(frozen=True)
class Trained:
    """A model from :meth:`Session.train_tracked` and its cost: ``seconds`` of training in this run, 0 when
    ``cached``; ``cost``, what its training took whenever it ran (from the cache entry; None if unrecorded)."""

    model: Network
    seconds: float
    cached: bool
    cost: float | None = None


class Session:
    """Builds and trains models for one run: model plugin + recipe + cache + device + seed."""

    def __init__(self, *, data: Dataset, model: ModelBuilder, model_options: dict[str, Any],
                 provenance: dict[str, str], recipe: Recipe, cache: ModelCache, device: torch.device,
                 seed: int, compile_mode: str = "off") -> None:
        self.data = data
        self.model = model
        self.model_options = model_options
        self.provenance = dict(provenance)
        self.recipe = recipe
        self.cache = cache
        self.device = device
        self.seed = seed
        self.compile_mode = compile_mode  # resolved (never "auto"): see ptk.compiled
        self.mean, self.std = channel_stats(data.x_train)
        self.trained: list[TrainingRecord] = []  # one per train() call and own_training block, for the report
        self._identities: dict[type, dict[str, Any]] = {}
        self.trainer = trainer_identity(device, compile_mode)  # read once: an edit while the run goes on changes no key of it

    def model_identity(self, net: nn.Module) -> dict[str, Any]:
        """What a cached model of this run's architecture depends on besides its data: the model
        plugin's ``provenance`` (name, distribution, version) and the code of its ModelSpec and of ``net``'s class.

        Read once per Session and network class, so every model of a run gets the same key
        even if the plugin's file is edited while the run goes on.
        """
        cls = type(net)
        if cls not in self._identities:
            self._identities[cls] = {**self.provenance, "code": code_identity(type(self.model), cls)}
        return self._identities[cls]

    def build(self, seed: int) -> Network:
        torch.manual_seed(seed)
        net = self.model.build(self.data.num_classes, self.data.image_shape, self.model_options)
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
                raise UsageError(f"{desc}: only {keep.numel()} training samples left; cannot train")
        with Timer() as timer:
            built = self.build(seed)
            key = self.key_for(built, x, y, keep, weights, seed)
            xs, ys = (x, y) if keep is None else (x[keep], y[keep])
            ws = weights if weights is None or keep is None else weights[keep]
            info = {"desc": desc, "samples": len(ys), "seed": seed, "model": self.model_identity(built.net)}

            def fit(m: Network) -> Network:
                with Timer() as fitting:
                    m = self.fit(m, xs, ys, ws, seed, desc)
                info["train_seconds"] = round(fitting.seconds, 3)  # kept in the entry: its cost when reused
                return m

            model, cached = self.cache.get_or_train(key, build=lambda: built, train=fit, info=info)
        if cached:
            progress_line(f"{desc}: loaded from the cache")
        cost = self.cache.recorded_seconds(key) if cached else timer.seconds
        self.trained.append(TrainingRecord(desc, key, cached, 0.0 if cached else timer.seconds, cost))
        return Trained(model, 0.0 if cached else timer.seconds, cached, cost)

    def cached_training_cost(self, since: int = 0) -> float | None:
        """What the models read from the cache in ``trained[since:]`` took to train when they were cached; None
        when one of them has no recorded time."""
        costs = [r.cost for r in self.trained[since:] if r.cached]
        return None if any(c is None for c in costs) else sum(costs)

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
            "pretrained": getattr(built.net, "pretrained_sha256", None),
            "trainer": self.trainer,
        })

    def fit(self, model: Network, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, seed: int,
            desc: str) -> Network:
        """Train ``model`` with the run's recipe, with a line before and after when stderr is not a
        terminal (tqdm's bar shows nothing in a log file, and a model can train for many minutes)."""
        epochs = self.recipe.epochs
        progress_line(f"training {desc} ({len(y)} samples, {epochs} epoch{'s' if epochs != 1 else ''}) ...")
        with Timer() as timer:
            model = train_model(model, x, y, self.recipe, seed, weights, desc=desc, compile_mode=self.compile_mode)
        progress_line(f"training {desc} done in {timer.seconds:.1f} s")
        return model
