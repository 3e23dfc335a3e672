#!/usr/bin/env bash
# timm's own augmentation policies against timm + PIL, one thread / one process each, alternating,
# REPEAT times (default 3; take medians): rand-m9-mstd0.5-inc1 bilinear, RSB's rand-m7-mstd0.5-inc1
# bicubic, augmix-m3-w3 bilinear. Needs ../shared and a Python with timm==1.0.31:
#   PYTHON=/path/to/python bash scripts/bench/bench-timm-aug.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DATA=../shared/data/imagenet-samples
cargo build --release --locked --bin resnet-train >/dev/null
for _ in $(seq "${REPEAT:-3}"); do
  for spec in "rand-m9-mstd0.5-inc1 bilinear" "rand-m7-mstd0.5-inc1 bicubic" "augmix-m3-w3 bilinear"; do
    set -- $spec
    ./target/release/resnet-train bench-data --data "$DATA" --mode train --threads 1 --interpolation "$2" --aa "$1" --json | tail -1
    "$PYTHON" scripts/bench/timm_data_bench.py "$DATA" --aa "$1" --interpolation "$2" | tail -1
  done
done
