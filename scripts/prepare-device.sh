#!/usr/bin/env bash
# Everything a GPU session carries, in one folder (.device/, git-ignored; DEST=path for another):
# the stripped release binary, ../shared's bench/ and reference/ and device/gpu-check.sh (the
# standing order's first call), scripts/gpu-session.sh, and the CUDA kernels compiled for sm_90
# (H100/H200) under each tuning gpu-session's `sites` section compares, so that no device time
# goes to NVRTC (TUNINGS="" skips the compiles). Then, with the device tool (carry [".device"]):
#   RESNET_TRAIN_CACHE=.device bash .device/gpu-check.sh   (timeout_s ~480; the cache: its bench rows' kernels)
#   bash .device/gpu-session.sh                     (timeout_s 560; BUDGET=520, SECTIONS=... to pick)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.device}
BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --locked --bin resnet-train >/dev/null
  BIN=target/release/resnet-train
fi
[ -d ../shared/bench ] || { echo "prepare-device: ../shared/bench is missing" >&2; exit 1; }
mkdir -p "$DEST"
strip -o "$DEST/resnet-train" "$BIN"
rm -rf "$DEST/bench" "$DEST/reference"
cp -r ../shared/bench ../shared/reference "$DEST/"
cp ../shared/device/gpu-check.sh scripts/gpu-session.sh "$DEST/"
for t in ${TUNINGS-default min_blocks=2 min_blocks=4}; do
  [ "$t" = default ] && t=
  RESNET_TRAIN_CACHE=$DEST RESNET_TRAIN_CUDA_TUNING=$t "$BIN" check-act --compile-for sm_90
done
du -sh "$DEST" | sed 's/^/prepare-device: /'
