"""The plugin contract checked at the boundary: what a defense or an attack returns, option defaults, broken
plugins by name, and the names the docs use. Each case: the plugin's mistake is reported naming the plugin,
the method and what it should have returned; the run's other defenses go on; results.json is never left
at "running"."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import ptk
from ptk.experiment import run_experiment

from .plugins.blobs import BlobsAndMlp, TinyNet, blobs_config


class TensorDetails(ptk.Defense):
    name = "c-tensor-details"
    description = "returns a tensor in details"

    def defend(self, ctx, options):
        return ptk.DefenseResult(predictor=ctx.poisoned_model, details={"threshold": torch.tensor(0.5)})


class ReturnsModel(ptk.Defense):
    name = "c-returns-model"
    description = "returns the model itself"

    def defend(self, ctx, options):
        return ctx.poisoned_model


class ListScores(ptk.Defense):
    name = "c-list-scores"
    description = "scores as a list"

    def defend(self, ctx, options):
        return ptk.DefenseResult(predictor=ctx.poisoned_model, scores=[0.0] * len(ctx.data.y_train))


class Fine(ptk.Defense):
    name = "c-fine"
    description = "returns the poisoned model"

    def defend(self, ctx, options):
        return ptk.DefenseResult(predictor=ctx.poisoned_model, details={"note": "ok"})


class ArrayDetailsFlip(ptk.Attack):
    name = "c-array-details"
    description = "a flip whose details hold a tensor"

    def poison(self, ctx, options):
        y = ctx.data.y_train.clone()
        idx = (y == ctx.target.source_class).nonzero().squeeze(1)[:3]
        y[idx] = ctx.target.target_class
        return ptk.Poisoning(y_train=y, poison_indices=idx, details={"indices": idx})


class Contract(BlobsAndMlp):
    @ptk.hookimpl
    def register_defenses(self, register):
        for d in (TensorDetails(), ReturnsModel(), ListScores(), Fine()):
            register(d)

    @ptk.hookimpl
    def register_attacks(self, register):
        register(ArrayDetailsFlip())


def run(registry, attack: str, defenses: list[str]) -> tuple[dict, list[dict]]:
    saved: list[dict] = []
    reg = registry(Contract())
    try:
        config = blobs_config(attack, defenses, labelflip={"budget": 5})
        final = run_experiment(config, reg, save=lambda r: saved.append(json.loads(json.dumps(r))), use_cache=False)
    except ptk.PluginError:
        final = None
    return final, saved


def test_defense_mistakes_fail_that_defense_naming_it_and_the_others_go_on(registry):
    final, saved = run(registry, "labelflip", ["c-tensor-details", "c-returns-model", "c-list-scores", "c-fine"])
    rows = {m["name"]: m for m in final["models"]}
    assert final["status"] == "failed" and saved[-1]["status"] == "failed"  # never stuck at "running"
    assert rows["c-fine"].get("failed") is not True and rows["c-fine"]["test_accuracy"] > 0
    errors = {n: rows[n]["error"] for n in ("c-tensor-details", "c-returns-model", "c-list-scores")}
    assert "defense 'c-tensor-details'" in errors["c-tensor-details"]
    assert "details['threshold'] is not JSON-serialisable" in errors["c-tensor-details"]
    assert "defend() must return a ptk.DefenseResult" in errors["c-returns-model"]
    assert "returned Network" in errors["c-returns-model"]
    assert "DefenseResult.scores must be a torch.Tensor or None, got list" in errors["c-list-scores"]


def test_an_attack_whose_details_cannot_be_saved_fails_the_run_naming_it_and_results_say_failed(registry):
    final, saved = run(registry, "c-array-details", ["c-fine"])
    assert final is None
    assert saved[-1]["status"] == "failed"
    assert "attack 'c-array-details'" in saved[-1]["error"]
    assert "Poisoning.details['indices'] is not JSON-serialisable" in saved[-1]["error"]


class BadDefault(ptk.Defense):
    name = "c-bad-default"
    description = "its default fails its own check"
    options = [ptk.Option("k", int, 0, "neighbours", check=ptk.positive)]

    def defend(self, ctx, options):
        raise AssertionError("never reached")


class BadDefaultPlugin:
    @ptk.hookimpl
    def register_defenses(self, register):
        register(BadDefault())


def test_an_option_default_that_fails_its_check_makes_the_plugin_broken_and_plugins_name_says_so(registry, ptk):
    reg = registry((BadDefaultPlugin(), "knn-sanitize"))
    assert "c-bad-default" not in reg.names("defense")
    (broken,) = [b for b in reg.broken if b.source == "knn-sanitize"]
    assert "the default of option 'k' fails its own check" in broken.error and "must be positive" in broken.error
    listing = ptk("plugins").output
    assert "BROKEN" in listing and "knn-sanitize" in listing
    res = ptk("plugins", "knn-sanitize", expect=1)
    assert "is BROKEN" in res.output and "fails its own check" in res.output


def test_every_public_name_the_docs_use_imports():
    """`from ptk import X` for each X the plugin reference shows in an import line or names in backticks as
    ptk's (GOALS included)."""
    import re

    from .fixtures import ROOT

    text = (ROOT / "docs" / "plugin-reference.md").read_text() + (ROOT / "docs" / "plugins.md").read_text()
    imported = {n.strip() for line in re.findall(r"from ptk import ([\w, ]+)", text) for n in line.split(",")}
    assert "GOALS" in text and hasattr(ptk, "GOALS")
    missing = sorted(n for n in imported if n and not hasattr(ptk, n))
    assert not missing, f"docs import names ptk does not export: {missing}"


class MapFeatures(TinyNet):
    """features(x) returns a feature map, not one vector per image."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return super().features(x).view(len(x), 4, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class OtherHead(TinyNet):
    """head(features(x)) is not forward(x)."""

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class BadModel(ptk.ModelSpec):
    name = "c-bad-model"
    description = "breaks the model contract as its option says"
    options = [ptk.Option("mistake", str, "features", "which mistake", choices=("features", "head", "module"))]

    def build(self, num_classes, image_shape, options):
        if options["mistake"] == "module":
            return "not a module"
        return (MapFeatures if options["mistake"] == "features" else OtherHead)(num_classes, image_shape)


class BadModelPlugin(BlobsAndMlp):
    @ptk.hookimpl
    def register_models(self, register):
        super().register_models(register)
        register(BadModel())


@pytest.mark.parametrize("mistake, message", [
    ("features", "features(x) returns (2, 4, 2, 2) for 2 images; expected N x D"),
    ("head", "head(features(x)) differs from forward(x)"),
    ("module", "returned str; it must return a torch.nn.Module"),
])
def test_a_model_that_breaks_the_contract_is_named_before_any_training(registry, tmp_path, mistake, message):
    from ptk.config import ExperimentConfig

    reg = registry(BadModelPlugin())
    config = ExperimentConfig(dataset="api-blobs", model="c-bad-model", attack="labelflip", defenses=["none"],
                              epochs=1, device="cpu", options={"c-bad-model": {"mistake": mistake},
                                                              "labelflip": {"budget": 5}})
    saved: list[dict] = []
    with pytest.raises(ptk.PluginError, match="model 'c-bad-model'") as info:
        run_experiment(config, reg, save=saved.append, use_cache=False, data_root=tmp_path)
    assert message in str(info.value)
    assert saved == []  # nothing trained, nothing written


SEEN: dict[str, torch.Tensor] = {}


class Calibrates(ptk.Defense):
    """Asks for trusted data and keeps what it got beside the training set it was given."""

    name = "c-calibrates"
    description = "records its trusted images"
    threat = ptk.ThreatModel(trusted_data=True)
    options = [ptk.Option("n", int, 20, "trusted images to ask for")]

    def defend(self, ctx: ptk.DefenseContext, options) -> ptk.DefenseResult:
        SEEN["trusted"], _ = ctx.trusted_data(options["n"])
        SEEN["train"] = ctx.data.x_train
        return ptk.DefenseResult(predictor=ctx.poisoned_model)


class CalibratesPlugin(BlobsAndMlp):
    @ptk.hookimpl
    def register_defenses(self, register):
        register(Calibrates())


def test_a_trusted_hold_out_gives_defenses_clean_images_no_model_trained_on(registry, tmp_path, caplog):
    reg = registry(CalibratesPlugin())
    base = blobs_config("labelflip", ["c-calibrates"], labelflip={"budget": 5})
    whole = run_experiment(base, reg, save=lambda r: None, use_cache=False, data_root=tmp_path)
    SEEN.clear()
    held = run_experiment(blobs_config("labelflip", ["c-calibrates"], labelflip={"budget": 5},
                                       trusted={"holdout": "30"}),
                          reg, save=lambda r: None, use_cache=False, data_root=tmp_path)
    assert held["data"]["train_size"] == whole["data"]["train_size"] - 30
    assert held["resolved"]["trusted_holdout"] == 30
    flat = lambda x: {bytes(img.cpu().numpy().tobytes()) for img in x}
    assert len(SEEN["trusted"]) == 20 and not flat(SEEN["trusted"]) & flat(SEEN["train"])  # never trained on
    row = next(m for m in held["models"] if m["name"] == "c-calibrates")
    assert "held out: 30 images no model trained on" in row["threat_model"]
    # more than there is: what there is, and a warning that says so (never a poisoned image to make up the count)
    SEEN.clear()
    with caplog.at_level(logging.WARNING, logger="ptk"):
        run_experiment(blobs_config("labelflip", ["c-calibrates"], labelflip={"budget": 5},
                                    **{"c-calibrates": {"n": "1000"}}),
                       reg, save=lambda r: None, use_cache=False, data_root=tmp_path)
    assert len(SEEN["trusted"]) == whole["data"]["train_size"] - 5
    assert "c-calibrates asked for 1000 trusted images; the training set holds 55 clean ones" in caplog.text
    with pytest.raises(ptk.UsageError, match="trusted.holdout must be a whole number"):
        run_experiment(blobs_config("labelflip", ["c-calibrates"], trusted={"holdout": "-1"}), reg,
                       save=lambda r: None, use_cache=False, data_root=tmp_path)
    with pytest.raises(ptk.UsageError, match="unknown option trusted.size"):
        run_experiment(blobs_config("labelflip", ["c-calibrates"], trusted={"size": "1"}), reg,
                       save=lambda r: None, use_cache=False, data_root=tmp_path)
