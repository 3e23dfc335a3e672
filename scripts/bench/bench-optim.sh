#!/usr/bin/env bash
# Optimizer cost inside the training step: resnet-train bench --opt X next to
# scripts/bench/torch_optim_bench.py (PyTorch eager with torch.optim.AdamW/Adam(fused=True), RAdam, NAdam / timm's Lamb, Lion, RMSpropTF, Adan, LaProp, AdaBelief, ...),
# same settings, same run, alternating, REPEAT times (default 2; take medians). Also the
# momentum-SGD step and the EMA's cost on our side (PRECISION=fp32|bf16). Needs ../shared and a Python with torch + timm:
#   PYTHON=/path/to/python bash scripts/bench/bench-optim.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
cargo build --release --locked --bin resnet-train >/dev/null
COMMON="--arch resnet50 --act relu --precision ${PRECISION:-fp32} --batch 8 --res 128 --device cpu --steps 10 --warmup 3 --threads 2"
for _ in $(seq "${REPEAT:-2}"); do
  ./target/release/resnet-train bench --opt momentum $COMMON --json
  ./target/release/resnet-train bench --opt momentum --model-ema $COMMON --json
  for opt in ${OPTS:-adamw adam lamb lion rmsproptf}; do
    ./target/release/resnet-train bench --opt $opt $COMMON --json
    "$PYTHON" scripts/bench/torch_optim_bench.py --opt $opt $COMMON
  done
done
