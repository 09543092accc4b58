//! The on-disk record of a cluster: what was started where.
//!
//! A backend adds each resource (a process, a file, a socket, a port) to the record and
//! saves it *before* creating the resource, so that a fresh process — `bee status`,
//! `bee down`, or the next `bee up` after a crash — can find and remove everything. The
//! record is JSON, written to a temporary file and renamed into place, so a crash never
//! leaves half a record.
//!
//! # Limitations
//!
//! Two bee processes changing the same cluster at once are not serialized against each
//! other; the cluster directory is created exclusively, so two `bee up` of the same name
//! cannot both succeed.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Version of the record format; bumped when a field changes meaning.
pub const RECORD_VERSION: u32 = 1;

/// Where a cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Resources are being created.
    Starting,
    /// Every node answers and Docker is ready.
    Ready,
    /// The application is running.
    Running,
    /// Teardown has begun.
    Stopping,
    /// Launch or the run failed; teardown is needed.
    Failed,
}

/// Something a backend created that teardown must remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Resource {
    /// A process on this host, such as a QEMU.
    Process {
        /// The node it belongs to.
        node: String,
        /// What it is, such as `qemu`.
        what: String,
        /// Its process ID, once known.
        pid: Option<u32>,
        /// Its start time in clock ticks since boot (from `/proc/PID/stat`), so that a
        /// reused PID is never mistaken for it.
        start_time: Option<u64>,
        /// A QMP socket to ask it to stop gracefully.
        qmp: Option<PathBuf>,
    },
    /// A file or directory on this host.
    Path {
        /// The node it belongs to, or `cluster`.
        node: String,
        /// What it is, such as `overlay`.
        what: String,
        /// Where it is.
        path: PathBuf,
    },
    /// A TCP port on 127.0.0.1 forwarded into a node.
    Port {
        /// The node it leads to.
        node: String,
        /// What it carries, such as `ssh`.
        what: String,
        /// The port.
        port: u16,
    },
}

/// How to reach a node over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key file (mode 0600).
    pub key: PathBuf,
    /// Known-hosts file holding exactly this node's pinned host key.
    pub known_hosts: PathBuf,
}

/// One node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name, such as `ring-0`; node 0 is the master.
    pub name: String,
    /// SSH access, once assigned.
    pub ssh: Option<SshEndpoint>,
}

/// The record of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Record format version.
    pub version: u32,
    /// Cluster name.
    pub name: String,
    /// Backend name, such as `vm`.
    pub backend: String,
    /// The configuration file the cluster was made from.
    pub config: PathBuf,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Life-cycle phase.
    pub phase: Phase,
    /// Accelerator or other backend facts worth showing, such as `tcg`.
    pub notes: Vec<String>,
    /// The nodes.
    pub nodes: Vec<NodeRecord>,
    /// What teardown must remove, in creation order.
    pub resources: Vec<Resource>,
    /// The shared storage, whose contents teardown collects before removing it.
    #[serde(default)]
    pub storage: Option<StorageRecord>,
}

/// The shared storage of a cluster, as teardown needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRecord {
    /// The mode's name in `bee.toml`, such as `virtio-9p`.
    pub mode: String,
    /// Where results are collected to, if anywhere.
    pub output: Option<PathBuf>,
    /// True when `output` is a checkpoint's directory: teardown keeps the data there as
    /// it is ([`crate::traits::Storage::keep`]) instead of collecting it as results.
    #[serde(default)]
    pub keep: bool,
}

/// A cluster's directory and record file.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
    record: ClusterRecord,
}

impl RecordStore {
    /// Creates the cluster directory under `clusters_dir` and saves a first record; fails
    /// with [`CoreError::ClusterExists`] when the name is taken.
    pub fn create(
        clusters_dir: &Path,
        name: &str,
        backend: &str,
        config: &Path,
    ) -> Result<RecordStore, CoreError> {
        std::fs::create_dir_all(clusters_dir)
            .map_err(|e| CoreError::io("cannot create", clusters_dir, e))?;
        let dir = clusters_dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CoreError::ClusterExists { name: name.to_string() })
            }
            Err(e) => return Err(CoreError::io("cannot create", dir, e)),
        }
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let record = ClusterRecord {
            version: RECORD_VERSION,
            name: name.to_string(),
            backend: backend.to_string(),
            config: config.to_path_buf(),
            created,
            phase: Phase::Starting,
            notes: Vec::new(),
            nodes: Vec::new(),
            resources: Vec::new(),
            storage: None,
        };
        let store = RecordStore { dir, record };
        store.save()?;
        Ok(store)
    }

    /// Opens the record of an existing cluster.
    pub fn open(clusters_dir: &Path, name: &str) -> Result<RecordStore, CoreError> {
        let dir = clusters_dir.join(name);
        let file = dir.join("record.json");
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CoreError::NoSuchCluster { name: name.to_string() })
            }
            Err(e) => return Err(CoreError::io("cannot read", file, e)),
        };
        let record: ClusterRecord = serde_json::from_str(&text)
            .map_err(|e| CoreError::Record { path: file.clone(), detail: e.to_string() })?;
        if record.version != RECORD_VERSION {
            return Err(CoreError::Record {
                path: file,
                detail: format!(
                    "format version {} is not the {RECORD_VERSION} this bee reads",
                    record.version
                ),
            });
        }
        Ok(RecordStore { dir, record })
    }

    /// Names of every recorded cluster, sorted.
    pub fn list(clusters_dir: &Path) -> Result<Vec<String>, CoreError> {
        let entries = match std::fs::read_dir(clusters_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CoreError::io("cannot read", clusters_dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("record.json").is_file())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The cluster's directory, for the files its resources need.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record as last saved or changed.
    pub fn record(&self) -> &ClusterRecord {
        &self.record
    }

    /// Changes the record and saves it before returning.
    pub fn update(&mut self, change: impl FnOnce(&mut ClusterRecord)) -> Result<(), CoreError> {
        change(&mut self.record);
        self.save()
    }

    /// Removes the record and the cluster directory with everything left in it.
    pub fn remove(self) -> Result<(), CoreError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::io("cannot remove", &self.dir, e)),
        }
    }

    fn save(&self) -> Result<(), CoreError> {
        let file = self.dir.join("record.json");
        let temp = self.dir.join("record.json.tmp");
        let text = serde_json::to_string_pretty(&self.record)
            .map_err(|e| CoreError::Record { path: file.clone(), detail: e.to_string() })?;
        std::fs::write(&temp, text).map_err(|e| CoreError::io("cannot write", &temp, e))?;
        std::fs::rename(&temp, &file).map_err(|e| CoreError::io("cannot write", &file, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_a_fresh_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            RecordStore::create(dir.path(), "c1", "vm", Path::new("/x/bee.toml")).unwrap();
        store
            .update(|r| {
                r.resources.push(Resource::Port {
                    node: "c1-0".into(),
                    what: "ssh".into(),
                    port: 4,
                });
                r.phase = Phase::Ready;
            })
            .unwrap();
        let reopened = RecordStore::open(dir.path(), "c1").unwrap();
        assert_eq!(reopened.record(), store.record());
        assert_eq!(RecordStore::list(dir.path()).unwrap(), ["c1"]);
    }

    #[test]
    fn second_create_of_a_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        RecordStore::create(dir.path(), "c1", "vm", Path::new("bee.toml")).unwrap();
        let err = RecordStore::create(dir.path(), "c1", "vm", Path::new("bee.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster \"c1\" already exists: run `bee down c1` first, or pick another cluster.name"
        );
    }

    #[test]
    fn unknown_cluster_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = RecordStore::open(dir.path(), "nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no cluster named \"nope\": `bee status` lists the clusters there are"
        );
    }

    #[test]
    fn damaged_record_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bad")).unwrap();
        std::fs::write(dir.path().join("bad/record.json"), "{").unwrap();
        let err = RecordStore::open(dir.path(), "bad").unwrap_err().to_string();
        assert!(err.starts_with("cluster record ") && err.contains("bad/record.json is damaged"));
    }
}
