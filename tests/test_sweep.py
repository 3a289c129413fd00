"""``ptk sweep``: a grid into one SQLite store, resumable, with success rates and intervals."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

import ptk
from ptk.config import PRESETS
from ptk.rates import success_rates
from ptk.stats import wilson_interval
from ptk.sweep import expand, read_grid

from .fixtures import cells, rows, write_grid

def test_wilson_interval_is_honest_at_the_edges():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and 0.25 < hi < 0.35  # zero successes in 10 does not mean a rate of exactly 0
    lo, hi = wilson_interval(10, 10)
    assert 0.65 < lo < 0.75 and hi == 1
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)


def test_grid_expands_to_checked_cells_with_stable_ids(tmp_path):
    grid = tmp_path / "g.toml"
    write_grid(grid, 'seed = [0, 1]\ntargets = 3\n"labelflip.budget" = [10, 20]\n')
    base, lists = read_grid(grid, PRESETS)
    first = expand(base, lists, str(grid))
    assert len(first) == 2 * 3 * 2 and len({c.id for c in first}) == 12
    assert {c.config.target_rank for c in first} == {0, 1, 2}
    assert {c.config.options["labelflip"]["budget"] for c in first} == {10, 20}
    # the same settings written differently are the same cells
    write_grid(grid, '"labelflip.budget" = [20, 10]\ntargets = 3\nseed = [1, 0]\n')
    assert {c.id for c in expand(*read_grid(grid, PRESETS), str(grid))} == {c.id for c in first}


@pytest.mark.parametrize("grid, message", [
    ('epochs = ["two"]', "key 'epochs' must be an integer"),
    ("targets = 0", "'targets' must be at least 1"),
    ("colour = [1]", "neither a run setting"),
    ("seed = []", "empty list"),
    ("seed = 3", "grid key 'seed' must be a list of values"),
])
def test_bad_grid_is_refused_naming_the_key(ptk, tmp_path, grid, message):
    path = tmp_path / "g.toml"
    write_grid(path, grid + "\n")
    res = ptk("sweep", "run", path, "--db", tmp_path / "s.db", expect=2)
    assert message in res.output
    assert not (tmp_path / "s.db").exists()


def test_bad_cell_is_refused_before_any_training(ptk, tmp_path, monkeypatch):
    monkeypatch.setenv("PTK_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "g.toml"
    write_grid(path, '"labelflip.budget" = [10, 5000]\n')  # the second cell's budget exceeds its pool
    res = ptk("sweep", "run", path, "--db", tmp_path / "s.db", expect=2)
    assert "cell labelflip.budget=5000" in res.output and "larger than the pool" in res.output
    assert not (tmp_path / "cache" / "models").exists()


@pytest.mark.slow
def test_sweep_shares_the_clean_model_resumes_and_grows(ptk, tmp_path, monkeypatch):
    monkeypatch.setenv("PTK_CACHE_DIR", str(tmp_path / "cache"))
    path, db = tmp_path / "g.toml", tmp_path / "sweep" / "sweep.db"
    write_grid(path, 'targets = 2\n"labelflip.budget" = [10, 30]\n')
    res = ptk("sweep", "run", path, "--db", db)
    first = rows(db)
    assert len(first) == 4 * 2  # 4 cells x (clean, poisoned)
    assert all(c["status"] == "complete" for c in cells(db).values())
    # one clean model for the seed, shared by every target and budget: trained once, then cache hits
    clean = [json.loads(r["row"]) for r in first if r["name"] == "clean"]
    assert sum(not c["cached"] for c in clean) == 1
    # two targets: the hardest and the second hardest correct source image of the clean model
    assert len({r["target_index"] for r in first}) == 2
    poisoned = [r for r in first if r["name"] == "poisoned"]
    assert {r["budget"] for r in poisoned} == {10, 30}
    assert "attack success" in res.output and "95% CI" in res.output
    # each cell's whole results.json is kept beside the store, and names its config
    for cell_id, cell in cells(db).items():
        kept = json.loads((db.parent / "cells" / f"{cell_id}.json").read_text())
        assert kept["config"] == json.loads(cell["config"]) and kept["status"] == "complete"

    # rerun: nothing to do
    res = ptk("sweep", "run", path, "--db", db)
    assert "0 complete, 0 failed, 4 already done" in res.output
    assert rows(db) == first

    # a larger grid adds cells and leaves finished rows alone
    write_grid(path, 'targets = 2\n"labelflip.budget" = [10, 30, 20]\n')
    res = ptk("sweep", "run", path, "--db", db)
    assert "2 complete, 0 failed, 4 already done" in res.output
    now = rows(db)
    assert len(now) == 6 * 2 and all(r in now for r in first)

    rates = success_rates(
        {**r, "grid_values": cells(db)[r["cell_id"]]["grid_values"]} for r in rows(db))
    by = {(json.dumps(r.setting), r.model): r for r in rates}
    assert all(r.n == 2 for r in rates)  # two targets per setting
    assert by[(json.dumps({"labelflip.budget": 10}), "clean")].successes == 0  # clean: never the target class


class FlakyAttack(ptk.Attack):
    name = "flaky"
    description = "fails on seed 1, flips nothing otherwise"

    def poison(self, ctx, options):
        if ctx.seed == 1:
            raise RuntimeError("deliberate failure on seed 1")
        return ptk.Poisoning(y_train=ctx.data.y_train.clone(), poison_indices=ctx.data.y_train[:0])


class Flaky:
    @ptk.hookimpl
    def register_attacks(self, register):
        register(FlakyAttack())


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_sweep_goes_on_then_reruns(ptk, tmp_path, monkeypatch, registry):
    registry((Flaky(), "sweep-tests"))
    monkeypatch.setenv("PTK_CACHE_DIR", str(tmp_path / "cache"))
    path, db = tmp_path / "g.toml", tmp_path / "s.db"
    write_grid(path, 'attack = ["flaky"]\nseed = [1, 0]\n')
    res = ptk("sweep", "run", path, "--db", db, expect=1)
    status = {json.loads(c["grid_values"])["seed"]: c for c in cells(db).values()}
    assert status[1]["status"] == "failed" and "deliberate failure on seed 1" in status[1]["error"]
    assert status[0]["status"] == "complete"  # ran after the failure
    assert "1 complete, 1 failed" in res.output
    # rerunning retries the failed cell only
    res = ptk("sweep", "run", path, "--db", db, expect=1)
    assert "0 complete, 1 failed, 1 already done" in res.output


def test_target_order_hardest_first_or_seeded_random_among_correct_images():
    from ptk.experiment import target_order
    import torch

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.55, 0.45]])  # image 1 is wrong
    assert target_order(probs, 0, 1, "hardest", 0).tolist() == [4, 2, 3, 0]
    random = target_order(probs, 0, 1, "random", 5)
    assert sorted(random.tolist()) == [0, 2, 3, 4]  # only correctly classified images
    assert random.tolist() == target_order(probs, 0, 1, "random", 5).tolist()  # the seed fixes the draw
    assert len({tuple(target_order(probs, 0, 1, "random", s).tolist()) for s in range(8)}) > 1


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_cell_in_flight_is_rerun(ptk, tmp_path, monkeypatch):
    import ptk.experiment as experiment

    monkeypatch.setenv("PTK_CACHE_DIR", str(tmp_path / "cache"))
    path, db = tmp_path / "g.toml", tmp_path / "s.db"
    write_grid(path, "targets = 2\n")
    real, calls = experiment.run_experiment, []

    def interrupted_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "run_experiment", interrupted_second)
    ptk("sweep", "run", path, "--db", db, expect=130)
    assert sorted(c["status"] for c in cells(db).values()) == ["complete", "pending"]  # consistent, nothing stuck
    assert len(rows(db)) == 2  # the finished cell's clean and poisoned rows, none of the interrupted one
    monkeypatch.setattr(experiment, "run_experiment", real)
    res = ptk("sweep", "run", path, "--db", db)
    assert "1 complete, 0 failed, 1 already done" in res.output


def sweep_process(path, db, env) -> subprocess.Popen:
    import sys

    return subprocess.Popen([sys.executable, "-m", "ptk", "sweep", "run", str(path), "--db", str(db)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_gives_the_rows_of_an_uninterrupted_sweep(tmp_path):
    import os
    import signal
    import time

    path = tmp_path / "g.toml"
    write_grid(path, 'targets = 3\n')
    env = {**os.environ, "PTK_CACHE_DIR": str(tmp_path / "cache")}
    whole = sweep_process(path, tmp_path / "whole" / "sweep.db", env)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    env["PTK_CACHE_DIR"] = str(tmp_path / "cache-killed")  # trains everything again, then is killed
    db = tmp_path / "killed" / "sweep.db"
    driver = sweep_process(path, db, env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # handshake: the first cell is complete in the store
            try:
                if db.exists() and any(c["status"] == "complete" for c in cells(db).values()):
                    break
            except sqlite3.OperationalError:  # the driver is still creating the tables
                pass
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    done = [c for c in cells(db).values() if c["status"] == "complete"]
    assert 1 <= len(done) < 3  # killed mid-sweep, the finished cell kept with its rows
    assert {r["cell_id"] for r in rows(db)} == {c["cell_id"] for c in done}
    resumed = sweep_process(path, db, env)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert f"{len(done)} already done" in output
    numbers = ("cell_id", "name", "test_accuracy", "target_p_source", "target_p_target", "attack_success")
    assert [tuple(r[c] for c in numbers) for r in rows(db)] == \
        [tuple(r[c] for c in numbers) for r in rows(tmp_path / "whole" / "sweep.db")]


@pytest.mark.slow
def test_report_writes_tables_and_plots_whose_rates_match_the_store(ptk, tmp_path, monkeypatch):
    from ptk.stats import wilson_interval
    from ptk.sweepstore import SweepStore

    monkeypatch.setenv("PTK_CACHE_DIR", str(tmp_path / "cache"))
    path, db = tmp_path / "g.toml", tmp_path / "s" / "sweep.db"
    write_grid(path, 'targets = 3\n"labelflip.budget" = [10, 30]\n')
    ptk("sweep", "run", path, "--db", db)
    # a pending cell (the grid grew but was not run) is counted by status, not by the rates
    write_grid(path, 'targets = 3\n"labelflip.budget" = [10, 30, 20]\n')
    store = SweepStore(db)
    grown = expand(*read_grid(path, PRESETS), str(path))
    for cell in grown:
        store.add_cell(cell.id, cell.config.to_dict(), cell.values)
    store.set_meta("current_cells", json.dumps(sorted(c.id for c in grown)))  # as a run interrupted at once would
    store.close()
    assert "3 pending, 0 running, 6 complete, 0 failed" in ptk("sweep", "status", db).output

    res = ptk("sweep", "report", db, "--out", tmp_path / "report")
    out = tmp_path / "report"
    for name in ("report.md", "rates.csv", "rates.json", "success_vs_budget.png", "accuracy_vs_success.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "success_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "rates.json").read_text())
    assert saved["cells"]["complete"] == 6 and saved["cells"]["pending"] == 3
    con = sqlite3.connect(db)
    for r in saved["rates"]:  # each rate recomputed from the raw rows, with its Wilson interval
        budget = r["setting"]["labelflip.budget"]
        n, wins = con.execute("SELECT COUNT(*), SUM(attack_success) FROM models WHERE name=? AND budget=? AND NOT failed",
                              (r["model"], budget)).fetchone()
        assert (r["n"], r["successes"]) == (n, wins) == (3, r["successes"])
        assert (r["rate_ci_low"], r["rate_ci_high"]) == pytest.approx(wilson_interval(wins, n))
        if r["model"] == "poisoned":  # drop = clean accuracy - poisoned accuracy, cell by cell
            drops = con.execute("SELECT c.test_accuracy - p.test_accuracy FROM models p JOIN models c USING (cell_id) "
                                "WHERE p.name='poisoned' AND c.name='clean' AND p.budget=?", (budget,)).fetchall()
            assert r["accuracy_drop"] == pytest.approx(sum(d for (d,) in drops) / 3)
            lo, hi = r["accuracy_drop_ci"]
            assert lo < r["accuracy_drop"] < hi
    con.close()
    assert "acc drop (95% CI)" in res.output and "rates.csv" in res.output
    assert "poisoned" in (out / "rates.csv").read_text()


def test_report_and_status_of_a_missing_store_name_the_fix(ptk, tmp_path):
    for command in ("report", "status"):
        res = ptk("sweep", command, tmp_path / "nope.db", expect=2)
        assert "does not exist" in res.output and "ptk sweep run" in res.output
    assert not (tmp_path / "nope.db").exists()
