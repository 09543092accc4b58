//! The three traits a cluster is composed of: [`Backend`], [`Network`] and [`Storage`].
//!
//! A `Network` and a `Storage` only plan: they say which devices each node needs (NICs,
//! shares, disks) and which commands turn them into one subnet and one shared directory
//! inside the guests. A `Backend` turns the plans into running nodes (for the VM backend:
//! QEMU command lines) and tears them down again. The cluster builder in
//! [`crate::cluster`] composes one of each.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::config::{Config, NetworkMode, NetworkSpec, StorageMode, StorageSpec};
use crate::error::CoreError;
use crate::events::Events;
use crate::record::{NodeRecord, RecordStore};

/// A command run as root inside a guest (over SSH, with `sudo`), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestStep {
    /// What the step does, for progress and errors.
    pub what: String,
    /// The shell command.
    pub command: String,
}

/// One data-plane NIC of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// A member of a multicast group (a hub: every member sees every frame).
    Multicast {
        /// Group address and port.
        group: SocketAddr,
        /// Unique MAC address.
        mac: [u8; 6],
    },
    /// The listening end of a point-to-point link.
    Listen {
        /// Address to listen on.
        addr: SocketAddr,
        /// Unique MAC address.
        mac: [u8; 6],
    },
    /// The connecting end of a point-to-point link.
    Connect {
        /// Address of the listening end.
        addr: SocketAddr,
        /// Unique MAC address.
        mac: [u8; 6],
    },
}

/// What a network plans for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The node's data-plane address.
    pub address: Ipv4Addr,
    /// Its data-plane NICs, in the order they are attached.
    pub nics: Vec<Nic>,
    /// Commands that configure them inside the guest (bridges, the address).
    pub guest_steps: Vec<GuestStep>,
}

/// What a network needs to know to plan a cluster's data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest<'a> {
    /// The `[network]` section.
    pub spec: &'a NetworkSpec,
    /// The cluster's name, to keep its multicast group and MACs apart from other clusters'.
    pub cluster: &'a str,
    /// Number of nodes; node 0 is the master.
    pub nodes: u32,
    /// For each node, the address of the host it runs on: a node listens there, and its
    /// peers connect there.
    pub hosts: &'a [Ipv4Addr],
    /// Free ports on the hosts, at least [`Network::ports_needed`] of them; a network uses
    /// them in order.
    pub ports: &'a [u16],
}

/// Plans the data-plane network of a cluster (paper section III-A).
pub trait Network: Send + Sync {
    /// The mode this network implements.
    fn mode(&self) -> NetworkMode;

    /// How many host ports a cluster of `nodes` nodes needs.
    fn ports_needed(&self, nodes: u32) -> usize;

    /// Plans NICs and guest steps for every node, in node order.
    fn plan(&self, request: &NetworkRequest<'_>) -> Result<Vec<NodeNetwork>, CoreError>;
}

/// A device a storage needs attached to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageDevice {
    /// A host directory shared into the guest under a mount tag.
    Share {
        /// Host directory.
        path: PathBuf,
        /// Tag the guest mounts it by.
        tag: String,
    },
    /// An extra disk image.
    Disk {
        /// Image file.
        path: PathBuf,
    },
}

/// What a storage plans for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStorage {
    /// Devices to attach.
    pub devices: Vec<StorageDevice>,
    /// Commands that mount the shared directory inside the guest.
    pub guest_steps: Vec<GuestStep>,
}

/// Prepares and plans the shared directory of a cluster (paper section III-B).
#[async_trait]
pub trait Storage: Send + Sync {
    /// The mode this storage implements.
    fn mode(&self) -> StorageMode;

    /// Creates host-side state in `dir` (an export directory, a data image filled with
    /// `spec.input`) and plans devices and guest steps for every node. `addresses` are
    /// the nodes' data-plane addresses, in node order (node 0 is the master). The
    /// builder runs the master's guest steps before the other nodes' steps, and every
    /// node's network steps before any storage step.
    async fn prepare(
        &self,
        spec: &StorageSpec,
        addresses: &[Ipv4Addr],
        dir: &Path,
        events: &dyn Events,
    ) -> Result<Vec<NodeStorage>, CoreError>;

    /// Copies what the nodes left in the shared directory into `spec.output`, after the
    /// nodes have stopped, without booting anything.
    async fn collect(
        &self,
        spec: &StorageSpec,
        dir: &Path,
        events: &dyn Events,
    ) -> Result<(), CoreError>;

    /// Moves what the nodes left in the shared directory of the cluster directory `dir`
    /// into the directory `into`, after the nodes have stopped, as a checkpoint that
    /// [`Storage::prepare`] of any mode takes back as `spec.input` on the next platform.
    /// By default the files are collected into `into` as into an output; a storage whose
    /// data is one file moves that file instead. It may be called again after an
    /// interruption, also once it had completed.
    async fn keep(&self, dir: &Path, into: &Path, events: &dyn Events) -> Result<(), CoreError> {
        let spec = StorageSpec { mode: self.mode(), input: None, output: Some(into.into()) };
        self.collect(&spec, dir, events).await
    }
}

/// Everything a backend needs to bring up the nodes of one cluster.
#[derive(Debug, Clone)]
pub struct ClusterPlan<'a> {
    /// The validated configuration.
    pub config: &'a Config,
    /// Node names; index 0 is the master.
    pub node_names: Vec<String>,
    /// The data-plane network of each node; empty when the cluster has one node.
    pub networks: Vec<NodeNetwork>,
    /// The storage of each node; empty when the cluster has no shared storage.
    pub storages: Vec<NodeStorage>,
    /// The address of the host each node runs on, from [`Backend::host_addresses`].
    pub hosts: Vec<Ipv4Addr>,
}

/// Whether a node is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// Node name.
    pub node: String,
    /// True when the node's process or instance is running.
    pub alive: bool,
    /// A short description, such as "qemu pid 4242 running" or why it is gone.
    pub detail: String,
}

/// Brings up nodes that answer SSH and run Docker, and tears them down again.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The backend's name in `bee.toml`, such as `vm`.
    fn name(&self) -> &'static str;

    /// The address of the host each of `nodes` nodes will run on, which the network
    /// plans its links between. By default every node runs on this host.
    async fn host_addresses(&self, nodes: usize) -> Result<Vec<Ipv4Addr>, CoreError> {
        Ok(vec![Ipv4Addr::LOCALHOST; nodes])
    }

    /// Starts every node of `plan` and returns once each answers SSH. Every resource is
    /// added to `store` before it is created. On error the caller tears down whatever
    /// the record holds.
    async fn provision(
        &self,
        plan: &ClusterPlan<'_>,
        store: &mut RecordStore,
        events: &dyn Events,
    ) -> Result<Vec<NodeRecord>, CoreError>;

    /// Says, for each node of the record, whether it is still running.
    async fn health(&self, store: &RecordStore) -> Vec<NodeHealth>;

    /// Saves the whole state of every node of the record (memory, devices, disks and what
    /// the guest needs to look the same) into `into`, and stops the nodes without shutting
    /// their guests down: a VM-level checkpoint, for applications that cannot save their
    /// own state. What is moved into `into` is no longer the cluster's to remove. By
    /// default a backend cannot do this.
    async fn checkpoint(
        &self,
        _store: &mut RecordStore,
        _into: &Path,
        _events: &dyn Events,
    ) -> Result<(), CoreError> {
        Err(CoreError::Unsupported {
            what: format!("a VM-level checkpoint on backend {}", self.name()),
            instead: "add [checkpoint], so that the application saves its own state".into(),
        })
    }

    /// Starts the nodes of `plan` from the state [`Backend::checkpoint`] saved in `from`,
    /// which stays as it is, and returns once each answers SSH, like
    /// [`Backend::provision`]. The guests continue where they stopped: their storage
    /// comes from the checkpoint, so `plan.storages` is not used, and only the links
    /// between them and their SSH ports are new.
    async fn restore(
        &self,
        _plan: &ClusterPlan<'_>,
        _from: &Path,
        _store: &mut RecordStore,
        _events: &dyn Events,
    ) -> Result<Vec<NodeRecord>, CoreError> {
        Err(CoreError::Unsupported {
            what: format!("restoring a VM-level checkpoint on backend {}", self.name()),
            instead: "move the run to a platform with backend = \"vm\"".into(),
        })
    }

    /// Stops and removes everything the record holds: gracefully first, then by force.
    /// Works from a fresh process and after a crash; resources already gone are fine.
    async fn teardown(&self, store: &mut RecordStore, events: &dyn Events)
        -> Result<(), CoreError>;
}
