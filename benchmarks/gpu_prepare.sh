#!/usr/bin/env bash
# Fill the git-ignored data-carry/ folder with what a GPU machine without internet needs to run
# `python benchmarks/run.py`: the CIFAR-10 archive, a ptk wheel, and wheels of the two
# dependencies its image lacks (adversarial-robustness-toolbox, platformdirs; it has torch,
# numpy, scikit-learn, pluggy, click, matplotlib, tqdm). About 22 MB in all.
#
# Then, on the GPU machine (device tool: carry ["data-carry"]):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site data-carry/wheels/*.whl \
#     && PYTHONPATH=/tmp/site python3 benchmarks/run.py --cifar data-carry/cifar10-jpeg.tar.gz --json $OUT/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data-carry/wheels
cp ../shared/data/cifar10-jpeg.tar.gz data-carry/
rm -f data-carry/wheels/*.whl
python -m pip wheel -q --no-deps -w data-carry/wheels .
python -m pip download -q --no-deps --only-binary=:all: -d data-carry/wheels \
    "adversarial-robustness-toolbox==$(python -c 'import art; print(art.__version__)')" \
    "platformdirs==$(python -c 'import platformdirs; print(platformdirs.__version__)')"
du -sh data-carry
