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

from .errors import UsageError
from .options import parse_assignments

#: ``--compile``'s modes (what each does: :mod:`ptk.compiled`); here, not there, so that reading a config
#: does not import torch.
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "aot_eager")


def check_compile(mode: str) -> None:
    """Refuse a ``--compile`` value that is not one of COMPILE_MODES, naming the flag and the choices."""
    if mode not in COMPILE_MODES:
        raise UsageError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {short(mode)} (--compile)")

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
    compile: str = "auto"  # torch.compile of the training step: see ptk.compiled

    def __post_init__(self) -> None:
        """Every ExperimentConfig that exists is valid: built from a --config file, flags, a grid cell, a
        recorded results.json or Python, it is checked here once, and passed on as itself from then on."""
        values = self.to_dict()
        problem = type(self).value_types_problem(values)
        if problem:
            raise UsageError(problem)
        if self.target_choice not in ("hardest", "random"):
            raise UsageError(f"target_choice must be hardest or random, got {short(self.target_choice)}")
        check_compile(self.compile)
        for key in BOUNDS:
            problem = bound_problem(key, values[key])
            if problem:
                raise UsageError(problem)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "ExperimentConfig":
        """A config from a mapping (a --config file merged with flags, a grid cell, a recorded config); a
        problem is a UsageError naming ``where`` and the key."""
        values = cls.normalised(raw, where)
        try:
            return cls(**values)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None

    @classmethod
    def check_types(cls, raw: dict[str, Any], where: str = "config") -> dict[str, Any]:
        """``raw`` normalised (see :meth:`normalised`), each value's type checked: for the settings of a file
        before they are merged with flags or a grid, so a bad one names its file."""
        values = cls.normalised(raw, where)
        problem = cls.value_types_problem(values)
        if problem:
            raise UsageError(f"{where}: {problem}")
        return values

    @classmethod
    def value_types_problem(cls, values: dict[str, Any]) -> str | None:
        """The first value of ``values`` (known keys only) whose type does not fit its field, as a message."""
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            problem = type_problem(value, hints[key])
            if problem:
                return f"key {key!r} {problem}, got {short(value)}"
        options = values.get("options", {})
        for plugin, opts in (options.items() if isinstance(options, dict) else ()):
            if not isinstance(opts, dict):
                return f"options.{plugin} must be a table of option = value, got {short(opts)}"
        return None

    @classmethod
    def normalised(cls, raw: dict[str, Any], where: str = "config") -> dict[str, Any]:
        """``raw`` with unknown keys refused and ``defenses`` normalised to a list of names:
        ``defenses = "a,b"`` means a and b, as ``--defense a,b`` does."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        values = dict(raw)
        names = values.get("defenses")
        names = [names] if isinstance(names, str) else names
        if isinstance(names, list) and all(isinstance(v, str) for v in names):
            values["defenses"] = [n.strip() for v in names for n in v.split(",") if n.strip()]
        return values


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting may take, and the fix a message suggests."""

    low: float
    high: float | None = None
    low_inclusive: bool = True
    hint: str = ""
    high_label: str = ""  # how messages write ``high`` (2**32-1 reads better than 4294967295)
    as_range: bool = False  # messages give the whole range (a seed's), not just the side that was crossed


#: The one table of numeric bounds, for the run's config and for :class:`ptk.train.Recipe` (whose epochs,
#: batch size and learning rate are these settings).
#: The upper bounds are far above any real run and stop a typo (``--epochs 1000000000``) from reaching code
#: that sizes a progress bar or an array by it.
BOUNDS: dict[str, Bound] = {
    "epochs": Bound(1, 100_000, high_label="100,000"),
    "batch_size": Bound(1, 10**7, high_label="10**7"),
    "lr": Bound(0, low_inclusive=False, hint="; leave it out for the recipe's default"),
    "seed": Bound(0, 2**32 - 1, hint=" (numpy's seed range)", high_label="2**32-1", as_range=True),
    "subset": Bound(1, 10**9, high_label="10**9"),
    "test_subset": Bound(1, 10**9, high_label="10**9"),
    "target_index": Bound(0, 10**9, high_label="10**9"),
    "target_rank": Bound(0, 10**9, high_label="10**9"),
}


def bound_problem(key: str, value: float | None) -> str | None:
    """Why ``value`` is outside ``BOUNDS[key]`` (None when inside, or unset): names the key and its flag."""
    if value is None:
        return None
    b, flag = BOUNDS[key], f"--{key.replace('_', '-')}"
    if b.high is not None and b.as_range and not b.low <= value <= b.high:
        return f"{key} must be in {b.low} .. {b.high_label or b.high}{b.hint}, got {short(value)} ({flag})"
    if b.high is not None and value > b.high:
        return f"{key} must be at most {b.high_label or b.high}, got {short(value)} ({flag})"
    if not b.low_inclusive and not value > b.low:
        return f"{key} must be positive, got {short(value)} ({flag}{b.hint})"
    if b.low_inclusive and value < b.low:
        return f"{key} must be at least {b.low}, got {short(value)} ({flag}{b.hint})"
    return None


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays one readable line whatever was typed."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


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
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a directory; give a TOML file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path} is not UTF-8 text (TOML must be): {exc.reason} at byte {exc.start}") from None
    except PermissionError:
        raise UsageError(f"config file {path} cannot be read (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    except ValueError as exc:  # Python refuses to read an integer of over 4,300 digits
        raise UsageError(f"config file {path} holds a number too long to read ({str(exc).split(':')[0]}); no "
                         "setting takes one: fix the typo") from None


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


def build_config(preset: str | None, config_file: Path | None, flags: dict[str, Any], defenses: tuple[str, ...],
                 assignments: tuple[str, ...]) -> ExperimentConfig:
    """Defaults < --preset < --config FILE < command-line flags and -o options."""
    file_values = load_toml(config_file) if config_file else {}
    preset = preset or file_values.pop("preset", None) or "study"
    file_values.pop("preset", None)
    file_values = ExperimentConfig.check_types(file_values, str(config_file))  # before merging: names the file
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; presets are: {', '.join(PRESETS)}")
    values = merge(PRESETS[preset], file_values)
    given = {k: v for k, v in flags.items() if v is not None}
    if defenses:
        given["defenses"] = list(defenses)
    given["options"] = parse_assignments(assignments)
    return ExperimentConfig.from_dict(merge(values, given), where=str(config_file or "config"))
