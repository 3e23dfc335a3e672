#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: bootstrap (libtorch, build tools), then cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cargo test --locked "$@"
