"""What a run writes: results.json, report.md, target_probs.png (and backdoor_asr.png after a backdoor attack),
and the console table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import write_bytes, write_json, write_text
from .plots import new_figure, png_bytes

COLUMNS = ("model", "test acc", "P(source)", "P(target)", "pred", "success", "removed", "precision", "recall",
           "AUROC", "train s")
#: A backdoor attack's runs add this column after "success": each model's attack success rate on triggered images.
ASR_COLUMN = "ASR"
#: A run with a test-time input filter adds these after "recall": the shares of clean and triggered test images rejected.
REJECT_COLUMNS = ("rej. clean", "rej. trig.")


def columns(results: dict[str, Any]) -> list[str]:
    """The table's columns: COLUMNS, with ASR after "success" when a model row has a ``backdoor_asr``."""
    cols = list(COLUMNS)
    if has_asr(results):
        cols.insert(cols.index("success") + 1, ASR_COLUMN)
    if has_filter(results):
        at = cols.index("recall") + 1
        cols[at:at] = REJECT_COLUMNS
    return cols


def has_asr(results: dict[str, Any]) -> bool:
    return any("backdoor_asr" in m for m in results["models"])


def has_filter(results: dict[str, Any]) -> bool:
    return any("rejected_clean" in m for m in results["models"])


def fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if pct:
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    src = results.get("target", {}).get("source_class")
    tgt = results.get("target", {}).get("target_class")
    asr, filters = has_asr(results), has_filter(results)
    rows = []
    for m in results["models"]:
        if m.get("failed"):
            rows.append([m["name"], "FAILED: " + m["error"][:60]] + [""] * (len(columns(results)) - 2))
            continue
        probs = m["target_probs"]
        rows.append([
            m["name"], fmt(m["test_accuracy"], True), fmt(probs.get(src), True), fmt(probs.get(tgt), True),
            m["target_pred"], fmt(m["attack_success"]), *([fmt(m.get("backdoor_asr"), True)] if asr else []),
            fmt(m.get("removed_count")),
            fmt(m.get("removal_precision"), True), fmt(m.get("removal_recall"), True),
            *([fmt(m.get("rejected_clean"), True), fmt(m.get("rejected_triggered"), True)] if filters else []),
            fmt(auroc_text(m)), fmt(m.get("train_seconds")),
        ])
    return rows


def auroc_text(m: dict[str, Any]) -> str | None:
    """A model's AUROC cell: its suspicion scores' (training set), or a test-time detector's filter AUROC."""
    auroc = m.get("suspicion_auroc", m.get("filter_auroc"))
    return None if auroc is None else f"{auroc:.3f}"


def text_table(results: dict[str, Any]) -> str:
    rows = [columns(results)] + table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    t = results.get("target", {})
    cfg = results["config"]
    cols = columns(results)
    trigger = results.get("attack", {}).get("trigger")
    lines = [
        "# ptk report", "",
        f"- data set: {results['data']['name']} ({results['data']['train_size']} train / "
        f"{results['data']['test_size']} test images)",
        f"- model: {cfg['model']}, recipe: {results['resolved']['recipe']}",
        f"- attack: {cfg['attack']}, target: test image {t.get('index')} ({t.get('source_class')} -> "
        f"{t.get('target_class')}), poisoned samples: {len(results.get('attack', {}).get('poison_indices', []))}",
        *([f"- backdoor trigger: {trigger['description']} -> class {trigger['target_class']}"] if trigger else []),
        *[f"- skipped by --defense all: {name}: {why}" for name, why in (results.get("skipped_defenses") or {}).items()],
        f"- seed: {cfg['seed']}, device: {results['resolved']['device']}, status: {results['status']}",
        "- plugins: " + ", ".join(f"{name} ({p['distribution']} {p['version']})"
                                  for name, p in results.get("plugins", {}).items()), "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    lines += ["", "P(source) / P(target): probability the model gives the target image for its true (source) "
              "class and for the attacker's target class. success: the target image is predicted as the target "
              "class. " + ("ASR: the backdoor's attack success rate, the share of test images not of the trigger's "
              "target class that the model assigns to it once the trigger is stamped on them. " if ASR_COLUMN in cols
              else "") + ("rej. clean / rej. trig.: the share of clean and of triggered test images a test-time "
              "filter refuses to classify (a refused input counts as a failed attack). " if REJECT_COLUMNS[0] in cols
              else "") + "precision / recall: of the samples a defense removed, against the attack's true poison. "
              "AUROC: of the defense's per-sample suspicion scores against the true poison, whatever its cut "
              "(0.5 = chance, 1 = every poisoned sample above every clean one); for a test-time detector, of its "
              "per-input scores, triggered against clean test images.", ""]
    if has_backdoor_chart(results):
        lines += ["![attack success rate and clean accuracy per model](backdoor_asr.png)", ""]
    for m in results["models"]:
        extra = {k: v for k, v in m.items() if k in ("threat_model", "details", "target_votes",
                 "target_certified_tolerance", "budget_exceeds_certificate", "mean_weight_poison",
                 "mean_weight_clean", "target_rejected")}
        if extra:
            lines.append(f"## {m['name']}")
            lines += [f"- {k}: {v}" for k, v in extra.items()]
            lines.append("")
    return "\n".join(lines)


def chart_png(results: dict[str, Any]) -> bytes:
    """The study's chart: source vs target-class probability of the target image, per model."""
    t = results["target"]
    models = [m for m in results["models"] if not m.get("failed")]
    names = [m["name"] for m in models]
    src = [m["target_probs"][t["source_class"]] for m in models]
    tgt = [m["target_probs"][t["target_class"]] for m in models]
    fig, ax = new_figure(figsize=(max(5, 1.2 * len(names) + 2), 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], src, 0.4, label=f"P({t['source_class']})")
    ax.bar([x + 0.2 for x in xs], tgt, 0.4, label=f"P({t['target_class']})")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability for the target image")
    ax.set_title(f"Target test image {t['index']}: {t['source_class']} vs {t['target_class']}")
    ax.legend()
    return png_bytes(fig)


def asr_chart_png(results: dict[str, Any]) -> bytes:
    """A backdoor run's chart: per model, the attack success rate on triggered test images beside clean test
    accuracy (what the defense cost), and a test-time filter's rejection shares where there is one."""
    models = [m for m in results["models"] if not m.get("failed") and m.get("backdoor_asr") is not None]
    names = [m["name"] for m in models]
    bars = [("backdoor ASR", "backdoor_asr"), ("clean test accuracy", "test_accuracy")]
    if any("rejected_clean" in m for m in models):
        bars += [("rejected: triggered", "rejected_triggered"), ("rejected: clean", "rejected_clean")]
    width = 0.8 / len(bars)
    fig, ax = new_figure(figsize=(max(5, 1.3 * len(names) + 2) + 2, 4))
    for i, (label, key) in enumerate(bars):
        xs = [x - 0.4 + width * (i + 0.5) for x in range(len(names))]
        ax.bar(xs, [m.get(key) or 0.0 for m in models], width, label=label)
    ax.set_xticks(list(range(len(names))), names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of test images")
    trigger = results["attack"]["trigger"]
    ax.set_title(f"Backdoor to {trigger['target_class']!r}: attack success vs clean accuracy")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    return png_bytes(fig)


def has_backdoor_chart(results: dict[str, Any]) -> bool:
    return bool((results.get("attack") or {}).get("trigger")) and has_asr(results)


def write_results(out: Path, results: dict[str, Any]) -> None:
    write_json(out / "results.json", results)


def write_report(out: Path, results: dict[str, Any]) -> None:
    write_results(out, results)
    write_text(out / "report.md", markdown(results))
    if results.get("target") and results["models"]:
        write_bytes(out / "target_probs.png", chart_png(results))
    if has_backdoor_chart(results):
        write_bytes(out / "backdoor_asr.png", asr_chart_png(results))
    else:  # a run --overwrite'n into a backdoor run's folder must not leave that run's chart beside its own
        (out / "backdoor_asr.png").unlink(missing_ok=True)
