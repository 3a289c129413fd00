"""The benchmark script's rows run on the CPU with tiny sizes: the GPU study path included.

Timings are never asserted (benchmarks print them); what is asserted is what a
reader of the table relies on: the error and agreement columns are right, the
FLOP count matches the arithmetic, and the study row trains, evaluates and runs
`ptk run` end to end with the same code a GPU run uses.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from .fixtures import ROOT


def load_benchmarks():
    """benchmarks/run.py as a module, and benchmarks/study.py (benchmarks/ is on sys.path: see conftest)."""
    spec = importlib.util.spec_from_file_location("ptk_benchmark_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import study

    return mod, study


def test_influence_row_reports_the_error_against_a_float64_loop():
    run, _ = load_benchmarks()
    row = run.row_influence(torch.device("cpu"), 48, 8, 16)
    assert row["rel_error"] < 1e-4
    assert row["ratio"] > 0 and "max rel. error" in row["ptk"]


def test_clustering_row_runs_art_and_ptk_on_the_same_activations_and_they_agree():
    run, _ = load_benchmarks()
    acts, labels = run.clustered_activations(2000, 32)
    assert acts.shape == (2000, 32) and (labels == 5).sum() == 200
    row = run.row_clustering(2000, 32)
    assert row["flags_identical"] is True
    assert row["ratio"] > 0


def test_flop_count_is_the_issue_arithmetic_for_resnet18():
    """3.3 GFLOP per training image (forward + backward) for the standard width-64 network; ~1/16 at width 16."""
    _, study = load_benchmarks()
    from ptk_plugins.resnet import CifarResNet18

    full = study.train_flops_per_image(CifarResNet18(10, width=64), (3, 32, 32))
    narrow = study.train_flops_per_image(CifarResNet18(10, width=16), (3, 32, 32))
    assert 3.2e9 < full < 3.5e9, full
    assert 12 < full / narrow < 17
    assert study.bf16_peak(torch.device("cpu")) is None


@pytest.mark.cifar
@pytest.mark.slow
def test_study_row_on_the_cpu_trains_both_recipes_and_times_a_whole_run(cifar_data_dir):
    _, study = load_benchmarks()
    run_args = ["--dataset", "cifar10", "--subset", "300", "--test-subset", "100", "--epochs", "1",
                "-o", "resnet18.width=8", "-o", "labelflip.budget=10", "--defense", "loss-outliers"]
    row = study.study_row(None, torch.device("cpu"), 512, 200, 8, 1, run_args, None, data_dir=cifar_data_dir,
                          modes=("off", "aot_eager"))
    recipes = {r["recipe"]: r for r in row["recipes"] if r["compile"] == "off"}
    assert set(recipes) == {"study", "fast"}
    # each recipe compiled beside eager: same data, seed and model, so the same accuracy up to float rounding
    compared = {c["recipe"]: c for c in row["compile"]}
    assert set(compared) == {"study", "fast"} and all(c["compile"] == "aot_eager" for c in compared.values())
    assert all(c["speedup"] > 0 and abs(c["accuracy_difference_points"]) <= 1.0 for c in compared.values())
    from ptk.recipe import named_recipe

    fast = named_recipe("fast")
    assert (recipes["fast"]["batch_size"], recipes["fast"]["lr"]) == (fast.batch_size, fast.lr) == (500, 0.2)
    assert recipes["study"]["lr"] == 1e-4  # the recipes' own settings
    for r in recipes.values():
        assert r["train_images"] == 512 and r["epochs"] == 1
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["seconds_per_epoch"] > 0
        assert r["mfu"] is None  # no peak on a CPU: no made-up utilisation
        assert r["achieved_tflops"] == pytest.approx(r["gflop_per_image"] * r["images_per_second"] / 1e3, rel=0.05, abs=2e-3)
    run = row["ptk_run"]
    assert run["status"] == "complete" and run["wall_seconds"] > 0
    assert set(run["models"]) == {"clean", "poisoned", "loss-outliers"}
    assert all(0 < m["test_accuracy"] <= 1 for m in run["models"].values())


def test_study_row_without_data_says_so(tmp_path):
    _, study = load_benchmarks()
    row = study.study_row(tmp_path / "missing.tar.gz", torch.device("cpu"), 10, 10, 8, 1, None, None)
    assert row["ptk"] == "skipped" and "--cifar" in row["what"]


def test_ptks_fast_schedule_is_the_published_triangle_the_reference_loop_writes_independently():
    import recipe as fidelity

    from ptk.recipe import lr_factor, named_recipe

    fast = named_recipe("fast")
    for total in (50, 100, 1000):
        ref = fidelity.reference_schedule(total)
        assert all(abs(lr_factor(fast, s, total) - ref(s)) < 1e-9 for s in range(total + 1)), total
    h = fidelity.PUBLISHED
    assert (fast.lr, fast.batch_size, fast.momentum, fast.weight_decay, fast.pad) == \
        (h["lr"], h["batch_size"], h["momentum"], h["weight_decay"], h["pad"])


@pytest.mark.slow
@pytest.mark.cifar
def test_recipe_fidelity_row_trains_both_loops_on_real_cifar(cifar_data_dir, tmp_path):
    import json

    import recipe as fidelity

    out = tmp_path / "recipe.json"
    summary = fidelity.main(["--quick", "--train", "500", "--epochs", "1", "--data-dir", str(cifar_data_dir),
                             "--json", str(out), "-o", "label_smoothing=0.1"])
    rows = json.loads(out.read_text())["rows"]
    assert {r["loop"] for r in rows} == {"ptk fast", "reference"} and all(r["seconds"] > 0 for r in rows)
    assert summary["recipe"]["label_smoothing"] == 0.1 and summary["recipe"]["schedule"] == "triangle"
    assert summary["accuracy_difference_points"] == pytest.approx(
        100 * (summary["ptk_fast_accuracy"] - summary["reference_accuracy"]), abs=0.02)


@pytest.mark.slow
def test_packing_row_times_both_layouts_on_real_runs(capsys):
    """The row runs the real command both ways (here shrunk to 200 digits at width 4) and prints the ratio of
    runs per hour; the ratio itself is a measurement, not asserted. On a GPU the same function packs runs onto
    one device (benchmarks/gpu_study.sh)."""
    import packing

    row = packing.main(epochs=1, cores=2, extra=("--subset", "200", "-o", "resnet18.width=4", "-o", "labelflip.budget=5"))
    one_at_a_time, side_by_side = row["2 runs one at a time (s)"], row["2 runs at once, 1 thread each (s)"]
    assert one_at_a_time > 0 and side_by_side > 0
    assert row["ratio"] == pytest.approx(one_at_a_time / side_by_side, rel=0.05)
    assert row["runs per hour, side by side"] == pytest.approx(3600 * 2 / side_by_side, rel=0.01)
    assert "runs per hour, side by side" in capsys.readouterr().out


def test_compile_comparison_is_eager_over_compiled_per_recipe_by_hand():
    _, study = load_benchmarks()

    def t(recipe, mode, seed, spe, acc, warm):
        return study.RecipeTiming(recipe, 100, 1, 128, 0.1, spe, 1.0, acc, 3.3, 1.0, None, mode, seed, warm)

    timings = [t("study", "off", 0, 4.0, 0.80, 5.0), t("study", "off", 1, 5.0, 0.82, 5.0),
               t("study", "reduce-overhead", 0, 1.5, 0.81, 65.0), t("study", "reduce-overhead", 1, 1.5, 0.80, 2.0),
               t("fast", "off", 0, 1.2, 0.90, 2.0)]
    (row,) = study.compile_comparison(timings)  # fast has no compiled timing: nothing to compare
    assert row["recipe"] == "study" and row["compile"] == "reduce-overhead" and row["seeds"] == 2
    assert row["speedup"] == pytest.approx(4.5 / 1.5)
    assert row["accuracy_difference_points"] == pytest.approx(100 * (0.805 - 0.81))
    assert row["compile_seconds"] == pytest.approx(60.0)  # the first compiled warm-up over the first eager one


def test_gpu_plan_cuts_targets_to_the_time_left_by_hand(tmp_path):
    """The GPU script's plan: 5 trainings a target times the measured 1.6 overhead, the clean model once, and
    targets cut (never below 0, never above those wanted) to the seconds left."""
    import json

    import gpu_plan

    p = gpu_plan.plan(420)  # the H200's measured eager speed: 50,000 x 10 / 41,667 = 12.0 s a training
    assert p.training_seconds == pytest.approx(12.0, abs=0.05) and p.per_target_seconds == pytest.approx(96.0, abs=0.1)
    assert p.targets == 4 and p.cut and not p.bilevel_fits  # (420 - 19.2) // 96
    assert gpu_plan.plan(10).targets == 0 and gpu_plan.plan(10**6).targets == 20
    assert gpu_plan.plan(10**6).bilevel_fits
    speed = tmp_path / "speed.json"  # part a measured compiled fast at twice the speed: twice the targets
    speed.write_text(json.dumps({"rows": [{"recipes": [
        {"recipe": "fast", "images_per_second": 83_334.0, "train_images": 50_000, "compile": "reduce-overhead"},
        {"recipe": "fast", "images_per_second": 41_667.0, "train_images": 50_000, "compile": "off"}]}]}))
    fast = gpu_plan.plan(420, speed=speed, clean_cached=True)
    assert fast.training_seconds == pytest.approx(6.0, abs=0.05) and fast.targets == 8  # 420 // 48
    assert "reduce-overhead" in fast.speed_source
