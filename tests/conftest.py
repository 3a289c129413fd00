"""Shared test helpers: run the real CLI in-process with an isolated data and cache directory.

The cache directory is shared by the whole session on purpose: runs with the
same data, recipe and seed reuse the clean and poisoned models, exactly as a
user's second ``ptk run`` does, which keeps CI within its time budget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptk.cli import cli

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

#: Small real run: 800 digits, narrow ResNet-18, 5 epochs; the label flip succeeds
#: (poisoned P(7) ~ 0.98 for the chosen "1") and each model trains in ~12 s on 2 CPU cores.
TINY = ["--preset", "quick", "--subset", "800", "--epochs", "5", "--lr", "3e-3",
        "-o", "resnet18.width=16", "-o", "labelflip.budget=30"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ptk-cache")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ptk-data")


@pytest.fixture
def ptk(cache_dir, data_dir, monkeypatch):
    """Call ``ptk`` like a user would; returns click's Result (exit_code, output)."""
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


@pytest.fixture(scope="session")
def cifar_data_dir(data_dir) -> Path:
    """The session's data dir with real CIFAR-10 imported once through `ptk data import` (13-25 s on the busy
    2-core dev machine)."""
    archive = require_cifar()
    result = CliRunner().invoke(cli, ["data", "import", "cifar10", str(archive), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output + (f"\n{result.exception!r}" if result.exception else "")
    return data_dir
