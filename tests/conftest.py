"""Fixtures: the real CLI in-process with an isolated data and cache directory, a registry of ptk's own
plugins plus the ones a test names, one torch thread. Helpers the test modules import are in fixtures.py.

The cache directory is shared by the whole session on purpose: runs with the
same data, recipe and seed reuse the clean and poisoned models, exactly as a
user's second ``ptk run`` does, which keeps CI within its time budget.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

import ptk.registry
from ptk.cli import cli
from ptk.registry import Registry

from .fixtures import ROOT, builtin_entry_point, require_cifar

LOAD_REGISTRY = ptk.registry.load_registry

# One thread per process, for the ptk subprocesses the tests start too (torch reads it when it starts):
# beside the other xdist worker, a two-thread process would contend for the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def registry(monkeypatch) -> Callable[..., Registry]:
    """``registry(*plugins, dists=())``: a new Registry of ptk's built-in plugins (entry points whose value is a
    ``ptk_plugins`` module) plus ``plugins``, each an object with hook implementations, registered under its
    class name (a module: its name), or an ``(object, source name)`` pair; ``dists`` lets those installed
    distributions' entry points in too.

    Every test gets this isolation: whatever else is pip-installed in the environment stays out of the run.
    ptk's own ``load_registry`` (``ptk run``, ``ptk plugins``, ``ptk sweep`` through the ``ptk`` fixture, and
    ``run_cell``) returns, for the rest of the test, a new registry of what the last call named, so a test
    makes the CLI see its plugins with ``registry(MyPlugins())``; without a call, built-ins only."""
    named: list[tuple[Any, str]] = []
    allowed: set[str] = set()

    def isolated(ep: md.EntryPoint) -> bool:
        return builtin_entry_point(ep) or (ep.dist is not None and ep.dist.metadata["Name"] in allowed)

    def load(entry_points: bool = True, only: Callable[[md.EntryPoint], bool] | None = None) -> Registry:
        reg = LOAD_REGISTRY(entry_points, only=lambda ep: isolated(ep) and (only is None or only(ep)))
        for obj, source in named:
            reg.add_plugin(obj, source)
        return reg

    def use(*plugins: Any, dists: tuple[str, ...] | list[str] = ()) -> Registry:
        named[:] = [p if isinstance(p, tuple) else (p, getattr(p, "__name__", type(p).__name__)) for p in plugins]
        allowed.clear()
        allowed.update(dists)
        return load()

    # the CLI imported the name; ptk.sweep's command and run_cell import it from ptk.registry when they run
    monkeypatch.setattr("ptk.cli.load_registry", load)
    monkeypatch.setattr("ptk.registry.load_registry", load)
    return use


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test process: README's test command runs two pytest-xdist workers on two cores,
    and two contending torch threads per core train 10-30x slower than one. The thread count is restored
    afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder of the whole test run. Under pytest-xdist (README's test command runs two workers, one per
    core) every worker's temporary folder lies in one run folder, so the workers share it: a model one
    worker trained is a cache hit for the other, as for a user's second ``ptk run``. Entries are written
    atomically, so two workers that train the same model at once both succeed and the last one stays."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return shared_dir(tmp_path_factory, "ptk-cache")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return shared_dir(tmp_path_factory, "ptk-data")


@pytest.fixture
def ptk(cache_dir, data_dir, monkeypatch):
    """Call ``ptk`` like a user would; returns click's Result (exit_code, output). It sees the plugins of the
    ``registry`` fixture: ptk's built-ins, plus what the test named."""
    monkeypatch.setenv("PTK_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("PTK_DATA_DIR", str(data_dir))

    def invoke(*args: str, expect: int | None = 0):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"ptk {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n{result.output}"
                + (f"\n{result.exception!r}" if result.exception else "")
            )
        return result

    return invoke


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, Path, str]:
    """ptk's sdist, the wheel built from that sdist (what ``python -m build`` does), and the build log."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel, log


@pytest.fixture(scope="session")
def cifar_data_dir(data_dir) -> Path:
    """The session's data dir with real CIFAR-10 imported once through `ptk data import` (13-25 s on the busy
    2-core dev machine)."""
    archive = require_cifar()
    result = CliRunner().invoke(cli, ["data", "import", "cifar10", str(archive), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output + (f"\n{result.exception!r}" if result.exception else "")
    return data_dir


def pytest_collection_modifyitems(config, items) -> None:
    """The slow tests first (in their file order): the two xdist workers then end on short tests and finish
    together, instead of one idling while the other runs a four-minute test it happened to draw last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
