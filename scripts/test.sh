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
echo "test: cargo test" >&2
# Real-guest tests boot one guest each; three at a time keep two cores busy without
# starving any guest of its boot deadline.
cargo test --locked --workspace -- --test-threads 3
