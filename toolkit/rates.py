"""``ptk sweep report``: success rates with honest intervals, what a defense costs, as tables and plots.

A sweep's rows are grouped by *setting* (the grid values other than seed and
target, which are repetitions) and model (clean, poisoned, each defense). Per
group: the attack's success rate with a 95% Wilson interval, mean test accuracy
and its drop from the clean model of the same cell (mean, 95% t interval),
mean removal precision / recall / AUROC, and mean seconds spent.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .atomic import write_bytes, write_json, write_text

#: Grid values that are repetitions of one setting, not settings: rates are taken over them.
REPEATS = {"seed", "target_rank", "target_index"}


def settings_label(values: dict[str, Any]) -> str:
    """Grid values as messages and tables name them: ``seed=1, target_rank=2``."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


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


@dataclass
class Rate:
    """One model (clean, poisoned, a defense) of one setting, over its seeds and targets."""

    setting: dict[str, Any]
    model: str
    n: int
    successes: int
    failed: int
    budget: float | None
    test_accuracy: float | None
    accuracy_drop: float | None
    accuracy_drop_ci: tuple[float, float] | None
    removal_precision: float | None
    removal_recall: float | None
    suspicion_auroc: float | None
    seconds: float | None
    backdoor_asr: float | None = None
    rejected_clean: float | None = None
    rejected_triggered: float | None = None

    @property
    def rate(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {**asdict(self), "rate": self.rate, "rate_ci_low": lo, "rate_ci_high": hi}


def success_rates(rows: Iterable[dict[str, Any]]) -> list[Rate]:
    """Rates per (setting, model) over seeds and targets; failed models are counted apart, and the accuracy
    drop is taken against the clean model of the same cell."""
    rows = list(rows)
    clean_acc = {r["cell_id"]: r["test_accuracy"] for r in rows if r["name"] == "clean" and not r["failed"]}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for row in rows:
        setting = {k: v for k, v in json.loads(row["grid_values"]).items() if k not in REPEATS}
        key = json.dumps(setting, sort_keys=True)
        settings[key] = setting
        groups.setdefault((key, row["name"]), []).append(row)
    out = []
    for (key, model), members in groups.items():
        ok = [m for m in members if not m["failed"]]

        def values(col: str) -> list[float]:
            return [m[col] for m in ok if m.get(col) is not None]

        drops = [clean_acc[m["cell_id"]] - m["test_accuracy"] for m in ok
                 if m["test_accuracy"] is not None and clean_acc.get(m["cell_id"]) is not None]
        seconds = [(m["train_seconds"] or 0) + (m["defense_seconds"] or 0) for m in ok]
        out.append(Rate(settings[key], model, len(ok), sum(int(m["attack_success"] or 0) for m in ok),
                        len(members) - len(ok), mean(values("budget")), mean(values("test_accuracy")),
                        mean(drops), t_interval(drops), mean(values("removal_precision")),
                        mean(values("removal_recall")), mean(values("suspicion_auroc")), mean(seconds),
                        mean(values("backdoor_asr")), mean(values("rejected_clean")),
                        mean(values("rejected_triggered"))))
    order = {"clean": 0, "poisoned": 1}
    return sorted(out, key=lambda r: (json.dumps(r.setting, sort_keys=True), order.get(r.model, 2), r.model))


HEAD = ["setting", "model", "n", "attack success", "95% CI", "test acc", "acc drop (95% CI)", "precision", "recall",
        "AUROC", "seconds", "failed"]


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def head(rates: list[Rate]) -> list[str]:
    """The table's columns; a backdoor's mean attack success rate on triggered test images where a sweep has
    one, and a test-time filter's mean rejection shares where it has one."""
    asr = ["backdoor ASR"] if any(r.backdoor_asr is not None for r in rates) else []
    filters = ["rejected clean", "rejected triggered"] if any(r.rejected_clean is not None for r in rates) else []
    return HEAD + asr + filters


def cells_of(r: Rate, asr: bool = False, filters: bool = False) -> list[str]:
    """One table row: what a reader compares across defenses."""
    lo, hi = r.interval
    drop = "-" if r.accuracy_drop is None or r.model == "clean" else pct(r.accuracy_drop)
    if r.accuracy_drop_ci and r.model != "clean":
        drop += f" ({pct(r.accuracy_drop_ci[0])} to {pct(r.accuracy_drop_ci[1])})"
    return [settings_label(r.setting) or "all", r.model, str(r.n),
            f"{r.successes}/{r.n} = {r.rate:.0%}" if r.n else "-", f"{lo:.0%}-{hi:.0%}" if r.n else "-",
            pct(r.test_accuracy), drop, pct(r.removal_precision), pct(r.removal_recall),
            "-" if r.suspicion_auroc is None else f"{r.suspicion_auroc:.3f}",
            "-" if r.seconds is None else f"{r.seconds:.1f}", str(r.failed)] + ([pct(r.backdoor_asr)] if asr else []) \
        + ([pct(r.rejected_clean), pct(r.rejected_triggered)] if filters else [])


def optional_columns(columns: list[str]) -> tuple[bool, bool]:
    """Which optional column groups ``columns`` (from :func:`head`) shows: (backdoor ASR, rejection shares)."""
    return "backdoor ASR" in columns, "rejected clean" in columns


def rates_table(rates: list[Rate]) -> str:
    """The rates as a plain-text table (the CLI prints it)."""
    columns = head(rates)
    lines = [columns] + [cells_of(r, *optional_columns(columns)) for r in rates]
    width = [max(len(row[i]) for row in lines) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in lines)


def rates_markdown(rates: list[Rate], counts: dict[str, int], plots: list[str]) -> str:
    lines = ["# ptk sweep report", "",
             "cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()), "",
             "| " + " | ".join(head(rates)) + " |", "|" + "---|" * len(head(rates))]
    lines += ["| " + " | ".join(cells_of(r, *optional_columns(head(rates)))) + " |" for r in rates]
    lines += ["", "attack success: runs whose model predicts the attacker's class for the target, with a 95% Wilson "
              "interval. acc drop: the clean model's test accuracy minus this model's, in the same cell (mean, 95% "
              "t interval). precision / recall / AUROC: a removal or reweighting defense's flags and suspicion "
              "scores against the true poison. seconds: training plus defense time per run. backdoor ASR "
              "(backdoor attacks): mean share of triggered test images of other classes the model assigns to the "
              "trigger's class. rejected clean / triggered (test-time filters): mean share of clean and of "
              "triggered test images the filter refuses to classify; a refused input is not a success. Rates are "
              "over seeds "
              "and targets; every other grid value is a setting.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def rates_csv(rates: list[Rate]) -> str:
    buf = io.StringIO()
    fields = ["setting", "model", "n", "successes", "rate", "rate_ci_low", "rate_ci_high", "failed", "budget",
              "test_accuracy", "accuracy_drop", "accuracy_drop_ci_low", "accuracy_drop_ci_high", "removal_precision",
              "removal_recall", "suspicion_auroc", "seconds", "backdoor_asr", "rejected_clean", "rejected_triggered"]
    writer = csv.DictWriter(buf, fields)
    writer.writeheader()
    for r in rates:
        row = r.to_dict()
        ci = row.pop("accuracy_drop_ci") or (None, None)
        row.update(setting=settings_label(r.setting) or "all", accuracy_drop_ci_low=ci[0], accuracy_drop_ci_high=ci[1])
        writer.writerow({k: row[k] for k in fields})
    return buf.getvalue()


def series(rates: list[Rate]) -> dict[str, list[Rate]]:
    """Rates by model, attacked models only (the clean model never faces the attack)."""
    out: dict[str, list[Rate]] = {}
    for r in rates:
        if r.model != "clean" and r.n:
            out.setdefault(r.model, []).append(r)
    return out


def new_axes():
    """A figure for a sweep plot, drawn without a display (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.5, 4))


def figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def wilson_bars(rates: list[Rate]) -> list[list[float]]:
    """Error-bar lengths below and above each rate: its Wilson interval, which is not symmetric."""
    return [[r.rate - r.interval[0] for r in rates], [r.interval[1] - r.rate for r in rates]]


def plot_success_vs_budget(rates: list[Rate]) -> bytes:
    """Success rate against the poison budget, one line per model, Wilson intervals as error bars."""
    fig, ax = new_axes()
    for i, (model, rs) in enumerate(series(rates).items()):
        rs = sorted((r for r in rs if r.budget is not None), key=lambda r: r.budget)
        xs = [r.budget * (1 + 0.015 * (i - 2)) for r in rs]  # a small offset so bars of equal budgets don't hide
        ys = [r.rate for r in rs]
        ax.errorbar(xs, ys, yerr=wilson_bars(rs), marker="o", capsize=3, label=model)
    ax.set_xlabel("poisoned training samples (budget)")
    ax.set_ylabel("attack success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Attack success by budget (95% Wilson intervals)")
    ax.legend(fontsize=8)
    return figure_png(fig)


def plot_accuracy_vs_success(rates: list[Rate]) -> bytes:
    """Mean test accuracy against success rate per model and setting: the trade-off of each defense."""
    fig, ax = new_axes()
    for model, rs in series(rates).items():
        rs = [r for r in rs if r.test_accuracy is not None]
        ax.errorbar([r.rate for r in rs], [r.test_accuracy for r in rs], xerr=wilson_bars(rs), fmt="o", capsize=3, label=model)
    ax.set_xlabel("attack success rate (lower is better)")
    ax.set_ylabel("mean test accuracy (higher is better)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_title("What each defense costs and what it stops")
    ax.legend(fontsize=8)
    return figure_png(fig)


PLOTS = {"success_vs_budget.png": plot_success_vs_budget, "accuracy_vs_success.png": plot_accuracy_vs_success}


def write_sweep_report(out: Path, rates: list[Rate], counts: dict[str, int]) -> list[Path]:
    """report.md, rates.csv, rates.json and the plots into ``out`` (each written atomically); their paths."""
    budgets = {r.budget for r in rates if r.budget is not None}
    plots = [name for name in PLOTS if any(series(rates).values())
             and (name != "success_vs_budget.png" or len(budgets) > 1)]  # one budget: no curve to draw
    for name in plots:
        write_bytes(out / name, PLOTS[name](rates))
    write_text(out / "report.md", rates_markdown(rates, counts, plots))
    write_text(out / "rates.csv", rates_csv(rates))
    write_json(out / "rates.json", {"cells": counts, "rates": [r.to_dict() for r in rates]})
    return [out / n for n in ("report.md", "rates.csv", "rates.json", *plots)]
