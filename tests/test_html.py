"""report.html in a real browser: each page kind (a run, a sweep, a bench leaderboard) loads in headless
Chromium without a script error or a network request, its table holds what the report is about, a header
click sorts by the cell values (numbers as numbers, blanks last), and a row drills down to its cells.

Chromium is driven with ``--dump-dom`` on an instrumented copy of the page: a script injected first in
``<head>`` records errors, then on load clicks a header twice and a row once and writes what it saw into a
``<pre id="ptk-probe">`` that the test parses. Without Chromium these tests skip, unless
PTK_REQUIRE_BROWSER=1 (CI), where they fail. Screenshots land in $PTK_ARTIFACTS/html (or the test's tmp_path).
"""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ptk.data import Dataset
from ptk.evaluate import suspicion_auroc, suspicion_roc
from ptk.html import bench_page, run_page, sort_value, write_bench_html, write_run_html
from ptk.types import Poisoning, Target, Trigger

from .fixtures import load_results

#: A run small enough to train three models in seconds on one thread (the attack need not succeed: the page
#: is what is tested); a loss-outliers defense for a suspicion ROC.
RUN = ["--preset", "quick", "--subset", "300", "--test-subset", "100", "--epochs", "1", "-o", "resnet18.width=8",
       "-o", "labelflip.budget=20"]
#: The same settings as a sweep over two seeds: seed 0's models come from RUN's cache entries.
GRID = """preset = "quick"
subset = 300
test_subset = 100
epochs = 1
defenses = ["none"]
[options.resnet18]
width = 8
[options.labelflip]
budget = 20
[grid]
seed = [0, 1]
"""

PROBE = """<script>
window.__ptkErrors = [];
window.addEventListener("error", function (e) { __ptkErrors.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) { __ptkErrors.push("rejection: " + e.reason); });
(function () {
  var original = console.error;
  console.error = function () {
    __ptkErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
window.addEventListener("load", function () {
  var out = {errors: __ptkErrors};
  try {
    var table = document.getElementById(%(table)s);
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var col = heads.findIndex(function (th) { return th.textContent.trim() === %(column)s; });
    out.column = col;
    var rows = function () {
      var all = [];
      Array.prototype.forEach.call(table.tBodies, function (b) {
        Array.prototype.forEach.call(b.rows, function (r) { if (!r.classList.contains("detail")) all.push(r); });
      });
      return all;
    };
    var snapshot = function () {
      return rows().map(function (r) {
        return {key: r.cells[0].textContent.trim() + " | " + r.cells[1].textContent.trim(),
                sort: r.cells[col].getAttribute("data-sort")};
      });
    };
    out.names = rows().map(function (r) { return r.cells[%(name_col)d].textContent.trim(); });
    out.before = snapshot();
    heads[col].click();
    out.ascending = snapshot();
    out.aria_ascending = heads[col].getAttribute("aria-sort");
    heads[col].click();
    out.descending = snapshot();
    out.aria_descending = heads[col].getAttribute("aria-sort");
    out.detail_rows = table.querySelectorAll(":scope > tbody > tr.detail").length;
    var first = table.querySelector("tr.has-detail");
    if (first) {
      var detail = first.nextElementSibling;
      out.drill = {hidden_before: detail.hidden, row: first.cells[0].textContent.trim()};
      first.click();
      out.drill.hidden_after = detail.hidden;
      out.drill.cells = Array.prototype.map.call(detail.querySelectorAll(":scope table > tbody > tr"), function (r) {
        return Array.prototype.map.call(r.cells, function (c) { return c.textContent.trim(); });
      });
      out.drill.head = Array.prototype.map.call(detail.querySelectorAll(":scope table > thead th"),
                                                function (c) { return c.textContent.trim(); });
    }
    out.images = Array.prototype.map.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; });
    out.svgs = document.querySelectorAll("svg").length;
    out.resources = performance.getEntriesByType("resource").map(function (e) { return e.name; })
      .filter(function (n) { return n.indexOf("data:") !== 0; });
  } catch (e) {
    out.errors.push("probe: " + e);
  }
  var pre = document.createElement("pre");
  pre.id = "ptk-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The Chromium binary; a skip where there is none, a failure where PTK_REQUIRE_BROWSER=1 (CI)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("PTK_REQUIRE_BROWSER"):
        pytest.fail("PTK_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
    pytest.skip("no chromium installed")


def headless(*args: str) -> subprocess.CompletedProcess:
    # root needs --no-sandbox; the virtual time budget lets the load handler run before the DOM is dumped
    done = subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def artefacts(tmp_path: Path) -> Path:
    out = Path(os.environ["PTK_ARTIFACTS"]) / "html" if os.environ.get("PTK_ARTIFACTS") else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def browse(page: Path, table: str, column: str, tmp_path: Path, name_col: int = 0) -> dict:
    """Load an instrumented copy of ``page`` (beside it, so relative paths would resolve alike) in Chromium,
    sort ``table`` by ``column`` twice and open its first drill-down; what the probe saw. A screenshot of the
    page itself is kept as a test artefact."""
    text = page.read_text(encoding="utf-8")
    probe = PROBE % {"table": json.dumps(table), "column": json.dumps(column), "name_col": name_col}
    copy = page.with_name("probed-" + page.name)
    copy.write_text(text.replace("<head>", "<head>\n" + probe, 1), encoding="utf-8")
    dom = headless("--dump-dom", copy.resolve().as_uri()).stdout
    found = re.search(r'<pre id="ptk-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe wrote nothing; the DOM ends:\n{dom[-2000:]}"
    shot = artefacts(tmp_path) / f"{page.parent.name}-{page.stem}.png"
    headless(f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", page.resolve().as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(htmllib.unescape(found.group(1)))


def network_references(text: str) -> list[str]:
    """Every src/href/url() in a page that is neither a data: URI nor a fragment of the page itself."""
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', text) + re.findall(r"url\(\s*['\"]?([^)'\"]+)", text)
    return [r for r in refs if not r.startswith(("data:", "#"))] + re.findall(r"@import", text)


def assert_sorted(probe: dict) -> None:
    """The two header clicks: every row kept, numbers ascending then descending, blanks last both times."""
    keys = sorted(r["key"] for r in probe["before"])
    for order, direction in (("ascending", 1), ("descending", -1)):
        rows = probe[order]
        assert sorted(r["key"] for r in rows) == keys, order
        values = [r["sort"] for r in rows]
        numbers = [float(v) for v in values if v != ""]
        assert values[:len(numbers)] == [v for v in values if v != ""], f"blanks not last: {values}"
        assert numbers == sorted(numbers, reverse=direction < 0), f"{order}: {values}"
        assert probe[f"aria_{order}"] == order
    assert len(set(r["sort"] for r in probe["before"])) > 1, "the column has one value: nothing to sort"


def assert_clean_page(page: Path, probe: dict) -> None:
    assert probe["errors"] == []
    assert probe["resources"] == []
    assert all(probe["images"])
    assert network_references(page.read_text()) == []


# --- pages in the browser ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.browser
def test_run_page_from_ptk_run(ptk, tmp_path):
    out = tmp_path / "run"
    res = ptk("run", *RUN, "--defense", "loss-outliers", "--out", out)
    page = out / "report.html"
    assert str(page) in res.output
    r = load_results(out)
    probe = browse(page, "models", "test acc", tmp_path)
    assert_clean_page(page, probe)
    assert probe["names"] == [m["name"] for m in r["models"]] == ["clean", "poisoned", "loss-outliers"]
    assert_sorted(probe)
    assert probe["drill"]["hidden_before"] and not probe["drill"]["hidden_after"]
    # the pixels: the target and the first poisoned images (of 20), each with its label change; the ROC curve
    text = page.read_text()
    assert text.count('<img src="data:image/png;base64,') == 1 + 16
    assert len(re.findall(r"#\d+: 1 \u2192 7</figure>", text)) == 16
    assert probe["svgs"] >= 1 and 'id="roc"' in text
    roc = next(m for m in r["models"] if m["name"] == "loss-outliers")["suspicion_roc"]
    assert roc["fpr"][0] == roc["tpr"][0] == 0 and roc["fpr"][-1] == roc["tpr"][-1] == 1
    # rebuilt from results.json alone: no pixels, the rest still there
    rebuilt = run_page(r)
    assert "<img" not in rebuilt and 'id="models"' in rebuilt and 'id="roc"' in rebuilt


@pytest.mark.slow
@pytest.mark.browser
def test_sweep_page_from_ptk_sweep_report(ptk, tmp_path):
    grid, db = tmp_path / "g.toml", tmp_path / "s" / "sweep.db"
    grid.write_text(GRID)
    ptk("sweep", "run", grid, "--db", db)
    res = ptk("sweep", "report", db)
    page = db.parent / "report.html"
    assert str(page) in res.output
    probe = browse(page, "rates", "test acc", tmp_path, name_col=1)
    assert_clean_page(page, probe)
    assert probe["names"] == ["clean", "poisoned"]
    assert_sorted(probe)
    # every rate drills down to its cells: here one per seed
    assert probe["detail_rows"] == 2
    drill = probe["drill"]
    assert drill["hidden_before"] and not drill["hidden_after"]
    seeds = [row[drill["head"].index("seed")] for row in drill["cells"]]
    assert sorted(seeds) == ["0", "1"]
    assert "test acc" in drill["head"] and "success" in drill["head"]
    assert probe["svgs"] >= 1  # the accuracy-vs-success plot, inline


@pytest.mark.browser
def test_bench_page_from_a_leaderboard(tmp_path):
    page = write_bench_html(tmp_path / "bench", BOARD)
    probe = browse(page, "leaderboard", "rank", tmp_path, name_col=1)
    assert_clean_page(page, probe)
    assert sorted(probe["names"]) == sorted(r["model"] for r in BOARD["rows"])
    assert_sorted(probe)
    assert [float(r["sort"]) if r["sort"] else None for r in probe["ascending"]] == [1, 1, 2, 3, None]
    assert probe["detail_rows"] == 4  # the loss-outliers row of the backdoor attack has no cells
    drill = probe["drill"]
    assert not drill["hidden_after"] and drill["head"][0] == "cell" and len(drill["cells"]) == 2
    text = page.read_text()
    assert text.count('class="sig"') == 1


# --- the pieces, without a browser --------------------------------------------------------------------------

BOARD = {
    "suite": {"name": "quick", "version": 1, "description": "digits, two attacks, <two> defenses"},
    "rows": [
        {"attack": "labelflip budget=10", "model": "poisoned", "metric": "success", "n": 2, "successes": 2,
         "rate": 1.0, "ci_low": 0.34, "ci_high": 1.0, "acc_cost": 0.0, "acc_cost_ci": None, "auroc": None,
         "seconds": 12.3, "rank": 3, "machines": ["cpu / ptk 0.6.0 / torch 2.14.1"]},
        {"attack": "labelflip budget=10", "model": "loss-outliers", "metric": "success", "n": 2, "successes": 0,
         "rate": 0.0, "ci_low": 0.0, "ci_high": 0.66, "acc_cost": 0.012, "acc_cost_ci": [0.001, 0.02],
         "auroc": 0.91, "seconds": 20.5, "rank": 1, "machines": ["cpu / ptk 0.6.0 / torch 2.14.1"]},
        {"attack": "labelflip budget=10", "model": "ensemble", "metric": "success", "n": 2, "successes": 1,
         "rate": 0.5, "ci_low": 0.09, "ci_high": 0.91, "acc_cost": -0.004, "acc_cost_ci": [-0.01, 0.003],
         "auroc": None, "seconds": 41.0, "rank": 2, "machines": ["cpu / ptk 0.6.0 / torch 2.14.1"]},
        {"attack": "art-backdoor", "model": "poisoned", "metric": "asr", "n": 2, "successes": 2, "rate": 0.97,
         "ci_low": 0.34, "ci_high": 1.0, "acc_cost": 0.003, "acc_cost_ci": None, "auroc": None, "seconds": 9.0,
         "rank": 1, "machines": ["cuda / ptk 0.6.0 / torch 2.14.1"]},
        {"attack": "art-backdoor", "model": "<script>alert(1)</script>", "metric": "asr", "n": 0, "successes": 0,
         "rate": None, "ci_low": None, "ci_high": None, "acc_cost": None, "acc_cost_ci": None, "auroc": None,
         "seconds": None, "rank": None, "machines": []},
    ],
    "pairs": [
        {"attack": "labelflip budget=10", "a": "loss-outliers", "b": "poisoned", "a_only": 0, "b_only": 2,
         "p": 0.5, "p_holm": 1.0, "significant": False},
        {"attack": "labelflip budget=10", "a": "ensemble", "b": "poisoned", "a_only": 0, "b_only": 9,
         "p": 0.0039, "p_holm": 0.0078, "significant": True},
    ],
    "cells": [
        {"attack": "labelflip budget=10", "key": f"seed={s}, target_index=12",
         "models": {"poisoned": {"success": True, "test_accuracy": 0.91},
                    "loss-outliers": {"success": False, "test_accuracy": 0.9},
                    "ensemble": {"success": s == 0, "test_accuracy": 0.92}}} for s in (0, 1)
    ] + [{"attack": "art-backdoor", "key": f"seed={s}", "models": {"poisoned": {"success": True, "asr": 0.97}}}
         for s in (0, 1)],
}


def test_bench_page_escapes_what_plugins_and_suites_name():
    text = bench_page(BOARD)
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;two&gt; defenses" in text
    assert network_references(text) == []
    assert bench_page({"rows": []}).count("<table") == 1  # an empty board still renders


def test_cells_sort_by_their_values():
    assert [sort_value(t) for t in ("12.3%", "0.912", "yes", "no", "-", "", "clean")] == [12.3, 0.912, 1.0, 0.0,
                                                                                      None, None, "clean"]


def test_roc_is_thinned_to_at_most_101_points_from_0_0_to_1_1():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(5000, generator=g)
    poison = torch.arange(0, 5000, 7)
    scores[poison] += 0.3
    roc = suspicion_roc(scores, poison)
    assert 50 < len(roc["fpr"]) == len(roc["tpr"]) <= 101
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert roc["fpr"] == sorted(roc["fpr"]) and roc["tpr"] == sorted(roc["tpr"])
    area = sum((b - a) * (c + d) / 2 for a, b, c, d in zip(roc["fpr"], roc["fpr"][1:], roc["tpr"], roc["tpr"][1:]))
    assert area == pytest.approx(suspicion_auroc(scores, poison), abs=0.01)  # the thinned curve keeps its area
    assert suspicion_roc(scores, torch.tensor([], dtype=torch.long)) is None


def test_backdoor_run_page_shows_a_clean_and_a_triggered_image(tmp_path):
    from ptk.experiment import run_images

    x = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    data = Dataset("toy", x, y, x.clone(), y.clone(), ["zero", "one"])

    def stamp(batch: torch.Tensor) -> torch.Tensor:
        out = batch.clone()
        out[..., -2:, -2:] = 255
        return out

    poisoned_x = x.clone()
    poisoned_x[[0, 2]] = stamp(x[[0, 2]])
    poisoning = Poisoning(y_train=torch.tensor([1, 1, 1, 1, 0, 1]), poison_indices=torch.tensor([2, 0]),
                          x_train=poisoned_x, trigger=Trigger(stamp, 1, "white corner"))
    target = Target(0, 0, 1, x[:1])
    images = run_images(data, poisoning, poisoning.poison_indices, poisoning.trigger, target)
    assert [t.caption for t in images.poisoned] == ["#0: zero \u2192 one", "#2: zero \u2192 one"]
    assert all(t.before is not None and t.before.max() == 0 and t.image.max() == 255 for t in images.poisoned)
    assert [t.caption for t in images.backdoor] == ["clean: zero", "triggered (aimed at one)"]
    results = {"status": "complete", "config": {"attack": "art-backdoor", "model": "m", "seed": 0},
               "resolved": {"recipe": {"name": "study"}, "device": "cpu"}, "data": {"name": "toy", "train_size": 6,
               "test_size": 6, "classes": ["zero", "one"]}, "plugins": {},
               "target": {"index": 0, "source_class": "zero", "target_class": "one"},
               "attack": {"poison_indices": [0, 2], "trigger": {"target_class": "one", "description": "white corner"}},
               "models": [{"name": "clean", "test_accuracy": 0.5, "target_probs": {"zero": 0.9, "one": 0.1},
                           "target_pred": "zero", "attack_success": False, "backdoor_asr": 0.0}]}
    text = write_run_html(tmp_path, results, images).read_text()
    example = text[text.index('id="backdoor-example"'):]
    assert example[:example.index("</div>")].count("<img") == 2
    assert text.count('alt="before"') == 2 and "white corner" in text
