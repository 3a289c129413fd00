"""Inputs that used to surface as tracebacks or run nothing: each is refused in one line naming the problem and
the fix, before any training (and before a sweep store is created)."""

from __future__ import annotations

import time

import pytest

from ptk.errors import UsageError
from ptk.sweep import check_size, expand

from .fixtures import GRID_HEAD


def test_a_grid_of_a_million_cells_is_refused_within_a_second_before_expanding():
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"the grid has 1,000,000 cells, more than --max-cells 10,000"):
        expand({}, {"targets": [1_000_000]}, "grid.toml")
    with pytest.raises(UsageError, match="1,000,000 cells"):
        check_size({"seed": list(range(1000)), "labelflip.budget": list(range(1000))}, "grid.toml")
    assert time.perf_counter() - start < 1.0
    assert check_size({"seed": [0, 1], "targets": [3]}, "g", max_cells=6) == 6


def test_an_empty_target_list_is_refused_not_run_as_zero_cells(ptk, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID_HEAD + "[grid]\ntargets = []\n")
    res = ptk("sweep", "run", grid, "--db", tmp_path / "s.db", expect=2)
    assert "'targets' is an empty list" in res.output and not (tmp_path / "s.db").exists()


def test_max_cells_flag_refuses_before_the_store_is_created(ptk, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID_HEAD + "[grid]\nseed = [0, 1, 2]\n")
    res = ptk("sweep", "run", grid, "--db", tmp_path / "s.db", "--max-cells", "2", expect=2)
    assert "3 cells, more than --max-cells 2" in res.output and not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8", "is not UTF-8 text"),
    (None, "is a directory"),
])
def test_a_config_file_that_is_not_text_or_is_a_directory_is_one_line(ptk, tmp_path, content, message):
    path = tmp_path / "bad.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    res = ptk("run", "--config", path, "--out", tmp_path / "r", expect=2)
    assert message in res.output and "Traceback" not in res.output


def test_a_number_of_thousands_of_digits_is_one_line_from_a_file_a_flag_or_a_grid(ptk, tmp_path):
    """Python refuses to read an integer of over 4,300 digits, and a huge epochs count sized a progress bar
    with it: both were tracebacks."""
    config = tmp_path / "c.toml"
    config.write_text("epochs = " + "9" * 5000 + "\n")
    res = ptk("run", "--config", config, "--out", tmp_path / "r", expect=2)
    assert "holds a number too long to read" in res.output and len(res.output) < 400
    res = ptk("run", "--preset", "quick", "--epochs", "9" * 100, "--out", tmp_path / "r", expect=2)
    assert "epochs must be at most 100,000" in res.output and "(100 chars)" in res.output
    grid = tmp_path / "g.toml"
    grid.write_text(GRID_HEAD + "[grid]\nepochs = [1, 1000000]\n")
    res = ptk("sweep", "run", grid, "--db", tmp_path / "s.db", expect=2)
    assert "epochs=1000000" in res.output and "100,000" in res.output and not (tmp_path / "s.db").exists()
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"config": 7}', '"text"'])
def test_rerun_of_a_results_file_that_is_not_an_object_is_one_line(ptk, tmp_path, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(content)
    res = ptk("rerun", run_dir, expect=2)
    assert "is not a ptk results file" in res.output and "Traceback" not in res.output


def test_overwrite_onto_a_results_json_folder_is_refused_before_training(ptk, tmp_path):
    out = tmp_path / "r"
    (out / "results.json").mkdir(parents=True)
    res = ptk("run", "--preset", "quick", "--out", out, "--overwrite", expect=2)
    assert "results.json is a folder" in res.output and "training" not in res.output


def test_spectral_signatures_flagging_more_than_a_class_is_refused_before_training(ptk, tmp_path):
    res = ptk("run", "--preset", "quick", "--attack", "art-backdoor", "--defense", "art-spectral-signatures",
              "-o", "art-spectral-signatures.expected_pp_poison=0.9", "-o", "art-spectral-signatures.eps_multiplier=5",
              "--out", tmp_path / "r", expect=2)
    assert "450% of each class" in res.output and "below 1" in res.output
    assert not (tmp_path / "r" / "results.json").exists()


def test_more_targets_than_source_class_test_images_is_refused_in_the_pre_check(ptk, tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('preset = "quick"\ndefenses = ["none"]\n[grid]\nseed = [0]\ntargets = 500\n')
    res = ptk("sweep", "run", grid, "--db", tmp_path / "s.db", expect=2)
    assert "the test set has only" in res.output and "'1' images" in res.output
    assert not (tmp_path / "s.db").exists()


def test_an_iteration_count_above_arts_default_is_accepted_with_a_warning(caplog):
    from ptk import positive_up_to

    check = positive_up_to(250, "ART's default")
    assert check(40) is None and not caplog.records
    assert check(0) == "must be positive, got 0"
    with caplog.at_level("WARNING", logger="ptk"):
        assert check(10_000) is None
    assert "10000 is above 250 (ART's default)" in caplog.text


@pytest.mark.parametrize("args, message", [
    (["--attack", "art-gradient-matching", "-o", "art-gradient-matching.epsilon=300"], "must be at most 255"),
    (["--attack", "art-bullseye-polytope", "-o", "art-bullseye-polytope.epsilon=1000"], "must be at most 255"),
    (["--attack", "art-backdoor", "--defense", "art-strip", "-o", "art-strip.n=1000000"],
     "art-strip.n=1000000 trusted images is more than the 1347 training images"),
    (["--attack", "art-backdoor", "--defense", "art-roni", "-o", "art-roni.n=1000000"],
     "art-roni.n=1000000 trusted images is more than the 1347 training images"),
    (["--attack", "art-backdoor", "--defense", "art-roni", "-o", "art-roni.calibrated=true",
      "-o", "art-roni.pp_quiz=0.7", "-o", "art-roni.pp_cal=0.6"], "is more than the whole training set"),
])
def test_art_options_that_cannot_work_are_refused_before_training(ptk, tmp_path, args, message):
    """Grey-level budgets above 255, more trusted images than the training set (were quietly capped), RONI's
    quiz and calibration shares adding up to more than the data."""
    res = ptk("run", "--preset", "quick", *args, "--out", tmp_path / "r", expect=2)
    assert message in res.output and "Traceback" not in res.output
    assert "model" not in res.output  # refused before any model trained or loaded
