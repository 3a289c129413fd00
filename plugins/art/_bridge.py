"""The bridge between ptk and ART that every ART-backed plugin crosses: a ptk model as an ART classifier
(:func:`art_classifier`, :class:`FeaturesLast`), ptk's uint8 images and integer labels as ART takes them and
back (:func:`art_images`, :func:`art_training_arrays`, :func:`from_art_images`, :func:`art_one_hot`), ART's
global random number generators seeded for a call (:func:`numpy_global_seed`, :func:`art_seeded`), ART's
logging kept quiet (:func:`quiet_art`), its version (:func:`art_version`) and the device ART's gradient
matching picks (:func:`gradient_matching_device`).

Two things in ART 1.20 need handling rather than copying:

* ART's PyTorchClassifier lists a model's top-level children in registration
  order and ActivationDefence hooks the *last* one. On a plain ResNet that is
  the classifier head, so it would cluster the logits, not the features (ART
  issue #1810). :class:`FeaturesLast` registers the head first and the feature
  extractor last; its forward still returns logits.
* ART's PCA/FastICA, KMeans and its attacks' draws take no ``random_state`` and
  draw from numpy's global RNG (some also from Python's and torch's): they are
  seeded with the run's seed for the call and restored afterwards.

ART is imported inside the functions that need it, never at the top of a ptk module: ``import art`` costs
about 1.5 s on top of torch, and every plugin module is imported by ``ptk plugins`` and each run.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ptk import UsageError


class _Part(nn.Module):
    """One method of a ptk Network (``features`` or ``head``) as a module of its own, for :class:`FeaturesLast`."""

    def __init__(self, network: nn.Module, method: str) -> None:
        super().__init__()
        self.network = network
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.network, self.method)(x)


class FeaturesLast(nn.Module):
    """A ptk Network as ART should see it: children ``head`` then ``features``, so ART's last layer is the features."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.head = _Part(network, "head")
        self.features = _Part(network, "features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@contextmanager
def numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for a block and put its previous state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def art_seeded(seed: int) -> Iterator[None]:
    """Every global RNG an ART method may draw from (numpy's, Python's ``random``, torch's on the CPU and each
    GPU) seeded with ``seed`` for a block and put back afterwards: an ART call draws the same numbers for the
    same seed, and the rest of the run is unaffected."""
    state = random.getstate()
    random.seed(seed)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with numpy_global_seed(seed), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(state)


def art_images(x: torch.Tensor) -> np.ndarray:
    """ptk's uint8 images (N, C, H, W) as ART's classifiers take them: float32 in [0, 1], numpy on the CPU."""
    return x.float().div(255).cpu().numpy()


def from_art_images(x: np.ndarray) -> np.ndarray:
    """ART's float images in [0, 1] back as uint8, each pixel rounded to the nearest grey level (in float64, so
    a float32 pixel just under a half level is not rounded up by the product's own rounding)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def art_one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels as the one-hot float32 rows ART's attacks and detectors stack and compare."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(y)]


def gradient_matching_device() -> torch.device:
    """Where ART 1.20's gradient matching (GradientMatchingAttack, and SleeperAgentAttack built on it) puts its
    tensors, whatever the classifier's device: CUDA whenever torch sees one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def quiet_art() -> Iterator[None]:
    """ART logs every step at INFO through the root logger; keep ptk's console to warnings from ART."""
    art_log = logging.getLogger("art")
    level = art_log.level
    art_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        art_log.setLevel(level)


def art_device_type(device: torch.device) -> str:
    """ART's PyTorchClassifier ``device_type`` for a torch device."""
    return "gpu" if device.type == "cuda" else "cpu"


def art_classifier(network: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device):
    """ART PyTorchClassifier over ``network`` (fed floats in [0, 1]) whose last layer is the penultimate one."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=FeaturesLast(network).eval(), loss=nn.CrossEntropyLoss(), input_shape=image_shape,
                             nb_classes=num_classes, clip_values=(0.0, 1.0), device_type=art_device_type(device))


def art_training_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """A Dataset's training images as ART's classifier takes them (float32 in [0, 1], N x C x H x W) and its
    labels as integers, both numpy on the CPU."""
    return art_images(data.x_train), data.y_train.cpu().numpy()


def check_trusted_count(name: str, n: int, data) -> None:
    """A defense's ``n`` trusted images (ART's ``x_val``) cannot exceed the training set they are drawn from:
    refused before training, instead of quietly capped when the defense runs."""
    if n > len(data.y_train):
        raise UsageError(f"{name}.n={n} trusted images is more than the {len(data.y_train)} training images they "
                         f"are drawn from; lower -o {name}.n")


def art_version() -> str:
    """The installed ART's version, for a plugin's ``details`` (ART is imported only when a plugin runs)."""
    import art

    return art.__version__
