"""The sweep store's guarantees beyond a single run: one driver at a time, one grid's base settings per store
unless told otherwise, and reports of the current grid's cells (docs/reliability.md)."""

from __future__ import annotations

import json

from ptk.cli_sweep import driver_lock
from ptk.sweepstore import SweepStore

from .fixtures import write_grid

GRID = 'seed = [0]\n'


def test_a_second_driver_on_one_store_is_refused(ptk, tmp_path):
    grid, db = tmp_path / "g.toml", tmp_path / "s" / "sweep.db"
    write_grid(grid, GRID)
    with driver_lock(db):  # a first driver, running
        out = ptk("sweep", "run", grid, "--db", db, expect=2).output
    assert "another driver (pid " in out and "use another --db" in out
    assert not db.exists()  # refused before its store was made


def test_the_lock_goes_with_its_driver(tmp_path):
    db = tmp_path / "sweep.db"
    with driver_lock(db):
        pass
    with driver_lock(db):  # released: the next driver takes it
        pass


def test_a_grid_whose_base_settings_changed_is_refused_with_the_fix(ptk, tmp_path):
    grid, db = tmp_path / "g.toml", tmp_path / "s" / "sweep.db"
    write_grid(grid, GRID)
    store = SweepStore(db)
    store.set_meta("grid_base", json.dumps({"preset": "quick", "epochs": 1}, sort_keys=True))
    store.close()
    out = ptk("sweep", "run", grid, "--db", db, expect=2).output
    assert "other base settings" in out and "epochs: 1 -> 2" in out and "--add-grid" in out


def finished(store: SweepStore, cell: str, seed: int, success: bool) -> None:
    store.add_cell(cell, {"seed": seed}, {"seed": seed, "labelflip.budget": 10})
    store.finish(cell, {"status": "complete", "config": {"seed": seed}, "attack": {"name": "labelflip"},
                        "models": [{"name": "clean", "test_accuracy": 0.9, "attack_success": False},
                                   {"name": "poisoned", "test_accuracy": 0.8, "attack_success": success}]}, 1.0)


def test_the_report_covers_the_current_grid_and_says_what_it_left_out(ptk, tmp_path):
    db = tmp_path / "sweep.db"
    store = SweepStore(db)
    finished(store, "a", 0, True)
    finished(store, "b", 1, False)  # a cell the grid dropped since
    store.set_meta("current_cells", json.dumps(["a"]))
    store.close()
    out = ptk("sweep", "report", db, "--out", tmp_path / "r").output
    assert "1 other cells" in out and "--all-cells" in out
    rates = json.loads((tmp_path / "r" / "rates.json").read_text())
    assert {r["model"]: r["n"] for r in rates["rates"]} == {"clean": 1, "poisoned": 1}
    assert rates["cells"]["complete"] == 1
    ptk("sweep", "report", db, "--out", tmp_path / "all", "--all-cells")
    rates = json.loads((tmp_path / "all" / "rates.json").read_text())
    assert {r["model"]: r["n"] for r in rates["rates"]} == {"clean": 2, "poisoned": 2}


def test_complete_cells_whose_rows_were_deleted_are_noticed_and_restored_from_their_results_file(ptk, tmp_path):
    db = tmp_path / "sweep.db"
    store = SweepStore(db)
    finished(store, "a", 0, True)
    finished(store, "b", 1, False)
    store.close()
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "a.json").write_text(json.dumps({"status": "complete", "config": {"seed": 0},
                                              "attack": {"name": "labelflip"},
                                              "models": [{"name": "clean", "test_accuracy": 0.9},
                                                         {"name": "poisoned", "test_accuracy": 0.8,
                                                          "attack_success": True}]}))
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("DELETE FROM models")  # by hand, behind ptk's back
    con.commit()
    con.close()
    assert "2 complete cells have no model rows" in ptk("sweep", "status", db).output
    store = SweepStore(db)
    restored, reset = store.repair(cells)
    assert (restored, reset) == (["a"], ["b"])  # b has no results file: it will rerun
    got = {r["name"]: r["attack_success"] for r in store.models()}
    assert got == {"clean": None, "poisoned": 1} and store.status() == {"a": "complete", "b": "pending"}
    store.close()


def test_a_full_disk_stops_the_sweep_in_one_line_and_puts_the_cell_back_to_pending(ptk, tmp_path, monkeypatch):
    import errno

    import ptk.executors as executors

    def computed(cfg, *args, **kwargs):  # the cell's run, done: only recording it is left
        return executors.Outcome({"status": "complete", "config": cfg.to_dict(), "models": []}, None, 1.0, "h", "cpu")

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(executors, "run_cell", computed)
    monkeypatch.setattr(executors, "write_json", disk_full)
    grid, db = tmp_path / "g.toml", tmp_path / "s" / "sweep.db"
    write_grid(grid, GRID)
    out = ptk("sweep", "run", grid, "--db", db, expect=1).output
    assert "No space left on device" in out and "rerun" in out and "Traceback" not in out
    store = SweepStore(db, readonly=True)
    assert set(store.status().values()) == {"pending"}
    store.close()


def test_an_empty_file_becomes_a_store(tmp_path):
    db = tmp_path / "new.db"
    db.touch()
    store = SweepStore(db)
    store.add_cell("c", {}, {})
    store.close()
    assert SweepStore(db, readonly=True).status() == {"c": "pending"}


def test_a_report_folder_that_cannot_be_written_is_one_line(ptk, tmp_path):
    db = tmp_path / "sweep.db"
    store = SweepStore(db)
    finished(store, "a", 0, True)
    store.close()
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine\n")
    for out, message in ((blocker, "is a file"), (blocker / "sub", "lies under")):
        res = ptk("sweep", "report", db, "--out", out, expect=2)
        assert message in res.output and "Traceback" not in res.output
    assert blocker.read_text() == "mine\n"


def test_status_says_when_cells_marked_running_have_no_driver(ptk, tmp_path):
    """A driver killed with SIGKILL (or a lost machine) cannot put its cells back to pending: ``status`` tells
    those apart from cells a live driver is running, by whether a driver holds the store's lock."""
    db = tmp_path / "sweep.db"
    store = SweepStore(db)
    store.add_cell("c", {}, {})
    store.start("c", "cpu")
    store.close()
    out = ptk("sweep", "status", db).output
    assert "1 running" in out and "no driver is running cells" in out and "were interrupted" in out
    assert not db.with_name("sweep.db.lock").exists()  # status changes nothing, not even a lock file
    with driver_lock(db):  # a live driver
        out = ptk("sweep", "status", db).output
    assert "1 running" in out and "no driver" not in out


def test_sigterm_puts_the_cell_in_flight_back_to_pending(ptk, tmp_path, monkeypatch):
    """``kill`` or a scheduler's time limit sends SIGTERM: handled like Ctrl-C (exit 130), so the cell in flight
    is pending again at once instead of left marked running."""
    import os
    import signal

    import ptk.experiment as experiment

    grid, db = tmp_path / "g.toml", tmp_path / "s.db"
    write_grid(grid, "seed = [0, 1]\n")
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    ptk("sweep", "run", grid, "--db", db, expect=130)
    store = SweepStore(db, readonly=True)
    try:
        assert set(store.status().values()) == {"pending"}
    finally:
        store.close()
    assert signal.getsignal(signal.SIGTERM) is before  # the driver's handler is gone with it
