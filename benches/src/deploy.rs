//! `bee bench deploy`: how long `bee up` takes to Docker ready against a plain QEMU boot
//! of the same guest to SSH, and how much memory bee itself uses.
//!
//! It interleaves, run after run:
//!
//! 1. the reference: the same guest image booted by a plain QEMU command, timed from
//!    spawning QEMU until `ssh ... true` succeeds;
//! 2. `bee up` of a one-node cluster, timed from spawn to exit, which is when Docker in
//!    the guest answers (the `bee down` afterwards is not timed);
//! 3. the peak resident memory of the `bee` process itself during
//!    `bee run examples/hello/bee.toml`.
//!
//! It also times, once, the KVM probe bee runs before booting when `BEE_ACCEL` is unset
//! and `/dev/kvm` opens. The guests themselves run under `BEE_ACCEL` if set, else TCG, so
//! that a host whose KVM hangs does not pay the probe inside the timed `bee up`.
//!
//! # Limitations
//!
//! - The peak memory is read by polling `VmHWM` in `/proc/PID/status` every 100 ms: growth
//!   in bee's last 100 ms before it exits is missed. `wait4`'s `ru_maxrss` is not used
//!   because it also covers the children bee reaps, QEMU among them.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bee_vm::kvm::{self, KvmDevice, ProbeOutcome};
use bee_vm::qemu::{qemu_binary, Accel};
use serde_json::json;

use crate::bee::{
    check_bee, free_port, run_quietly, tail, wait_with_deadline, BeeState, Cluster, ScratchDir,
    Tools, Tracked, DEADLINE,
};
use crate::results::{Better, Comparison, Metric, Results, Series, Target, TargetOn};
use crate::text::{heading, median, mib, progress, row, secs, step, verdict};
use crate::{Common, Kind};

/// Target for bee-up time over plain-QEMU boot time.
const RATIO_TARGET: f64 = 1.3;

/// Target for the peak resident memory of the `bee` process, in MiB.
const RSS_TARGET_MIB: f64 = 30.0;

/// Interval between SSH attempts at the reference guest.
const SSH_POLL: Duration = Duration::from_millis(250);

/// Interval between reads of `VmHWM` while `bee run` runs.
const RSS_POLL: Duration = Duration::from_millis(100);

/// The example `bee run` is measured with, built into bee so that an installed `bee bench`
/// needs no source tree: its file names and contents.
const HELLO_EXAMPLE: [(&str, &str); 3] = [
    ("bee.toml", include_str!("../../examples/hello/bee.toml")),
    ("Dockerfile", include_str!("../../examples/hello/Dockerfile")),
    ("hello.sh", include_str!("../../examples/hello/hello.sh")),
];

/// How the peak memory is measured, as printed in the report.
const RSS_METHOD: &str = "max of VmHWM in /proc/PID/status, polled every 100 ms";

/// The subject names of the deploy time.
const REFERENCE: &str = "plain qemu";
/// See [`REFERENCE`].
const BEE_UP: &str = "bee up";

/// The one-node cluster `bee up` is timed with.
const UP_CLUSTER: &str = "bench-up";

/// Fixed and per-run time on a two-core TCG host: three boots a run.
pub(crate) fn expected(_quick: bool) -> (Duration, Duration) {
    (Duration::from_secs(10), Duration::from_secs(200))
}

/// Runs the deploy benchmark.
pub(crate) fn run(common: &Common) -> Result<Results> {
    let forced = kvm::forced_from_env()?;
    let accel = forced.unwrap_or(Accel::Tcg);
    let tools = Tools::locate(common.bee.clone())?;
    let probe = measure_probe(forced)?;
    let runs = common.runs;

    let mut samples = Samples::default();
    for run in 1..=runs {
        progress(&format!("run {run} of {runs}"));
        let reference = step("plain qemu boot to ssh", || reference_boot(&tools, accel), secs)?;
        samples.reference.push(reference);
        let up = step("bee up to docker ready", || bee_up(&tools, accel), secs)?;
        samples.bee_up.push(up);
        let rss = step("bee peak rss during run", || peak_rss_of_run(&tools, accel), mib_text)?;
        samples.rss_kib.push(rss);
    }

    let report = Report { accel, runs, probe, samples };
    Ok(report.results(common.quick))
}

/// A size in KiB as the table shows it, in MiB.
fn mib_text(kib: &u64) -> String {
    format!("{:.1} MiB", mib(*kib))
}

/// What bee's KVM probe cost on this host, if bee would run it.
#[derive(Debug)]
enum Probe {
    /// Not run: `BEE_ACCEL` chooses for bee.
    Forced,
    /// Not run: `/dev/kvm` is absent or cannot be opened.
    NoDevice,
    /// Run, taking this long, with this outcome.
    Ran(Duration, ProbeOutcome),
}

/// Times bee's KVM probe the way `bee up` would run it when `BEE_ACCEL` is unset.
fn measure_probe(forced: Option<Accel>) -> Result<Probe> {
    if forced.is_some() {
        return Ok(Probe::Forced);
    }
    if kvm::device_state(Path::new(kvm::KVM_DEVICE)) != KvmDevice::Present {
        return Ok(Probe::NoDevice);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    eprint!("bee bench: bee's kvm probe: ");
    let start = Instant::now();
    let outcome = runtime.block_on(kvm::probe(kvm::PROBE_TIMEOUT));
    let elapsed = start.elapsed();
    eprintln!("{} ({})", secs(&elapsed), describe(&outcome));
    Ok(Probe::Ran(elapsed, outcome))
}

/// The reference: boots the image with a plain QEMU command and times it until SSH works.
fn reference_boot(tools: &Tools, accel: Accel) -> Result<Duration> {
    let dir = ScratchDir::new("bee-bench-ref-")?;
    prepare_reference(tools, dir.path())?;
    let port = free_port()?;

    let start = Instant::now();
    let mut guest = ReferenceGuest::spawn(tools, dir, accel, port)?;
    let deadline = start + DEADLINE;
    while !ssh_answers(tools, port)? {
        guest.check_alive()?;
        if Instant::now() >= deadline {
            bail!("no SSH on port {port} within {}s{}", DEADLINE.as_secs(), guest.console());
        }
        thread::sleep(SSH_POLL);
    }
    Ok(start.elapsed())
}

/// Writes the overlay, the host key and the node file the reference guest boots with.
fn prepare_reference(tools: &Tools, dir: &Path) -> Result<()> {
    let base = tools.image.join("base.raw");
    let overlay = dir.join("disk.qcow2");
    let mut qemu_img = Command::new("qemu-img");
    qemu_img.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&base).arg(&overlay);
    run_quietly(&mut qemu_img)?;

    let mut keygen = Command::new("ssh-keygen");
    keygen.args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.join("hostkey"));
    run_quietly(&mut keygen)?;

    fs::write(dir.join("node.env"), "BEE_HOSTNAME=bench-ref\n")?;
    Ok(())
}

/// True when `ssh bee@127.0.0.1 -p PORT true` succeeds with the image's key.
fn ssh_answers(tools: &Tools, port: u16) -> Result<bool> {
    let status = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(tools.image.join("bee_ed25519"))
        .args(["-p", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "ConnectTimeout=5", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(["bee@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run ssh")?;
    Ok(status.success())
}

/// The reference guest's QEMU and its scratch directory; dropping it kills QEMU, then
/// removes the directory.
struct ReferenceGuest {
    qemu: Child,
    _tracked: Tracked,
    dir: ScratchDir,
}

impl ReferenceGuest {
    /// Starts QEMU on the files [`prepare_reference`] wrote in `dir`.
    fn spawn(tools: &Tools, dir: ScratchDir, accel: Accel, port: u16) -> Result<ReferenceGuest> {
        let qemu = qemu_binary();
        let stderr = File::create(dir.path().join("qemu.stderr"))?;
        let child = Command::new(&qemu)
            .args(reference_args(tools, dir.path(), accel, port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot run {}", qemu.display()))?;
        let tracked = Tracked::new(&child);
        Ok(ReferenceGuest { qemu: child, _tracked: tracked, dir })
    }

    /// Fails, with QEMU's stderr, when QEMU has exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.qemu.try_wait()? {
            None => Ok(()),
            Some(status) => {
                let stderr = tail(&self.dir.path().join("qemu.stderr"));
                bail!("qemu exited ({status}) before SSH answered:\n{stderr}")
            }
        }
    }

    /// The end of the serial console, introduced by a newline, for error messages.
    fn console(&self) -> String {
        format!("; end of the serial console:\n{}", tail(&self.dir.path().join("console.log")))
    }
}

impl Drop for ReferenceGuest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// The plain QEMU command line of the reference guest, as a user would write it.
fn reference_args(tools: &Tools, dir: &Path, accel: Accel, port: u16) -> Vec<String> {
    let image = |name: &str| tools.image.join(name).display().to_string();
    let scratch = |name: &str| dir.join(name).display().to_string();
    let machine = ["-M", "q35", "-cpu", "qemu64", "-smp", "1", "-m", "1024"];
    let quiet = ["-nodefaults", "-no-user-config", "-display", "none"];
    let append = "root=/dev/vda rw console=ttyS0 net.ifnames=0 apparmor=0 quiet";
    let mut args: Vec<String> = ["-name", "bench-ref", "-accel", accel.as_str()]
        .into_iter()
        .chain(machine)
        .chain(quiet)
        .map(str::to_owned)
        .collect();
    args.extend([
        "-serial".to_owned(),
        format!("file:{}", scratch("console.log")),
        "-kernel".to_owned(),
        image("vmlinuz"),
        "-initrd".to_owned(),
        image("initrd.img"),
        "-append".to_owned(),
        append.to_owned(),
        "-drive".to_owned(),
        format!("file={},if=virtio,format=qcow2", scratch("disk.qcow2")),
        "-netdev".to_owned(),
        format!("user,id=ssh0,hostfwd=tcp:127.0.0.1:{port}-:22"),
        "-device".to_owned(),
        "virtio-net-pci,netdev=ssh0".to_owned(),
        "-fw_cfg".to_owned(),
        format!("name=opt/bee/ssh_host_ed25519_key,file={}", scratch("hostkey")),
        "-fw_cfg".to_owned(),
        format!("name=opt/bee/node,file={}", scratch("node.env")),
    ]);
    args
}

/// Times `bee up` of a one-node cluster until it exits, Docker ready; then brings it down.
fn bee_up(tools: &Tools, accel: Accel) -> Result<Duration> {
    let state = BeeState::new(tools)?;
    let config = format!("[cluster]\nname = \"{UP_CLUSTER}\"\nnodes = 1\n");

    let start = Instant::now();
    let cluster = Cluster::up(tools, accel, state, UP_CLUSTER, &config)?;
    let elapsed = start.elapsed();

    cluster.down()?;
    Ok(elapsed)
}

/// Runs `bee run` on the hello example and returns the bee process's peak RSS in KiB.
fn peak_rss_of_run(tools: &Tools, accel: Accel) -> Result<u64> {
    let state = BeeState::new(tools)?;
    let example = state.path().join("hello");
    fs::create_dir(&example).with_context(|| format!("cannot create {}", example.display()))?;
    for (name, text) in HELLO_EXAMPLE {
        let path = example.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let (log, stderr) = state.log("run.stderr")?;
    let child = tools
        .bee(state.path(), accel)
        .arg("run")
        .arg(example.join("bee.toml"))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot run {}", tools.bee.display()))?;

    let mut peak_kib = 0;
    let status = wait_with_deadline(child, DEADLINE, RSS_POLL, |pid| {
        peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
    })?;
    check_bee("bee run examples/hello/bee.toml", status, &log)?;
    if peak_kib == 0 {
        bail!("bee run exited before its memory could be read");
    }
    Ok(peak_kib)
}

/// The peak resident set size so far (`VmHWM`) of process `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    parse_vm_hwm(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The `VmHWM` field of a `/proc/PID/status` text, in KiB.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// The measurements of every run.
#[derive(Debug, Default)]
struct Samples {
    reference: Vec<Duration>,
    bee_up: Vec<Duration>,
    rss_kib: Vec<u64>,
}

/// Everything the deploy benchmark reports.
struct Report {
    accel: Accel,
    runs: u32,
    probe: Probe,
    samples: Samples,
}

impl Report {
    /// Median `bee up` time over median plain-QEMU boot time.
    fn ratio(&self) -> f64 {
        median(&self.samples.bee_up).as_secs_f64() / median(&self.samples.reference).as_secs_f64()
    }

    fn ratio_met(&self) -> bool {
        self.ratio() < RATIO_TARGET
    }

    /// The highest peak RSS over the runs, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        self.samples.rss_kib.iter().copied().max().unwrap_or(0)
    }

    fn rss_met(&self) -> bool {
        mib(self.peak_rss_kib()) < RSS_TARGET_MIB
    }

    /// The human-readable table.
    fn table(&self) -> String {
        let of = if self.runs > 1 { " (median)" } else { "" };
        let mut out = heading("deploy benchmark", self.accel, self.runs, &[]);
        let reference = median(&self.samples.reference);
        out += &row(&format!("plain qemu boot to ssh{of}"), &secs(&reference), "");
        let bee_up = median(&self.samples.bee_up);
        out += &row(&format!("bee up to docker ready{of}"), &secs(&bee_up), "");
        let ratio_note = format!("(target < {RATIO_TARGET}: {})", verdict(self.ratio_met()));
        out += &row("ratio", &format!("{:.2}", self.ratio()), &ratio_note);
        let rss = mib_text(&self.peak_rss_kib());
        let rss_note = format!("(target < {RSS_TARGET_MIB} MiB: {})", verdict(self.rss_met()));
        out += &row("bee peak RSS during run", &rss, &rss_note);
        out += &self.probe_row();
        out += &format!("peak RSS: {RSS_METHOD}\n");
        out
    }

    fn probe_row(&self) -> String {
        match &self.probe {
            Probe::Forced => row("bee kvm probe", "not run", "(BEE_ACCEL chooses)"),
            Probe::NoDevice => row("bee kvm probe", "not run", "(/dev/kvm does not open)"),
            Probe::Ran(elapsed, outcome) => row(
                "bee kvm probe",
                &format!("{:.1} s", elapsed.as_secs_f64()),
                &format!("(not in bee up above; {})", describe(outcome)),
            ),
        }
    }

    /// The results for `report.json`: the two boot times side by side, and bee's memory.
    fn results(&self, quick: bool) -> Results {
        let seconds = |samples: &[Duration]| samples.iter().map(Duration::as_secs_f64).collect();
        let rss_mib: Vec<f64> = self.samples.rss_kib.iter().map(|&kib| mib(kib)).collect();
        let (probe_s, probe_outcome) = match &self.probe {
            Probe::Forced => (None, "not run: BEE_ACCEL set".to_owned()),
            Probe::NoDevice => (None, "not run: /dev/kvm does not open".to_owned()),
            Probe::Ran(elapsed, outcome) => (Some(elapsed.as_secs_f64()), describe(outcome)),
        };
        Results {
            kind: Kind::Deploy,
            accel: self.accel,
            quick,
            runs: self.runs,
            settings: json!({
                "guest_cpus": 1,
                "guest_memory_mib": 1024,
                "kvm_probe_s": probe_s,
                "kvm_probe_outcome": probe_outcome,
            }),
            metrics: vec![
                Metric {
                    id: "deploy_time",
                    title: "time to a usable guest (plain QEMU: SSH; bee up: Docker)".to_owned(),
                    unit: "s",
                    better: Better::Lower,
                    x_label: None,
                },
                Metric {
                    id: "bee_peak_rss",
                    title: "peak memory of the bee process during bee run".to_owned(),
                    unit: "MiB",
                    better: Better::Lower,
                    x_label: None,
                },
            ],
            series: vec![
                Series {
                    metric: "deploy_time",
                    subject: REFERENCE.to_owned(),
                    x: None,
                    samples: seconds(&self.samples.reference),
                },
                Series {
                    metric: "deploy_time",
                    subject: BEE_UP.to_owned(),
                    x: None,
                    samples: seconds(&self.samples.bee_up),
                },
                Series {
                    metric: "bee_peak_rss",
                    subject: "bee".to_owned(),
                    x: None,
                    samples: rss_mib,
                },
            ],
            comparisons: vec![
                Comparison {
                    metric: "deploy_time",
                    subject: BEE_UP.to_owned(),
                    x: None,
                    reference: Some(REFERENCE.to_owned()),
                    target: Some(Target {
                        on: TargetOn::Ratio,
                        at_least: false,
                        value: RATIO_TARGET,
                    }),
                },
                Comparison {
                    metric: "bee_peak_rss",
                    subject: "bee".to_owned(),
                    x: None,
                    reference: None,
                    target: Some(Target {
                        on: TargetOn::Median,
                        at_least: false,
                        value: RSS_TARGET_MIB,
                    }),
                },
            ],
            notes: vec![
                format!("peak RSS: {RSS_METHOD}"),
                "the KVM probe is not part of the bee up time; see settings".to_owned(),
            ],
            table: self.table(),
            recommendations: Vec::new(),
        }
    }
}

/// A probe outcome in a few words.
fn describe(outcome: &ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Booted => "kvm works".to_owned(),
        ProbeOutcome::Hung(after) => {
            format!("hung for {}s, bee falls back to tcg", after.as_secs())
        }
        ProbeOutcome::Failed(why) => format!("failed, bee falls back to tcg: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn report(probe: Probe) -> Report {
        let secs = |list: &[u64]| list.iter().map(|&s| Duration::from_secs(s)).collect();
        Report {
            accel: Accel::Tcg,
            runs: 3,
            probe,
            samples: Samples {
                reference: secs(&[40, 30, 50]),
                bee_up: secs(&[44, 60, 52]),
                rss_kib: vec![12_000, 12_800, 12_288],
            },
        }
    }

    #[test]
    fn table_shows_medians_ratio_and_targets() {
        let table = report(Probe::Forced).table();
        let expected = "\
deploy benchmark (accelerator: tcg, runs: 3)
plain qemu boot to ssh (median)     40.0 s
bee up to docker ready (median)     52.0 s
ratio                                 1.30  (target < 1.3: missed)
bee peak RSS during run           12.5 MiB  (target < 30 MiB: met)
bee kvm probe                      not run  (BEE_ACCEL chooses)
peak RSS: max of VmHWM in /proc/PID/status, polled every 100 ms
";
        assert_eq!(table, expected);
    }

    #[test]
    fn results_hold_every_sample_and_both_targets() {
        let probe = Probe::Ran(Duration::from_millis(4100), ProbeOutcome::Hung(kvm::PROBE_TIMEOUT));
        let results = report(probe).results(false);
        assert_eq!(results.series[1].samples, [44.0, 60.0, 52.0]);
        let met: Vec<Option<bool>> = results.comparisons.iter().map(|c| results.met(c)).collect();
        assert_eq!(met, [Some(false), Some(true)]);
        assert_eq!(results.ratio(&results.comparisons[0]), 1.3);
        assert_eq!(results.settings["kvm_probe_outcome"], "hung for 4s, bee falls back to tcg");
    }

    #[test]
    fn vm_hwm_is_read_from_status() {
        let status = "Name:\tbee\nVmPeak:\t  99999 kB\nVmHWM:\t   12800 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12_800));
        assert_eq!(parse_vm_hwm("Name:\tzombie\n"), None);
        assert!(vm_hwm_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn reference_command_line_matches_the_documented_one() {
        let tools = Tools { bee: PathBuf::from("bee"), image: PathBuf::from("/img") };
        let args = reference_args(&tools, Path::new("/w"), Accel::Tcg, 2222).join(" ");
        let expected = "-name bench-ref -accel tcg -M q35 -cpu qemu64 -smp 1 -m 1024 \
            -nodefaults -no-user-config -display none -serial file:/w/console.log \
            -kernel /img/vmlinuz -initrd /img/initrd.img \
            -append root=/dev/vda rw console=ttyS0 net.ifnames=0 apparmor=0 quiet \
            -drive file=/w/disk.qcow2,if=virtio,format=qcow2 \
            -netdev user,id=ssh0,hostfwd=tcp:127.0.0.1:2222-:22 \
            -device virtio-net-pci,netdev=ssh0 \
            -fw_cfg name=opt/bee/ssh_host_ed25519_key,file=/w/hostkey \
            -fw_cfg name=opt/bee/node,file=/w/node.env";
        assert_eq!(args, expected);
    }
}
