"""`ptk bench`: suites, the paired statistics against hand computations, the leaderboard, and a real run."""

from __future__ import annotations

import json

import pytest

from ptk.leaderboard import ASR_TOOK, build
from ptk.stats import holm, mcnemar_exact
from ptk.suite import load_suite, shipped
from ptk.sweepstore import SweepStore

from .fixtures import ROOT

TINY_SUITE = ROOT / "tests" / "data" / "tiny-suite.toml"


def test_mcnemar_exact_matches_a_hand_computation():
    # 1 cell where only A succeeded, 9 where only B did: n = 10 discordant, P(X <= 1) under Binomial(10, 1/2)
    # is (C(10,0) + C(10,1)) / 2^10 = 11 / 1024; two-sided: twice that.
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)  # symmetric
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 5 of 5 one way: 0.0625, not significant at 0.05
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 6 of 6: significant
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0  # no evidence either way


def test_holm_matches_a_hand_computation():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5 x 2 capped at 1; 0.9 raised to it (monotone)
    assert holm([]) == []


def row(cell: str, name: str, seed: int, target: int, success: bool | None = None, acc: float = 0.9,
        asr: float | None = None, auroc: float | None = None, device: str = "cpu", capability: str = "AVX2",
        failed: bool = False, attack: str = "flip") -> dict:
    """A store model row as :meth:`SweepStore.models` yields it, with only what the leaderboard reads."""
    return {"cell_id": cell, "name": name, "failed": int(failed), "attack_success": success, "test_accuracy": acc,
            "backdoor_asr": asr, "suspicion_auroc": auroc, "train_seconds": 1.0, "defense_seconds": 0.5,
            "grid_values": json.dumps({"attack": attack, "seed": seed, "target_index": target}),
            "cell_device": device, "cell_versions": json.dumps({"ptk": "0.1.0", "torch": "2.14.1",
                                                                "cpu_capability": capability})}


def known_table() -> list[dict]:
    """16 cells of one targeted attack: the undefended model always falls; defense ``good`` stops it in all,
    defense ``weak`` in 2 of them; a third defense ``meh`` in 3 (tied with ``weak``)."""
    rows = []
    for i in range(16):
        cell = f"c{i}"
        rows += [row(cell, "clean", 0, i, False, acc=0.95), row(cell, "poisoned", 0, i, True, acc=0.9),
                 row(cell, "good", 0, i, False, acc=0.93, auroc=0.9), row(cell, "weak", 0, i, i >= 2),
                 row(cell, "meh", 0, i, i >= 3)]
    return rows


def test_leaderboard_rates_pairs_and_ranks_follow_the_table():
    board = build(known_table(), {"name": "hand"})
    by_model = {r["model"]: r for r in board["rows"]}
    assert set(by_model) == {"poisoned", "good", "weak", "meh"}  # the clean model is the reference, not a row
    assert by_model["good"]["successes"] == 0 and by_model["good"]["n"] == 16
    assert by_model["poisoned"]["rate"] == 1.0 and by_model["weak"]["rate"] == 14 / 16
    assert by_model["good"]["acc_cost"] == pytest.approx(0.02)
    assert by_model["good"]["auroc"] == pytest.approx(0.9)
    pairs = {(p["a"], p["b"]): p for p in board["pairs"]}
    assert len(pairs) == 6  # every pair of the four models
    gp = pairs[("poisoned", "good")] if ("poisoned", "good") in pairs else pairs[("good", "poisoned")]
    # discordant: 16 cells where only the undefended model fell; p = 2 / 2^16, then Holm over the 6 pairs
    assert gp["p"] == pytest.approx(2 / 2**16)
    raw = sorted(p["p"] for p in board["pairs"])
    assert gp["p_holm"] == pytest.approx(min(1.0, 6 * raw[0]))
    assert gp["significant"]
    # good beats every other model significantly (0 vs 13: p = 2 / 2^13, x 4 by Holm, still < 0.05); weak, meh
    # and the undefended do not separate from each other (at most 3 discordant cells: p >= 0.25)
    wm = pairs.get(("weak", "meh")) or pairs[("meh", "weak")]
    assert (wm["a_only"], wm["b_only"]) in ((1, 0), (0, 1)) and wm["p"] == 1.0 and not wm["significant"]
    assert by_model["good"]["rank"] == 1
    assert by_model["weak"]["rank"] == by_model["meh"]["rank"] == by_model["poisoned"]["rank"] == 2
    assert board["notes"] == []  # one machine, every cell shared


def test_leaderboard_seconds_count_a_defense_once_and_a_cached_model_at_its_training_time():
    """A defense's ``defense_seconds`` already include its trainings (they were once added twice); a poisoned
    model read from the cache costs its run 0 s but counts the seconds its cache entry recorded."""
    rows = []
    for i in range(4):
        cached = i % 2 == 1
        rows += [dict(row(f"c{i}", "clean", 0, i, False), train_seconds=10.0, defense_seconds=None),
                 dict(row(f"c{i}", "poisoned", 0, i, True), train_seconds=0.0 if cached else 12.0,
                      defense_seconds=None, row=json.dumps({"cost_seconds": 12.0})),
                 dict(row(f"c{i}", "lo", 0, i, False), train_seconds=11.0, defense_seconds=13.0)]
    by_model = {r["model"]: r for r in build(rows)["rows"]}
    assert by_model["poisoned"]["seconds"] == pytest.approx(12.0)  # not 6 (two cached cells at 0)
    assert by_model["lo"]["seconds"] == pytest.approx(13.0)  # not 24 (11 s of training counted twice)


def test_a_cell_whose_poisoned_model_differs_between_runs_is_named():
    """A defense added to a store later reads the cell's clean and poisoned models from the cache; when the cache
    missed and they were trained again with other numbers, the board says which cells, instead of pairing
    defenses that faced different models in silence."""
    rows = known_table()
    # a later run (store cell "c3b") of suite cell 3 adds defense "late", with the same poisoned model ...
    same = [dict(r, cell_id="c3b") for r in rows if r["cell_id"] == "c3" and r["name"] in ("clean", "poisoned")]
    assert build(rows + same)["notes"] == []
    # ... or with one trained again (the cache missed): other accuracy, other P(target)
    other = [dict(r, cell_id="c3b", test_accuracy=0.8) if r["name"] == "poisoned" else r for r in same]
    notes = build(rows + other)["notes"]
    assert len(notes) == 1 and "1 cells ran their defenses on different clean or poisoned models" in notes[0]
    assert "flip seed=0 target_index=3 (poisoned: test accuracy 90.0% vs 80.0%" in notes[0]


def test_a_defense_is_paired_with_the_undefended_model_of_its_own_run():
    """When a later run trained its clean and poisoned models again (the cache missed), a defense of that run is
    scored against what it faced: its pair with the undefended model uses that run's poisoned model, and its
    accuracy cost that run's clean model, not the first run's."""
    rows = known_table()
    for i in range(16):  # run 2 of every cell: its poisoned model did not take in cells 0-9; "late" stops none
        rows += [row(f"c{i}b", "clean", 0, i, False, acc=0.85), row(f"c{i}b", "poisoned", 0, i, i >= 10, acc=0.8),
                 row(f"c{i}b", "late", 0, i, i >= 10, acc=0.8)]
    board = build(rows)
    pairs = {frozenset((p["a"], p["b"])): p for p in board["pairs"]}
    late = pairs[frozenset(("poisoned", "late"))]
    assert late["a_only"] == late["b_only"] == 0  # it faced run 2's poisoned model: no cell between them
    good = pairs[frozenset(("poisoned", "good"))]  # run 1's defenses keep run 1's undefended model: 16 vs 0
    assert {good["a_only"], good["b_only"]} == {0, 16}
    by_model = {r["model"]: r for r in board["rows"]}
    assert by_model["late"]["acc_cost"] == pytest.approx(0.05)  # 0.85 - 0.8, not 0.95 - 0.8
    assert by_model["poisoned"]["successes"] == 16  # the undefended row itself is the first run's
    assert "compared with the undefended model of its own run" in board["notes"][0]


def test_leaderboard_compares_only_shared_cells_and_names_other_machines():
    rows = known_table()
    rows = [r for r in rows if not (r["cell_id"] == "c9" and r["name"] == "meh")]  # meh's row on c9 ...
    rows.append(row("c9", "meh", 0, 9, True, failed=True))  # ... failed
    rows = [dict(r, cell_device="NVIDIA H200") if r["cell_id"] == "c0" else r for r in rows]
    board = build(rows)
    assert {r["n"] for r in board["rows"]} == {15}  # c9 left out for every model, not only for meh
    assert any("1 of 16 cells" in n for n in board["notes"])
    assert any("different machines" in n and "NVIDIA H200" in n for n in board["notes"])
    assert len(next(r for r in board["rows"] if r["model"] == "good")["machines"]) == 2


def test_a_backdoor_counts_as_success_where_it_took():
    rows = []
    for i, (undefended, defended) in enumerate([(1.0, 0.1), (0.95, ASR_TOOK), (0.9, 0.2)]):
        rows += [row(f"b{i}", "clean", i, 5, False, asr=0.01, attack="bd"),
                 row(f"b{i}", "poisoned", i, 5, False, asr=undefended, attack="bd"),
                 row(f"b{i}", "filter", i, 5, False, asr=defended, attack="bd")]
    board = build(rows)
    by_model = {r["model"]: r for r in board["rows"]}
    assert by_model["poisoned"]["metric"] == "asr"
    assert by_model["poisoned"]["successes"] == 3
    assert by_model["filter"]["successes"] == 1  # ASR at the threshold counts as taken
    assert by_model["filter"]["mean_asr"] == pytest.approx((0.1 + ASR_TOOK + 0.2) / 3)


def test_shipped_suites_are_valid_and_listed(ptk):
    assert {"quick", "cifar10", "cifar10-small"} <= set(shipped())
    for name in shipped():
        suite = load_suite(name)
        assert suite.version >= 1 and suite.cell_count > 0
    quick = load_suite("quick")
    assert {a.attack for a in quick.attacks} == {"labelflip", "art-gradient-matching", "art-bullseye-polytope",
                                                "art-backdoor", "art-clean-label-backdoor"}
    assert {a.options.get("labelflip", {}).get("budget") for a in quick.attacks if a.attack == "labelflip"} == {40, 10}
    # every cell of a suite is distinct, and its smaller settings reuse the larger ones' targets (model cache)
    for a in quick.attacks:
        assert len(set(map(tuple, a.cells))) == len(a.cells)
    biggest = max(quick.attacks, key=lambda a: len(a.cells))
    assert all(set(map(tuple, a.cells)) <= set(map(tuple, biggest.cells)) for a in quick.attacks)
    listing = ptk("bench", "list").output
    assert f"quick (version {quick.version}, {quick.cell_count} cells" in listing and "cifar10-small" in listing
    assert json.loads(ptk("bench", "list", "--json").output)[0]["name"] == "cifar10"


@pytest.mark.parametrize("text, message", [
    ("[base]\npreset='quick'\n", "needs a [suite] table"),
    ("[suite]\nname='x'\nversion=1\ndescription='d'\ncost='c'\n", "at least one [[attacks]]"),
    ("[suite]\nname='x'\nversion=1\ndescription='d'\ncost='c'\n[[attacks]]\nattack='labelflip'\ncells=[[0]]\n",
     "[seed, target test index] pairs"),
    ("[suite]\nname='x'\nversion=1\ndescription='d'\ncost='c'\n[base]\ndefenses=['a']\n"
     "[[attacks]]\nattack='labelflip'\ncells=[[0, 1]]\n", "must not set defenses"),
    ("[suite]\nname='x'\nversion='1'\ndescription='d'\ncost='c'\n", "version must be an integer"),
])
def test_a_bad_suite_file_is_refused_naming_the_problem(ptk, tmp_path, text, message):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    result = ptk("bench", "run", str(path), "--defense", "loss-outliers", expect=2)
    assert str(path) in result.output
    assert message in result.output, result.output


def test_a_named_defense_is_scored_on_the_attacks_it_can_face_and_refused_if_none(registry, tmp_path):
    from ptk.cli_bench import bench_defenses
    from ptk.errors import UsageError

    reg = registry()
    tiny = load_suite(str(TINY_SUITE))
    # art-strip filters triggered inputs (goal backdoor), influence works from the target image (goal target)
    assert bench_defenses(tiny, ("art-strip", "influence"), reg) == {"labelflip-30": ["influence"],
                                                                    "art-backdoor": ["art-strip"]}
    flips = tmp_path / "flips.toml"
    flips.write_text(TINY_SUITE.read_text().split("[[attacks]]\nlabel = \"art-backdoor\"")[0])
    with pytest.raises(UsageError, match="no attack of it can be scored for art-strip: defense 'art-strip' defends "
                                         "only against 'backdoor' attacks.*drop --defense art-strip"):
        bench_defenses(load_suite(str(flips)), ("art-strip",), reg)


def test_an_unknown_suite_lists_the_shipped_ones(ptk):
    out = ptk("bench", "run", "quik", "--defense", "loss-outliers", expect=2).output
    assert "unknown suite 'quik'" in out and "quick" in out


def test_bench_run_refuses_a_sweep_store(ptk, tmp_path):
    db = tmp_path / "sweep.db"
    SweepStore(db).close()  # a sweep's store: no suite recorded
    out = ptk("bench", "run", str(TINY_SUITE), "--defense", "loss-outliers", "--db", str(db), expect=2).output
    assert "holds a sweep" in out
    assert "is a sweep store" in ptk("bench", "report", str(db), expect=2).output


@pytest.mark.slow
def test_bench_run_scores_defenses_on_shared_cells_and_reports(ptk, tmp_path):
    db = tmp_path / "bench" / "bench.db"
    first = ptk("bench", "run", str(TINY_SUITE), "--defense", "loss-outliers", "--db", str(db))
    assert "3 complete, 0 failed" in first.output
    # a second defense later: only its own rows are added; the undefended rows are not rerun. art-strip, a
    # test-time filter for triggered inputs, is scored on the backdoor cell and skips the label flips
    second = ptk("bench", "run", str(TINY_SUITE), "--defense", "loss-outliers", "--defense", "art-strip",
                 "--db", str(db))
    assert "1 cells (1 to run)" in second.output and "skips art-strip on labelflip-30" in second.output
    assert "1 complete, 0 failed" in second.output
    again = ptk("bench", "run", str(TINY_SUITE), "--defense", "art-strip", "--db", str(db))
    assert "every cell already holds these defenses" in again.output
    store = SweepStore(db)
    try:
        models = list(store.models())
    finally:
        store.close()
    added = [m for m in models if "art-strip" in json.loads(m["config"])["defenses"]]
    assert {m["name"] for m in added} == {"clean", "poisoned", "art-strip"}
    assert all(m["train_seconds"] == 0 for m in added if m["name"] in ("clean", "poisoned"))  # from the cache

    report = ptk("bench", "report", str(db))
    board = json.loads((db.parent / "leaderboard.json").read_text())
    assert board["suite"]["name"] == "tiny" and board["suite"]["version"] == 1
    got = {(r["attack"], r["model"]): r for r in board["rows"]}
    assert set(got) == {(a, m) for a in ("labelflip-30", "art-backdoor") for m in ("poisoned", "loss-outliers")} | {
        ("art-backdoor", "art-strip")}
    assert got[("labelflip-30", "poisoned")]["n"] == 2 and got[("art-backdoor", "poisoned")]["metric"] == "asr"
    assert got[("art-backdoor", "poisoned")]["mean_asr"] > 0.5  # the backdoor took on the undefended model
    assert got[("labelflip-30", "loss-outliers")]["auroc"] is not None
    assert len([p for p in board["pairs"] if p["attack"] == "labelflip-30"]) == 1
    assert len([p for p in board["pairs"] if p["attack"] == "art-backdoor"]) == 3
    assert all(0 <= p["p_holm"] <= 1 and p["p_holm"] >= p["p"] for p in board["pairs"])
    assert "labelflip-30" in report.output and (db.parent / "leaderboard.md").exists()
    assert sorted(len(c["models"]) for c in board["cells"]) == [3, 3, 4]  # clean, poisoned, LO (+ art-strip)


def test_a_store_is_never_made_inside_a_file_ptk_did_not_make(ptk, tmp_path):
    import sqlite3

    foreign = tmp_path / "notes.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    grid = tmp_path / "grid.toml"
    grid.write_text('preset = "quick"\ndefenses = ["loss-outliers"]\n[grid]\nseed = [0]\n')
    for args in (["sweep", "run", str(grid), "--db", str(foreign)], ["sweep", "status", str(foreign)],
                 ["sweep", "report", str(foreign)], ["bench", "run", str(TINY_SUITE), "--defense", "loss-outliers",
                                                     "--db", str(foreign)]):
        out = ptk(*args, expect=2).output
        assert "ptk did not make" in out and "notes" in out, out
    assert foreign.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml", "notes.sqlite"]

    text = tmp_path / "results.txt"
    text.write_text("not a database\n" * 100)
    out = ptk("sweep", "status", str(text), expect=2).output
    assert "file is not a database" in out and len(out.strip().splitlines()) == 1
    assert text.read_text() == "not a database\n" * 100
    assert "is a directory" in ptk("sweep", "run", str(grid), "--db", str(tmp_path), expect=2).output


def test_reading_a_store_changes_nothing_on_disk(ptk, tmp_path):
    db = tmp_path / "s" / "sweep.db"
    store = SweepStore(db)
    store.add_cell("c1", {"seed": 0}, {"seed": 0})
    store.close()
    (db.parent / "sweep.db-wal").unlink(missing_ok=True)
    files = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    ptk("sweep", "status", str(db))
    after = {p.name: p.read_bytes() for p in db.parent.iterdir() if not p.name.endswith(("-shm", "-wal"))}
    assert after == files
    with pytest.raises(Exception):
        SweepStore(db, readonly=True).add_cell("c2", {}, {})  # a read-only connection cannot write


@pytest.mark.slow
@pytest.mark.browser
def test_the_bench_report_page_of_a_real_store_loads_and_sorts(ptk, tmp_path):
    """The leaderboard page of a real (tiny) bench store, in headless Chromium: no script error, no network
    reference, every model of the store in the table, and the rank column sorts."""
    from .test_html import assert_clean_page, browse

    db = tmp_path / "bench.db"
    ptk("bench", "run", str(TINY_SUITE), "--defense", "loss-outliers", "--db", str(db))
    out = ptk("bench", "report", str(db)).output
    page = tmp_path / "report.html"
    assert str(page) in out
    probe = browse(page, "leaderboard", "rank", tmp_path, name_col=1)
    assert_clean_page(page, probe)
    assert sorted(set(probe["names"])) == ["loss-outliers", "poisoned"]
    assert probe["detail_rows"] == 4  # every (attack, model) row drills down to its cells
