#!/usr/bin/env bash
# Cross-resolution check (issue 4): HiCA trained at one preprocessing of the Kermany chest X-rays and
# scored on the other. chest_xray = 224 px JPEGs; pneumoniamnist = the same radiographs at 28 px (MedMNIST;
# same official 624-image test set). K = 16, seeds 1-3, CPU.
#   bash scripts/cross_resolution.sh results/generalization/cross_resolution
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/generalization/cross_resolution}"
mkdir -p "$out"
export HICA_DATA="${HICA_DATA:-$(cd .. && pwd)/shared/data}"
for seed in 1 2 3; do
  for train in chest_xray pneumoniamnist; do
    run="runs/xres/${train}-K16-s${seed}"
    .venv/bin/hica finetune --config "configs/stage2_${train}.yaml" --k 16 --seed "$seed" --out "$run" > /dev/null
    for test in chest_xray pneumoniamnist; do
      .venv/bin/hica evaluate --checkpoint "$run/model" --dataset "$test" --split test \
        --out "$out/train-${train}__test-${test}__s${seed}.json" > /dev/null
    done
  done
done
.venv/bin/python scripts/cross_resolution_table.py "$out"
