#!/usr/bin/env bash
# Everything a lent GPU should run, in one device call, most important first; each step is skipped
# when too little of the call's time is left, so the call ends on time with what it has. Prepare
# with `bash scripts/prepare-device.sh` (this and the CUDA kernels, compiled beforehand), or by hand:
#   mkdir -p .device && strip -o .device/resnet-train target/release/resnet-train
#   cp -r ../shared/bench ../shared/reference .device/ && cp scripts/gpu-session.sh .device/
# then run `bash .device/gpu-session.sh` with carry [".device"] and timeout_s 560 (BUDGET=520).
# SECTIONS (default "check sites dist lowp bench compile fp16 train ablate") picks and orders the
# parts; TRAIN_FLAGS adds flags to the training runs (train, dist). After ../shared/device/gpu-check.sh
# (its bench, train and stability sections are this script's bench/compile/fp16, train and ablate),
# the call that is left has time for "check sites dist lowp": set BUDGET to what the device tool
# has left, less a minute for the start.
# 1. check: check-act, the fused activations' CUDA kernels against the eager path (forward, gradients).
# 2. ResNet-50 training steps, batch 256, 224 px, channels_last (../shared/device/gpu-check.sh's
#    bench rows and issue 11's): `bench`: bf16 ReLU / PolyReLU / PolyNorm, fused and eager, next to
#    PyTorch eager, `compile`: torch.compile; `fp16`: fp16 ReLU / PolyNorm / PolyReLU; `lowp`: the
#    fused rows with --act-out-lowp (activations returned in bf16/fp16), BatchNorm folded in
#    (fused) and not (fused-act). `sites`: bench-act, one BatchNorm + activation site forward and
#    backward at each of ResNet-50's site shapes (bf16/fp16, channels_last, batch 256), under
#    several kernel tunings (SITE_RUNS; bn_fold=0: batch norm's backward not folded in); the best
#    one is kept for the later sections (their rows say `cuda_tuning`).
# 3. dist (issue 10): one rank through c10d's NCCL path (`launch --nproc-per-node 1 -- bench
#    --dist-backend nccl`) against the plain process, in alternating pairs, then a short NCCL
#    training run through `launch` (DDP's path end to end: broadcast, bucketed all-reduce, eval).
# 4. train: a short CUDA training run of the demo (loader, autocast fp16, scaler, eval, checkpoint).
# 5. ablate: the fp16 stability cells on ResNet-50 at 224 px (docs/stability.md's GPU rows).
# Writes to $OUT: stderr.txt (the card first), bench.jsonl, act-check.jsonl, sites.jsonl, dist.log,
# train.log, ablate.log and results.tar.gz (the run folders without their checkpoints): the device
# tool brings back at most 8 files.
# Every command's exit status is checked: the script ends with "failures: N" and exits non-zero
# when N > 0 (stderr.txt names each failed command).
#
# The same script runs on the CPU with small sizes (tests/cli.rs runs it so, so that no flag in it
# can rot between the rare GPU sessions): DEVICE=cpu PYTORCH=0 DIST_BACKEND=gloo BIN=... and
# MODEL, STEPS, SITE_SHAPE, TRAIN_EPOCHS, ABLATE_STEPS, ABLATE_FLAGS as below.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-520}
WORK=${WORK:-/tmp/rt-work}; mkdir -p "$WORK"
export RESNET_TRAIN_CACHE=$WORK/cache
# Kernels compiled beforehand (NVRTC, no GPU: see "Prepare" above) spare this call a compile per
# tuning; an image the driver refuses is compiled here anew.
if [ -d "$D/kernels" ]; then mkdir -p "$RESNET_TRAIN_CACHE/kernels" && cp "$D"/kernels/*.bin "$RESNET_TRAIN_CACHE/kernels/"; fi
BIN=${BIN:-$D/resnet-train}
DEVICE=${DEVICE:-cuda}
PYTORCH=${PYTORCH:-1}                # 0: no PyTorch rows (no `import torch` needed)
DIST_BACKEND=${DIST_BACKEND:-nccl}
read -r -a MODEL <<<"${MODEL:---arch resnet50 --batch 256 --res 224}"
read -r -a STEPS <<<"${STEPS:---steps 30 --warmup 10}"
read -r -a SITE_SHAPE <<<"${SITE_SHAPE:---batch 256 --res 224 --iters 20 --warmup 5}"
TRAIN_EPOCHS=${TRAIN_EPOCHS:-2}
ABLATE_STEPS=${ABLATE_STEPS:-100}
read -r -a ABLATE_FLAGS <<<"${ABLATE_FLAGS:-}"
read -r -a TRAIN_EXTRA <<<"${TRAIN_FLAGS:-}"
if [ "$PYTORCH" = 1 ]; then
  TORCH_DIR=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')
  export LD_LIBRARY_PATH=$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/stderr.txt"
else
  echo "no nvidia-smi: device $DEVICE" | tee -a "$OUT/stderr.txt"
fi
LOG=$OUT/bench.jsonl
FAILS=0
# failed RC WHAT: count and name a command that exited non-zero (124: its timeout).
failed() { (( $1 == 0 )) && return 0; FAILS=$((FAILS + 1)); echo "# FAILED (rc=$1): ${*:2}" | tee -a "$OUT/stderr.txt"; }
# fits SECS: is there room for a step that may take SECS seconds?
fits() { (( SECONDS + $1 <= BUDGET )) || { echo "# skipped (t=${SECONDS}s): ${*:2}" | tee -a "$OUT/stderr.txt"; return 1; }; }
# run SECS CMD...: one bench row (the command's last stdout line) into bench.jsonl.
run() { local t=$1; shift; fits "$t" "$*" || return 0; echo "# t=${SECONDS}s $*" >>"$OUT/stderr.txt"
  timeout "$t" "$@" 2>>"$OUT/stderr.txt" | tail -n 1 | tee -a "$LOG"; failed "${PIPESTATUS[0]}" "$*"; }
# torch SECS ARGS...: a PyTorch baseline row (skipped with PYTORCH=0).
torch() { [ "$PYTORCH" = 1 ] || return 0; run "$1" python3 "$D/bench/torch_train_bench.py" "${@:2}"; }

SECTIONS=${SECTIONS:-check sites dist lowp bench compile fp16 train ablate}
C=("${MODEL[@]}" --device "$DEVICE" --channels-last "${STEPS[@]}")
for section in $SECTIONS; do
  case $section in
  check)
    if fits 90 check-act; then
      timeout 90 "$BIN" check-act --device "$DEVICE" --json >"$OUT/act-check.jsonl" 2>>"$OUT/stderr.txt"
      rc=$?; failed $rc check-act
      echo "check-act rc=$rc t=${SECONDS}s $(tail -n 1 "$OUT/act-check.jsonl" | cut -c1-300)"
    fi ;;
  bench)
    run 60 "$BIN" bench --act relu --precision bf16 "${C[@]}" --json
    torch 90 --act relu --precision bf16 "${C[@]}"
    for act in polynorm polyrelu; do
      run 60 "$BIN" bench --act $act --act-impl fused --precision bf16 "${C[@]}" --json
      torch 90 --act $act --precision bf16 "${C[@]}"
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
    # PRECISION[:TUNING] per run: the kernels' register budget and grid (RESNET_TRAIN_CUDA_TUNING)
    # compared in this one call; the fastest bf16 folded PolyNorm's tuning is used from here on.
    # bn_fold=0: batch norm's backward as libtorch's instead of folded into PolyNorm's kernels.
    for spec in ${SITE_RUNS:-bf16 bf16:bn_fold=0 bf16:min_blocks=2 bf16:min_blocks=4 bf16:blocks_per_sm=16 fp16}; do
      fits 30 "bench-act $spec" || break
      prec=${spec%%:*}; tuning=; [[ $spec == *:* ]] && tuning=${spec#*:}
      env ${tuning:+RESNET_TRAIN_CUDA_TUNING=$tuning} timeout 45 "$BIN" bench-act --precision "$prec" \
        "${SITE_SHAPE[@]}" --device "$DEVICE" --channels-last --json >>"$OUT/sites.jsonl" 2>>"$OUT/stderr.txt"
      failed $? "bench-act $spec"
    done
    # The default model's sites: PolyCom returning fp32 with an fp32 residual (the `_wide` kernels).
    if fits 30 "bench-act bf16 --act-out-fp32"; then
      timeout 45 "$BIN" bench-act --precision bf16 --act-out-fp32 "${SITE_SHAPE[@]}" --device "$DEVICE" \
        --channels-last --json >>"$OUT/sites.jsonl" 2>>"$OUT/stderr.txt"
      failed $? "bench-act bf16 --act-out-fp32"
    fi
    echo "bench-act t=${SECONDS}s"; grep '"total"' "$OUT/sites.jsonl" | cut -c1-300
    best=$(python3 - "$OUT/sites.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"total"' in l]
rows = [r for r in rows if r["total"] == "polynorm fused" and r["precision"] == "Bf16" and not r.get("act_out_fp32")]
print(min(rows, key=lambda r: r["ms_all_49_sites"]).get("cuda_tuning") or "" if rows else "")
PY
)
    if [ -n "$best" ]; then export RESNET_TRAIN_CUDA_TUNING=$best; fi
    echo "tuning from here on: ${best:-default}" | tee -a "$OUT/stderr.txt" ;;
  dist)
    # Alternating pairs (plain, one rank through the process group): the issue's bar is 3%.
    for _ in 1 2; do
      run 60 "$BIN" bench --act relu --precision bf16 "${C[@]}" --json
      run 60 "$BIN" launch --nproc-per-node 1 --grace 5 -- bench --act relu --precision bf16 "${C[@]}" \
        --dist-backend "$DIST_BACKEND" --json
    done
    if fits 90 dist-train; then
      timeout 90 "$BIN" launch --nproc-per-node 1 --grace 5 -- train --config configs/recipes/demo.toml \
        --device "$DEVICE" --precision fp16 --channels-last true --epochs 1 --dist-backend "$DIST_BACKEND" \
        --output "$WORK/dist" --name dist-demo "${TRAIN_EXTRA[@]}" >"$OUT/dist.log" 2>&1
      rc=$?; failed $rc dist-train
      echo "dist-train rc=$rc t=${SECONDS}s $(grep -m1 '^ranks' "$OUT/dist.log") $(tail -n 1 "$OUT/dist.log" | cut -c1-200)"
    fi ;;
  compile)
    torch 170 --act polynorm --precision bf16 "${C[@]}" --compile ;;
  fp16)
    run 60 "$BIN" bench --act relu --precision fp16 "${C[@]}" --json
    run 60 "$BIN" bench --act polynorm --act-impl fused --precision fp16 "${C[@]}" --json
    torch 90 --act polynorm --precision fp16 "${C[@]}"
    run 60 "$BIN" bench --act polyrelu --act-impl fused --precision fp16 "${C[@]}" --json ;;
  train)
    if fits 90 train; then
      timeout 90 "$BIN" --config configs/recipes/demo.toml --device "$DEVICE" --precision fp16 --channels-last true \
        --epochs "$TRAIN_EPOCHS" --output "$WORK/train" --name cuda-demo "${TRAIN_EXTRA[@]}" >"$OUT/train.log" 2>&1
      rc=$?; failed $rc train
      echo "train rc=$rc t=${SECONDS}s $(tail -n 2 "$OUT/train.log" | tr '\n' ' ' | cut -c1-300)"
      echo "train warnings: $(grep -c '^\[W' "$OUT/train.log")"
    fi ;;
  ablate)
    if fits 60 ablate; then
      left=$((BUDGET - SECONDS - 15))
      timeout "$left" "$BIN" ablate --config configs/ablations/resnet50-gpu.toml --orders 2,3 --precisions fp16 \
        --steps "$ABLATE_STEPS" --output "$WORK/ablate" "${ABLATE_FLAGS[@]}" >"$OUT/ablate.log" 2>&1
      rc=$?; failed $rc ablate
      echo "ablate rc=$rc t=${SECONDS}s $(tail -n 2 "$OUT/ablate.log" | tr '\n' ' ' | cut -c1-300)"
    fi ;;
  *) failed 2 "unknown section $section" ;;
  esac
done
(cd "$WORK" && find train ablate dist -type f -size -2M 2>/dev/null | tar -czf "$OUT/results.tar.gz" -T -)
echo "done t=${SECONDS}s: $(wc -l <"$LOG" 2>/dev/null || echo 0) bench rows; failures: $FAILS"
(( FAILS == 0 ))
