"""Activation clustering: ptk's ``mode=art`` against ART's own ActivationDefence, and the study's variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import StubNetwork
from .fixtures import TINY, load_results, model_row
from ptk_plugins.activation_clustering import art_mode_flags, dominant_label_flags
from ptk_plugins.art._activation_defence import run_activation_defence
from ptk_plugins.art._bridge import art_classifier


def synthetic_activations(seed: int = 0, unstructured: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 32-d activations in [0, 1], each a main blob and a far blob:

    class 0: 180 + 20; class 1: 150 with no structure (how 2-means splits it depends on the random
    start, so a different random stream flags different samples), or 120 + 30 if not ``unstructured``;
    class 2: 90 + 30.
    """
    rng = np.random.default_rng(seed)
    dims = 32
    parts, labels = [], []
    for label, sizes in ((0, (180, 20)), (1, (150,) if unstructured else (120, 30)), (2, (90, 30))):
        for j, size in enumerate(sizes):
            centre = rng.uniform(0.3, 0.7, dims) + (0.2 if j else 0.0)
            parts.append(centre + rng.normal(0, 0.05, (size, dims)))
            labels += [label] * size
    acts = np.clip(np.concatenate(parts), 0, 1).astype(np.float32)
    order = rng.permutation(len(labels))
    return acts[order], np.asarray(labels)[order]


@pytest.mark.parametrize("reduce,analysis,unstructured,analysed_by", [
    ("pca", "smaller", True, "art"),
    ("fastica", "smaller", True, "art"),
    ("pca", "relative-size", False, "art"),  # every class has one small cluster: ART's own analysis works
    ("pca", "relative-size", True, "ptk"),  # a class without one: ART 1.20 raises on numpy 2, ptk analyses
])
def test_art_mode_flags_exactly_what_art_flags_on_the_same_activations(reduce, analysis, unstructured, analysed_by):
    acts, labels = synthetic_activations(unstructured=unstructured)
    seed = 11
    options = {"nb_dims": 10, "reduce": reduce, "analysis": analysis}
    # ART takes activations from the last top-level module of the classifier it is given;
    # art_classifier makes that the stub's features (= its input), not its 3 logits.
    clf = art_classifier(StubNetwork(acts.shape[1], 3), (acts.shape[1],), 3, torch.device("cpu"))
    np.testing.assert_array_equal(clf.get_activations(acts[:4], layer=len(clf.layer_names) - 1), acts[:4])
    before = np.random.get_state()[1].copy()
    art_flags, art_clusters, who = run_activation_defence(clf, acts, labels, options, seed)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # numpy's global RNG is left as it was
    ptk_flags, report = art_mode_flags(acts, labels, 3, reduce, 10, analysis, 0.35, seed)
    assert who == analysed_by
    assert art_flags.any()
    np.testing.assert_array_equal(ptk_flags, art_flags)
    assert report["cluster_sizes"] == [np.bincount(c, minlength=2).tolist() for c in art_clusters]
    if unstructured and analysis == "smaller":
        # the unstructured class makes this a real check of the random stream: another seed splits it otherwise
        other, _ = art_mode_flags(acts, labels, 3, reduce, 10, analysis, 0.35, seed + 1)
        assert (other != ptk_flags).any()


def test_art_smaller_flags_a_cluster_in_every_class_relative_size_only_small_ones():
    acts, labels = synthetic_activations()
    smaller, _ = art_mode_flags(acts, labels, 3, "pca", 10, "smaller", 0.35, 0)
    relative, _ = art_mode_flags(acts, labels, 3, "pca", 10, "relative-size", 0.35, 0)
    assert {int(c) for c in labels[smaller]} == {0, 1, 2}  # "smaller" suspects every class, poisoned or not
    assert 1 not in set(labels[relative].tolist())  # the unstructured class splits near evenly: not suspicious
    assert relative.sum() == 20 + 30  # exactly the two small far blobs


def test_art_mode_survives_classes_it_cannot_split():
    acts = np.concatenate([np.full((20, 16), 0.5), np.random.default_rng(0).normal(size=(5, 16))]).astype(np.float32)
    labels = np.array([0] * 20 + [1] * 5)  # class 0: identical rows (one cluster); class 1: fewer samples than nb_dims
    for analysis in ("smaller", "relative-size", "distance"):
        flags, report = art_mode_flags(acts, labels, 3, "pca", 10, analysis, 0.35, 0)  # class 2 is empty
        assert not flags[:20].any()
        assert report["cluster_sizes"][2] is None


def test_dominant_label_flags_samples_labelled_unlike_their_cluster():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 5, (3, 32))
    labels = np.repeat(np.arange(3), 50)
    acts = centres[labels] + rng.normal(0, 0.3, (150, 32))
    poisoned = labels.copy()
    flipped = np.array([3, 17, 40])  # class-0 samples relabelled 2
    poisoned[flipped] = 2
    flags, report = dominant_label_flags(acts, poisoned, 3, 0)
    np.testing.assert_array_equal(np.flatnonzero(flags), flipped)
    assert sorted(report["cluster_dominant_labels"]) == [0, 1, 2]


@pytest.mark.slow
def test_both_backends_agree_on_a_real_poisoned_run(ptk, tmp_path):
    runs = {}
    for backend in ("ptk", "art"):
        out = tmp_path / backend
        # width 16, not TINY's 8: ART's mode removes a large share, and the narrower net retrained on the rest
        # falls to about 40% accuracy, too weak to say the defended model still learns
        ptk("run", "--defense", "activation-clustering", *TINY, "-o", "resnet18.width=16",
            "-o", "activation-clustering.mode=art",
            "-o", f"activation-clustering.backend={backend}", "--out", out)
        runs[backend] = model_row(load_results(out), "activation-clustering")
    n = load_results(tmp_path / "ptk")["data"]["train_size"]
    a, b = (set(runs[k]["removed_indices"]) for k in ("ptk", "art"))
    assert a and b
    agree = n - len(a ^ b)
    assert agree / n >= 0.95, f"backends disagree on {len(a ^ b)} of {n} samples"
    for row in runs.values():
        assert row["details"]["mode"] == "art" and row["removed_count"] == len(row["removed_indices"])
        assert row["test_accuracy"] > 0.5


@pytest.mark.slow
def test_dominant_label_through_the_cli_removes_poison(ptk, tmp_path):
    out = tmp_path / "run"
    ptk("run", "--defense", "activation-clustering", *TINY, "--out", out)
    r = load_results(out)
    row = model_row(r, "activation-clustering")
    assert row["details"]["mode"] == "dominant-label"
    assert row["removed_count"] == len(row["removed_indices"]) > 0
    assert 0 <= row["removal_precision"] <= 1 and 0 <= row["removal_recall"] <= 1
    assert row["test_accuracy"] > 0.5


@pytest.mark.parametrize("options, fix", [
    # ART has no dominant-label mode
    (["activation-clustering.backend=art"], "add -o activation-clustering.mode=art"),
    # ART fixes the relative-size threshold
    (["activation-clustering.backend=art", "activation-clustering.mode=art", "activation-clustering.analysis="
      "relative-size", "activation-clustering.size_threshold=0.2"], "drop -o activation-clustering.size_threshold"),
])
def test_backend_art_refuses_what_art_cannot_do_before_training(ptk, tmp_path, options, fix):
    out = tmp_path / "run"
    res = ptk("run", "--defense", "activation-clustering", *TINY, *[a for o in options for a in ("-o", o)],
              "--out", out, expect=2)
    assert fix in res.output
    assert not (out / "results.json").exists()  # refused by Defense.check, before the clean model trained
