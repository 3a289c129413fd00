"""Which defenses can face which attack goal (``Defense.goals``, derived from the threat model by default), and
test-time input filters (``DefenseResult.rejects``): their rejection shares, and rejected inputs counted as
failed attacks, in results.json, report.md and the sweep store."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ptk
from ptk.api import defense_goals, goal_refusal
from ptk import Target
from ptk.errors import UsageError
from ptk.evaluate import backdoor_asr, filtered
from ptk.experiment import plan, run_experiment
from ptk.registry import check_plugin
from ptk.report import markdown
from ptk.sweepstore import SweepStore

from .fixtures import model_row
from .plugins.blobs import Blobs, BlobsAndMlp, blobs_config



def stamped_corner(x: torch.Tensor) -> torch.Tensor:
    """The test's own notion of "triggered": the top-left pixel of every channel at 255."""
    return x[:, :, 0, 0].eq(255).all(1)


class CornerFilter(ptk.Defense):
    """A test-time filter that rejects every image whose top-left pixel is 255 (art-backdoor stamps the
    bottom-right corner, so a rejection here is this filter's own rule, checked against a hand count)."""

    name = "goal-corner-filter"
    description = "rejects images with a white top-left pixel"
    api_version = 2
    goals = ("backdoor",)

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        return ptk.DefenseResult(predictor=ctx.poisoned_model, rejects=stamped_corner)


class RejectAll(ptk.Defense):
    """Rejects every input: no attack can succeed through it, and it costs every clean input."""

    name = "goal-reject-all"
    description = "rejects everything"
    api_version = 2

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        return ptk.DefenseResult(predictor=ctx.poisoned_model,
                                 rejects=lambda x: torch.ones(len(x), dtype=torch.bool, device=x.device))


class BadRejects(ptk.Defense):
    name = "goal-bad-rejects"
    description = "returns floats from rejects"
    api_version = 2

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        return ptk.DefenseResult(predictor=ctx.poisoned_model, rejects=lambda x: torch.zeros(len(x)))


def corner_brightness(x: torch.Tensor) -> torch.Tensor:
    """A per-input score: the mean of the bottom-right 4x4 patch, where art-backdoor's pattern goes."""
    return x[:, :, -4:, -4:].float().mean(dim=(1, 2, 3))


class CornerScores(ptk.Defense):
    """A test-time detector that only scores inputs (no threshold): its filter AUROC is checked by hand."""

    name = "goal-corner-scores"
    description = "scores inputs by their bottom-right brightness"
    api_version = 2
    goals = ("backdoor",)

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        return ptk.DefenseResult(predictor=ctx.poisoned_model, input_scores=corner_brightness)


class BadScores(ptk.Defense):
    name = "goal-bad-scores"
    description = "returns one score too few"
    api_version = 2
    goals = ("backdoor",)

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        return ptk.DefenseResult(predictor=ctx.poisoned_model, input_scores=lambda x: torch.zeros(len(x) - 1))


class KnowsTrigger(ptk.Defense):
    name = "goal-knows-trigger"
    description = "declares knows_trigger"
    api_version = 2
    threat = ptk.ThreatModel(knows_trigger=True)

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        return ptk.DefenseResult(predictor=ctx.poisoned_model)


class Plugins(BlobsAndMlp):
    @ptk.hookimpl
    def register_defenses(self, register):
        for d in (CornerFilter(), RejectAll(), BadRejects(), KnowsTrigger(), CornerScores(), BadScores()):
            register(d)


@pytest.fixture
def goal_registry(registry):
    """ptk's built-ins and this file's plugins."""
    reg = registry(Plugins())
    assert not reg.broken
    return reg


config = blobs_config


def test_goals_follow_the_threat_model_unless_declared(goal_registry):
    reg = goal_registry
    goals = {n: defense_goals(reg.get("defense", n).plugin) for n in reg.names("defense")}
    assert goals["influence"] == goals["bilevel"] == ("target",)  # they read the target image
    assert goals["goal-knows-trigger"] == ("target", "backdoor")  # a target attack's trigger reads as None
    assert goals["goal-corner-filter"] == ("backdoor",)  # declared
    for n in ("loss-outliers", "activation-clustering", "ensemble", "bilevel-trusted", "art-spectral-signatures"):
        assert goals[n] == ("target", "backdoor"), n
    why = goal_refusal(reg.get("defense", "influence").plugin, reg.get("attack", "art-backdoor").plugin)
    assert "works from the target image" in why and "'art-backdoor' has the goal 'backdoor'" in why
    assert goal_refusal(reg.get("defense", "influence").plugin, reg.get("attack", "labelflip").plugin) is None


@pytest.mark.parametrize("goals", [(), ("trojan",)])
def test_a_defense_declaring_goals_that_are_not_attack_goals_is_refused(goals):
    class Odd(ptk.Defense):
        name = "odd"
    Odd.goals = goals
    with pytest.raises(TypeError, match="declares goals"):
        check_plugin(Odd(), "defense")


def test_a_named_defense_that_cannot_face_the_attack_is_refused_before_anything_runs(goal_registry):
    reg = goal_registry
    with pytest.raises(UsageError, match="'influence' defends only against 'target' attacks.*drop --defense influence"):
        plan(config("art-backdoor", ["loss-outliers", "influence"]), reg)
    with pytest.raises(UsageError, match="'goal-corner-filter' defends only against 'backdoor' attacks: it declares"):
        plan(config("labelflip", ["goal-corner-filter"]), reg)


def test_defense_all_skips_what_cannot_face_the_attack_and_says_why(goal_registry):
    reg = goal_registry
    p = plan(config("art-backdoor", ["all"]), reg)
    names = [e.name for e in p.defenses]
    assert "influence" not in names and "bilevel" not in names and "loss-outliers" in names
    assert "goal-corner-filter" in names and "goal-knows-trigger" in names
    assert set(p.skipped) == {"influence", "bilevel", "art-roni"}  # art-roni: for its cost (test below)
    p = plan(config("labelflip", ["all"]), reg)
    assert set(p.skipped) == {"goal-corner-filter", "goal-corner-scores", "goal-bad-scores", "art-strip", "art-roni"}
    assert "influence" in [e.name for e in p.defenses]


def test_a_test_time_filter_reports_its_rejections_and_rejected_inputs_do_not_count_as_successes(goal_registry, tmp_path):
    r = run_experiment(config("art-backdoor", ["goal-corner-filter", "goal-reject-all", "goal-bad-rejects"],
                              **{"art-backdoor": {"fraction": "0.3"}}),
                       goal_registry, save=lambda r: None, data_root=tmp_path, use_cache=False)
    poisoned, corner, everything = (model_row(r, n) for n in ("poisoned", "goal-corner-filter", "goal-reject-all"))
    # rejects everything: every clean and every triggered input refused, no success left, target refused
    assert everything["rejected_clean"] == everything["rejected_triggered"] == 1.0
    assert everything["backdoor_asr"] == 0.0 and everything["target_rejected"] and everything["attack_success"] is False
    assert poisoned["backdoor_asr"] > 0 and "rejected_clean" not in poisoned  # the unfiltered model has no such field
    # the corner filter: its shares equal a hand count over the same images
    data = Blobs().load(tmp_path, {})
    x_test = data.x_test
    assert corner["rejected_clean"] == round(stamped_corner(x_test).float().mean().item(), 6)
    assert corner["test_accuracy"] == poisoned["test_accuracy"]  # the filter leaves the classifier as it was
    bad = model_row(r, "goal-bad-rejects")
    assert bad["failed"] and "rejects returned torch.float32" in bad["error"]
    report = markdown(r)
    assert "| rej. clean | rej. trig. |" in report and "refuses to classify" in report
    # the sweep store keeps both shares in their own columns
    store = SweepStore(tmp_path / "store.sqlite")
    store.finish("cell", r, 1.0)
    got = dict(store.db.execute("SELECT name, rejected_clean FROM models WHERE rejected_clean IS NOT NULL").fetchall())
    assert got == {"goal-corner-filter": corner["rejected_clean"], "goal-reject-all": 1.0}


def test_asr_after_a_filter_counts_only_accepted_triggered_images():
    class SaysTwo:
        def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.full((len(x),), 2), 3).float()

    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 1, 1] = torch.tensor([0, 10, 20, 30], dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1])
    trigger = ptk.Trigger(apply=lambda b: b.clone(), target_class=2)
    assert backdoor_asr(SaysTwo(), x, y, trigger) == 1.0
    refuses_bright = lambda b: b[:, 0, 1, 1] >= 20  # noqa: E731
    data = ptk.Dataset("four", x, y, x, y, ["a", "b", "c"])
    target = Target(0, 0, 2, x[:1])
    refused, asr = filtered(SaysTwo(), refuses_bright, data, target, trigger)
    assert asr == 0.5 and refused.rejected_triggered == refused.rejected_clean == 0.5 and not refused.target_rejected


@pytest.mark.slow
def test_defense_all_through_the_cli_writes_the_skips_into_the_results_and_report(ptk, tmp_path):
    out = tmp_path / "run"
    cheap = ["-o", "ensemble.k=2", "-o", "bilevel-trusted.n=10", "-o", "art-strip.n=10",
             "-o", "art-strip.num_samples=2", "--test-subset", "60"]
    ptk("run", "--attack", "art-backdoor", "--defense", "all", "--preset", "quick", "--subset", "60", "--epochs",
        "1", *cheap, "--out", out)
    import json

    r = json.loads((out / "results.json").read_text())
    assert set(r["skipped_defenses"]) == {"influence", "bilevel", "art-roni"}  # art-roni: its declared cost
    assert "one fine-tune per training sample" in r["skipped_defenses"]["art-roni"]
    ran = [m["name"] for m in r["models"]]
    assert "influence" not in ran and "loss-outliers" in ran and "art-spectral-signatures" in ran and "art-strip" in ran
    # bilevel-trusted: its look-ahead loop with 10 trusted clean images as the meta set, one epoch
    trusted = next(m for m in r["models"] if m["name"] == "bilevel-trusted")
    d = trusted["details"]
    assert (d["meta_set"], d["meta_size"], d["epochs"]) == ("trusted", 10, 1)
    assert d["steps"] == -(-r["data"]["train_size"] // 64)  # the quick preset's batch size, 64
    assert d["steps"] == d["steps_weighted"] + d["steps_flat_meta_loss_uniform"] + d["steps_all_harmful_skipped"]
    assert trusted["mean_weight_poison"] is not None and trusted["train_seconds"] > 0
    assert r["plugins"]["bilevel-trusted"]["threat_model"] == {
        "knows_target": False, "trusted_data": True, "uses_poisoned_model": False, "knows_budget": False,
        "knows_trigger": False}
    report = (out / "report.md").read_text()
    assert "skipped by --defense all: influence: defense 'influence' defends only against 'target' attacks" in report
    # a backdoor run charts every model's ASR beside its clean accuracy, and report.md shows the chart
    assert (out / "backdoor_asr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](backdoor_asr.png)" in report
    # a target attack rerun into the same folder leaves no backdoor chart behind
    ptk("run", "--attack", "labelflip", "--defense", "loss-outliers", "--preset", "quick", "--subset", "60",
        "--epochs", "1", "-o", "labelflip.budget=5", "--out", out, "--overwrite")
    assert not (out / "backdoor_asr.png").exists() and "backdoor_asr.png" not in (out / "report.md").read_text()


def test_defense_all_leaves_out_a_defense_that_declares_its_cost_and_says_how_to_run_it(registry):
    from ptk.config import PRESETS, ExperimentConfig, merge
    from ptk.experiment import plan

    reg = registry()
    assert reg.get("defense", "art-roni").plugin.cost == "one fine-tune per training sample"
    p = plan(ExperimentConfig.from_dict(merge(PRESETS["quick"], {"defenses": ["all"]})), reg)
    assert "art-roni" not in [e.name for e in p.defenses] and "loss-outliers" in [e.name for e in p.defenses]
    assert "one fine-tune per training sample" in p.skipped["art-roni"]
    assert "--defense art-roni" in p.skipped["art-roni"]
    named = plan(ExperimentConfig.from_dict(merge(PRESETS["quick"], {"defenses": ["art-roni"]})), reg)
    assert [e.name for e in named.defenses] == ["art-roni"]  # named, it runs


def test_a_detectors_input_scores_are_scored_as_a_filter_auroc_against_a_hand_computation(goal_registry, tmp_path):
    from sklearn.metrics import roc_auc_score

    from ptk.evaluate import triggered_test_images
    from ptk_plugins.art._triggers import art_trigger

    r = run_experiment(config("art-backdoor", ["goal-corner-scores", "goal-bad-scores"],
                              **{"art-backdoor": {"fraction": "0.3"}}),
                       goal_registry, save=lambda r: None, data_root=tmp_path, use_cache=False)
    row, bad = model_row(r, "goal-corner-scores"), model_row(r, "goal-bad-scores")
    data = Blobs().load(tmp_path, {})
    trigger = art_trigger("pattern", data.classes.index(r["attack"]["trigger"]["target_class"]))
    stamped = triggered_test_images(data.x_test, data.y_test, trigger)  # the same images ptk scored
    scores = torch.cat([corner_brightness(data.x_test), corner_brightness(stamped)])
    labels = [0] * len(data.x_test) + [1] * len(stamped)
    assert row["filter_auroc"] == pytest.approx(roc_auc_score(labels, scores.double().numpy()), abs=1e-6)
    assert row["filter_auroc"] > 0.5  # the pattern brightens the corner: better than chance
    assert "rejected_clean" not in row  # scores alone refuse nothing
    assert bad["failed"] and "input_scores returned torch.float32" in bad["error"]


def test_a_pipeline_runs_a_filter_on_what_a_sanitizer_produced(goal_registry, tmp_path):
    r = run_experiment(config("art-backdoor", ["loss-outliers", "goal-corner-filter", "loss-outliers+goal-corner-filter",
                                               "goal-corner-filter+loss-outliers"],
                              **{"art-backdoor": {"fraction": "0.3"}}),
                       goal_registry, save=lambda r: None, data_root=tmp_path, use_cache=False)
    alone, corner = model_row(r, "loss-outliers"), model_row(r, "goal-corner-filter")
    both = model_row(r, "loss-outliers+goal-corner-filter")
    # stage 1 is loss-outliers as it runs alone (same data, seed, recipe): the same removal and model ...
    assert both["removed_indices"] == alone["removed_indices"]
    assert both["test_accuracy"] == alone["test_accuracy"]  # the filter keeps stage 1's model as its classifier
    assert both["suspicion_auroc"] == alone["suspicion_auroc"]
    # ... and stage 2 filters exactly as it does alone (its rule reads only the inputs)
    assert both["rejected_clean"] == corner["rejected_clean"]
    assert both["rejected_triggered"] == corner["rejected_triggered"]
    assert both["threat_model"] == alone["threat_model"]  # the union of the two stages' (the filter reads nothing)
    assert [s["stage"] for s in both["details"]["stages"]] == ["loss-outliers", "goal-corner-filter"]
    assert r["plugins"]["loss-outliers"]["kind"] == "defense" and "loss-outliers+goal-corner-filter" not in r["plugins"]
    wrong = model_row(r, "goal-corner-filter+loss-outliers")
    assert wrong["failed"] and "only the last stage" in wrong["error"]


def test_a_pipeline_stage_is_checked_like_a_defense(goal_registry):
    with pytest.raises(UsageError, match="no defense 'loss-outlier'|loss-outlier"):
        plan(config("art-backdoor", ["loss-outlier+goal-corner-filter"]), goal_registry)
    with pytest.raises(UsageError, match="'influence\\+goal-corner-filter' defends only against"):
        plan(config("art-backdoor", ["influence+goal-corner-filter"]), goal_registry)  # influence: target only
    with pytest.raises(UsageError, match="loss-outliers.nope"):
        plan(config("labelflip", ["loss-outliers+ensemble"], **{"loss-outliers": {"nope": "1"}}), goal_registry)
