#!/usr/bin/env bash
# Shards read locally, from a loopback S3 server (moto) and from a plain HTTP server, against
# timm's own wds/ pipeline on the same shards; and the time to the first batch on 1,024 shards.
# BENCHMARKS.md's "WebDataset shards" tables come from this script.
#
#   PYTHON=/path/to/python-with-torch-timm bash scripts/bench/bench-shards.sh
#
# Needs: target/release/{resnet-train,imagenet-prep} (cargo build --release), ../shared's 1,000
# ImageNet samples, scripts/bootstrap.sh's tools venv (moto), and for the timm rows a Python
# with torch, torchvision, timm and webdataset ($PYTHON).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
TOOLS=${RESNET_TRAIN_CACHE:-$HOME/.cache/resnet-train}/pytools
REPEAT=${REPEAT:-2}
BIN=target/release
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The 1,000 samples as an ImageFolder (symlinks); 5,120 samples (each five times over under other
# names, 120 a sixth time) as 50 shards of ~100 (throughput) and as 1,024 shards of 5 (first batch).
for f in ../shared/data/imagenet-samples/*; do
  wnid=$(basename "$f" | cut -d_ -f1)
  mkdir -p "$WORK/img/$wnid" && ln -s "$(realpath "$f")" "$WORK/img/$wnid/"
done
for k in 1 2 3 4 5 6; do
  n=0
  for d in "$WORK"/img/*; do
    n=$((n + 1))
    [ "$k" = 6 ] && [ $n -gt 120 ] && break
    mkdir -p "$WORK/img5/$(basename "$d")"
    for f in "$d"/*; do ln -s "$(realpath "$f")" "$WORK/img5/$(basename "$d")/c${k}_$(basename "$f")"; done
  done
done
$BIN/imagenet-prep shards --src "$WORK/img5" --out "$WORK/wds" --split train --shard-size 103 > /dev/null
$BIN/imagenet-prep shards --src "$WORK/img5" --out "$WORK/wds1024" --split train --shard-size 5 > /dev/null
ls "$WORK/wds1024"/*.tar | wc -l | xargs echo "shards for the first-batch test:"

# The servers: moto's S3 and Python's http.server, on loopback.
S3=5391 HTTP=5392
"$TOOLS/bin/moto_server" -H 127.0.0.1 -p $S3 > /dev/null 2>&1 &
python3 -m http.server $HTTP --bind 127.0.0.1 --directory "$WORK" > /dev/null 2>&1 &
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
sleep 3
"$TOOLS/bin/python" - "$WORK" <<'EOF'
import os, sys, boto3
s3 = boto3.client("s3")
s3.create_bucket(Bucket="bench")
for sub in ["wds", "wds1024"]:
    d = os.path.join(sys.argv[1], sub)
    for name in os.listdir(d):
        s3.upload_file(os.path.join(d, name), "bench", f"{sub}/{name}")
EOF

# A shuffle buffer of 1,000 samples: 10 shards of the 50, about ImageNet's proportion with timm's
# 8192 (6.5 of 1,024 shards) made 30 times coarser, so that an epoch is mostly steady streaming.
echo "== train-mode throughput, 2 threads, shuffle buffer 1000 (img/s)"
for r in $(seq "$REPEAT"); do
  for src in "$WORK/wds" "s3://bench/wds" "http://127.0.0.1:$HTTP/wds"; do
    echo "$src: $($BIN/resnet-train bench-data --data "$src" --mode train --threads 2 --shuffle-buffer 1000 \
      --shard-cache "$WORK/cache" --json)"
  done
  "$PYTHON" scripts/bench/timm_wds_bench.py "$WORK/wds" --workers 2 --passes 2 --shuffle-size 1000 || echo "timm-wds: not run"
done

echo "== time to the first batch, 1,024 shards (s)"
for r in $(seq "$REPEAT"); do
  rm -rf "$WORK/cache" "$WORK/index"
  echo "local, index not cached: $(RESNET_TRAIN_CACHE=$WORK $BIN/resnet-train bench-data --data "$WORK/wds1024" \
    --shuffle-buffer 8192 --threads 2 --batches 1 --json)"
  echo "local, index cached: $(RESNET_TRAIN_CACHE=$WORK $BIN/resnet-train bench-data --data "$WORK/wds1024" \
    --shuffle-buffer 8192 --threads 2 --batches 1 --json)"
  echo "s3: $($BIN/resnet-train bench-data --data s3://bench/wds1024 --threads 2 --batches 1 --shard-cache "$WORK/cache" --json)"
  "$PYTHON" scripts/bench/timm_wds_bench.py "$WORK/wds1024" --workers 2 --passes 0 || echo "timm-wds: not run"
done
