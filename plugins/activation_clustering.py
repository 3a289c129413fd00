"""Defense plugin ``activation-clustering``: cluster penultimate-layer activations, drop suspects, retrain.

The study's Defense 3. Activations are the poisoned model's penultimate layer
(ResNet-18: the 512-d average-pool output) on every training image.

``mode=dominant-label`` (default; the study's variant): k-means with one
cluster per class over all activations; a sample whose (possibly poisoned)
label differs from its cluster's most common label is flagged.

``mode=art``: Chen et al. 2018 as ART's ``ActivationDefence`` does it:
activations split by label, reduced to ``nb_dims`` (PCA or FastICA), two
clusters per class, and a cluster analysis decides which cluster is poison
(``smaller``, ``relative-size`` or ``distance``). ``backend=art`` runs ART's
own ``ActivationDefence`` instead of ptk's implementation (see
:mod:`ptk_plugins.art._activation_defence`); the two draw their random numbers in the same
order from the same seed and so flag the same samples.

Flagged samples are removed and the model retrained with the run's recipe. Each sample also
gets a suspicion score (dominant-label: the share of its cluster that carries another label;
art: flagged first, then the smaller its cluster's share of its class), which ptk turns into a
threshold-free AUROC against the true poison.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptk import Dataset, Defense, DefenseContext, DefenseResult, Option, ThreatModel, UsageError, hookimpl, positive
from ptk_plugins._clustering import (ANALYSES, ART_SIZE_THRESHOLD, distance_suspects, relative_size_suspects,
                                    smaller_suspects)
from ptk_plugins.art._activation_defence import art_backend_flags, check_art_options


def reduce_dims(acts: np.ndarray, method: str, nb_dims: int, rng: np.random.RandomState) -> np.ndarray:
    """Project one class's activations to ``nb_dims`` dimensions with PCA or FastICA.

    As in ART: no projection when the layer already has ``nb_dims`` or fewer
    dimensions. Unlike ART (which raises), a class with fewer samples than
    ``nb_dims`` is projected to as many dimensions as it has samples.
    """
    if acts.shape[1] <= nb_dims:
        return acts
    from sklearn.decomposition import PCA, FastICA  # here, not at import: scikit-learn takes ~2 s to import

    k = min(nb_dims, len(acts))
    if method == "pca":
        return PCA(n_components=k, random_state=rng).fit_transform(acts)
    return FastICA(n_components=k, max_iter=1000, tol=0.005, random_state=rng).fit_transform(acts)


def two_means(points: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Cluster ids (0/1) of a 2-means fit with ART's settings (k-means++, sklearn's default n_init)."""
    if len(points) < 2:
        return np.zeros(len(points), dtype=int)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=2, random_state=rng).fit_predict(points)


def art_mode_flags(acts: np.ndarray, labels: np.ndarray, num_classes: int, reduce: str, nb_dims: int,
                   analysis: str, threshold: float, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Chen et al. 2018 per-class 2-means, as ART's ActivationDefence: a boolean flag per sample and a report.

    The projection and k-means of each class, in class order, draw from one
    ``RandomState(seed)``: the same stream ART draws from numpy's global RNG
    after ``np.random.seed(seed)``, so both pick the same clusters.
    """
    rng = np.random.RandomState(seed)
    flagged = np.zeros(len(labels), dtype=bool)
    scores = np.zeros(len(labels))
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    # class medians of the raw activations: only the distance analysis uses them
    medians = [np.median(acts[m], axis=0) if len(m) else None for m in members] if analysis == "distance" else []
    sizes: list[list[int] | None] = [None] * num_classes
    for c, idx in enumerate(members):
        if len(idx) < 2:
            continue
        clusters = two_means(reduce_dims(acts[idx], reduce, nb_dims, rng), rng)
        if analysis == "smaller":
            suspects = smaller_suspects(clusters)
        elif analysis == "relative-size":
            suspects = relative_size_suspects(clusters, threshold)
        else:
            others = [m for k, m in enumerate(medians) if k != c and m is not None]
            suspects = distance_suspects(clusters, acts[idx], medians[c], others)
        for bad in suspects:
            flagged[idx[clusters == bad]] = True
        sizes[c] = np.bincount(clusters, minlength=2).tolist()
        # suspicion: flagged first, then by how small a share of its class the sample's cluster is
        size = np.bincount(clusters, minlength=2)[clusters] / len(idx)
        scores[idx] = flagged[idx] + (1 - size)
    return flagged, {"cluster_sizes": sizes, "scores": scores}


def dominant_label_flags(acts: np.ndarray, labels: np.ndarray, num_classes: int,
                         seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The study's variant: k-means (k = classes) over all activations; flag labels that disagree with the cluster's.

    ``n_init=10`` restarts because one bad k-means start with ten clusters
    would mislabel whole clusters, and every sample in them would be flagged.
    """
    from sklearn.cluster import KMeans

    clusters = KMeans(n_clusters=num_classes, n_init=10, random_state=seed).fit_predict(acts)
    dominant = np.zeros(num_classes, dtype=int)
    for k in range(num_classes):
        in_k = labels[clusters == k]
        dominant[k] = np.bincount(in_k, minlength=num_classes).argmax() if len(in_k) else -1
    flagged = labels != dominant[clusters]
    # suspicion: the share of the sample's cluster that carries another label than the sample's
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (clusters, labels), 1)
    share = counts[clusters, labels] / np.maximum(counts[clusters].sum(1), 1)
    return flagged, {"cluster_sizes": np.bincount(clusters, minlength=num_classes).tolist(),
                     "cluster_dominant_labels": dominant.tolist(), "scores": 1 - share}


class ActivationClustering(Defense):
    name = "activation-clustering"
    description = "cluster penultimate activations, drop samples in suspicious clusters, retrain (Chen et al. 2018)"
    threat = ThreatModel(knows_target=False, trusted_data=False, uses_poisoned_model=True)
    options = [
        Option("mode", str, "dominant-label", "dominant-label: k-means over all samples, flag labels that "
               "disagree with the cluster's (the study); art: 2-means per class (Chen et al., ART)",
               choices=("dominant-label", "art")),
        Option("analysis", str, "smaller", "mode=art: which cluster is poison (smaller, relative-size, distance)",
               choices=ANALYSES),
        Option("reduce", str, "pca", "mode=art: dimension reduction before 2-means", choices=("pca", "fastica")),
        Option("nb_dims", int, 10, "mode=art: dimensions kept by the reduction", check=positive),
        Option("size_threshold", float, ART_SIZE_THRESHOLD, "analysis=relative-size: a cluster with less than this "
               "fraction of its class is poison", check=lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}"),
        Option("backend", str, "ptk", "mode=art: ptk's implementation or ART's own ActivationDefence",
               choices=("ptk", "art")),
    ]

    def check(self, data: Dataset, options: dict[str, Any]) -> None:
        if options["backend"] != "art":
            return
        if options["mode"] != "art":
            raise UsageError("activation-clustering.backend=art runs ART's ActivationDefence, which has no "
                             "dominant-label mode; add -o activation-clustering.mode=art")
        check_art_options(options)

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        mode, backend = options["mode"], options["backend"]
        labels = ctx.data.y_train.cpu().numpy()
        num_classes = ctx.data.num_classes
        if backend == "art":  # check() has refused what ART cannot do
            flagged, report = art_backend_flags(ctx, options)
        else:
            acts = ctx.features(ctx.poisoned_model, ctx.data.x_train).cpu().numpy()
            if mode == "art":
                flagged, report = art_mode_flags(acts, labels, num_classes, options["reduce"], options["nb_dims"],
                                                 options["analysis"], options["size_threshold"], ctx.seed)
            else:
                flagged, report = dominant_label_flags(acts, labels, num_classes, ctx.seed)
        scores = torch.from_numpy(np.asarray(report.pop("scores", flagged), dtype=np.float64))
        removed = torch.from_numpy(np.flatnonzero(flagged))
        if len(labels) - len(removed) < 2:
            raise RuntimeError(f"activation clustering flagged {len(removed)} of {len(labels)} samples; "
                               "nothing is left to retrain on")
        model = ctx.train_without(removed, desc="activation-clustering retrain")
        per_class = np.bincount(labels[flagged], minlength=num_classes)
        details = {
            "mode": mode,
            "backend": backend,
            **({"analysis": options["analysis"], "reduce": options["reduce"], "nb_dims": options["nb_dims"]}
               if mode == "art" else {}),
            "flagged_per_class": {ctx.data.classes[c]: int(v) for c, v in enumerate(per_class)},
            "classes_with_flags": int((per_class > 0).sum()),
        }
        if mode == "art":
            details["cluster_sizes"] = {ctx.data.classes[c]: v for c, v in enumerate(report["cluster_sizes"])}
            if backend == "art":
                details["analysed_by"] = report["analysed_by"]
        else:
            details.update(report)
        return DefenseResult(predictor=model, removed_indices=removed, scores=scores, details=details)


@hookimpl
def register_defenses(register):
    register(ActivationClustering())
