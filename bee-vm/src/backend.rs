//! The VM backend: QEMU guests on this host (phase 2 of the paper's builder and its
//! deployment, sections III-C and III-D).
//!
//! Per node, in the cluster directory: a qcow2 overlay backed by the image's raw disk, an
//! SSH host key made by bee and handed to the guest through QEMU's fw_cfg (so bee knows
//! and pins it before the guest boots), a known-hosts file with exactly that key, a QMP
//! socket and the serial console log. QEMU runs with `-daemonize`, so it reports start-up
//! errors (a port taken, a bad file) before it detaches, and it outlives the `bee` process
//! that started it; a later `bee down` finds it through the cluster record.
//!
//! The backend also saves running nodes into a VM-level checkpoint and starts nodes from
//! one ([`crate::checkpoint`]): each node's directory keeps what its QEMU was started
//! with (`vm.json`) for that.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bee_core::config::{Hosts, StorageMode, Transport};
use bee_core::events::Events;
use bee_core::record::{ClusterRecord, NodeRecord, RecordStore, Resource, SshEndpoint};
use bee_core::traits::{Backend, ClusterPlan, Nic, NodeHealth, StorageDevice};
use bee_core::CoreError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::checkpoint::{self, SavedNode};
use crate::image::{GuestImage, ImageInputs};
use crate::kvm;
use crate::qemu::{self, Accel, DataNic, Disk, DiskFormat, Share, VmSpec};
use crate::qmp::Qmp;
use crate::slurm::{Allocation, SlurmNode};
use crate::ssh_hosts::{self, SshHost};

/// How long a guest gets to power off after an ACPI shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How long a QEMU on another host may take to start: `srun` has to create a job step,
/// `ssh` to log in.
const STEP_START: Duration = Duration::from_secs(60);
/// How long a QEMU, or the `srun` of its step, gets to exit after SIGTERM.
const TERM_WAIT: Duration = Duration::from_secs(10);
/// How long a killed QEMU may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Kernel command line of every guest.
pub const KERNEL_APPEND: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0 apparmor=0 quiet";
/// The socket in a node's directory that reaches the QMP socket of a QEMU on another
/// host: the ssh session that runs it forwards it, or for a Slurm step the relay does.
pub const QMP_FORWARD: &str = "qmp-fwd.sock";
/// What the record calls the relay process of a guest in a Slurm step
/// ([`crate::slurm`]); the guest's node stops before it does.
const QMP_RELAY: &str = "qmp relay";
/// The relay's script and log, in the node's directory.
const RELAY_SCRIPT: &str = "qmp-relay.sh";
const RELAY_LOG: &str = "qmp-relay.log";
/// How long the relay gets to listen on its socket.
const RELAY_START: Duration = Duration::from_secs(10);
/// Attempts at finding a free SSH port when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct VmBackend {
    image: Option<GuestImage>,
    cache: Option<(PathBuf, ImageInputs)>,
    hosts: Hosts,
    /// Where `hosts` put the nodes, looked up once (`scontrol`, or `ssh` to each host)
    /// and shared by the clones of this backend.
    placement: Arc<OnceCell<Placement>>,
}

impl Default for VmBackend {
    fn default() -> VmBackend {
        VmBackend::new()
    }
}

impl VmBackend {
    /// A backend that can only inspect and tear down recorded clusters.
    pub fn new() -> VmBackend {
        VmBackend::of(None, None)
    }

    fn of(image: Option<GuestImage>, cache: Option<(PathBuf, ImageInputs)>) -> VmBackend {
        VmBackend { image, cache, hosts: Hosts::Local, placement: Arc::default() }
    }

    /// A backend that boots nodes from the image of `inputs` in `cache_dir`, looked up
    /// when nodes are started, so that other problems of a configuration surface first.
    pub fn from_cache(cache_dir: PathBuf, inputs: ImageInputs) -> VmBackend {
        VmBackend::of(None, Some((cache_dir, inputs)))
    }

    /// A backend that boots nodes from `image`.
    pub fn with_image(image: GuestImage) -> VmBackend {
        VmBackend::of(Some(image), None)
    }

    /// The same backend, starting its nodes on `hosts` (a platform's `hosts`).
    pub fn on_hosts(mut self, hosts: Hosts) -> VmBackend {
        self.hosts = hosts;
        self.placement = Arc::default();
        self
    }

    /// Where the nodes go: this host, a Slurm allocation, or hosts over SSH (each
    /// checked to answer), looked up the first time it is asked for.
    async fn placement(&self) -> Result<&Placement, CoreError> {
        self.placement
            .get_or_try_init(|| async {
                Ok(match &self.hosts {
                    Hosts::Local => Placement::Local,
                    Hosts::Slurm => Placement::Slurm(Allocation::from_env().await?),
                    Hosts::List(entries) => Placement::Ssh(ssh_hosts::reach(entries).await?),
                })
            })
            .await
    }
}

impl VmBackend {
    fn image(&self) -> Result<GuestImage, CoreError> {
        match (&self.image, &self.cache) {
            (Some(image), _) => Ok(image.clone()),
            (None, Some((dir, inputs))) => Ok(GuestImage::locate(dir, inputs)?),
            (None, None) => Err(backend_message("no guest image was given to the backend".into())),
        }
    }

    /// KVM when it works where the guests run, else TCG with a warning; noted in the
    /// record.
    async fn accel(
        &self,
        placement: &Placement,
        store: &mut RecordStore,
        events: &dyn Events,
    ) -> Result<Accel, CoreError> {
        let cache = bee_core::paths::cache_dir();
        let forced = kvm::forced_from_env().map_err(|e| backend_error(&e))?;
        let decision = match (placement, forced) {
            (Placement::Local, _) => kvm::choose(Some(&cache.join("kvm-probe.json")))
                .await
                .map_err(|e| backend_error(&e))?,
            (_, Some(accel)) => kvm::Decision { accel, warning: None },
            (remote, None) => {
                let image = kvm::shared_probe_image(&cache)
                    .map_err(|e| CoreError::io("cannot write the KVM probe guest", &cache, e))?;
                let script = kvm::remote_probe_script(&qemu::qemu_binary(), &image);
                let what = "checking KVM where the guests run";
                let started = std::time::Instant::now();
                events.started(what);
                let hosts = remote.probe(&script).await;
                events.finished(what, started.elapsed());
                kvm::decide_for_hosts(&hosts)
            }
        };
        if let Some(warning) = decision.warning.as_deref().filter(|w| first_time(w)) {
            events.warning(warning);
        }
        let accel_name = match decision.accel {
            Accel::Kvm => "accelerator: kvm",
            Accel::Tcg => "accelerator: tcg (software emulation)",
        };
        store.update(|r| r.notes.push(accel_name.to_string()))?;
        Ok(decision.accel)
    }
}

/// How long the KVM probe on other hosts may take, connecting included: the probe
/// itself is killed after [`kvm::PROBE_TIMEOUT`].
const REMOTE_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What `command` (a remote KVM probe) printed, its standard output and error; a command
/// that cannot start or does not end in time says so on its error.
async fn probe_output(mut command: Command) -> (String, String) {
    command.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(REMOTE_PROBE_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ),
        Ok(Err(e)) => (String::new(), format!("cannot start {command:?}: {e}")),
        Err(_) => (String::new(), format!("no answer within {REMOTE_PROBE_TIMEOUT:?}")),
    }
}

/// True the first time this process sees `warning`: a run that moves between platforms
/// chooses the accelerator on each, and one reason for TCG needs saying once.
fn first_time(warning: &str) -> bool {
    static GIVEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if given.iter().any(|w| w == warning) {
        return false;
    }
    given.push(warning.to_string());
    true
}

/// Says where a node's QEMU started; where a node landed matters to the user once it is
/// not this host.
fn tell_started(node: &NodeRecord, place: &Place<'_>, events: &dyn Events) {
    let name = &node.name;
    let ssh = node.ssh.as_ref().map(|s| format!("{}:{}", s.host, s.port)).unwrap_or_default();
    match place {
        Place::Local => events.detail(&format!("{name}: qemu started, ssh on {ssh}")),
        Place::Slurm(allocation, node) => events.message(&format!(
            "{name}: qemu started on {} (step of Slurm job {}), ssh on {ssh}",
            node.name, allocation.job_id
        )),
        Place::Ssh(host) => events.message(&format!(
            "{name}: qemu started on {} over SSH, ssh on {ssh}",
            host.destination
        )),
    }
}

/// Where the nodes of a cluster run.
#[derive(Debug)]
enum Placement {
    Local,
    Slurm(Allocation),
    Ssh(Vec<SshHost>),
}

impl Placement {
    /// Runs the KVM probe `script` ([`kvm::remote_probe_script`]) on every host, in
    /// parallel, and returns each host's decision.
    async fn probe(&self, script: &str) -> Vec<(String, kvm::Decision)> {
        match self {
            Placement::Local => Vec::new(),
            Placement::Ssh(hosts) => {
                let probes = hosts.iter().map(|host| async move {
                    let mut ssh = ssh_hosts::ssh();
                    ssh.arg(&host.destination).arg("--").arg(script);
                    let (stdout, stderr) = probe_output(ssh).await;
                    (host.destination.clone(), kvm::remote_decision(&stdout, &stderr))
                });
                futures_util::future::join_all(probes).await
            }
            Placement::Slurm(allocation) => {
                let mut srun = allocation.on_every_node("bee-kvm-probe");
                srun.args(["sh", "-c", script]);
                let (stdout, stderr) = probe_output(srun).await;
                let nodes = allocation.nodes.iter().enumerate();
                nodes
                    .map(|(index, node)| {
                        let stdout = Allocation::lines_of(&stdout, index);
                        let stderr = Allocation::lines_of(&stderr, index);
                        (node.name.clone(), kvm::remote_decision(&stdout, &stderr))
                    })
                    .collect()
            }
        }
    }

    fn place(&self, index: usize) -> Place<'_> {
        match self {
            Placement::Local => Place::Local,
            Placement::Slurm(allocation) => Place::Slurm(allocation, allocation.node_for(index)),
            Placement::Ssh(hosts) => Place::Ssh(&hosts[index % hosts.len()]),
        }
    }
}

#[async_trait]
impl Backend for VmBackend {
    fn name(&self) -> &'static str {
        "vm"
    }

    async fn host_addresses(&self, nodes: usize) -> Result<Vec<Ipv4Addr>, CoreError> {
        let placement = self.placement().await?;
        Ok((0..nodes).map(|i| placement.place(i).addr()).collect())
    }

    async fn provision(
        &self,
        plan: &ClusterPlan<'_>,
        store: &mut RecordStore,
        events: &dyn Events,
    ) -> Result<Vec<NodeRecord>, CoreError> {
        let image = &self.image()?;
        let placement = self.placement().await?;
        let accel = self.accel(placement, store, events).await?;
        let mut nodes = Vec::new();
        for (index, name) in plan.node_names.iter().enumerate() {
            let place = placement.place(index);
            let node = start_node(image, plan, index, name, accel, &place, store).await?;
            tell_started(&node, &place, events);
            nodes.push(node);
        }
        Ok(nodes)
    }

    async fn checkpoint(
        &self,
        store: &mut RecordStore,
        into: &Path,
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        checkpoint::save(store, into, events).await
    }

    async fn restore(
        &self,
        plan: &ClusterPlan<'_>,
        from: &Path,
        store: &mut RecordStore,
        events: &dyn Events,
    ) -> Result<Vec<NodeRecord>, CoreError> {
        let image = self.image()?;
        let placement = self.placement().await?;
        let accel = self.accel(placement, store, events).await?;
        // Listening ends of the links first, as at boot: node order guarantees it.
        let mut nodes = Vec::new();
        for (index, name) in plan.node_names.iter().enumerate() {
            let place = placement.place(index);
            let node = restore_node(&image, plan, index, name, accel, from, &place, store).await?;
            tell_started(&node, &place, events);
            nodes.push(node);
        }
        for name in &plan.node_names {
            let qmp = monitor_of(store, name)?;
            checkpoint::resume(name, &qmp, &from.join(name).join(checkpoint::MEMORY_FILE)).await?;
        }
        Ok(nodes)
    }

    async fn health(&self, store: &RecordStore) -> Vec<NodeHealth> {
        store
            .record()
            .resources
            .iter()
            .filter_map(|resource| match resource {
                Resource::Process { node, what, pid, start_time, .. } if what != QMP_RELAY => {
                    Some(process_health(store.dir(), node, what, *pid, *start_time))
                }
                _ => None,
            })
            .collect()
    }

    async fn teardown(
        &self,
        store: &mut RecordStore,
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        let resources = store.record().resources.clone();
        let phase = stop_phases(store.record());
        // In phases, each in parallel: see `stop_phases`.
        let mut first_error = None;
        for current in StopPhase::ALL {
            let stops = resources.iter().filter_map(|resource| match resource {
                Resource::Process { node, what, pid, start_time, qmp }
                    if phase(node, what) == current =>
                {
                    // A bee stopped between starting a QEMU here and recording its PID
                    // (Ctrl-C during `bee up`) leaves it to the pid file.
                    let unrecorded =
                        || (what == "qemu").then(|| unrecorded_qemu(&store.dir().join(node)));
                    let pid = pid.or_else(|| unrecorded().flatten())?;
                    Some(stop_process(node, what, pid, *start_time, qmp.as_deref(), events))
                }
                _ => None,
            });
            let results = futures_util::future::join_all(stops).await;
            first_error = first_error.or(results.into_iter().find_map(Result::err));
        }
        for resource in resources.iter().rev() {
            if let Resource::Path { path, .. } = resource {
                if let Err(err) = remove_path(path) {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove");
                    first_error.get_or_insert(CoreError::io("cannot remove", path, err));
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// When teardown stops a process of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopPhase {
    /// The guests, but for a master that serves NFS.
    Guests,
    /// A master that serves the data image over NFS: the others' shutdown waits for
    /// their NFS mounts, which hang once the server is gone (measured: a worker stopped
    /// beside its master did not power off within [`SHUTDOWN_GRACE`] and was killed).
    NfsServer,
    /// The QMP relays of guests in Slurm steps, through which the guests were asked to
    /// power off.
    Relays,
}

impl StopPhase {
    const ALL: [StopPhase; 3] = [StopPhase::Guests, StopPhase::NfsServer, StopPhase::Relays];
}

/// The phase in which teardown stops the process `what` of `node`, for the cluster of
/// `record`.
fn stop_phases(record: &ClusterRecord) -> impl Fn(&str, &str) -> StopPhase {
    let nfs = record.storage.as_ref().is_some_and(|s| s.mode == StorageMode::DataImageNfs.name());
    let server = record.nodes.first().filter(|_| nfs && record.nodes.len() > 1);
    let server = server.map(|master| master.name.clone());
    move |node, what| match what {
        QMP_RELAY => StopPhase::Relays,
        _ if server.as_deref() == Some(node) => StopPhase::NfsServer,
        _ => StopPhase::Guests,
    }
}

/// Where a node's QEMU runs.
enum Place<'a> {
    /// On this host, daemonized.
    Local,
    /// In a step of a Slurm allocation, on one of its nodes.
    Slurm(&'a Allocation, &'a SlurmNode),
    /// In an SSH session on another host.
    Ssh(&'a SshHost),
}

impl Place<'_> {
    /// The address of the host.
    fn addr(&self) -> Ipv4Addr {
        match self {
            Place::Local => Ipv4Addr::LOCALHOST,
            Place::Slurm(_, node) => node.addr,
            Place::Ssh(host) => host.addr,
        }
    }
}

/// The data-plane NICs of node `index`, in QEMU's terms. Point-to-point links use the
/// transport the configuration asks for; multicast members send from their host's
/// address, which on this host is 127.0.0.1 and needs no multicast route.
fn data_nics(plan: &ClusterPlan<'_>, index: usize) -> Result<Vec<DataNic>, CoreError> {
    let Some(network) = plan.networks.get(index) else { return Ok(Vec::new()) };
    let stream = plan.config.network.transport == Transport::Stream;
    let localaddr = plan.hosts.get(index).copied().unwrap_or(Ipv4Addr::LOCALHOST);
    network
        .nics
        .iter()
        .map(|nic| match *nic {
            Nic::Multicast { group: SocketAddr::V4(group), mac } => {
                Ok(DataNic::Multicast { group, localaddr, mac })
            }
            Nic::Multicast { group, .. } => {
                Err(backend_message(format!("multicast group {group} is not IPv4")))
            }
            Nic::Listen { addr, mac } if stream => Ok(DataNic::StreamListen { addr, mac }),
            Nic::Listen { addr, mac } => Ok(DataNic::SocketListen { addr, mac }),
            Nic::Connect { addr, mac } if stream => Ok(DataNic::StreamConnect { addr, mac }),
            Nic::Connect { addr, mac } => Ok(DataNic::SocketConnect { addr, mac }),
        })
        .collect()
}

/// The shares and extra disks storage asks for on node `index`.
fn storage_devices(plan: &ClusterPlan<'_>, index: usize) -> (Vec<Share>, Vec<Disk>) {
    let mut shares = Vec::new();
    let mut disks = Vec::new();
    for device in plan.storages.get(index).map(|s| s.devices.as_slice()).unwrap_or_default() {
        match device {
            StorageDevice::Share { path, tag } => {
                shares.push(Share { path: path.clone(), tag: tag.clone() })
            }
            // A raw data disk bypasses the host page cache: FACTS measured twice the
            // write speed of the cached default under TCG.
            StorageDevice::Disk { path } => disks.push(Disk {
                path: path.clone(),
                format: DiskFormat::Raw,
                cache: Some("none".to_string()),
            }),
        }
    }
    (shares, disks)
}

async fn start_node(
    image: &GuestImage,
    plan: &ClusterPlan<'_>,
    index: usize,
    name: &str,
    accel: Accel,
    place: &Place<'_>,
    store: &mut RecordStore,
) -> Result<NodeRecord, CoreError> {
    let dir = node_dir(store, name)?;

    let host_key = dir.join("ssh_host_ed25519_key");
    let host_pub = make_host_key(name, &host_key).await?;
    let node_env = dir.join("node.env");
    std::fs::write(&node_env, format!("BEE_HOSTNAME={name}\nBEE_NODE_INDEX={index}\n"))
        .map_err(|e| CoreError::io("cannot write", &node_env, e))?;

    let overlay = dir.join("disk.qcow2");
    make_overlay(&image.disk(), &overlay).await?;

    let data_nics = data_nics(plan, index)?;
    let (shares, extra_disks) = storage_devices(plan, index);
    let mut disks = vec![Disk { path: overlay.clone(), format: DiskFormat::Qcow2, cache: None }];
    disks.extend(extra_disks);
    let qmp = dir.join("qmp.sock");
    let pidfile = dir.join("qemu.pid");
    let ssh_addr = plan.hosts.get(index).copied().unwrap_or(Ipv4Addr::LOCALHOST);
    let hardware = plan.config.hardware;
    let spec = VmSpec {
        name: name.to_string(),
        accel,
        cpus: hardware.cpus,
        memory_mib: hardware.memory_mib,
        kernel: image.kernel(),
        initrd: image.initrd(),
        append: KERNEL_APPEND.to_string(),
        disks,
        ssh_addr,
        ssh_port: 0,
        data_nics,
        shares,
        fw_cfg: vec![
            ("opt/bee/ssh_host_ed25519_key".to_string(), host_key.clone()),
            ("opt/bee/node".to_string(), node_env.clone()),
        ],
        qmp_socket: qmp,
        serial_log: dir.join("console.log"),
        pidfile: matches!(place, Place::Local).then_some(pidfile),
        ssh_mac: [0x52, 0x54, 0x00, 0x00, (index >> 8) as u8, index as u8],
        incoming: None,
    };
    SavedNode::of(&spec, store.dir(), &host_pub)?.write(&dir)?;
    launch(&spec, place, store, &image.key(), &host_pub).await
}

/// Starts the QEMU of `spec` where `place` says, with a free SSH port (another one when a
/// process takes the first meanwhile), records it, pins `host_pub` for its SSH, and
/// returns the node.
async fn launch(
    spec: &VmSpec,
    place: &Place<'_>,
    store: &mut RecordStore,
    client_key: &Path,
    host_pub: &str,
) -> Result<NodeRecord, CoreError> {
    let name = spec.name.as_str();
    let dir = store.dir().join(name);
    let what = match place {
        Place::Local => "qemu",
        Place::Slurm(..) => "srun",
        Place::Ssh(..) => "ssh",
    };
    let ssh_addr = spec.ssh_addr;
    let qmp = spec.qmp_socket.clone();
    // QEMU on another host serves QMP there; its ssh session, or a relay, forwards it to
    // a socket here.
    let monitor = match place {
        Place::Local => qmp.clone(),
        Place::Slurm(..) | Place::Ssh(_) => dir.join(QMP_FORWARD),
    };
    if let Place::Slurm(allocation, node) = place {
        start_qmp_relay(name, &dir, allocation, node, &qmp, store).await?;
    }
    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        store.update(|r| {
            r.resources.push(Resource::Port { node: name.into(), what: "ssh".into(), port });
            r.resources.push(Resource::Process {
                node: name.into(),
                what: what.into(),
                pid: None,
                start_time: None,
                qmp: Some(monitor.clone()),
            });
        })?;
        let spec = VmSpec { ssh_port: port, ..spec.clone() };
        let spawned = match place {
            Place::Local => spawn_qemu(name, &spec).await,
            Place::Slurm(allocation, node) => {
                let mut srun = allocation.srun(node, &format!("bee-{name}"), &qemu::qemu_binary());
                srun.args(spec.render().map_err(|e| backend_error(&e))?);
                let there = format!("in a step on Slurm node {}", node.name);
                let relay_log = dir.join(RELAY_LOG);
                spawn_foreground(name, &spec, srun, &monitor, &there, Some(&relay_log)).await
            }
            Place::Ssh(host) => {
                let args = spec.render().map_err(|e| backend_error(&e))?;
                let forward = (monitor.as_path(), qmp.as_path());
                let ssh = ssh_hosts::run_there(host, &qemu::qemu_binary(), &args, forward);
                let there = format!("on {}", host.destination);
                spawn_foreground(name, &spec, ssh, &monitor, &there, None).await
            }
        };
        match spawned {
            Ok(pid) => {
                let start_time = process_start_time(pid);
                store.update(|r| {
                    if let Some(Resource::Process { pid: p, start_time: s, .. }) =
                        r.resources.iter_mut().rev().find(
                            |res| matches!(res, Resource::Process { node, .. } if node == name),
                        )
                    {
                        *p = Some(pid);
                        *s = start_time;
                    }
                })?;
                tracing::info!(node = name, what, pid, port, "qemu started");
                let known_hosts = dir.join("known_hosts");
                std::fs::write(&known_hosts, format!("[{ssh_addr}]:{port} {host_pub}\n"))
                    .map_err(|e| CoreError::io("cannot write", &known_hosts, e))?;
                return Ok(NodeRecord {
                    name: name.to_string(),
                    ssh: Some(SshEndpoint {
                        host: ssh_addr.to_string(),
                        port,
                        user: "bee".to_string(),
                        key: client_key.to_path_buf(),
                        known_hosts,
                    }),
                });
            }
            Err((err, port_taken)) => {
                store.update(|r| {
                    r.resources.retain(|res| {
                        !matches!(res, Resource::Process { node, pid: None, .. } if node == name)
                            && !matches!(res, Resource::Port { port: p, .. } if *p == port)
                    })
                })?;
                if !port_taken {
                    return Err(err);
                }
                tracing::debug!(node = name, port, "ssh port taken meanwhile, trying another");
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| backend_message(format!("{name}: no free port found"))))
}

/// Starts node `index` from the checkpoint in `from`: its files copied into the cluster
/// directory, the same hardware, MACs and fw_cfg files, the links of `plan` (new ports),
/// and QEMU waiting for the migration stream. [`checkpoint::resume`] lets it run.
#[allow(clippy::too_many_arguments)]
async fn restore_node(
    image: &GuestImage,
    plan: &ClusterPlan<'_>,
    index: usize,
    name: &str,
    accel: Accel,
    from: &Path,
    place: &Place<'_>,
    store: &mut RecordStore,
) -> Result<NodeRecord, CoreError> {
    let dir = node_dir(store, name)?;
    let cluster_dir = store.dir().to_path_buf();
    let saved = checkpoint::bring_back(from, &cluster_dir, name).await?;

    let mut data_nics = data_nics(plan, index)?;
    if data_nics.len() != saved.data_macs.len() {
        return Err(backend_message(format!(
            "{name}: the checkpoint has {} data-plane NIC(s), the network now plans {}: restore \
             with the network.mode it was saved with",
            saved.data_macs.len(),
            data_nics.len()
        )));
    }
    for (nic, mac) in data_nics.iter_mut().zip(&saved.data_macs) {
        nic.set_mac(*mac);
    }
    let disks = saved
        .disks
        .iter()
        .map(|disk| Disk { path: cluster_dir.join(&disk.path), ..disk.clone() })
        .collect();
    let fw_cfg = saved.fw_cfg.iter().map(|(n, file)| (n.clone(), cluster_dir.join(file))).collect();
    let spec = VmSpec {
        name: name.to_string(),
        accel,
        cpus: saved.cpus,
        memory_mib: saved.memory_mib,
        kernel: saved.kernel.clone(),
        initrd: saved.initrd.clone(),
        append: saved.append.clone(),
        disks,
        ssh_addr: plan.hosts.get(index).copied().unwrap_or(Ipv4Addr::LOCALHOST),
        ssh_port: 0,
        data_nics,
        shares: Vec::new(),
        fw_cfg,
        qmp_socket: dir.join("qmp.sock"),
        serial_log: dir.join("console.log"),
        pidfile: matches!(place, Place::Local).then(|| dir.join("qemu.pid")),
        ssh_mac: saved.ssh_mac,
        incoming: Some(from.join(name).join(checkpoint::MEMORY_FILE)),
    };
    // The node can be checkpointed again, from its new directory.
    saved.write(&dir)?;
    launch(&spec, place, store, &image.key(), &saved.host_key).await
}

fn record_path(
    store: &mut RecordStore,
    node: &str,
    what: &str,
    path: &Path,
) -> Result<(), CoreError> {
    store.update(|r| {
        r.resources.push(Resource::Path { node: node.into(), what: what.into(), path: path.into() })
    })
}

/// Creates the directory of node `name` in the cluster directory, recorded first so that
/// teardown removes it.
fn node_dir(store: &mut RecordStore, name: &str) -> Result<PathBuf, CoreError> {
    let dir = store.dir().join(name);
    record_path(store, name, "node directory", &dir)?;
    std::fs::create_dir_all(&dir).map_err(|e| CoreError::io("cannot create", &dir, e))?;
    Ok(dir)
}

/// Makes an ed25519 host key for a node and returns its public line (`type key comment`).
async fn make_host_key(node: &str, key: &Path) -> Result<String, CoreError> {
    let _ = std::fs::remove_file(key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    run_tool(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("bee-{node}"))
            .arg("-f")
            .arg(key),
    )
    .await?;
    let public = PathBuf::from(format!("{}.pub", key.display()));
    let line =
        std::fs::read_to_string(&public).map_err(|e| CoreError::io("cannot read", &public, e))?;
    Ok(line.trim().to_string())
}

async fn make_overlay(base: &Path, overlay: &Path) -> Result<(), CoreError> {
    run_tool(
        "qemu-img",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(overlay),
    )
    .await
}

pub(crate) async fn run_tool(program: &str, command: &mut Command) -> Result<(), CoreError> {
    tracing::debug!(?command, "running");
    let output = command.stdin(Stdio::null()).output().await.map_err(|e| CoreError::Command {
        program: program.to_string(),
        detail: format!("cannot start it ({e}); is it installed?"),
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(CoreError::Command {
        program: program.to_string(),
        detail: format!(
            "{}: {}",
            output.status,
            bee_core::ssh::tail(&String::from_utf8_lossy(&output.stderr), 10)
        ),
    })
}

/// Starts a daemonized QEMU and returns its PID; the flag tells whether the SSH port was
/// taken, so that the caller may try another.
async fn spawn_qemu(node: &str, spec: &VmSpec) -> Result<u32, (CoreError, bool)> {
    let args = spec.render().map_err(|e| (backend_error(&e), false))?;
    let binary = qemu::qemu_binary();
    let mut command = Command::new(&binary);
    command.args(&args).arg("-daemonize").stdin(Stdio::null());
    tracing::debug!(node, command = ?command, "starting qemu");
    let output = command.output().await.map_err(|e| {
        let detail = format!("cannot start {} ({e}); install qemu-system-x86", binary.display());
        (CoreError::Command { program: "qemu".to_string(), detail }, false)
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let port_taken = stderr.contains("host forwarding rule");
        let detail = format!("{node}: {}: {}", output.status, bee_core::ssh::tail(&stderr, 10));
        return Err((CoreError::Command { program: "qemu".to_string(), detail }, port_taken));
    }
    let pidfile = spec.pidfile.as_deref().unwrap_or(Path::new("/nonexistent"));
    let text = std::fs::read_to_string(pidfile)
        .map_err(|e| (CoreError::io("cannot read", pidfile, e), false))?;
    text.trim().parse().map_err(|_| {
        (backend_message(format!("{node}: pid file {} holds {text:?}", pidfile.display())), false)
    })
}

/// Starts `command` (`srun` or `ssh`, which runs QEMU elsewhere in its foreground) and
/// returns its PID once QEMU answers on `monitor` (its QMP socket, or a forward of it),
/// which it does only when every device and netdev is set up. The flag tells whether the
/// SSH port was taken. A time-out names `relay_log` too, ending with what it says.
async fn spawn_foreground(
    name: &str,
    spec: &VmSpec,
    mut command: Command,
    monitor: &Path,
    there: &str,
    relay_log: Option<&Path>,
) -> Result<u32, (CoreError, bool)> {
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let failed = |detail: String| CoreError::Command { program: program.clone(), detail };
    let log_path = spec.serial_log.with_file_name("qemu.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| (CoreError::io("cannot create", &log_path, e), false))?;
    let log_err =
        log.try_clone().map_err(|e| (CoreError::io("cannot open", &log_path, e), false))?;
    // Its own process group: a Ctrl-C meant for bee must not reach QEMU, which bee stops
    // itself.
    command.stdin(Stdio::null()).stdout(log).stderr(log_err).process_group(0);
    tracing::debug!(node = name, command = ?command, "starting qemu {there}");
    let mut child = command
        .spawn()
        .map_err(|e| (failed(format!("cannot start {program} ({e}); is it installed?")), false))?;
    let pid = child.id().unwrap_or_default();
    let deadline = Instant::now() + STEP_START;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let port_taken = text.contains("host forwarding rule");
            let tail = bee_core::ssh::tail(&text, 10);
            return Err((
                failed(format!("{name}: qemu {there} exited ({status}): {tail}")),
                port_taken,
            ));
        }
        if monitor.exists() && Qmp::connect(monitor, Duration::from_secs(2)).await.is_ok() {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let _ = tokio::time::timeout(TERM_WAIT, child.wait()).await;
            let mut detail = format!(
                "{name}: qemu {there} did not answer on {} within {}s; see {}",
                monitor.display(),
                STEP_START.as_secs(),
                log_path.display()
            );
            if let Some(relay_log) = relay_log {
                let said = std::fs::read_to_string(relay_log).unwrap_or_default();
                detail.push_str(&format!(" and {}", relay_log.display()));
                if !said.trim().is_empty() {
                    detail.push_str(&format!(", which ends: {}", bee_core::ssh::tail(&said, 3)));
                }
            }
            return Err((failed(detail), false));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The socket that reaches the QMP of node `name`'s QEMU, from the record.
fn monitor_of(store: &RecordStore, name: &str) -> Result<PathBuf, CoreError> {
    store
        .record()
        .resources
        .iter()
        .find_map(|resource| match resource {
            Resource::Process { node, qmp: Some(qmp), .. } if node == name => Some(qmp.clone()),
            _ => None,
        })
        .ok_or_else(|| backend_message(format!("{name}: the record names no qmp socket")))
}

/// Starts the relay through which bee reaches the QMP socket `qmp` of a guest in a step
/// on Slurm node `node` ([`crate::slurm`]): a `socat` listening on [`QMP_FORWARD`] in the
/// node's directory `dir`, recorded so that teardown stops it after the guest.
async fn start_qmp_relay(
    name: &str,
    dir: &Path,
    allocation: &Allocation,
    node: &SlurmNode,
    qmp: &Path,
    store: &mut RecordStore,
) -> Result<(), CoreError> {
    let socket = qmp.file_name().and_then(|n| n.to_str()).unwrap_or("qmp.sock");
    let script = dir.join(RELAY_SCRIPT);
    let text = allocation.qmp_relay_script(node, &format!("bee-{name}-qmp"), dir, socket);
    std::fs::write(&script, text).map_err(|e| CoreError::io("cannot write", &script, e))?;
    set_executable(&script)?;
    let log_path = dir.join(RELAY_LOG);
    let log = std::fs::File::create(&log_path)
        .map_err(|e| CoreError::io("cannot create", &log_path, e))?;
    let log_err = log.try_clone().map_err(|e| CoreError::io("cannot open", &log_path, e))?;
    let listen = dir.join(QMP_FORWARD);
    let _ = std::fs::remove_file(&listen);
    // Paths relative to the node's directory: socat's address syntax gives `:` and `,`
    // meanings of their own.
    let mut relay = Command::new(crate::slurm::RELAY_PROGRAM);
    relay
        .arg(format!("UNIX-LISTEN:{QMP_FORWARD},fork,umask=0077"))
        .arg(format!("EXEC:./{RELAY_SCRIPT}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    let mut child = relay.spawn().map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => format!("; {}", crate::slurm::relay_missing()),
            _ => String::new(),
        };
        backend_message(format!("{name}: cannot start the qmp relay ({e}){hint}"))
    })?;
    let pid = child.id().unwrap_or_default();
    store.update(|r| {
        r.resources.push(Resource::Process {
            node: name.into(),
            what: QMP_RELAY.into(),
            pid: Some(pid),
            start_time: process_start_time(pid),
            qmp: None,
        })
    })?;
    let deadline = Instant::now() + RELAY_START;
    while !listen.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(backend_message(format!(
                "{name}: the qmp relay exited ({status}): {}",
                bee_core::ssh::tail(&text, 5)
            )));
        }
        if Instant::now() >= deadline {
            return Err(backend_message(format!(
                "{name}: the qmp relay did not listen on {} within {}s; see {}",
                listen.display(),
                RELAY_START.as_secs(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn set_executable(path: &Path) -> Result<(), CoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| CoreError::io("cannot make executable", path, e))
}

fn free_port() -> Result<u16, CoreError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| backend_message(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| backend_message(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// The start time of a process in clock ticks since boot, from `/proc/PID/stat`.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True when `pid` runs and is the process that was recorded (not a reused PID).
/// The PID of a QEMU started on this host in node directory `dir` but not recorded: the
/// one its pid file names, when that process runs with `dir` on its command line (so a
/// PID reused since is not taken for it).
fn unrecorded_qemu(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("qemu.pid")).ok()?.trim().parse().ok()?;
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.as_os_str().as_encoded_bytes();
    command_line.windows(needle.len()).any(|part| part == needle).then_some(pid)
}

pub(crate) fn is_running(pid: u32, start_time: Option<u64>) -> bool {
    match process_start_time(pid) {
        Some(now) => start_time.is_none_or(|recorded| recorded == now),
        None => false,
    }
}

fn process_health(
    dir: &Path,
    node: &str,
    what: &str,
    pid: Option<u32>,
    start_time: Option<u64>,
) -> NodeHealth {
    let (alive, detail) = match pid {
        None => (false, format!("{what} was never started")),
        Some(pid) if is_running(pid, start_time) => (true, format!("{what} pid {pid} running")),
        Some(pid) => {
            let console = std::fs::read_to_string(dir.join(node).join("console.log"))
                .map(|text| bee_core::ssh::tail(&text, 3))
                .unwrap_or_default();
            let mut detail = format!("its {what} process (pid {pid}) is gone");
            if !console.is_empty() {
                detail.push_str(&format!("; the console ended with: {console}"));
            }
            (false, detail)
        }
    };
    NodeHealth { node: node.to_string(), alive, detail }
}

async fn stop_process(
    node: &str,
    what: &str,
    pid: u32,
    start_time: Option<u64>,
    qmp: Option<&Path>,
    events: &dyn Events,
) -> Result<(), CoreError> {
    if !is_running(pid, start_time) {
        return Ok(());
    }
    let started = Instant::now();
    if let Some(qmp) = qmp {
        match request_powerdown(qmp).await {
            Ok(()) => {
                if wait_gone(pid, start_time, SHUTDOWN_GRACE).await {
                    events.detail(&format!(
                        "{node}: powered off in {:.1}s",
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                tracing::warn!(node, pid, "guest did not power off in time; killing qemu");
            }
            Err(err) => tracing::debug!(node, error = %err, "no graceful shutdown"),
        }
    }
    // SIGTERM first: QEMU quits at once, and `srun` passes it on to the step, which
    // SIGKILL would not.
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if wait_gone(pid, start_time, TERM_WAIT).await {
        events.detail(&format!("{node}: {what} stopped"));
        return Ok(());
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    if wait_gone(pid, start_time, KILL_WAIT).await {
        events.detail(&format!("{node}: {what} killed"));
        Ok(())
    } else {
        Err(backend_message(format!("{node}: {what} pid {pid} did not exit after SIGKILL")))
    }
}

/// Asks a running guest to power off. A paused one (a bee killed while saving it, a
/// QEMU waiting for its migration stream) cannot act on the request: that is an error,
/// so that it is stopped at once rather than after the grace period.
async fn request_powerdown(qmp: &Path) -> Result<(), String> {
    let mut client = Qmp::connect(qmp, Duration::from_secs(3)).await.map_err(|e| e.to_string())?;
    let status = client.query_status().await.map_err(|e| e.to_string())?;
    if status != "running" {
        return Err(format!("the guest is not running (status {status})"));
    }
    client.system_powerdown().await.map_err(|e| e.to_string())
}

/// Polls until the process is gone or `timeout` passes; true when it is gone.
pub(crate) async fn wait_gone(pid: u32, start_time: Option<u64>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_running(pid, start_time) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !is_running(pid, start_time)
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn backend_error(err: &dyn std::error::Error) -> CoreError {
    backend_message(crate::bee_core_chain(err))
}

fn backend_message(detail: String) -> CoreError {
    CoreError::Backend { backend: "vm", detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::tests::{fake_qemu, CAPABILITIES_OK};
    use bee_core::record::StorageRecord;

    #[test]
    fn an_nfs_serving_master_stops_after_the_other_guests_and_relays_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RecordStore::create(dir.path(), "c", "vm", Path::new("/b.toml")).unwrap();
        let nodes = ["c-0", "c-1"].map(|name| NodeRecord { name: name.into(), ssh: None });
        let storage = |mode: StorageMode| StorageRecord {
            mode: mode.name().into(),
            output: None,
            keep: false,
        };
        store.update(|r| r.nodes = nodes.to_vec()).unwrap();
        let phase = stop_phases(store.record());
        assert_eq!([phase("c-0", "qemu"), phase("c-1", "srun")], [StopPhase::Guests; 2]);

        store.update(|r| r.storage = Some(storage(StorageMode::DataImageNfs))).unwrap();
        let phase = stop_phases(store.record());
        assert_eq!(phase("c-0", "srun"), StopPhase::NfsServer);
        assert_eq!(phase("c-1", "srun"), StopPhase::Guests);
        assert_eq!(phase("c-0", QMP_RELAY), StopPhase::Relays);

        store.update(|r| r.storage = Some(storage(StorageMode::Virtio9p))).unwrap();
        assert_eq!(stop_phases(store.record())("c-0", "qemu"), StopPhase::Guests);
        store.update(|r| r.storage = Some(storage(StorageMode::DataImageNfs))).unwrap();
        store.update(|r| r.nodes.truncate(1)).unwrap();
        assert_eq!(stop_phases(store.record())("c-0", "qemu"), StopPhase::Guests, "alone");
    }

    #[tokio::test]
    async fn a_paused_guest_is_not_asked_to_power_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        // Nothing answers a system_powerdown: asking would time out.
        let paused = r#"{"return": {"status": "paused", "running": false}, "id": {id}}"#;
        let server = fake_qemu(&path, vec![CAPABILITIES_OK, paused]);
        let err = request_powerdown(&path).await.unwrap_err();
        assert_eq!(err, "the guest is not running (status paused)");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_running_guest_is_asked_to_power_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let running = r#"{"return": {"status": "running", "running": true}, "id": {id}}"#;
        let server = fake_qemu(&path, vec![CAPABILITIES_OK, running, CAPABILITIES_OK]);
        request_powerdown(&path).await.unwrap();
        server.await.unwrap();
    }

    #[test]
    fn an_unrecorded_qemu_is_the_process_its_pid_file_names_if_it_names_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("c-0");
        std::fs::create_dir(&node).unwrap();
        assert_eq!(unrecorded_qemu(&node), None, "no pid file");
        // A process with the node's directory on its command line, as QEMU has; its line
        // on stdout says that it runs (its command line is readable once exec is done).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo ready; sleep 30; exit 0", node.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        std::fs::write(node.join("qemu.pid"), format!("{}\n", child.id())).unwrap();
        assert_eq!(unrecorded_qemu(&node), Some(child.id()));
        // This test's own process does not mention the directory: a reused PID.
        std::fs::write(node.join("qemu.pid"), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(unrecorded_qemu(&node), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn an_accelerator_warning_is_given_once() {
        let warning = "bee-test: /dev/kvm hung; using TCG";
        assert!(first_time(warning));
        assert!(!first_time(warning));
        assert!(first_time("bee-test: another reason"));
    }
}
