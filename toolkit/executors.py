"""Where a sweep's cells run: one after another in this process (``local``) or as Ray tasks (``ray``).

Both executors run a cell with :func:`run_cell`, exactly as ``ptk run`` would,
and hand the outcome back to the driver, the only writer of the record store.
Ray does the distributed work itself (scheduling, fractional GPUs, retrying
tasks whose worker died, streaming results back with ``ray.wait``); this module
only submits cells and records what comes back.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from .atomic import write_json
from .config import ExperimentConfig
from .errors import UsageError
from .progress import progress
from .sweep import Cell

if TYPE_CHECKING:
    from .registry import Registry
    from .sweepstore import SweepStore


@dataclass
class Outcome:
    """What one cell gave back: its results (None if it raised), or the error, and where it ran."""

    results: dict[str, Any] | None
    error: str | None
    seconds: float
    host: str
    device: str


def device_label(device: str) -> str:
    """The accelerator a cell ran on, as the store records it."""
    import torch

    from .experiment import pick_device

    dev = pick_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def run_cell(cfg: ExperimentConfig, registry: Registry | None = None, data_root: Path | None = None,
             cache_root: Path | None = None) -> Outcome:
    """Run one cell's config (checked when the grid was expanded; it travels as itself, to a Ray worker
    too) as ``ptk run`` would. An exception in the run is an outcome, not a crash: the driver records it
    and the sweep goes on. Ctrl-C passes through."""
    from .experiment import run_experiment
    from .registry import load_registry

    start = time.perf_counter()
    try:
        results = run_experiment(cfg, registry or load_registry(), save=lambda r: None, data_root=data_root,
                                 cache_root=cache_root)
        error = None
    except Exception as exc:
        results, error = None, f"{type(exc).__name__}: {exc}"
    return Outcome(results, error, time.perf_counter() - start, socket.gethostname(), device_label(cfg.device))


def clean_key(cell: Cell) -> str:
    """Cells with equal keys train the same clean model (same data, model, recipe and seed): the first of
    them trains it into the model cache and the others read it, if they start after it finished."""
    c = cell.config
    shared = {k: getattr(c, k) for k in ("dataset", "model", "recipe", "epochs", "batch_size", "lr", "seed",
                                         "subset", "test_subset", "device")}
    shared["options"] = {k: c.options.get(k) for k in (c.dataset, c.model)}
    return json.dumps(shared, sort_keys=True, default=str)


class Recorder:
    """The driver's side of a sweep: marks cells running, writes outcomes into the store and
    ``results_dir/<cell id>.json``, counts, and prints one line per cell."""

    def __init__(self, store: SweepStore, results_dir: Path, todo: int, skipped: int, echo: Callable[[str], None]) -> None:
        self.store, self.results_dir, self.echo = store, results_dir, echo
        self.todo = todo
        self.counts = {"cells": todo + skipped, "skipped": skipped, "complete": 0, "failed": 0}
        self.bar = progress(range(todo), desc="sweep cells", total=todo, outer=True)

    def record(self, cell: Cell, out: Outcome) -> None:
        done = self.counts["complete"] + self.counts["failed"] + 1
        try:
            if out.results is not None:
                write_json(self.results_dir / f"{cell.id}.json", out.results)
                status = self.store.finish(cell.id, out.results, out.seconds, out.host, out.device)
            else:
                self.store.fail(cell.id, out.error or "unknown error", out.seconds, out.host, out.device)
                status = "failed"
        except (OSError, sqlite3.Error) as exc:  # a full disk, a store gone read-only: stop, lose nothing finished
            self.store_failed(cell, exc)
        self.counts[status] += 1
        next(self.bar, None)
        why = f": {out.error}" if out.error else ""
        self.echo(f"cell {done}/{self.todo} ({cell.label}): {status} in {out.seconds:.1f} s on {out.host}{why}")

    def store_failed(self, cell: Cell, exc: BaseException) -> None:
        """The outcome of ``cell`` could not be written: put the cell back to pending (its models stay in the
        model cache, so the rerun is cheap) and stop the sweep with one line."""
        try:
            self.store.release(cell.id)
        except sqlite3.Error:
            pass  # the store cannot be written at all: the cell stays `running`, and reruns all the same
        raise click.ClickException(f"cannot record cell {cell.label} in {self.store.path}: {store_error(exc)}; "
                                   "free space (or fix the store's folder) and rerun: finished cells are kept, "
                                   "this one reruns from the model cache")


def store_error(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def run_local(todo: list[Cell], recorder: Recorder, registry: Registry, data_root: Path | None, cache_root: Path | None,
              device: str) -> None:
    """Cells one after another in this process, sharing the model cache. Ctrl-C puts the cell in flight
    back to pending and re-raises."""
    for cell in todo:
        recorder.store.start(cell.id, device)
        try:
            out = run_cell(cell.config, registry, data_root, cache_root)
        except KeyboardInterrupt:
            recorder.store.release(cell.id)
            raise
        recorder.record(cell, out)


@dataclass
class RaySettings:
    """``--ray-address`` and the resources each cell asks of Ray."""

    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float | None = None  # None: 1 where the cluster has GPUs, else 0
    max_retries: int = 2
    verbose: bool = False


def _ray_cell(config: ExperimentConfig, data_root: str | None, cache_root: str | None, cpus: float) -> Outcome:
    """A Ray task: one cell on a worker, with torch's thread pool sized to the CPUs Ray gave it."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return run_cell(config, None, Path(data_root) if data_root else None, Path(cache_root) if cache_root else None)


def connect_ray(settings: RaySettings):
    """``ray.init`` on ``--ray-address`` / ``$RAY_ADDRESS``, or a local cluster on this machine."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'ptk-poison[ray]'") from None
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": settings.verbose}
    if address is None:
        kwargs["object_store_memory"] = 256 * 2**20  # results are small dicts; no need for 30% of RAM
    try:
        ray.init(address=address, ignore_reinit_error=True, **kwargs)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address!r}: {exc}; start one with "
                         "`ray start --head` or leave --ray-address out for a local cluster") from None
    return ray


def check_resources(cpus: float, gpus: float, total: dict[str, float]) -> None:
    """A cell asking for more than the whole cluster has would wait for ever: refused before any task starts."""
    for name, want, flag in (("CPU", cpus, "--cpus-per-cell"), ("GPU", gpus, "--gpus-per-cell")):
        have = total.get(name, 0.0)
        if want > have:
            raise UsageError(f"{flag} {want:g}: the Ray cluster has {have:g} {name}s in all, so no cell could "
                             f"ever start; ask for at most {have:g}")


def start_ray(settings: RaySettings):
    """Connect to Ray and check that a cell's request fits the cluster: ``(ray, gpus per cell)``. Called before
    the store is created, so a request no cluster can serve leaves no store behind; on a refusal the connection
    is shut down again."""
    ray = connect_ray(settings)
    try:
        total = ray.cluster_resources()
        gpus = settings.gpus_per_cell
        if gpus is None:
            gpus = 1.0 if total.get("GPU", 0) > 0 else 0.0
        check_resources(settings.cpus_per_cell, gpus, total)
    except BaseException:
        ray.shutdown()
        raise
    return ray, gpus


def run_ray(ray, gpus: float, todo: list[Cell], recorder: Recorder, settings: RaySettings, data_root: Path | None,
            cache_root: Path | None) -> None:
    """Every cell a Ray task on the cluster :func:`start_ray` connected to (its caller shuts it down). Per clean
    model (see :func:`clean_key`) one cell goes first; the others of its group are submitted when it finishes,
    so they read its clean model from the shared cache instead of training it again side by side. Outcomes are
    recorded as they arrive (``ray.wait``); a worker that dies is retried by Ray (``max_retries``); Ctrl-C
    cancels what is in flight and puts it back to pending."""
    task = ray.remote(_ray_cell).options(num_cpus=settings.cpus_per_cell, num_gpus=gpus,
                                         max_retries=settings.max_retries, retry_exceptions=False)
    groups: dict[str, list[Cell]] = {}
    for cell in todo:
        groups.setdefault(clean_key(cell), []).append(cell)
    in_flight: dict[Any, Cell] = {}

    def submit(cell: Cell) -> None:
        recorder.store.start(cell.id, "ray")
        ref = task.remote(cell.config, str(data_root) if data_root else None,
                          str(cache_root) if cache_root else None, settings.cpus_per_cell)
        in_flight[ref] = cell

    for members in groups.values():
        submit(members[0])
    try:
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            cell = in_flight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # the worker died more often than max_retries allows
                out = Outcome(None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}", 0.0, "?", "ray")
            recorder.record(cell, out)
            followers = groups.get(clean_key(cell), [])
            if followers and followers[0] is cell:
                for other in followers[1:]:
                    submit(other)
    except KeyboardInterrupt:
        for ref, cell in in_flight.items():
            ray.cancel(ref, force=True)
            recorder.store.release(cell.id)
        raise
