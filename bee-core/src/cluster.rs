//! The one cluster builder (the paper's Algorithm 2): composes a [`Backend`], a
//! [`Network`] and a [`Storage`] into a running cluster, delivers the application image
//! and runs it.
//!
//! Launch is a sequence of steps; when one fails, everything the record holds is torn
//! down and the error names the step. A [`Cluster`] can also be found again from a fresh
//! process by its name, to be torn down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use crate::config::{Application, Config, ImageSource};
use crate::docker::{self, NodeDocker, OutputStream, BASE_IMAGE, BASE_TARBALL, SHARED_DIR};
use crate::error::CoreError;
use crate::events::Events;
use crate::record::{NodeRecord, Phase, RecordStore};
use crate::ssh::{self, NodeSession};
use crate::traits::{Backend, ClusterPlan, Network, Storage};

/// How long a node may take from process start to answering SSH.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(600);
/// How long Docker may take to answer once SSH does.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a running application's nodes are checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

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
        self.check(config)?;
        let store = RecordStore::create(
            &self.clusters_dir,
            &config.name,
            self.backend.name(),
            &config.file,
        )?;
        let mut cluster = Cluster {
            backend: self.backend.clone(),
            store,
            sessions: Vec::new(),
            dockers: Vec::new(),
        };
        match cluster.launch(config, self.network.as_deref(), events).await {
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
    store: RecordStore,
    sessions: Vec<NodeSession>,
    dockers: Vec<NodeDocker>,
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
        config: &Config,
        network: Option<&dyn Network>,
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        let node_names: Vec<String> =
            (0..config.nodes).map(|i| format!("{}-{i}", config.name)).collect();
        let networks = match network {
            Some(network) => {
                let ports = free_ports(network.ports_needed(config.nodes))?;
                let hosts = vec![std::net::Ipv4Addr::LOCALHOST; config.nodes as usize];
                let request = crate::traits::NetworkRequest {
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
        let plan = ClusterPlan { config, node_names, networks, storages: Vec::new() };

        let what = format!("starting {} node(s)", config.nodes);
        let started = Instant::now();
        events.started(&what);
        let nodes = step(&what, self.backend.provision(&plan, &mut self.store, events).await)?;
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

        let mkdir = format!("sudo install -d -o bee -g bee {SHARED_DIR}");
        let prepare = try_join_all(
            self.sessions
                .iter()
                .map(|session| session.run_checked("creating the shared directory", &mkdir)),
        );
        step("preparing the nodes", prepare.await)?;
        self.store.update(|r| r.phase = Phase::Ready)
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
    /// `output`, and returns its exit code. Watches the nodes meanwhile: when one dies,
    /// fails with [`CoreError::NodeDied`] naming it.
    pub async fn run(
        &mut self,
        app: &Application,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<i64, CoreError> {
        let master = self.dockers.first().cloned().ok_or_else(|| CoreError::Backend {
            backend: self.backend.name(),
            detail: "the cluster has no nodes".to_string(),
        })?;
        self.store.update(|r| r.phase = Phase::Running)?;
        let container = format!("bee-{}", self.name());
        let result = {
            let run = master.run(&container, app, output);
            tokio::pin!(run);
            let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
            loop {
                tokio::select! {
                    result = &mut run => break result,
                    _ = ticker.tick() => {
                        if let Err(err) = self.check_all_alive().await {
                            break Err(err);
                        }
                    }
                }
            }
        };
        let result = match result {
            // A broken connection usually means the node went away: say which one.
            Err(err) => Err(self.check_all_alive().await.err().unwrap_or(err)),
            ok => ok,
        };
        let phase = if result.is_ok() { Phase::Ready } else { Phase::Failed };
        self.store.update(|r| r.phase = phase)?;
        result
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

    /// Closes the connections, tears the nodes down and removes the record.
    pub async fn down(mut self, events: &dyn Events) -> Result<(), CoreError> {
        for session in self.sessions.drain(..) {
            session.close().await;
        }
        self.dockers.clear();
        teardown(self.backend.as_ref(), self.store, events).await
    }
}

/// Tears down the cluster recorded in `store` and removes its record.
pub async fn teardown(
    backend: &dyn Backend,
    mut store: RecordStore,
    events: &dyn Events,
) -> Result<(), CoreError> {
    let what = format!("stopping cluster {}", store.record().name);
    let started = Instant::now();
    events.started(&what);
    store.update(|r| r.phase = Phase::Stopping)?;
    backend.teardown(&mut store, events).await?;
    store.remove()?;
    events.finished(&what, started.elapsed());
    Ok(())
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

/// Finds `count` distinct free TCP ports on 127.0.0.1. They are free when found; a
/// process that takes one meanwhile makes QEMU fail to start, which names the port.
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

/// Wraps an error with the launch step it broke.
fn step<T>(what: &str, result: Result<T, CoreError>) -> Result<T, CoreError> {
    result.map_err(|err| CoreError::Step { step: what.to_string(), source: Box::new(err) })
}
