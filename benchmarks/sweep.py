"""Sweep throughput: cells per hour of one grid, local executor vs Ray, side by side on one machine.

    python benchmarks/sweep.py            # 8 small digits cells per executor; about 4 minutes on 2 CPU cores
    python benchmarks/sweep.py --cells 16 # a larger grid (more cells amortise Ray's start-up)

Every executor runs the same grid from an empty model cache and a new store,
as a user's ``ptk sweep run`` would (process start, data loading and, for Ray,
starting a local cluster included). Printed: wall time, cells per hour, and
Ray's overhead as the ratio of its wall time to the local executor's. On a
machine with a GPU it also compares one cell per GPU with four
(``--gpus-per-cell 0.25``) for width-16 models: the goal is >= 2x cells per hour
from packing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = """preset = "quick"
subset = 800
epochs = {epochs}
lr = 3e-3
defenses = ["loss-outliers"]
device = "{device}"
[options.resnet18]
width = {width}
[grid]
seed = [0, 1]
targets = {targets}
"""


def timed_sweep(grid: str, extra: list[str], workdir: Path, name: str) -> float:
    """Wall seconds of one ``ptk sweep run`` of ``grid`` from an empty cache; fails loudly if a cell fails."""
    folder = workdir / name
    folder.mkdir()
    (folder / "grid.toml").write_text(grid)
    env = {**os.environ, "PTK_CACHE_DIR": str(folder / "cache")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ptk", "sweep", "run", str(folder / "grid.toml"), "--db",
                           str(folder / "sweep.db"), *extra], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=8, help="cells per executor (2 seeds x cells/2 targets)")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    import torch

    cpus = os.cpu_count() or 1
    runs = [("local", "cpu", 8, []),
            ("ray, 1 CPU per cell", "cpu", 8, ["--executor", "ray", "--cpus-per-cell", "1"]),
            (f"ray, {cpus} CPUs per cell", "cpu", 8, ["--executor", "ray", "--cpus-per-cell", str(cpus)])]
    if torch.cuda.is_available():
        runs += [("ray, 1 cell per GPU", "cuda", 16, ["--executor", "ray", "--gpus-per-cell", "1"]),
                 ("ray, 4 cells per GPU", "cuda", 16, ["--executor", "ray", "--gpus-per-cell", "0.25"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, device, width, extra) in enumerate(runs):
            grid = GRID.format(epochs=args.epochs, device=device, width=width, targets=args.cells // 2)
            seconds = timed_sweep(grid, extra, Path(tmp), f"run{i}")
            rows.append((name, seconds, 3600 * args.cells / seconds))
    print(f"| executor | {args.cells} cells, wall s | cells/hour | wall time / local's |")
    print("|---|---|---|---|")
    for name, seconds, per_hour in rows:
        print(f"| {name} | {seconds:.1f} | {per_hour:.0f} | {seconds / rows[0][1]:.2f} |")
    gpu = {name: per_hour for name, _, per_hour in rows if "GPU" in name}
    if gpu:
        print(f"\npacking 4 cells per GPU: {gpu['ray, 4 cells per GPU'] / gpu['ray, 1 cell per GPU']:.2f}x "
              "cells/hour (goal >= 2x)")


if __name__ == "__main__":
    main()
