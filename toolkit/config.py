"""The experiment's configuration: one dataclass that fully determines a run.

A run is a pure function of this config (plus the data and ptk's version): it
is written into results.json and ``ptk rerun`` rebuilds the run from it.
"""

from __future__ import annotations

import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .options import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ExperimentConfig:
    dataset: str = "cifar10"
    model: str = "resnet18"
    attack: str = "labelflip"
    defenses: list[str] = field(default_factory=lambda: ["ensemble"])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipe: str = "study"
    epochs: int = 10
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    subset: int | None = None
    test_subset: int | None = None
    source: str | None = None
    target: str | None = None
    target_index: int | None = None
    target_choice: str = "hardest"
    target_rank: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "ExperimentConfig":
        """A config from a mapping (a --config file merged with flags), every value type- and range-checked."""
        values = cls.check_types(raw, where)
        config = cls(**values)
        config.check_ranges(where)
        return config

    @classmethod
    def check_types(cls, raw: dict[str, Any], where: str = "config") -> dict[str, Any]:
        """``raw`` with ``defenses`` normalised to a list of names; raises UsageError naming ``where`` and the key.

        Driven by the dataclass's own annotations, so a new field is checked
        without new code. ``defenses = "a,b"`` means a and b, as ``--defense a,b`` does.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        values = dict(raw)
        names = values.get("defenses")
        names = [names] if isinstance(names, str) else names
        if isinstance(names, list) and all(isinstance(v, str) for v in names):
            values["defenses"] = [n.strip() for v in names for n in v.split(",") if n.strip()]
        for key, value in values.items():
            problem = type_problem(value, hints[key])
            if problem:
                raise UsageError(f"{where}: key {key!r} {problem}, got {value!r}")
        for plugin, opts in values.get("options", {}).items():
            if not isinstance(opts, dict):
                raise UsageError(f"{where}: options.{plugin} must be a table of option = value, got {opts!r}")
        return values

    def check_ranges(self, where: str = "config") -> None:
        """Values of the right type that no run can use: each names the key and the fix."""
        if self.target_choice not in ("hardest", "random"):
            raise UsageError(f"{where}: target_choice must be hardest or random, got {self.target_choice!r}")
        for key, low in (("epochs", 1), ("batch_size", 1), ("subset", 1), ("test_subset", 1), ("target_index", 0),
                         ("target_rank", 0)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise UsageError(f"{where}: {key} must be at least {low}, got {value} (--{key.replace('_', '-')})")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"{where}: lr must be positive, got {self.lr} (--lr; leave it out for the recipe's default)")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"{where}: seed must be in 0 .. 2**32-1 (numpy's seed range), got {self.seed} (--seed)")


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (str, int, float, X | None, list[str],
    dict[str, dict]), or None. bool is not accepted as a number, and an int is accepted as a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return type_problem(value, inner[0]) if len(inner) == 1 else None
    if hint is Any:
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if origin is list:
        if not isinstance(value, list):
            return "must be a list"
        bad = next((v for v in value if args and type_problem(v, args[0])), None)
        return f"must be a list of {args[0].__name__}s ({bad!r} is not)" if bad is not None else None
    if origin is dict:
        return None if isinstance(value, dict) else "must be a table"
    return None


#: --preset quick: real handwritten digits (ships with scikit-learn), a narrow
#: ResNet-18 and a few epochs; 48 s for `--defense ensemble` on two CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "study": {},
    "quick": {
        "dataset": "digits",
        "epochs": 6,
        "lr": 2e-3,
        "batch_size": 64,
        "options": {"resnet18": {"width": 16}, "labelflip": {"budget": 40}, "ensemble": {"k": 3}},
    },
}


def load_toml(path: Path) -> dict[str, Any]:
    """Read a --config file; a syntax error names the file, line and problem."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; the per-plugin ``options`` tables merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if key == "options":
            opts = {p: dict(v) for p, v in out.get("options", {}).items()}
            for plugin, values in value.items():
                opts.setdefault(plugin, {}).update(values)
            out["options"] = opts
        else:
            out[key] = value
    return out
