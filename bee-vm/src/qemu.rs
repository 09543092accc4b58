//! The QEMU command line of one guest, rendered from a [`VmSpec`].
//!
//! Rendering is pure: it validates the spec and returns the argument vector, but it
//! does not touch the file system, start QEMU or check that the files exist. Starting
//! and supervising the process is the launcher's job.
//!
//! QEMU parses most option values as comma-separated `key=value` lists, where a
//! literal comma is written twice. Every caller-supplied value that lands inside
//! such a list (paths, the guest name, share tags, fw_cfg names) is escaped that way;
//! values given as a whole argument (`-kernel`, `-initrd`, `-append`, `-pidfile`) and
//! the path after `-serial file:` are passed unchanged because QEMU does not split
//! them. Both rules were checked against QEMU 7.2 with a directory named `a,b`.

use std::collections::HashSet;
use std::env;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the QEMU binary to run instead of the one on `PATH`.
pub const QEMU_ENV: &str = "BEE_QEMU";

/// QEMU binary run when [`QEMU_ENV`] is not set.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// Smallest guest memory, in MiB, that boots the bee guest image.
pub const MIN_MEMORY_MIB: u64 = 128;

/// Longest fw_cfg file name QEMU accepts (56 bytes including the final NUL).
pub const MAX_FW_CFG_NAME: usize = 55;

/// Longest 9p mount tag QEMU accepts.
pub const MAX_SHARE_TAG: usize = 31;

/// Cache modes accepted in [`Disk::cache`], as QEMU spells them.
pub const DISK_CACHE_MODES: [&str; 5] =
    ["none", "writeback", "writethrough", "directsync", "unsafe"];

/// CPU model given to every guest, whatever the accelerator.
///
/// `qemu64` is the one model that works with both accelerators on every host we
/// met: under TCG it boots much faster than `max`, and under KVM `host` and `max`
/// make QEMU 7.2 abort on nested setups (it fails to set MSR 0x10a,
/// `IA32_ARCH_CAPABILITIES`). The KVM probe in [`crate::kvm`] uses the same model, so
/// a host that passes the probe also starts the real guests.
///
/// # Limitations
///
/// The guest sees only the x86-64 baseline (no SSE4.2, AVX, ...): container images
/// built for x86-64-v2 or newer refuse to start, and numeric kernels run slower
/// than on the host CPU.
pub(crate) const CPU_MODEL: &str = "qemu64";

/// Errors found while rendering a [`VmSpec`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QemuError {
    /// The guest has no virtual CPU.
    #[error("cpu count 0 is invalid: a guest needs at least 1")]
    NoCpus,
    /// The guest memory is below [`MIN_MEMORY_MIB`].
    #[error("memory of {memory_mib} MiB is too small: at least {min_mib} MiB is needed")]
    MemoryTooSmall {
        /// Memory asked for, in MiB.
        memory_mib: u64,
        /// Smallest memory accepted, in MiB.
        min_mib: u64,
    },
    /// The SSH port forward has no host port.
    #[error("ssh port 0 is invalid: the forward needs a fixed host port")]
    NoSshPort,
    /// A fw_cfg name is outside QEMU's `opt/` namespace.
    #[error("fw_cfg name {name:?} must start with \"opt/\"")]
    FwCfgNamespace {
        /// The name given.
        name: String,
    },
    /// A fw_cfg name is longer than QEMU accepts.
    #[error("fw_cfg name {name:?} is {len} bytes long: at most {max} are accepted")]
    FwCfgNameTooLong {
        /// The name given.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// Longest name accepted.
        max: usize,
    },
    /// Two fw_cfg entries have the same name.
    #[error("fw_cfg name {name:?} is used twice")]
    DuplicateFwCfg {
        /// The repeated name.
        name: String,
    },
    /// Two NICs of the guest have the same MAC address.
    #[error("mac address {mac} is used by more than one nic")]
    DuplicateMac {
        /// The repeated address, as `52:54:00:..`.
        mac: String,
    },
    /// A NIC was given a multicast MAC address, which no NIC may own.
    #[error("mac address {mac} is a multicast address: the first byte must be even")]
    MulticastMac {
        /// The address given.
        mac: String,
    },
    /// A multicast data NIC was given a group address outside 224.0.0.0/4.
    #[error("multicast group {group} is not a multicast address")]
    NotMulticastGroup {
        /// The group given.
        group: SocketAddrV4,
    },
    /// A `socket` data NIC was given an IPv6 address, which QEMU 7.2 cannot parse there.
    #[error("socket nic address {addr} is IPv6: socket nics are IPv4 only, use a stream nic")]
    Ipv6SocketNic {
        /// The address given.
        addr: SocketAddr,
    },
    /// A disk cache mode is not one QEMU knows.
    #[error("disk {path}: cache mode {cache:?} is not one of {accepted}")]
    DiskCache {
        /// The disk image.
        path: PathBuf,
        /// The mode given.
        cache: String,
        /// The modes accepted, comma-separated.
        accepted: String,
    },
    /// A 9p share tag is empty or too long.
    #[error("share tag {tag:?} is invalid: it needs 1 to {max} bytes")]
    ShareTag {
        /// The tag given.
        tag: String,
        /// Longest tag accepted.
        max: usize,
    },
    /// A path cannot be written on QEMU's command line.
    #[error("path {path:?} is not valid UTF-8")]
    NonUtf8Path {
        /// The path given.
        path: PathBuf,
    },
}

/// How QEMU runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: works everywhere, much slower.
    Tcg,
}

impl Accel {
    /// The name QEMU and `BEE_ACCEL` use: `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// QEMU copy-on-write image, such as a per-node overlay.
    Qcow2,
    /// Raw image, such as an ext4 file system.
    Raw,
}

impl DiskFormat {
    fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// A virtio block device; the first one is the guest's `/dev/vda`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Image file on the host.
    pub path: PathBuf,
    /// Format of the image.
    pub format: DiskFormat,
    /// QEMU cache mode (one of [`DISK_CACHE_MODES`]); QEMU's default when `None`.
    pub cache: Option<String>,
}

/// A NIC on a network between guests, backed by a QEMU socket netdev.
///
/// Listening variants must be started before the connecting ones: QEMU 7.2 fails
/// at once when its peer is not listening yet and has no reconnect for `stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataNic {
    /// A hub shared by every NIC joined to the same UDP multicast group.
    Multicast {
        /// Multicast group and port.
        group: SocketAddrV4,
        /// Local address multicast is sent from; `127.0.0.1` needs no multicast route.
        localaddr: Ipv4Addr,
        /// MAC address of the NIC; it must be unique on the hub.
        mac: [u8; 6],
    },
    /// The listening end of a point-to-point TCP link (`-netdev stream`).
    StreamListen {
        /// Address to listen on.
        addr: SocketAddr,
        /// MAC address of the NIC.
        mac: [u8; 6],
    },
    /// The connecting end of a point-to-point TCP link (`-netdev stream`).
    StreamConnect {
        /// Address of the listening QEMU.
        addr: SocketAddr,
        /// MAC address of the NIC.
        mac: [u8; 6],
    },
    /// The listening end of a point-to-point TCP link (`-netdev socket`, IPv4 only).
    SocketListen {
        /// Address to listen on.
        addr: SocketAddr,
        /// MAC address of the NIC.
        mac: [u8; 6],
    },
    /// The connecting end of a point-to-point TCP link (`-netdev socket`, IPv4 only).
    SocketConnect {
        /// Address of the listening QEMU.
        addr: SocketAddr,
        /// MAC address of the NIC.
        mac: [u8; 6],
    },
}

impl DataNic {
    /// MAC address of the NIC.
    pub fn mac(&self) -> [u8; 6] {
        match self {
            DataNic::Multicast { mac, .. }
            | DataNic::StreamListen { mac, .. }
            | DataNic::StreamConnect { mac, .. }
            | DataNic::SocketListen { mac, .. }
            | DataNic::SocketConnect { mac, .. } => *mac,
        }
    }

    /// Gives the NIC another MAC address.
    pub fn set_mac(&mut self, new: [u8; 6]) {
        match self {
            DataNic::Multicast { mac, .. }
            | DataNic::StreamListen { mac, .. }
            | DataNic::StreamConnect { mac, .. }
            | DataNic::SocketListen { mac, .. }
            | DataNic::SocketConnect { mac, .. } => *mac = new,
        }
    }

    /// The `-netdev` value for this NIC, named `id`.
    fn netdev(&self, id: &str) -> String {
        match self {
            DataNic::Multicast { group, localaddr, .. } => {
                format!("socket,id={id},mcast={group},localaddr={localaddr}")
            }
            DataNic::StreamListen { addr, .. } => stream_netdev(id, true, addr),
            DataNic::StreamConnect { addr, .. } => stream_netdev(id, false, addr),
            DataNic::SocketListen { addr, .. } => format!("socket,id={id},listen={addr}"),
            DataNic::SocketConnect { addr, .. } => format!("socket,id={id},connect={addr}"),
        }
    }
}

fn stream_netdev(id: &str, server: bool, addr: &SocketAddr) -> String {
    let server = if server { "on" } else { "off" };
    format!(
        "stream,id={id},server={server},addr.type=inet,addr.host={},addr.port={}",
        addr.ip(),
        addr.port()
    )
}

/// A host directory exported to the guest over 9p (virtio).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Directory on the host.
    pub path: PathBuf,
    /// Mount tag the guest mounts it by (`mount -t 9p TAG ...`).
    pub tag: String,
}

/// Everything QEMU needs to run one guest: the plan of a single VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Guest name, shown by QEMU and in `ps`.
    pub name: String,
    /// How the guest's CPUs run.
    pub accel: Accel,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Kernel booted directly, without a boot loader.
    pub kernel: PathBuf,
    /// Initial ramdisk of that kernel.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// Virtio disks, in `/dev/vda`, `/dev/vdb`, ... order.
    pub disks: Vec<Disk>,
    /// Host address the guest's SSH server is forwarded from: 127.0.0.1 for a guest on
    /// the host that runs bee, the host's own address for a guest on another host.
    pub ssh_addr: std::net::Ipv4Addr,
    /// Host port forwarded to the guest's SSH server.
    pub ssh_port: u16,
    /// NICs on networks between guests; `eth1`, `eth2`, ... in the guest.
    pub data_nics: Vec<DataNic>,
    /// Host directories exported over 9p.
    pub shares: Vec<Share>,
    /// Files given to the guest through fw_cfg, as (name, host file); names start
    /// with `opt/` (bee uses `opt/bee/...`).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Unix socket QEMU listens on for QMP.
    pub qmp_socket: PathBuf,
    /// File receiving the guest's serial console.
    pub serial_log: PathBuf,
    /// File QEMU writes its process id to, if any.
    pub pidfile: Option<PathBuf>,
    /// MAC address of the user-mode NIC carrying SSH (the guest's `eth0`).
    pub ssh_mac: [u8; 6],
    /// A file holding a migration stream (a VM-level checkpoint) that QEMU loads instead
    /// of booting; the guest then waits, paused, for QMP's `cont`.
    pub incoming: Option<PathBuf>,
}

impl VmSpec {
    /// Validates the spec and renders QEMU's arguments, without the program name.
    ///
    /// NICs appear on the PCI bus in the order `ssh_mac` first, then `data_nics`, so
    /// a guest booted with `net.ifnames=0` names them `eth0`, `eth1`, ...
    pub fn render(&self) -> Result<Vec<String>, QemuError> {
        self.validate()?;

        let mut args = Args::default();
        self.render_machine(&mut args)?;
        self.render_boot(&mut args)?;
        self.render_disks(&mut args)?;
        self.render_nics(&mut args);
        self.render_shares(&mut args)?;
        self.render_fw_cfg(&mut args)?;
        if let Some(file) = &self.incoming {
            // QEMU hands what follows `exec:` to `/bin/sh -c`.
            args.pair("-incoming", format!("exec:cat {}", shell_quote(utf8(file)?)));
        }
        Ok(args.0)
    }

    fn validate(&self) -> Result<(), QemuError> {
        if self.cpus == 0 {
            return Err(QemuError::NoCpus);
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(QemuError::MemoryTooSmall {
                memory_mib: self.memory_mib,
                min_mib: MIN_MEMORY_MIB,
            });
        }
        if self.ssh_port == 0 {
            return Err(QemuError::NoSshPort);
        }
        validate_fw_cfg(&self.fw_cfg)?;
        self.validate_nics()?;
        for disk in &self.disks {
            validate_cache(disk)?;
        }
        for share in &self.shares {
            if share.tag.is_empty() || share.tag.len() > MAX_SHARE_TAG {
                return Err(QemuError::ShareTag { tag: share.tag.clone(), max: MAX_SHARE_TAG });
            }
        }
        Ok(())
    }

    fn validate_nics(&self) -> Result<(), QemuError> {
        let mut seen = HashSet::new();
        let macs = std::iter::once(self.ssh_mac).chain(self.data_nics.iter().map(DataNic::mac));
        for mac in macs {
            if mac[0] & 1 == 1 {
                return Err(QemuError::MulticastMac { mac: format_mac(mac) });
            }
            if !seen.insert(mac) {
                return Err(QemuError::DuplicateMac { mac: format_mac(mac) });
            }
        }
        for nic in &self.data_nics {
            match nic {
                DataNic::Multicast { group, .. } if !group.ip().is_multicast() => {
                    return Err(QemuError::NotMulticastGroup { group: *group });
                }
                DataNic::SocketListen { addr, .. } | DataNic::SocketConnect { addr, .. }
                    if addr.is_ipv6() =>
                {
                    return Err(QemuError::Ipv6SocketNic { addr: *addr });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn render_machine(&self, args: &mut Args) -> Result<(), QemuError> {
        args.pair("-name", escape(&self.name));
        args.pair("-accel", self.accel.as_str());
        args.pair("-M", "q35");
        args.pair("-cpu", CPU_MODEL);
        args.pair("-smp", self.cpus.to_string());
        args.pair("-m", self.memory_mib.to_string());
        args.push("-nodefaults");
        args.push("-no-user-config");
        args.pair("-display", "none");
        // QEMU takes everything after `file:` as the path, but parses what follows
        // `unix:` as an option list: only the second needs its commas doubled.
        args.pair("-serial", format!("file:{}", utf8(&self.serial_log)?));
        let qmp = escape(utf8(&self.qmp_socket)?);
        args.pair("-qmp", format!("unix:{qmp},server=on,wait=off"));
        if let Some(pidfile) = &self.pidfile {
            args.pair("-pidfile", utf8(pidfile)?);
        }
        Ok(())
    }

    fn render_boot(&self, args: &mut Args) -> Result<(), QemuError> {
        args.pair("-kernel", utf8(&self.kernel)?);
        args.pair("-initrd", utf8(&self.initrd)?);
        args.pair("-append", &self.append);
        Ok(())
    }

    fn render_disks(&self, args: &mut Args) -> Result<(), QemuError> {
        for disk in &self.disks {
            let mut drive = format!(
                "file={},if=virtio,format={}",
                escape(utf8(&disk.path)?),
                disk.format.as_str()
            );
            if let Some(cache) = &disk.cache {
                drive.push_str(",cache=");
                drive.push_str(cache);
            }
            args.pair("-drive", drive);
        }
        Ok(())
    }

    fn render_nics(&self, args: &mut Args) {
        let (addr, port) = (self.ssh_addr, self.ssh_port);
        args.pair("-netdev", format!("user,id=ssh0,hostfwd=tcp:{addr}:{port}-:22"));
        args.pair("-device", nic_device("ssh0", self.ssh_mac));
        for (index, nic) in self.data_nics.iter().enumerate() {
            let id = format!("data{index}");
            args.pair("-netdev", nic.netdev(&id));
            args.pair("-device", nic_device(&id, nic.mac()));
        }
    }

    fn render_shares(&self, args: &mut Args) -> Result<(), QemuError> {
        for (index, share) in self.shares.iter().enumerate() {
            let virtfs = format!(
                "local,path={},mount_tag={},security_model=mapped-xattr,id=share{index}",
                escape(utf8(&share.path)?),
                escape(&share.tag)
            );
            args.pair("-virtfs", virtfs);
        }
        Ok(())
    }

    fn render_fw_cfg(&self, args: &mut Args) -> Result<(), QemuError> {
        for (name, file) in &self.fw_cfg {
            let entry = format!("name={},file={}", escape(name), escape(utf8(file)?));
            args.pair("-fw_cfg", entry);
        }
        Ok(())
    }
}

/// The QEMU binary to run: `$BEE_QEMU` when set and not empty, else
/// `qemu-system-x86_64` from `PATH`.
pub fn qemu_binary() -> PathBuf {
    match env::var_os(QEMU_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_QEMU),
    }
}

/// Quotes `text` as one word for `/bin/sh`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Formats a MAC address the way QEMU and `ip link` print it.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, arg: impl Into<String>) {
        self.0.push(arg.into());
    }

    fn pair(&mut self, option: &str, value: impl Into<String>) {
        self.push(option);
        self.push(value);
    }
}

fn nic_device(netdev: &str, mac: [u8; 6]) -> String {
    format!("virtio-net-pci,netdev={netdev},mac={}", format_mac(mac))
}

fn validate_fw_cfg(entries: &[(String, PathBuf)]) -> Result<(), QemuError> {
    let mut seen = HashSet::new();
    for (name, _) in entries {
        if !name.starts_with("opt/") {
            return Err(QemuError::FwCfgNamespace { name: name.clone() });
        }
        if name.len() > MAX_FW_CFG_NAME {
            return Err(QemuError::FwCfgNameTooLong {
                name: name.clone(),
                len: name.len(),
                max: MAX_FW_CFG_NAME,
            });
        }
        if !seen.insert(name.as_str()) {
            return Err(QemuError::DuplicateFwCfg { name: name.clone() });
        }
    }
    Ok(())
}

fn validate_cache(disk: &Disk) -> Result<(), QemuError> {
    match &disk.cache {
        Some(cache) if !DISK_CACHE_MODES.contains(&cache.as_str()) => Err(QemuError::DiskCache {
            path: disk.path.clone(),
            cache: cache.clone(),
            accepted: DISK_CACHE_MODES.join(", "),
        }),
        _ => Ok(()),
    }
}

/// Escapes a value placed inside a QEMU `key=value,...` list.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn utf8(path: &Path) -> Result<&str, QemuError> {
    path.to_str().ok_or_else(|| QemuError::NonUtf8Path { path: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC0: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
    const MAC1: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x01, 0x01];
    const MAC2: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x01, 0x02];

    fn spec() -> VmSpec {
        VmSpec {
            name: "bee-node0".into(),
            accel: Accel::Tcg,
            cpus: 1,
            memory_mib: 1024,
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            append: "root=/dev/vda rw console=ttyS0 net.ifnames=0".into(),
            disks: vec![Disk {
                path: "/run/node0.qcow2".into(),
                format: DiskFormat::Qcow2,
                cache: None,
            }],
            ssh_addr: std::net::Ipv4Addr::LOCALHOST,
            ssh_port: 2222,
            data_nics: vec![],
            shares: vec![],
            fw_cfg: vec![("opt/bee/node".into(), "/run/node0.json".into())],
            qmp_socket: "/run/node0.qmp".into(),
            serial_log: "/run/node0.log".into(),
            pidfile: None,
            ssh_mac: MAC0,
            incoming: None,
        }
    }

    #[test]
    fn an_incoming_checkpoint_is_read_through_a_quoted_shell_word() {
        let spec = VmSpec { incoming: Some("/run/it's here/memory".into()), ..spec() };
        let args = render(&spec);
        let at = args.iter().position(|a| a == "-incoming").expect("-incoming rendered");
        assert_eq!(args[at + 1], r"exec:cat '/run/it'\''s here/memory'");
        assert!(!render(&self::spec()).contains(&"-incoming".to_string()));
    }

    fn render(spec: &VmSpec) -> Vec<String> {
        spec.render().expect("spec renders")
    }

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    /// The arguments after the common prefix of `spec()` up to the ssh NIC.
    fn after_ssh_nic(args: &[String]) -> Vec<String> {
        let at = args.iter().position(|a| a.starts_with("virtio-net-pci,netdev=ssh0")).unwrap();
        args[at + 1..].to_vec()
    }

    fn error(spec: &VmSpec) -> String {
        spec.render().expect_err("spec is rejected").to_string()
    }

    #[test]
    fn typical_spec_renders_full_argv() {
        let mut expected = words(
            "-name bee-node0 -accel tcg -M q35 -cpu qemu64 -smp 1 -m 1024 -nodefaults \
             -no-user-config -display none -serial file:/run/node0.log \
             -qmp unix:/run/node0.qmp,server=on,wait=off \
             -kernel /img/vmlinuz -initrd /img/initrd.img -append",
        );
        expected.push("root=/dev/vda rw console=ttyS0 net.ifnames=0".into());
        expected.extend(words(
            "-drive file=/run/node0.qcow2,if=virtio,format=qcow2 \
             -netdev user,id=ssh0,hostfwd=tcp:127.0.0.1:2222-:22 \
             -device virtio-net-pci,netdev=ssh0,mac=52:54:00:00:00:01 \
             -fw_cfg name=opt/bee/node,file=/run/node0.json",
        ));
        assert_eq!(render(&spec()), expected);
    }

    #[test]
    fn kvm_keeps_the_portable_cpu_model() {
        let spec = VmSpec { accel: Accel::Kvm, cpus: 4, memory_mib: 4096, ..spec() };
        let args = render(&spec);
        assert_eq!(
            args[..12],
            words("-name bee-node0 -accel kvm -M q35 -cpu qemu64 -smp 4 -m 4096")[..]
        );
    }

    #[test]
    fn optional_parts_render_in_order() {
        let spec = VmSpec {
            pidfile: Some("/run/node0.pid".into()),
            disks: vec![
                Disk { path: "/run/node0.qcow2".into(), format: DiskFormat::Qcow2, cache: None },
                Disk {
                    path: "/data/scratch.img".into(),
                    format: DiskFormat::Raw,
                    cache: Some("none".into()),
                },
            ],
            shares: vec![Share { path: "/srv/data".into(), tag: "beedata".into() }],
            ..spec()
        };
        let args = render(&spec);
        let pid = args.iter().position(|a| a == "-pidfile").unwrap();
        assert_eq!(args[pid + 1], "/run/node0.pid");
        assert_eq!(args[pid + 2], "-kernel");
        let drives: Vec<_> =
            args.windows(2).filter(|w| w[0] == "-drive").map(|w| w[1].as_str()).collect();
        assert_eq!(
            drives,
            [
                "file=/run/node0.qcow2,if=virtio,format=qcow2",
                "file=/data/scratch.img,if=virtio,format=raw,cache=none"
            ]
        );
        assert_eq!(
            after_ssh_nic(&args),
            words(
                "-virtfs local,path=/srv/data,mount_tag=beedata,security_model=mapped-xattr,\
                 id=share0 \
                 -fw_cfg name=opt/bee/node,file=/run/node0.json"
            )
        );
    }

    #[test]
    fn multicast_nic() {
        let nic = DataNic::Multicast {
            group: "230.0.0.1:1234".parse().unwrap(),
            localaddr: Ipv4Addr::LOCALHOST,
            mac: MAC1,
        };
        let args = render(&VmSpec { data_nics: vec![nic], fw_cfg: vec![], ..spec() });
        assert_eq!(
            after_ssh_nic(&args),
            words(
                "-netdev socket,id=data0,mcast=230.0.0.1:1234,localaddr=127.0.0.1 \
                 -device virtio-net-pci,netdev=data0,mac=52:54:00:00:01:01"
            )
        );
    }

    #[test]
    fn stream_nics() {
        let nics = vec![
            DataNic::StreamListen { addr: "127.0.0.1:5000".parse().unwrap(), mac: MAC1 },
            DataNic::StreamConnect { addr: "[::1]:5001".parse().unwrap(), mac: MAC2 },
        ];
        let args = render(&VmSpec { data_nics: nics, fw_cfg: vec![], ..spec() });
        assert_eq!(
            after_ssh_nic(&args),
            words(
                "-netdev stream,id=data0,server=on,addr.type=inet,addr.host=127.0.0.1,\
                 addr.port=5000 \
                 -device virtio-net-pci,netdev=data0,mac=52:54:00:00:01:01 \
                 -netdev stream,id=data1,server=off,addr.type=inet,addr.host=::1,addr.port=5001 \
                 -device virtio-net-pci,netdev=data1,mac=52:54:00:00:01:02"
            )
        );
    }

    #[test]
    fn socket_nics() {
        let nics = vec![
            DataNic::SocketListen { addr: "127.0.0.1:6000".parse().unwrap(), mac: MAC1 },
            DataNic::SocketConnect { addr: "127.0.0.1:6001".parse().unwrap(), mac: MAC2 },
        ];
        let args = render(&VmSpec { data_nics: nics, fw_cfg: vec![], ..spec() });
        assert_eq!(
            after_ssh_nic(&args),
            words(
                "-netdev socket,id=data0,listen=127.0.0.1:6000 \
                 -device virtio-net-pci,netdev=data0,mac=52:54:00:00:01:01 \
                 -netdev socket,id=data1,connect=127.0.0.1:6001 \
                 -device virtio-net-pci,netdev=data1,mac=52:54:00:00:01:02"
            )
        );
    }

    #[test]
    fn commas_are_doubled_inside_option_lists_only() {
        let dir = "/tmp/a,b";
        let spec = VmSpec {
            name: "node,0".into(),
            kernel: format!("{dir}/vmlinuz").into(),
            initrd: format!("{dir}/initrd").into(),
            disks: vec![Disk {
                path: format!("{dir}/disk.qcow2").into(),
                format: DiskFormat::Qcow2,
                cache: None,
            }],
            shares: vec![Share { path: format!("{dir}/share").into(), tag: "t,1".into() }],
            fw_cfg: vec![("opt/bee/a,b".into(), format!("{dir}/node.json").into())],
            qmp_socket: format!("{dir}/qmp.sock").into(),
            serial_log: format!("{dir}/serial.log").into(),
            pidfile: Some(format!("{dir}/pid").into()),
            ..spec()
        };
        let args = render(&spec);
        let value = |option: &str| {
            let at = args.iter().position(|a| a == option).unwrap();
            args[at + 1].as_str()
        };
        assert_eq!(value("-name"), "node,,0");
        assert_eq!(value("-serial"), "file:/tmp/a,b/serial.log");
        assert_eq!(value("-qmp"), "unix:/tmp/a,,b/qmp.sock,server=on,wait=off");
        assert_eq!(value("-pidfile"), "/tmp/a,b/pid");
        assert_eq!(value("-kernel"), "/tmp/a,b/vmlinuz");
        assert_eq!(value("-initrd"), "/tmp/a,b/initrd");
        assert_eq!(value("-drive"), "file=/tmp/a,,b/disk.qcow2,if=virtio,format=qcow2");
        assert_eq!(
            value("-virtfs"),
            "local,path=/tmp/a,,b/share,mount_tag=t,,1,security_model=mapped-xattr,id=share0"
        );
        assert_eq!(value("-fw_cfg"), "name=opt/bee/a,,b,file=/tmp/a,,b/node.json");
    }

    #[test]
    fn rejects_zero_cpus() {
        let spec = VmSpec { cpus: 0, ..spec() };
        assert_eq!(error(&spec), "cpu count 0 is invalid: a guest needs at least 1");
    }

    #[test]
    fn rejects_small_memory() {
        let spec = VmSpec { memory_mib: 127, ..spec() };
        assert_eq!(error(&spec), "memory of 127 MiB is too small: at least 128 MiB is needed");
        assert!(VmSpec { memory_mib: 128, ..self::spec() }.render().is_ok());
    }

    #[test]
    fn rejects_ssh_port_zero() {
        let spec = VmSpec { ssh_port: 0, ..spec() };
        assert_eq!(error(&spec), "ssh port 0 is invalid: the forward needs a fixed host port");
    }

    #[test]
    fn rejects_fw_cfg_names_outside_opt() {
        let spec = VmSpec { fw_cfg: vec![("etc/bee".into(), "/f".into())], ..spec() };
        assert_eq!(error(&spec), "fw_cfg name \"etc/bee\" must start with \"opt/\"");
    }

    #[test]
    fn rejects_long_fw_cfg_names() {
        let name = format!("opt/bee/{}", "x".repeat(48));
        let spec = VmSpec { fw_cfg: vec![(name.clone(), "/f".into())], ..spec() };
        assert_eq!(
            error(&spec),
            format!("fw_cfg name \"{name}\" is 56 bytes long: at most 55 are accepted")
        );
    }

    #[test]
    fn rejects_duplicate_fw_cfg_names() {
        let entry = ("opt/bee/node".to_string(), PathBuf::from("/f"));
        let spec = VmSpec { fw_cfg: vec![entry.clone(), entry], ..spec() };
        assert_eq!(error(&spec), "fw_cfg name \"opt/bee/node\" is used twice");
    }

    #[test]
    fn rejects_duplicate_macs() {
        let nics = vec![
            DataNic::SocketListen { addr: "127.0.0.1:6000".parse().unwrap(), mac: MAC1 },
            DataNic::SocketListen { addr: "127.0.0.1:6001".parse().unwrap(), mac: MAC1 },
        ];
        let spec = VmSpec { data_nics: nics, ..spec() };
        assert_eq!(error(&spec), "mac address 52:54:00:00:01:01 is used by more than one nic");

        let nic = DataNic::SocketListen { addr: "127.0.0.1:6000".parse().unwrap(), mac: MAC0 };
        let spec = VmSpec { data_nics: vec![nic], ..self::spec() };
        assert_eq!(error(&spec), "mac address 52:54:00:00:00:01 is used by more than one nic");
    }

    #[test]
    fn rejects_multicast_mac() {
        let spec = VmSpec { ssh_mac: [0x53, 0x54, 0, 0, 0, 1], ..spec() };
        assert_eq!(
            error(&spec),
            "mac address 53:54:00:00:00:01 is a multicast address: the first byte must be even"
        );
    }

    #[test]
    fn rejects_unicast_multicast_group() {
        let nic = DataNic::Multicast {
            group: "10.0.0.1:1234".parse().unwrap(),
            localaddr: Ipv4Addr::LOCALHOST,
            mac: MAC1,
        };
        let spec = VmSpec { data_nics: vec![nic], ..spec() };
        assert_eq!(error(&spec), "multicast group 10.0.0.1:1234 is not a multicast address");
    }

    #[test]
    fn rejects_ipv6_socket_nics() {
        let nic = DataNic::SocketConnect { addr: "[::1]:6000".parse().unwrap(), mac: MAC1 };
        let spec = VmSpec { data_nics: vec![nic], ..spec() };
        assert_eq!(
            error(&spec),
            "socket nic address [::1]:6000 is IPv6: socket nics are IPv4 only, use a stream nic"
        );
    }

    #[test]
    fn rejects_unknown_cache_mode() {
        let disk = Disk {
            path: "/d.img".into(),
            format: DiskFormat::Raw,
            cache: Some("none,aio=native".into()),
        };
        let spec = VmSpec { disks: vec![disk], ..spec() };
        assert_eq!(
            error(&spec),
            "disk /d.img: cache mode \"none,aio=native\" is not one of \
             none, writeback, writethrough, directsync, unsafe"
        );
    }

    #[test]
    fn rejects_bad_share_tags() {
        for tag in [String::new(), "t".repeat(32)] {
            let share = Share { path: "/srv".into(), tag: tag.clone() };
            let spec = VmSpec { shares: vec![share], ..spec() };
            assert_eq!(
                error(&spec),
                format!("share tag {tag:?} is invalid: it needs 1 to 31 bytes")
            );
        }
    }

    #[test]
    fn rejects_non_utf8_paths() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        let kernel = PathBuf::from(OsStr::from_bytes(b"/img/vmlinuz\xff"));
        let spec = VmSpec { kernel, ..spec() };
        assert_eq!(error(&spec), "path \"/img/vmlinuz\\xFF\" is not valid UTF-8");
    }

    #[test]
    fn formats_macs_in_lower_case() {
        assert_eq!(format_mac([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]), "52:54:00:ab:cd:ef");
    }

    #[test]
    fn accel_names() {
        assert_eq!(Accel::Kvm.to_string(), "kvm");
        assert_eq!(Accel::Tcg.to_string(), "tcg");
    }
}
