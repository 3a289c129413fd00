"""Recipe fidelity: ptk's ``fast`` recipe against a minimal loop written from the published ResNet-18 recipe.

Same network (ptk's ``CifarResNet18`` behind ``Network``), same data, same seeds and epochs, side by side in
one process; only the loop differs. The reference loop is written from the published hyperparameters alone
(KellerJordan/cifar10-zoo, airbench's baselines/train_resnet18_94.py: SGD Nesterov 0.9, lr 0.2 at batch 500,
weight decay 5e-4 on every parameter, a triangle from 0.2x to the peak at 20% of the steps and down to 0,
flip plus a 4-pixel reflect translate; no cutout, no label smoothing at 10 epochs), with none of ptk's code.

    python benchmarks/recipe.py --quick                 # 5,000 images, width 8, 2 epochs, 1 seed: a smoke check
    python benchmarks/recipe.py --proxy                 # the CPU proxy: 50,000 images, width 8, 10 epochs, seeds 0, 1
    python benchmarks/recipe.py --full                  # full size (a GPU): width 64, 10 epochs, seeds 0, 1
    python benchmarks/recipe.py --proxy -o label_smoothing=0.1   # a suspect, measured: ptk's fast with one change

Prints one row per (loop, seed) and the mean accuracy difference and speed ratio; ``--json PATH`` writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from study import import_cifar, load_cifar, network, sync

from ptk.recipe import parse_field
from ptk.train import named_recipe, predict_proba, train_model

ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = [ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz", ROOT / "data-carry" / "cifar10-jpeg.tar.gz"]

LOOPS = ("ptk fast", "reference")

#: The published hyperparameters, as the reference loop uses them (and nothing else does).
PUBLISHED = dict(lr=0.2, batch_size=500, momentum=0.9, weight_decay=5e-4, peak_at=0.2, start=0.2, pad=4)


def reference_schedule(total: int):
    """The published triangle as a step -> factor function: from ``start`` up to 1 at ``peak_at`` of the steps,
    then down to 0 at the last, linearly (numpy's interp between the three knots)."""
    h = PUBLISHED
    knots = [0, int(h["peak_at"] * total), total]
    return lambda step: float(np.interp(step, knots, [h["start"], 1.0, 0.0]))


def reference_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """A plain loop with the published hyperparameters: images as floats in [0, 1], shuffled per epoch,
    reflect-padded and randomly cropped (a translate) and flipped per batch, SGD stepped per batch."""
    h = PUBLISHED
    opt = torch.optim.SGD(model.parameters(), lr=h["lr"], momentum=h["momentum"], nesterov=True,
                          weight_decay=h["weight_decay"])
    steps_per_epoch = len(y) // h["batch_size"] + (len(y) % h["batch_size"] > 1)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, reference_schedule(total))
    gen = torch.Generator(device="cpu").manual_seed(seed + 12345)
    xf = x.float().div(255)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen).to(x.device)
        for start in range(0, len(y), h["batch_size"]):
            idx = order[start : start + h["batch_size"]]
            if len(idx) < 2:
                continue
            padded = F.pad(xf[idx], (h["pad"],) * 4, mode="reflect")
            shifts = torch.randint(0, 2 * h["pad"] + 1, (len(idx), 2), generator=gen)
            xb = torch.empty_like(xf[idx])
            for dy, dx in {tuple(s) for s in shifts.tolist()}:  # a translate per image, grouped by shift
                sel = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().squeeze(1).to(x.device)
                xb[sel] = padded[sel, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(x.device)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy(model: torch.nn.Module, data) -> float:
    return (predict_proba(model, data.x_test).argmax(1) == data.y_test).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="5,000 images, width 8, 2 epochs, seed 0")
    size.add_argument("--proxy", action="store_true", help="50,000 images, width 8, 10 epochs, seeds 0 and 1")
    size.add_argument("--full", action="store_true", help="50,000 images, width 64, 10 epochs, seeds 0 and 1")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--train", type=int, help="training images (stratified subset)")
    ap.add_argument("-o", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="change ptk's fast recipe (a suspect to measure), e.g. -o pad_mode=zeros")
    ap.add_argument("--cifar", type=Path, default=next((a for a in ARCHIVES if a.exists()), ARCHIVES[0]))
    ap.add_argument("--data-dir", type=Path, help="a ptk data directory with cifar10 imported (default: a temp one)")
    ap.add_argument("--json", type=Path, help="write the rows and the summary here")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS),
                    help="which loops to train (a suspect needs only ptk's; the summary then has no difference)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = dict(train=5000, width=8, epochs=2, seeds=[0]) if args.quick else \
        dict(train=None, width=64 if args.full else 8, epochs=10, seeds=[0, 1])
    train = args.train if args.train is not None else preset["train"]
    width, epochs, seeds = args.width or preset["width"], args.epochs or preset["epochs"], args.seeds or preset["seeds"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = dict(kv.split("=", 1) for kv in args.overrides)
    recipe = named_recipe("fast", epochs=epochs).with_values(
        {k: parse_field(k, v, "-o") for k, v in overrides.items()}, where="-o")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        if args.data_dir is None:
            import_cifar(args.cifar, data_dir)
        data = load_cifar(data_dir, train, None, device)
    rows = []
    for seed in seeds:
        for loop in args.loops:
            model = network(width, data.x_train, device, data.num_classes, seed)
            sync(device)
            start = time.perf_counter()
            if loop == "reference":
                reference_train(model, data.x_train, data.y_train, epochs, seed)
            else:
                train_model(model, data.x_train, data.y_train, recipe, seed, desc=f"{loop} seed {seed}")
            sync(device)
            seconds = time.perf_counter() - start
            row = {"loop": loop, "seed": seed, "test_accuracy": round(accuracy(model, data), 4),
                   "seconds": round(seconds, 1), "s_per_epoch": round(seconds / epochs, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    mean = {loop: float(np.mean([r["test_accuracy"] for r in rows if r["loop"] == loop])) for loop in args.loops}
    speed = {loop: float(np.mean([r["seconds"] for r in rows if r["loop"] == loop])) for loop in mean}
    summary = {"what": f"ptk fast vs the published loop, {len(data.y_train)} images, width {width}, {epochs} epochs, "
                       f"seeds {seeds}, {device.type}", "overrides": overrides,
               "torch_threads": torch.get_num_threads(), "recipe": recipe.to_dict()}
    summary.update({f"{loop.replace(' ', '_')}_accuracy": round(acc, 4) for loop, acc in mean.items()})
    line = "  ".join(f"{loop} {100 * acc:.2f}%" for loop, acc in mean.items())
    if len(mean) == 2:
        summary["accuracy_difference_points"] = round(100 * (mean["ptk fast"] - mean["reference"]), 2)
        summary["speed_ratio_reference_over_ptk"] = round(speed["reference"] / speed["ptk fast"], 3)
        line += (f"  difference {summary['accuracy_difference_points']:+.2f} points  "
                 f"speed ratio (reference s / ptk s) {summary['speed_ratio_reference_over_ptk']:.2f}")
    print("\n" + line)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
