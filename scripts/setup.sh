#!/usr/bin/env bash
# Installs what bee needs on a Debian 12 machine, builds bee, and builds the guest image
# when it is not cached yet. Safe to run again: every step is skipped when already done.
#
#   scripts/setup.sh            bee and the guest image
#   scripts/setup.sh --tests    also what the tests and benchmarks need (registry server,
#                               skopeo, busybox; Slurm, munge and socat; sshd and iproute2
#                               for the SSH host tests; fio, iperf3, ping and hpcc for
#                               `bee bench`)
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--tests" ] && with_tests=1

say() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# program:package pairs; a package is installed when its program (or, for an absolute
# path, that file) is missing. The font is the one `bee bench` draws its plots' text with;
# python3 is read by pyo3 when the workspace builds the Python module (bee-py).
needs=(
  qemu-system-x86_64:qemu-system-x86
  qemu-img:qemu-utils
  mmdebstrap:mmdebstrap
  mkfs.ext4:e2fsprogs
  ssh:openssh-client
  ssh-keygen:openssh-client
  python3:python3
  /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core
)
if [ "$with_tests" = 1 ]; then
  needs+=(docker-registry:docker-registry skopeo:skopeo busybox:busybox-static)
  needs+=(slurmctld:slurmctld slurmd:slurmd srun:slurm-client munged:munge socat:socat)
  needs+=(sshd:openssh-server ip:iproute2)
  needs+=(fio:fio iperf3:iperf3 ping:iputils-ping hpcc:hpcc mpirun:openmpi-bin)
fi

# Prints the packages whose programs are missing, one a line.
missing_packages() {
  local pair program
  for pair in "${needs[@]}"; do
    program=${pair%%:*}
    if [[ $program == /* ]]; then
      [ -e "$program" ] || printf '%s\n' "${pair#*:}"
    elif ! command -v "$program" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$program" ] \
      && [ ! -x "/sbin/$program" ]; then
      printf '%s\n' "${pair#*:}"
    fi
  done | sort -u
}

# Installing one package can remove another's program (Debian's qemu-system-x86 replaces a
# backported qemu-utils without installing its own), so look again after each install.
for round in 1 2; do
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -eq 0 ] && break
  say "installing Debian packages: ${missing[*]}"
  [ "$round" = 1 ] && as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
done
mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -gt 0 ]; then
  say "error: still missing after installing: ${missing[*]}; install them with apt-get"
  exit 1
fi

# Builds go to a target directory outside the clone, so a fresh clone reuses earlier work.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bee/target}"
say "building bee (target directory $CARGO_TARGET_DIR)"
cargo build --locked --bin bee

say "building the guest image unless it is cached (a few minutes the first time)"
as_root env BEE_CACHE_DIR="${BEE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bee}" \
  "$CARGO_TARGET_DIR/debug/bee" image build
