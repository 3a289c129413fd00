"""``art-roni``: ART's RONIDefense on ptk's model, against ART called by hand, with the workarounds for ART
1.20.1's image layout and performance-function bugs shown on ART itself."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ptk.config import ExperimentConfig
from ptk.experiment import run_experiment
from ptk_plugins.art import roni as art_roni
from ptk_plugins.art._bridge import numpy_global_seed

from .fixtures import model_row
from .plugins.blobs import BlobsAndMlp, TinyNet

SHAPE = (3, 8, 8)
OPTIONS = {"pp_cal": 0.2, "pp_quiz": 0.2, "calibrated": False, "eps": 0.05, "perf": "error"}



def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (y[:, None, None, None] * 80 + rng.integers(0, 60, (n, *SHAPE))).astype(np.float32) / 255
    return x, y


def test_roni_flags_exactly_what_art_flags_with_its_own_fit_defaults():
    """ptk's classifier with fit_epochs=10, batch 128 (PyTorchClassifier.fit's defaults) and flat rows, against
    ART's RONIDefense driven by hand with a plain PyTorchClassifier: the same rejections and the same report."""
    from art.defences.detector.poison import RONIDefense
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    net = TinyNet(3, SHAPE)
    x, y = blobs(30, 0)
    y[:6] = (y[:6] + 1) % 3  # six flipped labels
    x_val, y_val = blobs(9, 1)
    ours = art_roni.roni_classifier(net, SHAPE, 3, torch.device("cpu"), epochs=10, batch_size=128, lr=0.05)
    flags, report = art_roni.roni_flags(ours, x, y, x_val, y_val, 3, OPTIONS, seed=5)

    model = nn.Sequential(nn.Unflatten(1, SHAPE), copy.deepcopy(net))
    by_hand = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(),
                                lr=0.05), input_shape=(192,), nb_classes=3, clip_values=(0.0, 1.0))
    eye = np.eye(3, dtype=np.float32)
    with numpy_global_seed(5), torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        art_report, is_clean = RONIDefense(by_hand, x.reshape(30, -1), eye[y], x_val.reshape(9, -1), eye[y_val],
                                           perf_func=art_roni.error_rate, eps=0.05, calibrated=False).detect_poison()
    np.testing.assert_array_equal(flags, np.asarray(is_clean) == 0)
    assert report == {int(k): float(v) for k, v in art_report.items()}
    assert flags.any() and all(shift < -0.05 for shift in report.values())  # rejected: quiz accuracy fell by > eps


def test_art_roni_as_art_ships_it_fails_on_images_and_on_its_own_accuracy_which_ptk_works_around():
    from art.defences.detector.poison import RONIDefense
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    net = TinyNet(3, SHAPE)
    x, y = blobs(12, 0)
    eye = np.eye(3, dtype=np.float32)

    def classifier(shape):
        model = nn.Sequential(nn.Unflatten(1, SHAPE), copy.deepcopy(net)) if shape != SHAPE else copy.deepcopy(net)
        return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=3,
                                 optimizer=torch.optim.SGD(model.parameters(), lr=0.01), clip_values=(0.0, 1.0))

    with numpy_global_seed(0), pytest.raises(ValueError, match="same number of dimensions"):
        RONIDefense(classifier(SHAPE), x, eye[y], x[:3], eye[y[:3]], calibrated=False).detect_poison()
    with numpy_global_seed(0), pytest.raises(ValueError, match="continuous-multioutput"):
        RONIDefense(classifier((192,)), x.reshape(12, -1), eye[y], x[:3].reshape(3, -1), eye[y[:3]],
                    calibrated=False).detect_poison()


def test_art_roni_in_a_run_removes_what_it_rejects_and_counts_its_fine_tunes(registry, tmp_path):
    config = ExperimentConfig(dataset="api-blobs", model="api-mlp", attack="art-backdoor", defenses=["art-roni"],
                              epochs=3, lr=1e-2, batch_size=16, device="cpu",
                              options={"art-backdoor": {"fraction": "0.3"}, "art-roni": {"n": "9", "fit_epochs": "3"}})
    r = run_experiment(config, registry(BlobsAndMlp()), save=lambda r: None, data_root=Path(tmp_path), use_cache=False)
    roni = model_row(r, "art-roni")
    assert not roni.get("failed"), roni.get("error")
    assert roni["threat_model"] == "target unknown, needs trusted clean data, uses the poisoned model, poison budget unknown"
    assert roni["details"]["rejected"] == roni["removed_count"]
    assert roni["details"]["fine_tunes"] == 60 + 1  # one on the training set, one per training sample
    assert roni["details"]["trusted_images"] == 9 and "backdoor_asr" in roni


def test_art_roni_options_are_checked_before_training(ptk, tmp_path):
    bad = ptk("run", "--attack", "art-backdoor", "--defense", "art-roni", "--preset", "quick", "--subset", "20",
              "-o", "art-roni.pp_quiz=0.01", "--out", tmp_path / "a", expect=2)
    assert "art-roni.pp_quiz=0.01" in bad.output and "empty quiz set" in bad.output
    bad = ptk("run", "--attack", "art-backdoor", "--defense", "art-roni", "--preset", "quick",
              "-o", "art-roni.perf=f1", "--out", tmp_path / "b", expect=2)
    assert "perf" in bad.output
