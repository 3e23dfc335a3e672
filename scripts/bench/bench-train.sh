#!/usr/bin/env bash
# Training-step throughput: resnet-train bench next to torch_train_bench.py (PyTorch eager),
# same settings, same run, alternating, REPEAT times (default 2; take medians). Needs ../shared
# and a Python with torch + torchvision:
#   PYTHON=/path/to/python bash scripts/bench/bench-train.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
cargo build --release --locked --bin resnet-train >/dev/null
COMMON="--arch resnet50 --batch 8 --res 128 --device cpu --steps 10 --warmup 3 --threads 2"
for _ in $(seq "${REPEAT:-2}"); do
  for act in relu polynorm; do
    for prec in ${PRECISIONS:-fp32 bf16}; do
      ./target/release/resnet-train bench --act $act --precision $prec $COMMON --json
      "$PYTHON" ../shared/bench/torch_train_bench.py --act $act --precision $prec $COMMON
    done
  done
done
