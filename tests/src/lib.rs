//! Support for bee's real-resource tests: run the real `bee` binary in an isolated state
//! directory, wait with deadlines instead of sleeps, and make sure that nothing a test
//! started outlives it.
//!
//! The guest image is shared with the user's cache (`BEE_CACHE_DIR`, else `~/.cache/bee`)
//! so that tests reuse it; `scripts/test.sh` builds it when it is missing.

pub mod hosts;
pub mod slurm;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one `bee` command may take in a test before it counts as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// The `bee` binary built from this workspace.
pub fn bee_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BEE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let target = exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps");
    let bee = target.join("bee");
    assert!(
        bee.is_file(),
        "{} is missing: build it with `cargo build --bin bee` (scripts/test.sh does) or set \
         BEE_BIN",
        bee.display()
    );
    bee
}

/// The `bee` Python module built from this workspace (`libbee.so` of bee-py), or
/// `BEE_PY_MODULE`.
pub fn bee_python_module() -> PathBuf {
    if let Some(path) = std::env::var_os("BEE_PY_MODULE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let target = exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps");
    let module = target.join("libbee.so");
    assert!(
        module.is_file(),
        "{} is missing: build it with `cargo build -p bee-py` (scripts/test.sh does) or set \
         BEE_PY_MODULE",
        module.display()
    );
    module
}

/// A directory that holds the `bee` Python module as `bee.so`, for `PYTHONPATH`.
pub struct PythonPath {
    dir: tempfile::TempDir,
}

impl PythonPath {
    /// Links the module built from this workspace in as `bee.so`.
    pub fn new() -> PythonPath {
        let dir = tempfile::Builder::new().prefix("bee-py-").tempdir().expect("temp dir");
        std::os::unix::fs::symlink(bee_python_module(), dir.path().join("bee.so"))
            .expect("link bee.so");
        PythonPath { dir }
    }
}

impl Default for PythonPath {
    fn default() -> Self {
        Self::new()
    }
}

/// An isolated bee state directory; tears down every cluster left in it when dropped.
pub struct BeeEnv {
    state: tempfile::TempDir,
}

impl Default for BeeEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl BeeEnv {
    /// A fresh state directory.
    pub fn new() -> BeeEnv {
        let state = tempfile::Builder::new().prefix("bee-test-").tempdir().expect("temp dir");
        BeeEnv { state }
    }

    /// The state directory (`BEE_STATE_DIR` of every command).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A `bee` command in this environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bee_binary());
        command.args(args).env("BEE_STATE_DIR", self.state.path()).stdin(Stdio::null());
        command
    }

    /// `python3 -c SCRIPT ARGS...` in this environment, with the `bee` module of `path`
    /// importable. Fails the test, saying what to install, when python3 is missing.
    pub fn python(&self, path: &PythonPath, script: &str, args: &[&str]) -> Command {
        let found = Command::new("python3").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "python3 is missing: install Python 3.8 or later (Debian: apt install python3)"
        );
        let mut command = Command::new("python3");
        command
            .arg("-c")
            .arg(script)
            .args(args)
            .env("PYTHONPATH", path.dir.path())
            .env("BEE_STATE_DIR", self.state.path())
            .stdin(Stdio::null());
        command
    }

    /// Runs `bee` with `args` and returns its output, failing the test if it hangs.
    pub fn bee(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bee starts");
        wait_with_timeout(child, COMMAND_TIMEOUT, &format!("bee {}", args.join(" ")))
    }

    /// Starts `bee ARGS` with its stdout and stderr piped, without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut bee = self.command(args);
        bee.stdout(Stdio::piped()).stderr(Stdio::piped());
        bee.spawn().expect("bee starts")
    }

    /// Every QEMU process whose command line mentions this state directory.
    pub fn qemu_processes(&self) -> Vec<u32> {
        processes_mentioning(self.state.path())
    }

    /// Whether cluster `name`'s record holds the PID of one of its QEMUs: the guest boots,
    /// and bee waits for its SSH.
    pub fn qemu_recorded(&self, name: &str) -> bool {
        let file = self.state.path().join("clusters").join(name).join("record.json");
        let Ok(text) = std::fs::read_to_string(file) else { return false };
        let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        record["resources"]
            .as_array()
            .is_some_and(|all| all.iter().any(|r| r["what"] == "qemu" && r["pid"].is_u64()))
    }

    /// Asserts that no cluster of this environment left a QEMU or a directory behind.
    pub fn assert_no_cluster_left(&self) {
        assert_eq!(self.qemu_processes(), Vec::<u32>::new(), "qemu processes left behind");
        let left: Vec<PathBuf> = std::fs::read_dir(self.state.path().join("clusters"))
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(left, Vec::<PathBuf>::new(), "cluster directories left behind");
    }

    /// Kills the QEMU of `node` of cluster `cluster` with SIGKILL, as a crash would, and
    /// returns its PID.
    pub fn kill_qemu(&self, cluster: &str, node: &str) -> u64 {
        let file = self.state.path().join("clusters").join(cluster).join("record.json");
        let text = std::fs::read_to_string(&file).expect("cluster record");
        let record: serde_json::Value = serde_json::from_str(&text).expect("record parses");
        let pid = record["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| {
                let qemu = r["kind"] == "process" && r["node"] == node;
                qemu.then(|| r["pid"].as_u64()).flatten()
            })
            .unwrap_or_else(|| panic!("no qemu pid recorded for {node}"));
        let killed = Command::new("kill").args(["-9", &pid.to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -9 {pid} failed");
        pid
    }
}

impl Drop for BeeEnv {
    fn drop(&mut self) {
        let clusters = self.state.path().join("clusters");
        for entry in std::fs::read_dir(&clusters).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let _ = self.command(&["down", &name]).output();
        }
        for pid in self.qemu_processes() {
            eprintln!("test cleanup: killing leftover qemu {pid}");
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Sends SIGINT to `child`, as Ctrl-C in a terminal does.
pub fn ctrl_c(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT to the child");
}

/// Waits for a child with a deadline, killing it and failing the test when it passes.
pub fn wait_with_timeout(mut child: Child, timeout: Duration, what: &str) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("child can be waited for") {
            Some(_) => return child.wait_with_output().expect("child output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("child output");
                panic!(
                    "{what} did not finish within {}s; stderr:\n{}",
                    timeout.as_secs(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes; panics naming what was awaited.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {}s waiting for {what}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// PIDs of processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// True when something listens on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Runs `ip` with `args`; panics with its error output when it fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A number from 100 to 249 for a fixture's subnet and interface names: from this
/// process's id, and different for each call, so that fixtures in parallel, in one test
/// process or several, do not meet (until 150 are alive at once).
pub fn subnet() -> u32 {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    100 + (std::process::id().wrapping_mul(7).wrapping_add(call)) % 150
}

/// Makes network namespace `name` with a veth pair (`outer` here, on `bridge`; `inner`
/// there, with `addr`/24) and its loopback up.
pub fn add_namespace(name: &str, bridge: &str, (outer, inner): (&str, &str), addr: &str) {
    ip(&["netns", "add", name]);
    ip(&["link", "add", outer, "type", "veth", "peer", "name", inner]);
    ip(&["link", "set", inner, "netns", name]);
    ip(&["link", "set", outer, "master", bridge]);
    ip(&["link", "set", outer, "up"]);
    ip(&["-n", name, "addr", "add", &format!("{addr}/24"), "dev", inner]);
    ip(&["-n", name, "link", "set", inner, "up"]);
    ip(&["-n", name, "link", "set", "lo", "up"]);
}

/// Deletes network namespace `name` and kills what still runs in it (a QEMU a failed
/// test left).
pub fn remove_namespace(name: &str) {
    let _ = Command::new("ip").args(["netns", "pids", name]).output().map(|o| {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    });
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Text of a command's stdout.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Text of a command's stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repository").into()
}

/// Writes a configuration file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("bee.toml");
    std::fs::write(&file, text).expect("config written");
    file
}

/// Files of a one-layer image: `(path in the image, host file)`, plus symlinks.
pub struct ImageLayer {
    /// Regular files copied from the host, with their mode.
    pub files: Vec<(String, PathBuf, u32)>,
    /// Symbolic links: `(path in the image, target)`.
    pub links: Vec<(String, String)>,
}

/// Writes `dir/app.tar`, a `docker save` archive of a busybox image tagged `tag` (default
/// command /bin/sh), for `tarball = "app.tar"`.
pub fn write_busybox_app(dir: &Path, tag: &str) {
    write_docker_archive(&dir.join("app.tar"), tag, &busybox_layer(), &["/bin/sh"]);
}

/// Writes a `docker save` archive holding one image of one layer, tagged `tag`, whose
/// default command is `cmd`. Made here so tests need no Docker on the host.
pub fn write_docker_archive(path: &Path, tag: &str, layer: &ImageLayer, cmd: &[&str]) {
    use sha2::{Digest, Sha256};

    let mut layer_tar = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    let entries = layer.files.iter().map(|(p, _, _)| p).chain(layer.links.iter().map(|(p, _)| p));
    for entry in entries {
        let mut prefix = String::new();
        for part in Path::new(entry).parent().into_iter().flat_map(Path::iter) {
            prefix.push_str(&part.to_string_lossy());
            prefix.push('/');
            if !dirs.contains(&prefix) {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                layer_tar.append_data(&mut header, &prefix, std::io::empty()).unwrap();
                dirs.push(prefix.clone());
            }
        }
    }
    for (inside, host, mode) in &layer.files {
        let data = std::fs::read(host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_size(data.len() as u64);
        layer_tar.append_data(&mut header, inside, data.as_slice()).unwrap();
    }
    for (inside, target) in &layer.links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        layer_tar.append_link(&mut header, inside, target).unwrap();
    }
    let layer_bytes = layer_tar.into_inner().unwrap();
    let layer_id = format!("{:x}", Sha256::digest(&layer_bytes));

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_id}")] },
        "history": [{ "created_by": "bee tests" }],
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_id = format!("{:x}", Sha256::digest(&config_bytes));
    let manifest = serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_id}/layer.tar")],
    }]);

    let file = std::fs::File::create(path).unwrap();
    let mut archive = tar::Builder::new(file);
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        archive.append_data(&mut header, name, data).unwrap();
    };
    add(&format!("{config_id}.json"), &config_bytes);
    add(&format!("{layer_id}/layer.tar"), &layer_bytes);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    archive.finish().unwrap();
}

/// A busybox image layer: the static busybox of Debian's busybox-static package.
pub fn busybox_layer() -> ImageLayer {
    let busybox = PathBuf::from("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: install Debian's busybox-static (scripts/test.sh does)"
    );
    ImageLayer {
        files: vec![("bin/busybox".into(), busybox, 0o755)],
        links: vec![("bin/sh".into(), "busybox".into())],
    }
}

/// A Docker registry server (Debian's docker-registry) on 127.0.0.1, stopped when dropped.
pub struct Registry {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry with its storage in a temporary directory and waits until it
    /// answers.
    pub fn start() -> Registry {
        let program = "docker-registry";
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{program} is missing: install Debian's docker-registry (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Registry { child, port, _dir: dir };
        wait_until("the registry to listen", Duration::from_secs(30), || port_in_use(port));
        registry
    }

    /// Pushes a `docker save` archive to `name` (`repo:tag`) with skopeo.
    pub fn push(&self, archive: &Path, name: &str) {
        let output = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://127.0.0.1:{}/{name}", self.port))
            .output()
            .expect("skopeo is missing: install Debian's skopeo (scripts/test.sh does)");
        assert!(output.status.success(), "skopeo copy failed: {}", stderr(&output));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
