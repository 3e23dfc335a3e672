#!/usr/bin/env bash
# The fused activations' cost: ResNet-50 training-step time and peak memory for ReLU, PolyReLU and
# PolyNorm (order 3) — resnet-train fused (BatchNorm folded in), fused-act and eager, next to PyTorch eager and torch.compile on the
# same model (../shared/bench/torch_train_bench.py), same settings, same run, alternating, REPEAT
# times (default 2; take medians). Needs ../shared and a Python with torch + torchvision:
#   PYTHON=/path/to/python bash scripts/bench/bench-act.sh
#   PRECISIONS="fp32 bf16" COMPILE=0 STEPS=6 ...   (defaults: fp32, with torch.compile, 6 steps)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
cargo build --release --locked --bin resnet-train >/dev/null
COMMON="--arch resnet50 --batch ${BATCH:-8} --res ${RES:-128} --device cpu --steps ${STEPS:-6} --warmup 2 --threads 2"
ours() { "$PYTHON" scripts/profile/peak_rss.py ./target/release/resnet-train bench --json $COMMON "$@"; }
torch() { "$PYTHON" scripts/profile/peak_rss.py "$PYTHON" ../shared/bench/torch_train_bench.py $COMMON "$@"; }
for _ in $(seq "${REPEAT:-2}"); do
  for prec in ${PRECISIONS:-fp32}; do
    ours --act relu --precision "$prec"
    torch --act relu --precision "$prec"
    for act in polyrelu polynorm; do
      ours --act $act --act-impl fused --precision "$prec"
      ours --act $act --act-impl fused-act --precision "$prec"
      ours --act $act --act-impl eager --precision "$prec"
      torch --act $act --precision "$prec"
    done
    if [ "${COMPILE:-1}" = 1 ]; then
      for act in relu polynorm; do torch --act $act --precision "$prec" --compile; done
    fi
  done
done
