"""``activation-clustering.backend=art``: ART's own ActivationDefence on a ptk model, and the helpers every
ART-backed ptk plugin shares (:func:`art_classifier`, :func:`art_training_arrays`, :func:`art_images`,
:func:`from_art_images`, :func:`art_one_hot`, :func:`art_seeded`, :func:`gradient_matching_device`,
:func:`quiet_art`, :func:`art_version`).

Two things in ART 1.20 need handling rather than copying:

* ART's PyTorchClassifier lists a model's top-level children in registration
  order and ActivationDefence hooks the *last* one. On a plain ResNet that is
  the classifier head, so it would cluster the logits, not the features (ART
  issue #1810). :class:`FeaturesLast` registers the head first and the feature
  extractor last; its forward still returns logits.
* ART's PCA/FastICA and KMeans take no ``random_state`` and draw from numpy's
  global RNG. It is seeded with the run's seed for the call and restored
  afterwards, which also makes ART draw the same numbers ptk's ``mode=art`` does.
* ART's ``relative-size`` analysis raises on numpy 2 (see
  :func:`run_activation_defence`); its clusters are then analysed by ptk.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ptk import DefenseContext, UsageError

#: ActivationDefence's relative-size analysis always uses this threshold.
ART_SIZE_THRESHOLD = 0.35


class _Features(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.features(x)


class _Head(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.network.head(feats)


class FeaturesLast(nn.Module):
    """A ptk Network as ART should see it: children ``head`` then ``features``, so ART's last layer is the features."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.head = _Head(network)
        self.features = _Features(network)

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
    """ART's float images in [0, 1] back as uint8, each pixel rounded to the nearest grey level."""
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


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


def art_classifier(network: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device):
    """ART PyTorchClassifier over ``network`` (fed floats in [0, 1]) whose last layer is the penultimate one."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=FeaturesLast(network).eval(), loss=nn.CrossEntropyLoss(), input_shape=image_shape,
                             nb_classes=num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if device.type == "cuda" else "cpu")


def art_training_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """A Dataset's training images as ART's classifier takes them (float32 in [0, 1], N x C x H x W) and its
    labels as integers, both numpy on the CPU."""
    return art_images(data.x_train), data.y_train.cpu().numpy()


def art_version() -> str:
    """The installed ART's version, for a plugin's ``details`` (ART is imported only when a plugin runs)."""
    import art

    return art.__version__


def run_activation_defence(classifier, x: np.ndarray, y: np.ndarray, options: dict[str, Any],
                           seed: int) -> tuple[np.ndarray, list[np.ndarray], str]:
    """ART's ActivationDefence.detect_poison with ptk's options.

    Returns a flag per sample, ART's cluster ids per class, and who analysed the
    clusters: ``"art"``, or ``"ptk"`` when ART 1.20's relative-size analysis
    raises. It tests ``cluster_id in poison_clusters`` on a tuple holding a numpy
    array, which numpy 2 refuses whenever a class has no small cluster (or two),
    that is, on almost every real run. ART has clustered by then, so ptk applies
    the same rule (a cluster under 0.35 of its class is poison) to ART's clusters.
    """
    from art.defences.detector.poison import ActivationDefence

    from ptk_plugins.activation_clustering import relative_size_suspects

    defence = ActivationDefence(classifier, x, y)
    params = dict(nb_clusters=2, nb_dims=options["nb_dims"], cluster_analysis=options["analysis"],
                  reduce={"pca": "PCA", "fastica": "FastICA"}[options["reduce"]])
    with numpy_global_seed(seed):
        try:
            _, is_clean = defence.detect_poison(**params)
            return np.asarray(is_clean) == 0, defence.clusters_by_class, "art"
        except ValueError as exc:
            if options["analysis"] != "relative-size" or "truth value" not in str(exc) or not defence.clusters_by_class:
                raise
    flagged = np.zeros(len(y), dtype=bool)
    for c, clusters in enumerate(defence.clusters_by_class):
        idx = np.flatnonzero(y == c)
        for bad in relative_size_suspects(clusters, ART_SIZE_THRESHOLD):
            flagged[idx[clusters == bad]] = True
    return flagged, defence.clusters_by_class, "ptk"


def check_art_options(options: dict[str, Any]) -> None:
    """Refuse options ART's ActivationDefence cannot honour."""
    if options["analysis"] == "relative-size" and options["size_threshold"] != ART_SIZE_THRESHOLD:
        raise UsageError(f"ART's ActivationDefence fixes the relative-size threshold at {ART_SIZE_THRESHOLD}; "
                         "drop -o activation-clustering.size_threshold or use backend=ptk")


def art_backend_flags(ctx: DefenseContext, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Flags from ART's ActivationDefence on the poisoned model's penultimate layer (options passed
    :func:`check_art_options` before training)."""
    x, y = art_training_arrays(ctx.data)
    with quiet_art():
        classifier = art_classifier(ctx.poisoned_model, tuple(ctx.data.image_shape), ctx.data.num_classes, ctx.device)
        flagged, clusters, analysed_by = run_activation_defence(classifier, x, y, options, ctx.seed)
    sizes = [np.bincount(c, minlength=2).tolist() if len(c) else None for c in clusters]
    return flagged, {"cluster_sizes": sizes, "analysed_by": analysed_by}
