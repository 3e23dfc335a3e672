#!/usr/bin/env bash
# Resize-filter throughput: resnet-train bench-data --interpolation next to timm+PIL
# (scripts/bench/timm_data_bench.py, the same filter), one thread/process, same files, same run,
# alternating, REPEAT times (default 3; take medians). Train: RandomResizedCrop(224) + flip, no
# policy; eval: timm's ResNet Strikes Back eval (crop_pct 0.95: Resize(235) + CenterCrop(224)).
# Needs ../shared and a Python with torch, torchvision and timm 1.0.31:
#   PYTHON=/path/to/python bash scripts/bench/bench-filters.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../shared/data/imagenet-samples}
cargo build --release --locked --bin resnet-train >/dev/null
for _ in $(seq "${REPEAT:-3}"); do
  for f in bilinear bicubic random; do
    ./target/release/resnet-train bench-data --data "$DATA" --mode train --threads 1 --interpolation "$f" --json
    "$PYTHON" scripts/bench/timm_data_bench.py "$DATA" --aa none --interpolation "$f"
  done
  for f in bilinear bicubic; do
    ./target/release/resnet-train bench-data --data "$DATA" --mode eval --threads 1 --interpolation "$f" --crop-pct 0.95 --json
    "$PYTHON" scripts/bench/timm_data_bench.py "$DATA" --mode eval --interpolation "$f" --crop-pct 0.95
  done
done
