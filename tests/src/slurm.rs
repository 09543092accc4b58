//! A real two-node Slurm for tests: munged, slurmctld and two slurmd from Debian's
//! `slurm-wlm` and `munge`, with their own key, configuration, ports and directories in
//! a temporary directory, started in the foreground as children of the test and killed
//! when it ends. Node [`NODE`] is this machine at the address of a bridge the test makes;
//! node [`REMOTE_NODE`] is a network namespace on that bridge with an address of its own
//! (so what bee starts there listens there, as on another machine), sharing this
//! machine's file systems as cluster nodes share home directories. Needs root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{ip, wait_until};

/// The name in Slurm of the node that is this machine.
pub const NODE: &str = "bee-node";
/// The name in Slurm of the node in a network namespace.
pub const REMOTE_NODE: &str = "bee-node2";
/// How long the daemons get to come up and report the node idle.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long ended job steps may stay listed.
const STEPS_END_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Slurm; stopped when dropped.
pub struct Slurm {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
    namespace: Option<String>,
    bridge: Option<String>,
}

impl Slurm {
    /// Starts munged, slurmctld and both slurmd and waits until the nodes are idle.
    /// Panics, saying what to install, when a program is missing.
    pub fn start() -> Slurm {
        let programs = ["munged", "slurmctld", "slurmd", "salloc", "srun", "scontrol", "sinfo"];
        for program in programs.into_iter().chain(["ip", "nsenter"]) {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {program}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{program} is missing: install Debian's slurm-wlm, munge and iproute2 \
                 (scripts/setup.sh --tests does)"
            );
        }
        assert!(
            nix::unistd::geteuid().is_root(),
            "the Slurm tests put a node in a network namespace and need root"
        );
        // Short: munge's and Slurm's sockets live here.
        let dir = tempfile::Builder::new().prefix("bee-slurm-").tempdir_in("/tmp").unwrap();
        let root = &dir.path().to_path_buf();
        for sub in ["munge", "munge/run", "spool", "state", "log"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // munged wants every directory above its socket searchable by all.
        for searchable in [root.as_path(), &root.join("munge"), &root.join("munge/run")] {
            set_mode(searchable, 0o755);
        }
        let key = random_bytes(128);
        let key_file = root.join("munge/munge.key");
        std::fs::write(&key_file, key).unwrap();
        set_mode(&key_file, 0o600);
        let socket = root.join("munge/run/munge.socket");

        let mut slurm = Slurm { dir, daemons: Vec::new(), namespace: None, bridge: None };
        // A subnet of this fixture's own, so that fixtures in parallel do not meet.
        let subnet = crate::subnet();
        let (here, there) = (format!("10.78.{subnet}.1"), format!("10.78.{subnet}.2"));
        let bridge = format!("s{subnet}br");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        slurm.bridge = Some(bridge.clone());
        ip(&["addr", "add", &format!("{here}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let namespace = format!("s{subnet}n");
        let (outer, inner) = (format!("s{subnet}v"), format!("s{subnet}i"));
        crate::add_namespace(&namespace, &bridge, (&outer, &inner), &there);
        slurm.namespace = Some(namespace.clone());
        // The way back to srun and bee, which listen on this machine's other addresses too.
        ip(&["-n", &namespace, "route", "add", "default", "via", &here]);
        for node in [NODE, REMOTE_NODE] {
            std::fs::create_dir_all(root.join("spool").join(node)).unwrap();
        }
        let mut munged = Command::new("munged");
        munged
            .arg("--foreground")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key_file.display()))
            .arg(format!("--log-file={}", root.join("log/munged.log").display()))
            .arg(format!("--pid-file={}", root.join("munge/munged.pid").display()))
            .arg(format!("--seed-file={}", root.join("munge/seed").display()));
        slurm.spawn(munged, "munged");
        wait_until("munged to create its socket", START_TIMEOUT, || socket.exists());

        let host = hostname();
        let (ctl_port, node_port) = (free_port(), free_port());
        let conf = slurm.conf();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=bee-test\nSlurmctldHost={host}({here})\n\
                 SlurmctldPort={ctl_port}\nSlurmdPort={node_port}\nSlurmUser=root\n\
                 AuthType=auth/munge\nAuthInfo=socket={socket}\nCredType=cred/munge\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nMpiDefault=none\n\
                 ReturnToService=2\nStateSaveLocation={root}/state\n\
                 SlurmdSpoolDir={root}/spool/%n\nSlurmctldPidFile={root}/slurmctld.pid\n\
                 SlurmdPidFile={root}/slurmd-%n.pid\n\
                 SlurmctldLogFile={root}/log/slurmctld.log\n\
                 SlurmdLogFile={root}/log/slurmd-%n.log\nJobCompType=jobcomp/none\n\
                 NodeName={NODE} NodeAddr={here} NodeHostname={host} CPUs=2 \
                 RealMemory=1000 State=UNKNOWN\n\
                 NodeName={REMOTE_NODE} NodeAddr={there} NodeHostname={host} CPUs=2 \
                 RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=test Nodes={NODE},{REMOTE_NODE} Default=YES MaxTime=INFINITE \
                 State=UP OverSubscribe=YES\n",
                socket = socket.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let mut slurmctld = slurm.command("slurmctld");
        slurmctld.args(["-D", "-c", "-i"]);
        slurm.spawn(slurmctld, "slurmctld");
        let mut slurmd = slurm.command("slurmd");
        slurmd.args(["-D", "-N", NODE]);
        slurm.spawn(slurmd, "slurmd");
        // nsenter, not `ip netns exec`, which mounts a sysfs of its own without the cgroup
        // file system slurmd looks for.
        let mut remote = slurm.command("nsenter");
        remote.arg(format!("--net=/var/run/netns/{namespace}")).args([
            "slurmd",
            "-D",
            "-N",
            REMOTE_NODE,
        ]);
        slurm.spawn(remote, "slurmd-remote");
        let mut last = String::new();
        let nodes = format!("{NODE},{REMOTE_NODE}");
        let idle = || {
            let output =
                slurm.command("sinfo").args(["-h", "-N", "-n", &nodes, "-o", "%T"]).output();
            last = output
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            last.lines().count() == 2 && last.lines().all(|state| state == "idle")
        };
        if !poll(START_TIMEOUT, idle) {
            panic!(
                "Slurm did not report nodes {nodes} idle within {}s (last states {last:?}); \
                 logs in {}",
                START_TIMEOUT.as_secs(),
                slurm.dir.path().join("log").display()
            );
        }
        slurm
    }

    /// Starts a daemon in the foreground, its output in `log/NAME.out`, to be stopped on
    /// drop.
    fn spawn(&mut self, mut command: Command, name: &str) {
        let log =
            std::fs::File::create(self.dir.path().join("log").join(format!("{name}.out"))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push(child);
    }

    /// The configuration file, which every Slurm command is pointed at.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// A Slurm command (`salloc`, `srun`, `squeue`, ...) that talks to this Slurm.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.conf());
        command
    }

    /// `salloc` with `allocation` (such as `--nodes=2`) running bee with `args` in the
    /// allocation, as a user would on a login node, bee's state in `state_dir`, its
    /// output piped.
    pub fn salloc_bee(&self, allocation: &[&str], state_dir: &Path, args: &[&str]) -> Command {
        let mut salloc = self.command("salloc");
        salloc
            .arg("--quiet")
            .args(allocation)
            .arg(crate::bee_binary())
            .args(args)
            .env("BEE_STATE_DIR", state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        salloc
    }

    /// The job steps left, as `squeue --steps` shows them (header omitted), once Slurm
    /// has had up to [`STEPS_END_TIMEOUT`] to see them end: slurmctld hears from the
    /// nodes that a step's tasks exited a moment after its `srun` returns, so a step that
    /// has just ended may still be listed. Empty when none is left.
    pub fn steps_left(&self) -> String {
        let mut listing = String::new();
        poll(STEPS_END_TIMEOUT, || {
            let output = self.command("squeue").args(["--steps", "-h"]).output().unwrap();
            listing = String::from_utf8_lossy(&output.stdout).trim().to_string();
            listing.is_empty()
        });
        listing
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Slurm's daemons first, munged last: they authenticate their shutdown with it.
        for child in self.daemons.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if !poll(Duration::from_secs(10), || child.try_wait().is_ok_and(|s| s.is_some())) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(namespace) = &self.namespace {
            crate::remove_namespace(namespace);
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", bridge]).status();
        }
    }
}

/// Polls `condition` every 200 ms until it holds or `timeout` passes.
fn poll(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    condition()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn random_bytes(count: usize) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = vec![0u8; count];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    bytes
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    name.trim().split('.').next().unwrap_or_default().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_runs_steps_on_both_nodes_each_in_its_own_network() {
        let slurm = Slurm::start();
        let output = slurm
            .command("salloc")
            .args(["--quiet", "--nodes=2", "srun", "--overlap", "--ntasks-per-node=1"])
            .args(["--label", "sh", "-c"])
            .arg("echo $SLURMD_NODENAME $(ip -4 -o addr show scope global | wc -l)")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        // This machine has its own addresses besides the bridge's; the namespace only one.
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with(&format!("0: {NODE} ")), "{text}");
        assert_eq!(lines[1], format!("1: {REMOTE_NODE} 1"), "{text}");
        assert_eq!(slurm.steps_left(), "");
    }
}
