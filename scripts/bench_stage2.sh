#!/usr/bin/env bash
# Stage-2 cost of one K=16 episode per dataset (issue 3 target: <= 3 min on CPU, peak RSS <= 8 GB), via the
# user-facing command, on an otherwise idle machine:
#   bash scripts/bench_stage2.sh results/hica/efficiency
# Each run's summary.json (fit / test seconds, peak RSS from inside) and /usr/bin/time -v output are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/hica/efficiency}"
mkdir -p "$out"
export HICA_DATA="${HICA_DATA:-$(cd .. && pwd)/shared/data}"
for ds in chest_xray busi; do
  run="runs/bench-stage2-${ds}"
  rm -rf "$run"
  /usr/bin/time -v .venv/bin/hica finetune --config "configs/stage2_${ds}.yaml" --k 16 --seed 1 --out "$run" \
    > "$out/stage2-${ds}-K16.log" 2> "$out/stage2-${ds}-K16.time.txt"
  cp "$run/summary.json" "$out/stage2-${ds}-K16.summary.json"
done
