"""Bad input a hostile or hurried user gives: each refused with exit 2, naming the value and the fix,
before any training and with nothing written; and what a run writes is readable by colleagues."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
import torch

import ptk
from .fixtures import TINY, load_results, model_row
from ptk.cli import build_config
from ptk.data import Dataset
from ptk_plugins.labelflip import LabelFlip


@pytest.mark.parametrize("line, message", [
    ('epochs = "six"', "key 'epochs' must be an integer"),
    ('subset = "100"', "key 'subset' must be an integer"),
    ("options = 5", "key 'options' must be a table"),
    ("lr = 0", "lr must be positive"),
    ("seed = -3", "seed must be in 0 .. 2**32-1"),
    ("defenses = [1, 2]", "key 'defenses' must be a list of strs"),
    ("[options]\nlabelflip = 3", "options.labelflip must be a table"),
])
def test_config_values_of_the_wrong_type_or_range_exit_2_naming_key_and_file(ptk, tmp_path, line, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(line + "\n")
    res = ptk("run", "--config", cfg, "--out", tmp_path / "r", expect=2)
    assert message in res.output and str(cfg) in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_defenses_as_a_string_or_comma_list_name_whole_plugins(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('defenses = "ensemble"\n')
    assert build_config(None, cfg, {}, (), ()).defenses == ["ensemble"]  # not letter by letter
    cfg.write_text('defenses = "ensemble, influence"\n')
    assert build_config(None, cfg, {}, (), ()).defenses == ["ensemble", "influence"]
    assert build_config(None, None, {}, ("loss-outliers,influence", "bilevel"), ()).defenses == [
        "loss-outliers", "influence", "bilevel"]


def test_out_that_cannot_hold_a_run_is_refused_before_any_training(ptk, tmp_path, monkeypatch):
    monkeypatch.setenv("PTK_CACHE_DIR", str(tmp_path / "cache"))
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    res = ptk("run", *TINY, "--defense", "none", "--out", a_file, expect=2)
    assert "is a file, not a folder" in res.output
    res = ptk("run", *TINY, "--defense", "none", "--out", a_file / "run", expect=2)
    assert "which is a file" in res.output
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "draft.tex").write_text("keep me")
    res = ptk("run", *TINY, "--defense", "none", "--out", other, expect=2)
    assert "holds no ptk run" in res.output and "--overwrite" in res.output
    assert a_file.read_text() == "keep me" and sorted(p.name for p in other.iterdir()) == ["draft.tex"]
    assert not (tmp_path / "cache" / "models").exists()  # nothing was trained


@pytest.mark.slow
def test_interrupted_run_is_resumed_only_by_the_same_settings(ptk, tmp_path, monkeypatch):
    monkeypatch.setenv("PTK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    out.mkdir()
    recorded = build_config(None, None, {"seed": 1}, ("none",), ()).to_dict()
    interrupted = {"status": "running", "config": recorded, "models": []}
    (out / "results.json").write_text(json.dumps(interrupted))
    res = ptk("run", *TINY, "--defense", "none", "--out", out, expect=2)
    assert "interrupted run with other settings" in res.output
    assert json.loads((out / "results.json").read_text()) == interrupted  # not taken over


def test_subset_larger_than_the_data_says_so(caplog):
    data = Dataset("toy", torch.zeros(20, 1, 2, 2, dtype=torch.uint8), torch.arange(20) % 2,
                   torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.arange(6) % 2, ["a", "b"])
    with caplog.at_level(logging.WARNING, logger="ptk"):
        out = data.subset(50, None, seed=0)
    assert len(out.y_train) == 20
    assert "--subset 50 is more than the 20 images toy has" in caplog.text


def test_a_budget_flipping_much_of_its_pool_warns_with_a_scaled_budget(caplog):
    y = torch.arange(100) % 2  # 50 images of class 0
    data = Dataset("toy", torch.zeros(100, 1, 2, 2, dtype=torch.uint8), y,
                   torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4) % 2, ["a", "b"])
    with caplog.at_level(logging.WARNING, logger="ptk"):
        LabelFlip().check(data, 0, 1, {"budget": 15, "pool": "source"})  # 30%: no warning
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="ptk"):
        LabelFlip().check(data, 0, 1, {"budget": 25, "pool": "source"})
    assert "flips 50% of its 50-image pool" in caplog.text and "labelflip.budget=2" in caplog.text


class Quitting(ptk.Defense):
    name = "quitting"
    description = "calls sys.exit, as a careless script-turned-plugin does"

    def defend(self, ctx, options):
        raise SystemExit(3)


class Peeking(ptk.Defense):
    name = "peeking"
    description = "reads the poison count without declaring knows_budget"

    def defend(self, ctx, options):
        raise AssertionError(f"read the budget: {ctx.attack_budget}")


class Told(ptk.Defense):
    name = "told"
    description = "declares knows_budget and reads it"
    threat = ptk.ThreatModel(knows_budget=True)

    def defend(self, ctx, options):
        return ptk.DefenseResult(predictor=ctx.poisoned_model, details={"budget": ctx.attack_budget})


class InputTestPlugins:
    @ptk.hookimpl
    def register_defenses(self, register):
        for d in (Quitting(), Peeking(), Told()):
            register(d)


@pytest.mark.slow
def test_failing_defenses_are_recorded_and_files_keep_the_umask_mode(ptk, tmp_path, monkeypatch, registry):
    registry((InputTestPlugins(), "input-tests"))
    out = tmp_path / "run"
    ptk("run", *TINY, "--defense", "quitting,peeking,told", "--out", out, expect=1)
    r = load_results(out)
    assert r["status"] == "failed"  # not stuck at "running": sys.exit in a defense ends only that defense
    assert model_row(r, "quitting")["error"] == "SystemExit: 3"
    assert "ThreatModelViolation" in model_row(r, "peeking")["error"]
    assert "knows_budget=False" in model_row(r, "peeking")["error"]
    told = model_row(r, "told")
    assert told["details"]["budget"] == 30 and told["threat_model"].endswith("knows the poison budget")
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("results.json", "report.md", "target_probs.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name


def test_plugins_command_shows_which_defenses_know_the_budget(ptk):
    listed = json.loads(ptk("plugins", "--json").output)
    threats = {d["name"]: d["threat_model"] for d in listed["plugins"] if d["kind"] == "defense"}
    assert threats and all(t["knows_budget"] is False for t in threats.values())  # no built-in is told it


def test_a_decompression_bomb_image_is_a_usage_error_naming_the_file(monkeypatch):
    import io

    from PIL import Image

    from ptk.errors import UsageError
    from ptk.readers import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4,096 pixels is then over twice the limit: a "bomb"
    with pytest.raises(UsageError, match=r"cannot read image train/cat/big.png: .*decompression-bomb"):
        decode_image(buf.getvalue(), "train/cat/big.png")
