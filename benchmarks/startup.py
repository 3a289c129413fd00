"""Start-up time of the commands that train nothing, side by side with `python -c "import torch"`.

    python benchmarks/startup.py          # median of 5 runs each; run it on an idle machine

Goals (issue: a plugin contract that fails early): `ptk --help` under 0.5 s and `ptk sweep status` under 1 s
on an idle 2-core machine; both import neither torch nor any plugin.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "tests" / "data" / "store-0.1.0.sqlite"


def seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, cwd=tempfile.gettempdir())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(runs: int = 5) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "sweep.db"
        shutil.copy(STORE, store)
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "ptk --help": [sys.executable, "-m", "ptk", "--help"],
            "ptk --version": [sys.executable, "-m", "ptk", "--version"],
            "ptk sweep status": [sys.executable, "-m", "ptk", "sweep", "status", str(store)],
            "ptk plugins": [sys.executable, "-m", "ptk", "plugins"],
        }
        timed = {name: seconds(argv, runs) for name, argv in commands.items()}
    torch_s = timed['python -c "import torch"']
    rows = [{"command": n, "seconds": round(s, 3), "vs import torch": round(s / torch_s, 2)} for n, s in timed.items()]
    for r in rows:
        print(f"{r['command']:28} {r['seconds']:7.3f} s   {r['vs import torch']:5.2f} x import torch")
    return rows


if __name__ == "__main__":
    main()
