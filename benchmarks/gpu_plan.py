"""How much of the full-size study fits the device time left: the plan benchmarks/gpu_study.sh follows.

    python benchmarks/gpu_plan.py --left 420                    # from the last measured H200 speeds
    python benchmarks/gpu_plan.py --left 420 --speed OUT/speed.json   # from part a, measured in this call

Why: a lent GPU comes with 15 minutes of device time, start-up and installs included, and at most 10 minutes a
call. The sweep's question wants 20 targets; at the speeds measured so far that does not fit, so the script
cuts the number of targets (never what a cell records, never a defense's settings) to what the time left
allows, says so, and a later call resumes the same store for the rest.

The estimate: a target's cell trains the poisoned model and the four cheap defenses (loss-outliers,
activation-clustering and influence retrain once each; ensemble trains k=5 members on a fifth of the data
each, about one training in all), so about 5 trainings of ``epochs x s/epoch``, times an overhead factor for
what is not training (the ensemble members' short epochs, evaluation, influence scores, clustering). That
factor, 1.6, is measured: on the H200 (2026-11-27, recipe ``fast`` eager at 1.20 s/epoch) the poisoned
training (12 s) and the four defenses (84 s wall, docs/performance.md) took 96 s, against 5 x 12 s of
training. The clean model is one more training, once per seed.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

#: images/s of the full-size setup (50,000 CIFAR-10 images, width 64) last measured on an H200, eager
#: (docs/performance.md, 2026-11-27: 4.56 and 1.20 s/epoch): used until this call's part a measures its own
MEASURED_H200 = {"study": 10_966.0, "fast": 41_667.0}
TRAININGS_PER_TARGET = 5  # poisoned + loss-outliers + activation-clustering + influence + ensemble (k x 1/k)
OVERHEAD = 1.6  # cell wall over its trainings' time, measured on the H200 (module docstring)
BILEVEL_TRAININGS = 3  # bilevel's own loop: about 3 trainings (its outer steps, measured at ~3x on the CPU)


@dataclass
class Plan:
    recipe: str
    images_per_second: float
    speed_source: str
    train_images: int
    epochs: int
    training_seconds: float
    per_target_seconds: float
    left_seconds: float
    targets: int  # targets the time left allows (at most ``wanted``)
    wanted: int
    cut: bool  # fewer targets than wanted
    bilevel_seconds: float
    bilevel_fits: bool  # after the targets, is there time for bilevel on one target


def measured_speed(path: Path | None, recipe: str) -> tuple[float, str] | None:
    """The fastest images/s of ``recipe`` in a benchmarks/run.py --json file (row 8's recipes), or None."""
    if path is None or not path.exists():
        return None
    rows = json.loads(path.read_text()).get("rows", [])
    timings = [t for r in rows for t in r.get("recipes", []) if t.get("recipe") == recipe]
    if not timings:
        return None
    best = max(timings, key=lambda t: t["images_per_second"])
    return best["images_per_second"], (f"measured by part a ({path.name}: {best['train_images']} images, "
                                        f"compile {best.get('compile', 'off')})")


def plan(left: float, recipe: str = "fast", epochs: int = 10, wanted: int = 20, speed: Path | None = None,
         clean_cached: bool = False, train_images: int = 50_000) -> Plan:
    found = measured_speed(speed, recipe)
    ips, source = found or (MEASURED_H200[recipe], "H200 2026-11-27, eager (docs/performance.md)")
    train = train_images * epochs / ips
    per_target = TRAININGS_PER_TARGET * train * OVERHEAD
    budget = left - (0 if clean_cached else train * OVERHEAD)
    targets = max(0, min(wanted, math.floor(budget / per_target)))
    rest = budget - targets * per_target
    bilevel = BILEVEL_TRAININGS * train * OVERHEAD
    return Plan(recipe, ips, source, train_images, epochs, round(train, 1), round(per_target, 1), left, targets, wanted,
                targets < wanted, round(bilevel, 1), targets == wanted and rest >= bilevel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--left", type=float, required=True, help="seconds this call may still spend on the sweep")
    ap.add_argument("--speed", type=Path, help="benchmarks/run.py --json output with row 8 (part a)")
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-images", type=int, default=50_000, help="training images of the sweep's runs")
    ap.add_argument("--targets", type=int, default=20, help="targets the sweep wants")
    ap.add_argument("--done", type=int, default=0, help="targets already in the store (resumed)")
    ap.add_argument("--field", help="print only this field (for the shell script)")
    args = ap.parse_args()
    p = plan(args.left, args.recipe, args.epochs, args.targets - args.done, args.speed, clean_cached=args.done > 0,
             train_images=args.train_images)
    p.targets += args.done
    p.wanted += args.done
    print(getattr(p, args.field) if args.field else json.dumps(asdict(p)))


if __name__ == "__main__":
    main()
