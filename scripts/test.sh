#!/usr/bin/env bash
# Everything the tests need, then all tests: installs missing packages, builds bee and
# the guest image when it is not cached, checks formatting and lints, runs unit and
# real-guest tests. Servers a test needs (a registry) are started and stopped by the
# test itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bee/target}"

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "test: unit tests" >&2
cargo test --locked --workspace --exclude bee-tests
echo "test: failure paths of the bee command" >&2
cargo test --locked -p bee-tests --lib --test cli
# Real guests under software emulation: two cores carry about four guests before boots
# slow down past bee's own deadlines, so single-guest tests run three at a time and
# multi-node clusters one at a time.
echo "test: single-guest tests, and the Python module" >&2
cargo build --locked -p bee-py
cargo test --locked -p bee-tests --test vm --test python -- --test-threads 3
echo "test: multi-node clusters" >&2
cargo test --locked -p bee-tests --test mpi --test checkpoint -- --test-threads 1
# Benchmarks measure: one at a time, so that no other guest takes their CPU.
echo "test: bee bench --quick" >&2
cargo test --locked -p bee-tests --test bench -- --test-threads 1
