"""``ptk sweep report``'s files: the rates of :mod:`ptk.rates` as a console table, report.md, rates.csv,
rates.json and plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .atomic import write_bytes, write_json, write_text
from .plots import new_figure, png_bytes
from .rates import Rate, settings_label


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
              "scores against the true poison. seconds: what the model cost per run (a defense: its whole time; "
              "a cached model: its recorded training time). backdoor ASR (backdoor attacks): mean share of triggered test images of other classes the model assigns to the "
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


def wilson_bars(rates: list[Rate]) -> list[list[float]]:
    """Error-bar lengths below and above each rate: its Wilson interval, which is not symmetric."""
    return [[r.rate - r.interval[0] for r in rates], [r.interval[1] - r.rate for r in rates]]


def plot_success_vs_budget(rates: list[Rate]):
    """Success rate against the poison budget, one line per model, Wilson intervals as error bars (a matplotlib
    figure: PNG for report.md, SVG for report.html)."""
    fig, ax = new_figure()
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
    return fig


def plot_accuracy_vs_success(rates: list[Rate]):
    """Mean test accuracy against success rate per model and setting: the trade-off of each defense (a figure)."""
    fig, ax = new_figure()
    for model, rs in series(rates).items():
        rs = [r for r in rs if r.test_accuracy is not None]
        ax.errorbar([r.rate for r in rs], [r.test_accuracy for r in rs], xerr=wilson_bars(rs), fmt="o", capsize=3, label=model)
    ax.set_xlabel("attack success rate (lower is better)")
    ax.set_ylabel("mean test accuracy (higher is better)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_title("What each defense costs and what it stops")
    ax.legend(fontsize=8)
    return fig


PLOTS = {"success_vs_budget.png": plot_success_vs_budget, "accuracy_vs_success.png": plot_accuracy_vs_success}


def plot_names(rates: list[Rate]) -> list[str]:
    """The plots these rates have something to show in (of PLOTS): none without an attacked model, no budget
    curve with one budget."""
    budgets = {r.budget for r in rates if r.budget is not None}
    return [name for name in PLOTS if any(series(rates).values())
            and (name != "success_vs_budget.png" or len(budgets) > 1)]


def write_sweep_report(out: Path, rates: list[Rate], counts: dict[str, int]) -> list[Path]:
    """report.md, rates.csv, rates.json and the plots into ``out`` (each written atomically); their paths."""
    plots = plot_names(rates)
    for name in plots:
        write_bytes(out / name, png_bytes(PLOTS[name](rates)))
    write_text(out / "report.md", rates_markdown(rates, counts, plots))
    write_text(out / "rates.csv", rates_csv(rates))
    write_json(out / "rates.json", {"cells": counts, "rates": [r.to_dict() for r in rates]})
    return [out / n for n in ("report.md", "rates.csv", "rates.json", *plots)]
