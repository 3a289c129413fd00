"""``ptk bench report``: a suite's store as a leaderboard, with paired tests on the cells every defense shares.

Rows are compared only on *shared* cells: the (attack setting, seed, target) cells where the undefended
model and every defense of that attack setting have a finished row. On those, each pair of models is tested
with McNemar's exact test on per-cell success (the cells are paired: same data, same poison, same target),
Holm-corrected over the pairs of one attack setting, and a model's rank is one plus the number of models
that beat it significantly, so models whose difference is not significant share a rank.

Per-cell success: for a targeted attack, the model predicts the attacker's class for the target; for a
backdoor, the backdoor took: at least half the triggered test images go to its class (``ASR_TOOK``). A
backdoor's row also shows the mean ASR.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from typing import Any, Iterable

from .results import model_seconds
from .stats import holm, mcnemar_exact, mean, t_interval, wilson_interval
from .sweep_report import pct

#: A backdoor "took" in a cell when at least this share of triggered test images reach its class.
ASR_TOOK = 0.5
#: Adjusted p below this: the difference is called significant.
ALPHA = 0.05
UNDEFENDED = "poisoned"


def machine_label(device: str | None, versions: str | None) -> str:
    """Where a cell ran, as the board names it: device, CPU kernel kind, ptk and torch versions."""
    v = json.loads(versions) if versions else {}
    kind = f" {v['cpu_capability']}" if device == "cpu" and v.get("cpu_capability") else ""
    return f"{device or '?'}{kind} / ptk {v.get('ptk', '?')} / torch {v.get('torch', '?')}"


def detection_auroc(row: dict[str, Any]) -> float | None:
    """A defense's threshold-free detection score: its suspicion AUROC on the training set, or, for a test-time
    detector, its filter AUROC (triggered vs clean test images) from the row's results.json entry."""
    if row.get("suspicion_auroc") is not None:
        return row["suspicion_auroc"]
    return json.loads(row["row"]).get("filter_auroc") if row.get("row") else None


def cell_success(row: dict[str, Any], metric: str) -> bool:
    if metric == "asr":
        return (row.get("backdoor_asr") or 0.0) >= ASR_TOOK
    return bool(row.get("attack_success"))


def group_cells(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Model rows by suite cell (attack setting, seed, target) and model name; the first finished row of a
    model wins (clean and poisoned recur in every store cell of a suite cell, from the model cache)."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        values = json.loads(row["grid_values"])
        if "attack" not in values:
            continue  # not a bench cell
        key = json.dumps({k: values.get(k) for k in ("attack", "seed", "target_index")}, sort_keys=True)
        models = cells.setdefault(key, {})
        if row["failed"] or row["name"] in models:
            continue
        models[row["name"]] = row
    return cells


#: What must agree between the recurring clean and poisoned rows of one suite cell for its defenses to have
#: faced the same models.
SAME_MODEL = ("test_accuracy", "target_p_target", "backdoor_asr")


def diverging_models(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The suite cells whose clean or poisoned model is not the same in every store cell (run) of it: one line
    each. A defense added later reads those models from the model cache; when the cache misses (ptk's trainer
    or model code changed, or the CPU kind or thread count made other floating-point sums), the run trains
    them again and its defenses face a slightly different poisoned model than the others did."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    out = []
    for row in rows:
        values = json.loads(row["grid_values"])
        if "attack" not in values or row["name"] not in ("clean", UNDEFENDED) or row["failed"]:
            continue
        where = f"{values['attack']} seed={values.get('seed')} target_index={values.get('target_index')}"
        first = seen.setdefault((where, row["name"]), row)
        if first is not row and any(first.get(k) != row.get(k) for k in SAME_MODEL):
            out.append(f"{where} ({row['name']}: test accuracy {pct(first.get('test_accuracy'))} vs "
                       f"{pct(row.get('test_accuracy'))}, P(target) {pct(first.get('target_p_target'))} vs "
                       f"{pct(row.get('target_p_target'))})")
    return out


def run_references(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The clean and undefended rows of each store cell (one run of a suite cell), by cell id: what the
    defenses of that run faced."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["name"] in ("clean", UNDEFENDED) and not row["failed"]:
            out.setdefault(row["cell_id"], {}).setdefault(row["name"], row)
    return out


def build(rows: Iterable[dict[str, Any]], suite: dict[str, Any] | None = None) -> dict[str, Any]:
    """The leaderboard of a bench store's model rows (:meth:`SweepStore.models`): ``rows`` per attack
    setting and model, ``pairs`` (every pair of models of one attack setting), ``cells`` (the drill-down),
    ``machines`` (every machine label seen) and ``notes``.

    A defense is measured against the clean and undefended models of its own run (store cell): its accuracy
    cost against that run's clean model, its McNemar pair with the undefended model on that run's poisoned
    model. They are the first run's unless the model cache missed between runs and the models were trained
    again; the undefended model's own row is the first run's."""
    rows = list(rows)
    by_cell = group_cells(rows)
    refs = run_references(rows)

    def reference(key: str, name: str, of: str) -> dict[str, Any]:
        """Model ``of`` (clean or undefended) as model ``name`` of suite cell ``key`` faced it."""
        return refs.get(by_cell[key][name]["cell_id"], {}).get(of) or by_cell[key][of]
    attacks: dict[str, list[str]] = {}
    for key in by_cell:
        attacks.setdefault(json.loads(key)["attack"], []).append(key)
    board_rows, pairs, drill, notes = [], [], [], []
    machines: Counter[str] = Counter()
    for attack, keys in attacks.items():
        names = sorted({n for k in keys for n in by_cell[k] if n != "clean"}, key=lambda n: (n != UNDEFENDED, n))
        metric = "asr" if any(by_cell[k].get(UNDEFENDED, {}).get("backdoor_asr") is not None for k in keys) \
            else "success"
        shared = [k for k in keys if all(n in by_cell[k] for n in names) and "clean" in by_cell[k]]
        if len(shared) < len(keys):
            notes.append(f"{attack}: {len(keys) - len(shared)} of {len(keys)} cells lack a finished row of some "
                         "model and are left out of its comparison")
        success = {n: [cell_success(by_cell[k][n], metric) for k in shared] for n in names}
        # the undefended model's outcome as each defense's own run saw it
        faced = {n: [cell_success(reference(k, n, UNDEFENDED), metric) for k in shared] for n in names}
        attack_pairs = []
        for a, b in combinations(names, 2):
            # the undefended side of a pair is the undefended model the other side's run faced
            sa = faced[b] if a == UNDEFENDED else success[a]
            sb = faced[a] if b == UNDEFENDED else success[b]
            a_only = sum(x and not y for x, y in zip(sa, sb))
            b_only = sum(y and not x for x, y in zip(sa, sb))
            attack_pairs.append({"attack": attack, "a": a, "b": b, "a_only": a_only, "b_only": b_only,
                                 "p": mcnemar_exact(a_only, b_only)})
        for pair, adjusted in zip(attack_pairs, holm([p["p"] for p in attack_pairs])):
            pair["p_holm"] = adjusted
            pair["significant"] = adjusted < ALPHA
        beaten_by = Counter()
        for pair in attack_pairs:
            if pair["significant"]:  # fewer successes is better for the defender
                worse = pair["a"] if pair["a_only"] > pair["b_only"] else pair["b"]
                beaten_by[worse] += 1
        for n in names:
            members = [by_cell[k][n] for k in shared]
            labels = sorted({machine_label(m.get("cell_device"), m.get("cell_versions")) for m in members})
            machines.update(labels)
            drops = [reference(k, n, "clean")["test_accuracy"] - by_cell[k][n]["test_accuracy"] for k in shared
                     if by_cell[k][n].get("test_accuracy") is not None]
            wins = sum(success[n])
            lo, hi = wilson_interval(wins, len(shared))
            board_rows.append({
                "attack": attack, "model": n, "metric": metric, "n": len(shared), "successes": wins,
                "rate": wins / len(shared) if shared else None, "ci_low": lo, "ci_high": hi,
                "mean_asr": mean([m["backdoor_asr"] for m in members if m.get("backdoor_asr") is not None]),
                "acc_cost": mean(drops), "acc_cost_ci": t_interval(drops),
                "auroc": mean([a for a in map(detection_auroc, members) if a is not None]),
                "seconds": mean([s for s in map(model_seconds, members) if s is not None]),
                "rank": 1 + beaten_by[n], "machines": labels})
        pairs += attack_pairs
        for k in shared:
            cell = json.loads(k)
            drill.append({"attack": attack, "key": f"seed={cell['seed']}, target_index={cell['target_index']}",
                          "models": {n: {"success": cell_success(m, metric), "test_accuracy": m.get("test_accuracy"),
                                         "backdoor_asr": m.get("backdoor_asr"), "cell_id": m["cell_id"]}
                                     for n, m in by_cell[k].items()}})
    diverging = diverging_models(rows)
    if diverging:
        notes.append(f"{len(diverging)} cells ran their defenses on different clean or poisoned models (the model "
                     "cache missed between runs): each defense is compared with the undefended model of its own run, "
                     "but defenses of different runs faced different poisoned models there (run every defense into "
                     "a new store to compare them on one model): "
                     + "; ".join(diverging[:5]) + ("; ..." if len(diverging) > 5 else ""))
    if len(machines) > 1:
        notes.append("rows come from different machines or versions: " + "; ".join(sorted(machines)) +
                     " (CPU kinds differ in their kernels: rerun the built-ins on one machine to compare exactly)")
    board_rows.sort(key=lambda r: (r["attack"], r["rank"], r["rate"] if r["rate"] is not None else 2, r["model"]))
    return {"suite": suite or {}, "rows": board_rows, "pairs": pairs, "cells": drill,
            "machines": sorted(machines), "notes": notes}


def row_cells(r: dict[str, Any]) -> list[str]:
    """One leaderboard row as the console and report.md show it."""
    cost = pct(r["acc_cost"])
    if r["acc_cost_ci"]:
        cost += f" ({pct(r['acc_cost_ci'][0])} to {pct(r['acc_cost_ci'][1])})"
    rate = "-" if r["rate"] is None else f"{r['successes']}/{r['n']} = {r['rate']:.0%}"
    return [r["attack"], str(r["rank"]), r["model"], rate, f"{r['ci_low']:.0%}-{r['ci_high']:.0%}",
            pct(r["mean_asr"]), cost, "-" if r["auroc"] is None else f"{r['auroc']:.3f}",
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}"]


HEAD = ["attack", "rank", "model", "success", "95% CI", "mean ASR", "acc. cost (95% CI)", "AUROC", "seconds"]


def text_table(board: dict[str, Any]) -> str:
    lines = [HEAD] + [row_cells(r) for r in board["rows"]]
    width = [max(len(row[i]) for row in lines) for i in range(len(HEAD))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in lines)


def markdown(board: dict[str, Any]) -> str:
    s = board["suite"]
    lines = ["# ptk bench leaderboard", ""]
    if s:
        lines += [f"suite **{s.get('name')}** version {s.get('version')}: {s.get('description', '')}", ""]
    lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in board["rows"]]
    lines += ["", "## Paired comparisons", "",
              "McNemar's exact test on per-cell success over the cells both models share; p Holm-corrected over "
              "the pairs of one attack setting. only A / only B: cells where the attack succeeded against one "
              "model and not the other.", "",
              "| attack | A | B | only A | only B | p | p (Holm) | significant |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['attack']} | {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p']:.3g} | "
              f"{p['p_holm']:.3g} | {'yes' if p['significant'] else 'no'} |" for p in board["pairs"]]
    lines += ["", "success: cells where the attack got its way against the model (targeted: the target is "
              f"predicted as the attacker's class; backdoor: at least {ASR_TOOK:.0%} of triggered test images "
              "reach the trigger's class), with a 95% Wilson interval; lower is better for a defense. rank: 1 + "
              f"the number of models with significantly fewer successes (Holm-adjusted p < {ALPHA}); equal ranks "
              "are ties. acc. cost: the clean model's test accuracy minus this model's, per cell (mean, 95% t "
              "interval). AUROC: of a removal defense's suspicion scores against the true poison. seconds: "
              "what the model cost per cell: a defense's whole time (analysis and trainings), the clean or poisoned "
              "model's training; a model read from the cache counts the time it took when it was trained.", ""]
    if board["machines"]:
        lines += ["machines: " + "; ".join(board["machines"]), ""]
    lines += [f"- {n}" for n in board["notes"]]
    return "\n".join(lines) + "\n"
