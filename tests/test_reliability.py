"""Faults, bad input and reruns: each provoked here, with the outcome a user relies on."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

import ptk
from .fixtures import TINY, load_results, model_row
from ptk.cache import ModelCache
from ptk.network import Network, channel_stats
from ptk.train import Recipe, train_model
from ptk_plugins.resnet import CifarResNet18

VOLATILE = {"train_seconds", "defense_seconds", "cost_seconds", "started", "finished", "cached", "cache"}


def stable(obj):
    """results.json without timings, dates and cache bookkeeping."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


class Exploding(ptk.Defense):
    name = "exploding"
    description = "raises, to test that a run survives a failing defense"

    def defend(self, ctx, options):
        raise RuntimeError("deliberate failure")


class Passthrough(ptk.Defense):
    name = "passthrough"
    description = "returns the poisoned model"

    def defend(self, ctx, options):
        return ptk.DefenseResult(predictor=ctx.poisoned_model, removed_indices=torch.tensor([], dtype=torch.long))


class RaisingAttack(ptk.Attack):
    """An attack whose poison() raises ``exc``: what does a failed attack leave behind?"""

    description = "raises in poison()"

    def __init__(self, name: str, exc: Exception) -> None:
        self.name, self.exc = name, exc

    def poison(self, ctx, options):
        raise self.exc


class BrokenData(ptk.DatasetSource):
    name = "broken-data"
    description = "raises in load(), as a buggy data set plugin would"

    def load(self, data_dir, options):
        raise KeyError("images")


class BrokenModel(ptk.ModelSpec):
    name = "broken-model"
    description = "raises in build(), as a buggy model plugin would"

    def build(self, num_classes, image_shape, options):
        raise ValueError("unsupported image shape")


class RaisingCheck(ptk.Defense):
    """A defense whose check(data, ...) raises ``error(data)``: a refusal (UsageError) or a bug; defend() must
    never run."""

    description = "raises in check()"

    def __init__(self, name: str, error) -> None:
        self.name, self.error = name, error

    def check(self, data, options):
        raise self.error(data)

    def defend(self, ctx, options):
        raise AssertionError("defend must not run after check() raised")


class TestPlugins:
    @ptk.hookimpl
    def register_datasets(self, register):
        register(BrokenData())

    @ptk.hookimpl
    def register_models(self, register):
        register(BrokenModel())

    @ptk.hookimpl
    def register_defenses(self, register):
        register(Exploding())
        register(Passthrough())
        register(RaisingCheck("picky", lambda data: ptk.UsageError(
            f"picky cannot defend {len(data.y_train)} samples; use fewer")))  # check() sees the subset
        register(RaisingCheck("buggy-check", lambda data: KeyError("threshold")))

    @ptk.hookimpl
    def register_attacks(self, register):
        register(RaisingAttack("exploding-attack", RuntimeError("deliberate attack failure")))
        register(RaisingAttack("oom-attack", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))


@pytest.fixture
def with_test_plugins(registry):
    registry((TestPlugins(), "reliability-tests"))


@pytest.mark.slow
def test_failing_defense_does_not_cost_the_others(ptk, tmp_path, with_test_plugins):
    out = tmp_path / "run"
    res = ptk("run", *TINY, "--defense", "exploding", "--defense", "passthrough", "--out", out, expect=1)
    r = load_results(out)
    assert r["status"] == "failed"
    assert model_row(r, "exploding") == {"name": "exploding", "failed": True,
                                         "error": "RuntimeError: deliberate failure"}
    assert model_row(r, "passthrough")["removed_count"] == 0  # ran after the failure
    assert "deliberate failure" in (out / "errors.log").read_text()
    assert "Traceback" in (out / "errors.log").read_text()
    assert "exploding" in (out / "report.md").read_text() and (out / "target_probs.png").exists()
    assert "1 defense(s) failed" in res.output


@pytest.mark.slow
def test_failing_attack_marks_the_run_failed_and_keeps_the_clean_model(ptk, tmp_path, with_test_plugins):
    out = tmp_path / "run"
    res = ptk("run", *TINY, "--attack", "exploding-attack", "--out", out, expect=1)
    assert "exploding-attack" in res.output and "deliberate attack failure" in res.output
    assert "Traceback" not in res.output
    r = load_results(out)
    assert r["status"] == "failed"  # not "running": nothing is left looking like a run in progress
    assert "deliberate attack failure" in r["error"] and "poison()" in r["error"]
    assert [m["name"] for m in r["models"]] == ["clean"]  # what finished before the failure is kept
    assert 0 < model_row(r, "clean")["test_accuracy"] <= 1


@pytest.mark.slow
def test_out_of_memory_in_an_attack_names_the_batch_size_option(ptk, tmp_path, with_test_plugins):
    out = tmp_path / "run"
    res = ptk("run", *TINY, "--attack", "oom-attack", "--out", out, expect=1)
    assert "--batch-size" in res.output and "Traceback" not in res.output
    assert load_results(out)["status"] == "failed"


@pytest.mark.parametrize("args, step", [
    (["--dataset", "broken-data"], "dataset 'broken-data' (plugin reliability-tests, (in-process)) failed in load()"),
    (["--model", "broken-model"], "model 'broken-model' (plugin reliability-tests, (in-process)) failed in build()"),
])
def test_broken_data_or_model_plugin_is_named_before_any_training(ptk, tmp_path, with_test_plugins, args, step):
    out = tmp_path / "run"
    res = ptk("run", *TINY, *args, "--out", out, expect=1)
    assert step in res.output and "Traceback" not in res.output
    assert not (out / "results.json").exists()  # it failed before the run started, so there is no half a run


@pytest.mark.parametrize("defense, code, message", [
    ("picky", 2, "picky cannot defend 800 samples; use fewer"),  # bad input: exit 2 with the plugin's fix
    ("buggy-check", 1, "defense 'buggy-check' (plugin reliability-tests, (in-process)) failed in check(): KeyError"),
])
def test_defense_check_runs_before_any_training(ptk, tmp_path, with_test_plugins, defense, code, message):
    out = tmp_path / "run"
    res = ptk("run", *TINY, "--defense", "passthrough", "--defense", defense, "--out", out, expect=code)
    assert message in res.output and "Traceback" not in res.output
    assert not (out / "results.json").exists()  # nothing trained, not even the defense listed first


#: Run as ``python -c HOLD_IN_POISONED_TRAINING OUT READY ARGS...``: ``ptk ARGS`` (with ``--out OUT``) that, at
#: the first training step after OUT/results.json shows the clean model (so: the poisoned model's training),
#: touches READY and holds there until it is killed or interrupted. A handshake, not a guess at how long the
#: clean model takes: the signal lands inside that training however busy the machine is.
HOLD_IN_POISONED_TRAINING = """
import pathlib, signal, sys, time
import torch
from ptk.cli import main

signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even from a background job
results, ready = pathlib.Path(sys.argv[1]) / "results.json", pathlib.Path(sys.argv[2])

def hold_in_poisoned_training(module, inputs):
    if module.training and results.exists():
        ready.touch()
        time.sleep(3600)

torch.nn.modules.module.register_module_forward_pre_hook(hold_in_poisoned_training)
sys.argv = ["ptk", *sys.argv[3:]]
main()
"""


@contextmanager
def held_in_poisoned_training(args: list, out: Path, env: dict, logs: Path) -> Iterator[subprocess.Popen]:
    """``ptk ARGS --out OUT`` in a subprocess, once it holds inside the poisoned model's training; its stdout
    and stderr go to LOGS/stdout, LOGS/stderr (files, not pipes: a full pipe would stall it before the hold).
    The process is killed on the way out if the test has not ended it."""
    ready = logs / "ready"
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_IN_POISONED_TRAINING, str(out), str(ready),
                                 *map(str, args), "--out", str(out)], env=env, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 1800  # generous: the clean model trains first, on a possibly busy machine
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"ptk never reached the poisoned model's training (exit {proc.wait()}):\n"
                            + (logs / "stderr").read_text())
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def no_partial_files(*folders: Path) -> None:
    for folder in folders:
        leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers, leftovers


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_with_identical_results(ptk, tmp_path, data_dir):
    cache, out = tmp_path / "cache", tmp_path / "run"
    # one torch thread in the subprocesses too, as in this process (one_torch_thread): CPU results are
    # bit-identical only at one thread count
    env = {**os.environ, "PTK_CACHE_DIR": str(cache), "PTK_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    args = ["run", *TINY, "--defense", "none"]
    with held_in_poisoned_training(args, out, env, tmp_path) as proc:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    no_partial_files(cache, out)
    assert len(list((cache / "models").glob("*.safetensors"))) == 1  # the clean model only
    assert [m["name"] for m in load_results(out)["models"]] == ["clean"]
    done = subprocess.run([sys.executable, "-m", "ptk", *map(str, args), "--out", str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = load_results(out)
    assert model_row(resumed, "clean")["cached"] and not model_row(resumed, "poisoned")["cached"]
    # the same run uninterrupted (shared test cache) gives the same numbers
    ptk("run", *TINY, "--defense", "none", "--out", tmp_path / "straight")
    assert stable(resumed) == stable(load_results(tmp_path / "straight"))


@pytest.mark.slow
def test_same_seed_gives_identical_results_without_cache(ptk, tmp_path):
    ptk("run", *TINY, "--defense", "none", "--out", tmp_path / "a")
    ptk("run", *TINY, "--defense", "none", "--no-cache", "--out", tmp_path / "b")
    a, b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert json.dumps(stable(a), sort_keys=True) == json.dumps(stable(b), sort_keys=True)
    assert a["data"]["fingerprint"] and a["attack"]["poisoned_labels_sha256"]
    assert a["versions"]["torch"] == torch.__version__
    # what bit-reproducibility on the CPU depends on is written down with the result
    assert a["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert a["versions"]["numpy"] and ("gpu" in a["versions"]) == torch.cuda.is_available()


@pytest.mark.slow
def test_rerun_repeats_a_run_from_results_json(ptk, tmp_path):
    first = tmp_path / "first"
    ptk("run", *TINY, "--defense", "none", "--out", first)
    ptk("rerun", first, "--out", tmp_path / "again")
    assert stable(load_results(first)) == stable(load_results(tmp_path / "again"))


def small_network(seed: int = 0) -> tuple[Network, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (32,), generator=g)
    torch.manual_seed(seed)
    return Network(CifarResNet18(2, width=4), *channel_stats(x)), x, y


def test_corrupt_cache_entry_is_detected_removed_and_recomputed(tmp_path, caplog):
    cache = ModelCache(tmp_path)
    net, x, y = small_network()
    calls = []

    def trainer(m):
        calls.append(1)
        return train_model(m, x, y, Recipe(epochs=1, batch_size=16, lr=1e-3), seed=0)

    first, cached = cache.get_or_train("k", lambda: small_network()[0], trainer, {})
    weights, meta = cache.paths("k")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    again, cached = cache.get_or_train("k", lambda: small_network()[0], trainer, {})
    assert not cached and len(calls) == 2
    assert "corrupt" in caplog.text and "checksum" in caplog.text
    assert weights.exists() and meta.exists()  # recomputed and stored again
    fresh = ModelCache(tmp_path)
    assert fresh.load("k", small_network(seed=5)[0])


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/ptk-pickle-executed")


def test_crafted_pickle_in_cache_is_refused_not_executed(tmp_path, caplog):
    MARKER.unlink(missing_ok=True)
    cache = ModelCache(tmp_path)
    weights, meta = cache.paths("evil")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(pickle.dumps(Payload()))
    from ptk.atomic import sha256_file

    meta.write_text(json.dumps({"sha256": sha256_file(weights)}))  # checksum matches: only the format stops it
    assert not cache.load("evil", small_network()[0])
    assert not MARKER.exists()
    assert not weights.exists()
    assert "corrupt" in caplog.text


def test_cache_entries_are_pickle_free_and_old_pickled_entries_are_never_read(tmp_path):
    from ptk.tensorfile import load_tensors, save_tensors

    MARKER.unlink(missing_ok=True)
    cache = ModelCache(tmp_path)
    model = small_network()[0]
    cache.save("k", model, {})
    weights, _ = cache.paths("k")
    assert weights.suffix == ".safetensors" and b"torch._utils" not in weights.read_bytes()
    # every dtype a state dict holds survives, bf16 and 0-dim counters included
    tensors = {"w": torch.randn(3, 4), "h": torch.randn(2).to(torch.bfloat16), "n": torch.tensor(7),
               "mask": torch.tensor([True, False]), "empty": torch.zeros(0, 5)}
    save_tensors(tmp_path / "t.safetensors", tensors)
    back = load_tensors(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())
    # an earlier version's pickled entry beside the key is ignored, never unpickled
    old = weights.with_suffix(".pt")
    old.write_bytes(pickle.dumps(Payload()))
    assert cache.load("k", small_network(seed=3)[0])  # the safetensors entry loads
    weights.unlink()
    assert not cache.load("k", small_network()[0])  # only the old .pt is left: a miss
    assert not MARKER.exists() and old.exists()


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line(tmp_path, data_dir):
    env = {**os.environ, "PTK_CACHE_DIR": str(tmp_path / "cache"), "PTK_DATA_DIR": str(data_dir)}
    with held_in_poisoned_training(["run", *TINY, "--defense", "none"], tmp_path / "run", env, tmp_path) as proc:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=600) == 130, (tmp_path / "stderr").read_text()
    err = (tmp_path / "stderr").read_text()
    assert "Interrupted" in err and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("Interrupted"), err  # the interrupt is one line, after ptk's own progress lines
    assert all(line.startswith("ptk: ") for line in lines[:-1]), err
    no_partial_files(tmp_path)


def test_out_of_memory_names_the_batch_size_option(ptk, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("ptk.experiment.run_experiment", oom)
    res = ptk("run", *TINY, "--out", tmp_path / "r", expect=1)
    assert "--batch-size" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("args, message", [
    (["-o", "labelflip.budget=500"], "larger than the pool"),
    (["--source", "3", "--target", "3"], "pick two different classes"),
    (["--target", "eleven"], "unknown class 'eleven'"),
    (["--target-index", "100000"], "out of range"),
    (["--target-index", "1"], "not of the source class"),  # test image 1 of digits is a "4", the source is "1"
    (["-o", "resnet18.width=0"], "must be positive"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--subset", "5"], "smaller than the 10 classes"),
    (["--lr", "-1"], "lr must be positive"),
    (["--lr", "0"], "lr must be positive"),  # not silently replaced by the recipe's default
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--seed", "-1"], "seed must be in 0 .. 2**32-1"),
    (["--seed", "1180591620717411303424"], "seed must be in 0 .. 2**32-1"),
    (["-o", "labelflip.budget=-1"], "must be >= 0"),
    (["-o", "ensembl.k=3"], "Did you mean 'ensemble'"),
    (["--device", "cuda:0" if not torch.cuda.is_available() else "nonsense"], "device"),
])
def test_bad_input_is_a_usage_error_before_any_training(ptk, tmp_path, args, message, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PTK_CACHE_DIR", str(cache))
    res = ptk("run", *TINY, "--defense", "none", *args, "--out", tmp_path / "r", expect=2)
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (cache / "models").exists()  # nothing was trained


@pytest.mark.slow
def test_budget_zero_gives_a_correct_unpoisoned_result(ptk, tmp_path):
    out = tmp_path / "zero"
    ptk("run", *TINY, "-o", "labelflip.budget=0", "--defense", "none", "--out", out)
    r = load_results(out)
    assert r["attack"]["poison_indices"] == []
    clean, poisoned = model_row(r, "clean"), model_row(r, "poisoned")
    assert poisoned["cached"]  # identical training labels: the clean model, from the cache
    assert stable(clean) == {**stable(poisoned), "name": "clean"}


@pytest.mark.slow
def test_budget_one_flips_one_label(ptk, tmp_path):
    out = tmp_path / "one"
    ptk("run", *TINY, "-o", "labelflip.budget=1", "--defense", "none", "--out", out)
    assert len(load_results(out)["attack"]["poison_indices"]) == 1


@pytest.mark.slow
def test_ensemble_with_more_members_than_samples_per_partition_still_reports(ptk, tmp_path):
    """Tiny partitions hold no poisoned sample (and miss classes): the run still completes."""
    out = tmp_path / "many"
    ptk("run", *TINY, "--subset", "60", "-o", "labelflip.budget=3", "--defense", "ensemble",
        "-o", "ensemble.k=20", "--epochs", "1", "--out", out)
    ens = model_row(load_results(out), "ensemble")
    sizes = ens["details"]["member_sizes"]
    assert sum(sizes) == 60 and len(sizes) == 20
    assert ens["details"]["abstaining_members"] == [i for i, n in enumerate(sizes) if n < 2]
    assert sum(ens["target_votes"].values()) == 20 - len(ens["details"]["abstaining_members"])


def test_plugins_are_not_imported_from_the_current_directory(tmp_path):
    shadow = tmp_path / "ptk_plugins"
    shadow.mkdir()
    marker = tmp_path / "imported"
    for name in ("__init__", "labelflip"):
        (shadow / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    exe = Path(sys.executable).parent / "ptk"
    res = subprocess.run([str(exe), "plugins"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    assert "labelflip" in res.stdout


# --- the model cache sees a model plugin's code ---------------------------------------------------

PROBE_MODULE = "ptk_cache_probe_model"
PROBE_SOURCE = '''
import math

from torch import nn

import ptk


class ProbeNet(nn.Module):
    def __init__(self, classes, shape):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 32), nn.ReLU())
        self.fc = nn.Linear(32, classes)

    def features(self, x):
        return self.body(x)

    def head(self, feats):
        return self.fc(feats)

    def forward(self, x):
        return self.head(self.features(x))


class ProbeModel(ptk.ModelSpec):
    name = "cache-probe"

    def build(self, num_classes, image_shape, options):
        return ProbeNet(num_classes, image_shape)


@ptk.hookimpl
def register_models(register):
    register(ProbeModel())
'''


def run_probe(registry, module, version: str, data_dir: Path, cache: Path) -> dict[str, bool]:
    """One tiny run of the probe model plugin (registered in-process as ``version``): model name -> cached."""
    from ptk.config import ExperimentConfig
    from ptk.experiment import run_experiment

    reg = registry()
    reg.add_plugin(module, "cache-probe", dist="ptk-cache-probe", version=version)
    config = ExperimentConfig(dataset="digits", model="cache-probe", attack="labelflip", defenses=[],
                              subset=200, epochs=1, lr=1e-2, batch_size=64, device="cpu",
                              options={"labelflip": {"budget": "5"}})
    r = run_experiment(config, reg, save=lambda _: None, data_root=data_dir, cache_root=cache)
    return {m["name"]: m["cached"] for m in r["models"]}


def test_editing_a_model_plugin_retrains_instead_of_loading_stale_weights(tmp_path, data_dir, monkeypatch, registry):
    import importlib

    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    source = site / f"{PROBE_MODULE}.py"
    source.write_text(PROBE_SOURCE)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, PROBE_MODULE, raising=False)  # and removed again after the test
    module = importlib.import_module(PROBE_MODULE)

    assert run_probe(registry, module, "1.0", data_dir, cache) == {"clean": False, "poisoned": False}
    assert run_probe(registry, module, "1.0", data_dir, cache) == {"clean": True, "poisoned": True}  # unchanged: reused
    # a new release of the plugin's distribution is a different model
    assert run_probe(registry, module, "1.1", data_dir, cache) == {"clean": False, "poisoned": False}
    # the same release with its code edited: a Dropout has no weights, so the old state dict would
    # load without complaint; only the source digest in the key keeps the old weights out
    source.write_text(PROBE_SOURCE.replace("nn.ReLU())", "nn.ReLU(), nn.Dropout(0.5))"))
    module = importlib.reload(module)
    assert run_probe(registry, module, "1.1", data_dir, cache) == {"clean": False, "poisoned": False}
    assert run_probe(registry, module, "1.1", data_dir, cache) == {"clean": True, "poisoned": True}


def test_model_code_without_source_is_named_and_warned_about(caplog):
    from ptk.cache import code_identity

    typed_in_a_repl = type("ReplNet", (torch.nn.Module,), {"__module__": "ptk_module_never_imported"})
    identity = code_identity(typed_in_a_repl, CifarResNet18)
    assert identity["ptk_module_never_imported.ReplNet"] == "source unavailable"
    assert len(identity["ptk_plugins._resnet_net.CifarResNet18"]) == 64  # a sha256 of plugins/_resnet_net.py
    assert "no source for ptk_module_never_imported.ReplNet" in caplog.text and "--no-cache" in caplog.text
