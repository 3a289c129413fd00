"""Commands that train nothing start without torch or any plugin (benchmarks/startup.py times them)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys

import pytest

from .fixtures import ROOT

PROBE = ("import sys, runpy; sys.argv = ['ptk', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('ptk', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('ptk_plugins') or m == 'art')\n"
         "print('HEAVY', heavy, file=sys.stderr)")


def heavy_imports(*args: str, cwd) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd)
    line = next(line for line in done.stderr.splitlines() if line.startswith("HEAVY"))
    return ast.literal_eval(line[len("HEAVY "):])  # the list the probe printed


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("sweep", "--help"), ("data", "--help"),
                                  ("sweep", "status", "STORE"), ("sweep", "report", "STORE", "--out", "OUT")])
def test_commands_that_train_nothing_import_neither_torch_nor_plugins(tmp_path, args):
    store = tmp_path / "sweep.db"
    shutil.copy(ROOT / "tests" / "data" / "store-0.1.0.sqlite", store)
    argv = [str(store) if a == "STORE" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert heavy_imports(*argv, cwd=tmp_path) == []


def test_a_command_that_needs_plugins_still_loads_them(tmp_path):
    assert "torch" in heavy_imports("plugins", cwd=tmp_path)
