//! Whether guests run under KVM or TCG on this host, decided in a few seconds.
//!
//! An openable `/dev/kvm` is not enough: on some nested setups KVM accepts a guest
//! but runs it through instruction emulation, about a thousand times slower than
//! TCG, so a Linux guest never finishes booting. [`probe`] therefore runs a tiny
//! guest that must finish a short workload in long mode within a deadline, and
//! [`decide`] falls back to TCG, with one warning, when it does not.
//!
//! Guests on other hosts (SSH hosts, Slurm nodes) are probed there, by a shell script
//! that runs QEMU with the probe guest from a file every host sees
//! ([`remote_probe_script`]); [`decide_for_hosts`] makes one choice of their outcomes.
//!
//! This module decides; it does not start the real guests.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::{env, process};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{self, Instant};
use tracing::{debug, info, warn};

use crate::qemu::{qemu_binary, Accel, CPU_MODEL};

/// Environment variable forcing the accelerator: `kvm` or `tcg`.
pub const ACCEL_ENV: &str = "BEE_ACCEL";

/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Deadline [`choose`] gives the probe guest. With working KVM it finishes in well
/// under a second, firmware included; under the emulating KVM described in the
/// module docs it needs minutes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long to wait for a probe QEMU to die after SIGKILL; a vCPU busy in the host
/// kernel can take a moment.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Exit status of QEMU when the probe guest writes 0x2a to `isa-debug-exit`
/// (QEMU exits with `value << 1 | 1`).
const PROBE_EXIT_STATUS: i32 = 0x2a << 1 | 1;

/// Longest stdout or stderr kept from a probe QEMU.
const MAX_OUTPUT: u64 = 64 * 1024;

const TCG_FALLBACK: &str = "using TCG software emulation, which is much slower";

/// The probe guest: a multiboot image QEMU loads at 1 MiB with `-kernel`.
///
/// In 32-bit protected mode it writes `P` to the debug console (port 0xe9), builds
/// identity page tables at 0x70000, enters long mode and writes `L`, counts down
/// 20 million iterations and writes `D`, then writes 0x2a to `isa-debug-exit`
/// (port 0xf4) so that QEMU exits with status 85. Working KVM runs the loop in
/// milliseconds and TCG in about 0.1 s. The assembly source is in this module's
/// tests, which check that it still assembles to these bytes.
const PROBE_IMAGE: [u8; 190] = [
    0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00,
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x10, 0x00,
    0xb0, 0x50, 0xe6, 0xe9, 0xfc, 0xbf, 0x00, 0x00, 0x07, 0x00, 0x31, 0xc0, 0xb9, 0x00, 0x0c, 0x00,
    0x00, 0xf3, 0xab, 0xc7, 0x05, 0x00, 0x00, 0x07, 0x00, 0x03, 0x10, 0x07, 0x00, 0xc7, 0x05, 0x00,
    0x10, 0x07, 0x00, 0x03, 0x20, 0x07, 0x00, 0xc7, 0x05, 0x00, 0x20, 0x07, 0x00, 0x83, 0x00, 0x00,
    0x00, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb8, 0x00, 0x00, 0x07, 0x00, 0x0f,
    0x22, 0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30,
    0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0x0f, 0x01, 0x15, 0xb8, 0x00,
    0x10, 0x00, 0xea, 0x89, 0x00, 0x10, 0x00, 0x08, 0x00, 0xb0, 0x4c, 0xe6, 0xe9, 0xb9, 0x00, 0x2d,
    0x31, 0x01, 0xff, 0xc9, 0x75, 0xfc, 0xb0, 0x44, 0xe6, 0xe9, 0xb0, 0x2a, 0xe6, 0xf4, 0xfa, 0xf4,
    0xeb, 0xfc, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0x0f, 0x00, 0xa8, 0x00, 0x10, 0x00,
];

/// Errors choosing the accelerator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvmError {
    /// `BEE_ACCEL` holds something other than an accelerator name.
    #[error("invalid value {value:?} for {variable}: expected one of {accepted}")]
    InvalidForcedAccel {
        /// The variable, `BEE_ACCEL`.
        variable: &'static str,
        /// The value found.
        value: String,
        /// The values accepted.
        accepted: &'static str,
    },
}

/// What opening `/dev/kvm` for reading and writing showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmDevice {
    /// There is no KVM device: no hardware virtualization, or no kvm module.
    Absent,
    /// The device exists but this user may not open it.
    NotAccessible,
    /// The device opens; whether guests actually run is for [`probe`] to tell.
    Present,
}

/// How the probe guest fared under KVM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProbeOutcome {
    /// It finished its workload: KVM runs guests at hardware speed.
    Booted,
    /// It did not finish within the deadline, which is given.
    Hung(Duration),
    /// QEMU could not run it; the text says why (usually QEMU's stderr).
    Failed(String),
}

/// The accelerator to use, and the warning to show when it is not the one wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The accelerator.
    pub accel: Accel,
    /// Why the guests will be slower than they could be, or why they may not start.
    pub warning: Option<String>,
}

/// Decides between KVM and TCG from what was observed.
///
/// A forced accelerator wins and the probe is not consulted; forcing KVM without an
/// openable device only adds a warning, since QEMU will then refuse to start. With
/// nothing forced, KVM is used when the device opens and the probe booted or was
/// not run; every fallback to TCG comes with a warning saying why.
pub fn decide(dev: KvmDevice, probe: Option<ProbeOutcome>, forced: Option<Accel>) -> Decision {
    match (forced, dev, probe) {
        (Some(Accel::Tcg), _, _) => Decision { accel: Accel::Tcg, warning: None },
        (Some(Accel::Kvm), KvmDevice::Present, _) => Decision { accel: Accel::Kvm, warning: None },
        (Some(Accel::Kvm), dev, _) => {
            let problem = device_problem(dev);
            let warning =
                format!("{ACCEL_ENV}=kvm forces KVM but {problem}; guests will not start");
            Decision { accel: Accel::Kvm, warning: Some(warning) }
        }
        (None, KvmDevice::Present, None | Some(ProbeOutcome::Booted)) => {
            Decision { accel: Accel::Kvm, warning: None }
        }
        (None, KvmDevice::Present, Some(ProbeOutcome::Hung(waited))) => tcg(format!(
            "{KVM_DEVICE} is present but a test guest did not finish within {waited:?} \
             (nested virtualization?)"
        )),
        (None, KvmDevice::Present, Some(ProbeOutcome::Failed(why))) => tcg(format!(
            "{KVM_DEVICE} is present but QEMU could not run a test guest with KVM ({why})"
        )),
        (None, dev, _) => tcg(device_problem(dev)),
    }
}

fn tcg(reason: String) -> Decision {
    Decision { accel: Accel::Tcg, warning: Some(format!("{reason}; {TCG_FALLBACK}")) }
}

fn device_problem(dev: KvmDevice) -> String {
    match dev {
        KvmDevice::Absent => format!(
            "{KVM_DEVICE} does not exist (no hardware virtualization, or the kvm module \
             is not loaded)"
        ),
        KvmDevice::NotAccessible => format!(
            "{KVM_DEVICE} cannot be opened for reading and writing (is this user in the \
             kvm group?)"
        ),
        KvmDevice::Present => format!("{KVM_DEVICE} is present"),
    }
}

/// The accelerator forced by `BEE_ACCEL`, if any; unset or empty forces nothing.
pub fn forced_from_env() -> Result<Option<Accel>, KvmError> {
    let value = env::var_os(ACCEL_ENV);
    parse_forced(value.as_deref().map(|value| value.to_string_lossy()).as_deref())
}

fn parse_forced(value: Option<&str>) -> Result<Option<Accel>, KvmError> {
    match value {
        None | Some("") => Ok(None),
        Some("kvm") => Ok(Some(Accel::Kvm)),
        Some("tcg") => Ok(Some(Accel::Tcg)),
        Some(other) => Err(KvmError::InvalidForcedAccel {
            variable: ACCEL_ENV,
            value: other.to_string(),
            accepted: "kvm, tcg",
        }),
    }
}

/// Opens the KVM device at `path` for reading and writing, as QEMU will.
pub fn device_state(path: &Path) -> KvmDevice {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => KvmDevice::Present,
        Err(err) if is_absent(&err) => KvmDevice::Absent,
        Err(err) => {
            debug!(path = %path.display(), error = %err, "kvm device not accessible");
            KvmDevice::NotAccessible
        }
    }
}

fn is_absent(err: &io::Error) -> bool {
    // ENXIO and ENODEV: the node exists but no driver is behind it.
    err.kind() == ErrorKind::NotFound
        || matches!(err.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV))
}

/// Runs the probe guest under KVM and reports how it fared within `timeout`.
///
/// The QEMU process is killed and reaped whatever happens, and its scratch
/// directory removed; the whole call takes at most `timeout` plus about 2 s.
pub async fn probe(timeout: Duration) -> ProbeOutcome {
    probe_with(&qemu_binary(), Accel::Kvm, &env::temp_dir(), timeout).await
}

/// Picks the accelerator for this run: `BEE_ACCEL` if set, else KVM when `/dev/kvm`
/// opens and the probe guest finishes within [`PROBE_TIMEOUT`], else TCG.
///
/// The choice is logged at info level and its warning, if any, once at warn level.
///
/// With `cache`, a probe outcome recorded there during this boot of the host, for the
/// same QEMU binary, is reused instead of probing again: KVM does not start or stop
/// working without a reboot or a new QEMU, and the probe costs seconds when it hangs.
pub async fn choose(cache: Option<&Path>) -> Result<Decision, KvmError> {
    let forced = forced_from_env()?;
    let dev = device_state(Path::new(KVM_DEVICE));

    let probed = match (forced, dev) {
        (None, KvmDevice::Present) => Some(cached_probe(cache).await),
        _ => None,
    };

    let decision = decide(dev, probed, forced);
    info!(accel = %decision.accel, forced = forced.is_some(), "accelerator chosen");
    if let Some(warning) = &decision.warning {
        warn!("{warning}");
    }
    Ok(decision)
}

/// The word that starts the line a remote probe prints.
const REMOTE_MARK: &str = "bee-kvm-probe";

/// Exit status of `timeout -s KILL` when it killed the probe QEMU.
const KILLED_STATUS: i32 = 128 + 9;

/// Writes the probe guest to `dir/kvm-probe.bin` (a directory every host sees, such as
/// bee's cache) unless it is already there, and returns the file.
pub fn shared_probe_image(dir: &Path) -> io::Result<PathBuf> {
    let image = dir.join("kvm-probe.bin");
    if fs::read(&image).is_ok_and(|bytes| bytes == PROBE_IMAGE) {
        return Ok(image);
    }
    fs::create_dir_all(dir)?;
    let partial = dir.join(format!("kvm-probe.bin.{}", process::id()));
    fs::write(&partial, PROBE_IMAGE)?;
    fs::rename(&partial, &image)?;
    Ok(image)
}

/// The shell script that probes KVM on another host: the checks of [`device_state`] and
/// [`probe`], done there with `qemu` and the probe guest at `image` (see
/// [`shared_probe_image`]). It prints one line, `bee-kvm-probe absent`,
/// `bee-kvm-probe inaccessible` or `bee-kvm-probe exit N` (N being QEMU's exit status, 137
/// when it was killed at the deadline), for [`remote_outcome`]; QEMU's complaints go to
/// standard error.
pub fn remote_probe_script(qemu: &Path, image: &Path) -> String {
    let mut command = format!(
        "timeout -s KILL {} {}",
        PROBE_TIMEOUT.as_secs(),
        crate::ssh_hosts::quote(&qemu.to_string_lossy())
    );
    for arg in probe_args(Accel::Kvm, image) {
        command.push(' ');
        command.push_str(&crate::ssh_hosts::quote(&arg.to_string_lossy()));
    }
    format!(
        "if [ ! -e {KVM_DEVICE} ]; then echo {REMOTE_MARK} absent; \
         elif [ ! -r {KVM_DEVICE} ] || [ ! -w {KVM_DEVICE} ]; then \
         echo {REMOTE_MARK} inaccessible; \
         else {command} >/dev/null; echo {REMOTE_MARK} exit $?; fi"
    )
}

/// What a remote probe's output says, in the terms of [`decide`]; `None` when the output
/// holds no line of the script (it did not run).
pub fn remote_outcome(stdout: &str, stderr: &str) -> Option<(KvmDevice, Option<ProbeOutcome>)> {
    let said = stdout.lines().find_map(|line| {
        let (_, rest) = line.split_once(REMOTE_MARK)?;
        Some(rest.trim())
    })?;
    let found = match said {
        "absent" => (KvmDevice::Absent, None),
        "inaccessible" => (KvmDevice::NotAccessible, None),
        exit => {
            let code = exit.strip_prefix("exit ")?.parse::<i32>().ok()?;
            let outcome = match code {
                PROBE_EXIT_STATUS => ProbeOutcome::Booted,
                KILLED_STATUS => ProbeOutcome::Hung(PROBE_TIMEOUT),
                _ => ProbeOutcome::Failed(remote_failure(code, stderr)),
            };
            (KvmDevice::Present, Some(outcome))
        }
    };
    Some(found)
}

/// The decision for one other host from its probe's output: [`decide`] on what the
/// output says, or TCG with a warning when the script did not run there.
pub fn remote_decision(stdout: &str, stderr: &str) -> Decision {
    match remote_outcome(stdout, stderr) {
        Some((dev, probe)) => decide(dev, probe, None),
        None => {
            let said = stderr.lines().map(str::trim).rfind(|l| !l.is_empty());
            tcg(format!("the KVM probe could not run ({})", said.unwrap_or("it printed nothing")))
        }
    }
}

fn remote_failure(code: i32, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        format!("qemu ended with exit status {code} and printed nothing")
    } else {
        lines.join("; ")
    }
}

/// One decision for guests spread over several hosts, from each host's decision: KVM
/// when every host can use it, else TCG everywhere (a VM-level checkpoint restores only
/// under the accelerator it was saved with), with a warning naming each host that
/// cannot and why.
pub fn decide_for_hosts(hosts: &[(String, Decision)]) -> Decision {
    let problems: Vec<String> = hosts
        .iter()
        .filter(|(_, decision)| decision.accel == Accel::Tcg)
        .map(|(host, decision)| {
            let reason = decision.warning.as_deref().unwrap_or("TCG");
            format!("{host}: {}", reason.trim_end_matches(&format!("; {TCG_FALLBACK}")))
        })
        .collect();
    if problems.is_empty() {
        let warnings: Vec<String> = hosts
            .iter()
            .filter_map(|(host, d)| d.warning.as_ref().map(|w| format!("{host}: {w}")))
            .collect();
        let warning = (!warnings.is_empty()).then(|| warnings.join("; "));
        return Decision { accel: Accel::Kvm, warning };
    }
    let warning = format!("{}; {TCG_FALLBACK} on every host", problems.join("; "));
    Decision { accel: Accel::Tcg, warning: Some(warning) }
}

/// What a probe outcome is valid for: this boot of the host and this QEMU binary.
fn probe_cache_key() -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let qemu = qemu_binary();
    let modified = fs::metadata(&qemu)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    format!("{} {} {modified}", boot.trim(), qemu.display())
}

/// Probes KVM, or reuses the outcome recorded in `cache` under the same key.
async fn cached_probe(cache: Option<&Path>) -> ProbeOutcome {
    let key = probe_cache_key();
    if let Some(cache) = cache {
        let recorded = fs::read_to_string(cache)
            .ok()
            .and_then(|text| serde_json::from_str::<(String, ProbeOutcome)>(&text).ok());
        if let Some((recorded_key, outcome)) = recorded {
            if recorded_key == key {
                debug!(?outcome, cache = %cache.display(), "kvm probe outcome reused");
                return outcome;
            }
        }
    }
    let start = Instant::now();
    let outcome = probe(PROBE_TIMEOUT).await;
    debug!(?outcome, elapsed = ?start.elapsed(), "kvm probe finished");
    if let (Some(cache), false) = (cache, matches!(outcome, ProbeOutcome::Failed(_))) {
        let written = serde_json::to_string(&(key, &outcome))
            .map_err(io::Error::other)
            .and_then(|text| fs::write(cache, text));
        if let Err(err) = written {
            debug!(error = %err, cache = %cache.display(), "kvm probe outcome not recorded");
        }
    }
    outcome
}

/// Runs the probe guest with `qemu` under `accel`, in a scratch directory made
/// under `scratch_parent`.
async fn probe_with(
    qemu: &Path,
    accel: Accel,
    scratch_parent: &Path,
    timeout: Duration,
) -> ProbeOutcome {
    let scratch = match Scratch::create(scratch_parent) {
        Ok(scratch) => scratch,
        Err(err) => return ProbeOutcome::Failed(format!("cannot write the probe guest: {err}")),
    };

    let start = Instant::now();
    let spawned = Command::new(qemu)
        .args(probe_args(accel, &scratch.image()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return ProbeOutcome::Failed(format!("cannot run {}: {err}", qemu.display())),
    };
    let stdout = child.stdout.take().map(collect);
    let stderr = child.stderr.take().map(collect);

    let waited = time::timeout(timeout, child.wait()).await;
    kill_and_reap(&mut child).await;
    let stages = output(stdout).await;
    let stderr = output(stderr).await;
    debug!(%accel, stages, elapsed = ?start.elapsed(), "probe guest stopped");

    match waited {
        Ok(Ok(status)) if status.code() == Some(PROBE_EXIT_STATUS) => ProbeOutcome::Booted,
        Ok(Ok(status)) => ProbeOutcome::Failed(failure(status, &stderr)),
        Ok(Err(err)) => ProbeOutcome::Failed(format!("cannot wait for qemu: {err}")),
        Err(_) => ProbeOutcome::Hung(timeout),
    }
}

fn probe_args(accel: Accel, image: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-accel",
        accel.as_str(),
        "-M",
        "q35",
        "-cpu",
        CPU_MODEL,
        "-smp",
        "1",
        "-m",
        "32",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-debugcon",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(image.into());
    args
}

/// Sends SIGKILL (harmless if QEMU already exited) and waits, bounded, for the exit.
async fn kill_and_reap(child: &mut Child) {
    let pid = child.id();
    if let Err(err) = child.start_kill() {
        debug!(?pid, error = %err, "probe qemu already gone");
    }
    if time::timeout(KILL_WAIT, child.wait()).await.is_err() {
        warn!(?pid, "probe qemu did not exit within {KILL_WAIT:?} of SIGKILL; left to the reaper");
    }
}

fn collect(pipe: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut bytes).await;
        bytes
    })
}

/// What a pipe reader collected, once QEMU is gone and the pipe closed.
async fn output(reader: Option<JoinHandle<Vec<u8>>>) -> String {
    let Some(reader) = reader else { return String::new() };
    match time::timeout(KILL_WAIT, reader).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}

/// QEMU's error lines, joined; its warnings only when there is nothing else.
fn failure(status: ExitStatus, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let errors: Vec<&str> =
        lines.iter().copied().filter(|line| !line.contains("warning:")).collect();
    let shown = if errors.is_empty() { lines } else { errors };
    if shown.is_empty() {
        format!("qemu ended with {status} and printed nothing")
    } else {
        shown.join("; ")
    }
}

/// A directory holding the probe image, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create(parent: &Path) -> io::Result<Scratch> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("bee-kvm-probe-{}-{count}", process::id()));
        fs::create_dir(&dir)?;
        let scratch = Scratch(dir);
        fs::write(scratch.image(), PROBE_IMAGE)?;
        Ok(scratch)
    }

    fn image(&self) -> PathBuf {
        self.0.join("probe.bin")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            warn!(path = %self.0.display(), error = %err, "probe scratch directory not removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUFFIX: &str = "; using TCG software emulation, which is much slower";

    fn warning(decision: &Decision) -> &str {
        decision.warning.as_deref().expect("a warning")
    }

    #[test]
    fn remote_probe_lines_become_outcomes() {
        let hung = remote_outcome("0: bee-kvm-probe exit 137\n", "");
        assert_eq!(hung, Some((KvmDevice::Present, Some(ProbeOutcome::Hung(PROBE_TIMEOUT)))));
        let booted = remote_outcome("bee-kvm-probe exit 85\n", "");
        assert_eq!(booted, Some((KvmDevice::Present, Some(ProbeOutcome::Booted))));
        let failed = remote_outcome("bee-kvm-probe exit 1", "qemu: no kvm\n\n");
        let failure = ProbeOutcome::Failed("qemu: no kvm".into());
        assert_eq!(failed, Some((KvmDevice::Present, Some(failure))));
        let silent = remote_outcome("bee-kvm-probe exit 127", "");
        let failure =
            ProbeOutcome::Failed("qemu ended with exit status 127 and printed nothing".into());
        assert_eq!(silent, Some((KvmDevice::Present, Some(failure))));
        assert_eq!(remote_outcome("bee-kvm-probe absent", ""), Some((KvmDevice::Absent, None)));
        let denied = remote_outcome("bee-kvm-probe inaccessible", "");
        assert_eq!(denied, Some((KvmDevice::NotAccessible, None)));
        assert_eq!(remote_outcome("ssh: connect refused", "x"), None);
        assert_eq!(remote_outcome("bee-kvm-probe exit soon", ""), None);
        let lost = remote_decision("", "ssh: connect to host h1 port 22: Connection refused\n");
        assert_eq!(
            lost.warning.as_deref(),
            Some(
                "the KVM probe could not run (ssh: connect to host h1 port 22: Connection \
                 refused); using TCG software emulation, which is much slower"
            )
        );
    }

    #[test]
    fn the_remote_probe_script_checks_the_device_then_runs_qemu_with_a_deadline() {
        let script = remote_probe_script(Path::new("/opt/q emu"), Path::new("/c/kvm-probe.bin"));
        assert!(script.starts_with("if [ ! -e /dev/kvm ]; then echo bee-kvm-probe absent;"));
        assert!(
            script.contains("else timeout -s KILL 4 '/opt/q emu' -accel kvm -M q35 "),
            "{script}"
        );
        assert!(
            script
                .ends_with(" -kernel /c/kvm-probe.bin >/dev/null; echo bee-kvm-probe exit $?; fi"),
            "{script}"
        );
    }

    #[test]
    fn hosts_share_kvm_only_when_all_can_use_it() {
        let kvm = || Decision { accel: Accel::Kvm, warning: None };
        let hung = decide(KvmDevice::Present, Some(ProbeOutcome::Hung(PROBE_TIMEOUT)), None);
        let all = decide_for_hosts(&[("n1".into(), kvm()), ("n2".into(), kvm())]);
        assert_eq!(all, kvm());
        let mixed = decide_for_hosts(&[("n1".into(), kvm()), ("n2".into(), hung.clone())]);
        assert_eq!(mixed.accel, Accel::Tcg);
        assert_eq!(
            mixed.warning.as_deref(),
            Some(
                "n2: /dev/kvm is present but a test guest did not finish within 4s (nested \
                 virtualization?); using TCG software emulation, which is much slower on every \
                 host"
            )
        );
        let absent = decide(KvmDevice::Absent, None, None);
        let both = decide_for_hosts(&[("n1".into(), absent), ("n2".into(), hung)]);
        let text = both.warning.unwrap();
        assert!(text.starts_with("n1: /dev/kvm does not exist") && text.contains("; n2: "));
    }

    #[test]
    fn the_shared_probe_image_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let image = shared_probe_image(&dir.path().join("cache")).unwrap();
        assert_eq!(fs::read(&image).unwrap(), PROBE_IMAGE);
        let modified = fs::metadata(&image).unwrap().modified().unwrap();
        assert_eq!(shared_probe_image(&dir.path().join("cache")).unwrap(), image);
        assert_eq!(fs::metadata(&image).unwrap().modified().unwrap(), modified);
    }

    #[test]
    fn forced_tcg_wins_silently() {
        for dev in [KvmDevice::Absent, KvmDevice::NotAccessible, KvmDevice::Present] {
            let decision = decide(dev, Some(ProbeOutcome::Booted), Some(Accel::Tcg));
            assert_eq!(decision, Decision { accel: Accel::Tcg, warning: None });
        }
    }

    #[test]
    fn forced_kvm_with_device_skips_the_probe() {
        let hung = Some(ProbeOutcome::Hung(Duration::from_secs(4)));
        let decision = decide(KvmDevice::Present, hung, Some(Accel::Kvm));
        assert_eq!(decision, Decision { accel: Accel::Kvm, warning: None });
    }

    #[test]
    fn forced_kvm_without_device_warns() {
        let decision = decide(KvmDevice::Absent, None, Some(Accel::Kvm));
        assert_eq!(decision.accel, Accel::Kvm);
        assert_eq!(
            warning(&decision),
            "BEE_ACCEL=kvm forces KVM but /dev/kvm does not exist (no hardware \
             virtualization, or the kvm module is not loaded); guests will not start"
        );

        let decision = decide(KvmDevice::NotAccessible, None, Some(Accel::Kvm));
        assert_eq!(decision.accel, Accel::Kvm);
        assert_eq!(
            warning(&decision),
            "BEE_ACCEL=kvm forces KVM but /dev/kvm cannot be opened for reading and \
             writing (is this user in the kvm group?); guests will not start"
        );
    }

    #[test]
    fn working_kvm_is_used() {
        let booted = decide(KvmDevice::Present, Some(ProbeOutcome::Booted), None);
        assert_eq!(booted, Decision { accel: Accel::Kvm, warning: None });
        let unprobed = decide(KvmDevice::Present, None, None);
        assert_eq!(unprobed, Decision { accel: Accel::Kvm, warning: None });
    }

    #[test]
    fn hung_probe_falls_back_to_tcg() {
        let hung = Some(ProbeOutcome::Hung(Duration::from_secs(4)));
        let decision = decide(KvmDevice::Present, hung, None);
        assert_eq!(decision.accel, Accel::Tcg);
        assert_eq!(
            warning(&decision),
            format!(
                "/dev/kvm is present but a test guest did not finish within 4s \
                 (nested virtualization?){SUFFIX}"
            )
        );
    }

    #[test]
    fn failed_probe_falls_back_to_tcg() {
        let failed = Some(ProbeOutcome::Failed("failed to set MSR 0x10a".into()));
        let decision = decide(KvmDevice::Present, failed, None);
        assert_eq!(decision.accel, Accel::Tcg);
        assert_eq!(
            warning(&decision),
            format!(
                "/dev/kvm is present but QEMU could not run a test guest with KVM \
                 (failed to set MSR 0x10a){SUFFIX}"
            )
        );
    }

    #[test]
    fn missing_device_falls_back_to_tcg() {
        let decision = decide(KvmDevice::Absent, None, None);
        assert_eq!(decision.accel, Accel::Tcg);
        assert_eq!(
            warning(&decision),
            format!(
                "/dev/kvm does not exist (no hardware virtualization, or the kvm module \
                 is not loaded){SUFFIX}"
            )
        );
    }

    #[test]
    fn inaccessible_device_falls_back_to_tcg() {
        let decision = decide(KvmDevice::NotAccessible, None, None);
        assert_eq!(decision.accel, Accel::Tcg);
        assert_eq!(
            warning(&decision),
            format!(
                "/dev/kvm cannot be opened for reading and writing (is this user in the \
                 kvm group?){SUFFIX}"
            )
        );
    }

    #[test]
    fn parses_forced_accel() {
        assert_eq!(parse_forced(None), Ok(None));
        assert_eq!(parse_forced(Some("")), Ok(None));
        assert_eq!(parse_forced(Some("kvm")), Ok(Some(Accel::Kvm)));
        assert_eq!(parse_forced(Some("tcg")), Ok(Some(Accel::Tcg)));
        let err = parse_forced(Some("KVM ")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"KVM \" for BEE_ACCEL: expected one of kvm, tcg"
        );
    }

    #[test]
    fn device_state_of_missing_and_openable_nodes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(device_state(&dir.path().join("kvm")), KvmDevice::Absent);
        let file = dir.path().join("openable");
        fs::write(&file, b"").unwrap();
        assert_eq!(device_state(&file), KvmDevice::Present);
        // A directory exists but cannot be opened for writing.
        assert_eq!(device_state(dir.path()), KvmDevice::NotAccessible);
    }

    #[test]
    fn failure_prefers_errors_over_warnings() {
        use std::os::unix::process::ExitStatusExt;

        let status = ExitStatus::from_raw(1 << 8);
        let stderr = "qemu: warning: host doesn't support requested feature\n\
                      qemu: error: failed to set MSR 0x10a to 0x69\n";
        assert_eq!(failure(status, stderr), "qemu: error: failed to set MSR 0x10a to 0x69");
        let warning_only = "qemu: warning: something\n";
        assert_eq!(failure(status, warning_only), "qemu: warning: something");
        assert_eq!(failure(status, ""), "qemu ended with exit status: 1 and printed nothing");
    }

    /// TCG runs the probe guest to the end: this proves the detection itself works.
    #[tokio::test]
    async fn recorded_probe_outcome_is_reused_for_the_same_boot_and_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("kvm-probe.json");
        // An outcome the real probe could not give within a test's time: proof that the
        // record, not a probe, answered.
        let recorded = ProbeOutcome::Hung(Duration::from_secs(12345));
        fs::write(&cache, serde_json::to_string(&(probe_cache_key(), &recorded)).unwrap()).unwrap();
        assert_eq!(cached_probe(Some(&cache)).await, recorded);
    }

    #[tokio::test]
    async fn probe_guest_finishes_under_tcg() {
        let scratch = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let outcome =
            probe_with(&qemu_binary(), Accel::Tcg, scratch.path(), Duration::from_secs(20)).await;
        eprintln!("tcg probe: {outcome:?} after {:?}", start.elapsed());
        assert_eq!(outcome, ProbeOutcome::Booted);
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "scratch left behind");
    }

    /// Whatever KVM does on this host, the probe decides within its bound.
    #[tokio::test]
    async fn kvm_probe_decides_in_bounded_time() {
        let scratch = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let outcome = probe_with(&qemu_binary(), Accel::Kvm, scratch.path(), PROBE_TIMEOUT).await;
        let elapsed = start.elapsed();
        eprintln!("kvm probe: {outcome:?} after {elapsed:?}");
        assert!(elapsed < PROBE_TIMEOUT + KILL_WAIT + Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "scratch left behind");
    }

    #[tokio::test]
    async fn missing_qemu_fails_naming_it() {
        let scratch = tempfile::tempdir().unwrap();
        let qemu = Path::new("/nonexistent/qemu-system-x86_64");
        let outcome = probe_with(qemu, Accel::Tcg, scratch.path(), PROBE_TIMEOUT).await;
        assert_eq!(
            outcome,
            ProbeOutcome::Failed(
                "cannot run /nonexistent/qemu-system-x86_64: No such file or directory \
                 (os error 2)"
                    .into()
            )
        );
    }

    #[tokio::test]
    async fn qemu_exiting_early_is_a_failure() {
        let scratch = tempfile::tempdir().unwrap();
        let outcome = probe_with(Path::new("false"), Accel::Kvm, scratch.path(), PROBE_TIMEOUT);
        assert_eq!(
            outcome.await,
            ProbeOutcome::Failed("qemu ended with exit status: 1 and printed nothing".into())
        );
    }

    /// Source of [`PROBE_IMAGE`], for GNU `as --32` and `objcopy -O binary`.
    const PROBE_SOURCE: &str = r#"
    .set LOAD, 0x100000
    .set MAGIC, 0x1BADB002
    .set FLAGS, 0x00010000          /* bit 16: load addresses below */
    .set LOOPS, 20000000
    .code32
    .text
header:
    .long MAGIC, FLAGS, -(MAGIC + FLAGS)
    .long LOAD, LOAD, 0, 0, LOAD + (entry - header)
entry:
    mov $'P', %al                   /* stage: protected mode */
    out %al, $0xe9
    cld                             /* page tables at 0x70000..0x73000 */
    mov $0x70000, %edi
    xor %eax, %eax
    mov $3072, %ecx
    rep stosl
    movl $0x71003, 0x70000          /* PML4[0] -> PDPT */
    movl $0x72003, 0x71000          /* PDPT[0] -> PD */
    movl $0x83, 0x72000             /* PD[0] -> 2 MiB page at 0 */
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $0x70000, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx           /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax            /* PG */
    mov %eax, %cr0
    lgdt LOAD + (gdtr - header)
    ljmp $0x08, $(LOAD + (long64 - header))
    .code64
long64:
    mov $'L', %al                   /* stage: long mode */
    out %al, $0xe9
    mov $LOOPS, %ecx
1:  dec %ecx
    jnz 1b
    mov $'D', %al                   /* stage: workload done */
    out %al, $0xe9
    mov $0x2a, %al                  /* isa-debug-exit: status 85 */
    out %al, $0xf4
2:  cli
    hlt
    jmp 2b
    .balign 8, 0
gdt:
    .quad 0, 0x00AF9A000000FFFF     /* null, 64-bit code */
gdtr:
    .word 15
    .long LOAD + (gdt - header)
"#;

    #[test]
    fn probe_image_has_a_valid_multiboot_header() {
        let word = |at: usize| u32::from_le_bytes(PROBE_IMAGE[at..at + 4].try_into().unwrap());
        assert_eq!(word(0), 0x1BAD_B002);
        assert_eq!(word(0).wrapping_add(word(4)).wrapping_add(word(8)), 0);
        let entry = word(28) as usize - 0x10_0000;
        assert_eq!(&PROBE_IMAGE[entry..entry + 4], [0xb0, b'P', 0xe6, 0xe9]);
    }

    /// Needs GNU binutils (`as`, `objcopy`), which come with gcc.
    #[test]
    fn probe_image_matches_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("probe.S");
        let object = dir.path().join("probe.o");
        let image = dir.path().join("probe.bin");
        fs::write(&source, PROBE_SOURCE).unwrap();

        let assembled =
            process::Command::new("as").arg("--32").arg("-o").arg(&object).arg(&source).status();
        let assembled = assembled.expect("GNU as is missing: install Debian's binutils");
        assert!(assembled.success());
        let copied = process::Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&object)
            .arg(&image)
            .status()
            .unwrap();
        assert!(copied.success());
        assert_eq!(fs::read(&image).unwrap(), PROBE_IMAGE);
    }
}
