"""Row 8 of the benchmark: the seed study's training on CIFAR-10, both recipes, and a whole `ptk run`.

On a GPU (``python benchmarks/run.py``) this is the full setup: 50,000 training
images, ResNet-18 width 64, 10 epochs, the ``study`` (Adam 1e-4) and ``fast``
(SGD Nesterov) recipes, then ``ptk run --defense all --recipe fast`` end to end.
On the CPU (``--quick``) the same functions run on a small subset, so the GPU
code path (autocast, channels_last, the trainer, the CLI) is exercised
everywhere; ``tests/test_benchmarks.py`` calls them with tiny sizes.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ptk.compiled import resolve_compile
from ptk.network import Network, channel_stats
from ptk.train import named_recipe, predict_proba, train_model
from ptk_plugins.image_datasets import Cifar10
from ptk_plugins.resnet import CifarResNet18

#: Dense bf16 peak FLOP/s by GPU name fragment (vendor datasheets, SXM parts); --peak-tflops overrides.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "4090": 165e12}


def bf16_peak(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def train_flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> float:
    """FLOPs of one training image (forward + backward), counted by torch's FlopCounterMode on a CPU copy."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).float().cpu().train()
    x = torch.rand(2, *image_shape)  # floats in [0, 1]: a ptk Network and a bare module both take them
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(m(x), torch.zeros(2, dtype=torch.long)).backward()
    return counter.get_total_flops() / 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network(width: int, x: torch.Tensor, device: torch.device, classes: int = 10, seed: int = 0) -> Network:
    """A fresh ResNet-18 of ``width`` behind ptk's normalisation (statistics of ``x``), seeded, on ``device``."""
    torch.manual_seed(seed)
    return Network(CifarResNet18(classes, width=width), *channel_stats(x)).to(device)


def ptk_cli(args: list[str], env: dict | None = None, ok: tuple[int, ...] = (0,)) -> float:
    """Wall seconds of ``python -m ptk ARGS`` in a child process; an exit code not in ``ok`` raises with its stderr."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptk", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise RuntimeError(f"ptk {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


@dataclass
class RecipeTiming:
    recipe: str
    train_images: int
    epochs: int
    batch_size: int
    lr: float
    seconds_per_epoch: float
    images_per_second: float
    test_accuracy: float
    gflop_per_image: float
    achieved_tflops: float  # training FLOP/s actually reached (FlopCounterMode count x images per second)
    mfu: float | None  # achieved FLOP/s over the GPU's bf16 peak; None where no peak is known
    compile: str = "off"  # the resolved --compile mode of the timed training
    seed: int = 0
    warmup_seconds: float = 0.0  # the one-epoch warm-up on 2,048 images: includes the compile, when first in the process


def load_cifar(data_dir: Path, train: int | None, test: int | None, device: torch.device):
    """CIFAR-10 from a ptk data directory (after `ptk data import cifar10 ...`), a stratified subset, on ``device``."""
    return Cifar10().load(data_dir, {}).subset(train, test, seed=0).to(device)


def time_recipe(data, name: str, width: int, epochs: int, flops: float, peak: float | None,
                seed: int = 0, compile_mode: str = "off") -> RecipeTiming:
    """Train a clean ResNet-18 with recipe ``name`` as `ptk run` would; seconds per epoch and test accuracy.

    A one-epoch run on 2,048 images first warms up the allocator, cuDNN's autotuner and (``compile_mode``) the
    compiled step, so the timed run measures steady state; its time is reported as ``warmup_seconds``.
    """
    device = data.x_train.device
    recipe = named_recipe(name, epochs=epochs)

    def fresh() -> Network:
        return network(width, data.x_train, device, data.num_classes, seed)

    warm = min(2048, len(data.y_train))
    start = time.perf_counter()
    train_model(fresh(), data.x_train[:warm], data.y_train[:warm], named_recipe(name, epochs=1), seed,
                compile_mode=compile_mode)
    sync(device)
    warmup = time.perf_counter() - start
    model = fresh()
    sync(device)
    start = time.perf_counter()
    train_model(model, data.x_train, data.y_train, recipe, seed, compile_mode=compile_mode)
    sync(device)
    seconds = time.perf_counter() - start
    acc = (predict_proba(model, data.x_test).argmax(1) == data.y_test).float().mean().item()
    ips = len(data.y_train) * epochs / seconds
    return RecipeTiming(name, len(data.y_train), epochs, recipe.batch_size, recipe.lr, round(seconds / epochs, 3),
                        round(ips, 1), round(acc, 4), round(flops / 1e9, 3), round(flops * ips / 1e12, 3),
                        round(flops * ips / peak, 4) if peak else None, compile_mode, seed, round(warmup, 2))


def time_ptk_run(args: list[str], data_dir: Path) -> dict:
    """Wall seconds of one whole `ptk run ARGS` in a child process with a fresh cache, and what it reported."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PTK_DATA_DIR": str(data_dir), "PTK_CACHE_DIR": f"{tmp}/cache"}
        # exit 1: a defense failed; still a timed run with a report
        seconds = ptk_cli(["run", *args, "--out", f"{tmp}/run"], env, ok=(0, 1))
        res = json.loads(Path(f"{tmp}/run/results.json").read_text())
    models = {m["name"]: {k: m.get(k) for k in ("test_accuracy", "target_pred", "train_seconds", "failed")}
              for m in res["models"]}
    return {"args": args, "wall_seconds": round(seconds, 1), "status": res["status"], "models": models}


def import_cifar(archive: Path, data_dir: Path) -> None:
    ptk_cli(["data", "import", "cifar10", str(archive), "--data-dir", str(data_dir)])


def compile_comparison(timings: list[RecipeTiming]) -> list[dict]:
    """Per recipe, the compiled mode against eager, side by side: s/epoch ratio (eager over compiled) and the
    difference of their mean test accuracies over the seeds (compiled minus eager, in points)."""
    def mean(ts: list[RecipeTiming], field: str) -> float:
        return sum(getattr(t, field) for t in ts) / len(ts)

    out = []
    for name in dict.fromkeys(t.recipe for t in timings):
        eager = [t for t in timings if t.recipe == name and t.compile == "off"]
        modes = dict.fromkeys(t.compile for t in timings if t.recipe == name and t.compile != "off")
        for mode in modes if eager else ():
            comp = [t for t in timings if t.recipe == name and t.compile == mode]
            out.append({"recipe": name, "compile": mode, "seeds": len(comp),
                        "speedup": round(mean(eager, "seconds_per_epoch") / mean(comp, "seconds_per_epoch"), 3),
                        "accuracy_difference_points": round(100 * (mean(comp, "test_accuracy")
                                                                   - mean(eager, "test_accuracy")), 2),
                        "compile_seconds": round(comp[0].warmup_seconds - eager[0].warmup_seconds, 1)})
    return out


def study_row(archive: Path | None, device: torch.device, train: int | None, test: int | None, width: int,
              epochs: int, run_args: list[str] | None, peak: float | None, data_dir: Path | None = None,
              modes: tuple[str, ...] = ("off", "auto"), seeds: int = 1, study_seeds: int | None = None) -> dict:
    """Both recipes' timings, eager and compiled (``modes``, resolved for the device: ``auto`` is ``off`` on the
    CPU, so it is timed once there), over ``seeds`` seeds (``study_seeds`` for the slow study recipe, when given),
    and, if ``run_args``, one whole `ptk run` on the same data directory."""
    with tempfile.TemporaryDirectory() as tmp:
        if data_dir is None:
            if archive is None or not archive.exists():
                return {"row": "8 study", "what": "CIFAR-10 archive not found (--cifar PATH)", "ptk": "skipped",
                        "baseline": "-", "ratio": None, "target": "-"}
            data_dir = Path(tmp)
            import_cifar(archive, data_dir)
        data = load_cifar(data_dir, train, test, device)
        flops = train_flops_per_image(CifarResNet18(data.num_classes, data.image_shape[0], width), data.image_shape)
        timings: list[RecipeTiming] = []
        failures: list[dict] = []
        resolved = list(dict.fromkeys(resolve_compile(m, device) for m in modes))
        for name in ("study", "fast"):  # each printed as it finishes: a run cut off still shows it
            for mode in resolved:
                for seed in range(seeds if name == "fast" or study_seeds is None else study_seeds):
                    try:
                        timings.append(time_recipe(data, name, width, epochs, flops, peak, seed, mode))
                    except Exception as exc:  # a compiler that fails here (no C compiler, a torch bug) is a
                        if mode == "off":     # finding to record, not a reason to lose the eager timings
                            raise
                        failures.append({"recipe": name, "compile": mode, "error": f"{type(exc).__name__}: {exc}"[:500]})
                        print(f"  recipe {name}, compile {mode} FAILED: {failures[-1]['error']}", file=sys.stderr)
                        break
                    print(f"  recipe {name}: {json.dumps(asdict(timings[-1]))}", file=sys.stderr, flush=True)
        run = time_ptk_run(run_args, data_dir) if run_args else None
    compared = compile_comparison(timings)
    best = {name: min((t for t in timings if t.recipe == name), key=lambda t: t.seconds_per_epoch)
            for name in ("study", "fast")}
    study, fast = best["study"], best["fast"]
    shown = "; ".join(f"{t.recipe}: {t.seconds_per_epoch:.2f} s/epoch, {t.images_per_second:.0f} img/s, "
                      f"acc {t.test_accuracy:.3f}, {t.achieved_tflops:.2f} TFLOP/s"
                      + (f" (MFU {t.mfu:.1%})" if t.mfu is not None else "") + f", compile {t.compile}"
                      for t in (study, fast))
    for c in compared:
        shown += (f"; {c['recipe']} compiled ({c['compile']}) {c['speedup']:.2f}x eager, accuracy "
                  f"{c['accuracy_difference_points']:+.2f} points over {c['seeds']} seed(s)")
    if run:
        shown += f"; whole `ptk run` {run['wall_seconds']:.0f} s ({run['status']})"
    return {"row": "8 study", "what": f"CIFAR-10 {len(data.y_train)} train / {len(data.y_test)} test, width {width}, "
                                      f"{epochs} epochs, device {device.type}",
            "ptk": shown, "baseline": "study recipe", "ratio": round(study.seconds_per_epoch / fast.seconds_per_epoch, 2),
            "target": "GPU: <= 1 s/epoch (fast), whole run < 180 s",
            "recipes": [asdict(t) for t in timings], "compile": compared, "compile_failures": failures,
            "ptk_run": run}
