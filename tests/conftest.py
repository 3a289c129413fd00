"""Shared test helpers: run the real CLI in-process with an isolated data and cache directory.

The cache directory is shared by the whole session on purpose: runs with the
same data, recipe and seed reuse the clean and poisoned models, exactly as a
user's second ``ptk run`` does, which keeps CI within its time budget.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptk.cli import cli

ROOT = Path(__file__).resolve().parents[1]
#: benchmarks/common.py's measurement helpers serve the tests too: ``from common import relative_error``
sys.path.insert(0, str(ROOT / "benchmarks"))
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


@pytest.fixture
def one_torch_thread():
    """For tests that share two CPU cores with other work: one torch thread trains 10-30x faster there than
    two contending ones. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; the thread
    count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
