//! The host a benchmark ran on, as the report describes it: CPU model, cores, memory,
//! kernel and the QEMU version.
//!
//! Values that cannot be read are reported as `unknown` (or 0), never guessed: a report
//! from a host without `/proc` still says what it measured.

use std::fs;
use std::process::{Command, Stdio};

use bee_vm::qemu::qemu_binary;

/// What is reported for a value that cannot be read.
const UNKNOWN: &str = "unknown";

/// The machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Cores (hardware threads) this process may run on.
    pub cores: u32,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub memory_bytes: u64,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// What `qemu-system-x86_64 --version` says, such as `7.2.22`.
    pub qemu_version: String,
}

impl Host {
    /// Describes this host.
    pub fn describe() -> Host {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
        Host {
            cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| UNKNOWN.to_owned()),
            cores,
            memory_bytes: mem_total_bytes(&read("/proc/meminfo")).unwrap_or(0),
            kernel: Some(read("/proc/sys/kernel/osrelease").trim().to_owned())
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            qemu_version: qemu_version().unwrap_or_else(|| UNKNOWN.to_owned()),
        }
    }

    /// One line for summaries: `Intel Xeon ..., 2 cores, 23.4 GiB, Linux 6.1.0`.
    pub fn line(&self) -> String {
        let gib = self.memory_bytes as f64 / f64::from(1u32 << 30);
        format!("{}, {} cores, {gib:.1} GiB, Linux {}", self.cpu_model, self.cores, self.kernel)
    }
}

/// The first `model name` of a `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The version QEMU prints first: `QEMU emulator version 7.2.22 (Debian ...)` gives
/// `7.2.22`.
fn qemu_version() -> Option<String> {
    let output = Command::new(qemu_binary()).arg("--version").stdin(Stdio::null()).output().ok()?;
    parse_qemu_version(&String::from_utf8_lossy(&output.stdout))
}

fn parse_qemu_version(text: &str) -> Option<String> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU @ 2.0GHz\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("Test CPU @ 2.0GHz"));
        assert_eq!(cpu_model("processor: 0\n"), None);
        assert_eq!(mem_total_bytes("MemTotal:       1024 kB\nMemFree: 1 kB\n"), Some(1 << 20));
        let qemu = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)\nCopyright (c)";
        assert_eq!(parse_qemu_version(qemu).as_deref(), Some("7.2.22"));
        assert_eq!(parse_qemu_version(""), None);
    }

    #[test]
    fn this_host_is_described() {
        let host = Host::describe();
        assert!(host.cores > 0);
        assert!(host.memory_bytes > 0);
        assert!(host.line().contains(" cores, "), "{}", host.line());
    }
}
