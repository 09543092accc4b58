#!/usr/bin/env bash
# build-image.sh OUTDIR
#
# Phase 1 of the BEE-VM builder (paper section III-C): builds, off-line and
# from Debian packages only, everything a bee-vm node needs, so that phase 2
# (booting a node) only has to hand each node its own settings:
#
#   OUTDIR/vmlinuz, OUTDIR/initrd.img  direct kernel boot (no bootloader)
#   OUTDIR/base.raw                    raw ext4 root filesystem (root=/dev/vda),
#                                      used read-only as qcow2 backing file
#   OUTDIR/base-container.tar          rootfs tarball for `docker import` as
#                                      bee/base (also inside the guest at
#                                      /var/lib/bee/base-container.tar)
#   OUTDIR/bee_ed25519{,.pub}          client key for the guest user `bee`
#   OUTDIR/manifest.json               versions and build time
#
# Per-node settings are NOT baked in: every node boots the same base.raw and
# gets its SSH host key and its KEY=VALUE settings through QEMU fw_cfg
# (opt/bee/ssh_host_ed25519_key, opt/bee/node), read by bee-init.service.
#
# Environment:
#   BEE_SUITE   Debian suite (default bookworm)
#   BEE_MIRROR  Debian mirror (default: the host's apt source for the suite,
#               else http://deb.debian.org/debian)
#   BEE_PROXY   optional http proxy URL, used for this build's apt and written
#               into the guest (apt, /etc/environment, docker); empty = none
#
# stdout carries only progress lines "bee-step N/M description" (for the
# caller to show); everything else goes to stderr. Runs as root because
# mmdebstrap's root mode is the fastest and the image must hold root-owned
# files. The embedding program runs it with OUTDIR an empty temp directory.

set -euo pipefail

readonly STEPS=9
step_no=0
step_desc="startup"

# Progress on stdout, in the fixed format the caller parses.
step() {
    step_no=$1
    step_desc=$2
    printf 'bee-step %d/%d %s\n' "$step_no" "$STEPS" "$step_desc"
}

# Chatter on stderr, with seconds since start (to see where build time goes).
log() { printf 'bee-image: [%4ds] %s\n' "$SECONDS" "$*" >&2; }

die() {
    log "ERROR: $*"
    exit 1
}

if [[ $# -ne 1 ]]; then
    printf 'usage: %s OUTDIR\n' "${0##*/}" >&2
    exit 2
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (mmdebstrap root mode, root-owned image files)"
[[ -d $1 ]] || die "OUTDIR $1 is not a directory"
OUTDIR=$(cd "$1" && pwd -P)
readonly OUTDIR

SUITE=${BEE_SUITE:-bookworm}
PROXY=${BEE_PROXY:-}

# Scratch space lives inside OUTDIR so that moving results out of it is a
# rename on the same filesystem; the EXIT trap removes it.
WORK=""
container_pid=""
guest_pid=""
dockerd_pid=""

# Unmount whatever is still mounted below $WORK (an interrupted mmdebstrap can
# leave /dev, /proc, /sys binds in its chroot), deepest first, so that the
# rm -rf below can never reach the host's /dev or /proc.
unmount_below() {
    local base=$1 mp
    # Field 5 of mountinfo is the mount point (octal escapes for odd chars;
    # our paths have none).
    awk -v b="$base/" 'index($5, b) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r |
        while read -r mp; do
            umount -l "$mp" 2>/dev/null || log "warning: could not unmount $mp"
        done
}

cleanup() {
    local rc=$?
    trap - EXIT
    set +e
    # Our background children (mmdebstrap cleans up its own chroot mounts on
    # SIGTERM; dockerd stops its containerd).
    local pid
    for pid in "$guest_pid" "$container_pid" "$dockerd_pid"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    if [[ -n $WORK && -d $WORK ]]; then
        unmount_below "$WORK"
        rm -rf --one-file-system "$WORK"
    fi
    if [[ $rc -ne 0 ]]; then
        log "FAILED in step $step_no/$STEPS ($step_desc), exit status $rc"
    fi
    exit "$rc"
}
trap cleanup EXIT
# Turn signals into a normal exit so the EXIT trap cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the first http(s) mirror the host's apt sources use for $SUITE
# (one-line .list files and deb822 .sources files), nothing if none.
host_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk -v s="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s && $i ~ /^https?:\/\//) { print $i; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk -v s="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (n = 1; n <= NF; n++) {
                    line = $n
                    if (line ~ /^#/) continue
                    k = line; sub(/:.*/, "", k)
                    v = line; sub(/^[^:]*:[ \t]*/, "", v)
                    k = tolower(k)
                    if (k == "types") types = v
                    else if (k == "uris") uris = v
                    else if (k == "suites") suites = v
                    else if (k == "enabled") enabled = tolower(v)
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                if ((" " suites " ") !~ (" " s " ")) next
                split(uris, u, /[ \t]+/)
                for (j in u) if (u[j] ~ /^https?:\/\//) { print u[j]; exit }
            }' "$f"
    done
}

#######################################################################
step 1 "checking host tools and inputs"

for tool in mmdebstrap mkfs.ext4 ssh-keygen dpkg-query du truncate awk chroot; do
    command -v "$tool" >/dev/null || die "required tool '$tool' not found on the host"
done

if [[ -n ${BEE_MIRROR:-} ]]; then
    MIRROR=$BEE_MIRROR
else
    mapfile -t mirrors < <(host_mirror)
    MIRROR=${mirrors[0]:-http://deb.debian.org/debian}
fi
log "suite $SUITE, mirror $MIRROR, proxy ${PROXY:-none}"

WORK=$(mktemp -d "$OUTDIR/.bee-build.XXXXXX")
# apt drops privileges to _apt for downloads: let it reach the chroots.
chmod 0755 "$WORK"
ROOT=$WORK/rootfs
# mmdebstrap puts its temporary chroot for tar output under TMPDIR: keep that
# inside WORK too, so the trap covers it.
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR" "$WORK/hooks"

# Options shared by both bootstraps.
common_opts=(
    --mode=root
    --variant=minbase
    # Translations and docs are dead weight in a disposable VM/container; the
    # excludes stay in the images' dpkg config, so later installs skip them too.
    '--aptopt=Acquire::Languages "none"'
    --dpkgopt=path-exclude=/usr/share/man/*
    --dpkgopt=path-exclude=/usr/share/info/*
    --dpkgopt=path-exclude=/usr/share/doc/*
    --dpkgopt=path-include=/usr/share/doc/*/copyright
    --dpkgopt=path-exclude=/usr/share/locale/*
    # No fsync per unpacked file: the result is written out by mkfs/tar later,
    # a crash means rebuilding anyway.
    --dpkgopt=force-unsafe-io
)
if [[ -n $PROXY ]]; then
    common_opts+=(
        "--aptopt=Acquire::http::Proxy \"$PROXY\""
        "--aptopt=Acquire::https::Proxy \"$PROXY\""
    )
fi

#######################################################################
step 2 "generating client SSH key pair"

ssh-keygen -q -t ed25519 -N '' -C "bee-client" -f "$OUTDIR/bee_ed25519" </dev/null >&2
chmod 0600 "$OUTDIR/bee_ed25519"
chmod 0644 "$OUTDIR/bee_ed25519.pub"

#######################################################################
step 3 "bootstrapping guest rootfs and container rootfs (mmdebstrap)"

# The container image: enough to compile and run MPI C programs, and hpcc
# (HPC Challenge, with Debian's reference BLAS) for `bee bench compute`.
container_pkgs=openmpi-bin,libopenmpi-dev,gcc,libc6-dev,openssh-client,hpcc

# Hook run inside the container build before it is packed. Docker's default
# seccomp/capabilities forbid process_vm_readv, so Open MPI's shared-memory
# single-copy (CMA) fails noisily in containers: turn it off.
cat >"$WORK/hooks/container-customize.sh" <<'EOF'
#!/bin/sh
set -eu
printf '%s\n' '# bee: containers lack CAP_SYS_PTRACE, so no CMA single copy' \
    'btl_vader_single_copy_mechanism = none' \
    >>"$1/etc/openmpi/openmpi-mca-params.conf"
EOF
chmod +x "$WORK/hooks/container-customize.sh"

# Both bootstraps download and unpack in parallel: they are I/O and network
# bound as much as CPU bound. The container one runs in the background.
log "container rootfs: mmdebstrap in background"
mmdebstrap "${common_opts[@]}" \
    --include="$container_pkgs" \
    --customize-hook="$WORK/hooks/container-customize.sh" \
    "$SUITE" "$WORK/base-container.tar" "$MIRROR" \
    >"$WORK/container.log" 2>&1 &
container_pid=$!

# The guest's initramfs is generated when the kernel package is installed.
# Configure initramfs-tools before that (essential hook = after the Essential
# set, before --include packages), so the single generation at install time is
# already the small one: only the modules needed to mount an ext4 root on
# virtio-blk (about 6 MB and 3 s, against 35 MB and 40 s for MODULES=most).
# conf.d/ and hooks/ are not conffiles, so dpkg leaves them alone.
cat >"$WORK/hooks/guest-essential.sh" <<'OUTER'
#!/bin/sh
set -eu
root=$1
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
cat >"$root/etc/initramfs-tools/conf.d/bee.conf" <<'EOF'
# bee: only what mounting an ext4 root on virtio-blk needs (see hooks/bee-virtio)
MODULES=list
# gzip: no extra package needed in the guest, decompresses fast enough
COMPRESS=gzip
EOF
cat >"$root/etc/initramfs-tools/hooks/bee-virtio" <<'EOF'
#!/bin/sh
# bee: load the virtio-blk root path and ext4 explicitly (MODULES=list adds
# nothing by itself; force_load also loads them at boot without udev).
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk crc32c_generic ext4; do
    force_load "$m"
done
EOF
chmod 0755 "$root/etc/initramfs-tools/hooks/bee-virtio"
OUTER
chmod +x "$WORK/hooks/guest-essential.sh"

guest_pkgs=(
    linux-image-amd64 systemd systemd-sysv udev dbus kmod procps
    openssh-server sudo ca-certificates netbase
    docker.io
    openmpi-bin
    nfs-kernel-server nfs-common
    bridge-utils iproute2 iputils-ping
    fio iperf3
    hpcc
)
# Also in the background, with `wait`: bash runs the INT/TERM traps only
# after a foreground command ends, and a build that is cancelled should stop
# and clean up at once, not a minute later.
log "guest rootfs: mmdebstrap"
mmdebstrap "${common_opts[@]}" \
    --include="$(IFS=,; echo "${guest_pkgs[*]}")" \
    --essential-hook="$WORK/hooks/guest-essential.sh" \
    "$SUITE" "$ROOT" "$MIRROR" >&2 &
guest_pid=$!
if ! wait "$guest_pid"; then
    guest_pid=""
    die "mmdebstrap of the guest rootfs failed"
fi
guest_pid=""

log "waiting for the container rootfs"
if ! wait "$container_pid"; then
    container_pid=""
    tail -n 40 "$WORK/container.log" >&2
    die "mmdebstrap of the container rootfs failed (log tail above)"
fi
container_pid=""
mv "$WORK/base-container.tar" "$OUTDIR/base-container.tar"
chmod 0644 "$OUTDIR/base-container.tar"

#######################################################################
step 4 "configuring the guest (user, ssh, docker, fw_cfg init)"

# Everything below edits files from the host side; only user management and
# systemctl run in the (unmounted) chroot, which they do not need /proc for.

# The container rootfs, for `docker import` inside the guest without network.
install -d -m 0755 "$ROOT/var/lib/bee"
cp "$OUTDIR/base-container.tar" "$ROOT/var/lib/bee/base-container.tar"

# No /etc/fstab: root (/dev/vda) is mounted rw by the kernel command line,
# so without fstab systemd skips systemd-remount-fs (about 1 s on the boot's
# critical path under TCG) and fsck (nodes are disposable overlays, ext4's
# journal covers crashes). errors=remount-ro is set in the superblock by
# mkfs below instead.
rm -f "$ROOT/etc/fstab"

echo bee >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
# bee-init adds "127.0.1.1 <hostname>" at boot
EOF

# Each boot of a fresh overlay must get its own machine-id: an empty file
# makes systemd generate one at first boot (root is rw, so it sticks).
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$ROOT/var/lib/dbus/machine-id"

# User bee: the account the host logs in as. Key-only login; "*" (not "!")
# so sshd does not treat the account as locked.
chroot "$ROOT" useradd -m -u 1000 -U -s /bin/bash -G docker,sudo bee
chroot "$ROOT" usermod -p '*' bee
install -d -m 0700 "$ROOT/home/bee/.ssh"
install -m 0600 "$OUTDIR/bee_ed25519.pub" "$ROOT/home/bee/.ssh/authorized_keys"
chroot "$ROOT" chown -R bee:bee /home/bee/.ssh
cat >"$ROOT/etc/sudoers.d/bee" <<'EOF'
# bee: the host drives the node through this account
bee ALL=(ALL:ALL) NOPASSWD: ALL
EOF
chmod 0440 "$ROOT/etc/sudoers.d/bee"

# SSH: no host keys in the image (each node gets its own via fw_cfg),
# only the ed25519 key is expected, no passwords, no reverse DNS (slow and
# pointless under QEMU user networking).
rm -f "$ROOT"/etc/ssh/ssh_host_*
cat >"$ROOT/etc/ssh/sshd_config.d/bee.conf" <<'EOF'
# bee: host key comes from fw_cfg through bee-init.service
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
EOF

# Docker: no default bridge and no iptables make dockerd start in about 8 s
# instead of 20 s under TCG; containers use --network host (the VM is the
# isolation layer).
install -d -m 0755 "$ROOT/etc/docker"
cat >"$ROOT/etc/docker/daemon.json" <<'EOF'
{
  "bridge": "none",
  "iptables": false,
  "ip-masq": false
}
EOF

# Journal in RAM only: no flush to disk during boot, no growth of the
# node's overlay. Read it over SSH while the node runs.
install -d -m 0755 "$ROOT/etc/systemd/journald.conf.d"
cat >"$ROOT/etc/systemd/journald.conf.d/bee.conf" <<'EOF'
[Journal]
Storage=volatile
RuntimeMaxUse=32M
EOF

# bee-init's modules, loaded in-process by systemd-modules-load early at
# boot: cheaper than exec'ing modprobe from bee-init under TCG.
cat >"$ROOT/etc/modules-load.d/bee.conf" <<'EOF'
# bee: fw_cfg sysfs interface (per-node settings) and the NIC
qemu_fw_cfg
virtio_net
EOF

# Per-node setup from fw_cfg.
cat >"$ROOT/usr/local/sbin/bee-init" <<'EOF'
#!/bin/sh
# bee-init: per-node settings from QEMU fw_cfg (written by build-image.sh).
#
#   opt/bee/ssh_host_ed25519_key  private host key -> /etc/ssh/ssh_host_ed25519_key
#   opt/bee/node                  KEY=VALUE lines:
#       BEE_HOSTNAME   (required) the node's hostname
#       BEE_ETH0_CIDR  (default 10.0.2.15/24)  \
#       BEE_GATEWAY    (default 10.0.2.2)       } QEMU user networking on eth0
#       BEE_DNS        (default 10.0.2.3)      /
#       BEE_ETH1_CIDR  (optional) address for eth1, the inter-node network
#
# Does everything it can and exits non-zero if anything was missing, so a
# broken node shows up on the console and in `systemctl --failed`.
set -u
FW=/sys/firmware/qemu_fw_cfg/by_name/opt/bee
errors=0
err() { echo "bee-init: ERROR: $*" >&2; errors=$((errors + 1)); }
info() { echo "bee-init: $*"; }

# Every exec costs tens of ms under TCG: shell builtins where possible.
# systemd-modules-load (modules-load.d/bee.conf) has normally loaded both
# modules already; modprobe only as a fallback.
for m in qemu_fw_cfg virtio_net; do
    [ -d "/sys/module/$m" ] || modprobe "$m" || err "modprobe $m failed"
done
cr=$(printf '\r')

# SSH host key.
key=$FW/ssh_host_ed25519_key/raw
if [ -r "$key" ]; then
    umask 077
    if cat "$key" >/etc/ssh/ssh_host_ed25519_key.tmp &&
        [ -s /etc/ssh/ssh_host_ed25519_key.tmp ] &&
        ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key.tmp >/etc/ssh/ssh_host_ed25519_key.pub.tmp
    then
        chown root:root /etc/ssh/ssh_host_ed25519_key.tmp
        chmod 0600 /etc/ssh/ssh_host_ed25519_key.tmp
        chmod 0644 /etc/ssh/ssh_host_ed25519_key.pub.tmp
        mv -f /etc/ssh/ssh_host_ed25519_key.tmp /etc/ssh/ssh_host_ed25519_key
        mv -f /etc/ssh/ssh_host_ed25519_key.pub.tmp /etc/ssh/ssh_host_ed25519_key.pub
        info "installed SSH host key: $(cat /etc/ssh/ssh_host_ed25519_key.pub)"
    else
        rm -f /etc/ssh/ssh_host_ed25519_key.tmp /etc/ssh/ssh_host_ed25519_key.pub.tmp
        err "fw_cfg opt/bee/ssh_host_ed25519_key is not a valid ed25519 private key"
    fi
    umask 022
else
    err "fw_cfg entry opt/bee/ssh_host_ed25519_key missing: sshd will not start"
fi

# Node settings: parsed, not sourced; unknown keys are ignored (newer hosts may
# send more), lines that are not KEY=VALUE are errors.
BEE_HOSTNAME=""
BEE_ETH0_CIDR=10.0.2.15/24
BEE_GATEWAY=10.0.2.2
BEE_DNS=10.0.2.3
BEE_ETH1_CIDR=""
node=$FW/node/raw
if [ -r "$node" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%"$cr"}
        case "$line" in '' | '#'*) continue ;; esac
        case "$line" in *=*) ;; *) err "bad line in fw_cfg opt/bee/node (no KEY=VALUE): $line"; continue ;; esac
        k=${line%%=*}
        v=${line#*=}
        # strip one level of surrounding quotes
        case "$v" in \"*\") v=${v#\"}; v=${v%\"} ;; \'*\') v=${v#\'}; v=${v%\'} ;; esac
        case "$k" in
            BEE_HOSTNAME) BEE_HOSTNAME=$v ;;
            BEE_ETH0_CIDR) BEE_ETH0_CIDR=$v ;;
            BEE_GATEWAY) BEE_GATEWAY=$v ;;
            BEE_DNS) BEE_DNS=$v ;;
            BEE_ETH1_CIDR) BEE_ETH1_CIDR=$v ;;
            *) info "ignoring unknown setting $k" ;;
        esac
    done <"$node"
else
    err "fw_cfg entry opt/bee/node missing: hostname not set"
fi

if [ -n "$BEE_HOSTNAME" ]; then
    case "$BEE_HOSTNAME" in
        -* | *[!A-Za-z0-9-]*) valid=no ;;
        *) valid=yes ;;
    esac
    [ "${#BEE_HOSTNAME}" -le 63 ] || valid=no
    if [ "$valid" = yes ]; then
        hostname "$BEE_HOSTNAME"
        echo "$BEE_HOSTNAME" >/etc/hostname
        # Resolvable locally: sudo and MPI look their own name up, and the
        # DNS behind QEMU user networking may not answer at all.
        sed -i '/^127\.0\.1\.1[[:space:]]/d' /etc/hosts
        printf '127.0.1.1\t%s\n' "$BEE_HOSTNAME" >>/etc/hosts
        info "hostname $BEE_HOSTNAME"
    else
        err "invalid BEE_HOSTNAME '$BEE_HOSTNAME'"
    fi
elif [ -r "$node" ]; then
    err "BEE_HOSTNAME missing in fw_cfg opt/bee/node"
fi

# Network: static, no DHCP client (faster, nothing to wait for).
wait_link() {
    i=0
    while [ ! -e "/sys/class/net/$1" ]; do
        i=$((i + 1))
        [ "$i" -le 300 ] || return 1
        sleep 0.1
    done
}
ip link set lo up
if wait_link eth0; then
    ip addr replace "$BEE_ETH0_CIDR" dev eth0 &&
        ip link set eth0 up &&
        ip route replace default via "$BEE_GATEWAY" dev eth0 ||
        err "configuring eth0 failed"
    printf 'nameserver %s\n' "$BEE_DNS" >/etc/resolv.conf
    info "eth0 $BEE_ETH0_CIDR via $BEE_GATEWAY"
else
    err "no eth0 after 30 s"
fi
if [ -n "$BEE_ETH1_CIDR" ]; then
    if wait_link eth1; then
        ip addr replace "$BEE_ETH1_CIDR" dev eth1 && ip link set eth1 up ||
            err "configuring eth1 failed"
        info "eth1 $BEE_ETH1_CIDR"
    else
        err "BEE_ETH1_CIDR set but no eth1"
    fi
fi

if [ "$errors" -ne 0 ]; then
    echo "bee-init: FAILED with $errors error(s)" >&2
    exit 1
fi
info "done"
EOF
chmod 0755 "$ROOT/usr/local/sbin/bee-init"

# Runs without the default dependencies so it does not wait for
# sysinit/basic.target: it only needs the root filesystem, which the kernel
# mounted rw. Ordered before sshd (host key) and network-online.target
# (network), but deliberately NOT before network.target: containerd and
# dockerd (After=network.target) need neither and start in parallel, which
# takes 2-3 s off boot-to-docker. dockerd also wants network-online.target,
# but only after containerd is up, long after bee-init is done. Output goes
# to the serial console too, so a missing fw_cfg entry is visible there.
cat >"$ROOT/etc/systemd/system/bee-init.service" <<'EOF'
[Unit]
Description=bee per-node setup from QEMU fw_cfg (host key, hostname, network)
DefaultDependencies=no
After=systemd-journald.socket systemd-remount-fs.service systemd-modules-load.service
Before=network-online.target ssh.service rpcbind.service nfs-server.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/bee-init
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF

# A marker on the serial console once SSH and Docker are up (or have failed):
# the host can wait for "bee-ready" in the console log instead of polling
# with SSH handshakes, which cost 1-3 s each under TCG.
cat >"$ROOT/etc/systemd/system/bee-ready.service" <<'EOF'
[Unit]
Description=Report on the console that the bee node is ready
After=bee-init.service ssh.service docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'bad=""; for u in bee-init ssh docker; do systemctl is-active -q "$u" || bad="$bad $u"; done; if [ -z "$bad" ]; then echo "bee-ready $(hostname)"; else echo "bee-failed $(hostname):$bad"; fi'
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF

chroot "$ROOT" systemctl enable bee-init.service bee-ready.service >&2

# Units that cost boot time under TCG and do nothing useful on a disposable
# node. Masked (not merely disabled) so no dependency pulls them back in.
#  - e2scrub_reap: about 20 s at boot; e2scrub_all timer the same later
#  - systemd-networkd: about 12 s; bee-init configures the network statically
#  - apt/man-db/fstrim/dpkg-db-backup/logrotate timers: background load
#  - systemd-firstboot could prompt on the console on the first boot of the
#    empty machine-id
#  - getty on tty1: there is no display (-nodefaults); ttyS0 keeps its getty
#  - modprobe@ for drm/efi_pstore/fuse/dm_mod/loop/configfs, pstore, binfmt,
#    debugfs/tracefs/hugepages/configfs mounts: about 0.3 to 3 s of CPU each
#    under TCG (one vCPU: all of it delays SSH and Docker) for hardware or
#    features a node does not use
#  - systemd-logind stays: it turns the ACPI power button into a clean poweroff,
#    which is how bee stops a node gracefully (QMP system_powerdown)
#  - systemd-sysusers (1 s, on the critical path at every first boot): the
#    packages' postinst scripts created all system users at build time
#  - systemd-journal-flush: the journal is volatile, nothing to flush
mask_units=(
    e2scrub_reap.service e2scrub_all.timer
    systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service
    apt-daily.timer apt-daily-upgrade.timer man-db.timer fstrim.timer
    dpkg-db-backup.timer logrotate.timer
    systemd-firstboot.service
    getty@tty1.service
    modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service
    modprobe@dm_mod.service modprobe@loop.service modprobe@configfs.service
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount
    dev-hugepages.mount
    systemd-sysusers.service systemd-journal-flush.service
    systemd-pstore.service
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
)
chroot "$ROOT" systemctl mask "${mask_units[@]}" >&2

# The NFS server (and its rpcbind/statd/idmapd/mountd helpers) is only used
# on the node that exports the data disk: not started at boot (about 4 s of
# CPU), `sudo systemctl start nfs-server` starts it with its dependencies.
# NFS client mounts start rpc-statd themselves when needed.
chroot "$ROOT" systemctl disable nfs-server.service nfs-blkmap.service \
    rpcbind.service rpcbind.socket nfs-client.target >&2

# Proxy for apt, login shells and dockerd (pulls) and the docker client
# (injected into containers and builds).
if [[ -n $PROXY ]]; then
    no_proxy=localhost,127.0.0.1,::1,10.0.2.0/24
    cat >"$ROOT/etc/apt/apt.conf.d/80bee-proxy" <<EOF
Acquire::http::Proxy "$PROXY";
Acquire::https::Proxy "$PROXY";
EOF
    cat >>"$ROOT/etc/environment" <<EOF
http_proxy=$PROXY
https_proxy=$PROXY
HTTP_PROXY=$PROXY
HTTPS_PROXY=$PROXY
no_proxy=$no_proxy
NO_PROXY=$no_proxy
EOF
    install -d -m 0755 "$ROOT/etc/systemd/system/docker.service.d"
    cat >"$ROOT/etc/systemd/system/docker.service.d/bee-proxy.conf" <<EOF
[Service]
Environment="HTTP_PROXY=$PROXY" "HTTPS_PROXY=$PROXY" "NO_PROXY=$no_proxy"
EOF
    install -d -m 0700 "$ROOT/home/bee/.docker"
    cat >"$ROOT/home/bee/.docker/config.json" <<EOF
{
  "proxies": {
    "default": {
      "httpProxy": "$PROXY",
      "httpsProxy": "$PROXY",
      "noProxy": "$no_proxy"
    }
  }
}
EOF
    chroot "$ROOT" chown -R bee:bee /home/bee/.docker
fi

#######################################################################
step 5 "preloading bee/base into the guest's Docker"

# `docker import` of base-container.tar inside a TCG guest takes 75-85 s
# (docker's Go tar/digest pipeline runs at about 10 MB/s there) and writes
# ~450 MB into every node's overlay. Natively it takes seconds: run the
# guest's own dockerd (same version that will read the store) chrooted into
# the rootfs and import there, so bee/base is in the base image. If the host
# cannot run it (no overlay support, ...), the guest keeps only the tarball
# and callers import it themselves: manifest.json says which.
preloaded=false
# Called as an `if` condition, where set -e does not apply: every step
# returns on failure explicitly.
preload() {
    local i
    # docker's untar helper makes "/" rslave in its own mount namespace,
    # which fails (EINVAL) unless the chroot's root is a mount point.
    mount --bind "$ROOT" "$ROOT" || return 1
    mount -t proc proc "$ROOT/proc" || return 1
    # dockerd refuses to start without the host's cgroup mounts (v1 or v2),
    # hence all of /sys; rslave so nothing propagates back to the host.
    mount --rbind /sys "$ROOT/sys" || return 1
    mount --make-rslave "$ROOT/sys" || return 1
    mount --bind /dev "$ROOT/dev" || return 1
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run" || return 1
    mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp" || return 1
    # overlay2 explicitly: otherwise dockerd picks whatever suits the build
    # host's filesystem (btrfs, vfs), which the guest would then inherit.
    # Everything else comes from the guest's /etc/docker/daemon.json.
    chroot "$ROOT" /usr/sbin/dockerd --storage-driver=overlay2 \
        >"$WORK/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for ((i = 0; ; i++)); do
        chroot "$ROOT" docker version >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || return 1
        ((i < 120)) || return 1
        sleep 0.5
    done
    [[ $(chroot "$ROOT" docker info --format '{{.Driver}}') == overlay2 ]] || return 1
    chroot "$ROOT" docker import /var/lib/bee/base-container.tar bee/base >&2 || return 1
}
stop_preload() {
    if [[ -n ${dockerd_pid:-} ]]; then
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
        dockerd_pid=""
    fi
    unmount_below "$ROOT"
    if mountpoint -q "$ROOT"; then
        umount -l "$ROOT" || log "warning: could not unmount $ROOT"
    fi
}
if preload; then
    preloaded=true
    log "bee/base preloaded into the guest's /var/lib/docker"
else
    log "warning: could not preload bee/base (dockerd log tail follows); guests must docker import it"
    tail -n 20 "$WORK/dockerd.log" >&2 || true
fi
stop_preload
if [[ $preloaded != true ]]; then
    # Leave no half-written Docker state in the image.
    rm -rf "${ROOT:?}/var/lib/docker"
fi

#######################################################################
step 6 "extracting kernel and initrd"

mapfile -t krels < <(ls "$ROOT/lib/modules")
[[ ${#krels[@]} -eq 1 ]] || die "expected one kernel in the guest, found: ${krels[*]:-none}"
KREL=${krels[0]}
[[ -f $ROOT/boot/vmlinuz-$KREL ]] || die "no /boot/vmlinuz-$KREL in the guest"
[[ -f $ROOT/boot/initrd.img-$KREL ]] || die "no /boot/initrd.img-$KREL in the guest"
install -m 0644 "$ROOT/boot/vmlinuz-$KREL" "$OUTDIR/vmlinuz"
install -m 0644 "$ROOT/boot/initrd.img-$KREL" "$OUTDIR/initrd.img"
initrd_kib=$(($(stat -c %s "$OUTDIR/initrd.img") / 1024))
log "kernel $KREL, initrd ${initrd_kib} KiB"
# A big initrd means the MODULES=list configuration did not take effect.
[[ $initrd_kib -lt 20480 ]] || die "initrd is ${initrd_kib} KiB, expected a small MODULES=list one"

#######################################################################
step 7 "cleaning the guest rootfs"

chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* \
    "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/root/.bash_history
# Leftovers of the chroot must not end up in the image.
[[ -z $(ls -A "$ROOT/proc" 2>/dev/null) ]] || die "guest /proc is not empty (still mounted?)"

#######################################################################
step 8 "creating the ext4 image base.raw"

# Size: content + 1.5 GiB headroom for Docker images and the node's changes,
# + 10% for ext4 metadata, rounded up to 256 MiB. The file is sparse; nodes
# only ever write to their qcow2 overlays.
used_mib=$(du -sx -B1M "$ROOT" | awk '{ print $1 }')
size_mib=$(((used_mib * 11 / 10 + 1536 + 255) / 256 * 256))
log "rootfs uses ${used_mib} MiB, image size ${size_mib} MiB"
truncate -s "${size_mib}M" "$OUTDIR/base.raw"
# lazy_*_init=0: initialise inode tables and journal now, otherwise every
# booted node would zero them in the background into its own overlay.
mkfs.ext4 -q -F -L bee-root -m 1 -e remount-ro \
    -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
    -d "$ROOT" "$OUTDIR/base.raw" >&2
chmod 0644 "$OUTDIR/base.raw"

#######################################################################
step 9 "writing manifest.json"

pkg_version() {
    dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' "$1"
}
docker_version=$(pkg_version docker.io)
openmpi_version=$(pkg_version openmpi-bin)
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >"$OUTDIR/manifest.json" <<EOF
{
  "suite": "$SUITE",
  "kernel": "$KREL",
  "docker": "$docker_version",
  "openmpi": "$openmpi_version",
  "base_image": "bee/base",
  "base_image_preloaded": $preloaded,
  "built": "$built"
}
EOF
chmod 0644 "$OUTDIR/manifest.json"
log "done: $(cd "$OUTDIR" && echo *)"
