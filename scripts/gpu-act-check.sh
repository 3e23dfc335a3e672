#!/usr/bin/env bash
# The fused activations on a lent GPU, in one device call (issue 11's GPU rows). Prepare here:
#   mkdir -p .device && strip -o .device/resnet-train target/release/resnet-train
#   cp -r ../shared/bench ../shared/reference .device/ && cp scripts/gpu-act-check.sh .device/
# then run `bash .device/gpu-act-check.sh` with carry [".device"] and timeout_s ~480.
# 1. check-act: the CUDA kernels (compiled here by NVRTC) against the eager path, every order,
#    dtype and layout, forward and gradients.
# 2. ResNet-50 training step at batch 256, 224 px, channels_last, bf16 and fp16: ReLU, PolyReLU
#    and PolyNorm (fused and eager), next to PyTorch eager and torch.compile, same machine.
# Writes $OUT/act-check.jsonl, $OUT/gpu-act-bench.jsonl, $OUT/stderr.txt.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
TORCH_DIR=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH=$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
BIN=$D/resnet-train
timeout 120 "$BIN" check-act --device cuda --json >"$OUT/act-check.jsonl" 2>>"$OUT/stderr.txt"
echo "check-act rc=$? $(tail -n 1 "$OUT/act-check.jsonl")"
LOG=$OUT/gpu-act-bench.jsonl
run() { echo "# $*" >&2; timeout 150 "$@" 2>>"$OUT/stderr.txt" | tail -n 1 | tee -a "$LOG"; }
for prec in bf16 fp16; do
  C=(--arch resnet50 --precision "$prec" --batch 256 --res 224 --device cuda --channels-last --steps 30 --warmup 10)
  run "$BIN" bench --act relu "${C[@]}" --json
  run python3 "$D/bench/torch_train_bench.py" --act relu "${C[@]}"
  for act in polyrelu polynorm; do
    run "$BIN" bench --act $act --act-impl fused "${C[@]}" --json
    run "$BIN" bench --act $act --act-impl eager "${C[@]}" --json
    run python3 "$D/bench/torch_train_bench.py" --act $act "${C[@]}"
  done
  [ "$prec" = bf16 ] && run python3 "$D/bench/torch_train_bench.py" --act polynorm "${C[@]}" --compile
done
echo "done: $(wc -l < "$LOG") bench rows in $LOG"
