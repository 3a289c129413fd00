"""Backdoor attacks as a second kind of goal (plugin API version 2): the trigger, the attack success rate
measured for every model, ``knows_trigger``, and the ART-backed ``art-backdoor`` and
``art-spectral-signatures`` plugins against ART called directly."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ptk
from ptk.evaluate import backdoor_asr
from ptk.experiment import run_experiment
from ptk.sweepstore import SweepStore
from ptk_plugins.art import backdoor as art_backdoor
from ptk_plugins.art import spectral as art_spectral
from ptk_plugins.art._bridge import art_classifier
from ptk_plugins.art._triggers import apply_trigger

from .fixtures import BACKDOOR, load_results, model_row
from .plugins.blobs import Blobs, BlobsAndMlp, TinyNet, blobs_config  # three classes of 8x8 noise (20 training images each), an MLP




# --- (e) the attack success rate on a hand-made predictor ---------------------------------------------------


class CornerReader:
    """Predicts class 2 when the bottom-right pixel is 255 and the top-left one at least 100; class 0 else."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        to_target = (x[:, 0, -1, -1] == 255) & (x[:, 0, 0, 0] >= 100)
        return nn.functional.one_hot(torch.where(to_target, 2, 0), 3).float()


def corner(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[:, :, -1, -1] = 255
    return out


def test_backdoor_asr_is_the_share_of_triggered_non_target_images_sent_to_the_target():
    x = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor([50, 150, 200, 20, 250, 180], dtype=torch.uint8)
    y = torch.tensor([0, 1, 1, 0, 2, 2])  # the two class-2 images do not count, though the predictor sends them to 2
    trigger = ptk.Trigger(apply=corner, target_class=2, description="white corner")
    assert backdoor_asr(CornerReader(), x, y, trigger) == 0.5  # 150 and 200 go to 2; 50 and 20 do not
    assert backdoor_asr(CornerReader(), x, y, ptk.Trigger(lambda b: b.clone(), 2)) == 0.0  # no trigger, no backdoor
    assert backdoor_asr(CornerReader(), x, y, ptk.Trigger(corner, 0)) == 0.0  # the predictor sends none to 0
    assert backdoor_asr(CornerReader(), x[4:], y[4:], trigger) is None  # no image outside the target class
    with pytest.raises(ValueError, match="expected uint8"):
        backdoor_asr(CornerReader(), x, y, ptk.Trigger(lambda b: b.float(), 2))


# --- an in-process run on small synthetic data: ASR on every row, knows_trigger enforced (c) ---------------


class PeeksAtTrigger(ptk.Defense):
    """Reads ctx.trigger without declaring knows_trigger: the context must refuse."""

    name = "bd-peeks"
    description = "reads the trigger it says it does not know"
    api_version = 2

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        ctx.trigger
        return ptk.DefenseResult(predictor=ctx.poisoned_model)


SEEN: list[ptk.Trigger | None] = []


class KnowsTrigger(ptk.Defense):
    """Declares knows_trigger: gets the attack's trigger."""

    name = "bd-knows"
    description = "reads the trigger it declares it knows"
    api_version = 2
    threat = ptk.ThreatModel(knows_trigger=True)

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        SEEN.append(ctx.trigger)
        return ptk.DefenseResult(predictor=ctx.poisoned_model)


class V1Flip(ptk.Attack):
    """A plugin written for API version 1: no goal, no trigger."""

    name = "bd-v1-flip"
    description = "relabels the first two source images"
    api_version = 1

    def poison(self, ctx: ptk.AttackContext, options: dict[str, Any]) -> ptk.Poisoning:
        chosen = (ctx.data.y_train == ctx.target.source_class).nonzero().squeeze(1)[:2]
        y = ctx.data.y_train.clone()
        y[chosen] = ctx.target.target_class
        return ptk.Poisoning(y_train=y, poison_indices=chosen)


class NoTrigger(V1Flip):
    name = "bd-no-trigger"
    api_version = 2
    goal = "backdoor"


class Plugins(BlobsAndMlp):
    @ptk.hookimpl
    def register_attacks(self, register):
        register(V1Flip())
        register(NoTrigger())

    @ptk.hookimpl
    def register_defenses(self, register):
        register(PeeksAtTrigger())
        register(KnowsTrigger())


@pytest.fixture
def blobs_run(registry, tmp_path):
    """``blobs_run(attack, defenses, **options)``: an in-process run on api-blobs with this file's plugins."""
    reg = registry(Plugins())
    assert not reg.broken

    def run(attack: str, defenses: list[str], **options: Any) -> dict:
        return run_experiment(blobs_config(attack, defenses, **options), reg, save=lambda r: None,
                              data_root=tmp_path, use_cache=False)

    return run


def test_defense_reading_the_trigger_without_knows_trigger_violates_its_threat_model(blobs_run):
    SEEN.clear()
    r = blobs_run("art-backdoor", ["bd-peeks", "bd-knows"], **{"art-backdoor": {"fraction": "0.3"}})
    peeks, knows = model_row(r, "bd-peeks"), model_row(r, "bd-knows")
    assert peeks["failed"] and peeks["error"].startswith("ThreatModelViolation: defense 'bd-peeks' read the backdoor "
                                                         "trigger but its threat model says knows_trigger=False")
    assert not knows.get("failed") and knows["threat_model"].endswith("knows the trigger, poison budget unknown")
    (trigger,) = SEEN
    assert trigger.target_class == 1 and "add_pattern_bd" in trigger.description  # blobs' default target "b"
    # every model that ran has its ASR; the attack's record says what the trigger is
    assert all("backdoor_asr" in m for m in r["models"] if not m.get("failed"))
    assert r["attack"]["goal"] == "backdoor"
    assert r["attack"]["trigger"] == {"target_class": "b", "description": trigger.description}
    assert r["attack"]["poisoned"] == len(r["attack"]["poison_indices"]) == round(0.3 * 40)


def test_a_target_goal_attack_has_no_asr_and_defenses_knowing_the_trigger_get_none(blobs_run):
    SEEN.clear()
    r = blobs_run("labelflip", ["bd-knows"], labelflip={"budget": "3"})
    assert r["status"] == "complete" and r["attack"]["goal"] == "target" and "trigger" not in r["attack"]
    assert not any("backdoor_asr" in m for m in r["models"])
    assert SEEN == [None]


# --- (a) end to end through the CLI ------------------------------------------------------------------------


@pytest.mark.slow
def test_art_backdoor_and_art_spectral_signatures_end_to_end(ptk, tmp_path):
    out = tmp_path / "run"
    ptk("run", "--attack", "art-backdoor", "--defense", "art-spectral-signatures", *BACKDOOR, "--out", out)
    r = load_results(out)
    assert r["status"] == "complete"
    assert [m["name"] for m in r["models"]] == ["clean", "poisoned", "art-spectral-signatures"]
    assert all(isinstance(m["backdoor_asr"], float) for m in r["models"])
    clean, poisoned, defended = r["models"]
    assert poisoned["backdoor_asr"] > clean["backdoor_asr"]  # the backdoor took
    assert r["attack"]["art_version"] == r["models"][2]["details"]["art_version"] == __import__("art").__version__
    assert r["attack"]["goal"] == "backdoor" and r["attack"]["backdoor_target_class"] == "7"
    assert defended["removed_count"] == defended["details"]["flagged"] > 0
    assert 0 <= defended["suspicion_auroc"] <= 1
    assert defended["threat_model"] == "target unknown, no trusted data, uses the poisoned model, poison budget unknown"
    report = (out / "report.md").read_text()
    assert "| success | ASR |" in report and "backdoor trigger: art add_pattern_bd" in report
    # the sweep store keeps the ASR in its own column, and the row JSON once
    store = SweepStore(tmp_path / "store.sqlite")
    store.finish("cell", r, 1.0)
    con = sqlite3.connect(tmp_path / "store.sqlite")
    asr = dict(con.execute("SELECT name, backdoor_asr FROM models"))
    assert asr == {m["name"]: m["backdoor_asr"] for m in r["models"]}


def test_plugins_command_shows_the_goal_of_attacks(ptk):
    listed = ptk("plugins").output
    assert "goal: backdoor" in listed and "goal: target" in listed


def test_api_version_2_and_version_1_plugins_still_run(blobs_run):
    assert ptk.API_VERSION == 2 and ptk.SUPPORTED_API_VERSIONS == (1, 2)
    r = blobs_run("bd-v1-flip", ["none"])
    assert r["status"] == "complete" and r["attack"]["goal"] == "target"
    assert len(r["attack"]["poison_indices"]) == 2


def test_backdoor_attack_without_a_trigger_is_its_bug(blobs_run):
    with pytest.raises(ptk.PluginError, match="its goal is 'backdoor' but it returned no Trigger"):
        blobs_run("bd-no-trigger", ["none"])


def test_store_from_before_backdoor_asr_gains_the_column(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE cells (cell_id TEXT PRIMARY KEY, config TEXT NOT NULL, grid_values TEXT NOT NULL, "
                      "status TEXT NOT NULL);"  # a store from before backdoor_asr: both of ptk's tables
                      "CREATE TABLE models (cell_id TEXT NOT NULL, name TEXT NOT NULL, row TEXT NOT NULL, "
                      "PRIMARY KEY (cell_id, name));")
    con.close()
    SweepStore(db).close()
    con = sqlite3.connect(db)
    assert "backdoor_asr" in {row[1] for row in con.execute("PRAGMA table_info(models)")}


# --- (b) the wrappers agree with ART called directly ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["pattern", "pixel"])
def test_art_backdoor_poisons_exactly_what_art_does(kind):
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.attacks.poisoning.perturbations import add_pattern_bd, add_single_bd

    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 200, (40, 3, 12, 10), generator=gen, dtype=torch.uint8)
    y = torch.arange(40) % 4
    px, py, chosen = art_backdoor.backdoor(x, y, 2, 0.25, kind, seed=5)

    # the poison: a seeded 25% of the 30 images not of class 2, the same again for the same seed only
    assert len(chosen) == round(0.25 * 30) and not (y[chosen] == 2).any()
    assert torch.equal(chosen, art_backdoor.choose_poison(y, 2, 0.25, 5))
    assert not torch.equal(chosen, art_backdoor.choose_poison(y, 2, 0.25, 6))
    # ART itself, on channels-last images with a uint8 pixel value
    perturb = {"pattern": add_pattern_bd, "pixel": add_single_bd}[kind]
    art_x, art_y = PoisoningAttackBackdoor(functools.partial(perturb, pixel_value=255)).poison(
        x[chosen].numpy().transpose(0, 2, 3, 1), y=np.full(len(chosen), 2))
    np.testing.assert_array_equal(px[chosen].numpy(), art_x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(py[chosen].numpy(), art_y)
    others = torch.ones(40, dtype=torch.bool)
    others[chosen] = False
    assert torch.equal(px[others], x[others]) and torch.equal(py[others], y[others])
    assert px.dtype == torch.uint8 and not torch.equal(px[chosen], x[chosen])
    # the trigger ptk measures ASR with is the same stamp
    assert torch.equal(apply_trigger(x[chosen], kind), px[chosen])


def test_art_spectral_signatures_flags_exactly_what_art_does():
    from art.defences.detector.poison import SpectralSignatureDefense

    torch.manual_seed(0)
    net = TinyNet(3, (3, 8, 8)).eval()
    rng = np.random.default_rng(0)
    x = rng.random((90, 3, 8, 8), dtype=np.float32)
    y = np.arange(90) % 3
    options = {"expected_pp_poison": 0.2, "eps_multiplier": 1.5, "batch_size": 32}
    flags, scores = art_spectral.spectral_flags(art_classifier(net, (3, 8, 8), 3, torch.device("cpu")), x, y, 3,
                                                options)
    classifier = art_classifier(net, (3, 8, 8), 3, torch.device("cpu"))
    # ART sees the penultimate layer, not the logits
    acts = classifier.get_activations(x, layer=len(classifier.layer_names) - 1, batch_size=32)
    np.testing.assert_allclose(acts, net.features(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
    report, is_clean = SpectralSignatureDefense(classifier, x, y, **options).detect_poison()
    np.testing.assert_array_equal(flags, np.asarray(is_clean) == 0)
    assert sorted(report) == np.flatnonzero(flags).tolist()
    for c in range(3):  # within a class, every flagged sample scores above every kept one
        members = y == c
        assert scores[members & flags].min() > scores[members & ~flags].max()


def test_art_backdoor_target_class_and_fraction_are_checked_before_training(tmp_path):
    data = Blobs().load(tmp_path, {})  # classes a, b, c; 20 training images each
    assert [art_backdoor.class_option(data, v, 1) for v in ("", "c", "0")] == [1, 2, 0]
    for bad in ("x", "3", "-1"):
        with pytest.raises(ptk.UsageError, match="neither a class name nor an index 0..2"):
            art_backdoor.class_option(data, bad, 1)
    attack = art_backdoor.ArtBackdoor()
    attack.check(data, 0, 1, {"target_class": "", "fraction": 0.05, "trigger": "pattern"})  # 2 of 40
    with pytest.raises(ptk.UsageError, match="poisons none"):
        attack.check(data, 0, 1, {"target_class": "", "fraction": 0.01, "trigger": "pattern"})
