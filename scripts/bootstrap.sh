#!/usr/bin/env bash
# Prepares a machine to build resnet-train: libtorch 2.11.0, the apt packages the build needs,
# and .cargo/config.toml pointing cargo at that libtorch (so plain `cargo build/test/run` work).
#
#   LIBTORCH=/path/to/torch   use this libtorch (the folder holding lib/ and include/)
#   RESNET_TRAIN_CACHE=DIR    where the libtorch venv lives (default ~/.cache/resnet-train)
#
# Order of preference: $LIBTORCH; a Python torch==2.11.0 already installed (a GPU box); the
# cached venv; a fresh `pip install --no-deps torch==2.11.0 ...` into the cached venv (~543 MB).
# Safe to rerun: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
CACHE=${RESNET_TRAIN_CACHE:-$HOME/.cache/resnet-train}
VENV=$CACHE/libtorch-$TORCH_VERSION
log() { echo "[bootstrap] $*" >&2; }

# 1. Build tools: cmake and nasm (libjpeg-turbo's bundled build), a C++ compiler (the shim),
#    and a font for the figures.
missing=()
for tool in cmake nasm g++; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
# The report figures' font.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
  pkgs=("${missing[@]}")
  log "installing ${pkgs[*]} with apt-get"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${pkgs[@]}" >/dev/null; }
fi

# 2. libtorch.
torch_ok() { [ -f "$1/lib/libtorch_cpu.so" ] && [ -d "$1/include/torch" ]; }
if [ -n "${LIBTORCH:-}" ]; then
  torch_ok "$LIBTORCH" || { log "LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so or include/torch"; exit 1; }
  TORCH_DIR=$LIBTORCH
else
  TORCH_DIR=""
  sys=$(python3 -c 'import torch,os;print(torch.__version__.split("+")[0], os.path.dirname(torch.__file__))' 2>/dev/null || true)
  if [ "${sys%% *}" = "$TORCH_VERSION" ] && torch_ok "${sys#* }"; then
    TORCH_DIR=${sys#* }
    log "using the installed PyTorch $TORCH_VERSION at $TORCH_DIR"
  else
    site=$VENV/lib/python3.11/site-packages
    [ -d "$VENV/lib" ] && site=$(ls -d "$VENV"/lib/python3*/site-packages | head -n 1)
    if ! torch_ok "$site/torch"; then
      log "installing libtorch $TORCH_VERSION (PyPI torch wheel, ~543 MB) into $VENV"
      mkdir -p "$CACHE"
      python3 -m venv "$VENV"
      "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
        "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
      site=$(ls -d "$VENV"/lib/python3*/site-packages | head -n 1)
    fi
    # NVRTC (the wheel PyTorch 2.11's CUDA build uses): no GPU needed; the tests compile the fused
    # activations' CUDA kernels with it so that a kernel that does not compile cannot land.
    if [ ! -f "$site/nvidia/cu13/lib/libnvrtc.so.13" ]; then
      log "installing NVRTC 13.0 (PyPI nvidia-cuda-nvrtc) into $VENV"
      "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps nvidia-cuda-nvrtc==13.0.88
    fi
    # NCCL's and the CUDA CRT's and CCCL's headers (the versions torch 2.11.0's CUDA 13.0 wheel pins): the
    # build compiles c10d's NCCL backend into the binary (loaded on CUDA machines only), so that
    # it cannot rot unseen on CPU-only machines.
    if [ ! -f "$site/nvidia/nccl/include/nccl.h" ] || [ ! -f "$site/nvidia/cu13/include/crt/host_config.h" ] ||
      [ ! -f "$site/nvidia/cu13/include/nv/target" ]; then
      log "installing the NCCL 2.28 and CUDA 13.0 CRT/CCCL headers (PyPI nvidia-nccl-cu13, nvidia-cuda-crt, nvidia-cuda-cccl) into $VENV"
      "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps nvidia-nccl-cu13==2.28.9 \
        nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
    fi
    TORCH_DIR=$site/torch
  fi
fi

# 3. Point cargo at it (git-ignored; rewritten only when it changes).
mkdir -p .cargo
want=$(printf '# Written by scripts/bootstrap.sh; do not commit.\n[env]\nLIBTORCH = "%s"\nLIBTORCH_CXX11_ABI = "1"\n' "$TORCH_DIR")
if [ ! -f .cargo/config.toml ] || [ "$(cat .cargo/config.toml)" != "$want" ]; then
  printf '%s\n' "$want" > .cargo/config.toml
  log "wrote .cargo/config.toml (LIBTORCH=$TORCH_DIR)"
fi

# 4. Python's own WebDataset library, for the tests that check our shards against it (written by
#    it, read by it). Small (webdataset, numpy, braceexpand, pyyaml); a failure only skips them.
TOOLS=$CACHE/pytools
if ! "$TOOLS/bin/python" -c 'import webdataset' >/dev/null 2>&1; then
  log "installing webdataset 1.0.2 (PyPI) into $TOOLS for the shard interop tests"
  { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q --disable-pip-version-check webdataset==1.0.2; } ||
    log "webdataset could not be installed: the shard interop tests will skip"
fi
# 5. A real S3 server for the tests that stream shards from object storage (moto's moto_server,
#    with boto3 to upload). A failure only skips them.
if [ -x "$TOOLS/bin/python" ] && ! "$TOOLS/bin/python" -c 'import moto.server, boto3' >/dev/null 2>&1; then
  log "installing moto[server] 5.2.5 (PyPI) into $TOOLS for the S3 shard tests"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' ||
    log "moto could not be installed: the S3 shard tests will skip"
fi
# 6. PyTorch itself (torch 2.11.0 with its CUDA libraries, torchvision, safetensors, onnx with
#    onnxruntime, and timm: ~4.7 GB, about a minute) for the tests of the PyTorch package in
#    python/ and of `export`. A failure only skips them.
PYT=$CACHE/pytorch
if ! "$PYT/bin/python" -c 'import torch, torchvision, safetensors, onnx, onnxruntime, timm' >/dev/null 2>&1; then
  log "installing torch 2.11.0, torchvision 0.26.0, safetensors, onnx 1.23.2, onnxruntime 1.31.1, timm 1.0.31 (PyPI, ~4.7 GB) into $PYT for the python/ package's tests"
  { python3 -m venv "$PYT" && "$PYT/bin/pip" install -q --disable-pip-version-check torch==2.11.0 torchvision==0.26.0 \
      safetensors onnx==1.23.2 onnxruntime==1.31.1 timm==1.0.31; } ||
    log "PyTorch could not be installed: the python/ package's tests will skip"
fi
