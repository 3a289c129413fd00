"""``activation-clustering.backend=art``: ART's own ActivationDefence on a ptk model (the plugin is
:mod:`ptk_plugins.activation_clustering`; this module registers nothing).

ART's ``relative-size`` analysis raises on numpy 2 (see :func:`run_activation_defence`); its clusters are then
analysed by ptk with the same rule (:mod:`ptk_plugins._clustering`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptk import DefenseContext, UsageError
from ptk_plugins._clustering import ART_SIZE_THRESHOLD, relative_size_suspects
from ptk_plugins.art._bridge import art_classifier, art_training_arrays, numpy_global_seed, quiet_art


def run_activation_defence(classifier, x: np.ndarray, y: np.ndarray, options: dict[str, Any],
                           seed: int) -> tuple[np.ndarray, list[np.ndarray], str]:
    """ART's ActivationDefence.detect_poison with ptk's options.

    Returns a flag per sample, ART's cluster ids per class, and who analysed the
    clusters: ``"art"``, or ``"ptk"`` when ART 1.20's relative-size analysis
    raises. It tests ``cluster_id in poison_clusters`` on a tuple holding a numpy
    array, which numpy 2 refuses whenever a class has no small cluster (or two),
    that is, on almost every real run. ART has clustered by then, so ptk applies
    the same rule (a cluster under 0.35 of its class is poison) to ART's clusters.

    ART's PCA/FastICA and KMeans take no ``random_state`` and draw from numpy's global RNG: it is seeded
    with the run's seed for the call, which also makes ART draw the same numbers ptk's ``mode=art`` does.
    """
    from art.defences.detector.poison import ActivationDefence  # ART only when the defense runs (see _bridge)

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
