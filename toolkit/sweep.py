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
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .atomic import write_json
from .config import ExperimentConfig, load_toml, merge
from .options import UsageError
from .train import progress

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


def settings_label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def cell_id(config: ExperimentConfig) -> str:
    """Hash of the resolved config: the same settings are the same cell, whatever the grid file looks like."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


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
        lists[key] = value if isinstance(value, list) else [value]
        if not lists[key]:
            raise UsageError(f"{path}: grid key {key!r} has an empty list")
    return base, lists


def target_ranks(spec: Any, where: str) -> list[dict[str, Any]]:
    """``targets = N`` (ranks 0..N-1 of the chosen order) or a list of test indices."""
    if isinstance(spec, bool) or not isinstance(spec, (int, list)):
        raise UsageError(f"{where}: grid key 'targets' must be a number N or a list of test indices, got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise UsageError(f"{where}: grid key 'targets' must be at least 1, got {spec}")
        return [{"target_rank": k} for k in range(spec)]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        raise UsageError(f"{where}: grid key 'targets' as a list must hold test indices (integers), got {spec!r}")
    return [{"target_index": i} for i in spec]


def expand(base: dict[str, Any], grid: dict[str, list[Any]], where: str) -> list[Cell]:
    """Every combination of the grid's values on top of ``base``, as checked configs (duplicates merged)."""
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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate: honest at small n and at rates of 0 or 1,
    where the normal approximation gives intervals outside [0, 1] or of width zero."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


#: Grid values that are repetitions of one setting, not settings: rates are taken over them.
REPEATS = {"seed", "target_rank", "target_index"}


@dataclass
class Rate:
    """How often a model (clean, poisoned, a defense) of one setting ended with the target misclassified."""

    setting: dict[str, Any]
    model: str
    n: int
    successes: int
    failed: int
    mean_test_accuracy: float | None
    mean_auroc: float | None

    @property
    def rate(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)


def success_rates(rows: Iterable[dict[str, Any]]) -> list[Rate]:
    """Attack success rate per (setting, model) over seeds and targets, with failed models counted apart."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for row in rows:
        setting = {k: v for k, v in json.loads(row["grid_values"]).items() if k not in REPEATS}
        key = json.dumps(setting, sort_keys=True)
        settings[key] = setting
        groups.setdefault((key, row["name"]), []).append(row)
    out = []
    for (key, model), members in groups.items():
        ok = [m for m in members if not m["failed"]]
        accs = [m["test_accuracy"] for m in ok if m["test_accuracy"] is not None]
        aucs = [m["suspicion_auroc"] for m in ok if m["suspicion_auroc"] is not None]
        out.append(Rate(settings[key], model, len(ok), sum(int(m["attack_success"] or 0) for m in ok),
                        len(members) - len(ok), sum(accs) / len(accs) if accs else None,
                        sum(aucs) / len(aucs) if aucs else None))
    order = {"clean": 0, "poisoned": 1}
    return sorted(out, key=lambda r: (json.dumps(r.setting, sort_keys=True), order.get(r.model, 2), r.model))


def rates_table(rates: list[Rate]) -> str:
    """The rates as a plain-text table (the CLI prints it; docs paste it)."""
    head = ["setting", "model", "n", "attack success", "95% CI", "mean test acc", "mean AUROC", "failed"]
    lines = [head]
    for r in rates:
        lo, hi = r.interval
        lines.append([settings_label(r.setting) or "all", r.model, str(r.n),
                      f"{r.successes}/{r.n} = {r.rate:.0%}" if r.n else "-", f"{lo:.0%}-{hi:.0%}" if r.n else "-",
                      f"{r.mean_test_accuracy:.2%}" if r.mean_test_accuracy is not None else "-",
                      f"{r.mean_auroc:.3f}" if r.mean_auroc is not None else "-", str(r.failed)])
    width = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in lines)


def check_cells(cells: list[Cell], registry, data_root: Path | None) -> None:
    """Every cell planned and checked against its data as `ptk run` would, before the first training:
    a bad cell is refused naming the cell. Data are loaded once per distinct data setting."""
    from .experiment import check_against_data, load_data, plan

    loaded: dict[str, Any] = {}
    for cell in cells:
        try:
            p = plan(cell.config, registry)
            c = cell.config
            key = json.dumps([c.dataset, p.options[p.dataset.name], c.subset, c.test_subset, c.seed], sort_keys=True,
                             default=str)
            if key not in loaded:
                loaded[key] = load_data(p, data_root)
            check_against_data(p, loaded[key])
        except UsageError as exc:
            raise UsageError(f"cell {cell.label}: {exc}") from None


def run_cells(cells: list[Cell], store, registry, data_root: Path | None, cache_root: Path | None,
              results_dir: Path, device_name: str, echo) -> dict[str, int]:
    """Run the cells not yet complete, one after another in this process (the local executor).

    Each cell is recorded as running, then complete with its model rows (one
    transaction) or failed with its error; the sweep goes on after a failed
    cell. Ctrl-C puts the cell in flight back to pending and re-raises.
    """
    from .experiment import run_experiment

    done = store.status()
    todo = [c for c in cells if done.get(c.id) != "complete"]
    counts = {"cells": len(cells), "skipped": len(cells) - len(todo), "complete": 0, "failed": 0}
    for i, cell in enumerate(progress(todo, desc="sweep cells", total=len(todo))):
        store.start(cell.id, device_name)
        start = time.perf_counter()
        kept = results_dir / f"{cell.id}.json"
        try:
            results = run_experiment(cell.config, registry, save=lambda r: write_json(kept, r), data_root=data_root,
                                     cache_root=cache_root)
        except KeyboardInterrupt:
            store.release(cell.id)
            raise
        except Exception as exc:  # a cell that raises is recorded and the sweep goes on
            store.fail(cell.id, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
            counts["failed"] += 1
            echo(f"cell {i + 1}/{len(todo)} ({cell.label}) failed: {type(exc).__name__}: {exc}")
            continue
        seconds = time.perf_counter() - start
        status = store.finish(cell.id, results, seconds)
        counts[status] += 1
        echo(f"cell {i + 1}/{len(todo)} ({cell.label}): {status} in {seconds:.1f} s")
    return counts
