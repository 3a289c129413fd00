#!/usr/bin/env bash
# The seed study's question at full size on one GPU, in calls of the device tool of at most 10 minutes each.
#
#   here:   benchmarks/gpu_prepare.sh                      # data-carry/: CIFAR-10 archive + ptk/ART/platformdirs wheels
#   there:  BUDGET=560 bash benchmarks/gpu_study.sh        # device tool: carry ["data-carry"], timeout_s 590
#   again:  cp FILES_AT/{sweep.db,speed.json,packing.json} data-carry/   # what the last call brought back; the same
#                                                          # call then resumes the sweep (and skips parts a and p)
#
# Parts, in order of value, each writing under $OUT as it finishes (at most 8 files come back):
#   a. speed and the recipe check: benchmark rows 1 and 8 at full size (50,000 CIFAR-10 images, width 64, 10 epochs):
#      the study and fast recipes, eager and compiled (--compile auto: CUDA graphs), side by side, 2 seeds of fast
#      (the sweep's recipe: the accuracy check) and 1 of study (4 s/epoch eager: a second seed costs a minute):
#      s/epoch, MFU, clean accuracy, compiled vs eager accuracy; host syncs per epoch    -> $OUT/speed.json
#   p. packing: 4 width-16 runs (fast recipe, full CIFAR-10, 4 epochs) one after another vs all at once on the GPU
#                                                                                   -> $OUT/packing.json
#   b. the sweep: seed 0 x 20 random targets, labelflip 250, loss-outliers, activation-clustering, influence and
#      ensemble, recipe fast, into $OUT/sweep.db (written after every cell). Before it starts, the number of
#      targets is cut to what the time left allows (benchmarks/gpu_plan.py, from part a's measured speed): never
#      what a cell records; the next call resumes the same store for the rest    -> $OUT/sweep.db, plan.json
#   c. bilevel at full size on the sweep's first target, if the plan says it fits     -> $OUT/bilevel.json
# A part that would outrun BUDGET is stopped by `timeout` (SIGTERM: ptk stops cleanly; a sweep loses at most the
# cell in flight), so the call ends inside its limit with every finished file in $OUT.
#
# Rehearsal on the CPU at tiny sizes (what the tests cannot reach is then only the GPU itself), ~20 minutes on 2 cores:
#   OUT=/tmp/gpu-out DEVICE=cpu BUDGET=1200 BENCH_ARGS="--quick --compile-modes off,aot_eager" TRAIN_IMAGES=2000 \
#     GRID_EXTRA=$'subset = 2000\ntest_subset = 500\nepochs = 2' PLAN_EPOCHS=2 WIDTH=16 BUDGET_FLIPS=50 \
#     PACK_CELLS=2 PACK_ARGS="--subset 2000 --epochs 2" bash benchmarks/gpu_study.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu/out}
WORK=runs/gpu
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-560}              # seconds this call may spend, start-up of the machine not included
BENCH_ARGS=${BENCH_ARGS:-}         # --quick on a CPU
GRID_EXTRA=${GRID_EXTRA:-}         # more TOML settings for the sweep's runs (the rehearsal's small sizes)
PLAN_EPOCHS=${PLAN_EPOCHS:-10}
TRAIN_IMAGES=${TRAIN_IMAGES:-50000}
WIDTH=${WIDTH:-64}
BUDGET_FLIPS=${BUDGET_FLIPS:-250}
TARGETS=${TARGETS:-20}
PACK_ARGS=${PACK_ARGS:-}
PACK_CELLS=${PACK_CELLS:-4}
ARCHIVE=${ARCHIVE:-data-carry/cifar10-jpeg.tar.gz}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 PTK_DATA_DIR="$PWD/$WORK/data" PTK_CACHE_DIR="$PWD/$WORK/cache"
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { local l=$((BUDGET - SECONDS - 15)); echo $((l > 1 ? l : 1)); }  # 15 s kept for the last file copies

if [ -d data-carry/wheels ] && { [ -n "${FORCE_WHEELS:-}" ] || ! python3 -c "import ptk" 2>/dev/null; }; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site data-carry/wheels/*.whl \
        || { say "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python3 -c "import torch, ptk, art; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'ptk', ptk.__version__, 'art', art.__version__)"; } 2>&1 | tee -a "$LOG"

if [ ! -f "$PTK_DATA_DIR/datasets/cifar10.npz" ]; then
    say "importing CIFAR-10"
    python3 -m ptk data import cifar10 "$ARCHIVE" 2>&1 | tail -3 | tee -a "$LOG" || exit 1
fi
for f in speed.json packing.json; do  # what an earlier call brought back: resume from it
    [ -f "data-carry/$f" ] && [ ! -f "$OUT/$f" ] && cp "data-carry/$f" "$OUT/$f" && say "resuming from data-carry/$f"
done
STORE="$WORK/sweep.db"  # the store lives here (its -wal file and cells/ beside it); $OUT gets a consistent copy
[ -f data-carry/sweep.db ] && [ ! -f "$STORE" ] && cp data-carry/sweep.db "$STORE" && say "resuming from data-carry/sweep.db"
bring_back() {  # SQLite's online backup: a consistent copy even while the sweep writes, moved into place whole
    [ -s "$STORE" ] && python3 -c "import os,sqlite3,sys; src=sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)
dst=sqlite3.connect(sys.argv[2] + '.tmp'); src.backup(dst); dst.close(); os.replace(sys.argv[2] + '.tmp', sys.argv[2])" \
        "$STORE" "$OUT/sweep.db"
}

if [ ! -f "$OUT/speed.json" ]; then
    say "a. rows 1 and 8: both recipes, eager and compiled, 2 seeds (budget left $(left) s)"
    # shellcheck disable=SC2086
    timeout --signal=TERM "$(left)" python3 benchmarks/run.py --only 1,8 --seeds 2 --study-seeds 1 --no-whole-run $BENCH_ARGS \
        --cifar "$ARCHIVE" --json "$OUT/speed.json" 2>&1 | tee -a "$LOG"
    say "a. done (exit ${PIPESTATUS[0]})"
fi

# the sweep and the packing runs compile (--compile auto) only if part a's compiled fast recipe trained: a
# compiler that fails on this machine must not cost every cell of the sweep
SWEEP_COMPILE=$(python3 -c "import json,sys; rows=json.load(open(sys.argv[1]))['rows']
print('auto' if any(t['compile'] != 'off' for r in rows for t in r.get('recipes', []) if t['recipe'] == 'fast') else 'off')" \
    "$OUT/speed.json" 2>/dev/null || echo off)
say "compile for the sweep and packing: $SWEEP_COMPILE"

if [ ! -f "$OUT/packing.json" ]; then
    say "p. packing: 4 width-16 runs one at a time vs side by side (budget left $(left) s)"
    # shellcheck disable=SC2086
    timeout --signal=TERM "$(left)" python3 benchmarks/packing.py --device "$DEVICE" --cells "$PACK_CELLS" --epochs 4 \
        --json "$OUT/packing.json" -- --dataset cifar10 --recipe fast --compile "$SWEEP_COMPILE" -o resnet18.width=16 $PACK_ARGS 2>&1 | tee -a "$LOG"
    say "p. done (exit ${PIPESTATUS[0]})"
fi

done_targets=0  # read-only: connecting would otherwise make an empty file, which `ptk sweep run` refuses
[ -s "$STORE" ] && done_targets=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(
    f'file:{sys.argv[1]}?mode=ro', uri=True).execute(\"select count(*) from cells where status='complete'\"
    ).fetchone()[0])" "$STORE")
python3 benchmarks/gpu_plan.py --left "$(left)" --speed "$OUT/speed.json" --epochs "$PLAN_EPOCHS" \
    --train-images "$TRAIN_IMAGES" --targets "$TARGETS" --done "$done_targets" > "$OUT/plan.json"
targets=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['targets'])" "$OUT/plan.json")
say "b. plan: $(cat "$OUT/plan.json")"
cat > "$WORK/base.toml" <<EOF
# The study's question at full size: seed 0, random targets, 250 flips, every cheap defense, recipe fast.
dataset = "cifar10"
attack = "labelflip"
defenses = ["loss-outliers", "activation-clustering", "influence", "ensemble"]
recipe = "fast"
target_choice = "random"
device = "$DEVICE"
compile = "$SWEEP_COMPILE"
$GRID_EXTRA

[options.labelflip]
budget = $BUDGET_FLIPS

[options.resnet18]
width = $WIDTH
EOF
{ cat "$WORK/base.toml"; printf '\n[grid]\nseed = [0]\ntargets = %s\n' "$targets"; } > "$WORK/grid.toml"
if [ "$targets" -gt "$done_targets" ]; then
    say "b. sweep: targets $done_targets..$((targets - 1)) of $TARGETS (budget left $(left) s)"
    ( while sleep 20; do bring_back; done ) &  # every finished cell reaches $OUT within 20 s, even if the call is cut
    copier=$!
    timeout --signal=TERM "$(left)" python3 -m ptk sweep run "$WORK/grid.toml" --db "$STORE" 2>&1 | tee -a "$LOG"
    say "b. done (exit ${PIPESTATUS[0]})"
    kill "$copier" 2>/dev/null
else
    say "b. no target fits the time left ($(left) s); the store is unchanged"
fi
if [ -s "$STORE" ]; then  # the finished store in $OUT, then the rates so far
    bring_back
    python3 -m ptk sweep report "$STORE" --out "$WORK/report" 2>&1 | tail -12 | tee -a "$LOG"
fi

if python3 -c "import json,sys; p=json.load(open(sys.argv[1])); sys.exit(0 if p['bilevel_fits'] else 1)" \
        "$OUT/plan.json" && [ ! -f "$OUT/bilevel.json" ]; then
    say "c. bilevel on the first target (budget left $(left) s)"
    timeout --signal=TERM "$(left)" python3 -m ptk run --config "$WORK/base.toml" --defense bilevel --seed 0 \
        --target-rank 0 --out "$WORK/bilevel" --overwrite 2>&1 | tee -a "$LOG"
    cp "$WORK/bilevel/results.json" "$OUT/bilevel.json" 2>/dev/null
    say "c. done"
else
    say "c. bilevel skipped: it does not fit the time left after the targets (plan.json)"
fi
say "finished; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
