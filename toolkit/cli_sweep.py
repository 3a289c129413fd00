"""``ptk sweep``: run a grid of experiments into one SQLite store, and report success rates from it."""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import click

from .errors import UsageError


@click.group()
def sweep() -> None:
    """Grids of runs (attacks x defenses x targets x seeds x options) in one record store."""


def open_store(db: Path):
    """A store to read (status, reports): opened read-only, so reading changes nothing on disk."""
    from .sweepstore import SweepStore

    if not db.exists():
        raise UsageError(f"record store {db} does not exist; `ptk sweep run GRID.toml` makes one")
    return SweepStore(db, readonly=True)


def executor_options(command):
    """The options of every command that runs cells (``ptk sweep run``, ``ptk bench run``)."""
    for option in reversed([
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: cells one after another in this process, sharing the model cache; "
                          "ray: each cell a Ray task (pip install 'ptk-poison[ray]')"),
        click.option("--ray-address", help="Ray cluster to join (or $RAY_ADDRESS); default: a local cluster on "
                                           "this machine"),
        click.option("--cpus-per-cell", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                     help="ray: CPUs each cell asks for (also its torch thread count)"),
        click.option("--gpus-per-cell", type=click.FloatRange(min=0), default=None,
                     help="ray: GPUs each cell asks for; fractions pack cells on one GPU (0.25: four per GPU). "
                          "Default: 1 where the cluster has GPUs, else 0"),
        click.option("--max-retries", type=click.IntRange(min=0), default=2, show_default=True,
                     help="ray: times a cell is rerun when its worker dies (an exception in the cell is not "
                          "retried)"),
        click.option("--data-dir", type=click.Path(path_type=Path), help="ptk data directory (or $PTK_DATA_DIR)"),
        click.option("--cache-dir", type=click.Path(path_type=Path), help="model cache directory (or $PTK_CACHE_DIR)"),
        click.option("-v", "--verbose", is_flag=True, help="show every model's training progress, not only the "
                                                           "cells'"),
    ]):
        command = option(command)
    return command


@dataclass
class Execution:
    """Where and how a command's cells run: the executor options as one value."""

    executor: str = "local"
    ray_address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float | None = None
    max_retries: int = 2
    data_dir: Path | None = None
    cache_dir: Path | None = None
    verbose: bool = False


def drive(cells: list, db: Path, run: Execution, title: str, device: str = "auto", registry=None,
          meta: dict[str, str] | None = None) -> dict[str, int]:
    """Check every cell, record them (and ``meta``) in the store ``db``, run the unfinished ones; the counts
    (complete, failed, skipped). Shared by ``ptk sweep run`` (which then prints the rates) and ``ptk bench run``
    (the leaderboard). One
    driver at a time: a second on the same store is refused (see :func:`driver_lock`)."""
    from .executors import RaySettings, start_ray
    from .paths import cache_dir as resolve_cache
    from .registry import load_registry
    from .sweep import check_cells
    from .sweepstore import SweepStore

    if run.executor == "ray" and importlib.util.find_spec("ray") is None:  # refused before a store is created
        raise UsageError("--executor ray needs Ray: pip install 'ptk-poison[ray]'")
    if db.is_dir() or (db.exists() and db.stat().st_size):  # a store path that cannot be a store is refused before the pre-check's work
        SweepStore(db, readonly=True).close()
    registry = registry or load_registry()
    check_cells(cells, registry, run.data_dir)
    # resolved here, so a Ray worker on another node gets the driver's paths (on a shared filesystem)
    cache_root = resolve_cache(run.cache_dir)
    settings = RaySettings(run.ray_address, run.cpus_per_cell, run.gpus_per_cell, run.max_retries, run.verbose)
    ray = start_ray(settings) if run.executor == "ray" else None  # a refusal leaves no store, lock or folder behind
    try:
        with driver_lock(db):
            return _drive(cells, db, run, title, device, registry, meta or {}, cache_root, settings, ray)
    finally:
        if ray is not None:
            ray[0].shutdown()


def _drive(cells, db, run, title, device, registry, meta, cache_root, settings, ray) -> dict[str, int]:
    from .executors import Recorder, device_label, run_local, run_ray
    from .progress import inner_progress
    from .sweepstore import SweepStore

    store = SweepStore(db)
    try:
        for key, value in meta.items():
            store.set_meta(key, value)
        restored, reset = store.repair(db.parent / "cells")
        if restored or reset:
            click.echo(f"{len(restored)} complete cells had lost their model rows and got them back from "
                       f"{db.parent / 'cells'}; {len(reset)} without a results file will rerun", err=True)
        for cell in cells:
            store.add_cell(cell.id, cell.config.to_dict(), cell.values)
        done = store.status()
        todo = [c for c in cells if done.get(c.id) != "complete"]
        click.echo(f"{title}: {len(cells)} cells ({len(todo)} to run) into {db}, executor {run.executor}", err=True)
        recorder = Recorder(store, db.parent / "cells", len(todo), len(cells) - len(todo),
                            lambda line: click.echo(line, err=True))
        with inner_progress(run.verbose):
            if run.executor == "ray":
                run_ray(*ray, todo, recorder, settings, run.data_dir, cache_root)
            else:
                run_local(todo, recorder, registry, run.data_dir, cache_root, device_label(device))
    finally:
        store.close()
    return recorder.counts


@contextmanager
def driver_lock(db: Path) -> Iterator[None]:
    """Hold ``<store>.lock`` (an advisory ``flock``, released by the OS when the process ends, so a killed
    driver leaves no stale lock) while cells run: a second ``ptk sweep run`` or ``ptk bench run`` on the same
    store is refused in one line instead of running every cell a second time."""
    import fcntl
    import os
    import socket

    db.parent.mkdir(parents=True, exist_ok=True)
    path = db.with_name(db.name + ".lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UsageError(f"another driver ({holder}) is running cells into {db}; wait for it to finish "
                             "(`ptk sweep status` shows its progress) or use another --db") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            with terminate_as_interrupt():
                yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler's time limit, ``timeout``) handled like Ctrl-C while cells run: the
    cells in flight go back to pending at once. Without it Python dies on the spot and leaves them marked
    running until the next ``ptk sweep run`` of the same grid resets them. Main thread only (where signals go)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def driver_alive(db: Path) -> bool:
    """Whether a driver holds ``<store>.lock`` now. Reads only: a missing lock file is not created."""
    import fcntl

    path = db.with_name(db.name + ".lock")
    try:
        f = open(path)
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two base settings, as ``key: old -> new``."""
    from .config import short

    return [f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def check_grid_base(db: Path, base: dict[str, Any], add_grid: bool) -> None:
    """A store made by one grid holds that grid's base settings; a sweep whose base differs would pool two
    experiments into one rate, so it is refused unless ``--add-grid`` says both belong in one store."""
    if not db.exists() or add_grid:
        return
    store = open_store(db)
    try:
        held = store.meta("grid_base")
    finally:
        store.close()
    if held is not None and json.loads(held) != json.loads(json.dumps(base, sort_keys=True, default=str)):
        changes = "; ".join(changed_settings(json.loads(held), json.loads(json.dumps(base, default=str))))
        raise UsageError(f"{db} holds a grid with other base settings ({changes}); give this grid a new --db, "
                         "or pass --add-grid to keep both grids' cells in one store")


@sweep.command("run")
@click.argument("grid_file", type=click.Path(path_type=Path))
@click.option("--db", type=click.Path(path_type=Path), help="record store (default runs/<grid name>/sweep.db)")
@click.option("--max-cells", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="refuse a grid of more cells than this (counted before it is expanded)")
@click.option("--add-grid", is_flag=True, help="run into a store made by a grid with other base settings, keeping "
                                               "both grids' cells (the report covers this grid's)")
@executor_options
def run_sweep(grid_file: Path, db: Path | None, max_cells: int, add_grid: bool, **execution) -> None:
    """Run every cell of GRID_FILE not yet finished in the store; rerun to resume.

    GRID_FILE is a --config TOML file plus a [grid] table of lists, e.g.
    [grid] seed = [0, 1], targets = 5, "labelflip.budget" = [10, 50].
    """
    from .config import PRESETS
    from .sweep import expand, read_grid

    if not grid_file.exists():
        raise UsageError(f"grid file {grid_file} does not exist")
    base, grid = read_grid(grid_file, PRESETS)
    cells = expand(base, grid, str(grid_file), max_cells)
    db = db or Path("runs") / grid_file.stem / "sweep.db"
    check_grid_base(db, base, add_grid)
    meta = {"grid_base": json.dumps(base, sort_keys=True, default=str),
            "current_cells": json.dumps(sorted(c.id for c in cells))}
    counts = drive(cells, db, Execution(**execution), f"sweep {grid_file}", base.get("device", "auto"), meta=meta)
    from .rates import success_rates
    from .sweep_report import rates_table

    store = open_store(db)
    try:
        click.echo(rates_table(success_rates(store.models())))
    finally:
        store.close()
    finish(counts, f"store: {db}; `ptk sweep report {db}` writes the report and plots")


def finish(counts: dict[str, int], next_step: str) -> None:
    """The last line of a command that ran cells; exit 1 when any failed."""
    click.echo(f"\n{counts['complete']} complete, {counts['failed']} failed, {counts['skipped']} already done; "
               f"{next_step}")
    if counts["failed"]:
        click.get_current_context().exit(1)


@sweep.command("report")
@click.argument("db", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="folder for report.md, report.html, rates.csv, rates.json and the plots (default: the store's folder)")
@click.option("--all-cells", is_flag=True, help="report every cell in the store, not only the last grid run's")
def report(db: Path, out: Path | None, all_cells: bool) -> None:
    """Attack success rate (95% Wilson interval), accuracy and its drop, removal quality and cost per
    setting and model; writes report.md, report.html (one self-contained page: sortable, each row expanding to
    its cells), rates.csv, rates.json and two plots."""
    from .html import write_sweep_html
    from .rates import success_rates
    from .sweep_report import rates_table, write_sweep_report

    store = open_store(db)
    try:
        rows, status = list(store.models()), store.status()
        current = store.meta("current_cells")
    finally:
        store.close()
    if current is not None and not all_cells:
        keep = set(json.loads(current))
        others = len(set(status) - keep)
        rows, status = [r for r in rows if r["cell_id"] in keep], {k: v for k, v in status.items() if k in keep}
        if others:
            click.echo(f"reporting the {len(keep)} cells of the last grid run into {db}; {others} other cells "
                       "(dropped from the grid, or another grid's) are left out: --all-cells includes them", err=True)
    counts = {s: 0 for s in ("pending", "running", "complete", "failed")}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    rates = success_rates(rows)
    from .paths import make_folder

    out = make_folder(out or db.parent)
    written = write_sweep_report(out, rates, counts)
    written.insert(1, write_sweep_html(out, rates, counts, rows))
    click.echo(rates_table(rates))
    click.echo("\nwrote " + ", ".join(str(p) for p in written))


@sweep.command("status")
@click.argument("db", type=click.Path(path_type=Path))
def status(db: Path) -> None:
    """Counts of pending, running, complete and failed cells, and the errors of failed ones."""
    store = open_store(db)
    try:
        counts, rowless = store.counts(), store.rowless()
        errors = store.db.execute("SELECT grid_values, error FROM cells WHERE status='failed'").fetchall()
    finally:
        store.close()
    click.echo(", ".join(f"{v} {k}" for k, v in counts.items()))
    if counts.get("running") and not driver_alive(db):
        click.echo(f"no driver is running cells into {db}: the {counts['running']} cells marked running were "
                   "interrupted (their driver was killed) and rerun with the next `ptk sweep run` (or `ptk bench "
                   "run`) of their grid")
    if rowless:
        click.echo(f"{len(rowless)} complete cells have no model rows (deleted?); `ptk sweep run` restores them "
                   "from cells/<id>.json")
    for values, error in errors:
        click.echo(f"failed {values}: {error}")
