"""ptk's cost, measured side by side in one process on one machine.

    python benchmarks/run.py            # full sizes (GPU: also the full study setup)
    python benchmarks/run.py --quick    # under 10 minutes on 2 CPU cores

Every row compares two things measured in the same run, because absolute times on
shared machines are noise. Prints a table and writes benchmarks/results.json
(or --json PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
sys.path.insert(0, str(ROOT / "tests"))

from ptk.augment import random_crop_flip  # noqa: E402
from ptk.network import Network, channel_stats  # noqa: E402
from ptk.train import Recipe, autocast, train_model  # noqa: E402
from ptk_plugins.resnet import CifarResNet18  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x.to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def network(width: int, x: torch.Tensor, device: torch.device) -> Network:
    torch.manual_seed(0)
    return Network(CifarResNet18(10, width=width), *channel_stats(x)).to(device)


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


def row_trainer(device, n, width, epochs) -> dict:
    x, y = images(n, device)
    recipe = Recipe(epochs=epochs, batch_size=128, lr=1e-4)
    # warm up both (allocator, cuDNN autotune), then alternate twice and keep the best of each
    train_model(network(width, x, device), x[:256], y[:256], Recipe(epochs=1, batch_size=128), 0)
    ptk_s, min_s = [], []
    for _ in range(2):
        m = network(width, x, device)
        ptk_s.append(timed(lambda: (train_model(m, x, y, recipe, 0), sync(device))))
        m = network(width, x, device)
        min_s.append(timed(lambda: (minimal_loop(m, x, y, epochs, 128, 1e-4, 0), sync(device))))
    a, b = n * epochs / min(ptk_s), n * epochs / min(min_s)
    return {"row": "1 trainer", "what": f"ptk train_model vs minimal loop, {n} images x {epochs} ep, width {width}",
            "ptk": f"{a:.0f} img/s", "baseline": f"{b:.0f} img/s", "ratio": round(a / b, 3), "target": ">= 0.95"}


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

    ptk_path()
    a, b = n / timed(ptk_path), n / timed(torchvision_path)
    return {"row": "2 data path", "what": f"batched on-device crop+flip vs torchvision per-image + DataLoader(2 workers), {n} images",
            "ptk": f"{a:.0f} img/s", "baseline": f"{b:.0f} img/s", "ratio": round(a / b, 2), "target": "> 1"}


def run_cli(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ptk", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def row_cache(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PTK_CACHE_DIR": f"{tmp}/cache", "PTK_DATA_DIR": f"{tmp}/data"}
        base = ["run", "--preset", "quick", "--subset", "800" if quick else "1347", "--epochs", "3"]
        first = run_cli([*base, "--defense", "none", "--out", f"{tmp}/a"], env)
        second = run_cli([*base, "--defense", "loss-outliers", "--out", f"{tmp}/b"], env)
        res = json.loads(Path(f"{tmp}/b/results.json").read_text())
        cached = [m["name"] for m in res["models"] if m.get("cached")]
    return {"row": "5 cache", "what": "second ptk run adding a defense vs first run (quick preset)",
            "ptk": f"{second:.1f} s (cached: {', '.join(cached)})", "baseline": f"{first:.1f} s",
            "ratio": round(second / first, 2), "target": "clean and poisoned not retrained"}


def row_growth(device, sizes, width) -> dict:
    per_epoch = []
    for n in sizes:
        x, y = images(n, device)
        m = network(width, x, device)
        per_epoch.append(timed(lambda: (train_model(m, x, y, Recipe(epochs=1, batch_size=128), 0), sync(device))))
    per_image = [s / n * 1e3 for s, n in zip(per_epoch, sizes)]
    return {"row": "6 growth", "what": f"s/epoch at {', '.join(map(str, sizes))} images (width {width})",
            "ptk": ", ".join(f"{s:.2f}" for s in per_epoch), "baseline": "linear",
            "ratio": round(per_image[-1] / per_image[0], 2), "target": "~1.0 (ms/image, largest vs smallest)"}


def peak_rss_of(args: list[str]) -> float:
    """Peak RSS (MiB) of a child `ptk` process."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PTK_CACHE_DIR": f"{tmp}/cache", "PTK_DATA_DIR": os.environ.get("PTK_DATA_DIR", f"{tmp}/data")}
        code = ("import resource, sys; from ptk.cli import cli\n"
                "try:\n    cli(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, *args, "--out", f"{tmp}/r"], env=env,
                             capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1]) / 1024


def row_memory(quick: bool) -> dict:
    q = peak_rss_of(["run", "--preset", "quick", "--defense", "none", *(["--epochs", "1"] if quick else [])])
    parts = [f"quick preset {q:.0f} MiB"]
    if ARCHIVE.exists():
        n = "5000" if quick else "20000"
        with tempfile.TemporaryDirectory() as data:
            env = {**os.environ, "PTK_DATA_DIR": data}
            subprocess.run([sys.executable, "-m", "ptk", "data", "import", "cifar10", str(ARCHIVE)], env=env,
                           check=True, capture_output=True)
            os.environ["PTK_DATA_DIR"] = data
            c = peak_rss_of(["run", "--dataset", "cifar10", "--subset", n, "--test-subset", "1000", "--epochs", "1",
                             "-o", "resnet18.width=16", "--defense", "none"])
            del os.environ["PTK_DATA_DIR"]
        parts.append(f"CIFAR-10 {n} images {c:.0f} MiB")
    gpu = f", GPU max allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if torch.cuda.is_available() else ""
    return {"row": "7 memory", "what": "peak RSS of a whole `ptk run` (1 epoch in --quick)", "ptk": "; ".join(parts) + gpu,
            "baseline": "-", "ratio": None, "target": "-"}


EXTRA_ROWS = []  # influence and activation-clustering rows are appended below when those plugins exist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: under 10 minutes on 2 CPU cores")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    ap.add_argument("--only", help="comma-separated row numbers to run")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q = args.quick
    rows_fns = {
        "1": lambda: row_trainer(device, 1024 if q else 10_000, 16 if q else 64, 1 if q else 2),
        "2": lambda: row_data_path(device, 4096 if q else 20_000),
        "5": lambda: row_cache(q),
        "6": lambda: row_growth(device, [1000, 2000, 4000] if q else [5000, 10_000, 20_000], 8 if q else 64),
        "7": lambda: row_memory(q),
    }
    for key, fn in EXTRA_ROWS:
        rows_fns[key] = lambda fn=fn: fn(device, q)
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
    from ptk.atomic import write_json

    write_json(args.json, {"machine": machine, "quick": q, "rows": rows, "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
