#!/usr/bin/env bash
# Everything a lent GPU should run, in one device call, most important first; each step is skipped
# when too little of the call's time is left, so the call ends on time with what it has. Prepare:
#   mkdir -p .device && strip -o .device/resnet-train target/release/resnet-train
#   cp -r ../shared/bench ../shared/reference .device/ && cp scripts/gpu-session.sh .device/
# then run `bash .device/gpu-session.sh` with carry [".device"] and timeout_s 560 (BUDGET=520).
# SECTIONS (default "check lowp sites bench compile fp16 train ablate") picks and orders the parts;
# TRAIN_FLAGS adds flags to the training run.
# 1. check-act: the fused activations' CUDA kernels against the eager path (forward, gradients).
# 2. ResNet-50 training steps, batch 256, 224 px, channels_last (../shared/device/gpu-check.sh's
#    bench rows and issue 11's): bf16 ReLU / PolyReLU / PolyNorm, fused and eager, next to PyTorch
#    eager and torch.compile; fp16 ReLU / PolyNorm / PolyReLU; `lowp`: the same fused rows with
#    --act-out-lowp (activations returned in bf16/fp16), BatchNorm folded in (fused) and not
#    (fused-act). `sites`: bench-act, one BatchNorm + activation site forward and backward at each
#    of ResNet-50's site shapes (bf16, channels_last, batch 256): ReLU vs fused vs fused-act.
# 3. A short CUDA training run of the demo (loader, autocast fp16, scaler, eval, checkpoint).
# 4. The fp16 stability cells on ResNet-50 at 224 px (docs/stability.md's GPU rows).
# Writes to $OUT: gpu.txt, bench.jsonl, act-check.jsonl, sites.jsonl, train.log, ablate.log,
# stderr.txt and results.tar.gz (the run folders without their checkpoints). At most 8 files come back.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-520}
WORK=/tmp/rt-work; mkdir -p "$WORK"
export RESNET_TRAIN_CACHE=$WORK/cache
TORCH_DIR=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH=$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
BIN=$D/resnet-train
LOG=$OUT/bench.jsonl
# fits SECS: is there room for a step that may take SECS seconds?
fits() { (( SECONDS + $1 <= BUDGET )) || { echo "# skipped (t=${SECONDS}s): ${*:2}" | tee -a "$OUT/stderr.txt"; return 1; }; }
run() { local t=$1; shift; fits "$t" "$*" || return 0; echo "# t=${SECONDS}s $*" >>"$OUT/stderr.txt"
  timeout "$t" "$@" 2>>"$OUT/stderr.txt" | tail -n 1 | tee -a "$LOG"; }

SECTIONS=${SECTIONS:-check lowp sites bench compile fp16 train ablate}
C=(--arch resnet50 --batch 256 --res 224 --device cuda --channels-last --steps 30 --warmup 10)
T=(python3 "$D/bench/torch_train_bench.py")
for section in $SECTIONS; do
  case $section in
  check)
    if fits 90 check-act; then
      timeout 90 "$BIN" check-act --device cuda --json >"$OUT/act-check.jsonl" 2>>"$OUT/stderr.txt"
      echo "check-act rc=$? t=${SECONDS}s $(tail -n 1 "$OUT/act-check.jsonl" | cut -c1-300)"
    fi ;;
  bench)
    run 60 "$BIN" bench --act relu --precision bf16 "${C[@]}" --json
    run 90 "${T[@]}" --act relu --precision bf16 "${C[@]}"
    for act in polynorm polyrelu; do
      run 60 "$BIN" bench --act $act --act-impl fused --precision bf16 "${C[@]}" --json
      run 90 "${T[@]}" --act $act --precision bf16 "${C[@]}"
      run 60 "$BIN" bench --act $act --act-impl eager --precision bf16 "${C[@]}" --json
    done ;;
  lowp)
    for prec in bf16 fp16; do
      run 60 "$BIN" bench --act relu --precision $prec "${C[@]}" --json
      run 60 "$BIN" bench --act polynorm --precision $prec "${C[@]}" --json
      run 60 "$BIN" bench --act polynorm --act-out-lowp --precision $prec "${C[@]}" --json
      run 60 "$BIN" bench --act polynorm --act-impl fused-act --act-out-lowp --precision $prec "${C[@]}" --json
      run 60 "$BIN" bench --act polyrelu --act-out-lowp --precision $prec "${C[@]}" --json
    done ;;
  sites)
    if fits 90 bench-act; then
      for prec in bf16 fp16; do
        timeout 45 "$BIN" bench-act --precision $prec --batch 256 --res 224 --device cuda --channels-last \
          --iters 20 --warmup 5 --json >>"$OUT/sites.jsonl" 2>>"$OUT/stderr.txt"
      done
      echo "bench-act rc=$? t=${SECONDS}s"; grep '"total"' "$OUT/sites.jsonl" | cut -c1-300
    fi ;;
  compile)
    run 170 "${T[@]}" --act polynorm --precision bf16 "${C[@]}" --compile ;;
  fp16)
    run 60 "$BIN" bench --act relu --precision fp16 "${C[@]}" --json
    run 60 "$BIN" bench --act polynorm --act-impl fused --precision fp16 "${C[@]}" --json
    run 90 "${T[@]}" --act polynorm --precision fp16 "${C[@]}"
    run 60 "$BIN" bench --act polyrelu --act-impl fused --precision fp16 "${C[@]}" --json ;;
  train)
    if fits 90 train; then
      timeout 90 "$BIN" --config configs/demo.toml --device cuda --precision fp16 --channels-last true \
        --epochs 2 --output "$WORK/train" --name cuda-demo ${TRAIN_FLAGS:-} >"$OUT/train.log" 2>&1
      echo "train rc=$? t=${SECONDS}s $(tail -n 2 "$OUT/train.log" | tr '\n' ' ' | cut -c1-300)"
      echo "train warnings: $(grep -c '^\[W' "$OUT/train.log")"
    fi ;;
  ablate)
    if fits 60 ablate; then
      left=$((BUDGET - SECONDS - 15))
      timeout "$left" "$BIN" ablate --config configs/ablate-resnet50-gpu.toml --orders 2,3 --precisions fp16 \
        --steps 100 --output "$WORK/ablate" >"$OUT/ablate.log" 2>&1
      echo "ablate rc=$? t=${SECONDS}s $(tail -n 2 "$OUT/ablate.log" | tr '\n' ' ' | cut -c1-300)"
    fi ;;
  esac
done
(cd "$WORK" && find train ablate -type f -size -2M 2>/dev/null | tar -czf "$OUT/results.tar.gz" -T -)
echo "done t=${SECONDS}s: $(wc -l <"$LOG") bench rows"
