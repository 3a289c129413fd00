"""Cells per hour, one run at a time against several side by side: on the CPU (one per core) or on one GPU.

    python benchmarks/packing.py                    # CPU: run it on an idle machine; about 2 minutes on 2 cores
    python benchmarks/packing.py --epochs 6         # the quick preset's own epochs
    python benchmarks/packing.py --device cuda --cells 4 -- --dataset cifar10 --recipe fast -o resnet18.width=16

Why: a sweep or bench can run its cells one after another (``--executor local``) or side by side (``--executor
ray``, ``--cpus-per-cell 1`` on a CPU machine, ``--gpus-per-cell 0.25`` to put four cells on one GPU). Small
models, like the quick preset's width-16 ResNet-18, keep neither several CPU threads nor a GPU busy, so the
side-by-side layout may finish more cells per hour. This measures both on the same command, each run from an
empty model cache and with its own seed (so no run reads another's models), and prints the ratio.

- CPU: one run with every thread, then one run per core at one thread each.
- GPU (``--device cuda``): ``--cells`` runs one after another, then the same runs all at once on the one GPU.
  Each is a process of its own, as a Ray worker holding a fractional GPU is; Ray itself is not needed (the GPU
  machines this project is lent have no Ray), and what is measured is the sharing of the GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def ptk_run(out: Path, threads: int, epochs: int, extra: tuple[str, ...] = (), seed: int = 0,
            device: str = "cpu") -> subprocess.Popen:
    """``ptk run --preset quick`` (clean and poisoned model, no defense) into ``out``, with its own empty cache;
    ``extra`` arguments come last, so they override the preset's (``--dataset cifar10``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PTK_CACHE_DIR": str(out / "cache")}
    argv = [sys.executable, "-m", "ptk", "run", "--preset", "quick", "--epochs", str(epochs), "--defense", "none",
            "--seed", str(seed), "--device", device, *extra, "--out", str(out / "run")]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wall(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"ptk run failed ({p.returncode}):\n{err[-2000:]}")


def timed(procs) -> float:
    start = time.perf_counter()
    wall(procs())
    return time.perf_counter() - start


def main(epochs: int = 2, cores: int | None = None, extra: tuple[str, ...] = (), device: str = "cpu",
         cells: int | None = None) -> dict[str, float]:
    """Both layouts timed side by side; ``extra`` are more ``ptk run`` arguments (the tests shrink the run)."""
    cores = cores or os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if device == "cpu":
            n = cells or cores
            serial = timed(lambda: [ptk_run(root / "serial", cores, epochs, extra)]) * n  # n runs, one at a time
            packed = timed(lambda: [ptk_run(root / f"packed{i}", 1, epochs, extra, i) for i in range(n)])
            layout = f"{n} runs at once, 1 thread each (s)"
        else:
            n = cells or 4
            threads = max(1, cores // n)
            serial = sum(timed(lambda i=i: [ptk_run(root / f"serial{i}", cores, epochs, extra, i, device)])
                         for i in range(n))
            packed = timed(lambda: [ptk_run(root / f"packed{i}", threads, epochs, extra, i, device) for i in range(n)])
            layout = f"{n} runs at once on one GPU (s)"
    row = {"device": device, "cores": cores, "epochs": epochs, "cells": n,
           f"{n} runs one at a time (s)": round(serial, 1), layout: round(packed, 1),
           "runs per hour, one at a time": round(3600 * n / serial, 1),
           "runs per hour, side by side": round(3600 * n / packed, 1),
           "ratio": round(serial / packed, 2)}
    for k, v in row.items():
        print(f"{k:40} {v}")
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cores", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: several runs on one GPU")
    parser.add_argument("--cells", type=int, default=None, help="runs side by side (default: CPU cores, or 4 on a GPU)")
    parser.add_argument("--json", type=Path, help="also write the row here")
    parser.add_argument("extra", nargs="*", help="more `ptk run` arguments, after --")
    args = parser.parse_args()
    row = main(args.epochs, args.cores, tuple(args.extra), args.device, args.cells)
    if args.json:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=1))
