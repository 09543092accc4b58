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

/// Plans the data-plane network of a cluster (paper section III-A).
pub trait Network: Send + Sync {
    /// The mode this network implements.
    fn mode(&self) -> NetworkMode;

    /// Plans NICs and guest steps for `nodes` nodes; node 0 is the master. `host_of`
    /// gives the address of the host node `i` runs on, for links between hosts.
    fn plan(
        &self,
        spec: &NetworkSpec,
        nodes: u32,
        host_of: &dyn Fn(u32) -> Ipv4Addr,
    ) -> Result<Vec<NodeNetwork>, CoreError>;
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
    /// the input) and plans devices and guest steps for `nodes` nodes.
    async fn prepare(
        &self,
        spec: &StorageSpec,
        nodes: u32,
        dir: &Path,
        events: &dyn Events,
    ) -> Result<Vec<NodeStorage>, CoreError>;

    /// Copies the results into `spec.output` after the run.
    async fn collect(&self, spec: &StorageSpec, dir: &Path) -> Result<(), CoreError>;
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

    /// Stops and removes everything the record holds: gracefully first, then by force.
    /// Works from a fresh process and after a crash; resources already gone are fine.
    async fn teardown(&self, store: &mut RecordStore, events: &dyn Events)
        -> Result<(), CoreError>;
}
