//! The error type of bee-core.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;

/// Everything that can go wrong in bee-core and the backends built on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or directory of bee's own state could not be used.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, such as "cannot write".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A cluster record could not be read or written.
    #[error("cluster record {} is damaged: {detail}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A cluster with this name already exists.
    #[error(
        "cluster {name:?} already exists: run `bee down {name}` first, or pick another \
             cluster.name"
    )]
    ClusterExists {
        /// The cluster name.
        name: String,
    },
    /// No cluster with this name is recorded.
    #[error("no cluster named {name:?}: `bee status` lists the clusters there are")]
    NoSuchCluster {
        /// The cluster name.
        name: String,
    },
    /// No run with this name is recorded.
    #[error("no run named {name:?}: `bee status` lists the runs there are")]
    NoSuchRun {
        /// The run name.
        name: String,
    },
    /// A run of this name has not completed, so a new one would lose its state.
    #[error(
        "run {name:?} has not completed ({phase}): `bee resume {name}` continues it, \
         `bee discard {name}` deletes it and its checkpoint"
    )]
    RunUnfinished {
        /// The run name.
        name: String,
        /// Its phase.
        phase: &'static str,
    },
    /// The run database could not be read or written.
    #[error("run database {}: {detail}", path.display())]
    RunDatabase {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Every platform of a run was skipped before it started.
    #[error("no platform can start run {run:?}: {skipped}")]
    NoPlatform {
        /// The run.
        run: String,
        /// Each platform skipped, and why.
        skipped: String,
    },
    /// A Unix socket of the cluster would have a path longer than the system allows.
    #[error(
        "the Unix socket {} would be {length} bytes long, over the limit of {limit}: set \
         BEE_STATE_DIR to a shorter directory or give the cluster a shorter name",
        path.display()
    )]
    SocketPathTooLong {
        /// The socket, with placeholders for the characters made at random.
        path: PathBuf,
        /// Its length in bytes.
        length: usize,
        /// The longest path allowed.
        limit: usize,
    },
    /// The configuration asks for something no plugged-in implementation provides.
    #[error("{what} is not supported yet: {instead}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// What to use instead.
        instead: String,
    },
    /// Something awaited did not happen in time.
    #[error("{node}: timed out after {}s waiting for {awaited}", timeout.as_secs())]
    Timeout {
        /// The node, or `cluster`.
        node: String,
        /// What was awaited, such as "SSH to answer on 127.0.0.1:40022".
        awaited: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// A node stopped while it was needed.
    #[error("node {node} died: {detail}")]
    NodeDied {
        /// The node.
        node: String,
        /// What is known about how it died.
        detail: String,
    },
    /// A program bee runs on the host failed.
    #[error("{program} failed: {detail}")]
    Command {
        /// The program, such as `qemu-img`.
        program: String,
        /// Its exit status and the end of its output.
        detail: String,
    },
    /// SSH to a node failed.
    #[error("{node}: ssh: {detail}")]
    Ssh {
        /// The node.
        node: String,
        /// What failed.
        detail: String,
    },
    /// The Docker daemon of a node refused or failed a request.
    #[error("{node}: docker: {detail}")]
    Docker {
        /// The node.
        node: String,
        /// What failed.
        detail: String,
    },
    /// A step of launching or running a cluster failed.
    #[error("{step}")]
    Step {
        /// The step, such as "starting 2 node(s)".
        step: String,
        /// Why it failed.
        #[source]
        source: Box<CoreError>,
    },
    /// A backend failed in its own terms.
    #[error("{backend}: {detail}")]
    Backend {
        /// The backend, such as `vm`.
        backend: &'static str,
        /// What failed, with the node and resource it concerns.
        detail: String,
    },
}

impl CoreError {
    /// Builds an [`CoreError::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io { action, path: path.into(), source }
    }
}
