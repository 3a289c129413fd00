"""How a model is trained, as data: every number the weights depend on, in one frozen :class:`Recipe`.

A recipe is recorded whole in results.json, hashed whole into the model cache key, listed by
``ptk recipes`` and overridable field by field (``-o recipe.momentum=0.85``). Nothing that shapes the
weights lives as a constant inside the trainer. ``FIELDS`` is the table of every field with the reason
for its default, as airbench's ``hyp`` table is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .config import bound_problem
from .errors import UsageError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "triangle", "warmup-linear")
PAD_MODES = ("zeros", "reflect")


@dataclass(frozen=True)
class Field:
    """One recipe field: its type, the values it may take, and why the named recipes use what they use."""

    type: type
    why: str
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive


#: Every recipe field and the reason for its value in the named recipes (``ptk recipes`` prints this).
FIELDS: dict[str, Field] = {
    "optimizer": Field(str, "study: Adam, as the seed study trains; fast: SGD with Nesterov momentum, the "
                            "published ResNet-18 recipe's", OPTIMIZERS),
    "epochs": Field(int, "10, the seed's (set by --epochs; the published 93.4% run is --recipe published "
                         "--epochs 26)"),
    "batch_size": Field(int, "study: the seed's 128; fast: 500, the published recipe's (lr 0.2 at batch 500)"),
    "lr": Field(float, "peak learning rate: study the seed's 1e-4 (Adam); fast the published 0.2"),
    "momentum": Field(float, "SGD momentum; 0.9 in the published recipe (unused by Adam)", low=0, high=1),
    "nesterov": Field(bool, "Nesterov momentum, as the published recipe (SGD only)"),
    "weight_decay": Field(float, "L2 on the weights: 5e-4, the published recipe's; 0 for the seed's Adam", low=0),
    "decay_norm_and_bias": Field(bool, "whether weight decay also applies to BatchNorm weights and biases: the "
                                       "published recipe decays every parameter"),
    "schedule": Field(str, "learning-rate shape: constant (the seed's Adam); triangle, a linear rise from "
                           "start_factor to the peak over `warmup` of the steps, then linear to 0 (published); "
                           "warmup-linear, (step+1)/warm-up then linear to 0 (ptk's fast before 0.2)", SCHEDULES),
    "warmup": Field(float, "share of the steps spent rising to the peak: 0.2 in the published triangle",
                    low=0, high=1),
    "start_factor": Field(float, "the triangle's first learning rate as a share of the peak: 0.2, published",
                          low=0, high=1),
    "label_smoothing": Field(float, "cross-entropy label smoothing; 0 in the published ResNet-18 recipe and the "
                                    "seed", low=0, high=1),
    "augment": Field(bool, "crop-and-flip augmentation on or off (off: pad, flip and cutout are not applied)"),
    "pad": Field(int, "pixels of padding before the random 32x32 crop (a +-4 pixel translate), as everywhere",
                 low=0),
    "pad_mode": Field(str, "what the padding holds: zeros (the seed's torchvision RandomCrop default) or reflect "
                           "(the published recipe's translate)", PAD_MODES),
    "flip": Field(bool, "random horizontal flips, as everywhere on CIFAR-10"),
    "cutout": Field(int, "side of a random square zeroed per image (0: off); 12 in the published 26-epoch run",
                    low=0),
    "ema": Field(float, "per-step decay of an exponential moving average of the weights that replaces them at "
                        "the end (0: off)", low=0, high=0.99999),
}


@dataclass(frozen=True)
class Recipe:
    """How every model of a run is trained; see ``FIELDS`` for each field's reason and ``RECIPES`` for the named
    ones. Build a named one with :func:`named_recipe`; a bare ``Recipe()`` is ``study``."""

    name: str = "study"
    optimizer: str = "adam"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-4
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = True
    schedule: str = "constant"
    warmup: float = 0.0
    start_factor: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    pad: int = 4
    pad_mode: str = "zeros"
    flip: bool = True
    cutout: int = 0
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise UsageError(f"unknown recipe {self.name!r}; recipes are: {', '.join(RECIPES)} (ptk recipes)")
        for key, spec in FIELDS.items():
            problem = field_problem(key, getattr(self, key), spec)
            if problem:
                raise UsageError(f"recipe.{key} {problem} (ptk recipes lists the fields)")
        for key in ("epochs", "batch_size", "lr"):
            problem = bound_problem(key, getattr(self, key))
            if problem:
                raise UsageError(problem)
        if self.augment and self.pad >= 32:
            raise UsageError(f"recipe.pad must be below the image size, got {self.pad}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_values(self, values: dict[str, Any], where: str = "recipe") -> "Recipe":
        """This recipe with ``values`` (field -> value; strings from ``-o recipe.F=V`` are parsed), checked."""
        known = {f.name for f in fields(self)} - {"name"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{where}: unknown recipe field(s) {', '.join(unknown)}; fields are: "
                             f"{', '.join(sorted(known))} (ptk recipes)")
        parsed = {k: parse_field(k, v, where) for k, v in values.items()}
        return replace(self, **parsed)


def field_problem(key: str, value: Any, spec: Field) -> str | None:
    if spec.type is bool:
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
        return None
    if spec.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"must be an integer, got {value!r}"
    if spec.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"must be a number, got {value!r}"
    if spec.type is str and not isinstance(value, str):
        return f"must be a string, got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"must be one of {', '.join(spec.choices)}, got {value!r}"
    if spec.type in (int, float):
        if not math.isfinite(value):
            return f"must be finite, got {value!r}"
        if spec.low is not None and value < spec.low:
            return f"must be at least {spec.low}, got {value!r}"
        if spec.high is not None and value > spec.high:
            return f"must be at most {spec.high}, got {value!r}"
    return None


def parse_field(key: str, value: Any, where: str) -> Any:
    """A typed value for ``key`` from a TOML value or an ``-o`` string (``true``/``false`` for booleans)."""
    spec = FIELDS.get(key)
    if spec is None or not isinstance(value, str) or spec.type is str:
        return value
    try:
        if spec.type is bool:
            low = value.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        return spec.type(value)
    except ValueError:
        raise UsageError(f"{where}: recipe.{key}={value!r} is not a valid {spec.type.__name__}") from None


_STUDY = dict(optimizer="adam", epochs=10, batch_size=128, lr=1e-4)
_FAST = dict(optimizer="sgd", epochs=10, batch_size=500, lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
             decay_norm_and_bias=True, schedule="triangle", warmup=0.2, start_factor=0.2, label_smoothing=0.0,
             pad_mode="reflect")

#: The named recipes. ``study`` is the seed's (Adam 1e-4, batch 128, 10 epochs) and stays so. ``fast`` is the
#: published ResNet-18 recipe's hyperparameters (KellerJordan/cifar10-zoo, airbench's
#: baselines/train_resnet18_94.py: SGD Nesterov 0.9, lr 0.2 at batch 500, weight decay 5e-4 on every
#: parameter, a triangle peaking at 20% of the steps from 0.2x, flip plus a 4-pixel reflect translate) at 10
#: epochs. ``published`` adds that recipe's cutout 12; run it ``--epochs 26`` for the published run, reported
#: at 93.4% on CIFAR-10 (a run's epochs come from ``--epochs``, default 10, whatever the recipe).
RECIPES: dict[str, dict[str, Any]] = {
    "study": _STUDY,
    "fast": _FAST,
    "published": {**_FAST, "cutout": 12},
}


def named_recipe(name: str, **values: Any) -> Recipe:
    """The recipe called ``name`` with ``values`` on top (unknown names are refused with the list)."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; recipes are: {', '.join(RECIPES)} (ptk recipes)")
    return Recipe(name=name, **RECIPES[name]).with_values(values)


def lr_factor(recipe: Recipe, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` of ``total_steps`` as a share of ``recipe.lr``."""
    if recipe.schedule == "constant":
        return 1.0
    warm = max(1, math.floor(total_steps * recipe.warmup + 1e-9))
    if recipe.schedule == "warmup-linear":
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))
    if step < warm:  # triangle
        return recipe.start_factor + (1 - recipe.start_factor) * step / warm
    return max(0.0, (total_steps - step) / max(1, total_steps - warm))
