//! Turns configurations and cluster records into the libraries' objects: the one place
//! that knows which crate implements which `bee.toml` choice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use bee_core::cluster::{self, ClusterBuilder};
use bee_core::config::{BackendKind, Hosts, StorageMode};
use bee_core::events::Events;
use bee_core::record::RecordStore;
use bee_core::runs::RunStore;
use bee_core::traits::{Backend, Storage};
use bee_core::{paths, Config, CoreError};
use bee_vm::{ImageInputs, VmBackend};

/// A builder for the cluster of `config` on its platform `index` (the first for `bee up`;
/// a configuration without platforms runs on this machine): the VM backend on the
/// platform's hosts, the network of `[network]` when there is more than one node, and the
/// storage of `[storage]`.
pub fn builder(config: &Config, index: usize) -> ClusterBuilder {
    let hosts = config.platforms.get(index).map_or(Hosts::Local, |p| p.hosts.clone());
    let backend = VmBackend::from_cache(paths::cache_dir(), ImageInputs::from_env());
    let backend = Arc::new(backend.on_hosts(hosts));
    let mut builder = ClusterBuilder::new(backend, paths::clusters_dir());
    if config.nodes > 1 {
        builder = builder.network(bee_net::for_mode(config.network.mode));
    }
    if let Some(spec) = &config.storage {
        builder = builder.storage(bee_storage::for_mode(spec.mode));
    }
    builder
}

/// A `bee up` of one configuration: starts its cluster on the first platform, and when
/// the caller gives up on it (Ctrl-C), tears down what it had started.
pub struct Up {
    name: String,
    /// Whether no cluster of that name existed before: only then is a record of that name
    /// this up's to tear down.
    was_free: bool,
}

impl Up {
    /// Notes whether a cluster named as `config` says exists already.
    pub fn new(config: &Config) -> Result<Up> {
        let name = config.name.clone();
        let was_free = !RecordStore::list(&paths::clusters_dir())?.contains(&name);
        Ok(Up { name, was_free })
    }

    /// Starts the cluster and leaves it running; returns its name.
    pub async fn start(&self, config: &Config, events: &dyn Events) -> Result<String> {
        let cluster = builder(config, 0)
            .up(config, events)
            .await
            .with_context(|| format!("cannot start cluster {}", self.name))?;
        let name = cluster.name().to_string();
        cluster.detach().await;
        Ok(name)
    }

    /// After [`Up::start`] was dropped before it ended: tears down what it had started.
    pub async fn interrupted(&self, events: &dyn Events) -> Result<()> {
        if self.was_free && RecordStore::list(&paths::clusters_dir())?.contains(&self.name) {
            tear_down(&self.name, events).await?;
        }
        Ok(())
    }
}

/// Stops cluster `name` and removes everything its record lists, collecting its shared
/// directory where the record says.
pub async fn tear_down(name: &str, events: &dyn Events) -> Result<()> {
    let store = RecordStore::open(&paths::clusters_dir(), name)?;
    let backend = recorded_backend(&store)?;
    let storage = recorded_storage(&store)?;
    cluster::teardown(backend.as_ref(), store, storage.as_deref(), events)
        .await
        .with_context(|| format!("cannot tear down cluster {name}"))
}

/// A configuration given to `bee run` without an `[application]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: [application] is missing: `bee run` needs an image and a command (`bee up` starts \
     a cluster without one)",
    file.display()
)]
pub struct NoApplication {
    /// The configuration file.
    pub file: PathBuf,
}

/// Reads a configuration that `bee run` can run: one with an `[application]`.
pub fn load_for_run(file: &Path) -> Result<Config> {
    let config = Config::load(file)?;
    if config.application.is_none() {
        return Err(NoApplication { file: file.to_path_buf() }.into());
    }
    Ok(config)
}

/// The platforms of this bee, for the orchestrator: every `[[platform]]` entry is the VM
/// backend on its hosts; a Slurm platform is unavailable outside an allocation, a host
/// list when one of its hosts does not answer over SSH.
pub struct VmPlatforms;

#[async_trait::async_trait]
impl bee_core::orchestrator::Platforms for VmPlatforms {
    fn builder(&self, config: &Config, index: usize) -> Result<ClusterBuilder, CoreError> {
        Ok(builder(config, index))
    }

    fn supports(&self, config: &Config, index: usize) -> Result<(), CoreError> {
        match config.platforms.get(index).map(|p| p.backend) {
            None | Some(BackendKind::Vm) => Ok(()),
            Some(other) => Err(CoreError::Unsupported {
                what: format!(
                    "{}: platform[{index}].backend = {:?}",
                    config.file.display(),
                    other.name()
                ),
                instead: "this bee has only the VM backend (bee-aws and bee-chameleon are \
                          placeholders); use backend = \"vm\""
                    .to_string(),
            }),
        }
    }

    async fn unavailable(&self, config: &Config, index: usize) -> Option<String> {
        match config.platforms.get(index).map(|p| &p.hosts) {
            Some(Hosts::Slurm) => bee_vm::slurm::unavailable(),
            Some(Hosts::List(entries)) => {
                bee_vm::ssh_hosts::reach(entries).await.err().map(|e| e.to_string())
            }
            _ => None,
        }
    }

    fn recorded(
        &self,
        store: &RecordStore,
    ) -> Result<(Arc<dyn Backend>, Option<Box<dyn Storage>>), CoreError> {
        let backend = recorded_backend(store).map_err(|e| CoreError::Unsupported {
            what: format!("tearing down cluster {}", store.record().name),
            instead: e.to_string(),
        })?;
        let storage = recorded_storage(store).map_err(|e| CoreError::Unsupported {
            what: format!("collecting cluster {}", store.record().name),
            instead: e.to_string(),
        })?;
        Ok((backend, storage))
    }
}

/// An `ssh` to `node` of cluster `cluster` (a node name or index; the master, node 0, by
/// default) with the cluster's key and the node's pinned host key; the caller adds the
/// command to run there, or none for a shell.
pub fn ssh_command(cluster: &str, node: Option<&str>) -> Result<std::process::Command> {
    let store = RecordStore::open(&paths::clusters_dir(), cluster)?;
    let nodes = &store.record().nodes;
    let wanted = node.unwrap_or("0");
    let found = nodes
        .iter()
        .enumerate()
        .find(|(index, n)| n.name == wanted || index.to_string() == wanted)
        .map(|(_, n)| n);
    let node = found.ok_or_else(|| {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        anyhow!(
            "cluster {cluster} has no node {wanted:?}: expected an index from 0 to {} or one of \
             {}",
            nodes.len().saturating_sub(1),
            names.join(", ")
        )
    })?;
    let endpoint =
        node.ssh.as_ref().ok_or_else(|| anyhow!("node {} has no SSH endpoint yet", node.name))?;
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-F")
        .arg("/dev/null")
        .arg("-i")
        .arg(&endpoint.key)
        .arg("-p")
        .arg(endpoint.port.to_string())
        .arg("-o")
        .arg("StrictHostKeyChecking=yes")
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", endpoint.known_hosts.display()))
        .arg("-o")
        .arg("LogLevel=ERROR")
        .arg(format!("{}@{}", endpoint.user, endpoint.host));
    Ok(ssh)
}

/// The storage of a recorded cluster, for collecting its results at teardown.
pub fn recorded_storage(store: &RecordStore) -> Result<Option<Box<dyn Storage>>> {
    let Some(record) = &store.record().storage else { return Ok(None) };
    let mode = StorageMode::from_name(&record.mode).ok_or_else(|| {
        anyhow!(
            "cluster {} uses storage {:?}, which this bee does not have",
            store.record().name,
            record.mode
        )
    })?;
    Ok(Some(bee_storage::for_mode(mode)))
}

/// The backend that made a recorded cluster, for status and teardown.
pub fn recorded_backend(store: &RecordStore) -> Result<Arc<dyn Backend>> {
    match store.record().backend.as_str() {
        "vm" => Ok(Arc::new(VmBackend::new())),
        other => Err(anyhow!(
            "cluster {} was made by backend {other:?}, which this bee does not have",
            store.record().name
        )),
    }
}

/// Every recorded cluster with its nodes' health, and every run with its phase.
pub struct Status {
    /// One object per cluster: name, backend, phase, config, created, notes, directory
    /// and nodes (name, ssh_port, alive, detail).
    pub clusters: Vec<serde_json::Value>,
    /// The runs of the run database.
    pub runs: Vec<bee_core::runs::Run>,
}

impl Status {
    /// What `bee status --json` prints (schema version 1).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "version": 1, "clusters": self.clusters, "runs": self.runs })
    }
}

/// Reads the cluster records and the run database, and asks each cluster's backend how
/// its nodes are.
pub async fn status() -> Result<Status> {
    let clusters_dir = paths::clusters_dir();
    let mut clusters = Vec::new();
    for name in RecordStore::list(&clusters_dir)? {
        let store = RecordStore::open(&clusters_dir, &name)?;
        let health = match recorded_backend(&store) {
            Ok(backend) => backend.health(&store).await,
            Err(_) => Vec::new(),
        };
        let record = store.record();
        let nodes: Vec<serde_json::Value> = record
            .nodes
            .iter()
            .map(|node| {
                let h = health.iter().find(|h| h.node == node.name);
                serde_json::json!({
                    "name": node.name,
                    "ssh_port": node.ssh.as_ref().map(|s| s.port),
                    "alive": h.map(|h| h.alive),
                    "detail": h.map(|h| h.detail.clone()),
                })
            })
            .collect();
        clusters.push(serde_json::json!({
            "name": record.name,
            "backend": record.backend,
            "phase": record.phase,
            "config": record.config,
            "created": record.created,
            "notes": record.notes,
            "directory": store.dir(),
            "nodes": nodes,
        }));
    }
    let runs = RunStore::open(&paths::state_dir())?.list()?;
    Ok(Status { clusters, runs })
}
