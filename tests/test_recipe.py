"""The recipe as data: every number recorded and overridable, the schedule and augmentation it names, a cache
key that sees the trainer, and pretrained weights from a file (no download in tests)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ptk.augment import crop_flip, cutout, draw_crop_flip
from ptk.errors import UsageError
from ptk.network import Network, channel_stats
from ptk.recipe import FIELDS, RECIPES, Recipe, lr_factor, named_recipe
from ptk.train import epoch_batches, make_optimizer, train_model
from ptk_plugins.resnet import ResNet18, hub_file

from .fixtures import load_results

#: 120 digits, width 4, one epoch: a run of two models in a few seconds.
BASE = ["--preset", "quick", "--subset", "120", "--test-subset", "60", "--epochs", "1", "-o", "labelflip.budget=5",
        "--defense", "none"]
SMALL = [*BASE, "-o", "resnet18.width=4"]


def test_every_recipe_field_has_a_reason_and_every_named_recipe_is_valid():
    assert set(FIELDS) == {f.name for f in fields(Recipe)} - {"name"}
    assert all(spec.why for spec in FIELDS.values())
    for name in RECIPES:
        assert named_recipe(name).name == name
    study = named_recipe("study")  # the seed's, exactly
    assert (study.optimizer, study.lr, study.batch_size, study.epochs, study.schedule) == ("adam", 1e-4, 128, 10,
                                                                                           "constant")


def test_run_records_the_whole_recipe_and_an_override(ptk, tmp_path):
    ptk("run", *SMALL, "--recipe", "fast", "-o", "recipe.momentum=0.85", "-o", "recipe.nesterov=false",
        "--out", tmp_path / "r")
    recorded = load_results(tmp_path / "r")["resolved"]["recipe"]
    assert set(FIELDS) <= set(recorded)
    assert recorded["momentum"] == 0.85 and recorded["nesterov"] is False and recorded["epochs"] == 1
    assert recorded["schedule"] == "triangle" and recorded["pad_mode"] == "reflect"  # the rest: fast's own
    assert load_results(tmp_path / "r")["resolved"]["trainer"]["precision"] == "fp32"


@pytest.mark.parametrize("assignment, message", [
    ("recipe.momentum=2", "recipe.momentum must be at most 1"),
    ("recipe.schedule=cosine", "recipe.schedule must be one of constant, triangle, warmup-linear"),
    ("recipe.nosuch=1", "unknown recipe field(s) nosuch"),
    ("recipe.nesterov=maybe", "is not a valid bool"),
    ("recipe.lr=0", "lr must be positive"),
])
def test_a_wrong_recipe_override_is_refused_before_training(ptk, tmp_path, assignment, message):
    res = ptk("run", *SMALL, "-o", assignment, "--out", tmp_path / "r", expect=2)
    assert message in res.output and "training" not in res.output


def test_recipes_command_lists_every_field_with_its_value(ptk):
    out = json.loads(ptk("recipes", "--json").output)
    assert set(out["recipes"]) == set(RECIPES) and set(out["fields"]) == set(FIELDS)
    assert out["recipes"]["fast"]["lr"] == 0.2 and out["recipes"]["fast"]["batch_size"] == 500
    quick = json.loads(ptk("recipes", "--preset", "quick", "--json").output)["recipes"]["quick preset"]
    assert (quick["epochs"], quick["batch_size"], quick["lr"]) == (6, 64, 2e-3)
    text = ptk("recipes").output
    assert all(name in text for name in FIELDS) and "-o recipe.FIELD=VALUE" in text


def test_triangle_rises_from_start_to_peak_then_falls_to_zero():
    r = named_recipe("fast")
    total = 100
    f = [lr_factor(r, s, total) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.2) and f[20] == pytest.approx(1.0) and f[total] == 0.0
    assert all(a < b for a, b in zip(f[:20], f[1:21])) and all(a > b for a, b in zip(f[20:total], f[21:]))


def test_warmup_linear_is_the_former_fast_schedule():
    """ptk's ``fast`` before the recipe became data: 5% warm-up, (step+1)/warm, then linear to 0."""
    r = named_recipe("fast").with_values({"schedule": "warmup-linear", "warmup": 0.05})
    total = 200
    f = [lr_factor(r, s, total) for s in range(total)]
    assert f[0] == 0.1 and f[9] == 1.0
    assert f[-1] == 1 / 190 and lr_factor(r, total, total) == 0.0


def test_weight_decay_groups_follow_the_recipe():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    all_decay = named_recipe("fast")
    opt, _, _ = make_optimizer(model, all_decay, 100)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4]
    opt, _, _ = make_optimizer(model, all_decay.with_values({"decay_norm_and_bias": False}), 100)
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and all(p.ndim > 1 for p in decayed["params"])
    assert free["weight_decay"] == 0.0 and len(free["params"]) == 3  # conv bias, BN weight, BN bias


def test_reflect_and_zero_padding_match_torch_pad_then_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    offsets, flips = draw_crop_flip(6, g, pad=3)
    for mode, torch_mode in (("zeros", "constant"), ("reflect", "reflect")):
        out = crop_flip(x, offsets, flips, pad=3, pad_mode=mode)
        padded = F.pad(x.float(), (3, 3, 3, 3), mode=torch_mode).to(torch.uint8)
        for i in range(6):
            dy, dx = int(offsets[0, i]), int(offsets[1, i])
            want = padded[i, :, dy : dy + 8, dx : dx + 8]
            assert torch.equal(out[i], want.flip(2) if flips[i] else want), (mode, i)


def test_cutout_zeroes_one_square_of_the_given_side():
    x = torch.full((2, 1, 10, 10), 7, dtype=torch.uint8)
    out = cutout(x, torch.tensor([[2, -1], [3, 8]]), size=4)
    assert (out[0] == 0).sum() == 16 and torch.all(out[0, 0, 2:6, 3:7] == 0)
    assert (out[1] == 0).sum() == 3 * 2  # hangs over the top and right edges: rows 0..2, columns 8..9


def test_flip_off_and_cutout_on_reach_the_batches():
    r = named_recipe("fast").with_values({"flip": False, "cutout": 4})
    batches = epoch_batches(64, 16, torch.Generator().manual_seed(0), torch.device("cpu"), r)
    assert all(not b.flips.any() for b in batches) and all(b.corners is not None for b in batches)
    assert batches[0].pad_mode == "reflect" and batches[0].cutout == 4


def test_ema_keeps_the_weights_near_their_average():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 2, (64,))

    def trained(ema: float) -> torch.nn.Module:
        torch.manual_seed(1)
        net = Network(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2)), *channel_stats(x))
        start = [p.detach().clone() for p in net.parameters()]
        train_model(net, x, y, Recipe(epochs=3, batch_size=16, lr=1e-2, ema=ema), seed=0)
        return sum((p.detach() - s).norm() for p, s in zip(net.parameters(), start))

    assert trained(0.99) < 0.5 * trained(0.0)  # a slow average moves far less than the last iterate


def cache_counts(out) -> dict:
    return load_results(out)["cache"]


def test_a_trainer_edit_misses_the_cache_and_the_same_run_hits_it(ptk, tmp_path, monkeypatch):
    ptk("run", *SMALL, "--seed", "11", "--out", tmp_path / "a")
    ptk("run", *SMALL, "--seed", "11", "--out", tmp_path / "b")
    assert cache_counts(tmp_path / "b") == {"hits": 2, "misses": 0}
    import ptk.session as session

    real = session.module_digest
    monkeypatch.setattr(session, "module_digest",
                        lambda m: "edited" if m == "ptk.augment" else real(m))  # as if a constant changed there
    ptk("run", *SMALL, "--seed", "11", "--out", tmp_path / "c")
    assert cache_counts(tmp_path / "c") == {"hits": 0, "misses": 2}


def torchvision_state_file(tmp_path) -> tuple:
    torch.manual_seed(5)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-weights.pth"
    torch.save(state, path)
    return path, state


def test_pretrained_state_dict_loads_with_either_stem(tmp_path):
    path, state = torchvision_state_file(tmp_path)
    plugin = ResNet18()
    kept = plugin.build(10, (3, 32, 32), {"width": 64, "weights": str(path), "stem": "imagenet"})
    assert kept.conv1.weight.shape == (64, 3, 7, 7) and kept.conv1.stride == (1, 1)
    assert torch.equal(kept.conv1.weight, state["conv1.weight"])
    assert torch.equal(kept.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert kept.fc.out_features == 10
    fresh = plugin.build(10, (3, 32, 32), {"width": 64, "weights": str(path), "stem": "cifar"})
    assert fresh.conv1.weight.shape == (64, 3, 3, 3)
    assert torch.equal(fresh.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert fresh.pretrained_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UsageError, match="needs -o resnet18.width=64"):
        plugin.build(10, (3, 32, 32), {"width": 16, "weights": str(path), "stem": "cifar"})


def test_a_run_from_pretrained_weights_records_their_sha256(ptk, tmp_path):
    path, _ = torchvision_state_file(tmp_path)
    ptk("run", *BASE, "--subset", "40", "--test-subset", "20", "-o", "labelflip.budget=2", "-o", "resnet18.width=64",
        "-o", f"resnet18.weights={path}",
        "--out", tmp_path / "r")
    resolved = load_results(tmp_path / "r")["resolved"]
    assert resolved["pretrained"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_offline_imagenet_weights_fail_before_training_naming_the_file_and_folder(ptk, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    res = ptk("run", *BASE, "-o", "resnet18.width=64", "-o", "resnet18.weights=imagenet", "--out", tmp_path / "r", expect=2)
    assert hub_file().name in res.output and str(hub_file().parent) in res.output
    assert "training" not in res.output
