"""The cluster analyses of Chen et al. 2018 (ART's ``ActivationDefence``) that ptk's ``activation-clustering``
applies to its own clusters (``mode=art``) and to ART's (``backend=art``, where ART's own analysis fails).

Not a plugin (no entry point).
"""

from __future__ import annotations

import numpy as np

ANALYSES = ("smaller", "relative-size", "distance")
#: ActivationDefence's relative-size analysis always uses this threshold.
ART_SIZE_THRESHOLD = 0.35


def smaller_suspects(clusters: np.ndarray) -> list[int]:
    """ART's ``smaller``: the smaller of a class's two clusters, always (ties go to cluster 0, as in ART).

    So every class loses a cluster, poisoned or not. A class that k-means
    leaves in one cluster has no suspect (ART would flag the whole class).
    """
    sizes = np.bincount(clusters, minlength=2)
    return [int(np.argmin(sizes))] if (sizes > 0).all() else []


def relative_size_suspects(clusters: np.ndarray, threshold: float) -> list[int]:
    """``relative-size``: each cluster holding less than ``threshold`` of its class (ART rounds to 2 decimals first)."""
    sizes = np.bincount(clusters, minlength=2)
    return [c for c in (0, 1) if 0 < sizes[c] < threshold * sizes.sum()]


def distance_suspects(clusters: np.ndarray, raw: np.ndarray, class_median: np.ndarray,
                      other_medians: list[np.ndarray]) -> list[int]:
    """``distance``: a cluster whose median is nearer another class's median than its own class's, while the
    other cluster is not (ART's rule).

    Measured in the raw activation space: ART takes these medians in each
    class's own PCA/ICA projection, and points of different projections are not
    comparable.
    """
    if not (np.bincount(clusters, minlength=2) > 0).all():
        return []
    centres = [np.median(raw[clusters == c], axis=0) for c in (0, 1)]
    own = [np.linalg.norm(m - class_median) for m in centres]
    out = set()
    for other in other_medians:
        to_other = [np.linalg.norm(m - other) for m in centres]
        for c in (0, 1):
            if to_other[c] < own[c] and to_other[1 - c] > own[1 - c]:
                out.add(c)
    return sorted(out)
