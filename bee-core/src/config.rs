//! The `bee.toml` file: read with serde, then validated in a separate step.
//!
//! [`RawConfig`] mirrors the file and rejects unknown keys; [`RawConfig::validate`] turns it
//! into a [`Config`] whose values are checked and typed. Every error names the file, the
//! key, the value given and what would be accepted, so that a user can fix the file
//! without reading the source.
//!
//! This module does not decide whether a valid combination can be run by the backends
//! built into a front end: that is the cluster builder's job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Most nodes one cluster may have.
pub const MAX_NODES: u32 = 64;
/// Most vCPUs one node may have.
pub const MAX_CPUS: u32 = 64;
/// Least memory a node may have: Docker and systemd do not start in less.
pub const MIN_MEMORY_MIB: u64 = 256;
/// Most memory a node may have.
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Default number of vCPUs per node.
pub const DEFAULT_CPUS: u32 = 1;
/// Default memory per node.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Default data-plane subnet.
pub const DEFAULT_SUBNET: &str = "192.168.100.0/24";
/// Longest cluster name, so that derived paths and socket names stay short.
pub const MAX_NAME_LEN: usize = 32;
/// Default time the application has, after its checkpoint command, to save its state
/// and exit.
pub const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time before the end of a time slot at which the checkpoint begins.
pub const DEFAULT_CHECKPOINT_MARGIN: Duration = Duration::from_secs(60);
/// Time before the end of a time slot at which a VM-level checkpoint (a time slot with
/// no `[checkpoint]`) begins: enough to stop and save guests of a few GiB.
pub const VM_CHECKPOINT_MARGIN: Duration = Duration::from_secs(30);

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}", file.display())]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys bee does not know.
    #[error("{}: {message}", file.display())]
    Parse {
        /// The configuration file.
        file: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// A key has a value bee does not accept.
    #[error("{}: {key} = {value}: {accepted}", file.display())]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The dotted key, such as `cluster.nodes`.
        key: String,
        /// The value given, as written in TOML.
        value: String,
        /// What would be accepted.
        accepted: String,
    },
    /// A section lacks something it needs, or has parts that exclude each other.
    #[error("{}: [{section}]: {problem}", file.display())]
    Section {
        /// The section, such as `application`.
        section: String,
        /// The configuration file.
        file: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// `bee.toml` as written, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[cluster]`: name and size.
    pub cluster: RawCluster,
    /// `[hardware]`: the paper's uconf, per node.
    #[serde(default)]
    pub hardware: RawHardware,
    /// `[network]`: the data-plane network.
    #[serde(default)]
    pub network: RawNetwork,
    /// `[storage]`: shared storage.
    pub storage: Option<RawStorage>,
    /// `[application]`: the containerized application.
    pub application: Option<RawApplication>,
    /// `[checkpoint]`: how the application saves and restores its state.
    pub checkpoint: Option<RawCheckpoint>,
    /// `[[platform]]`: where to run, highest priority first; absent means this machine.
    pub platform: Option<Vec<RawPlatform>>,
}

/// `[cluster]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Cluster name.
    pub name: Option<String>,
    /// Number of nodes.
    pub nodes: Option<i64>,
}

/// `[hardware]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHardware {
    /// vCPUs per node.
    pub cpus: Option<i64>,
    /// Memory per node, such as `"1GiB"`.
    pub memory: Option<String>,
}

/// `[network]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// `multicast`, `p2p-star` or `p2p-tree`.
    pub mode: Option<String>,
    /// Data-plane subnet in CIDR notation.
    pub subnet: Option<String>,
    /// QEMU transport of point-to-point links: `stream` or `socket`.
    pub transport: Option<String>,
}

/// `[storage]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `virtio-9p` or `data-image-nfs`.
    pub mode: Option<String>,
    /// Host directory staged in before the run.
    pub input: Option<String>,
    /// Host directory the results are collected into.
    pub output: Option<String>,
}

/// `[application]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApplication {
    /// An image reference to pull, such as `127.0.0.1:5000/app:1`.
    pub image: Option<String>,
    /// A Dockerfile to build inside each node.
    pub dockerfile: Option<String>,
    /// The build context of `dockerfile`; defaults to the Dockerfile's directory.
    pub context: Option<String>,
    /// A `docker save` tarball to load into each node.
    pub tarball: Option<String>,
    /// The tag given to a built or loaded image.
    pub tag: Option<String>,
    /// The command run in the master's container; the image's default when absent.
    pub command: Option<Vec<String>>,
    /// Extra environment variables of the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container.
    pub workdir: Option<String>,
}

/// `[checkpoint]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    /// Run in the master's container to make the application save its state and exit: a
    /// shell command line, or a program and its arguments.
    pub command: Option<toml::Value>,
    /// Sent to the main process of the master's container instead of a command, such as
    /// `"SIGUSR1"`.
    pub signal: Option<String>,
    /// The command that continues from a saved state; the application's own by default.
    pub restore: Option<Vec<String>>,
    /// How long the application may take to exit after `command`, such as `"5m"`.
    pub timeout: Option<String>,
    /// How long before the end of a time slot to checkpoint, such as `"1m"`.
    pub margin: Option<String>,
}

/// One `[[platform]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    /// `vm`, `aws` or `chameleon`.
    pub backend: Option<String>,
    /// `"local"`, `"slurm"` or a list of host names.
    pub hosts: Option<toml::Value>,
    /// How long the platform may be used, such as `"20m"`.
    pub time_slot: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The cluster's name, unique among this user's clusters.
    pub name: String,
    /// Number of nodes; node 0 is the master.
    pub nodes: u32,
    /// Per-node hardware.
    pub hardware: Hardware,
    /// The data-plane network.
    pub network: NetworkSpec,
    /// Shared storage, if any.
    pub storage: Option<StorageSpec>,
    /// The application, if the file describes one (`bee up` needs none).
    pub application: Option<Application>,
    /// How the application checkpoints, if it can.
    pub checkpoint: Option<Checkpoint>,
    /// Platforms in priority order, highest first; never empty.
    pub platforms: Vec<Platform>,
}

/// How bee asks the application for its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointRequest {
    /// A command run in the master's container.
    Command(Vec<String>),
    /// A signal, such as `SIGUSR1`, sent to the main process of the master's container.
    Signal(String),
}

/// The signals `checkpoint.signal` accepts: those an application can catch, less the ones
/// that stop or kill it by default in ways it cannot undo.
const CHECKPOINT_SIGNALS: [&str; 8] =
    ["SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGWINCH"];

/// How the application saves its state into the shared directory and continues from it
/// (Algorithm 1's data checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// How bee asks the application to save its state and exit 0.
    pub request: CheckpointRequest,
    /// Starts the application from the saved state on the next platform.
    pub restore: Vec<String>,
    /// How long the application may take to exit after `command`.
    pub timeout: Duration,
    /// How long before the end of a time slot the checkpoint begins.
    pub margin: Duration,
}

/// Per-node hardware (the paper's uconf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardware {
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// How the nodes' data-plane NICs are joined (paper section III-A).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkMode {
    /// One QEMU socket multicast group (paper Fig. 2).
    Multicast,
    /// Point-to-point links from every node to the master (paper Fig. 3, star).
    P2pStar,
    /// A binary tree of point-to-point links rooted at the master.
    P2pTree,
}

impl NetworkMode {
    /// Every mode with its name in `bee.toml`.
    pub const ALL: [(NetworkMode, &'static str); 3] = [
        (NetworkMode::Multicast, "multicast"),
        (NetworkMode::P2pStar, "p2p-star"),
        (NetworkMode::P2pTree, "p2p-tree"),
    ];

    /// The name used in `bee.toml`.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(mode, _)| *mode == self).map(|(_, name)| *name).unwrap_or("")
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How QEMU carries a point-to-point link between two NICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `-netdev stream` (QEMU 7.2 and later): the faster one here.
    Stream,
    /// `-netdev socket`: older QEMUs have it too.
    Socket,
}

impl Transport {
    /// Every transport with its name in `bee.toml`.
    pub const ALL: [(Transport, &'static str); 2] =
        [(Transport::Stream, "stream"), (Transport::Socket, "socket")];
}

/// The data-plane network of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkSpec {
    /// How NICs are joined.
    pub mode: NetworkMode,
    /// How point-to-point links are carried.
    pub transport: Transport,
    /// Network address of the subnet.
    pub subnet: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix: u8,
}

/// How nodes share a directory (paper section III-B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageMode {
    /// A host directory shared into every guest (paper Fig. 5).
    Virtio9p,
    /// A data image on the master, exported over NFS (paper Fig. 4).
    DataImageNfs,
}

impl StorageMode {
    /// Every mode with its name in `bee.toml`.
    pub const ALL: [(StorageMode, &'static str); 2] =
        [(StorageMode::Virtio9p, "virtio-9p"), (StorageMode::DataImageNfs, "data-image-nfs")];

    /// The name used in `bee.toml`.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(mode, _)| *mode == self).map(|(_, name)| *name).unwrap_or("")
    }

    /// The mode of a name used in `bee.toml`.
    pub fn from_name(name: &str) -> Option<StorageMode> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(mode, _)| *mode)
    }
}

/// Shared storage of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSpec {
    /// How the directory is shared.
    pub mode: StorageMode,
    /// Host directory staged in before the run.
    pub input: Option<PathBuf>,
    /// Host directory results are collected into.
    pub output: Option<PathBuf>,
}

/// Where the application image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Pulled from a registry.
    Registry {
        /// The image reference.
        reference: String,
    },
    /// Built from a Dockerfile inside each node.
    Dockerfile {
        /// The Dockerfile.
        dockerfile: PathBuf,
        /// The build context directory.
        context: PathBuf,
    },
    /// Loaded from a `docker save` tarball.
    Tarball {
        /// The tarball.
        path: PathBuf,
    },
}

/// The containerized application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Where its image comes from.
    pub source: ImageSource,
    /// The image name the container is started from.
    pub image: String,
    /// Command run in the master's container; empty means the image's default.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container.
    pub workdir: Option<String>,
}

/// Kinds of backend that bring up nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// QEMU virtual machines (BEE-VM).
    Vm,
    /// Amazon EC2 (BEE-AWS).
    Aws,
    /// Chameleon Cloud bare metal (BEE-Chameleon).
    Chameleon,
}

impl BackendKind {
    /// Every backend with its name in `bee.toml`.
    pub const ALL: [(BackendKind, &'static str); 3] =
        [(BackendKind::Vm, "vm"), (BackendKind::Aws, "aws"), (BackendKind::Chameleon, "chameleon")];

    /// The name used in `bee.toml`.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(kind, _)| *kind == self).map(|(_, name)| *name).unwrap_or("")
    }
}

/// The machines a platform's nodes run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// This machine.
    Local,
    /// The nodes of the current Slurm allocation.
    Slurm,
    /// Hosts reached over SSH.
    List(Vec<String>),
}

/// One entry of the platform priority list (Algorithm 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// What brings up the nodes.
    pub backend: BackendKind,
    /// Where they run.
    pub hosts: Hosts,
    /// How long the platform may be used; `None` means no limit. A slot ends in a
    /// checkpoint: the application's own with `[checkpoint]`, else a VM-level one.
    pub time_slot: Option<Duration>,
}

impl Platform {
    /// The platform in words, such as `vm on local, time slot 20m`.
    pub fn describe(&self) -> String {
        let hosts = match &self.hosts {
            Hosts::Local => "local".to_string(),
            Hosts::Slurm => "slurm".to_string(),
            Hosts::List(names) => names.join(", "),
        };
        let mut text = format!("{} on {hosts}", self.backend.name());
        if let Some(slot) = self.time_slot {
            text.push_str(&format!(", time slot {}", format_duration(slot)));
        }
        text
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        // Relative paths in the file are relative to its directory, wherever bee runs.
        let file = std::fs::canonicalize(file)
            .map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        RawConfig::parse(&file, &text)?.validate(&file)
    }
}

impl RawConfig {
    /// Parses TOML text; `file` only names the source in errors.
    pub fn parse(file: &Path, text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            file: file.to_path_buf(),
            message: err.to_string().trim_end().replace('\n', "\n  "),
        })
    }

    /// Checks every value and resolves relative paths against the file's directory.
    pub fn validate(&self, file: &Path) -> Result<Config, ConfigError> {
        let check = Checker { file, base: file.parent().unwrap_or(Path::new(".")) };
        let config = Config {
            file: file.to_path_buf(),
            name: check.name(self.cluster.name.as_deref())?,
            nodes: check.nodes(self.cluster.nodes)?,
            hardware: check.hardware(&self.hardware)?,
            network: check.network(&self.network)?,
            storage: self.storage.as_ref().map(|s| check.storage(s)).transpose()?,
            application: self.application.as_ref().map(|a| check.application(a)).transpose()?,
            checkpoint: None,
            platforms: check.platforms(self.platform.as_deref())?,
        };
        let checkpoint =
            self.checkpoint.as_ref().map(|c| check.checkpoint(c, &config)).transpose()?;
        check.time_slots(&config, checkpoint.as_ref())?;
        Ok(Config { checkpoint, ..config })
    }
}

/// Validation of one file's values; holds what every error needs.
struct Checker<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, key: &str, value: impl fmt::Display, accepted: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            accepted: accepted.to_string(),
        }
    }

    fn section(&self, section: &str, problem: &str) -> ConfigError {
        ConfigError::Section {
            section: section.to_string(),
            file: self.file.to_path_buf(),
            problem: problem.to_string(),
        }
    }

    fn name(&self, name: Option<&str>) -> Result<String, ConfigError> {
        let name = name.ok_or_else(|| {
            self.section("cluster", "no name given: add name = \"...\" (letters, digits, '-')")
        })?;
        let valid_chars =
            name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !valid_chars
            || name.starts_with('-')
            || name.ends_with('-')
        {
            let accepted = format!(
                "expected 1 to {MAX_NAME_LEN} lower-case letters, digits and inner '-', \
                 such as \"mpi-ring\""
            );
            return Err(self.invalid("cluster.name", quoted(name), &accepted));
        }
        Ok(name.to_string())
    }

    fn nodes(&self, nodes: Option<i64>) -> Result<u32, ConfigError> {
        let nodes = nodes.ok_or_else(|| {
            self.section("cluster", &format!("no nodes given: add nodes = 1 to {MAX_NODES}"))
        })?;
        match u32::try_from(nodes) {
            Ok(n) if (1..=MAX_NODES).contains(&n) => Ok(n),
            _ => Err(self.invalid(
                "cluster.nodes",
                nodes,
                &format!("expected a whole number from 1 to {MAX_NODES}"),
            )),
        }
    }

    fn hardware(&self, raw: &RawHardware) -> Result<Hardware, ConfigError> {
        let cpus = match raw.cpus {
            None => DEFAULT_CPUS,
            Some(cpus) => match u32::try_from(cpus) {
                Ok(n) if (1..=MAX_CPUS).contains(&n) => n,
                _ => {
                    let accepted = format!("expected a whole number from 1 to {MAX_CPUS}");
                    return Err(self.invalid("hardware.cpus", cpus, &accepted));
                }
            },
        };
        let memory_mib = match raw.memory.as_deref() {
            None => DEFAULT_MEMORY_MIB,
            Some(text) => {
                let accepted = format!(
                    "expected a size from {MIN_MEMORY_MIB}MiB to {}GiB, such as \"512MiB\" \
                     or \"2GiB\"",
                    MAX_MEMORY_MIB / 1024
                );
                match parse_size_mib(text) {
                    Some(mib) if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) => mib,
                    _ => return Err(self.invalid("hardware.memory", quoted(text), &accepted)),
                }
            }
        };
        Ok(Hardware { cpus, memory_mib })
    }

    fn network(&self, raw: &RawNetwork) -> Result<NetworkSpec, ConfigError> {
        let mode = match raw.mode.as_deref() {
            None => NetworkMode::P2pTree,
            Some(text) => NetworkMode::ALL
                .iter()
                .find(|(_, name)| *name == text)
                .map(|(mode, _)| *mode)
                .ok_or_else(|| {
                    let names = NetworkMode::ALL.map(|(_, name)| name);
                    self.invalid("network.mode", quoted(text), &one_of(&names))
                })?,
        };
        let subnet_text = raw.subnet.as_deref().unwrap_or(DEFAULT_SUBNET);
        let (subnet, prefix) = parse_subnet(subnet_text).ok_or_else(|| {
            self.invalid(
                "network.subnet",
                quoted(subnet_text),
                "expected an IPv4 network with a prefix from 16 to 29 and no host bits set, \
                 such as \"192.168.100.0/24\"",
            )
        })?;
        let transport = match raw.transport.as_deref() {
            None => Transport::Stream,
            Some(text) => Transport::ALL
                .iter()
                .find(|(_, name)| *name == text)
                .map(|(transport, _)| *transport)
                .ok_or_else(|| {
                    let names = Transport::ALL.map(|(_, name)| name);
                    self.invalid("network.transport", quoted(text), &one_of(&names))
                })?,
        };
        Ok(NetworkSpec { mode, transport, subnet, prefix })
    }

    fn storage(&self, raw: &RawStorage) -> Result<StorageSpec, ConfigError> {
        let text = raw.mode.as_deref().ok_or_else(|| {
            let names = StorageMode::ALL.map(|(_, name)| name);
            self.section("storage", &format!("no mode given: add mode = {}", one_of(&names)))
        })?;
        let mode = StorageMode::ALL
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(mode, _)| *mode)
            .ok_or_else(|| {
            let names = StorageMode::ALL.map(|(_, name)| name);
            self.invalid("storage.mode", quoted(text), &one_of(&names))
        })?;
        let input = raw.input.as_deref().map(|p| self.existing_dir("storage.input", p));
        Ok(StorageSpec {
            mode,
            input: input.transpose()?,
            output: raw.output.as_deref().map(|p| self.base.join(p)),
        })
    }

    fn application(&self, raw: &RawApplication) -> Result<Application, ConfigError> {
        let given: Vec<&str> = [
            ("image", raw.image.is_some()),
            ("dockerfile", raw.dockerfile.is_some()),
            ("tarball", raw.tarball.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| *key)
        .collect();
        if given.is_empty() {
            return Err(self.section(
                "application",
                "no image given: set one of image (a registry reference), dockerfile (built in \
                 each node) or tarball (a `docker save` file)",
            ));
        }
        if given.len() > 1 {
            return Err(self.section(
                "application",
                &format!(
                    "{} image sources given ({}): set exactly one",
                    given.len(),
                    given.join(", ")
                ),
            ));
        }
        if raw.context.is_some() && raw.dockerfile.is_none() {
            return Err(self.section("application", "context is only used with dockerfile"));
        }
        let source = if let Some(reference) = &raw.image {
            if !valid_reference(reference) {
                return Err(self.invalid(
                    "application.image",
                    quoted(reference),
                    "expected an image reference such as \"debian:bookworm\" or \
                     \"127.0.0.1:5000/app:1\"",
                ));
            }
            ImageSource::Registry { reference: reference.clone() }
        } else if let Some(dockerfile) = &raw.dockerfile {
            let dockerfile = self.existing_file("application.dockerfile", dockerfile)?;
            let context = match &raw.context {
                Some(dir) => self.existing_dir("application.context", dir)?,
                None => dockerfile.parent().unwrap_or(self.base).to_path_buf(),
            };
            ImageSource::Dockerfile { dockerfile, context }
        } else {
            let tarball = raw.tarball.as_deref().unwrap_or_default();
            ImageSource::Tarball { path: self.existing_file("application.tarball", tarball)? }
        };
        let image = match (&source, &raw.tag) {
            (ImageSource::Registry { reference }, None) => reference.clone(),
            (ImageSource::Registry { .. }, Some(_)) => {
                return Err(
                    self.section("application", "tag is only used with dockerfile or tarball")
                )
            }
            (_, Some(tag)) if !valid_reference(tag) => {
                return Err(self.invalid(
                    "application.tag",
                    quoted(tag),
                    "expected an image name such as \"mpi-ring:latest\"",
                ))
            }
            (_, Some(tag)) => tag.clone(),
            (ImageSource::Dockerfile { .. }, None) => "bee/app:latest".to_string(),
            (ImageSource::Tarball { .. }, None) => {
                return Err(self.section(
                    "application",
                    "tarball needs tag: the name of the image the tarball holds, such as \
                     tag = \"hello:latest\"",
                ))
            }
        };
        if let Some(command) = &raw.command {
            if command.is_empty() || command[0].is_empty() {
                return Err(self.invalid(
                    "application.command",
                    "[]",
                    "expected a program and its arguments, such as [\"mpirun\", \"-np\", \"2\", \
                     \"/app/ring\"], or no command to use the image's default",
                ));
            }
        }
        if let Some(bad) = raw.env.keys().find(|key| !valid_env_name(key)) {
            return Err(self.invalid(
                &format!("application.env.{bad}"),
                quoted(&raw.env[bad]),
                "expected variable names of letters, digits and '_', not starting with a digit",
            ));
        }
        if let Some(workdir) = &raw.workdir {
            if !workdir.starts_with('/') {
                return Err(self.invalid(
                    "application.workdir",
                    quoted(workdir),
                    "expected an absolute path inside the container, such as \"/app\"",
                ));
            }
        }
        Ok(Application {
            source,
            image,
            command: raw.command.clone().unwrap_or_default(),
            env: raw.env.clone(),
            workdir: raw.workdir.clone(),
        })
    }

    fn platforms(&self, raw: Option<&[RawPlatform]>) -> Result<Vec<Platform>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(vec![Platform {
                backend: BackendKind::Vm,
                hosts: Hosts::Local,
                time_slot: None,
            }]);
        };
        if raw.is_empty() {
            return Err(self.invalid(
                "platform",
                "[]",
                "expected at least one [[platform]] entry (or none at all, for this machine)",
            ));
        }
        raw.iter().enumerate().map(|(index, platform)| self.platform(index, platform)).collect()
    }

    fn platform(&self, index: usize, raw: &RawPlatform) -> Result<Platform, ConfigError> {
        let key = |name: &str| format!("platform[{index}].{name}");
        let names = BackendKind::ALL.map(|(_, name)| name);
        let text = raw.backend.as_deref().ok_or_else(|| {
            self.section(
                "platform",
                &format!("entry {index} has no backend: add backend = \"vm\" ({})", one_of(&names)),
            )
        })?;
        let backend = BackendKind::ALL
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(kind, _)| *kind)
            .ok_or_else(|| self.invalid(&key("backend"), quoted(text), &one_of(&names)))?;
        let hosts_accepted = "expected \"local\", \"slurm\" or a non-empty list of host names";
        let hosts = match &raw.hosts {
            None => Hosts::Local,
            Some(toml::Value::String(s)) if s == "local" => Hosts::Local,
            Some(toml::Value::String(s)) if s == "slurm" => Hosts::Slurm,
            Some(toml::Value::Array(items)) if !items.is_empty() => {
                let names: Option<Vec<String>> = items
                    .iter()
                    .map(|item| item.as_str().filter(|s| valid_host(s)).map(str::to_string))
                    .collect();
                Hosts::List(names.ok_or_else(|| {
                    self.invalid(&key("hosts"), raw.hosts.as_ref().unwrap(), hosts_accepted)
                })?)
            }
            Some(other) => return Err(self.invalid(&key("hosts"), other, hosts_accepted)),
        };
        let time_slot = self.duration(&key("time_slot"), raw.time_slot.as_deref())?;
        Ok(Platform { backend, hosts, time_slot })
    }

    fn checkpoint(&self, raw: &RawCheckpoint, config: &Config) -> Result<Checkpoint, ConfigError> {
        let app = config.application.as_ref().ok_or_else(|| {
            self.section("checkpoint", "there is no [application] to checkpoint: add one")
        })?;
        if config.storage.is_none() {
            return Err(self.section(
                "checkpoint",
                "checkpoints need [storage]: the application saves its state into the shared \
                 directory, which bee moves to the next platform; add [storage] with mode = \
                 \"virtio-9p\" or \"data-image-nfs\"",
            ));
        }
        let request = match (&raw.command, &raw.signal) {
            (Some(_), Some(_)) => {
                return Err(self.section(
                    "checkpoint",
                    "both command and signal given: keep one, the command run in the \
                     master's container or the signal sent to its main process",
                ))
            }
            (None, None) => {
                return Err(self.section(
                    "checkpoint",
                    "no command given: add command = \"...\", run in the master's container \
                     to make the application save its state into /bee/shared and exit, or \
                     signal = \"SIGUSR1\", sent to its main process",
                ))
            }
            (None, Some(signal)) => CheckpointRequest::Signal(self.signal(signal)?),
            (Some(command), None) => CheckpointRequest::Command(self.checkpoint_command(command)?),
        };
        let restore = match &raw.restore {
            None if app.command.is_empty() => {
                return Err(self.section(
                    "checkpoint",
                    "no restore command given and [application] has no command: add restore = \
                     [...], the command that continues from the saved state",
                ))
            }
            None => app.command.clone(),
            Some(restore) if restore.is_empty() || restore[0].is_empty() => {
                return Err(self.invalid(
                    "checkpoint.restore",
                    "[]",
                    "expected a program and its arguments, such as [\"/app/ring\", \
                     \"--restart\"]",
                ))
            }
            Some(restore) => restore.clone(),
        };
        let timeout = self.duration("checkpoint.timeout", raw.timeout.as_deref())?;
        let margin = self.duration("checkpoint.margin", raw.margin.as_deref())?;
        Ok(Checkpoint {
            request,
            restore,
            timeout: timeout.unwrap_or(DEFAULT_CHECKPOINT_TIMEOUT),
            margin: margin.unwrap_or(DEFAULT_CHECKPOINT_MARGIN),
        })
    }

    /// `checkpoint.command`: a shell command line, or a program and its arguments.
    fn checkpoint_command(&self, value: &toml::Value) -> Result<Vec<String>, ConfigError> {
        let accepted = "expected a shell command line such as \"touch /bee/shared/stop\", or \
                        a program and its arguments such as [\"kill\", \"-USR1\", \"1\"]";
        match value {
            toml::Value::String(line) if !line.trim().is_empty() => {
                Ok(vec!["sh".to_string(), "-c".to_string(), line.clone()])
            }
            toml::Value::Array(items) if !items.is_empty() => {
                let words: Option<Vec<String>> = items
                    .iter()
                    .map(|item| item.as_str().filter(|s| !s.is_empty()).map(str::to_string))
                    .collect();
                words.ok_or_else(|| self.invalid("checkpoint.command", value, accepted))
            }
            other => Err(self.invalid("checkpoint.command", other, accepted)),
        }
    }

    /// `checkpoint.signal`: a signal name, with or without `SIG`, in any case.
    fn signal(&self, text: &str) -> Result<String, ConfigError> {
        let upper = text.trim().to_ascii_uppercase();
        let name = match upper.starts_with("SIG") {
            true => upper,
            false => format!("SIG{upper}"),
        };
        if CHECKPOINT_SIGNALS.contains(&name.as_str()) {
            return Ok(name);
        }
        Err(self.invalid(
            "checkpoint.signal",
            quoted(text),
            &format!("expected one of {}", CHECKPOINT_SIGNALS.join(", ")),
        ))
    }

    /// A positive duration, or `None` when the key is absent.
    fn duration(&self, key: &str, text: Option<&str>) -> Result<Option<Duration>, ConfigError> {
        match text {
            None => Ok(None),
            Some(text) => match parse_duration(text) {
                Some(value) if !value.is_zero() => Ok(Some(value)),
                _ => Err(self.invalid(
                    key,
                    quoted(text),
                    "expected a positive duration such as \"90s\", \"20m\" or \"2h\"",
                )),
            },
        }
    }

    /// A time slot ends in a checkpoint and must outlast its margin. Without
    /// `[checkpoint]` the checkpoint is VM-level, which QEMU cannot do with a 9p share.
    fn time_slots(
        &self,
        config: &Config,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), ConfigError> {
        for (index, platform) in config.platforms.iter().enumerate() {
            let Some(slot) = platform.time_slot else { continue };
            let key = format!("platform[{index}].time_slot");
            let value = quoted(&format_duration(slot));
            let (margin, margin_name) = match checkpoint {
                Some(checkpoint) => (checkpoint.margin, "checkpoint.margin"),
                None => {
                    self.vm_checkpoint_storage(config, &key)?;
                    (VM_CHECKPOINT_MARGIN, "the margin of a VM-level checkpoint")
                }
            };
            if slot <= margin {
                return Err(self.invalid(
                    &key,
                    value,
                    &format!(
                        "expected more than {margin_name} ({}), which is when the checkpoint \
                         begins before the slot ends",
                        format_duration(margin)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A VM-level checkpoint migrates the guests, which QEMU refuses while a 9p share is
    /// mounted in them.
    fn vm_checkpoint_storage(&self, config: &Config, slot_key: &str) -> Result<(), ConfigError> {
        match &config.storage {
            Some(spec) if spec.mode == StorageMode::Virtio9p => Err(self.invalid(
                "storage.mode",
                quoted(spec.mode.name()),
                &format!(
                    "{slot_key} without [checkpoint] asks for a VM-level checkpoint (QEMU \
                     migration), and QEMU cannot migrate a guest with a mounted 9p share: use \
                     mode = \"data-image-nfs\", or add [checkpoint] so that the application \
                     saves its own state"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.base.join(path)
    }

    fn existing_file(&self, key: &str, path: &str) -> Result<PathBuf, ConfigError> {
        let resolved = self.resolve(path);
        if resolved.is_file() {
            Ok(resolved)
        } else {
            let accepted = format!(
                "no such file ({}): expected an existing file, relative \
                 to the directory of the configuration file",
                resolved.display()
            );
            Err(self.invalid(key, quoted(path), &accepted))
        }
    }

    fn existing_dir(&self, key: &str, path: &str) -> Result<PathBuf, ConfigError> {
        let resolved = self.resolve(path);
        if resolved.is_dir() {
            Ok(resolved)
        } else {
            let accepted = format!(
                "no such directory ({}): expected an existing directory, \
                 relative to the directory of the configuration file",
                resolved.display()
            );
            Err(self.invalid(key, quoted(path), &accepted))
        }
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
    format!("expected one of {}", quoted.join(", "))
}

/// Parses sizes such as `512MiB`, `2GiB`, `2G` or `1024` (MiB) into MiB.
pub fn parse_size_mib(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "M" | "MiB" | "MB" => 1,
        "G" | "GiB" | "GB" => 1024,
        "T" | "TiB" | "TB" => 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Parses durations such as `90s`, `20m`, `2h` or `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit())?;
        let (number, tail) = rest.split_at(split);
        let number: u64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(seconds)?)?;
        rest = tail;
    }
    Some(Duration::from_secs(total))
}

/// Writes a duration the way [`parse_duration`] reads it, such as `1h30m` or `45s`.
pub fn format_duration(duration: Duration) -> String {
    let mut rest = duration.as_secs();
    if rest == 0 {
        return "0s".to_string();
    }
    let mut text = String::new();
    for (unit, seconds) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= seconds {
            text.push_str(&format!("{}{unit}", rest / seconds));
            rest %= seconds;
        }
    }
    text
}

fn parse_subnet(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if !(16..=29).contains(&prefix) {
        return None;
    }
    let mask = u32::MAX << (32 - prefix);
    (u32::from(addr) & !mask == 0).then_some((addr, prefix))
}

fn valid_reference(reference: &str) -> bool {
    !reference.is_empty()
        && reference.len() <= 255
        && !reference.starts_with(['/', ':', '.', '-'])
        && reference.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !reference.chars().any(|c| c.is_ascii_uppercase())
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with('-')
        && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_@:".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/cfg/bee.toml";

    fn validate(text: &str) -> Result<Config, ConfigError> {
        RawConfig::parse(Path::new(FILE), text)?.validate(Path::new(FILE))
    }

    fn error(text: &str) -> String {
        validate(text).expect_err("configuration should be refused").to_string()
    }

    const APP: &str = "[application]\nimage = \"debian:bookworm\"\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let config = validate("[cluster]\nname = \"one\"\nnodes = 1\n").unwrap();
        assert_eq!(config.name, "one");
        assert_eq!(config.hardware, Hardware { cpus: 1, memory_mib: 1024 });
        assert_eq!(config.network.mode, NetworkMode::P2pTree);
        assert_eq!(config.network.subnet, Ipv4Addr::new(192, 168, 100, 0));
        assert_eq!(config.platforms.len(), 1);
        assert_eq!(config.platforms[0].hosts, Hosts::Local);
        assert!(config.application.is_none());
    }

    #[test]
    fn full_file_is_typed() {
        let text = format!(
            "[cluster]\nname = \"ring\"\nnodes = 3\n[hardware]\ncpus = 2\nmemory = \"2GiB\"\n\
             [network]\nmode = \"multicast\"\nsubnet = \"10.9.0.0/16\"\n{APP}\
             command = [\"echo\", \"hi\"]\nenv = {{ A_B = \"1\" }}\nworkdir = \"/app\"\n\
             [storage]\nmode = \"virtio-9p\"\n[checkpoint]\ncommand = \"touch /bee/shared/stop\"\n\
             margin = \"30s\"\n\
             [[platform]]\nbackend = \"vm\"\nhosts = [\"h1\", \"h2\"]\ntime_slot = \"1h30m\"\n"
        );
        let config = validate(&text).unwrap();
        assert_eq!(config.nodes, 3);
        assert_eq!(config.hardware, Hardware { cpus: 2, memory_mib: 2048 });
        assert_eq!(config.network.prefix, 16);
        let app = config.application.unwrap();
        assert_eq!(app.image, "debian:bookworm");
        assert_eq!(app.command, ["echo", "hi"]);
        assert_eq!(
            config.checkpoint,
            Some(Checkpoint {
                request: CheckpointRequest::Command(vec![
                    "sh".into(),
                    "-c".into(),
                    "touch /bee/shared/stop".into(),
                ]),
                restore: vec!["echo".into(), "hi".into()],
                timeout: DEFAULT_CHECKPOINT_TIMEOUT,
                margin: Duration::from_secs(30),
            })
        );
        assert_eq!(
            config.platforms[0],
            Platform {
                backend: BackendKind::Vm,
                hosts: Hosts::List(vec!["h1".into(), "h2".into()]),
                time_slot: Some(Duration::from_secs(5400)),
            }
        );
    }

    #[test]
    fn zero_nodes() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 0\n"),
            "/cfg/bee.toml: cluster.nodes = 0: expected a whole number from 1 to 64"
        );
    }

    #[test]
    fn too_many_nodes() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 65\n"),
            "/cfg/bee.toml: cluster.nodes = 65: expected a whole number from 1 to 64"
        );
    }

    #[test]
    fn missing_nodes() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\n"),
            "/cfg/bee.toml: [cluster]: no nodes given: add nodes = 1 to 64"
        );
    }

    #[test]
    fn bad_name() {
        assert_eq!(
            error("[cluster]\nname = \"My Cluster\"\nnodes = 1\n"),
            "/cfg/bee.toml: cluster.name = \"My Cluster\": expected 1 to 32 lower-case letters, \
             digits and inner '-', such as \"mpi-ring\""
        );
    }

    #[test]
    fn memory_lots() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[hardware]\nmemory = \"lots\"\n"),
            "/cfg/bee.toml: hardware.memory = \"lots\": expected a size from 256MiB to 1024GiB, \
             such as \"512MiB\" or \"2GiB\""
        );
    }

    #[test]
    fn memory_too_small() {
        assert!(error("[cluster]\nname = \"a\"\nnodes = 1\n[hardware]\nmemory = \"64MiB\"\n")
            .starts_with("/cfg/bee.toml: hardware.memory = \"64MiB\": expected a size from"));
    }

    #[test]
    fn zero_cpus() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[hardware]\ncpus = 0\n"),
            "/cfg/bee.toml: hardware.cpus = 0: expected a whole number from 1 to 64"
        );
    }

    #[test]
    fn unknown_network_mode() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[network]\nmode = \"ring\"\n"),
            "/cfg/bee.toml: network.mode = \"ring\": expected one of \"multicast\", \
             \"p2p-star\", \"p2p-tree\""
        );
    }

    #[test]
    fn unknown_transport() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[network]\ntransport = \"udp\"\n"),
            "/cfg/bee.toml: network.transport = \"udp\": expected one of \"stream\", \"socket\""
        );
    }

    #[test]
    fn subnet_with_host_bits() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[network]\nsubnet = \"10.0.0.1/24\"\n"),
            "/cfg/bee.toml: network.subnet = \"10.0.0.1/24\": expected an IPv4 network with a \
             prefix from 16 to 29 and no host bits set, such as \"192.168.100.0/24\""
        );
    }

    #[test]
    fn unknown_storage_mode() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[storage]\nmode = \"lustre\"\n"),
            "/cfg/bee.toml: storage.mode = \"lustre\": expected one of \"virtio-9p\", \
             \"data-image-nfs\""
        );
    }

    #[test]
    fn no_image_given() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[application]\ncommand = [\"true\"]\n"),
            "/cfg/bee.toml: [application]: no image given: set one of image (a registry \
             reference), dockerfile (built in each node) or tarball (a `docker save` file)"
        );
    }

    #[test]
    fn two_image_sources() {
        assert_eq!(
            error(&format!("[cluster]\nname = \"a\"\nnodes = 1\n{APP}tarball = \"x.tar\"\n")),
            "/cfg/bee.toml: [application]: 2 image sources given (image, tarball): set exactly \
             one"
        );
    }

    #[test]
    fn missing_dockerfile() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[application]\ndockerfile = \"nope\"\n"),
            "/cfg/bee.toml: application.dockerfile = \"nope\": no such file (/cfg/nope): \
             expected an existing file, relative to the directory of the configuration file"
        );
    }

    #[test]
    fn empty_command() {
        assert!(error(&format!("[cluster]\nname = \"a\"\nnodes = 1\n{APP}command = []\n"))
            .starts_with("/cfg/bee.toml: application.command = []: expected a program"));
    }

    #[test]
    fn bad_image_reference() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[application]\nimage = \"Bad Image\"\n"),
            "/cfg/bee.toml: application.image = \"Bad Image\": expected an image reference such \
             as \"debian:bookworm\" or \"127.0.0.1:5000/app:1\""
        );
    }

    #[test]
    fn unknown_backend() {
        assert_eq!(
            error("[cluster]\nname = \"a\"\nnodes = 1\n[[platform]]\nbackend = \"gcp\"\n"),
            "/cfg/bee.toml: platform[0].backend = \"gcp\": expected one of \"vm\", \"aws\", \
             \"chameleon\""
        );
    }

    #[test]
    fn platform_without_backend() {
        assert_eq!(
            error(
                "[cluster]\nname = \"a\"\nnodes = 1\n[[platform]]\nbackend = \"vm\"\n\
                 [[platform]]\nhosts = \"slurm\"\n"
            ),
            "/cfg/bee.toml: [platform]: entry 1 has no backend: add backend = \"vm\" (expected \
             one of \"vm\", \"aws\", \"chameleon\")"
        );
    }

    #[test]
    fn empty_platform_list() {
        assert_eq!(
            error("platform = []\n[cluster]\nname = \"a\"\nnodes = 1\n"),
            "/cfg/bee.toml: platform = []: expected at least one [[platform]] entry (or none at \
             all, for this machine)"
        );
    }

    #[test]
    fn zero_time_slot() {
        assert_eq!(
            error(
                "[cluster]\nname = \"a\"\nnodes = 1\n[[platform]]\nbackend = \"vm\"\n\
                 time_slot = \"0s\"\n"
            ),
            "/cfg/bee.toml: platform[0].time_slot = \"0s\": expected a positive duration such \
             as \"90s\", \"20m\" or \"2h\""
        );
    }

    #[test]
    fn bad_hosts() {
        assert_eq!(
            error(
                "[cluster]\nname = \"a\"\nnodes = 1\n[[platform]]\nbackend = \"vm\"\n\
                 hosts = \"cloud\"\n"
            ),
            "/cfg/bee.toml: platform[0].hosts = \"cloud\": expected \"local\", \"slurm\" or a \
             non-empty list of host names"
        );
    }

    #[test]
    fn tarball_needs_tag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bee.toml");
        std::fs::write(dir.path().join("app.tar"), b"").unwrap();
        let text = "[cluster]\nname = \"a\"\nnodes = 1\n[application]\ntarball = \"app.tar\"\n";
        std::fs::write(&file, text).unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "[application]: tarball needs tag: the name of the image the \
             tarball holds, such as tag = \"hello:latest\""
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err = error("[cluster]\nname = \"a\"\nnodes = 1\ncolour = \"red\"\n");
        assert!(err.starts_with("/cfg/bee.toml: TOML parse error at line 4"), "{err}");
        assert!(err.contains("unknown field `colour`, expected `name` or `nodes`"), "{err}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = Config::load(Path::new("/nonexistent/bee.toml")).unwrap_err();
        assert_eq!(err.to_string(), "cannot read /nonexistent/bee.toml");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size_mib("512MiB"), Some(512));
        assert_eq!(parse_size_mib("2G"), Some(2048));
        assert_eq!(parse_size_mib("1024"), Some(1024));
        assert_eq!(parse_size_mib("2 GiB"), Some(2048));
        assert_eq!(parse_size_mib("GiB"), None);
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), None);
        assert_eq!(parse_duration("10x"), None);
    }

    const CHECKPOINTED: &str = "[cluster]\nname = \"a\"\nnodes = 1\n[application]\n\
                                image = \"debian:bookworm\"\ncommand = [\"/app/run\"]\n\
                                [storage]\nmode = \"virtio-9p\"\n";

    #[test]
    fn checkpoint_takes_a_command_line_or_words_and_restores_with_the_app_by_default() {
        let config = validate(&format!(
            "{CHECKPOINTED}[checkpoint]\ncommand = [\"kill\", \"-USR1\", \"1\"]\n\
             restore = [\"/app/run\", \"--restart\"]\ntimeout = \"2m\"\n"
        ))
        .unwrap();
        let checkpoint = config.checkpoint.unwrap();
        assert_eq!(
            checkpoint.request,
            CheckpointRequest::Command(vec!["kill".into(), "-USR1".into(), "1".into()])
        );
        assert_eq!(checkpoint.restore, ["/app/run", "--restart"]);
        assert_eq!(checkpoint.timeout, Duration::from_secs(120));
        assert_eq!(checkpoint.margin, DEFAULT_CHECKPOINT_MARGIN);
        let config = validate(&format!("{CHECKPOINTED}[checkpoint]\ncommand = \"true\"\n"));
        assert_eq!(config.unwrap().checkpoint.unwrap().restore, ["/app/run"]);
    }

    #[test]
    fn checkpoint_without_storage_is_refused() {
        assert_eq!(
            error(&format!(
                "[cluster]\nname = \"a\"\nnodes = 1\n{APP}[checkpoint]\ncommand = \"x\"\n"
            )),
            "/cfg/bee.toml: [checkpoint]: checkpoints need [storage]: the application saves its \
             state into the shared directory, which bee moves to the next platform; add \
             [storage] with mode = \"virtio-9p\" or \"data-image-nfs\""
        );
    }

    #[test]
    fn checkpoint_without_command_or_with_a_bad_one_is_refused() {
        assert_eq!(
            error(&format!("{CHECKPOINTED}[checkpoint]\nmargin = \"1m\"\n")),
            "/cfg/bee.toml: [checkpoint]: no command given: add command = \"...\", run in the \
             master's container to make the application save its state into /bee/shared and \
             exit, or signal = \"SIGUSR1\", sent to its main process"
        );
        assert_eq!(
            error(&format!("{CHECKPOINTED}[checkpoint]\ncommand = [\"kill\", 1]\n")),
            "/cfg/bee.toml: checkpoint.command = [\"kill\", 1]: expected a shell command line \
             such as \"touch /bee/shared/stop\", or a program and its arguments such as \
             [\"kill\", \"-USR1\", \"1\"]"
        );
        assert_eq!(
            error(&format!("{CHECKPOINTED}[checkpoint]\ncommand = \"x\"\ntimeout = \"soon\"\n")),
            "/cfg/bee.toml: checkpoint.timeout = \"soon\": expected a positive duration such as \
             \"90s\", \"20m\" or \"2h\""
        );
    }

    #[test]
    fn checkpoint_by_signal_takes_a_catchable_signal_name() {
        for given in ["SIGUSR2", "usr2", " Usr2 "] {
            let config = validate(&format!("{CHECKPOINTED}[checkpoint]\nsignal = \"{given}\"\n"));
            let request = config.unwrap().checkpoint.unwrap().request;
            assert_eq!(request, CheckpointRequest::Signal("SIGUSR2".into()), "{given:?}");
        }
        assert_eq!(
            error(&format!("{CHECKPOINTED}[checkpoint]\nsignal = \"SIGKILL\"\n")),
            "/cfg/bee.toml: checkpoint.signal = \"SIGKILL\": expected one of SIGUSR1, SIGUSR2, \
             SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGALRM, SIGWINCH"
        );
        assert_eq!(
            error(&format!("{CHECKPOINTED}[checkpoint]\nsignal = \"USR1\"\ncommand = \"x\"\n")),
            "/cfg/bee.toml: [checkpoint]: both command and signal given: keep one, the command \
             run in the master's container or the signal sent to its main process"
        );
    }

    const NFS_APP: &str = "[cluster]\nname = \"a\"\nnodes = 1\n[application]\n\
                           image = \"debian:bookworm\"\ncommand = [\"/app/run\"]\n\
                           [storage]\nmode = \"data-image-nfs\"\n";

    #[test]
    fn time_slot_must_be_longer_than_the_margin_of_its_checkpoint() {
        let platform = "[[platform]]\nbackend = \"vm\"\ntime_slot = \"45s\"\n";
        assert_eq!(
            error(&format!("{CHECKPOINTED}[checkpoint]\ncommand = \"x\"\n{platform}")),
            "/cfg/bee.toml: platform[0].time_slot = \"45s\": expected more than \
             checkpoint.margin (1m), which is when the checkpoint begins before the slot ends"
        );
        let short = "[[platform]]\nbackend = \"vm\"\ntime_slot = \"30s\"\n";
        assert_eq!(
            error(&format!("{NFS_APP}{short}")),
            "/cfg/bee.toml: platform[0].time_slot = \"30s\": expected more than the margin of \
             a VM-level checkpoint (30s), which is when the checkpoint begins before the slot \
             ends"
        );
    }

    #[test]
    fn time_slot_without_checkpoint_is_vm_level_and_refuses_9p() {
        let platforms = "[[platform]]\nbackend = \"vm\"\nhosts = \"local\"\n\
                         time_slot = \"45s\"\n[[platform]]\nbackend = \"vm\"\n";
        let config = validate(&format!("{NFS_APP}{platforms}")).unwrap();
        assert_eq!(config.checkpoint, None);
        assert_eq!(config.platforms[0].time_slot, Some(Duration::from_secs(45)));
        let without_storage = "[cluster]\nname = \"a\"\nnodes = 1\n";
        assert!(validate(&format!("{without_storage}{APP}{platforms}")).is_ok());
        assert_eq!(
            error(&format!("{CHECKPOINTED}{platforms}")),
            "/cfg/bee.toml: storage.mode = \"virtio-9p\": platform[0].time_slot without \
             [checkpoint] asks for a VM-level checkpoint (QEMU migration), and QEMU cannot \
             migrate a guest with a mounted 9p share: use mode = \"data-image-nfs\", or add \
             [checkpoint] so that the application saves its own state"
        );
    }

    #[test]
    fn every_example_configuration_is_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut checked = 0;
        for dir in std::fs::read_dir(&examples).unwrap().flatten() {
            for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                if file.path().extension().is_some_and(|e| e == "toml") {
                    Config::load(&file.path()).unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                }
            }
        }
        assert!(checked >= 4, "only {checked} example configurations found");
    }

    #[test]
    fn durations_are_written_the_way_they_are_read() {
        for text in ["45s", "1m", "1h30m", "2d5s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
