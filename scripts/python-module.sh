#!/usr/bin/env bash
# Builds the `bee` Python module (bee-py) and installs it as bee.so into DIR, by default
# the user's site-packages of python3, so that `import bee` works:
#
#   scripts/python-module.sh [DIR]
#
# BEE_PROFILE=dev builds the unoptimized module instead (faster to build). Needs cargo and
# python3 3.8 or later; the module runs bee's VMs as the `bee` command does, so
# scripts/setup.sh (QEMU and the guest image) comes first.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'python-module: %s\n' "$*" >&2; }

profile=${BEE_PROFILE:-release}
case "$profile" in
  release | dev) ;;
  *) say "error: BEE_PROFILE=$profile: expected release or dev"; exit 2 ;;
esac
command -v python3 >/dev/null || { say "error: python3 is missing: apt install python3"; exit 1; }
dir=${1:-$(python3 -c 'import site; print(site.getusersitepackages())')}

target=${CARGO_TARGET_DIR:-target}
say "building bee-py ($profile)"
cargo build --locked -p bee-py --profile "$profile"
built="$target/$([ "$profile" = dev ] && echo debug || echo release)/libbee.so"
[ -f "$built" ] || { say "error: $built was not built"; exit 1; }

mkdir -p "$dir"
# A new file, then a rename: a Python process that has the old module loaded keeps it.
cp "$built" "$dir/.bee.so.new"
mv -f "$dir/.bee.so.new" "$dir/bee.so"
say "installed $dir/bee.so"
PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" python3 -c 'import bee; print("bee", bee.__version__, "from", bee.__file__)'
