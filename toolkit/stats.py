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


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar test of paired binary outcomes: ``a_only`` cells where only A succeeded,
    ``b_only`` where only B did (cells where both or neither did carry no information about the difference).
    Under "A and B succeed equally often" each discordant cell is a fair coin, so the p-value is twice the
    binomial tail of the smaller count, capped at 1; exact, so it stays valid at the few discordant cells a
    poisoning benchmark has (the chi-square form needs about 25)."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: each p-value made valid for the whole family of comparisons (family-wise
    error at most alpha when the adjusted p < alpha), uniformly more powerful than Bonferroni. In input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))  # monotone: never below an earlier one
        adjusted[i] = running
    return adjusted
