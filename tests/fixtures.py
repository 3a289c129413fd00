"""Helpers and constants the test modules import (``from .fixtures import ...``); the fixtures themselves are in
conftest.py."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import site
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
#: The project's pyproject.toml, parsed: its name, version source and entry points, as tests check them
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

#: Small real run: 800 digits, width-8 ResNet-18, 5 epochs; the label flip succeeds (the poisoned model
#: predicts 7 for the chosen "1") and each model trains in about 8 s on 2 CPU cores (17 s at width 16, which
#: the suite used until 2026-12-02: halving the width took the full suite from ~21 to ~18 minutes).
TINY = ["--preset", "quick", "--subset", "800", "--epochs", "5", "--lr", "3e-3",
        "-o", "resnet18.width=8", "-o", "labelflip.budget=30"]

#: A real backdoor on digits: TINY's clean model (shared through the session's cache), 30% of the
#: non-target training images poisoned. Measured on the 2-core machine (2026-12-02): clean ASR 2.5%, poisoned
#: 99.3% (at 20%, the width-8 network learnt the trigger for only 41% of triggered images).
BACKDOOR = ["--preset", "quick", "--subset", "800", "--epochs", "5", "--lr", "3e-3", "-o", "resnet18.width=8",
            "-o", "art-backdoor.fraction=0.3"]


def builtin_entry_point(ep: md.EntryPoint) -> bool:
    """Whether ``ep`` is one of ptk's own plugins: its value is a ``ptk_plugins`` module (whatever the
    distribution that ships it is called)."""
    return ep.module.partition(".")[0] == "ptk_plugins"


def config_from_args(*args: str):
    """The ExperimentConfig ``ptk run ARGS`` would build."""
    from ptk.cli import RUN_FLAGS, build_config, cli

    params = cli.commands["run"].make_context("run", list(args)).params
    flags = {k: params[k] for k in RUN_FLAGS}
    return build_config(params["preset"], params["config_file"], flags, params["defenses"], params["assignments"])


def load_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def model_row(results: dict, name: str) -> dict:
    return next(m for m in results["models"] if m["name"] == name)


def require_cifar() -> Path:
    """The CIFAR-10 archive; a skip on a laptop, a failure in CI (PTK_REQUIRE_CIFAR=1)."""
    if CIFAR_ARCHIVE.exists():
        return CIFAR_ARCHIVE
    if os.environ.get("PTK_REQUIRE_CIFAR"):
        pytest.fail(f"PTK_REQUIRE_CIFAR is set but {CIFAR_ARCHIVE} is missing")
    pytest.skip(f"{CIFAR_ARCHIVE} not present")


def make_venv(path: Path) -> Path:
    """A throwaway virtual environment at PATH that sees the packages of the Python running the tests; its python.

    ``venv --system-site-packages`` is not enough: it shows the *base* interpreter's site-packages, and where
    the tests run from a virtual environment (``pip install '.[test]'`` in a venv) torch and the rest live in
    that environment's site-packages instead. So the new environment gets a .pth file that adds the running
    interpreter's own site directories (``site.getsitepackages()``, plus the user site where it is enabled)
    with ``site.addsitedir``, which also runs their .pth files as the running interpreter did. They come after
    the new environment's own site-packages, so whatever is installed into it wins.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    host = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    adds = "; ".join(f"site.addsitedir({d!r})" for d in host if Path(d).is_dir())
    (Path(own) / "ptk_tests_host_site.pth").write_text(f"import site; {adds}\n")
    return python


def pip_install(python: Path, *args: str) -> None:
    """``pip install --no-deps --no-index ARGS`` into PYTHON's environment, with the running Python's pip."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "--quiet", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


# --- sweeps ----------------------------------------------------------------------------------------------

#: Small enough for CI: 800 digits, width 8, 2 epochs (each model trains in a few seconds on 2 cores).
GRID_HEAD = """preset = "quick"
subset = 800
epochs = 2
lr = 3e-3
defenses = ["none"]
[options.resnet18]
width = 8
"""


def write_grid(path, grid: str, epochs: int = 2) -> None:
    """A grid file of GRID_HEAD's settings (``epochs`` of them: 1 where a test checks machinery, not models)."""
    head = GRID_HEAD.replace("epochs = 2\n", f"epochs = {epochs}\n")
    assert f"epochs = {epochs}" in head
    path.write_text(head + "[grid]\n" + grid)


def _select(db, query: str) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(query)]
    finally:
        con.close()


def rows(db) -> list[dict]:
    """The sweep store's model rows."""
    return _select(db, "SELECT * FROM models ORDER BY cell_id, name")


def cells(db) -> dict[str, dict]:
    """The sweep store's cells by id."""
    return {r["cell_id"]: r for r in _select(db, "SELECT * FROM cells")}
