"""End to end through the CLI on real handwritten digits: the attack works, the report is complete."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest

from ptk.config import ExperimentConfig

from .fixtures import TINY, config_from_args, load_results, model_row


@pytest.mark.slow
def test_labelflip_then_ensemble_end_to_end(ptk, tmp_path):
    out = tmp_path / "run"
    # 6 epochs, not TINY's 5: after 5 the models are still noisy enough that the poisoned one's accuracy
    # depends on the CPU's kernels (0.41 on an AVX-512 machine, above 0.6 on AVX2); after 6 it is 0.76 here
    args = ("--attack", "labelflip", "--defense", "ensemble", *TINY, "--epochs", "6", "-o", "ensemble.k=3")
    res = ptk("run", *args, "--out", out)
    r = load_results(out)
    assert r["status"] == "complete"
    assert [m["name"] for m in r["models"]] == ["clean", "poisoned", "ensemble"]
    src, tgt = r["target"]["source_class"], r["target"]["target_class"]
    clean, poisoned, ens = (model_row(r, n) for n in ("clean", "poisoned", "ensemble"))
    # the attack works: the poisoned model moves the target image toward the target class
    assert poisoned["target_probs"][tgt] > clean["target_probs"][tgt] + 0.3
    assert clean["target_pred"] == src and poisoned["attack_success"]
    assert len(r["attack"]["poison_indices"]) == 30
    assert clean["test_accuracy"] > 0.6 and poisoned["test_accuracy"] > 0.6
    assert ens["test_accuracy"] > 0.2  # 3 members of ~270 images each: weak, but far above chance (0.1)
    for m in r["models"]:
        assert abs(sum(m["target_probs"].values()) - 1) < 1e-3
    # partition ensemble: disjoint members, a certificate for the target
    assert sum(ens["details"]["member_sizes"]) == r["data"]["train_size"]
    assert sum(ens["target_votes"].values()) == 3
    # the vote is the ensemble's prediction (what its certificate is about); the softmax's choice beside it
    assert ens["target_pred"] == ens["target_vote_pred"] == max(ens["target_votes"], key=ens["target_votes"].get)
    assert ens["attack_success"] == (ens["target_pred"] == tgt) and ens["softmax_target_pred"] in ens["target_probs"]
    assert isinstance(ens["budget_exceeds_certificate"], bool)
    # report files exist and parse; the console shows the table
    assert (out / "report.md").read_text().count("| ensemble |") == 1
    assert (out / "target_probs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "poisoned" in res.output and "ensemble" in res.output
    # rerunnable from what it wrote down: the recorded config is the one these arguments build
    assert r["config"]["options"]["labelflip"]["budget"] == "30"
    assert ExperimentConfig.from_dict(r["config"]) == config_from_args(*args)


@pytest.mark.slow
def test_second_run_with_another_defense_reuses_clean_and_poisoned(ptk, tmp_path):
    ptk("run", "--defense", "none", *TINY, "--out", tmp_path / "a")
    ptk("run", "--defense", "ensemble", "-o", "ensemble.k=2", "-o", "ensemble.mode=seeds", *TINY,
        "--out", tmp_path / "b")
    b = load_results(tmp_path / "b")
    assert model_row(b, "clean")["cached"] and model_row(b, "poisoned")["cached"]
    assert not model_row(b, "ensemble").get("cached", False)
    assert b["cache"]["hits"] >= 2
    # a model read from the cache costs this run nothing, but reports count what its training took
    a = load_results(tmp_path / "a")
    for name in ("clean", "poisoned"):
        first, again = model_row(a, name), model_row(b, name)
        assert again["train_seconds"] == 0 and again["cost_seconds"] > 0
        if not first["cached"]:  # run a trained it: the cache recorded its fit, a part of a's training time
            assert again["cost_seconds"] <= first["train_seconds"] == first["cost_seconds"]
    ens = model_row(b, "ensemble")
    assert ens["cost_seconds"] == ens["defense_seconds"]  # nothing cached: its whole time, counted once


@pytest.mark.slow
def test_existing_out_folder_is_not_overwritten(ptk, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    res = ptk("run", "--defense", "none", *TINY, "--out", out, expect=2)
    assert "--overwrite" in res.output
    assert (out / "results.json").read_text() == "{}"


@pytest.mark.slow
def test_redirected_run_prints_a_line_per_model_instead_of_a_progress_bar(tmp_path, data_dir):
    """stderr to a file or pipe (nohup, CI, `2> log`): tqdm draws nothing there, so each model's start and
    end are plain lines, and a cached model says so; nothing per batch or epoch."""
    env = {**os.environ, "PTK_CACHE_DIR": str(tmp_path / "cache"), "PTK_DATA_DIR": str(data_dir)}
    small = ["--preset", "quick", "--subset", "200", "--epochs", "1", "-o", "resnet18.width=4",
             "-o", "labelflip.budget=5", "--defense", "none"]

    def ptk_redirected(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "ptk", "run", *small, *map(str, args)], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "ptk: " not in done.stdout  # the table stays clean for `> table.txt`
        return done

    first = ptk_redirected("--out", tmp_path / "a").stderr
    lines = [l for l in first.splitlines() if l.startswith("ptk: ")]
    assert lines[0] == "ptk: training clean model (200 samples, 1 epoch) ..."
    assert re.fullmatch(r"ptk: training clean model done in \d+\.\d s", lines[1])
    assert lines[2] == "ptk: training poisoned model (200 samples, 1 epoch) ..."
    assert re.fullmatch(r"ptk: training poisoned model done in \d+\.\d s", lines[3])
    assert len(lines) == 4

    again = [l for l in ptk_redirected("--out", tmp_path / "b").stderr.splitlines() if l.startswith("ptk: ")]
    assert again == ["ptk: clean model: loaded from the cache", "ptk: poisoned model: loaded from the cache"]


def test_no_plain_progress_lines_on_a_terminal(monkeypatch, caplog):
    """On a terminal the tqdm bar shows progress; the plain lines would only break it up."""
    from ptk.progress import progress_line

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    caplog.set_level(logging.INFO, logger="ptk")
    monkeypatch.setattr(sys, "stderr", Terminal())
    progress_line("training clean model ...")
    assert "training clean model" not in caplog.text
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a file
    progress_line("training clean model ...")
    assert "ptk: training clean model ..." in caplog.text
