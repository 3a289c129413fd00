"""``ptk sweep``: a grid of runs (attacks x defenses x targets x seeds x options) into one SQLite store.

A grid file is a ``--config`` file plus a ``[grid]`` table whose values are
lists; every combination is a *cell*, and a cell is exactly one ``ptk run``
config. Its id is a hash of that config, so rerunning the same grid skips
finished cells, and editing the grid adds or drops cells without touching the
rows of the others. ``targets = N`` expands to N target ranks per seed (the
N hardest, or N drawn at random, of the source-class test images the clean
model gets right); cells of one seed share the clean model through the model
cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ExperimentConfig, load_toml, merge, short
from .errors import UsageError
from .rates import settings_label

if TYPE_CHECKING:
    from .registry import Registry

#: ExperimentConfig fields a grid may vary; anything with a dot is a plugin option (``labelflip.budget``).
RUN_KEYS = {"dataset", "model", "attack", "defenses", "recipe", "epochs", "batch_size", "lr", "seed", "subset",
            "test_subset", "source", "target", "target_index", "target_choice"}


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its full config, a stable id, and the grid values that made it."""

    id: str
    config: ExperimentConfig
    values: dict[str, Any]

    @property
    def label(self) -> str:
        """The grid values that make this cell, as messages name it: ``seed=1, target_rank=2``."""
        return settings_label(self.values)


#: Settings added to ExperimentConfig after stores existed, with their default: a cell that leaves one at its
#: default hashes as it did before the setting existed, so a store keeps resuming across the upgrade.
ADDED_SETTINGS = {"compile": "auto"}


def cell_id(config: ExperimentConfig) -> str:
    """Hash of the resolved config: the same settings are the same cell, whatever the grid file looks like."""
    values = {k: v for k, v in config.to_dict().items() if ADDED_SETTINGS.get(k, object()) != v}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def read_grid(path: Path, presets: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``(base settings, grid)`` of a grid file; the base is a --config file's settings with its preset applied."""
    raw = load_toml(path)
    grid = raw.pop("grid", None)
    if not isinstance(grid, dict) or not grid:
        raise UsageError(f"{path}: a grid file needs a [grid] table of lists, e.g. [grid] seed = [0, 1, 2]")
    preset = raw.pop("preset", "study")
    if preset not in presets:
        raise UsageError(f"{path}: unknown preset {preset!r}; presets are: {', '.join(presets)}")
    base = merge(presets[preset], ExperimentConfig.check_types(raw, str(path)))
    lists = {}
    for key, value in grid.items():
        if key == "targets":
            lists[key] = [value]  # expanded per seed below
            continue
        if key not in RUN_KEYS and "." not in key:
            raise UsageError(f"{path}: grid key {key!r} is neither a run setting ({', '.join(sorted(RUN_KEYS))}) "
                             "nor a plugin option written PLUGIN.OPTION")
        if not isinstance(value, list):
            raise UsageError(f"{path}: grid key {key!r} must be a list of values, e.g. {key} = [{value!r}]; "
                             "a single value belongs above [grid], as a run setting")
        lists[key] = value
        if not lists[key]:
            raise UsageError(f"{path}: grid key {key!r} has an empty list")
    return base, lists


#: ``ptk sweep run --max-cells``' default: a grid larger than this is refused before it is expanded.
MAX_CELLS = 10_000


def target_count(spec: Any, where: str) -> int:
    """How many targets ``targets = SPEC`` gives, without making them (``targets = 1000000`` costs nothing)."""
    if isinstance(spec, bool) or not isinstance(spec, (int, list)):
        raise UsageError(f"{where}: grid key 'targets' must be a number N or a list of test indices, "
                         f"got {short(spec)}")
    if isinstance(spec, list) and not spec:
        raise UsageError(f"{where}: grid key 'targets' is an empty list: it would run no cell; give test indices "
                         "or a number N of targets")
    return spec if isinstance(spec, int) else len(spec)


def cell_count(grid: dict[str, list[Any]], where: str) -> int:
    """The number of cells ``grid`` expands to (before duplicates merge), counted, not expanded."""
    count = target_count(grid["targets"][0], where) if "targets" in grid else 1
    for key, values in grid.items():
        if key != "targets":
            count *= len(values)
    return count


def check_size(grid: dict[str, list[Any]], where: str, max_cells: int = MAX_CELLS) -> int:
    """The grid's cell count; a UsageError within a second when it is above ``max_cells``."""
    count = cell_count(grid, where)
    if count > max_cells:
        raise UsageError(f"{where}: the grid has {count:,} cells, more than --max-cells {max_cells:,}; shrink the "
                         "grid or pass a larger --max-cells")
    return count


def target_ranks(spec: Any, where: str) -> list[dict[str, Any]]:
    """``targets = N`` (ranks 0..N-1 of the chosen order) or a list of test indices."""
    target_count(spec, where)
    if isinstance(spec, int):
        if spec < 1:
            raise UsageError(f"{where}: grid key 'targets' must be at least 1, got {spec}")
        return [{"target_rank": k} for k in range(spec)]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        raise UsageError(f"{where}: grid key 'targets' as a list must hold test indices (integers), got {spec!r}")
    return [{"target_index": i} for i in spec]


def expand(base: dict[str, Any], grid: dict[str, list[Any]], where: str, max_cells: int = MAX_CELLS) -> list[Cell]:
    """Every combination of the grid's values on top of ``base``, as checked configs (duplicates merged); a grid
    of more than ``max_cells`` is refused before any is made."""
    check_size(grid, where, max_cells)
    keys = [k for k in grid if k != "targets"]
    targets = target_ranks(grid["targets"][0], where) if "targets" in grid else [{}]
    cells: dict[str, Cell] = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        for target in targets:
            settings = dict(base)
            options: dict[str, dict[str, Any]] = {}
            for key, value in values.items():
                if "." in key:
                    plugin, option = key.split(".", 1)
                    options.setdefault(plugin, {})[option] = value
                else:
                    settings[key] = value
            settings = merge(settings, {"options": options, **target})
            config = ExperimentConfig.from_dict(settings, where=f"{where} (cell {settings_label({**values, **target})})")
            cell = Cell(cell_id(config), config, {**values, **target})
            cells.setdefault(cell.id, cell)
    return list(cells.values())


class once_per_message(logging.Filter):
    """While active, a logger passes each distinct message once: a warning a plugin's check gives for every
    cell of a grid (say, a large label-flip budget) is printed once, not sixty times."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.seen = logger, set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True

    def __enter__(self) -> "once_per_message":
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeFilter(self)


def check_cells(cells: list[Cell], registry: Registry, data_root: Path | None) -> None:
    """Every cell planned and checked against its data as `ptk run` would, before the first training:
    a bad cell is refused naming the cell. Data are loaded once per distinct data setting."""
    from .experiment import check_against_data, load_data, plan

    loaded: dict[str, Any] = {}
    with once_per_message(logging.getLogger("ptk")):
        for cell in cells:
            try:
                p = plan(cell.config, registry)
                c = cell.config
                key = json.dumps([c.dataset, p.options[p.dataset.name], c.subset, c.test_subset, c.seed],
                                 sort_keys=True, default=str)
                if key not in loaded:
                    loaded[key] = load_data(p, data_root)
                check_against_data(p, loaded[key])
            except UsageError as exc:
                raise UsageError(f"cell {cell.label}: {exc}") from None
