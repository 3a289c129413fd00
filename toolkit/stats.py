"""The statistics ptk reports: intervals that stay honest at the small n and extreme rates of poisoning
experiments (a 0/5 success rate is not "0%, no doubt")."""

from __future__ import annotations

import math
import statistics


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate: honest at small n and at rates of 0 or 1,
    where the normal approximation gives intervals outside [0, 1] or of width zero."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """95% Student-t interval of a mean (None below two values: no spread to estimate)."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean, half = statistics.fmean(values), t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(
        len(values))
    return mean - half, mean + half


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None
