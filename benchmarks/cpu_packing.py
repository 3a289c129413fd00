"""Cells per hour on a CPU: one run at a time with every core, against one run per core at one thread each.

    python benchmarks/cpu_packing.py            # run it on an idle machine; about 2 minutes on 2 cores
    python benchmarks/cpu_packing.py --epochs 6 # the quick preset's own epochs

Why: a sweep or bench on a CPU machine can run its cells one after another (``--executor local``, torch's
thread pool over every core) or side by side (``--executor ray --cpus-per-cell 1``). Small models, like the
quick preset's width-16 ResNet-18 on 1,347 digits, do not keep several threads busy, so the side-by-side
layout may finish more cells per hour. This measures both on the same command, each from an empty model cache,
and prints the ratio. (The GPU counterpart, several cells per GPU, is row 2 of ``benchmarks/run.py``.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def ptk_run(out: Path, threads: int, epochs: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``ptk run --preset quick`` (clean and poisoned model, no defense) into ``out``, with its own empty cache."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PTK_CACHE_DIR": str(out / "cache")}
    argv = [sys.executable, "-m", "ptk", "run", "--preset", "quick", "--epochs", str(epochs), "--defense", "none",
            *extra, "--out", str(out / "run")]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wall(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"ptk run failed ({p.returncode}):\n{err[-2000:]}")


def main(epochs: int = 2, cores: int | None = None, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Both layouts timed side by side; ``extra`` are more ``ptk run`` arguments (the tests shrink the run)."""
    cores = cores or os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        wall([ptk_run(Path(tmp) / "serial", cores, epochs, extra)])
        serial = time.perf_counter() - start
        start = time.perf_counter()
        wall([ptk_run(Path(tmp) / f"packed{i}", 1, epochs, extra) for i in range(cores)])
        packed = time.perf_counter() - start
    row = {"cores": cores, "epochs": epochs, "one run, all threads (s)": round(serial, 1),
           f"{cores} runs at once, 1 thread each (s)": round(packed, 1),
           "runs per hour, one at a time": round(3600 / serial, 1),
           "runs per hour, one per core": round(3600 * cores / packed, 1),
           "ratio": round(serial * cores / packed, 2)}
    for k, v in row.items():
        print(f"{k:40} {v}")
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cores", type=int, default=None, help="default: os.cpu_count()")
    args = parser.parse_args()
    main(args.epochs, args.cores)
