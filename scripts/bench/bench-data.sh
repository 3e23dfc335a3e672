#!/usr/bin/env bash
# Input-pipeline benchmark: resnet-train bench-data next to torchvision+PIL (torch_data_bench.py),
# same files, same machine, same run, alternating, REPEAT times (default 3; take medians: shared
# VMs vary by +-20% between runs). Needs ../shared and a Python with torch + torchvision:
#   PYTHON=/path/to/python bash scripts/bench/bench-data.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../shared/data/imagenet-samples}
cargo build --release --locked --bin resnet-train >/dev/null
for _ in $(seq "${REPEAT:-3}"); do
  for mode in train eval; do
    for t in 1 2; do
      ./target/release/resnet-train bench-data --data "$DATA" --mode "$mode" --threads "$t" --json
      "$PYTHON" ../shared/bench/torch_data_bench.py "$DATA" --mode "$mode" --workers "$t"
    done
  done
done
