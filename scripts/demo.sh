#!/usr/bin/env bash
# The main job on the embedded default: trains ResNet-18 + PolyNorm on a procedural 10-class
# dataset of real JPEG files (generated on first use; no ImageNet, no download), evaluates it
# every epoch, and writes the run folder (config, metrics, TensorBoard, checkpoints, figures of
# the curves and of the learned PolyNorm coefficients).
# Bootstraps the machine first. Extra arguments go to resnet-train (e.g. --epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cargo build --release --locked --bins
BIN=target/release/resnet-train
NAME=demo-$(date +%Y%m%d-%H%M%S)
"$BIN" --config configs/recipes/demo.toml --name "$NAME" "$@"
RUN=runs/$NAME
"$BIN" report "$RUN" --out "$RUN/curves.svg"
"$BIN" report "$RUN" --out "$RUN/curves.png"
echo
echo "== $RUN =="
cat "$RUN/summary.csv"
VAL=${RESNET_TRAIN_CACHE:-$HOME/.cache/resnet-train}/demo-data-v1/val
"$BIN" predict --checkpoint "$RUN/best.safetensors" --topk 2 "$VAL"/{ring,dots,vstripes}/00001.jpg
# What the PolyNorm sites learned (a ReLU run, e.g. --act relu, has no coefficients).
if grep -q '^act = "poly' "$RUN/config.toml"; then
  echo
  "$BIN" coefficients "$RUN/best.safetensors" --out "$RUN/coefficients.png"
  "$BIN" coefficients "$RUN" --out "$RUN/coefficients-training.png" > /dev/null
fi
echo "TensorBoard: tensorboard --logdir $RUN/tb    figures: $RUN/curves.png, $RUN/coefficients*.png"
