//! The one cluster builder (the paper's Algorithm 2): composes a [`Backend`], a
//! [`Network`] and a [`Storage`] into a running cluster, delivers the application image
//! and runs it.
//!
//! Launch is a sequence of steps; when one fails, everything the record holds is torn
//! down and the error names the step. A [`Cluster`] can also be found again from a fresh
//! process by its name, to be torn down. A running cluster can be saved whole by its
//! backend (a VM-level checkpoint) and brought up again from what was saved, with its
//! application still running ([`ClusterBuilder::restore`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use crate::config::{Application, CheckpointRequest, Config, ImageSource, StorageSpec};
use crate::docker::{
    self, ContainerExtras, LogCursor, NodeDocker, OutputStream, BASE_IMAGE, BASE_TARBALL,
    SHARED_DIR,
};
use crate::error::CoreError;
use crate::events::Events;
use crate::mpi::{self, MpiNode};
use crate::record::{NodeRecord, Phase, RecordStore, SshEndpoint, StorageRecord};
use crate::ssh::{self, NodeSession};
use crate::traits::{Backend, ClusterPlan, GuestStep, Network, NetworkRequest, Storage};

/// How long a node may take from process start to answering SSH.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(600);
/// How long Docker may take to answer once SSH does.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a running application's nodes are checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// The file a VM-level checkpoint directory holds once it is complete.
pub const VM_CHECKPOINT_FILE: &str = "vm-checkpoint.json";

/// When and how to checkpoint a running application.
#[derive(Debug, Clone)]
pub struct CheckpointAt {
    /// When to checkpoint.
    pub at: tokio::time::Instant,
    /// How.
    pub how: CheckpointHow,
}

/// How an application is checkpointed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointHow {
    /// By itself: asked through the master's container (a command run there, or a signal
    /// to its main process), the application saves its state into the shared directory
    /// and exits 0 within `timeout`.
    Application {
        /// How the application is asked.
        request: CheckpointRequest,
        /// How long the application may take to exit after it.
        timeout: Duration,
    },
    /// By the backend, which saves the whole nodes (memory, devices, disks) into `into`,
    /// with the application's container still running in them.
    Vm {
        /// The directory the checkpoint is written to; it is replaced.
        into: PathBuf,
    },
}

/// What bee itself keeps in a VM-level checkpoint, beside the backend's files; written
/// last, so that a directory without it holds no complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmCheckpoint {
    /// Nodes saved.
    pub nodes: u32,
    /// How far the application's output had been passed on.
    pub output_cursor: Option<String>,
}

impl VmCheckpoint {
    /// The complete VM-level checkpoint in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<VmCheckpoint>, CoreError> {
        let file = dir.join(VM_CHECKPOINT_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CoreError::io("cannot read", &file, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| CoreError::Record {
            path: file.clone(),
            detail: format!("not a VM checkpoint description: {e}"),
        })
    }

    fn write(&self, dir: &Path) -> Result<(), CoreError> {
        let file = dir.join(VM_CHECKPOINT_FILE);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&file, text).map_err(|e| CoreError::io("cannot write", &file, e))
    }
}

/// How a run on one cluster ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The application exited by itself with this code.
    Exited(i64),
    /// The application saved its state after the checkpoint command and exited 0, or the
    /// backend saved the nodes with the application still running in them.
    Checkpointed,
}

/// Composes the parts of a cluster.
pub struct ClusterBuilder {
    backend: Arc<dyn Backend>,
    network: Option<Box<dyn Network>>,
    storage: Option<Box<dyn Storage>>,
    clusters_dir: PathBuf,
}

impl ClusterBuilder {
    /// Starts a builder for `backend`, keeping records under `clusters_dir`.
    pub fn new(backend: Arc<dyn Backend>, clusters_dir: impl Into<PathBuf>) -> ClusterBuilder {
        ClusterBuilder { backend, network: None, storage: None, clusters_dir: clusters_dir.into() }
    }

    /// Sets the data-plane network.
    pub fn network(mut self, network: Box<dyn Network>) -> ClusterBuilder {
        self.network = Some(network);
        self
    }

    /// Sets the shared storage.
    pub fn storage(mut self, storage: Box<dyn Storage>) -> ClusterBuilder {
        self.storage = Some(storage);
        self
    }

    /// Brings up the cluster `config` describes: records it, plans network and storage,
    /// starts the nodes, waits for SSH and Docker. On failure tears down what was started.
    pub async fn up(self, config: &Config, events: &dyn Events) -> Result<Cluster, CoreError> {
        self.start(config, None, events).await
    }

    /// Brings up the cluster `config` describes from the VM-level checkpoint in `from`
    /// (see [`CheckpointHow::Vm`]), which stays as it is: its nodes continue where they
    /// were saved, the application's container still running, which
    /// [`Cluster::run_until`] then follows instead of starting one. Only the links between
    /// the nodes and their SSH are new. On failure tears down what was started.
    pub async fn restore(
        self,
        config: &Config,
        from: &Path,
        events: &dyn Events,
    ) -> Result<Cluster, CoreError> {
        let saved = VmCheckpoint::read(from)?.ok_or_else(|| CoreError::Backend {
            backend: self.backend.name(),
            detail: format!("{} holds no complete VM checkpoint", from.display()),
        })?;
        if saved.nodes != config.nodes {
            return Err(CoreError::Unsupported {
                what: format!(
                    "restoring a VM checkpoint of {} node(s) with cluster.nodes = {}",
                    saved.nodes, config.nodes
                ),
                instead: format!("set cluster.nodes = {} again", saved.nodes),
            });
        }
        self.start(config, Some((from, saved)), events).await
    }

    async fn start(
        self,
        config: &Config,
        from: Option<(&Path, VmCheckpoint)>,
        events: &dyn Events,
    ) -> Result<Cluster, CoreError> {
        self.check(config)?;
        ssh::check_socket_paths(&self.clusters_dir.join(&config.name), &node_names(config))?;
        let placing = self.backend.host_addresses(config.nodes as usize).await;
        let hosts = step("placing the nodes", placing)?;
        let mut store = RecordStore::create(
            &self.clusters_dir,
            &config.name,
            self.backend.name(),
            &config.file,
        )?;
        if let Some(spec) = &config.storage {
            // A restore that fails leaves nothing worth collecting: the checkpoint stays.
            let output = if from.is_some() { None } else { spec.output.clone() };
            let record = StorageRecord { mode: spec.mode.name().to_string(), output, keep: false };
            store.update(|r| r.storage = Some(record))?;
        }
        let mut cluster = Cluster {
            backend: self.backend.clone(),
            storage: self.storage,
            store,
            config: config.clone(),
            addresses: Vec::new(),
            sessions: Vec::new(),
            dockers: Vec::new(),
            cursor: LogCursor::default(),
            restored: false,
        };
        let restoring = from.is_some();
        let launched = match cluster.launch(self.network.as_deref(), hosts, from, events).await {
            Ok(()) if restoring => {
                cluster.collect_into(config.storage.as_ref().and_then(|s| s.output.clone()))
            }
            other => other,
        };
        match launched {
            Ok(()) => Ok(cluster),
            Err(err) => {
                tracing::error!(cluster = %config.name, error = %err, "launch failed");
                cluster.mark_failed();
                if let Err(down) = cluster.down(events).await {
                    tracing::warn!(error = %down, "teardown after a failed launch failed");
                }
                Err(err)
            }
        }
    }

    fn check(&self, config: &Config) -> Result<(), CoreError> {
        if config.nodes > 1 && self.network.is_none() {
            return Err(CoreError::Unsupported {
                what: format!("a cluster of {} nodes", config.nodes),
                instead: format!(
                    "the {} data-plane network is not built into this bee yet; use nodes = 1",
                    config.network.mode
                ),
            });
        }
        if let Some(spec) = &config.storage {
            if self.storage.as_ref().is_none_or(|s| s.mode() != spec.mode) {
                return Err(CoreError::Unsupported {
                    what: format!("storage mode {}", spec.mode.name()),
                    instead: format!(
                        "shared storage is not built into this bee yet; remove [storage] and \
                         use {SHARED_DIR}, which is local to each node"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A running cluster with an open SSH connection and Docker client per node.
pub struct Cluster {
    backend: Arc<dyn Backend>,
    storage: Option<Box<dyn Storage>>,
    store: RecordStore,
    config: Config,
    addresses: Vec<Ipv4Addr>,
    sessions: Vec<NodeSession>,
    dockers: Vec<NodeDocker>,
    /// How far the application's output has been passed on.
    cursor: LogCursor,
    /// True when the nodes were restored with the application running in them.
    restored: bool,
}

impl Cluster {
    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.store.record().name
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// The cluster's record.
    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    async fn launch(
        &mut self,
        network: Option<&dyn Network>,
        hosts: Vec<Ipv4Addr>,
        from: Option<(&Path, VmCheckpoint)>,
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        let config = self.config.clone();
        let node_names = node_names(&config);
        let networks = match network {
            Some(network) => {
                let ports = free_ports(network.ports_needed(config.nodes))?;
                let request = NetworkRequest {
                    spec: &config.network,
                    cluster: &config.name,
                    nodes: config.nodes,
                    hosts: &hosts,
                    ports: &ports,
                };
                step("planning the network", network.plan(&request))?
            }
            None => Vec::new(),
        };
        self.addresses = match networks.is_empty() {
            false => networks.iter().map(|n| n.address).collect(),
            true => vec![Ipv4Addr::from(u32::from(config.network.subnet) + 1)],
        };
        // Restored nodes bring their storage, filled and mounted, with them.
        let storages = match (&self.storage, &config.storage) {
            _ if from.is_some() => Vec::new(),
            (Some(storage), Some(spec)) => {
                let what = format!("preparing {} storage", spec.mode.name());
                let prepared = storage.prepare(spec, &self.addresses, self.store.dir(), events);
                step(&what, prepared.await)?
            }
            _ => Vec::new(),
        };
        let plan = ClusterPlan { config: &config, node_names, networks, storages, hosts };

        let what = match from {
            None => format!("starting {} node(s)", config.nodes),
            Some(_) => format!("restoring {} node(s) from their checkpoint", config.nodes),
        };
        let started = Instant::now();
        events.started(&what);
        let nodes = match &from {
            None => self.backend.provision(&plan, &mut self.store, events).await,
            Some((dir, _)) => self.backend.restore(&plan, dir, &mut self.store, events).await,
        };
        let nodes = step(&what, nodes)?;
        self.store.update(|r| r.nodes = nodes.clone())?;
        events.finished(&what, started.elapsed());

        let what = "waiting for SSH and Docker";
        let started = Instant::now();
        events.started(what);
        let ready = try_join_all(nodes.iter().map(|node| self.connect_node(node)));
        let (sessions, dockers): (Vec<_>, Vec<_>) = step(what, ready.await)?.into_iter().unzip();
        self.sessions = sessions;
        self.dockers = dockers;
        events.finished(what, started.elapsed());
        if let Some((_, saved)) = from {
            // Networks, mounts and MPI files are in the restored guests already.
            self.cursor = LogCursor(saved.output_cursor);
            self.restored = true;
            return self.store.update(|r| r.phase = Phase::Ready);
        }

        let mkdir = GuestStep {
            what: "creating the shared directory".to_string(),
            command: format!("install -d -o bee -g bee {SHARED_DIR}"),
        };
        let node_steps: Vec<Vec<GuestStep>> = (0..self.sessions.len())
            .map(|i| {
                let mut steps =
                    plan.networks.get(i).map(|n| n.guest_steps.clone()).unwrap_or_default();
                steps.push(mkdir.clone());
                steps
            })
            .collect();
        self.run_steps("configuring the nodes", &self.sessions, &node_steps, events).await?;
        if !plan.storages.is_empty() {
            let steps: Vec<Vec<GuestStep>> =
                plan.storages.iter().map(|s| s.guest_steps.clone()).collect();
            let (master, workers) = self.sessions.split_at(1);
            let what = "mounting the shared directory on the master";
            self.run_steps(what, master, &steps[..1], events).await?;
            let what = "mounting the shared directory on the other nodes";
            self.run_steps(what, workers, &steps[1..], events).await?;
        }
        self.store.update(|r| r.phase = Phase::Ready)
    }

    /// Runs `steps[i]` on `sessions[i]`, all sessions at once, as one reported step.
    async fn run_steps(
        &self,
        what: &str,
        sessions: &[NodeSession],
        steps: &[Vec<GuestStep>],
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        events.started(what);
        step(what, run_each(sessions, steps).await)?;
        events.finished(what, started.elapsed());
        Ok(())
    }

    async fn connect_node(
        &self,
        node: &NodeRecord,
    ) -> Result<(NodeSession, NodeDocker), CoreError> {
        let endpoint = node.ssh.as_ref().ok_or_else(|| CoreError::Backend {
            backend: self.backend.name(),
            detail: format!("node {} has no SSH endpoint", node.name),
        })?;
        let control = ssh::control_dir(self.store.dir());
        std::fs::create_dir_all(&control)
            .map_err(|e| CoreError::io("cannot create", &control, e))?;
        let alive = || self.check_alive(&node.name);
        let session =
            NodeSession::wait_for(&node.name, endpoint, &control, SSH_TIMEOUT, alive).await?;
        let socket = self.store.dir().join(format!("{}.docker.sock", node.name));
        let _ = std::fs::remove_file(&socket);
        session.forward_unix(&socket, Path::new("/var/run/docker.sock")).await?;
        let docker = docker::wait_for_docker(&node.name, &socket, DOCKER_TIMEOUT, alive).await?;
        tracing::info!(node = %node.name, "docker ready");
        Ok((session, docker))
    }

    /// Fails with [`CoreError::NodeDied`] when the backend says `node` is gone.
    async fn check_alive(&self, node: &str) -> Result<(), CoreError> {
        let health = self.backend.health(&self.store).await;
        match health.into_iter().find(|h| h.node == node) {
            Some(h) if !h.alive => Err(CoreError::NodeDied { node: h.node, detail: h.detail }),
            _ => Ok(()),
        }
    }

    /// Fails with [`CoreError::NodeDied`] naming the first node that is gone.
    async fn check_all_alive(&self) -> Result<(), CoreError> {
        let health = self.backend.health(&self.store).await;
        match health.into_iter().find(|h| !h.alive) {
            Some(h) => Err(CoreError::NodeDied { node: h.node, detail: h.detail }),
            None => Ok(()),
        }
    }

    /// Delivers the application image to every node (build, load or pull).
    pub async fn deliver(&self, app: &Application, events: &dyn Events) -> Result<(), CoreError> {
        let what = match &app.source {
            ImageSource::Registry { reference } => format!("pulling {reference}"),
            ImageSource::Dockerfile { dockerfile, .. } => {
                format!("building {}", dockerfile.display())
            }
            ImageSource::Tarball { path } => format!("loading {}", path.display()),
        };
        let started = Instant::now();
        events.started(&what);
        let all = self
            .sessions
            .iter()
            .zip(&self.dockers)
            .map(|(session, docker)| deliver_to_node(session, docker, app, events));
        step(&what, try_join_all(all).await)?;
        events.finished(&what, started.elapsed());
        Ok(())
    }

    /// Runs the application's container on the master node, passing its output to
    /// `output`, and returns its exit code. With more than one node, every other node
    /// runs a waiting container of the same image for MPI's daemons, and the master's
    /// container gets what `mpirun` needs to use them (see [`crate::mpi`]). Watches the
    /// nodes meanwhile: when one dies, fails with [`CoreError::NodeDied`] naming it.
    pub async fn run(
        &mut self,
        app: &Application,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<i64, CoreError> {
        match self.run_until(app, output, None, &mut || {}, &crate::events::Quiet).await? {
            RunEnd::Exited(code) => Ok(code),
            RunEnd::Checkpointed => unreachable_checkpoint(),
        }
    }

    /// Like [`Cluster::run`], but when `checkpoint` is given and the application still
    /// runs at its time, checkpoints it and calls `on_checkpoint` first: either runs its
    /// command in the master's container and waits for the application to save its state
    /// and exit 0, or has the backend save the nodes with the application running (the
    /// cluster then has no nodes left to tear down gracefully). On a cluster restored from
    /// such a checkpoint, follows the application's container instead of starting it.
    pub async fn run_until(
        &mut self,
        app: &Application,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
        checkpoint: Option<&CheckpointAt>,
        on_checkpoint: &mut (dyn FnMut() + Send),
        events: &dyn Events,
    ) -> Result<RunEnd, CoreError> {
        let master = self.dockers.first().cloned().ok_or_else(|| CoreError::Backend {
            backend: self.backend.name(),
            detail: "the cluster has no nodes".to_string(),
        })?;
        self.store.update(|r| r.phase = Phase::Running)?;
        let container = format!("bee-{}", self.name());
        let restored = std::mem::take(&mut self.restored);
        let mut extras = ContainerExtras {
            env: mpi::environment(&self.config.network, self.dockers.len()),
            read_only: Vec::new(),
        };
        if self.dockers.len() > 1 && !restored {
            self.install_mpi_files(&container).await?;
            extras.read_only.push(mpi::BIN_DIR.to_string());
            let workers = &self.dockers[1..];
            let keepers = workers.iter().map(|d| d.start_keeper(&container, app, &extras));
            step("starting the containers of the other nodes", try_join_all(keepers).await)?;
        }
        let mut cursor = self.cursor.clone();
        let ended = {
            let run: RunningApp<'_> = match restored {
                true => Box::pin(master.follow(&container, &mut cursor, output)),
                false => Box::pin(master.run(&container, app, &extras, &mut cursor, output)),
            };
            self.watch(run, &master, &container, checkpoint, on_checkpoint).await
        };
        self.cursor = cursor;
        let saved_vm = matches!(ended, Ok(Watched::SaveVm { .. }));
        let result = match ended {
            // A broken connection usually means the node went away: say which one.
            Err(err) => Err(self.check_all_alive().await.err().unwrap_or(err)),
            Ok(Watched::Exited { code, requested: true }) if code != 0 => Err(CoreError::Step {
                step: "checkpointing the application".to_string(),
                source: Box::new(CoreError::Docker {
                    node: master.node().to_string(),
                    detail: format!(
                        "the application exited with code {code} after its checkpoint command, \
                         so its saved state is not trusted"
                    ),
                }),
            }),
            Ok(Watched::Exited { requested: true, .. }) => Ok(RunEnd::Checkpointed),
            Ok(Watched::Exited { code, requested: false }) => Ok(RunEnd::Exited(code)),
            Ok(Watched::SaveVm { into }) => {
                let what = format!("saving {} node(s) (memory, devices, disks)", self.config.nodes);
                let started = Instant::now();
                events.started(&what);
                let saved = step(&what, self.save_vm(&into, events).await);
                saved.map(|()| {
                    events.finished(&what, started.elapsed());
                    RunEnd::Checkpointed
                })
            }
        };
        // Saved nodes keep their containers, to run on after a restore.
        if result.is_ok() && !saved_vm {
            for worker in self.dockers.iter().skip(1) {
                worker.remove(&container).await;
            }
        }
        let phase = if result.is_ok() { Phase::Ready } else { Phase::Failed };
        self.store.update(|r| r.phase = phase)?;
        result
    }

    /// Waits for the application `run` while watching the nodes and the checkpoint's
    /// time.
    async fn watch(
        &self,
        mut run: RunningApp<'_>,
        master: &NodeDocker,
        container: &str,
        checkpoint: Option<&CheckpointAt>,
        on_checkpoint: &mut (dyn FnMut() + Send),
    ) -> Result<Watched, CoreError> {
        let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86400);
        let checkpoint_at = checkpoint.map(|c| c.at).unwrap_or(far);
        let mut exit_by: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            tokio::select! {
                result = &mut run => {
                    return result.map(|code| Watched::Exited { code, requested: exit_by.is_some() })
                }
                _ = ticker.tick() => self.check_all_alive().await?,
                _ = tokio::time::sleep_until(checkpoint_at), if exit_by.is_none() => {
                    let Some(checkpoint) = checkpoint else { continue };
                    match &checkpoint.how {
                        CheckpointHow::Application { request, timeout } => {
                            request_checkpoint(master, container, request).await?;
                            on_checkpoint();
                            exit_by = Some((tokio::time::Instant::now() + *timeout, *timeout));
                        }
                        CheckpointHow::Vm { into } => {
                            on_checkpoint();
                            return Ok(Watched::SaveVm { into: into.clone() });
                        }
                    }
                }
                _ = tokio::time::sleep_until(exit_by.map(|e| e.0).unwrap_or(far)), if exit_by.is_some() => {
                    return Err(CoreError::Timeout {
                        node: master.node().to_string(),
                        awaited: "the application to save its state and exit after its \
                                  checkpoint command (checkpoint.timeout)"
                            .to_string(),
                        timeout: exit_by.map(|e| e.1).unwrap_or_default(),
                    });
                }
            }
        }
    }

    /// Has the backend save every node into `into` (replaced), with bee's own part of the
    /// checkpoint written last. The connections to the nodes are closed first: the guests
    /// stop for good here.
    async fn save_vm(&mut self, into: &Path, events: &dyn Events) -> Result<(), CoreError> {
        remove_dir(into)?;
        std::fs::create_dir_all(into).map_err(|e| CoreError::io("cannot create", into, e))?;
        for session in self.sessions.drain(..) {
            session.close().await;
        }
        self.dockers.clear();
        self.backend.checkpoint(&mut self.store, into, events).await?;
        let saved = VmCheckpoint { nodes: self.config.nodes, output_cursor: self.cursor.0.clone() };
        saved.write(into)
    }

    /// Sets where teardown collects the shared directory to, for a run that decides only
    /// at its end whether the data is a checkpoint or a result.
    /// `None` collects nothing.
    pub fn collect_into(&mut self, output: Option<PathBuf>) -> Result<(), CoreError> {
        self.store.update(|r| {
            if let Some(storage) = r.storage.as_mut() {
                storage.output = output;
                storage.keep = false;
            }
        })
    }

    /// Sets teardown to keep the shared directory in `into` as a checkpoint, in the form
    /// the storage moves fastest ([`Storage::keep`]), instead of collecting it.
    pub fn keep_into(&mut self, into: PathBuf) -> Result<(), CoreError> {
        self.store.update(|r| {
            if let Some(storage) = r.storage.as_mut() {
                storage.output = Some(into);
                storage.keep = true;
            }
        })
    }

    /// Writes the hostfile, the rsh agent and the keys of [`crate::mpi`] on every node.
    async fn install_mpi_files(&self, container: &str) -> Result<(), CoreError> {
        let record = self.store.record();
        let mut nodes = Vec::new();
        for (node, address) in record.nodes.iter().zip(&self.addresses) {
            let endpoint = self.endpoint(node)?;
            let known = std::fs::read_to_string(&endpoint.known_hosts)
                .map_err(|e| CoreError::io("cannot read", &endpoint.known_hosts, e))?;
            let host_key = known.split_once(' ').map(|(_, key)| key.trim()).unwrap_or_default();
            nodes.push(MpiNode {
                address: *address,
                slots: self.config.hardware.cpus,
                host_key: host_key.to_string(),
            });
        }
        let key_file = &self.endpoint(&record.nodes[0])?.key;
        let client_key = std::fs::read_to_string(key_file)
            .map_err(|e| CoreError::io("cannot read", key_file, e))?;
        let mut script = format!("install -d -m 0755 {}", mpi::BIN_DIR);
        for file in mpi::bin_files(&nodes, container, &client_key) {
            let path = format!("{}/{}", mpi::BIN_DIR, file.name);
            script.push_str(&format!(
                " && echo {} | base64 -d > {path} && chmod {:o} {path}",
                base64(file.contents.as_bytes()),
                file.mode
            ));
        }
        // Every node needs the agent: OpenMPI's daemons check that the path they are given
        // exists, even though only the master's uses it.
        let what = "writing the MPI hostfile and launcher";
        let command = sudo(&script);
        let all = self.sessions.iter().map(|session| session.run_checked(what, &command));
        step(what, try_join_all(all).await).map(|_| ())
    }

    fn endpoint<'a>(&self, node: &'a NodeRecord) -> Result<&'a SshEndpoint, CoreError> {
        node.ssh.as_ref().ok_or_else(|| CoreError::Backend {
            backend: self.backend.name(),
            detail: format!("node {} has no SSH endpoint", node.name),
        })
    }

    fn mark_failed(&mut self) {
        if let Err(err) = self.store.update(|r| r.phase = Phase::Failed) {
            tracing::warn!(error = %err, "cannot record the failure");
        }
    }

    /// Closes the connections and leaves the cluster running, for `bee up`; a later
    /// process finds it by its record.
    pub async fn detach(mut self) {
        for session in self.sessions.drain(..) {
            session.close().await;
        }
    }

    /// Closes the connections, tears the nodes down, collects the shared directory into
    /// `storage.output` and removes the record.
    pub async fn down(mut self, events: &dyn Events) -> Result<(), CoreError> {
        for session in self.sessions.drain(..) {
            session.close().await;
        }
        self.dockers.clear();
        teardown(self.backend.as_ref(), self.store, self.storage.as_deref(), events).await
    }
}

/// Tears down the cluster recorded in `store`, collects its shared directory with
/// `storage` when the record names an output (or keeps it there as a checkpoint, when the
/// record says so), and removes the record. When collecting
/// fails, the record and the data stay, so that `bee down` can try again.
pub async fn teardown(
    backend: &dyn Backend,
    mut store: RecordStore,
    storage: Option<&dyn Storage>,
    events: &dyn Events,
) -> Result<(), CoreError> {
    let what = format!("stopping cluster {}", store.record().name);
    let started = Instant::now();
    events.started(&what);
    store.update(|r| r.phase = Phase::Stopping)?;
    backend.teardown(&mut store, events).await?;
    events.finished(&what, started.elapsed());
    let record = store.record().storage.clone();
    let (output, keep) = record.map(|s| (s.output, s.keep)).unwrap_or_default();
    if let (Some(storage), Some(output)) = (storage, output) {
        let moved = match keep {
            true => storage.keep(store.dir(), &output, events).await,
            false => {
                let spec = StorageSpec { mode: storage.mode(), input: None, output: Some(output) };
                storage.collect(&spec, store.dir(), events).await
            }
        };
        if let Err(err) = moved {
            store.update(|r| r.phase = Phase::Failed)?;
            let step = "collecting the shared directory (the data stays until `bee down` \
                        succeeds)";
            return Err(CoreError::Step { step: step.to_string(), source: Box::new(err) });
        }
    }
    store.remove()
}

async fn deliver_to_node(
    session: &NodeSession,
    docker: &NodeDocker,
    app: &Application,
    events: &dyn Events,
) -> Result<(), CoreError> {
    match &app.source {
        ImageSource::Registry { reference } => {
            if let Some(port) = docker::local_registry_port(reference) {
                session.forward_port_to_host(port).await?;
            }
            docker.pull(reference, events).await?;
            if reference != &app.image {
                return Err(CoreError::Docker {
                    node: docker.node().to_string(),
                    detail: format!("pulled {reference} but the container needs {}", app.image),
                });
            }
        }
        ImageSource::Dockerfile { dockerfile, context } => {
            if !docker.has_image(BASE_IMAGE).await? {
                events.detail(&format!("{}: importing {BASE_IMAGE}", docker.node()));
                session
                    .run_checked(
                        &format!("importing {BASE_IMAGE}"),
                        &format!("docker import {BASE_TARBALL} {BASE_IMAGE}"),
                    )
                    .await?;
            }
            docker.build(dockerfile, context, &app.image, events).await?;
        }
        ImageSource::Tarball { path } => {
            docker.load(path, events).await?;
            if !docker.has_image(&app.image).await? {
                return Err(CoreError::Docker {
                    node: docker.node().to_string(),
                    detail: format!(
                        "{} does not hold an image tagged {}: check application.tag",
                        path.display(),
                        app.image
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The application's container, followed until it exits with its code.
type RunningApp<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, CoreError>> + Send + 'a>>;

/// How watching a running application ended.
enum Watched {
    /// The application exited; `requested` when after its checkpoint command.
    Exited { code: i64, requested: bool },
    /// The time of a VM-level checkpoint came.
    SaveVm { into: PathBuf },
}

/// Runs the checkpoint command in the master's container; a command that fails is an
/// error, since the application was then not told to save its state.
async fn request_checkpoint(
    master: &NodeDocker,
    container: &str,
    request: &CheckpointRequest,
) -> Result<(), CoreError> {
    let command = match request {
        CheckpointRequest::Command(command) => command,
        CheckpointRequest::Signal(signal) => {
            let what = format!("sending {signal} to the application for its checkpoint");
            step(&what, master.signal(container, signal).await)?;
            tracing::info!(node = %master.node(), signal, "checkpoint signal sent");
            return Ok(());
        }
    };
    let what = "running the checkpoint command".to_string();
    let (code, output) = step(&what, master.exec(container, command).await)?;
    if code != 0 {
        return Err(CoreError::Step {
            step: what,
            source: Box::new(CoreError::Docker {
                node: master.node().to_string(),
                detail: format!("{command:?} exited with code {code}: {output}"),
            }),
        });
    }
    tracing::info!(node = %master.node(), "checkpoint command sent");
    Ok(())
}

/// [`Cluster::run`] passes no checkpoint, so its run cannot end in one.
fn unreachable_checkpoint() -> Result<i64, CoreError> {
    Err(CoreError::Backend { backend: "core", detail: "checkpointed without a request".into() })
}

/// Finds `count` distinct free TCP ports on 127.0.0.1. They are free when found; a
/// process that takes one meanwhile makes QEMU fail to start, which names the port.
/// The names of the nodes of `config`'s cluster, the master first.
fn node_names(config: &Config) -> Vec<String> {
    (0..config.nodes).map(|i| format!("{}-{i}", config.name)).collect()
}

fn free_ports(count: usize) -> Result<Vec<u16>, CoreError> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<_, _>>()
        .map_err(|e| CoreError::io("cannot find free ports on", "127.0.0.1", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| CoreError::io("cannot find free ports on", "127.0.0.1", e))
}

/// Removes a directory tree; a missing one is fine.
fn remove_dir(dir: &Path) -> Result<(), CoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io("cannot remove", dir, e)),
    }
}

/// Wraps an error with the launch step it broke.
fn step<T>(what: &str, result: Result<T, CoreError>) -> Result<T, CoreError> {
    result.map_err(|err| CoreError::Step { step: what.to_string(), source: Box::new(err) })
}

/// Runs `steps[i]` on `sessions[i]`, all sessions at once.
async fn run_each(sessions: &[NodeSession], steps: &[Vec<GuestStep>]) -> Result<(), CoreError> {
    let all = sessions.iter().zip(steps).map(|(session, steps)| async move {
        for step in steps {
            session.run_checked(&step.what, &sudo(&step.command)).await?;
        }
        Ok::<(), CoreError>(())
    });
    try_join_all(all).await.map(|_| ())
}

/// A command line that runs `script` as root through `sh -c`.
fn sudo(script: &str) -> String {
    format!("sudo sh -c '{}'", script.replace('\'', r"'\''"))
}

/// Standard base64, for passing files through a command line.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |w, (i, b)| w | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(word >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar\n"), "Zm9vYmFyCg==");
    }

    #[test]
    fn sudo_quotes_single_quotes() {
        assert_eq!(sudo("echo 'a b'"), r"sudo sh -c 'echo '\''a b'\'''");
    }
}
