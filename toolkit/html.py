"""report.html: one self-contained page per report, for a run, a sweep and a bench leaderboard.

A page is one file that opens from disk in any browser, offline and years later: its CSS and script are
inline, plots are inline SVG and images ``data:`` URIs, and it references nothing on a network. The shared
pieces are a sortable table (click a header; a cell's ``data-sort`` holds its value, so "12.3%" sorts as
12.3 and "-" sorts last), an interval drawn in a cell (a rate with its 95% interval as a bar and a dot) and a
drill-down (a row that expands to its cells). Pages are Jinja2 templates in ``templates/``, autoescaped: a
plugin's name or error message is shown, never run. Each page is rebuilt from what results.json,
the sweep store or the leaderboard dict holds; a run's pixels (:class:`RunImages`) are extra, and a page
without them shows the rest.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from .atomic import write_text
from .plots import new_figure, svg_text
from .rates import REPEATS, Rate, settings_label
from .report import columns, table_rows
from .results import model_seconds
from .sweep_report import PLOTS, cells_of, head, optional_columns, pct, plot_names
from .version import __version__

TEMPLATES = Path(__file__).parent / "templates"
#: A run page shows at most this many poisoned training images: enough to see what the attack did.
MAX_THUMBS = 16
#: Thumbnails are scaled up (nearest neighbour: the pixels stay pixels) to at least this many pixels wide.
THUMB_PX = 64
#: Above this many classes, the target's probabilities show only the source, target and predicted classes.
MAX_CLASS_COLUMNS = 12


# --- the pieces every page shares --------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    """An interval drawn in a table cell: percentages of the cell's width for the interval's start and width,
    the point estimate's dot and (for a signed quantity) where zero lies."""

    left: float
    width: float
    dot: float
    zero: float | None = None


@dataclass
class Cell:
    """One table cell: the text shown, the value it sorts by (None: sorts last), an optional drawn interval."""

    text: str
    sort: float | str | None = None
    bar: Bar | None = None
    cls: str = ""


@dataclass
class Row:
    """A table row; ``detail``, a table of its own, is the drill-down shown when the row is clicked."""

    cells: list[Cell]
    detail: Table | None = None


@dataclass
class Table:
    """A sortable table. ``id`` names it in the page (tests and links find it by that)."""

    id: str
    head: list[str]
    rows: list[Row] = field(default_factory=list)

    @property
    def grouped(self) -> bool:
        """Whether any row drills down: then each row and its detail row sit in one ``<tbody>``, which is what
        the script sorts, so a detail row travels with its row."""
        return any(r.detail is not None for r in self.rows)


def sort_value(text: str) -> float | str | None:
    """What a formatted cell sorts by: "12.3%" and "0.912" as numbers, yes/no as 1/0, "-" and "" last (None),
    anything else as text (the script compares text numeric-aware: "run 2" before "run 10")."""
    t = text.strip()
    if t in ("", "-"):
        return None
    if t in ("yes", "no"):
        return 1.0 if t == "yes" else 0.0
    try:
        return float(t[:-1]) if t.endswith("%") else float(t)
    except ValueError:
        return t


def cell(text: str, sort: float | str | None | bool = False, bar: Bar | None = None, cls: str = "") -> Cell:
    """A cell whose sort value is ``sort``, or (when not given) read from ``text`` by :func:`sort_value`."""
    return Cell(text, sort_value(text) if sort is False else sort, bar, cls)


def interval_bar(value: float | None, lo: float | None, hi: float | None, start: float = 0.0,
                 end: float = 1.0) -> Bar | None:
    """``value`` and its interval ``[lo, hi]`` on the axis ``[start, end]`` (clamped to it) as a :class:`Bar`;
    None without a value. A zero mark where 0 lies strictly inside the axis (an accuracy cost can be negative)."""
    if value is None or end <= start:
        return None
    lo, hi = value if lo is None else lo, value if hi is None else hi

    def at(v: float) -> float:
        return round(100 * min(max((v - start) / (end - start), 0.0), 1.0), 2)

    return Bar(at(lo), round(at(hi) - at(lo), 2), at(value), at(0.0) if start < 0 < end else None)


def signed_axis(values: Iterable[float | None], least: float = 0.01) -> tuple[float, float]:
    """A symmetric axis ``[-m, m]`` holding every value (at least ``least`` wide each way), so the cells of
    one column share one scale and zero sits in the middle."""
    m = max([abs(v) for v in values if v is not None] + [least])
    return -m, m


def png_data_uri(image: Any, min_px: int = THUMB_PX) -> str:
    """A uint8 image (C, H, W) or (H, W), as a numpy array or tensor, as a PNG ``data:`` URI, scaled up by
    a whole factor to at least ``min_px`` wide with nearest-neighbour (a 32x32 digit stays crisp)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(image.cpu() if hasattr(image, "cpu") else image, dtype=np.uint8)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    scale = max(1, -(-min_px // a.shape[1]))
    img = Image.fromarray(np.ascontiguousarray(a)).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment: templates from ``templates/``, autoescape on for every template (a plugin's
    strings are data), a missing variable an error rather than an empty string."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    # the page's own style and script, inlined as they are (read here, not parsed as templates)
    env.globals.update(version=__version__, css=Markup((TEMPLATES / "report.css").read_text()),
                       script=Markup((TEMPLATES / "report.js").read_text()))
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def inline_svg(fig) -> Any:
    """A matplotlib figure as markup to place in a page (trusted: ptk drew it)."""
    from markupsafe import Markup

    return Markup(svg_text(fig))


def keyed_table(table_id: str, rows: Sequence[dict[str, Any]]) -> Table:
    """A plain table of dicts (one column per key, in first-seen order): a drill-down's cells."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return Table(table_id, keys, [Row([cell(show(r.get(k))) for k in keys]) for r in rows])


def show(value: Any) -> str:
    """A value as a drill-down cell shows it: shares as percentages would be a guess, so numbers as numbers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# --- a run --------------------------------------------------------------------------------------------------

@dataclass
class Thumb:
    """One image a run page shows: ``image`` uint8 (C, H, W); ``before``, the unpoisoned original where an
    attack changed the pixels."""

    image: Any
    caption: str
    before: Any = None


@dataclass
class RunImages:
    """The pixels a run page shows, which results.json does not hold: the target image, the first
    :data:`MAX_THUMBS` poisoned training images (of ``poisoned_total``) and, for a backdoor, a test image
    clean and triggered."""

    target: Any = None
    poisoned: list[Thumb] = field(default_factory=list)
    poisoned_total: int = 0
    backdoor: list[Thumb] = field(default_factory=list)


def model_detail(m: dict[str, Any]) -> Table | None:
    """A run model's extras (threat model, a defense's details, an ensemble's votes), as its drill-down."""
    skip = {"name", "test_accuracy", "target_probs", "target_pred", "attack_success", "backdoor_asr",
            "removed_indices", "removed_count", "removal_precision", "removal_recall", "suspicion_auroc",
            "suspicion_roc", "train_seconds", "rejected_clean", "rejected_triggered"}
    extra = [{"field": k, "value": show(v)} for k, v in m.items() if k not in skip]
    return keyed_table(f"detail-{m['name']}", extra) if extra else None


def run_table(results: dict[str, Any]) -> Table:
    """report.md's model table (the same columns and cells), sortable, each row drilling down to its extras."""
    return Table("models", columns(results),
                 [Row([cell(t) for t in texts], model_detail(m))
                  for m, texts in zip(results["models"], table_rows(results))])


def probability_rows(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The classes to show and, per model that did not fail, its probability of each for the target image."""
    t = results.get("target") or {}
    models = [m for m in results["models"] if not m.get("failed") and m.get("target_probs")]
    classes = list(results.get("data", {}).get("classes") or (models[0]["target_probs"] if models else []))
    if len(classes) > MAX_CLASS_COLUMNS:
        wanted = {t.get("source_class"), t.get("target_class"), *(m.get("target_pred") for m in models)}
        classes = [c for c in classes if c in wanted]
    rows = [{"name": m["name"], "pred": m.get("target_pred"),
             "probs": [(c, m["target_probs"].get(c, 0.0)) for c in classes]} for m in models]
    return classes, rows


def roc_svg(results: dict[str, Any]) -> Any | None:
    """Every defense's ROC curve of its suspicion scores in one plot (None when no defense scored)."""
    curves = [m for m in results["models"] if m.get("suspicion_roc")]
    if not curves:
        return None
    fig, ax = new_figure(figsize=(4.8, 4.2))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")
    for m in curves:
        roc = m["suspicion_roc"]
        ax.plot(roc["fpr"], roc["tpr"], lw=1.8, label=f"{m['name']} (AUROC {m['suspicion_auroc']:.3f})")
    ax.set_xlabel("clean samples flagged (false positive rate)")
    ax.set_ylabel("poisoned samples flagged (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("Suspicion scores against the true poison")
    ax.legend(fontsize=8, loc="lower right")
    return inline_svg(fig)


def run_page(results: dict[str, Any], images: RunImages | None = None) -> str:
    """A run's page from its results.json dict, with the pixels of ``images`` where given."""
    t = results.get("target") or {}
    classes, probs = probability_rows(results)
    recipe = results.get("resolved", {}).get("recipe")
    uri = png_data_uri
    return render("run.html.j2", r=results, t=t, main=run_table(results), classes=classes, probs=probs,
                  recipe=recipe.get("name", recipe) if isinstance(recipe, dict) else recipe,
                  roc=roc_svg(results), poison_count=len((results.get("attack") or {}).get("poison_indices", [])),
                  target_image=uri(images.target) if images and images.target is not None else None,
                  poisoned=[(uri(p.image), None if p.before is None else uri(p.before), p.caption)
                            for p in images.poisoned] if images else [],
                  poisoned_total=images.poisoned_total if images else 0,
                  backdoor=[(uri(p.image), p.caption) for p in images.backdoor] if images else [])


def write_run_html(out: Path, results: dict[str, Any], images: RunImages | None = None) -> Path:
    """``out``/report.html for a run (written atomically); its path."""
    path = Path(out) / "report.html"
    write_text(path, run_page(results, images))
    return path


# --- a sweep ------------------------------------------------------------------------------------------------

def group_key(row: dict[str, Any]) -> tuple[str, str]:
    """The (setting, model) a sweep store row counts toward, as :func:`ptk.rates.success_rates` groups them."""
    values = json.loads(row["grid_values"])
    return json.dumps({k: v for k, v in values.items() if k not in REPEATS}, sort_keys=True), row["name"]


def sweep_cells(rows: Sequence[dict[str, Any]], asr: bool, filters: bool) -> dict[tuple[str, str], list[dict]]:
    """Per (setting, model), its cells as the drill-down lists them: which repetition, the target, what came
    out, and the accuracy drop from the same cell's clean model."""
    clean = {r["cell_id"]: r["test_accuracy"] for r in rows if r["name"] == "clean" and not r["failed"]}
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        values = json.loads(r["grid_values"])
        drop = None
        if r["test_accuracy"] is not None and clean.get(r["cell_id"]) is not None and r["name"] != "clean":
            drop = pct(clean[r["cell_id"]] - r["test_accuracy"])
        out.setdefault(group_key(r), []).append({
            "cell": r["cell_id"][:10], "repeat": settings_label({k: v for k, v in values.items() if k in REPEATS}),
            "seed": r["seed"], "target": r["target_index"],
            "source -> target": f"{r['source_class']} -> {r['target_class']}",
            "success": None if r["attack_success"] is None else bool(r["attack_success"]),
            "P(target)": pct(r["target_p_target"]), "test acc": pct(r["test_accuracy"]), "acc drop": drop,
            **({"backdoor ASR": pct(r.get("backdoor_asr"))} if asr else {}),
            **({"rejected clean": pct(r.get("rejected_clean")),
                "rejected triggered": pct(r.get("rejected_triggered"))} if filters else {}),
            "removed": r["removed_count"], "precision": pct(r["removal_precision"]),
            "recall": pct(r["removal_recall"]),
            "AUROC": None if r["suspicion_auroc"] is None else f"{r['suspicion_auroc']:.3f}",
            "seconds": None if model_seconds(r) is None else round(model_seconds(r), 1),
            "failed": (r["error"] or "yes") if r["failed"] else None,
        })
    return out


def rate_row(r: Rate, cols: list[str], cells_by_group: dict[tuple[str, str], list[dict]],
             drop_axis: tuple[float, float], index: int) -> Row:
    """One rate as a sortable row: its success rate with the Wilson interval drawn, its accuracy drop with
    its t interval drawn, and its cells as the drill-down."""
    texts = cells_of(r, *optional_columns(cols))
    lo, hi = r.interval
    drop = None if r.model == "clean" else r.accuracy_drop
    drop_ci = r.accuracy_drop_ci or (None, None)
    special = {"attack success": cell(texts[cols.index("attack success")], r.rate, interval_bar(r.rate, lo, hi)),
               "95% CI": cell(texts[cols.index("95% CI")], lo if r.n else None),
               "acc drop (95% CI)": cell(texts[cols.index("acc drop (95% CI)")], drop,
                                         interval_bar(drop, *drop_ci, *drop_axis))}
    key = (json.dumps(r.setting, sort_keys=True), r.model)
    members = cells_by_group.get(key, [])
    detail = keyed_table(f"cells-{index}", members) if members else None
    return Row([special.get(c) or cell(text) for c, text in zip(cols, texts)], detail)


def sweep_page(rates: list[Rate], counts: dict[str, int], rows: Iterable[dict[str, Any]] = ()) -> str:
    """A sweep's page: the rates table (drilling down to each group's cells from the store's ``rows``, as
    :meth:`ptk.sweepstore.SweepStore.models` yields them) and the plots, as SVG."""
    rows = list(rows)
    cols = head(rates)
    by_group = sweep_cells(rows, *optional_columns(cols))
    axis = signed_axis(v for r in rates if r.model != "clean"
                       for v in (r.accuracy_drop, *(r.accuracy_drop_ci or ())))
    table = Table("rates", cols, [rate_row(r, cols, by_group, axis, i) for i, r in enumerate(rates)])
    plots = [inline_svg(PLOTS[name](rates)) for name in plot_names(rates)]
    return render("sweep.html.j2", counts=counts, main=table, plots=plots, cell_count=len({r["cell_id"] for r in rows}))


def write_sweep_html(out: Path, rates: list[Rate], counts: dict[str, int],
                     rows: Iterable[dict[str, Any]] = ()) -> Path:
    """``out``/report.html for a sweep (written atomically); its path."""
    path = Path(out) / "report.html"
    write_text(path, sweep_page(rates, counts, rows))
    return path


# --- a bench leaderboard -----------------------------------------------------------------------------------

def leaderboard_row(row: dict[str, Any], cells: list[dict[str, Any]], cost_axis: tuple[float, float],
                    index: int) -> Row:
    """One leaderboard entry: rank, rate with its interval drawn, accuracy cost with its interval drawn, and
    the attack's cells for this model as the drill-down."""
    n, wins, rate = row.get("n"), row.get("successes"), row.get("rate")
    lo, hi = row.get("ci_low"), row.get("ci_high")
    # a success rate shows its count; a mean (backdoor ASR over cells) does not add up to one
    counted = rate is not None and bool(n) and wins is not None and abs(wins / n - rate) < 5e-4
    rate_text = "-" if rate is None else (f"{wins}/{n} = {rate:.0%}" if counted else f"{rate:.0%}, n={n}") \
        + ("" if lo is None else f" ({lo:.0%}-{hi:.0%})")
    cost, cost_ci = row.get("acc_cost"), row.get("acc_cost_ci") or (None, None)
    cost_text = pct(cost) + (f" ({pct(cost_ci[0])} to {pct(cost_ci[1])})" if cost_ci[0] is not None else "")
    auroc, seconds = row.get("auroc"), row.get("seconds")
    mine = [{"cell": c.get("key"), **c["models"][row["model"]]} for c in cells
            if c.get("attack") == row.get("attack") and row.get("model") in (c.get("models") or {})]
    return Row([
        cell(str(row.get("attack", ""))), cell(str(row.get("model", ""))), cell(str(row.get("metric", ""))),
        cell("-" if row.get("rank") is None else str(row["rank"])),
        cell(rate_text, rate, interval_bar(rate, lo, hi)),
        cell(cost_text, cost, interval_bar(cost, *cost_ci, *cost_axis)),
        cell("-" if auroc is None else f"{auroc:.3f}"), cell("-" if seconds is None else f"{seconds:.1f}"),
        cell(", ".join(row.get("machines") or []) or "-", cls="wrap"),
    ], keyed_table(f"bench-cells-{index}", mine) if mine else None)


LEADERBOARD_HEAD = ["attack", "model", "metric", "rank", "rate (95% CI)", "accuracy cost (95% CI)", "AUROC",
                    "seconds", "machines"]
PAIRS_HEAD = ["attack", "a", "b", "a only", "b only", "p", "p (Holm)", "significant"]


def bench_page(board: dict[str, Any]) -> str:
    """A bench leaderboard's page: the leaderboard (each row drilling down to its cells) and the pairwise
    comparisons, a significant difference (after Holm's correction) marked."""
    rows, cells = board.get("rows") or [], board.get("cells") or []
    axis = signed_axis(v for r in rows for v in (r.get("acc_cost"), *(r.get("acc_cost_ci") or ())))
    board_table = Table("leaderboard", LEADERBOARD_HEAD, [leaderboard_row(r, cells, axis, i) for i, r in enumerate(rows)])

    def p_cell(p: float | None) -> Cell:
        return cell("-" if p is None else f"{p:.3g}", p)

    pairs = Table("pairs", PAIRS_HEAD, [Row([
        cell(str(p.get("attack", ""))), cell(str(p.get("a", ""))), cell(str(p.get("b", ""))),
        cell(str(p.get("a_only", "-"))), cell(str(p.get("b_only", "-"))), p_cell(p.get("p")), p_cell(p.get("p_holm")),
        cell("yes" if p.get("significant") else "no", cls="sig" if p.get("significant") else ""),
    ]) for p in board.get("pairs") or []])
    return render("bench.html.j2", suite=board.get("suite") or {}, board=board_table, pairs=pairs,
                  notes=board.get("notes") or [])


def write_bench_html(out: Path, board: dict[str, Any]) -> Path:
    """``out``/report.html for a bench leaderboard (written atomically); its path."""
    path = Path(out) / "report.html"
    write_text(path, bench_page(board))
    return path
