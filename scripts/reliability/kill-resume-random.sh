#!/usr/bin/env bash
# Kill a small deterministic run with SIGKILL at N random instants (each its own run folder),
# resume each until it finishes, and compare metrics.jsonl and summary.csv (without their
# wall-clock fields) with the uninterrupted run's. Prints one line per trial and the tally.
#   N=20 bash scripts/reliability/kill-resume-random.sh      (BIN=path: that binary instead of building one;
#   EPOCHS=1: a shorter run; tests/cli.rs runs one such trial so that the script cannot rot)
# Exits non-zero unless every trial is identical.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bin resnet-train >/dev/null
  BIN=$PWD/target/release/resnet-train
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$BIN" make-demo-data --out "$W/data" >/dev/null
cat > "$W/run.toml" <<TOML
data = "$W/data"
arch = "resnet18"
act = "polynorm"
epochs = ${EPOCHS:-2}
batch_size = 32
lr_base = 0.4
warmup_epochs = 0.5
smoothing = 0.1
train_size = 32
eval_size = 32
device = "cpu"
workers = 2
log_every = 1000
keep_last = 1
checkpoint_every = 10
output = "$W/runs"
TOML
start=$(date +%s.%N)
"$BIN" --config "$W/run.toml" --name full >/dev/null
total=$(echo "$(date +%s.%N) - $start" | bc)
echo "uninterrupted run: ${total}s"
normalise() {
  python3 - "$1" <<'PY'
import json, sys
run = sys.argv[1]
steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
# Wall-clock fields (img_per_s and every *_s: elapsed_s, data_s, step_s, ...) differ run to run.
for s in steps:
    for k in [k for k in s if k.endswith("_s")]:
        s.pop(k)
rows = [",".join(f for i, f in enumerate(l.rstrip("\n").split(",")) if i != 6) for l in open(f"{run}/summary.csv")]
print(json.dumps([steps, rows], sort_keys=True))
PY
}
want=$(normalise "$W/runs/full")
same=0
for i in $(seq "${N:-20}"); do
  delay=$(python3 -c "import random; print(round(random.uniform(0.2, $total), 2))")
  "$BIN" --config "$W/run.toml" --name "t$i" >/dev/null 2>&1 &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -f "$W/runs/t$i/config.toml" ]; then
    "$BIN" --resume "$W/runs/t$i" >/dev/null 2>&1
  else
    "$BIN" --config "$W/run.toml" --name "t$i" >/dev/null 2>&1
  fi
  got=$(normalise "$W/runs/t$i")
  steps_before=$(python3 -c "print(sum(1 for _ in open('$W/runs/t$i/metrics.jsonl')))")
  if [ "$got" == "$want" ]; then same=$((same + 1)); verdict=identical; else verdict=DIFFERENT; fi
  echo "trial $i: SIGKILL after ${delay}s -> resumed -> $verdict"
done
echo "identical: $same of ${N:-20}"
[ "$same" = "${N:-20}" ]
