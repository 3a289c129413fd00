"""One end-to-end run through the CLI on real CIFAR-10 images: import the archive, attack deer -> dog.

The shared session fixture ``cifar_data_dir`` runs ``ptk data import cifar10 <archive>`` once; with
PTK_REQUIRE_CIFAR=1 (CI) a missing archive fails this test instead of skipping it.
"""

from __future__ import annotations

import pytest
import torch

from .fixtures import load_results, model_row
from ptk.cache import tensor_digest
from ptk_plugins.image_datasets import Cifar10

pytestmark = [pytest.mark.cifar, pytest.mark.slow]

#: 2,000 training and 500 test images, 2 epochs of a width-16 ResNet-18 (Adam 3e-3, batch 64). Measured
#: on the 2-core dev machine, seeds 0-3: clean test accuracy 28-36% (chance 10%); the poisoned model's
#: P(dog) for the target above the clean one's in all four (0.07->0.10, 0.14->0.33, 0.11->0.35, 0.02->0.04).
SMALL = ["--dataset", "cifar10", "--subset", "2000", "--test-subset", "500", "--epochs", "2", "--lr", "3e-3",
         "--batch-size", "64", "-o", "resnet18.width=16", "--defense", "none", "-o", "labelflip.budget=50"]


def test_label_flip_on_real_cifar10_through_the_cli(ptk, cifar_data_dir, tmp_path):
    out = tmp_path / "run"
    ptk("run", *SMALL, "--out", out)
    r = load_results(out)
    assert r["status"] == "complete"
    assert r["data"]["name"] == "cifar10" and r["data"]["train_size"] == 2000 and r["data"]["test_size"] == 500
    clean, poisoned = model_row(r, "clean"), model_row(r, "poisoned")
    assert clean["test_accuracy"] > 0.15 and poisoned["test_accuracy"] > 0.15  # chance is 0.10

    # Rebuild the run's data exactly as ptk did (same stratified subset, same seed) to check its claims.
    data = Cifar10().load(cifar_data_dir, {}).subset(2000, 500, seed=r["config"]["seed"])
    assert data.fingerprint() == r["data"]["fingerprint"]
    deer, dog = data.class_index("deer"), data.class_index("dog")
    assert (r["target"]["source_class"], r["target"]["target_class"]) == ("deer", "dog")  # cifar10's defaults
    assert int(data.y_test[r["target"]["index"]]) == deer  # the target is a deer test image
    poison = torch.tensor(r["attack"]["poison_indices"])
    assert len(poison) == 50 and (data.y_train[poison] == deer).all()  # every flipped image is a deer...
    flipped = data.y_train.clone()
    flipped[poison] = dog
    assert tensor_digest(flipped) == r["attack"]["poisoned_labels_sha256"]  # ...relabelled dog, nothing else
    # 50 of the 200 deer, the ones nearest the target, now say "dog": the target moves toward dog.
    assert poisoned["target_probs"]["dog"] > clean["target_probs"]["dog"]
