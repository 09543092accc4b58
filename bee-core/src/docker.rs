//! The Docker layer: deliver the application image to a node and run its container.
//!
//! bee talks to each node's Docker daemon with `bollard`, through the node's Docker socket
//! forwarded over the node's SSH connection to a unix socket in the cluster directory.
//! Containers use the host network of the node (the paper's network pass-through) and
//! get the node's shared directory mounted at the same path.
//!
//! A Dockerfile's build context is packed by [`crate::build_context`].

use std::path::Path;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ImportImageOptionsBuilder, KillContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::build_context;
use crate::config::{Application, ImageSource};
use crate::error::CoreError;
use crate::events::Events;
use crate::paths::{cache_dir, state_dir};

/// The Docker API version bee asks for; Debian bookworm's docker.io 20.10 speaks 1.41,
/// and newer daemons still accept it.
pub const API_VERSION: ClientVersion = ClientVersion { major_version: 1, minor_version: 41 };

/// The base image every guest carries as a tarball, imported on first use, so that a
/// Dockerfile `FROM bee/base` builds with no registry.
pub const BASE_IMAGE: &str = "bee/base:latest";

/// Where the guest image keeps the base image's root file system tarball.
pub const BASE_TARBALL: &str = "/var/lib/bee/base-container.tar";

/// The directory shared by the nodes, at the same path in guests and containers.
pub const SHARED_DIR: &str = "/bee/shared";

/// What bee adds to the application's container besides `[application]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerExtras {
    /// Environment variables, after the application's own.
    pub env: std::collections::BTreeMap<String, String>,
    /// Node directories mounted read-only at the same path.
    pub read_only: Vec<String>,
}

/// Which stream a piece of container output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How far a container's output has been passed on: the Docker timestamp of the last
/// log entry, so that following the container again (after a VM-level restore) passes on
/// only what came after it. Docker writes the timestamps with a fixed number of digits,
/// so that they sort as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor(pub Option<String>);

impl LogCursor {
    /// Splits a log entry written with its timestamp into both, and tells whether it comes
    /// after the cursor, which then moves to it.
    fn advance<'m>(&mut self, entry: &'m [u8]) -> Option<&'m [u8]> {
        let space = entry.iter().position(|b| *b == b' ')?;
        let stamp = std::str::from_utf8(&entry[..space]).ok()?;
        if self.0.as_deref().is_some_and(|last| stamp <= last) {
            return None;
        }
        self.0 = Some(stamp.to_string());
        Some(&entry[space + 1..])
    }

    /// The whole second of the cursor in Unix time, where Docker can start reading the
    /// log again; 0 (the start) without a cursor.
    fn since(&self) -> i32 {
        self.0.as_deref().and_then(unix_seconds).unwrap_or(0)
    }
}

/// The Unix time of a UTC timestamp such as `2026-12-04T01:00:00.1Z`, whole seconds.
fn unix_seconds(stamp: &str) -> Option<i32> {
    let field = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
    // Days from 1970-01-01 to the date, counting years from March so that leap days
    // come last.
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era_day = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + day - 1;
    let days = era_day - 719_468;
    i32::try_from(days * 86400 + hour * 3600 + minute * 60 + second).ok()
}

/// A Docker daemon of one node.
#[derive(Debug, Clone)]
pub struct NodeDocker {
    node: String,
    docker: Docker,
}

impl NodeDocker {
    /// Connects to a daemon through `socket` and asks it to answer; fails at once when it
    /// does not.
    pub async fn connect(node: &str, socket: &Path) -> Result<NodeDocker, CoreError> {
        let path = socket.to_string_lossy();
        let docker = Docker::connect_with_unix(&path, 600, &API_VERSION)
            .map_err(|e| docker_error(node, "cannot connect", &e))?;
        docker.ping().await.map_err(|e| docker_error(node, "no answer", &e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| docker_error(node, "cannot agree on an API version", &e))?;
        Ok(NodeDocker { node: node.to_string(), docker })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// True when the daemon has an image of that name.
    pub async fn has_image(&self, name: &str) -> Result<bool, CoreError> {
        match self.docker.inspect_image(name).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(false)
            }
            Err(e) => Err(docker_error(&self.node, &format!("cannot inspect image {name}"), &e)),
        }
    }

    /// Builds `dockerfile` with `context` and tags the result `tag`.
    pub async fn build(
        &self,
        dockerfile: &Path,
        context: &Path,
        tag: &str,
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        let packed = build_context::pack(dockerfile, context, &[state_dir(), cache_dir()])?;
        if !packed.left_out.is_empty() {
            events.detail(&format!(
                "{}: left out of the build context: {}",
                self.node,
                summary(&packed.left_out)
            ));
        }
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&packed.dockerfile)
            .t(tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream =
            self.docker.build_image(options, None, Some(bollard::body_full(packed.archive.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| {
                docker_error(&self.node, &format!("building {}", dockerfile.display()), &e)
            })?;
            if let Some(detail) = info.error_detail {
                return Err(CoreError::Docker {
                    node: self.node.clone(),
                    detail: format!(
                        "building {}: {}",
                        dockerfile.display(),
                        detail.message.unwrap_or_default()
                    ),
                });
            }
            if let Some(line) = info.stream {
                for line in line.lines().filter(|l| !l.trim().is_empty()) {
                    events.detail(&format!("{}: {line}", self.node));
                }
            }
        }
        Ok(())
    }

    /// Loads a `docker save` tarball.
    pub async fn load(&self, tarball: &Path, events: &dyn Events) -> Result<(), CoreError> {
        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|e| CoreError::io("cannot read", tarball, e))?;
        let chunks = futures_util::stream::unfold(file, |mut file| async move {
            let mut buffer = vec![0u8; 1 << 20];
            match file.read(&mut buffer).await {
                Ok(0) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok::<Bytes, std::io::Error>(Bytes::from(buffer)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut stream = self.docker.import_image_stream(options, chunks, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| {
                docker_error(&self.node, &format!("loading {}", tarball.display()), &e)
            })?;
            if let Some(detail) = info.error_detail {
                return Err(CoreError::Docker {
                    node: self.node.clone(),
                    detail: format!(
                        "loading {}: {}",
                        tarball.display(),
                        detail.message.unwrap_or_default()
                    ),
                });
            }
            if let Some(line) = info.stream {
                events.detail(&format!("{}: {}", self.node, line.trim()));
            }
        }
        Ok(())
    }

    /// Pulls `reference` from its registry.
    pub async fn pull(&self, reference: &str, events: &dyn Events) -> Result<(), CoreError> {
        let (repository, tag) = split_reference(reference);
        let options = CreateImageOptionsBuilder::default().from_image(repository).tag(tag).build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            let info =
                item.map_err(|e| docker_error(&self.node, &format!("pulling {reference}"), &e))?;
            if let Some(detail) = info.error_detail {
                return Err(CoreError::Docker {
                    node: self.node.clone(),
                    detail: format!("pulling {reference}: {}", detail.message.unwrap_or_default()),
                });
            }
            if let (Some(status), None) = (&info.status, &info.progress_detail) {
                events.detail(&format!("{}: {status}", self.node));
            }
        }
        Ok(())
    }

    /// Creates and starts a container of `app`, passes its output to `output` as it comes,
    /// and returns its exit code once it ends. The container is removed afterwards.
    /// `cursor` follows the output passed on, also when this future is dropped.
    pub async fn run(
        &self,
        container: &str,
        app: &Application,
        extras: &ContainerExtras,
        cursor: &mut LogCursor,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<i64, CoreError> {
        self.create(container, app, extras, None).await?;
        self.docker
            .start_container(container, None)
            .await
            .map_err(|e| docker_error(&self.node, "cannot start the container", &e))?;
        self.follow(container, cursor, output).await
    }

    /// Follows a running container, passing on its output after `cursor`, and returns
    /// its exit code once it ends. The container is removed afterwards.
    pub async fn follow(
        &self,
        container: &str,
        cursor: &mut LogCursor,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<i64, CoreError> {
        let result = self.follow_to_exit(container, cursor, output).await;
        self.remove(container).await;
        result
    }

    /// Starts a container of `app` that only waits, so that MPI can start its daemons in
    /// it with `docker exec`; [`NodeDocker::remove`] stops it.
    pub async fn start_keeper(
        &self,
        container: &str,
        app: &Application,
        extras: &ContainerExtras,
    ) -> Result<(), CoreError> {
        let wait = vec!["sleep".to_string(), "infinity".to_string()];
        self.create(container, app, extras, Some(wait)).await?;
        self.docker
            .start_container(container, None)
            .await
            .map_err(|e| docker_error(&self.node, "cannot start the container", &e))
    }

    async fn create(
        &self,
        container: &str,
        app: &Application,
        extras: &ContainerExtras,
        command: Option<Vec<String>>,
    ) -> Result<(), CoreError> {
        self.remove(container).await;
        let env = app.env.iter().chain(&extras.env).map(|(k, v)| format!("{k}={v}")).collect();
        let mut binds = vec![format!("{SHARED_DIR}:{SHARED_DIR}")];
        binds.extend(extras.read_only.iter().map(|dir| format!("{dir}:{dir}:ro")));
        let body = ContainerCreateBody {
            image: Some(app.image.clone()),
            cmd: command.or_else(|| (!app.command.is_empty()).then(|| app.command.clone())),
            env: Some(env),
            working_dir: app.workdir.clone(),
            host_config: Some(HostConfig {
                network_mode: Some("host".to_string()),
                binds: Some(binds),
                // An init process reaps what MPI's daemons leave behind.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(container).build();
        self.docker.create_container(Some(options), body).await.map_err(|e| {
            docker_error(&self.node, &format!("cannot create container of {}", app.image), &e)
        })?;
        Ok(())
    }

    async fn follow_to_exit(
        &self,
        container: &str,
        cursor: &mut LogCursor,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<i64, CoreError> {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(cursor.since())
            .build();
        let mut logs = self.docker.logs(container, Some(options));
        while let Some(item) = logs.next().await {
            let item =
                item.map_err(|e| docker_error(&self.node, "lost the container's output", &e))?;
            let (stream, entry) = match &item {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    (OutputStream::Stdout, message)
                }
                LogOutput::StdErr { message } => (OutputStream::Stderr, message),
                LogOutput::StdIn { .. } => continue,
            };
            if let Some(text) = cursor.advance(entry) {
                output(stream, text);
            }
        }
        let mut wait = self.docker.wait_container(container, None);
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(docker_error(&self.node, "lost the container", &e)),
            None => Err(CoreError::Docker {
                node: self.node.clone(),
                detail: "the daemon ended the wait without an exit code".to_string(),
            }),
        }
    }

    /// Sends `signal` (such as `SIGUSR1`) to the main process of the running container
    /// `container`.
    pub async fn signal(&self, container: &str, signal: &str) -> Result<(), CoreError> {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        self.docker.kill_container(container, Some(options)).await.map_err(|e| {
            docker_error(&self.node, &format!("cannot send {signal} to the container"), &e)
        })
    }

    /// Runs `command` in the running container `container` and returns its exit code and
    /// the end of its output (stdout and stderr together).
    pub async fn exec(
        &self,
        container: &str,
        command: &[String],
    ) -> Result<(i64, String), CoreError> {
        let what = format!("cannot run {command:?} in the container");
        let config = ExecConfig {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(container, config)
            .await
            .map_err(|e| docker_error(&self.node, &what, &e))?;
        let mut text = Vec::new();
        match self.docker.start_exec(&created.id, None).await {
            Ok(StartExecResults::Attached { mut output, .. }) => {
                while let Some(item) = output.next().await {
                    let item = item.map_err(|e| docker_error(&self.node, &what, &e))?;
                    text.extend_from_slice(&item.into_bytes());
                }
            }
            Ok(StartExecResults::Detached) => {}
            Err(e) => return Err(docker_error(&self.node, &what, &e)),
        }
        let inspected = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| docker_error(&self.node, &what, &e))?;
        let code = inspected.exit_code.unwrap_or(-1);
        Ok((code, crate::ssh::tail(&String::from_utf8_lossy(&text), 10)))
    }

    /// Removes a container, running or not; a missing one is fine.
    pub async fn remove(&self, container: &str) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(err) = self.docker.remove_container(container, Some(options)).await {
            tracing::debug!(node = %self.node, container, error = %err, "container not removed");
        }
    }
}

/// Waits until `connect` succeeds, asking `alive` between attempts.
pub async fn wait_for_docker<F, Fut>(
    node: &str,
    socket: &Path,
    timeout: Duration,
    mut alive: F,
) -> Result<NodeDocker, CoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), CoreError>>,
{
    let start = Instant::now();
    loop {
        alive().await?;
        match NodeDocker::connect(node, socket).await {
            Ok(docker) => return Ok(docker),
            Err(err) if start.elapsed() < timeout => {
                tracing::debug!(node, error = %err, "docker not ready yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                return Err(CoreError::Timeout {
                    node: node.to_string(),
                    awaited: format!("the Docker daemon to answer (last error: {err})"),
                    timeout,
                })
            }
        }
    }
}

/// The name of the image a node must have before the application can be delivered, if
/// any: a Dockerfile may start `FROM bee/base`.
pub fn needs_base_image(app: &Application) -> bool {
    matches!(app.source, ImageSource::Dockerfile { .. })
}

/// The TCP port on this host an image reference points at, when its registry is on
/// 127.0.0.1 or localhost: such a registry must be forwarded into the node.
pub fn local_registry_port(reference: &str) -> Option<u16> {
    let (host, _) = reference.split_once('/')?;
    let (name, port) = host.split_once(':')?;
    matches!(name, "127.0.0.1" | "localhost").then(|| port.parse().ok()).flatten()
}

/// Splits `host:port/name:tag` into repository and tag (`latest` when none is given).
pub fn split_reference(reference: &str) -> (&str, &str) {
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].rfind(':') {
        Some(i) => (&reference[..name_start + i], &reference[name_start + i + 1..]),
        None => (reference, "latest"),
    }
}

/// The first few of `items`, and how many more there are.
fn summary(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

fn docker_error(node: &str, what: &str, err: &bollard::errors::Error) -> CoreError {
    CoreError::Docker {
        node: node.to_string(),
        detail: format!("{what}: {}", crate::ssh::chain(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_cursor_passes_on_only_entries_after_it() {
        let mut cursor = LogCursor::default();
        let first = b"2026-12-04T01:00:00.100000000Z step 1\n";
        let second = b"2026-12-04T01:00:00.200000000Z step 2\n";
        assert_eq!(cursor.advance(first), Some(&b"step 1\n"[..]));
        assert_eq!(cursor.advance(second), Some(&b"step 2\n"[..]));
        assert_eq!(cursor.0.as_deref(), Some("2026-12-04T01:00:00.200000000Z"));
        // Following again from the start, as after a restore: what was passed on is skipped.
        let mut again = cursor.clone();
        assert_eq!(again.advance(first), None);
        assert_eq!(again.advance(second), None);
        let third = b"2026-12-04T01:00:05.000000000Z step 3\n";
        assert_eq!(again.advance(third), Some(&b"step 3\n"[..]));
        assert_eq!(again.since(), 1_796_346_005);
        assert_eq!(LogCursor::default().since(), 0);
    }

    #[test]
    fn timestamps_become_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(unix_seconds("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(unix_seconds("2024-02-29T23:59:59.5Z"), Some(1_709_251_199));
        assert_eq!(unix_seconds("not a time"), None);
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("debian"), ("debian", "latest"));
        assert_eq!(split_reference("debian:bookworm"), ("debian", "bookworm"));
        assert_eq!(split_reference("127.0.0.1:5000/app"), ("127.0.0.1:5000/app", "latest"));
        assert_eq!(split_reference("127.0.0.1:5000/a/b:1"), ("127.0.0.1:5000/a/b", "1"));
    }

    #[test]
    fn local_registries_are_recognized() {
        assert_eq!(local_registry_port("127.0.0.1:5000/app:1"), Some(5000));
        assert_eq!(local_registry_port("localhost:5001/app"), Some(5001));
        assert_eq!(local_registry_port("registry.example:5000/app"), None);
        assert_eq!(local_registry_port("debian:bookworm"), None);
    }

    #[test]
    fn a_summary_names_five_and_counts_the_rest() {
        let items: Vec<String> = (1..=7).map(|i| format!("f{i}")).collect();
        assert_eq!(summary(&items[..2]), "f1, f2");
        assert_eq!(summary(&items), "f1, f2, f3, f4, f5 and 2 more");
    }
}
