#!/usr/bin/env bash
# The main job on an embedded default that needs no ImageNet. Bootstraps the machine first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cargo build --release --locked --bins
BIN=target/release/resnet-train
OUT=runs/demo
"$BIN" make-demo-data --out "$OUT/data" --train-per-class 0 --val-per-class 2
"$BIN" init --arch resnet50 --act polynorm --order 3 --seed 0 --out "$OUT/resnet50-polynorm.safetensors"
"$BIN" predict --checkpoint "$OUT/resnet50-polynorm.safetensors" --topk 3 "$OUT"/data/val/*/*.jpg
