//! Node access over SSH, with the `openssh` crate.
//!
//! One multiplexed connection per node is opened and reused for every command and
//! forward: each new SSH handshake costs seconds under software emulation. Host keys are
//! always checked strictly against the node's own known-hosts file, which the backend
//! wrote from the key it gave the node; the user's `~/.ssh/config` is not read.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Socket};

use crate::error::CoreError;
use crate::record::SshEndpoint;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts while a node boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(1000);

/// The result of a command run on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status; `None` when the command was killed by a signal.
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// An open, multiplexed SSH connection to one node.
#[derive(Debug)]
pub struct NodeSession {
    node: String,
    session: Session,
}

impl NodeSession {
    /// Opens one connection; fails at once when the node does not answer.
    pub async fn connect(
        node: &str,
        endpoint: &SshEndpoint,
        control_dir: &Path,
    ) -> Result<NodeSession, CoreError> {
        let mut builder = SessionBuilder::default();
        builder
            .user(endpoint.user.clone())
            .port(endpoint.port)
            .keyfile(&endpoint.key)
            .known_hosts_check(KnownHosts::Strict)
            .user_known_hosts_file(&endpoint.known_hosts)
            .config_file("/dev/null")
            .connect_timeout(CONNECT_TIMEOUT)
            .server_alive_interval(Duration::from_secs(5))
            .control_directory(control_dir);
        let session = builder.connect(&endpoint.host).await.map_err(|e| CoreError::Ssh {
            node: node.to_string(),
            detail: format!("cannot connect to {}:{}: {}", endpoint.host, endpoint.port, chain(&e)),
        })?;
        Ok(NodeSession { node: node.to_string(), session })
    }

    /// Connects, retrying until `timeout`; `alive` is asked before each retry and ends the
    /// wait with its error when the node is gone.
    pub async fn wait_for<F, Fut>(
        node: &str,
        endpoint: &SshEndpoint,
        control_dir: &Path,
        timeout: Duration,
        mut alive: F,
    ) -> Result<NodeSession, CoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), CoreError>>,
    {
        let start = Instant::now();
        loop {
            alive().await?;
            match NodeSession::connect(node, endpoint, control_dir).await {
                Ok(session) => return Ok(session),
                Err(err) if start.elapsed() < timeout => {
                    tracing::debug!(node, error = %err, "ssh not ready yet");
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
                Err(err) => {
                    alive().await?;
                    tracing::debug!(node, error = %err, "ssh did not become ready");
                    return Err(CoreError::Timeout {
                        node: node.to_string(),
                        awaited: format!(
                            "SSH to answer on {}:{} (last error: {err})",
                            endpoint.host, endpoint.port
                        ),
                        timeout,
                    });
                }
            }
        }
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs a shell command line on the node and collects its output.
    pub async fn run(&self, command: &str) -> Result<CommandOutput, CoreError> {
        tracing::debug!(node = %self.node, command, "ssh run");
        let output = self.session.shell(command).output().await.map_err(|e| CoreError::Ssh {
            node: self.node.clone(),
            detail: format!("cannot run {command:?}: {}", chain(&e)),
        })?;
        Ok(CommandOutput {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs a command and fails, with its output, unless it exits with status 0.
    pub async fn run_checked(&self, what: &str, command: &str) -> Result<String, CoreError> {
        let output = self.run(command).await?;
        if output.status == Some(0) {
            return Ok(output.stdout);
        }
        let status = output.status.map_or("a signal".to_string(), |c| format!("status {c}"));
        Err(CoreError::Ssh {
            node: self.node.clone(),
            detail: format!("{what} failed with {status}: {}", tail(&output.stderr, 20)),
        })
    }

    /// Forwards a local unix socket to a unix socket on the node.
    pub async fn forward_unix(&self, local: &Path, remote: &Path) -> Result<(), CoreError> {
        self.session
            .request_port_forward(
                ForwardType::Local,
                Socket::UnixSocket { path: local.into() },
                Socket::UnixSocket { path: remote.into() },
            )
            .await
            .map_err(|e| CoreError::Ssh {
                node: self.node.clone(),
                detail: format!(
                    "cannot forward {} to {}: {}",
                    local.display(),
                    remote.display(),
                    chain(&e)
                ),
            })
    }

    /// Makes `127.0.0.1:port` on the node lead to `127.0.0.1:port` on this host, such as
    /// a registry server that only listens here.
    pub async fn forward_port_to_host(&self, port: u16) -> Result<(), CoreError> {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        self.session.request_port_forward(ForwardType::Remote, addr, addr).await.map_err(|e| {
            CoreError::Ssh {
                node: self.node.clone(),
                detail: format!("cannot forward port {port} back to this host: {}", chain(&e)),
            }
        })
    }

    /// Closes the connection.
    pub async fn close(self) {
        if let Err(err) = self.session.close().await {
            tracing::debug!(node = %self.node, error = %err, "closing ssh connection failed");
        }
    }
}

/// The directory for a cluster's SSH control sockets; short, since socket paths are
/// limited to about 100 bytes.
pub fn control_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("ssh")
}

/// The longest path a Unix socket can have: `sun_path` holds 108 bytes with the final NUL.
pub const SOCKET_PATH_LIMIT: usize = 107;

/// The Unix sockets bee and ssh make for node `node` of the cluster in `cluster_dir`:
/// the SSH control socket (which `openssh` puts in a `.ssh-connection` directory of six
/// random characters and ssh first binds under a name 17 characters longer), the
/// forwarded Docker socket and QEMU's monitor socket (or its forward from another
/// host). A `?` stands for each character only known when the socket is made.
pub fn socket_paths(cluster_dir: &Path, node: &str) -> Vec<PathBuf> {
    let control = control_dir(cluster_dir).join(".ssh-connection??????");
    vec![
        control.join("master.????????????????"),
        cluster_dir.join(format!("{node}.docker.sock")),
        cluster_dir.join(node).join("qmp.sock"),
        cluster_dir.join(node).join("qmp-fwd.sock"),
    ]
}

/// Fails, naming the path, when a socket of one of `nodes` would be too long to bind:
/// ssh then only logs the failure and every connection attempt fails until the SSH
/// deadline, long after the real cause could have been shown.
pub fn check_socket_paths(cluster_dir: &Path, nodes: &[String]) -> Result<(), CoreError> {
    let too_long = nodes
        .iter()
        .flat_map(|node| socket_paths(cluster_dir, node))
        .find(|path| path.as_os_str().len() > SOCKET_PATH_LIMIT);
    match too_long {
        Some(path) => Err(CoreError::SocketPathTooLong {
            length: path.as_os_str().len(),
            path,
            limit: SOCKET_PATH_LIMIT,
        }),
        None => Ok(()),
    }
}

/// Formats an error with its sources, separated by colons.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text.trim().to_string()
}

/// The last `lines` lines of `text`, trimmed.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_reach_the_limit_exactly() {
        // The SSH control socket is the longest: 50 bytes past the cluster directory.
        let fits = PathBuf::from(format!("/{}", "d".repeat(SOCKET_PATH_LIMIT - 51)));
        assert_eq!(socket_paths(&fits, "n-0")[0].as_os_str().len(), SOCKET_PATH_LIMIT);
        assert!(check_socket_paths(&fits, &["n-0".to_string()]).is_ok());

        let over = PathBuf::from(format!("/{}", "d".repeat(SOCKET_PATH_LIMIT - 50)));
        let err = check_socket_paths(&over, &["n-0".to_string()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/ssh/.ssh-connection??????/master.????????????????"), "{text}");
        assert!(text.contains("would be 108 bytes long, over the limit of 107"), "{text}");
        assert!(text.contains("BEE_STATE_DIR"), "{text}");
    }

    #[test]
    fn long_node_names_are_checked_too() {
        let dir = Path::new("/state/clusters/c");
        let long = format!("c-{}", "9".repeat(90));
        let err = check_socket_paths(dir, &["c-0".to_string(), long.clone()]).unwrap_err();
        assert!(err.to_string().contains(&format!("{long}.docker.sock")), "{err}");
    }
}
