//! VM-level checkpoints: each node's QEMU migrated into a file, and started again from it
//! with `-incoming`, on this platform or the next (Algorithm 1 for applications that
//! cannot save their own state).
//!
//! A checkpoint directory mirrors the cluster directory for the files it keeps, at the
//! same paths relative to it: per node the migration stream (`<node>/memory`: memory and
//! device state), what the node was started with (`<node>/vm.json`, a [`SavedNode`]), its
//! disks (the qcow2 overlay, still backed by the guest image's raw disk, and on the
//! master the data image of `data-image-nfs` storage) and its fw_cfg files (its SSH host
//! key, its name and index). A restore copies the files back into the new cluster
//! directory, so the checkpoint stays usable when the restore fails.
//!
//! # Limitations
//!
//! - QEMU cannot migrate a guest with a mounted 9p share: nodes with one are refused
//!   before anything stops (configuration validation already refuses the combination).
//! - A restore needs the guest image the nodes booted from (kernel, initrd and the raw
//!   disk their overlays are backed by) at the same path, and the same accelerator.
//! - Connections of the guests to the outside (SSH, the Docker socket forwarding) do not
//!   survive; bee opens new ones. Links between guests get new host ports and carry on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bee_core::events::Events;
use bee_core::record::{RecordStore, Resource};
use bee_core::CoreError;
use serde::{Deserialize, Serialize};

use crate::qemu::{self, Disk, VmSpec};
use crate::qmp::{Migration, Qmp};

/// Where a node keeps what it was started with, in its directory.
pub const SAVED_NODE_FILE: &str = "vm.json";
/// The migration stream of a node, in its checkpoint directory.
pub const MEMORY_FILE: &str = "memory";
/// How long QEMU may take to write or read a node's migration stream.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a QMP request may take while saving or restoring.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a migration is polled.
const POLL: Duration = Duration::from_millis(200);

/// What a guest needs to look the same after a restore: the parts of its [`VmSpec`] the
/// migrated state depends on, with paths relative to the cluster directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNode {
    /// Node name.
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Kernel, where the guest image keeps it.
    pub kernel: PathBuf,
    /// Initial ramdisk, where the guest image keeps it.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// Disks in `/dev/vda`, `/dev/vdb`, ... order, relative to the cluster directory.
    pub disks: Vec<Disk>,
    /// MAC of the SSH NIC.
    pub ssh_mac: [u8; 6],
    /// MACs of the data-plane NICs, in PCI order.
    pub data_macs: Vec<[u8; 6]>,
    /// Mount tags of 9p shares, which cannot be migrated.
    pub shares: Vec<String>,
    /// fw_cfg entries as (name, file relative to the cluster directory).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// The guest's SSH host key, as a public key line, pinned again after a restore.
    pub host_key: String,
}

impl SavedNode {
    /// What `spec`, a node of the cluster in `cluster_dir`, needs to be restored.
    pub fn of(spec: &VmSpec, cluster_dir: &Path, host_key: &str) -> Result<SavedNode, CoreError> {
        let relative = |path: &Path| relative_to(cluster_dir, path);
        let disks = spec
            .disks
            .iter()
            .map(|disk| Ok(Disk { path: relative(&disk.path)?, ..disk.clone() }))
            .collect::<Result<_, CoreError>>()?;
        let fw_cfg = spec
            .fw_cfg
            .iter()
            .map(|(name, file)| Ok((name.clone(), relative(file)?)))
            .collect::<Result<_, CoreError>>()?;
        Ok(SavedNode {
            name: spec.name.clone(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            append: spec.append.clone(),
            disks,
            ssh_mac: spec.ssh_mac,
            data_macs: spec.data_nics.iter().map(|nic| nic.mac()).collect(),
            shares: spec.shares.iter().map(|share| share.tag.clone()).collect(),
            fw_cfg,
            host_key: host_key.to_string(),
        })
    }

    /// Reads `dir/vm.json`.
    pub fn read(dir: &Path) -> Result<SavedNode, CoreError> {
        let file = dir.join(SAVED_NODE_FILE);
        let text =
            std::fs::read_to_string(&file).map_err(|e| CoreError::io("cannot read", &file, e))?;
        serde_json::from_str(&text).map_err(|e| CoreError::Record {
            path: file.clone(),
            detail: format!("not a saved node: {e}"),
        })
    }

    /// Writes `dir/vm.json`.
    pub fn write(&self, dir: &Path) -> Result<(), CoreError> {
        let file = dir.join(SAVED_NODE_FILE);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&file, text).map_err(|e| CoreError::io("cannot write", &file, e))
    }

    /// The node's files, relative to the cluster directory: disks, then fw_cfg files.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        let disks = self.disks.iter().map(|disk| disk.path.as_path());
        disks.chain(self.fw_cfg.iter().map(|(_, file)| file.as_path()))
    }
}

/// A node's QEMU as the record has it.
struct Running {
    name: String,
    pid: u32,
    start_time: Option<u64>,
    qmp: PathBuf,
    saved: SavedNode,
}

/// Saves every node of the cluster in `store` into `into` (see the module's description)
/// and quits their QEMUs: all guests are paused first, then migrated at once, so that none
/// runs on while another is saved. When a stream cannot be written, the guests run on and
/// the error says why.
pub async fn save(store: &RecordStore, into: &Path, events: &dyn Events) -> Result<(), CoreError> {
    let nodes = running_nodes(store)?;
    if let Some(node) = nodes.iter().find(|n| !n.saved.shares.is_empty()) {
        return Err(CoreError::Unsupported {
            what: format!("a VM-level checkpoint of {}, which mounts a 9p share", node.name),
            instead: "use storage mode = \"data-image-nfs\", or add [checkpoint] so that the \
                      application saves its own state"
                .to_string(),
        });
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(Qmp::connect(&node.qmp, QMP_TIMEOUT).await.map_err(|e| qmp_error(node, &e))?);
    }
    let saved_in = match write_streams(&nodes, &mut clients, into).await {
        Ok(elapsed) => elapsed,
        Err(err) => {
            // Running guests power off cleanly at teardown, their data image unmounted.
            for (node, qmp) in nodes.iter().zip(&mut clients) {
                if let Err(cont) = qmp.cont().await {
                    tracing::warn!(node = %node.name, error = %cont, "cannot resume the guest");
                }
            }
            return Err(err);
        }
    };
    for (node, qmp) in nodes.iter().zip(clients) {
        qmp.quit().await.map_err(|e| qmp_error(node, &e))?;
        if !crate::backend::wait_gone(node.pid, node.start_time, QMP_TIMEOUT).await {
            return Err(node_error(&node.name, "qemu did not quit after saving its guest"));
        }
    }
    for node in &nodes {
        keep_files(store.dir(), into, node)?;
        let memory = size_on_disk(&into.join(&node.name).join(MEMORY_FILE));
        let disks: u64 = node.saved.files().map(|f| size_on_disk(&into.join(f))).sum();
        events.detail(&format!(
            "{}: saved {} MiB of memory and device state, {} MiB of disks",
            node.name,
            memory.div_ceil(1 << 20),
            disks.div_ceil(1 << 20)
        ));
    }
    events.detail(&format!("guests written in {:.1}s", saved_in.as_secs_f64()));
    Ok(())
}

/// Pauses every guest, then has every QEMU write its migration stream into `into`;
/// returns how long writing took.
async fn write_streams(
    nodes: &[Running],
    clients: &mut [Qmp],
    into: &Path,
) -> Result<Duration, CoreError> {
    for (node, qmp) in nodes.iter().zip(clients.iter_mut()) {
        qmp.stop().await.map_err(|e| qmp_error(node, &e))?;
    }
    let started = Instant::now();
    for (node, qmp) in nodes.iter().zip(clients.iter_mut()) {
        let dir = into.join(&node.name);
        std::fs::create_dir_all(&dir).map_err(|e| CoreError::io("cannot create", &dir, e))?;
        qmp.migrate(&into_file(&dir.join(MEMORY_FILE))).await.map_err(|e| qmp_error(node, &e))?;
    }
    for (node, qmp) in nodes.iter().zip(clients.iter_mut()) {
        let done = wait_for_migration(&node.name, qmp, "writing its migration stream").await?;
        tracing::info!(node = %node.name, bytes = done.transferred, "guest saved");
    }
    Ok(started.elapsed())
}

/// Copies the files of the node `name` from the checkpoint in `from` into the cluster
/// directory `cluster_dir`, and returns what the node was started with.
pub async fn bring_back(
    from: &Path,
    cluster_dir: &Path,
    name: &str,
) -> Result<SavedNode, CoreError> {
    let saved = SavedNode::read(&from.join(name))?;
    if saved.name != name {
        return Err(node_error(
            name,
            &format!("{} describes node {}", from.join(name).display(), saved.name),
        ));
    }
    for required in [&saved.kernel, &saved.initrd] {
        if !required.is_file() {
            return Err(node_error(
                name,
                &format!(
                    "the checkpoint needs {}, from the guest image the node booted; build that \
                     image again, or start the run over with `bee discard`",
                    required.display()
                ),
            ));
        }
    }
    for file in saved.files() {
        let (source, target) = (from.join(file), cluster_dir.join(file));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CoreError::io("cannot create", parent, e))?;
        }
        bee_core::files::copy_sparse(&source, &target).await?;
    }
    Ok(saved)
}

/// Waits until the QEMU behind `qmp_socket` has loaded the migration stream in `stream`,
/// then lets the guest run on.
///
/// # Limitations
///
/// QEMU 7.2 exits when it cannot load the stream and says why only on its standard error,
/// which a daemonized QEMU no longer has: the error then names the file and the likely
/// causes, not QEMU's words.
pub async fn resume(name: &str, qmp_socket: &Path, stream: &Path) -> Result<(), CoreError> {
    let lost = |e: crate::qmp::QmpError| {
        node_error(
            name,
            &format!(
                "qemu stopped answering while loading {}, which may be damaged or written by \
                 another QEMU or guest image ({e})",
                stream.display()
            ),
        )
    };
    let mut qmp = Qmp::connect(qmp_socket, QMP_TIMEOUT).await.map_err(lost)?;
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    loop {
        let migration = qmp.query_migrate().await.map_err(lost)?;
        let loaded = match migration.status.as_str() {
            "completed" => true,
            _ if migration.is_over() => {
                return Err(migration_failed(name, "reading its migration stream", &migration))
            }
            // Before the stream is read, and with QEMU 7.2 once it is, the status is
            // `none` while QEMU is still in its `inmigrate` run state.
            "none" => qmp.query_status().await.map_err(lost)? != "inmigrate",
            _ => false,
        };
        if loaded {
            break;
        }
        if Instant::now() >= deadline {
            return Err(migration_timeout(name, "reading its migration stream"));
        }
        tokio::time::sleep(POLL).await;
    }
    qmp.cont().await.map_err(|e| node_error(name, &format!("qmp: {e}")))
}

/// The nodes of the record with their QEMU running and what they were started with.
fn running_nodes(store: &RecordStore) -> Result<Vec<Running>, CoreError> {
    let record = store.record();
    record
        .nodes
        .iter()
        .map(|node| {
            let process = record.resources.iter().find_map(|resource| match resource {
                Resource::Process {
                    node: n, pid: Some(pid), start_time, qmp: Some(qmp), ..
                } if *n == node.name => Some((*pid, *start_time, qmp.clone())),
                _ => None,
            });
            let Some((pid, start_time, qmp)) = process else {
                return Err(node_error(&node.name, "the record names no qemu with a qmp socket"));
            };
            if !crate::backend::is_running(pid, start_time) {
                return Err(node_error(&node.name, &format!("qemu (pid {pid}) is not running")));
            }
            let saved = SavedNode::read(&store.dir().join(&node.name))?;
            Ok(Running { name: node.name.clone(), pid, start_time, qmp, saved })
        })
        .collect()
}

/// The migration URI that writes the stream into `file`.
fn into_file(file: &Path) -> String {
    format!("exec:cat > {}", qemu::shell_quote(&file.to_string_lossy()))
}

/// Polls the outgoing migration of `node` until it completes; fails with QEMU's reason.
async fn wait_for_migration(
    node: &str,
    qmp: &mut Qmp,
    doing: &str,
) -> Result<Migration, CoreError> {
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    loop {
        let migration =
            qmp.query_migrate().await.map_err(|e| node_error(node, &format!("qmp: {e}")))?;
        if migration.status == "completed" {
            return Ok(migration);
        }
        if migration.is_over() {
            return Err(migration_failed(node, doing, &migration));
        }
        if Instant::now() >= deadline {
            return Err(migration_timeout(node, doing));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Moves the node's disks and fw_cfg files from the cluster directory into the
/// checkpoint, and writes what it was started with beside them.
fn keep_files(cluster_dir: &Path, into: &Path, node: &Running) -> Result<(), CoreError> {
    for file in node.saved.files() {
        let (source, target) = (cluster_dir.join(file), into.join(file));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CoreError::io("cannot create", parent, e))?;
        }
        std::fs::rename(&source, &target)
            .map_err(|e| CoreError::io("cannot move into the checkpoint", &source, e))?;
    }
    node.saved.write(&into.join(&node.name))
}

/// `path` relative to `dir`, which must hold it.
fn relative_to(dir: &Path, path: &Path) -> Result<PathBuf, CoreError> {
    let absolute =
        |p: &Path| std::path::absolute(p).map_err(|e| CoreError::io("cannot find", p, e));
    let (dir, path) = (absolute(dir)?, absolute(path)?);
    match path.strip_prefix(&dir) {
        Ok(relative) => Ok(relative.to_path_buf()),
        Err(_) => Err(CoreError::Backend {
            backend: "vm",
            detail: format!(
                "{} is outside the cluster directory {}, so a VM checkpoint cannot keep it",
                path.display(),
                dir.display()
            ),
        }),
    }
}

fn size_on_disk(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|meta| meta.blocks() * 512).unwrap_or(0)
}

fn migration_failed(node: &str, doing: &str, migration: &Migration) -> CoreError {
    let why = migration.error.as_deref().unwrap_or("qemu gave no reason");
    node_error(node, &format!("qemu failed {doing} (migration {}): {why}", migration.status))
}

fn migration_timeout(node: &str, doing: &str) -> CoreError {
    CoreError::Timeout {
        node: node.to_string(),
        awaited: format!("qemu {doing}"),
        timeout: MIGRATE_TIMEOUT,
    }
}

fn qmp_error(node: &Running, err: &crate::qmp::QmpError) -> CoreError {
    node_error(&node.name, &format!("qmp: {err}"))
}

fn node_error(node: &str, detail: &str) -> CoreError {
    CoreError::Backend { backend: "vm", detail: format!("{node}: {detail}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::{Accel, DataNic, DiskFormat};
    use tokio::process::Command;

    fn spec() -> VmSpec {
        VmSpec {
            name: "c-0".into(),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            append: "root=/dev/vda".into(),
            disks: vec![
                Disk {
                    path: "/state/c/c-0/disk.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    cache: None,
                },
                Disk {
                    path: "/state/c/data.img".into(),
                    format: DiskFormat::Raw,
                    cache: Some("none".into()),
                },
            ],
            ssh_addr: std::net::Ipv4Addr::LOCALHOST,
            ssh_port: 2222,
            data_nics: vec![DataNic::StreamListen {
                addr: "127.0.0.1:4000".parse().unwrap(),
                mac: [0x52, 0x54, 0, 1, 0, 0],
            }],
            shares: vec![],
            fw_cfg: vec![("opt/bee/node".into(), "/state/c/c-0/node.env".into())],
            qmp_socket: "/state/c/c-0/qmp.sock".into(),
            serial_log: "/state/c/c-0/console.log".into(),
            pidfile: None,
            ssh_mac: [0x52, 0x54, 0, 0, 0, 0],
            incoming: None,
        }
    }

    #[test]
    fn a_saved_node_keeps_hardware_macs_and_files_relative_to_the_cluster() {
        let saved =
            SavedNode::of(&spec(), Path::new("/state/c"), "ssh-ed25519 AAAA bee-c-0").unwrap();
        assert_eq!((saved.cpus, saved.memory_mib), (2, 1024));
        assert_eq!(saved.data_macs, [[0x52, 0x54, 0, 1, 0, 0]]);
        let files: Vec<&Path> = saved.files().collect();
        assert_eq!(
            files,
            [Path::new("c-0/disk.qcow2"), Path::new("data.img"), Path::new("c-0/node.env")]
        );
        assert_eq!(saved.disks[1].cache.as_deref(), Some("none"));

        let dir = tempfile::tempdir().unwrap();
        saved.write(dir.path()).unwrap();
        assert_eq!(SavedNode::read(dir.path()).unwrap(), saved);
    }

    /// A QEMU with a machine but no guest to boot, paused from the start: enough to migrate.
    fn bare_qemu(qmp: &Path, incoming: Option<&Path>) -> tokio::process::Child {
        let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
        let mut command = Command::new(qemu::qemu_binary());
        command.args(["-accel", "tcg", "-M", "q35", "-m", "64", "-nodefaults"]);
        command.args(["-display", "none", "-S", "-qmp", &qmp_arg]);
        if let Some(file) = incoming {
            let from = format!("exec:cat {}", qemu::shell_quote(&file.to_string_lossy()));
            command.args(["-incoming", &from]);
        }
        command.stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        command.kill_on_drop(true);
        command.spawn().expect("qemu-system-x86_64 runs (set BEE_QEMU to use another binary)")
    }

    #[tokio::test]
    async fn real_qemu_saves_into_a_file_and_runs_on_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, memory) = (dir.path().join("qmp.sock"), dir.path().join("it's memory"));
        let mut saving = bare_qemu(&socket, None);
        let mut qmp = Qmp::connect(&socket, QMP_TIMEOUT).await.unwrap();
        qmp.stop().await.unwrap();
        qmp.migrate(&into_file(&memory)).await.unwrap();
        let done = wait_for_migration("t-0", &mut qmp, "writing").await.unwrap();
        assert!(done.transferred > 0, "{done:?}");
        qmp.quit().await.unwrap();
        saving.wait().await.unwrap();
        assert!(std::fs::metadata(&memory).unwrap().len() > 0);

        let _restored = bare_qemu(&socket, Some(&memory));
        resume("t-0", &socket, &memory).await.unwrap();
        let mut qmp = Qmp::connect(&socket, QMP_TIMEOUT).await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");
        qmp.quit().await.unwrap();
    }

    #[tokio::test]
    async fn a_migration_qemu_cannot_write_fails_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let _qemu = bare_qemu(&socket, None);
        let mut qmp = Qmp::connect(&socket, QMP_TIMEOUT).await.unwrap();
        qmp.stop().await.unwrap();
        qmp.migrate(&into_file(&dir.path().join("missing/memory"))).await.unwrap();
        let err = wait_for_migration("t-0", &mut qmp, "writing its migration stream").await;
        let err = err.unwrap_err().to_string();
        assert!(
            err.starts_with(
                "vm: t-0: qemu failed writing its migration stream (migration failed): "
            ),
            "{err}"
        );
        qmp.quit().await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_that_is_not_one_fails_the_restore_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, memory) = (dir.path().join("qmp.sock"), dir.path().join("memory"));
        std::fs::write(&memory, "not a migration stream").unwrap();
        let _qemu = bare_qemu(&socket, Some(&memory));
        let err = resume("t-0", &socket, &memory).await.unwrap_err().to_string();
        let expected = format!(
            "vm: t-0: qemu stopped answering while loading {}, which may be damaged or \
             written by another QEMU or guest image (",
            memory.display()
        );
        assert!(err.starts_with(&expected), "{err}");
    }

    #[test]
    fn a_disk_outside_the_cluster_directory_is_refused() {
        let mut outside = spec();
        outside.disks[1].path = "/elsewhere/data.img".into();
        let err = SavedNode::of(&outside, Path::new("/state/c"), "key").unwrap_err();
        assert_eq!(
            err.to_string(),
            "vm: /elsewhere/data.img is outside the cluster directory /state/c, so a VM \
             checkpoint cannot keep it"
        );
    }
}
