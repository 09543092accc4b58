//! A real single-node Slurm for tests: munged, slurmctld and slurmd from Debian's
//! `slurm-wlm` and `munge`, with their own key, configuration, ports and directories in
//! a temporary directory, started in the foreground as children of the test and killed
//! when it ends. The node is this machine under the name `bee-node`, at 127.0.0.1.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// The node's name in Slurm.
pub const NODE: &str = "bee-node";
/// How long the daemons get to come up and report the node idle.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Slurm; stopped when dropped.
pub struct Slurm {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd and waits until the node is idle. Panics,
    /// saying what to install, when a program is missing.
    pub fn start() -> Slurm {
        for program in ["munged", "slurmctld", "slurmd", "salloc", "srun", "scontrol", "sinfo"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {program}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{program} is missing: install Debian's slurm-wlm and munge \
                 (scripts/setup.sh --tests does)"
            );
        }
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

        let mut slurm = Slurm { dir, daemons: Vec::new() };
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
                "ClusterName=bee-test\nSlurmctldHost={host}(127.0.0.1)\n\
                 SlurmctldPort={ctl_port}\nSlurmdPort={node_port}\nSlurmUser=root\n\
                 AuthType=auth/munge\nAuthInfo=socket={socket}\nCredType=cred/munge\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nMpiDefault=none\n\
                 ReturnToService=2\nStateSaveLocation={root}/state\n\
                 SlurmdSpoolDir={root}/spool\nSlurmctldPidFile={root}/slurmctld.pid\n\
                 SlurmdPidFile={root}/slurmd.pid\nSlurmctldLogFile={root}/log/slurmctld.log\n\
                 SlurmdLogFile={root}/log/slurmd.log\nJobCompType=jobcomp/none\n\
                 NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=2 \
                 RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP \
                 OverSubscribe=YES\n",
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
        let mut last = String::new();
        let idle = || {
            let output = slurm.command("sinfo").args(["-h", "-n", NODE, "-o", "%T"]).output();
            last = output
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            last == "idle"
        };
        if !poll(START_TIMEOUT, idle) {
            panic!(
                "Slurm did not report node {NODE} idle within {}s (last state {last:?}); logs \
                 in {}",
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

    /// The job steps that are running, as `squeue --steps` shows them (header omitted).
    pub fn steps(&self) -> String {
        let output = self.command("squeue").args(["--steps", "-h"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
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
    fn an_allocation_runs_steps_on_the_node() {
        let slurm = Slurm::start();
        let output = slurm
            .command("salloc")
            .args(["--quiet", "--nodes=1", "srun", "--overlap", "sh", "-c"])
            .arg("echo $SLURMD_NODENAME $SLURM_JOB_NODELIST")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(text.trim(), format!("{NODE} {NODE}"));
        assert_eq!(slurm.steps().trim(), "");
    }
}
