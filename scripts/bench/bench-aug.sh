#!/usr/bin/env bash
# Augmentation-policy throughput: resnet-train bench-data --aa/--color-jitter next to
# torchvision+PIL (../shared/bench/torch_data_bench.py --policy), train mode, same files, same run,
# alternating, REPEAT times (default 3; take medians). Needs ../shared and a Python with torch +
# torchvision:   PYTHON=/path/to/python bash scripts/bench/bench-aug.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../shared/data/imagenet-samples}
cargo build --release --locked --bin resnet-train >/dev/null
ours() { # policy -> our flags
  case "$1" in
    none) ;;
    colorjitter) echo "--color-jitter 0.4" ;;
    *) echo "--aa $1" ;;
  esac
}
for _ in $(seq "${REPEAT:-3}"); do
  for policy in ${POLICIES:-none randaugment trivialaugment autoaugment colorjitter}; do
    for t in ${THREADS:-1 2}; do
      # shellcheck disable=SC2046
      ./target/release/resnet-train bench-data --data "$DATA" --mode train --threads "$t" --json $(ours "$policy")
      "$PYTHON" ../shared/bench/torch_data_bench.py "$DATA" --mode train --workers "$t" --policy "$policy"
    done
  done
done
