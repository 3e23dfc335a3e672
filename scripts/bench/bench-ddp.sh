#!/usr/bin/env bash
# Data-parallel step throughput: `resnet-train launch -- bench` next to PyTorch DDP
# (scripts/bench/torch_ddp_bench.py under torchrun), same model, same global batch, same run,
# alternating, REPEAT times (default 2; take medians), for 1 and NPROC (default 2) processes.
# Needs a Python with torch + torchvision (its torchrun):
#   PYTHON=/path/to/python bash scripts/bench/bench-ddp.sh
# On CPU the cores are split between the processes (OMP_NUM_THREADS = cores / processes), so this
# measures the cost of the all-reduce and of splitting the batch, not a speed-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
NPROC=${NPROC:-2}
ARCH=${ARCH:-resnet50}; RES=${RES:-64}; GLOBAL=${GLOBAL:-32}; DEVICE=${DEVICE:-cpu}
cargo build --release --locked --bin resnet-train >/dev/null
cores=$(nproc)
port=29700
for _ in $(seq "${REPEAT:-2}"); do
  for n in 1 "$NPROC"; do
    per_rank=$((GLOBAL / n)); threads=$((cores / n)); ((threads > 0)) || threads=1
    common="--arch $ARCH --batch $per_rank --res $RES --device $DEVICE --steps ${STEPS:-10} --warmup 3"
    port=$((port + 1))
    OMP_NUM_THREADS=$threads ./target/release/resnet-train launch --nproc-per-node "$n" --master-port $port -- \
      bench $common --json 2>/dev/null | grep '^{'
    port=$((port + 1))
    OMP_NUM_THREADS=$threads "$PYTHON" -m torch.distributed.run --nproc-per-node "$n" --master-port $port \
      scripts/bench/torch_ddp_bench.py $common 2>/dev/null | grep '^{'
  done
done
