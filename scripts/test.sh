#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: bootstrap (libtorch, build tools), then cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The tests run two at a time, many in child processes each with libtorch's OpenMP pool: by default
# an idle OpenMP thread spins for a while before it sleeps, and two processes' spinning pools on
# two cores starve each other (measured: tests/cli.rs 245 s, 45 s with passive waiting).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
cargo test --locked "$@"
