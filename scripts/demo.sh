#!/usr/bin/env bash
# The main job: set everything up, then run the example in examples/hello on one local
# QEMU guest: build its Dockerfile FROM bee/base inside the guest and run it, with a
# 2-rank MPI job, printing the container's output.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bee/target}"
exec "$CARGO_TARGET_DIR/debug/bee" run "${1:-examples/hello/bee.toml}"
