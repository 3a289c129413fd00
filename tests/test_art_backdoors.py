"""The clean-label ART backdoors: ``art-clean-label-backdoor`` (ART's PoisoningAttackCleanLabelBackdoor) and
``art-sleeper-agent`` (ART's SleeperAgentAttack) against ART called directly, their checks and triggers, and
both through the CLI on the quick preset."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ptk
from ptk.cache import tensor_digest
from ptk.options import resolve_options
from ptk_plugins.art import clean_label_backdoor as clb
from ptk_plugins.art import sleeper_agent as sa
from ptk_plugins.art._bridge import art_classifier, from_art_images
from ptk_plugins.art._triggers import apply_trigger, stamp
from ptk_plugins.digits import Digits

from .fixtures import load_results
from .plugins.blobs import Blobs, TinyNet  # three classes of 8x8 noise (20 training images each), an MLP

#: Sleeper Agent on 800 digits with every "7" perturbed, the patch crafted where ptk stamps it. Measured on the
#: 2-core machine (seed 0): clean ASR 3.2%, poisoned 33.8% (seeds 1 and 2: 9.6% -> 12.1%, 0% -> 6.9%).
SLEEPER = ["--preset", "quick", "--subset", "800", "--epochs", "5", "--lr", "3e-3", "-o", "resnet18.width=8",
           "-o", "art-sleeper-agent.percent_poison=1.0", "-o", "art-sleeper-agent.patching=fixed"]
#: The clean-label backdoor on the same data and recipe (the clean model comes from the session's cache).
CLEAN_LABEL = ["--preset", "quick", "--subset", "800", "--epochs", "5", "--lr", "3e-3", "-o", "resnet18.width=8",
               "-o", "art-clean-label-backdoor.pp_poison=0.9"]



def tiny_data(n: int = 60, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    return x, torch.arange(n) % 3


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(3, (3, 8, 8)).eval()


CLB_OPTIONS = {"trigger": "pattern", "pp_poison": 0.5, "norm": "inf", "eps": 0.1, "eps_step": 0.05, "max_iter": 3,
               "target_class": ""}


# --- art-clean-label-backdoor ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pattern", "pixel"])
def test_clean_label_backdoor_poisons_exactly_what_art_does(kind):
    from art.attacks.poisoning import PoisoningAttackBackdoor, PoisoningAttackCleanLabelBackdoor
    from art.attacks.poisoning.perturbations import add_pattern_bd, add_single_bd

    x, y = tiny_data()
    net = tiny_net()
    options = {**CLB_OPTIONS, "trigger": kind}
    rng_before = np.random.get_state()
    px, chosen, draws = clb.clean_label_backdoor(art_classifier(net, (3, 8, 8), 3, torch.device("cpu")), x, y, 1,
                                                 3, options, seed=4)
    after = np.random.get_state()
    assert after[0] == rng_before[0] and np.array_equal(after[1], rng_before[1]) and after[2:] == rng_before[2:]

    # ART itself on the whole training set (floats in [0, 1], channels last for its perturbation, one-hot labels)
    def perturb(batch):
        hwc = batch.transpose(0, 2, 3, 1)
        out = add_pattern_bd(hwc, pixel_value=1.0) if kind == "pattern" else add_single_bd(hwc, pixel_value=1.0)
        return out.transpose(0, 3, 1, 2)

    target = np.eye(3, dtype=np.float32)[1]
    attack = PoisoningAttackCleanLabelBackdoor(PoisoningAttackBackdoor(perturb),
                                               art_classifier(net, (3, 8, 8), 3, torch.device("cpu")), target,
                                               pp_poison=0.5, eps=0.1, eps_step=0.05, max_iter=3)
    xf = x.numpy().astype(np.float32) / 255
    np.random.seed(4)
    art_x, art_y = attack.poison(xf, y=np.eye(3, dtype=np.float32)[y.numpy()])
    np.testing.assert_array_equal(px.numpy(), from_art_images(art_x))  # the same images, rounded to uint8
    np.testing.assert_array_equal(art_y.argmax(1), y.numpy())  # ART keeps the labels
    # the poison indices are exactly the images ART changed: its with-replacement draw among the class-1 images
    art_changed = np.flatnonzero(np.any(art_x != xf, axis=(1, 2, 3)))
    assert chosen.tolist() == art_changed.tolist()
    np.random.seed(4)
    drawn = np.random.choice(np.flatnonzero(y.numpy() == 1), int(0.5 * 20))
    assert draws == len(drawn) == 10 and chosen.tolist() == sorted(set(drawn.tolist()))
    assert len(chosen) < draws  # ART draws with replacement: repeats poison one image once
    assert (y[chosen] == 1).all()
    # the trigger ptk measures ASR with is the one in the poisoned images; elsewhere PGD stayed within eps
    assert torch.equal(apply_trigger(px[chosen], kind), px[chosen])
    mask = torch.from_numpy(stamp(np.zeros((1, 3, 8, 8), np.uint8), kind) == 0)
    diff = (px[chosen].int() - x[chosen].int()).abs()
    assert 0 < diff[:, mask[0]].max() <= round(0.1 * 255) + 1
    # seeded: the same seed gives the same poison, another seed another one
    again = clb.clean_label_backdoor(art_classifier(net, (3, 8, 8), 3, torch.device("cpu")), x, y, 1, 3, options, 4)
    assert torch.equal(again[0], px) and torch.equal(again[1], chosen)
    other = clb.clean_label_backdoor(art_classifier(net, (3, 8, 8), 3, torch.device("cpu")), x, y, 1, 3, options, 5)
    assert not torch.equal(other[1], chosen)


def test_clean_label_backdoor_checks_refuse_impossible_settings(tmp_path):
    data = Blobs().load(tmp_path, {})  # classes a, b, c; 20 training images each
    attack = clb.ArtCleanLabelBackdoor()
    options = resolve_options(attack.name, attack.options, {})
    assert options["pp_poison"] == 0.33 and options["max_iter"] == 10 and options["norm"] == "inf"
    attack.check(data, 0, 1, options)  # int(0.33 x 20) = 6 draws
    with pytest.raises(ptk.UsageError, match=r"art-clean-label-backdoor.pp_poison=0.04 .* draws none .*raise -o"):
        attack.check(data, 0, 1, {**options, "pp_poison": 0.04})
    with pytest.raises(ptk.UsageError, match="art-clean-label-backdoor.target_class='z' is neither"):
        attack.check(data, 0, 1, {**options, "target_class": "z"})
    small = ptk.Dataset("s", data.x_train[:, :, :3, :3], data.y_train, data.x_test[:, :, :3, :3], data.y_test,
                        data.classes)
    with pytest.raises(ptk.UsageError, match="at least 4 x 4 pixels"):
        attack.check(small, 0, 1, options)
    for key, bad, error in [("pp_poison", "1", "ART refuses 0 and 1"), ("pp_poison", "0", "ART refuses 0 and 1"),
                            ("eps", "2", "must be in \\[0, 1\\]"), ("eps_step", "0", "must be positive"),
                            ("norm", "1", "not one of inf, 2")]:
        with pytest.raises(ptk.UsageError, match=error):
            resolve_options(attack.name, attack.options, {key: bad})


def test_clean_label_backdoor_records_the_norm_its_pgd_ran_with(tmp_path):
    """results.json's ``pgd.norm`` is the ``norm`` option (it once said "inf" whatever the user chose)."""
    data = Blobs().load(tmp_path, {})
    attack = clb.ArtCleanLabelBackdoor()
    for norm in ("2", "inf"):
        options = resolve_options(attack.name, attack.options, {"norm": norm, "max_iter": "1"})
        ctx = SimpleNamespace(data=data, target=SimpleNamespace(target_class=1), clean_model=tiny_net(),
                              device=torch.device("cpu"), seed=0)
        assert attack.poison(ctx, options).details["pgd"]["norm"] == norm


# --- art-sleeper-agent --------------------------------------------------------------------------------------------


SA_OPTIONS = {"percent_poison": 0.5, "epsilon": 0.1, "max_trials": 2, "max_epochs": 4, "batch_size": 4,
              "patch_size": 3, "patching": "random", "selection": "random", "triggers": 5, "model_retrain": False,
              "retraining_factor": 1, "model_retraining_epoch": 1, "source_class": "", "target_class": ""}


@pytest.mark.parametrize("retrain", [False, True])
def test_sleeper_agent_poisons_exactly_what_art_does(retrain):
    import random

    from art.attacks.poisoning import SleeperAgentAttack

    x, y = tiny_data()
    options = {**SA_OPTIONS, **({"model_retrain": True, "retraining_factor": 2, "max_trials": 1} if retrain else {})}
    net = tiny_net()
    states = np.random.get_state()[1].copy(), random.getstate(), torch.random.get_rng_state()
    px, chosen = sa.sleeper_agent(net, x, y, 0, 1, 3, options, seed=2, device=torch.device("cpu"))
    assert np.array_equal(np.random.get_state()[1], states[0]) and random.getstate() == states[1]
    assert torch.equal(torch.random.get_rng_state(), states[2])

    # ART itself on the whole training set, with the same trigger images, patch and seeds
    net = tiny_net()
    eye = np.eye(3, dtype=np.float32)
    xf, yf = x.numpy().astype(np.float32) / 255, eye[y.numpy()]
    members = np.flatnonzero(y.numpy() == 1)
    x_trigger = sa.trigger_images(x, y, 0, 5, seed=2).numpy().astype(np.float32) / 255
    attack = SleeperAgentAttack(
        sa.sleeper_classifier(net, (3, 8, 8), 3, torch.device("cpu")), percent_poison=0.5,
        patch=sa.checkerboard(3, 3).astype(np.float32) / 255, indices_target=members, epsilon=0.1,
        max_trials=options["max_trials"], max_epochs=4, learning_rate_schedule=([1e-1, 1e-2, 1e-3, 1e-4], [2, 2, 3, 4]),
        batch_size=4, verbose=0, model_retrain=retrain, retraining_factor=options["retraining_factor"],
        class_source=0, class_target=1, retrain_batch_size=4)
    np.random.seed(2)
    random.seed(2)
    torch.manual_seed(2)
    art_x, art_y = attack.poison(x_trigger, eye[[1] * 5], xf, yf, xf, yf)
    np.testing.assert_array_equal(px.numpy(), np.clip(np.rint(art_x * 255), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(art_y, yf)
    assert chosen.tolist() == sorted(members[attack.get_poison_indices()].tolist())
    assert chosen.tolist() == np.flatnonzero(np.any(art_x != xf, axis=(1, 2, 3))).tolist()
    assert len(chosen) == int(0.5 * 20) and (y[chosen] == 1).all()
    assert (px[chosen].int() - x[chosen].int()).abs().max() <= round(0.1 * 255) + 1  # within epsilon, rounded
    # seeded: the same seed gives the same poison
    again = sa.sleeper_agent(tiny_net(), x, y, 0, 1, 3, options, seed=2, device=torch.device("cpu"))
    assert torch.equal(again[0], px) and torch.equal(again[1], chosen)


def test_sleeper_agent_learning_rate_schedule_is_arts_scaled():
    assert sa.schedule(250) == ([1e-1, 1e-2, 1e-3, 1e-4], [100, 150, 200, 220])
    assert sa.schedule(30) == ([1e-1, 1e-2, 1e-3, 1e-4], [12, 18, 24, 26])


def test_sleeper_agent_patch_is_the_one_art_stamps_and_leaves_the_input_alone():
    from art.attacks.poisoning import SleeperAgentAttack

    x, _ = tiny_data(6)
    before = x.clone()
    stamped = sa.apply_patch(x, sa.checkerboard(3, 3))
    assert torch.equal(x, before) and stamped.dtype == torch.uint8 and stamped.shape == x.shape
    assert torch.equal(stamped[:, :, :5], x[:, :, :5]) and torch.equal(stamped[:, :, :, :5], x[:, :, :, :5])
    assert stamped[0, 0, -3:, -3:].tolist() == [[255, 0, 255], [0, 255, 0], [255, 0, 255]]
    # ART's own "fixed" placement on [0, 1] floats puts the same pixels there
    art = SleeperAgentAttack(sa.sleeper_classifier(tiny_net(), (3, 8, 8), 3, torch.device("cpu")), 0.5,
                             sa.checkerboard(3, 3).astype(np.float32) / 255, np.arange(3), patching_strategy="fixed")
    art_stamped = art._apply_trigger_patch(x.numpy().astype(np.float32) / 255)
    np.testing.assert_array_equal(np.rint(art_stamped * 255).astype(np.uint8), stamped.numpy())


def test_clean_label_trigger_leaves_the_input_alone():
    x, _ = tiny_data(6)
    before = x.clone()
    stamped = apply_trigger(x, "pattern")
    assert torch.equal(x, before) and stamped.dtype == torch.uint8 and not torch.equal(stamped, x)


def test_sleeper_agent_checks_refuse_impossible_settings(tmp_path):
    data = Blobs().load(tmp_path, {})  # classes a, b, c; 20 training images each; default source a, target b
    attack = sa.ArtSleeperAgent()
    options = resolve_options(attack.name, attack.options, {})
    assert (options["max_trials"], options["max_epochs"], options["patching"]) == (1, 30, "random")
    ok = {**options, "patch_size": 4}
    attack.check(data, 0, 1, ok)
    refusals = [
        ({"source_class": "b"}, "source and target class are both 'b'"),
        ({"percent_poison": 0.04}, r"art-sleeper-agent.percent_poison=0.04 of the 20 .* perturbs none"),
        ({"patch_size": 9}, r"patch_size=9 is larger than the 8 x 8 images; pick -o art-sleeper-agent.patch_size=8"),
        ({"model_retrain": True, "max_trials": 1}, "retraining_factor=1 retrains nothing"),
        ({"model_retrain": True, "max_trials": 2, "retraining_factor": 2},
         "use -o art-sleeper-agent.max_trials=1 with model_retrain"),
        ({"model_retrain": True, "max_trials": 1, "max_epochs": 2, "retraining_factor": 3},
         "retraining_factor=3 leaves ART less than one epoch"),
        ({"target_class": "9"}, "art-sleeper-agent.target_class='9' is neither"),
        ({"source_class": "q"}, "art-sleeper-agent.source_class='q' is neither"),
    ]
    for change, error in refusals:
        with pytest.raises(ptk.UsageError, match=error):
            attack.check(data, 0, 1, {**ok, **change})
    no_source = ptk.Dataset("s", data.x_train[data.y_train != 0], data.y_train[data.y_train != 0], data.x_test,
                            data.y_test, data.classes)
    with pytest.raises(ptk.UsageError, match="no training image of the source class 'a'"):
        attack.check(no_source, 0, 1, ok)
    for key, bad, error in [("percent_poison", "0", "must be in \\(0, 1\\]"), ("epsilon", "1.5", "must be in"),
                            ("selection", "gradient", "not one of random, max-norm"), ("max_epochs", "0", "positive")]:
        with pytest.raises(ptk.UsageError, match=error):
            resolve_options(attack.name, attack.options, {key: bad})


# --- the ART 1.20 behaviour the wrappers work around (a failure here means ART changed: revisit the workaround) ---


def test_art_clean_label_backdoor_crashes_on_zero_draws_which_check_refuses():
    import functools

    from art.attacks.poisoning import PoisoningAttackBackdoor, PoisoningAttackCleanLabelBackdoor

    x, y = tiny_data()
    attack = PoisoningAttackCleanLabelBackdoor(
        PoisoningAttackBackdoor(functools.partial(stamp, trigger="pattern", pixel_value=1.0)),
        art_classifier(tiny_net(), (3, 8, 8), 3, torch.device("cpu")), np.eye(3, dtype=np.float32)[1], pp_poison=0.01)
    with pytest.raises(ValueError, match="need at least one array to concatenate"):  # int(0.01 x 20) = 0 draws
        attack.poison(x.numpy().astype(np.float32) / 255, np.eye(3, dtype=np.float32)[y.numpy()])


def test_art_sleeper_agent_refuses_per_channel_standardisation_hence_the_identity():
    from art.attacks.poisoning import SleeperAgentAttack
    from art.estimators.classification import PyTorchClassifier

    net = tiny_net()
    mean, std = np.full((3, 1, 1), 0.5, np.float32), np.full((3, 1, 1), 0.25, np.float32)
    per_channel = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (3, 8, 8), 3, clip_values=(0.0, 1.0),
                                    preprocessing=(mean, std))
    with pytest.raises(ValueError, match="truth value of an array"):  # its epsilon becomes an array
        SleeperAgentAttack(per_channel, 0.5, np.ones((3, 2, 2), np.float32), np.arange(3))
    SleeperAgentAttack(sa.sleeper_classifier(net, (3, 8, 8), 3, torch.device("cpu")), 0.5,
                       np.ones((3, 2, 2), np.float32), np.arange(3))  # the identity is accepted


def test_art_sleeper_agent_retraining_miscounts_epochs_after_the_first_trial(monkeypatch):
    """What check() refuses: with model_retrain ART grows max_epochs in place, so a second trial runs an empty
    round (8 to 6) and then 6 epochs instead of 4 + 4; retraining_factor=1 retrains nothing."""
    from art.attacks.poisoning import SleeperAgentAttack

    rounds, retrainings = [], []
    optimise, retrain = SleeperAgentAttack._poison__pytorch, SleeperAgentAttack._model_retraining
    monkeypatch.setattr(SleeperAgentAttack, "_poison__pytorch",
                        lambda self, *a: (rounds.append((self.initial_epoch, self.max_epochs)), optimise(self, *a))[1])
    monkeypatch.setattr(SleeperAgentAttack, "_model_retraining",
                        lambda self, *a: (retrainings.append(1), retrain(self, *a))[1])
    x, y = tiny_data()
    for factor, trials in [(2, 2), (1, 1)]:
        rounds.clear()
        retrainings.clear()
        options = {**SA_OPTIONS, "max_epochs": 8, "max_trials": trials, "model_retrain": True,
                   "retraining_factor": factor}
        sa.sleeper_agent(tiny_net(), x, y, 0, 1, 3, options, seed=0, device=torch.device("cpu"))
        if factor == 2:
            assert rounds == [(0, 4), (4, 8), (8, 6), (6, 12)] and len(retrainings) == 2
        else:
            assert rounds == [(0, 8)] and retrainings == []


# --- through the CLI on the quick preset --------------------------------------------------------------------------


def quick_labels(tmp_path, seed: int = 0) -> torch.Tensor:
    return Digits().load(tmp_path, {"test_fraction": 0.25}).subset(800, None, seed=seed).y_train


@pytest.mark.slow
def test_sleeper_agent_backdoor_takes_on_the_quick_preset(ptk, tmp_path):
    out = tmp_path / "sleeper"
    ptk("run", "--attack", "art-sleeper-agent", "--defense", "none", *SLEEPER, "--out", out)
    r = load_results(out)
    clean, poisoned = r["models"]
    assert poisoned["backdoor_asr"] > clean["backdoor_asr"]  # the backdoor took
    a = r["attack"]
    assert a["goal"] == "backdoor" and a["art_version"] == __import__("art").__version__
    assert (a["backdoor_source_class"], a["backdoor_target_class"]) == ("1", "7")
    y = quick_labels(tmp_path)
    assert a["poisoned_labels_sha256"] == tensor_digest(y)  # clean labels
    assert a["poisoned"] == a["target_class_size"] == int((y == 7).sum()) == len(a["poison_indices"])
    assert (y[a["poison_indices"]] == 7).all()
    assert a["trigger"] == {"target_class": "7", "description": "8x8 checkerboard patch, bottom-right"}


@pytest.mark.slow
def test_clean_label_backdoor_end_to_end(ptk, tmp_path):
    out = tmp_path / "clean-label"
    ptk("run", "--attack", "art-clean-label-backdoor", "--defense", "none", *CLEAN_LABEL, "--out", out)
    r = load_results(out)
    assert [m["name"] for m in r["models"]] == ["clean", "poisoned"]
    assert all(isinstance(m["backdoor_asr"], float) for m in r["models"])
    a = r["attack"]
    y = quick_labels(tmp_path)
    assert a["poisoned_labels_sha256"] == tensor_digest(y)  # clean labels
    assert a["draws"] == int(0.9 * int((y == 7).sum())) and 0 < a["poisoned"] == len(a["poison_indices"]) < a["draws"]
    assert (y[a["poison_indices"]] == 7).all()
    assert a["pgd"] == {"norm": "inf", "eps": 0.063, "eps_step": 0.016, "max_iter": 10, "num_random_init": 0}
    assert "add_pattern_bd" in a["trigger"]["description"]
