"""The experiment's configuration: one dataclass that fully determines a run.

A run is a pure function of this config (plus the data and ptk's version): it
is written into results.json and ``ptk rerun`` rebuilds the run from it.
"""

from __future__ import annotations

import sys
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
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "ExperimentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**raw)


#: --preset quick: real handwritten digits (ships with scikit-learn), a narrow
#: ResNet-18 and a few epochs; about a minute on two CPU cores.
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
