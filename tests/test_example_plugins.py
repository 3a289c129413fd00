"""The third-party plugin path end to end, with examples/ptk-example-plugins as the third party.

One test pip-installs ptk's wheel and the example distribution into a throwaway
virtual environment (never the one running the tests) and drives that
environment's ``ptk`` console script, as a user of a published plugin would. The
others load the same modules in-process with ``Registry.add_plugin``, the way a
plugin author tests a plugin before publishing it.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import ptk
from ptk.experiment import run_experiment

from .fixtures import ROOT, TINY, config_from_args, make_venv, model_row, pip_install

EXAMPLE = ROOT / "examples" / "ptk-example-plugins"
DIST = "ptk-example-plugins"
PACKAGE = "ptk_example_plugins"


def digits_as_run(registry, data_dir: Path) -> ptk.Dataset:
    """The training set a TINY run sees: digits, stratified subset of 800 with seed 0."""
    return registry().get("dataset", "digits").plugin.load(data_dir, {"test_fraction": 0.25}).subset(800, None, 0)


# --- in-process, no install -----------------------------------------------------------------------


@pytest.fixture
def example_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return (importlib.import_module(f"{PACKAGE}.random_flip"), importlib.import_module(f"{PACKAGE}.spectral"))


@pytest.mark.slow
def test_spectral_signatures_removes_poison_better_than_chance(example_modules, cache_dir, data_dir, registry):
    _, spectral = example_modules
    reg = registry()  # not an installed copy of the example: only ptk's own entry points load
    reg.add_plugin(spectral, "spectral-signatures", dist=DIST)
    config = config_from_args("--attack", "labelflip", "--defense", "spectral-signatures", *TINY)
    r = run_experiment(config, reg, save=lambda _: None, data_root=data_dir, cache_root=cache_dir)
    assert r["status"] == "complete"
    row = model_row(r, "spectral-signatures")
    poison = set(r["attack"]["poison_indices"])
    removed = set(row["removed_indices"])
    n = r["data"]["train_size"]
    assert row["removal_precision"] > len(poison) / n  # chance: the poison's share of the training set
    # Within the target class, where every flipped label lands, removal is enriched for poison too.
    data = digits_as_run(registry, data_dir)
    labels = data.y_train.clone()
    labels[list(poison)] = data.class_index(r["target"]["target_class"])
    target_class = set((labels == data.class_index(r["target"]["target_class"])).nonzero().squeeze(1).tolist())
    removed_there = removed & target_class
    assert len(removed_there & poison) / len(removed_there) > len(poison) / len(target_class)


def test_random_flip_refuses_a_budget_larger_than_the_source_class(example_modules, data_dir, registry):
    random_flip, _ = example_modules
    data = registry().get("dataset", "digits").plugin.load(data_dir, {"test_fraction": 0.25})
    attack = random_flip.RandomFlip()
    source, target = data.class_index("1"), data.class_index("7")
    pool = int((data.y_train == source).sum())
    attack.check(data, source, target, {"budget": pool})  # the whole class is allowed
    with pytest.raises(ptk.UsageError, match=rf"random-flip.budget={pool + 1} .* {pool} training images"):
        attack.check(data, source, target, {"budget": pool + 1})


@pytest.mark.parametrize("folder", [EXAMPLE / PACKAGE, ROOT / "plugins"], ids=["example", "builtins"])
def test_plugins_use_only_the_public_api(folder):
    """A plugin written against ``ptk``'s exports keeps working when ptk's internals move; the built-ins
    are held to the same rule, so everything they need is public for third parties too."""
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ptk":
                assert node.module == "ptk", f"{path.name} imports ptk internals: {node.module}"
                private = {a.name for a in node.names} - set(ptk.__all__)
                assert not private, f"{path.name} imports {private}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("ptk.") for a in node.names), path.name


def test_docs_show_the_example_code_verbatim():
    """docs/plugins.md walks through the example; its code blocks must be the files as they are."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    shown = {name for name, _ in blocks}
    expected = {"pyproject.toml", f"{PACKAGE}/random_flip.py", f"{PACKAGE}/spectral.py"}
    assert expected <= shown, f"docs/plugins.md should show {sorted(expected - shown)}"
    for name, code in blocks:
        assert code == (EXAMPLE / name).read_text(), f"docs/plugins.md's copy of {name} is out of date"


# --- pip-installed, through the console script ------------------------------------------------------


@pytest.fixture
def example_venv(built, tmp_path) -> Path:
    """A throwaway environment with ptk's wheel and the example distribution pip-installed; its ``ptk`` script."""
    _, wheel, _ = built
    venv = tmp_path / "venv"
    python = make_venv(venv)
    src = tmp_path / "src"  # build from a copy: no build/ or *.egg-info left in the checkout
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # --ignore-installed: whatever ptk (or example) the running Python has is visible in the venv too
    pip_install(python, "--ignore-installed", "--no-build-isolation", str(wheel), str(src))
    return venv / "bin" / "ptk"


@pytest.mark.slow
def test_installed_plugins_are_listed_and_run_from_the_console_script(example_venv, cache_dir, data_dir, tmp_path,
                                                                   registry):
    env = {**os.environ, "PTK_CACHE_DIR": str(cache_dir), "PTK_DATA_DIR": str(data_dir)}
    listing = subprocess.run([example_venv, "plugins"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    for kind, name in (("attack", "random-flip"), ("defense", "spectral-signatures")):
        assert any(re.match(rf"{kind}\s+{name}\s+{DIST} 0\.1\.0\s", l) for l in lines), listing.stdout
    assert "BROKEN" not in listing.stdout

    out = tmp_path / "run"
    run = subprocess.run([example_venv, "run", "--attack", "random-flip", "--defense", "spectral-signatures",
                          *TINY, "-o", "random-flip.budget=30", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "complete"
    assert r["plugins"]["random-flip"] == {"kind": "attack", "distribution": DIST, "version": "0.1.0"}
    defense = r["plugins"]["spectral-signatures"]
    assert defense["distribution"] == DIST and defense["threat_model"]["knows_target"] is False
    assert r["versions"][DIST] == "0.1.0"
    # 30 distinct training images of the source class, now labelled as the target class
    poison = r["attack"]["poison_indices"]
    assert len(set(poison)) == 30
    data = digits_as_run(registry, data_dir)
    assert {data.classes[int(data.y_train[i])] for i in poison} == {r["target"]["source_class"]}
    row = model_row(r, "spectral-signatures")
    classes = len(r["data"]["classes"])
    assert row["removed_count"] == sum(row["details"]["removed_per_class"]) <= classes * math.ceil(1.5 * 30)
    assert row["removal_precision"] is not None
    report = (out / "report.md").read_text()
    assert "attack: random-flip" in report and "| spectral-signatures |" in report
    assert f"random-flip ({DIST} 0.1.0)" in report and f"spectral-signatures ({DIST} 0.1.0)" in report


@pytest.mark.slow
def test_a_pip_installed_defense_joins_the_bench_leaderboard(example_venv, cache_dir, data_dir, tmp_path, registry):
    """`ptk bench run SUITE --defense <a third party's defense>` from the console script of an environment
    where only the wheels were installed: the shipped suites are in ptk's wheel, and the third party's
    defense is scored on the suite's cells beside the undefended model."""
    env = {**os.environ, "PTK_CACHE_DIR": str(cache_dir), "PTK_DATA_DIR": str(data_dir)}
    listing = subprocess.run([example_venv, "bench", "list"], capture_output=True, text=True, env=env, cwd=tmp_path)
    from ptk.suite import load_suite

    quick = load_suite("quick")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert f"quick (version {quick.version}, {quick.cell_count} cells" in listing.stdout, listing.stdout
    suite = ROOT / "tests" / "data" / "tiny-suite.toml"
    db = tmp_path / "bench.db"
    run = subprocess.run([example_venv, "bench", "run", str(suite), "--defense", "spectral-signatures", "--db", str(db)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    report = subprocess.run([example_venv, "bench", "report", str(db)], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    rows = {(r["attack"], r["model"]) for r in board["rows"]}
    assert rows == {(a, m) for a in ("labelflip-30", "art-backdoor") for m in ("poisoned", "spectral-signatures")}
    assert all(r["n"] == (2 if r["attack"] == "labelflip-30" else 1) for r in board["rows"])
