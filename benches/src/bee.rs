//! Driving the `bee` binary the way a user does: `bee up` of a `bee.toml` written into a
//! state directory of its own, `bee ssh` into its nodes, `bee down` at the end.
//!
//! Every cluster lives in a temporary `BEE_STATE_DIR` whose drop runs `bee down` on what
//! is left in it, so that a benchmark that fails half-way leaves no QEMU behind; Ctrl-C
//! does the same for every directory that exists at that moment
//! ([`clean_up_on_interrupt`]). The
//! guests run under one accelerator chosen once per benchmark ([`choose_accel`]) and
//! forced on every `bee` command through `BEE_ACCEL`.

use std::cell::Cell;
use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bee_core::config::DEFAULT_SUBNET;
use bee_vm::kvm;
use bee_vm::qemu::Accel;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::signal::unix::{signal, SignalKind};

use crate::text::{secs, step};

/// How long a guest may take to answer SSH, or `bee up` to finish, before the benchmark
/// gives up. TCG on a busy host boots four guests in about three minutes; this is far
/// beyond.
pub(crate) const DEADLINE: Duration = Duration::from_secs(900);

/// How long one command in a guest (a transfer, a file written over NFS) may run.
pub(crate) const COMMAND_DEADLINE: Duration = Duration::from_secs(600);

/// Interval between checks of a child that runs to a deadline.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// The directory of cluster directories inside a state directory (see `bee_core::paths`).
const CLUSTERS: &str = "clusters";

/// The name of every state directory starts with this.
const STATE_PREFIX: &str = "bee-bench-";

/// Where bee keeps the outcome of its KVM probe, which `bee up` reuses too.
const KVM_PROBE_CACHE: &str = "kvm-probe.json";

/// The `bee` binary and the guest image directory it uses.
pub(crate) struct Tools {
    /// The `bee` binary.
    pub(crate) bee: PathBuf,
    /// The guest image directory, as `bee image show` prints it.
    pub(crate) image: PathBuf,
}

impl Tools {
    /// Finds `bee` (`explicit`, else next to this executable) and asks it for the image.
    pub(crate) fn locate(explicit: Option<PathBuf>) -> Result<Tools> {
        let bee = match explicit {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("bee"),
        };
        if !bee.is_file() {
            bail!("{} not found: build it with `cargo build --bin bee`", bee.display());
        }
        let image = image_dir(&bee)?;
        Ok(Tools { bee, image })
    }

    /// A `bee` command with its own state directory and the accelerator forced.
    pub(crate) fn bee(&self, state: &Path, accel: Accel) -> Command {
        let mut command = Command::new(&self.bee);
        command.env("BEE_STATE_DIR", state).env(kvm::ACCEL_ENV, accel.as_str());
        command.stdin(Stdio::null());
        command
    }
}

/// The guest image directory: the first line `bee image show` prints.
fn image_dir(bee: &Path) -> Result<PathBuf> {
    let output = Command::new(bee)
        .args(["image", "show"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bee.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().next() {
        Some(dir) if output.status.success() => Ok(PathBuf::from(dir)),
        _ => bail!(
            "no guest image: build it with `bee image build` (`bee image show` said: {})",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// The accelerator bee itself would choose here: `BEE_ACCEL` if set, else KVM when its
/// probe boots, else TCG. The probe's outcome is cached where `bee up` finds it.
pub(crate) fn choose_accel() -> Result<Accel> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cache = bee_core::paths::cache_dir().join(KVM_PROBE_CACHE);
    let decision = runtime.block_on(kvm::choose(Some(&cache)))?;
    if let Some(warning) = decision.warning {
        crate::text::progress(&format!("warning: {warning}"));
    }
    Ok(decision.accel)
}

/// Fails with the Debian package to install when `program` is not on `PATH`.
pub(crate) fn require_host_tool(program: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if !found {
        bail!(
            "{program} is not installed on this host, and the reference needs it: \
             install it with `apt-get install {package}` (or `scripts/setup.sh --tests`)"
        );
    }
    Ok(())
}

/// The data-plane address of node `index` in the default subnet: subnet + index + 1.
pub(crate) fn node_addr(index: u32) -> Ipv4Addr {
    let network = DEFAULT_SUBNET.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok());
    let network = network.expect("bee's default subnet is an IPv4 network");
    Ipv4Addr::from(u32::from(network) + index + 1)
}

/// The scratch directories that exist now: each one's path, and for a state directory the
/// `bee` that brings its clusters down. An interrupt cleans up what is listed here.
static LIVE: Mutex<Vec<(PathBuf, Option<PathBuf>)>> = Mutex::new(Vec::new());

/// [`LIVE`], also after a thread panicked while holding it.
fn live() -> MutexGuard<'static, Vec<(PathBuf, Option<PathBuf>)>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pids of the children that run now and could outlive the benchmark.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// [`CHILDREN`], also after a thread panicked while holding it.
fn children() -> MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A child process an interrupt kills, listed from creation until drop. Drop it only
/// once the child was waited for, or is about to be.
pub(crate) struct Tracked(u32);

impl Tracked {
    /// Lists `child`.
    pub(crate) fn new(child: &Child) -> Tracked {
        children().push(child.id());
        Tracked(child.id())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        children().retain(|&pid| pid != self.0);
    }
}

/// Makes SIGINT (Ctrl-C) bring down every cluster started so far and remove every scratch
/// directory, then exit with 130, instead of killing the benchmark on the spot.
///
/// The children running at that moment (`bee up`, `ssh`, the deploy reference's QEMU, a
/// host iperf3 server) are killed first. The guests of clusters that are up are not
/// children, since QEMU daemonizes: `bee down` stops them.
pub(crate) fn clean_up_on_interrupt() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Created here, so that SIGINT is caught from now on and not only once the thread runs.
    let mut interrupt = runtime.block_on(async { signal(SignalKind::interrupt()) })?;
    thread::spawn(move || {
        runtime.block_on(interrupt.recv());
        // On a line of its own: a step may have printed half of one.
        eprintln!("\nbee bench: interrupted: stopping the clusters and removing temp dirs");
        for pid in children().drain(..) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // Held until the exit, so that no other thread starts a cluster or cleans up.
        let mut live = live();
        for (dir, bee) in live.drain(..) {
            clean(&dir, bee.as_deref());
        }
        std::process::exit(130);
    });
    Ok(())
}

/// Lists `dir` (the output directory of a run) for removal on Ctrl-C.
pub(crate) fn remove_on_interrupt(dir: &Path) {
    live().push((dir.to_path_buf(), None));
}

/// Takes `dir` off the list [`remove_on_interrupt`] added it to.
pub(crate) fn forget_on_interrupt(dir: &Path) {
    live().retain(|(listed, _)| listed != dir);
}

/// Brings down every cluster in state directory `dir` (when `bee` is given), then removes
/// `dir`.
fn clean(dir: &Path, bee: Option<&Path>) {
    if let Some(bee) = bee {
        for entry in fs::read_dir(dir.join(CLUSTERS)).into_iter().flatten().flatten() {
            let _ = Command::new(bee)
                .arg("down")
                .arg(entry.file_name())
                .env("BEE_STATE_DIR", dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = fs::remove_dir_all(dir);
}

/// A temporary directory, removed when dropped or when the benchmark is interrupted.
pub(crate) struct ScratchDir {
    dir: TempDir,
    /// For a state directory: the `bee` that brings its clusters down first.
    bee: Option<PathBuf>,
}

impl ScratchDir {
    /// A fresh directory under `$TMPDIR` whose name starts with `prefix`.
    pub(crate) fn new(prefix: &str) -> Result<ScratchDir> {
        ScratchDir::create(prefix, None)
    }

    fn create(prefix: &str, bee: Option<PathBuf>) -> Result<ScratchDir> {
        let mut live = live();
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        live.push((dir.path().to_path_buf(), bee.clone()));
        Ok(ScratchDir { dir, bee })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let mut live = live();
        clean(self.dir.path(), self.bee.as_deref());
        live.retain(|(dir, _)| dir != self.dir.path());
    }
}

/// A bee state directory; dropping it runs `bee down` on every cluster left in it, then
/// removes it.
///
/// # Limitations
///
/// bee puts the SSH control sockets of a cluster's nodes under
/// `STATE/clusters/NAME/ssh/`, and `ssh` adds 17 characters to their names while it
/// creates them: the whole path must stay under the 108 bytes of a Unix socket address.
/// The state directory is `$TMPDIR/bee-bench-` plus six random characters, and the
/// benchmarks' cluster names are short (13 characters at most), which leaves room for a
/// `$TMPDIR` of up to 17 characters (`/tmp` has 4); with a longer one `bee up` cannot
/// connect to its nodes and waits until [`DEADLINE`].
pub(crate) struct BeeState {
    dir: ScratchDir,
}

impl BeeState {
    /// A fresh state directory for `tools`' bee.
    pub(crate) fn new(tools: &Tools) -> Result<BeeState> {
        Ok(BeeState { dir: ScratchDir::create(STATE_PREFIX, Some(tools.bee.clone()))? })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new file in the state directory, for a command's output.
    pub(crate) fn log(&self, name: &str) -> Result<(PathBuf, File)> {
        let path = self.path().join(name);
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok((path, file))
    }
}

/// A cluster started by `bee up` in a state directory of its own. [`Cluster::down`]
/// stops it and reports failures; dropping it without that stops it quietly.
pub(crate) struct Cluster<'t> {
    tools: &'t Tools,
    accel: Accel,
    name: String,
    /// Numbers the log files of `bee ssh` commands.
    commands: Cell<u32>,
    // Last: dropped after the fields above, and runs `bee down`.
    state: BeeState,
}

impl<'t> Cluster<'t> {
    /// Writes `config` as `bee.toml` into `state` and runs `bee up` on it.
    ///
    /// `name` must be the cluster name `config` gives. Files the configuration refers to
    /// (a storage input) are the caller's to create in `state` first.
    pub(crate) fn up(
        tools: &'t Tools,
        accel: Accel,
        state: BeeState,
        name: &str,
        config: &str,
    ) -> Result<Cluster<'t>> {
        let file = state.path().join("bee.toml");
        fs::write(&file, config).with_context(|| format!("cannot write {}", file.display()))?;
        let (log, stderr) = state.log("up.stderr")?;
        let child = tools
            .bee(state.path(), accel)
            .arg("up")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bee.display()))?;
        let cluster =
            Cluster { tools, accel, name: name.to_owned(), commands: Cell::new(0), state };
        let status = wait_with_deadline(child, DEADLINE, POLL, |_| ())?;
        check_bee(&format!("bee up {name}"), status, &log)?;
        Ok(cluster)
    }

    /// [`Cluster::up`] as a step of the progress, which shows how long `bee up` took.
    pub(crate) fn up_step(
        tools: &'t Tools,
        accel: Accel,
        state: BeeState,
        name: &str,
        config: &str,
    ) -> Result<Cluster<'t>> {
        let up = || {
            let start = Instant::now();
            Ok((Cluster::up(tools, accel, state, name, config)?, start.elapsed()))
        };
        let (cluster, _) = step(&format!("bee up {name}"), up, |(_, took)| secs(took))?;
        Ok(cluster)
    }

    /// The cluster's directory on the host, which holds its storage's backing files.
    pub(crate) fn dir(&self) -> PathBuf {
        self.state.path().join(CLUSTERS).join(&self.name)
    }

    /// The `bee ssh` command that runs `command` (a shell command line) on `node`.
    fn ssh_command(&self, node: u32, command: &str) -> Command {
        let mut ssh = self.tools.bee(self.state.path(), self.accel);
        ssh.args(["ssh", &self.name, &node.to_string(), "--", command]);
        ssh
    }

    /// Log files for the next command: its stdout and its stderr.
    fn command_logs(&self) -> Result<((PathBuf, File), (PathBuf, File))> {
        let number = self.commands.get() + 1;
        self.commands.set(number);
        Ok((
            self.state.log(&format!("ssh-{number}.out"))?,
            self.state.log(&format!("ssh-{number}.err"))?,
        ))
    }

    /// Runs `command` on `node` and returns its stdout; fails when it exits non-zero or
    /// runs past [`COMMAND_DEADLINE`], with the end of what it printed.
    pub(crate) fn ssh(&self, node: u32, command: &str) -> Result<String> {
        let ((out_path, out), (err_path, err)) = self.command_logs()?;
        let child = self
            .ssh_command(node, command)
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot run {}", self.tools.bee.display()))?;
        let status = wait_with_deadline(child, COMMAND_DEADLINE, POLL, |_| ())
            .with_context(|| format!("node {node}: `{command}`"))?;
        if !status.success() {
            bail!(
                "node {node}: `{command}` failed ({status}); {}",
                printed(&[("stdout", &out_path), ("stderr", &err_path)])
            );
        }
        fs::read_to_string(&out_path).with_context(|| format!("cannot read {}", out_path.display()))
    }

    /// Starts `command` on `node` with its stdin and stdout connected to the benchmark.
    pub(crate) fn spawn(&self, node: u32, command: &str) -> Result<Remote> {
        let (_, (err_path, err)) = self.command_logs()?;
        let mut child = self
            .ssh_command(node, command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot run {}", self.tools.bee.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let tracked = Tracked::new(&child);
        Ok(Remote { child: Some(child), _tracked: tracked, stdin, stdout, stderr: err_path })
    }

    /// [`Cluster::down`] as a step of the progress.
    pub(crate) fn down_step(self) -> Result<()> {
        step(&format!("bee down {}", self.name), || self.down(), |_| "done".to_owned())
    }

    /// Runs `bee down`, failing with bee's stderr when it fails.
    pub(crate) fn down(self) -> Result<()> {
        let down =
            self.tools.bee(self.state.path(), self.accel).args(["down", &self.name]).output()?;
        if !down.status.success() {
            bail!(
                "bee down {} failed: {}",
                self.name,
                String::from_utf8_lossy(&down.stderr).trim()
            );
        }
        Ok(())
    }
}

/// A command running in a guest through `bee ssh`; dropping it before [`Remote::finish`]
/// kills the local `ssh`, which hangs up on the command.
pub(crate) struct Remote {
    /// `None` once waited for.
    child: Option<Child>,
    /// Dropped after `child` was killed or waited for.
    _tracked: Tracked,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: PathBuf,
}

impl Remote {
    /// The command's stdin, until it is taken.
    pub(crate) fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The command's stdout, until it is taken.
    pub(crate) fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Stops the command and returns what it printed on stderr, for an error message.
    pub(crate) fn abandon(mut self) -> String {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
        printed(&[("stderr", &self.stderr)])
    }

    /// Closes the command's stdin and waits for it to exit, failing when it did not
    /// succeed.
    pub(crate) fn finish(mut self, what: &str) -> Result<()> {
        self.stdin = None;
        let Some(child) = self.child.take() else { return Ok(()) };
        let status = wait_with_deadline(child, COMMAND_DEADLINE, POLL, |_| ())?;
        if !status.success() {
            bail!("{what} failed ({status}); {}", printed(&[("stderr", &self.stderr)]));
        }
        Ok(())
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The ends of the named log files that are not empty, for an error message.
fn printed(logs: &[(&str, &Path)]) -> String {
    let parts: Vec<String> = logs
        .iter()
        .filter(|(_, path)| fs::metadata(path).is_ok_and(|m| m.len() > 0))
        .map(|(name, path)| format!("its {name} ends with:\n{}", tail(path)))
        .collect();
    if parts.is_empty() {
        "it printed nothing".to_owned()
    } else {
        parts.join("\n")
    }
}

/// Fails with the end of bee's stderr when it did not succeed.
pub(crate) fn check_bee(what: &str, status: ExitStatus, log: &Path) -> Result<()> {
    if !status.success() {
        bail!("{what} failed ({status}); its stderr ends with:\n{}", tail(log));
    }
    Ok(())
}

/// Waits for `child`, calling `poll` with its pid every `interval` while it runs, and
/// kills it when it is still running after `limit`.
pub(crate) fn wait_with_deadline(
    mut child: Child,
    limit: Duration,
    interval: Duration,
    mut poll: impl FnMut(u32),
) -> Result<ExitStatus> {
    let _tracked = Tracked::new(&child);
    let deadline = Instant::now() + limit;
    loop {
        poll(child.id());
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {}s; killed", limit.as_secs());
        }
        thread::sleep(interval);
    }
}

/// Runs a short helper command, failing with its stderr when it fails.
pub(crate) fn run_quietly(command: &mut Command) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output =
        command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The last lines of a log file, or a note that it cannot be read.
pub(crate) fn tail(path: &Path) -> String {
    const LINES: usize = 15;
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => format!("({} is empty)", path.display()),
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LINES)..].join("\n")
        }
        Err(err) => format!("({}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_follow_the_default_subnet() {
        assert_eq!(node_addr(0), Ipv4Addr::new(192, 168, 100, 1));
        assert_eq!(node_addr(2), Ipv4Addr::new(192, 168, 100, 3));
    }

    #[test]
    fn a_missing_host_tool_names_its_package() {
        let err = require_host_tool("bee-bench-no-such-tool", "no-such-package").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bee-bench-no-such-tool is not installed on this host, and the reference needs \
             it: install it with `apt-get install no-such-package` (or `scripts/setup.sh \
             --tests`)"
        );
        assert!(require_host_tool("sh", "dash").is_ok());
    }

    #[test]
    fn scratch_dirs_are_listed_while_they_exist() {
        let scratch = ScratchDir::new("bee-bench-test-").unwrap();
        let path = scratch.path().to_path_buf();
        assert!(path.is_dir());
        assert!(live().iter().any(|(dir, bee)| *dir == path && bee.is_none()));
        drop(scratch);
        assert!(!path.exists());
        assert!(!live().iter().any(|(dir, _)| *dir == path));
    }

    #[test]
    fn printed_names_only_logs_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        fs::write(&out, "").unwrap();
        fs::write(&err, "one\ntwo\n").unwrap();
        assert_eq!(
            printed(&[("stdout", &out), ("stderr", &err)]),
            "its stderr ends with:\none\ntwo"
        );
        assert_eq!(printed(&[("stdout", &out)]), "it printed nothing");
    }
}
