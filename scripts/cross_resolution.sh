#!/usr/bin/env bash
# Cross-resolution checks (issue 4): HiCA trained at one preprocessing of a dataset and scored on the other.
# K = 16, seeds 1-3, CPU.
#   bash scripts/cross_resolution.sh chest_xray  # 224 px Kermany JPEGs vs PneumoniaMNIST (28 px), same 624 test
#   bash scripts/cross_resolution.sh busi        # BUSI (BreastMNIST split, full size) vs BreastMNIST (28 px)
# BUSI is scored as BreastMNIST's task, malignant vs benign_or_normal: the 3-class model's benign and normal
# probabilities are summed (hica evaluate --merge), and BUSI's own labels are merged the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-chest_xray}"
out="${2:-results/generalization/cross_resolution}"
[[ "$what" == busi ]] && out="${2:-results/generalization/cross_resolution_busi}"
mkdir -p "$out"
export HICA_DATA="${HICA_DATA:-$(cd .. && pwd)/shared/data}"
case "$what" in
  chest_xray) sets=(chest_xray pneumoniamnist); merge=() ;;
  busi) sets=(busi_medmnist_split breastmnist); merge=(--merge benign_or_normal=benign+normal) ;;
  *) echo "usage: $0 chest_xray|busi [OUT]" >&2; exit 2 ;;
esac
for seed in 1 2 3; do
  for train in "${sets[@]}"; do
    run="runs/xres/${train}-K16-s${seed}"
    [[ -f "$run/model/classifier.safetensors" ]] ||
      .venv/bin/hica finetune --config "configs/stage2_${train}.yaml" --k 16 --seed "$seed" --out "$run" > /dev/null
    for test in "${sets[@]}"; do
      m=()  # merging is only needed where a 3-class BUSI model or BUSI labels are involved
      [[ "$train" == busi_medmnist_split || "$test" == busi_medmnist_split ]] && m=("${merge[@]}")
      .venv/bin/hica evaluate --checkpoint "$run/model" --dataset "$test" --split test "${m[@]}" \
        --out "$out/train-${train}__test-${test}__s${seed}.json" > /dev/null
    done
  done
done
.venv/bin/python scripts/cross_resolution_table.py "$out"
