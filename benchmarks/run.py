"""ptk's cost, measured side by side in one process on one machine.

    python benchmarks/run.py --quick --markdown   # under 10 minutes on 2 CPU cores
    python benchmarks/run.py                      # full sizes; on a GPU also the full study setup

Every row compares two things measured in the same run, because absolute times on
shared machines are noise:

1. trainer: ptk's train_model vs a minimal hand-written loop (images/s)
2. data path: batched on-device crop+flip vs torchvision transforms + DataLoader(2 workers)
3. influence: batched forward-mode scores vs one backward pass per sample; error vs float64
4. clustering: ptk's mode=art vs ART's ActivationDefence on the same activations
5. cache: a `ptk run` that adds a defense to an earlier run, with the earlier run's cache vs --no-cache
6. growth: seconds per epoch at three training-set sizes
7. memory: peak RSS (and GPU memory) of a whole `ptk run`
8. study: both recipes on CIFAR-10 (s/epoch, images/s, accuracy, TFLOP/s, MFU on a GPU) and,
   on a GPU, the whole `ptk run --defense all --recipe fast` (see study.py)

Prints a table and writes benchmarks/results.json (or --json PATH). For a GPU machine
without internet, benchmarks/gpu_prepare.sh fills data-carry/ with the data and wheels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import StubNetwork, relative_error  # benchmarks/: the script's folder (tests put it on sys.path)
from study import import_cifar, network, ptk_cli, study_row, sync

from ptk.augment import random_crop_flip
from ptk.train import Recipe, autocast, train_model

ROOT = Path(__file__).resolve().parents[1]
#: The CIFAR-10 JPEG archive: beside the project (../shared/data), or in the git-ignored data-carry/
#: folder that travels to a GPU machine; --cifar PATH overrides.
ARCHIVES = [ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz", ROOT / "data-carry" / "cifar10-jpeg.tar.gz"]
ARCHIVE = next((a for a in ARCHIVES if a.exists()), ARCHIVES[0])


def images(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x.to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def minimal_loop(model, x, y, epochs: int, batch: int, lr: float, seed: int) -> None:
    """The shortest honest torch loop: same model, data, augmentation, optimiser, autocast."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cl = x.device.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).to(x.device).split(batch):
            xb = random_crop_flip(x[idx], gen)
            if cl:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(x.device):
                loss = F.cross_entropy(model(xb).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(repeats: int, *fns, setup=None) -> list[float]:
    """Each function's fastest of ``repeats`` runs, alternating between them so drift hits both alike.

    With ``setup``, each run is ``fn(setup())`` and only ``fn`` is timed (e.g. a fresh model to train).
    """
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if setup is None:
                best[i] = min(best[i], timed(fn))
            else:
                arg = setup()
                best[i] = min(best[i], timed(lambda: fn(arg)))
    return best


def row_trainer(device, n, width, epochs) -> dict:
    x, y = images(n, device)
    recipe = Recipe(epochs=epochs, batch_size=128, lr=1e-4)
    # warm up both (allocator, cuDNN autotune), then alternate and keep the best of each, on fresh models
    train_model(network(width, x, device), x[:256], y[:256], Recipe(epochs=1, batch_size=128), 0)
    minimal_loop(network(width, x, device), x[:256], y[:256], 1, 128, 1e-4, 0)
    ptk_s, min_s = best_of(3, lambda m: (train_model(m, x, y, recipe, 0), sync(device)),
                           lambda m: (minimal_loop(m, x, y, epochs, 128, 1e-4, 0), sync(device)),
                           setup=lambda: network(width, x, device))
    a, b = n * epochs / ptk_s, n * epochs / min_s
    row = {"row": "1 trainer", "what": f"ptk train_model vs minimal loop, {n} images x {epochs} ep, width {width}",
           "ptk": f"{a:.0f} img/s", "baseline": f"{b:.0f} img/s", "ratio": round(a / b, 3), "target": ">= 0.95"}
    if device.type == "cuda":  # how often each loop makes the host wait for the GPU, in one epoch
        one = Recipe(epochs=1, batch_size=128, lr=1e-4)
        # the models are built (and copied to the GPU, one blocking copy per tensor) before counting: the
        # earlier count of 127 per epoch was mostly these ~120 copies, made once per model, not per epoch
        m1, m2 = network(width, x, device), network(width, x, device)
        ptk_syncs = host_syncs(lambda: train_model(m1, x, y, one, 0))
        min_syncs = host_syncs(lambda: minimal_loop(m2, x, y, 1, 128, 1e-4, 0))
        row["host_syncs_per_epoch"] = {"ptk": ptk_syncs, "minimal_loop": min_syncs}
        row["ptk"] += f" ({ptk_syncs} host syncs/epoch)"
        row["baseline"] += f" ({min_syncs} host syncs/epoch)"
    return row


def host_syncs(fn) -> int | None:
    """Synchronising CUDA calls made by ``fn`` (torch's sync debug mode warns once per call); None if unavailable."""
    import warnings

    try:
        torch.cuda.set_sync_debug_mode("warn")
    except (RuntimeError, AttributeError):
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def row_data_path(device, n) -> dict:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Dataset

    x, _ = images(n, torch.device("cpu"))
    hwc = x.permute(0, 2, 3, 1).numpy()

    class PilSet(Dataset):
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])

        def __len__(self):
            return n

        def __getitem__(self, i):
            from PIL import Image

            return self.tf(Image.fromarray(hwc[i]))

    def torchvision_path():
        for b in DataLoader(PilSet(), batch_size=128, num_workers=2, shuffle=True):
            b.to(device)

    xd = x.to(device)
    gen = torch.Generator().manual_seed(0)

    def ptk_path():
        for idx in torch.randperm(n, generator=gen).to(device).split(128):
            random_crop_flip(xd[idx], gen).float().div_(255)
        sync(device)

    ptk_path(), torchvision_path()  # warm up both (allocator, PIL, the workers' imports)
    ptk_s, tv_s = best_of(3, ptk_path, torchvision_path)
    a, b = n / ptk_s, n / tv_s
    return {"row": "2 data path", "what": f"batched on-device crop+flip vs torchvision per-image + DataLoader(2 workers), {n} images",
            "ptk": f"{a:.0f} img/s", "baseline": f"{b:.0f} img/s", "ratio": round(a / b, 2), "target": "> 1"}


def row_cache(quick: bool) -> dict:
    """A run that adds a defense to an earlier one: with the earlier run's cache vs the same run with --no-cache."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PTK_CACHE_DIR": f"{tmp}/cache", "PTK_DATA_DIR": f"{tmp}/data"}
        base = ["run", "--preset", "quick", "--subset", "800" if quick else "1347", "--epochs", "3"]
        ptk_cli([*base, "--defense", "none", "--out", f"{tmp}/earlier"], env)  # caches clean and poisoned models
        run = [*base, "--defense", "loss-outliers"]

        def with_the_earlier_cache() -> Path:  # a copy each time: a run caches loss-outliers' retraining too
            fresh = Path(tempfile.mkdtemp(dir=tmp))
            shutil.copytree(f"{tmp}/cache", fresh / "cache")
            return fresh

        def cached_run(d: Path) -> None:
            ptk_cli([*run, "--out", str(d / "run")], {**env, "PTK_CACHE_DIR": str(d / "cache")})
            cached.append(d / "run" / "results.json")

        def uncached_run(d: Path) -> None:
            ptk_cli([*run, "--no-cache", "--out", str(d / "run")], env)

        cached: list[Path] = []  # results.json of each cached run
        cached_s, uncached_s = best_of(2, cached_run, uncached_run, setup=with_the_earlier_cache)
        reused = [m["name"] for m in json.loads(cached[-1].read_text())["models"] if m.get("cached")]
    return {"row": "5 cache", "what": "ptk run adding a defense to an earlier run, with its cache vs --no-cache "
                                      "(quick preset, 3 epochs)",
            "ptk": f"{cached_s:.1f} s (cached: {', '.join(reused)})", "baseline": f"{uncached_s:.1f} s",
            "ratio": round(cached_s / uncached_s, 2), "target": "clean and poisoned not retrained"}


def row_growth(device, sizes, width) -> dict:
    per_epoch = []
    for n in sizes:
        x, y = images(n, device)
        one_epoch = Recipe(epochs=1, batch_size=128)
        per_epoch += best_of(2, lambda m: (train_model(m, x, y, one_epoch, 0), sync(device)),
                             setup=lambda: network(width, x, device))
    per_image = [s / n * 1e3 for s, n in zip(per_epoch, sizes)]
    return {"row": "6 growth", "what": f"s/epoch at {', '.join(map(str, sizes))} images (width {width})",
            "ptk": ", ".join(f"{s:.2f}" for s in per_epoch), "baseline": "linear",
            "ratio": round(per_image[-1] / per_image[0], 2), "target": "~1.0 (ms/image, largest vs smallest)"}


def peak_memory_of(args: list[str], data_dir: str | None = None) -> tuple[float, float | None]:
    """Peak RSS and peak GPU memory allocated (MiB; None without a GPU) of a child `ptk` process."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PTK_CACHE_DIR": f"{tmp}/cache", "PTK_DATA_DIR": data_dir or f"{tmp}/data"}
        # VmHWM, not getrusage's ru_maxrss: on Linux a child's ru_maxrss keeps the parent's RSS at fork time,
        # so after the earlier rows it would report this (large) benchmark process instead of the run
        code = ("import re, sys, torch; from ptk.cli import cli\n"
                "rc = 0\n"
                "try:\n    cli(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code or 0\n"
                "gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else -1\n"
                "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
                "print(hwm, gpu, rc)")
        out = subprocess.run([sys.executable, "-c", code, *args, "--out", f"{tmp}/r"], env=env,
                             capture_output=True, text=True, check=True)
        rss_kib, gpu_bytes, rc = out.stdout.strip().splitlines()[-1].split()
        if rc != "0":  # a failed run's peak memory measures nothing
            raise RuntimeError(f"ptk {' '.join(args)} exited {rc}:\n{out.stderr[-2000:]}")
        return int(rss_kib) / 1024, (int(gpu_bytes) / 2**20 if int(gpu_bytes) >= 0 else None)


def row_memory(quick: bool, archive: Path) -> dict:
    def shown(label: str, mem: tuple[float, float | None]) -> str:
        return f"{label}: RSS {mem[0]:.0f} MiB" + (f", GPU {mem[1]:.0f} MiB" if mem[1] is not None else "")

    parts = [shown("quick preset", peak_memory_of(["run", "--preset", "quick", "--defense", "none",
                                                   *(["--epochs", "1"] if quick else [])]))]
    if archive.exists():
        n = "5000" if quick else "20000"
        with tempfile.TemporaryDirectory() as data:
            import_cifar(archive, Path(data))
            mem = peak_memory_of(["run", "--dataset", "cifar10", "--subset", n, "--test-subset", "1000",
                                  "--epochs", "1", "-o", "resnet18.width=16", "--defense", "none"], data)
        parts.append(shown(f"CIFAR-10 {n} images, width 16", mem))
    return {"row": "7 memory", "what": "peak memory of a whole `ptk run` (CIFAR: 1 epoch; quick preset: 1 epoch in --quick)", "ptk": "; ".join(parts),
            "baseline": "-", "ratio": None, "target": "-"}


def row_influence(device, n, width, ref_n) -> dict:
    """Batched forward-mode influence vs one backward pass per sample; error against a float64 loop."""
    from ptk_plugins.influence import influence_scores, naive_influence_scores, target_gradient

    x, y = images(n, device)
    model = network(width, x, device)
    train_model(model, x, y, Recipe(epochs=1, batch_size=128, lr=1e-3), 0)  # realistic BatchNorm statistics
    tx, ty = x[:1], torch.tensor([1], device=device)
    direction = target_gradient(model, tx, ty)
    influence_scores(model, x[:64], y[:64], direction)  # warm-up
    naive_influence_scores(model, x[:8], y[:8], tx, ty)
    fast = influence_scores(model, x, y, direction, batch_size=64)
    fast_s, naive_s = best_of(2, lambda: (influence_scores(model, x, y, direction, batch_size=64), sync(device)),
                              lambda: (naive_influence_scores(model, x, y, tx, ty), sync(device)))
    ref = naive_influence_scores(model, x[:ref_n], y[:ref_n], tx, ty, dtype=torch.float64)
    err = relative_error(fast[:ref_n], ref)
    return {"row": "3 influence", "what": f"batched jvp (batch 64) vs per-sample backward loop, {n} images, width "
                                          f"{width}; error vs float64 loop on {ref_n}",
            "ptk": f"{fast_s:.1f} s (max rel. error {err:.1e})", "baseline": f"{naive_s:.1f} s",
            "ratio": round(naive_s / fast_s, 2), "target": "speed-up >= 2 (CPU), >= 20 (GPU); error < 1e-4",
            "rel_error": err}


def clustered_activations(n: int, dims: int, classes: int = 10, seed: int = 0):
    """Activations of ``n`` samples: one blob per class, and 5% of class 5 drawn from class 4's blob (a label flip)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (classes, dims))
    labels = np.arange(n) % classes
    blob = labels.copy()
    flipped = np.flatnonzero(labels == 5)[: n // classes // 20]
    blob[flipped] = 4
    acts = centres[blob] + rng.normal(0, 0.15, (n, dims))
    return np.clip(acts, 0, None).astype(np.float32), labels


def row_clustering(n, dims) -> dict:
    """ptk's mode=art clustering vs ART's ActivationDefence on identical activations and seed."""
    from ptk_plugins.activation_clustering import art_mode_flags
    from ptk_plugins.art._activation_defence import run_activation_defence
    from ptk_plugins.art._bridge import art_classifier, quiet_art

    acts, labels = clustered_activations(n, dims)
    options = {"nb_dims": 10, "reduce": "pca", "analysis": "smaller"}

    def ptk_flags_of():
        return art_mode_flags(acts, labels, 10, options["reduce"], options["nb_dims"], options["analysis"], 0.35, 0)[0]

    with quiet_art():
        clf = art_classifier(StubNetwork(dims, 10), (dims,), 10, torch.device("cpu"))

        def art_flags_of():
            return run_activation_defence(clf, acts, labels, options, 0)[0]

        ptk_flags, art_flags = ptk_flags_of(), art_flags_of()
        # timed after a first call of each (imports, BLAS and sklearn thread pools warmed up)
        ptk_s, art_s = best_of(3, ptk_flags_of, art_flags_of)
    agree = bool((ptk_flags == art_flags).all())
    return {"row": "4 clustering", "what": f"ptk mode=art vs ART ActivationDefence, {n} x {dims} activations, "
                                           "PCA 10, smaller",
            "ptk": f"{ptk_s:.2f} s (flags {'identical' if agree else 'DIFFER'}: {int(ptk_flags.sum())} flagged)",
            "baseline": f"{art_s:.2f} s", "ratio": round(art_s / ptk_s, 2), "target": "flags identical",
            "flags_identical": agree}


def row_study(device, quick: bool, archive: Path, peak: float | None, seeds: int = 1, whole_run: bool = True,
              modes: tuple[str, ...] = ("off", "auto"), study_seeds: int | None = None) -> dict:
    """Both recipes in each ``--compile`` mode of ``modes`` (``auto``: CUDA graphs on a GPU, eager on the CPU),
    ``seeds`` seeds each."""
    if device.type == "cuda" and not quick:  # the seed study's full setup
        run = ["--dataset", "cifar10", "--attack", "labelflip", "--defense", "all", "--recipe", "fast"]
        return study_row(archive, device, None, None, 64, 10, run if whole_run else None, peak, seeds=seeds,
                         modes=modes, study_seeds=study_seeds)
    # the same code path on a small subset; a whole `ptk run` of all defenses would take hours on a CPU
    return study_row(archive, device, 4000 if quick else 10_000, 1000 if quick else 2000, 16 if quick else 64,
                     4 if quick else 3, None, peak, seeds=seeds, modes=modes, study_seeds=study_seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: under 10 minutes on 2 CPU cores")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    ap.add_argument("--only", help="comma-separated row numbers to run")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--cifar", type=Path, default=ARCHIVE, help="CIFAR-10 archive for rows 7 and 8")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU (default: known GPUs)")
    ap.add_argument("--seeds", type=int, default=1, help="row 8: seeds per recipe and compile mode (accuracy "
                    "compiled vs eager is compared over them)")
    ap.add_argument("--study-seeds", type=int, help="row 8: seeds of the study recipe (default: --seeds)")
    ap.add_argument("--no-whole-run", action="store_true", help="row 8 on a GPU: skip the whole `ptk run`")
    ap.add_argument("--compile-modes", default="off,auto", help="row 8: --compile modes timed side by side")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q = args.quick
    from study import bf16_peak

    peak = args.peak_tflops * 1e12 if args.peak_tflops else bf16_peak(device)
    rows_fns = {
        "1": lambda: row_trainer(device, 1024 if q else 10_000, 16 if q else 64, 2),
        "2": lambda: row_data_path(device, 4096 if q else 20_000),
        "5": lambda: row_cache(q),
        "6": lambda: row_growth(device, [1000, 2000, 4000] if q else [5000, 10_000, 20_000], 8 if q else 64),
        "3": lambda: row_influence(device, 256 if q else 2000, 16 if q else 64, 128 if q else 500),
        "4": lambda: row_clustering(10_000 if q else 50_000, 128 if q else 512),
        "7": lambda: row_memory(q, args.cifar),
        "8": lambda: row_study(device, q, args.cifar, peak, args.seeds, not args.no_whole_run,
                               tuple(args.compile_modes.split(",")), args.study_seeds),
    }
    wanted = args.only.split(",") if args.only else sorted(rows_fns)
    rows = []
    for key in sorted(wanted):
        print(f"running row {key} ...", file=sys.stderr, flush=True)
        rows.append(rows_fns[key]())
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads()}
    print(f"\nmachine: {machine}\n")
    cols = ["row", "what", "ptk", "baseline", "ratio", "target"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols))
    if args.markdown:  # the same table, ready for docs/performance.md
        print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |")
    from ptk.atomic import write_json

    write_json(args.json, {"machine": machine, "quick": q, "rows": rows, "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
