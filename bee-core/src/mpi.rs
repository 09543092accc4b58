//! What OpenMPI needs to run across the containers of a cluster.
//!
//! The application's container on the master runs `mpirun`. Every other node runs a
//! container of the same image that only waits. OpenMPI starts its daemon on a node
//! through an "rsh agent"; bee's agent, `/bee/bin/bee-rsh`, logs in to the node's guest
//! over the data network (as `bee`, with bee's key, checking the node's pinned host key)
//! and runs the daemon inside that node's container with `docker exec`. Containers share
//! their guest's network, so the daemons and ranks reach each other over the data network.
//!
//! The files live in `/bee/bin` on every node (OpenMPI's daemons check that the agent's
//! path exists), mounted read-only into the containers. The
//! environment points OpenMPI at them: the hostfile (one line per node, its data-plane
//! address and its vCPUs as slots), the agent, and the data subnet as the only interface
//! for TCP traffic.
//!
//! # Limitations
//!
//! The image must hold OpenMPI (4.x, as in `bee/base`) and an SSH client. MPICH and other
//! MPI libraries are not wired.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::config::NetworkSpec;

/// Directory of bee's MPI files on the master, and inside its container.
pub const BIN_DIR: &str = "/bee/bin";

/// One file bee writes into [`BIN_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinFile {
    /// File name inside [`BIN_DIR`].
    pub name: &'static str,
    /// Contents.
    pub contents: String,
    /// Permission bits.
    pub mode: u32,
}

/// A node as MPI sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiNode {
    /// Data-plane address.
    pub address: Ipv4Addr,
    /// Slots (vCPUs).
    pub slots: u32,
    /// The node's SSH host public key (`type base64`).
    pub host_key: String,
}

/// The files of [`BIN_DIR`] for a cluster whose containers are all named `container`.
pub fn bin_files(nodes: &[MpiNode], container: &str, client_key: &str) -> Vec<BinFile> {
    let hostfile: String =
        nodes.iter().map(|node| format!("{} slots={}\n", node.address, node.slots)).collect();
    let known_hosts: String =
        nodes.iter().map(|node| format!("{} {}\n", node.address, node.host_key)).collect();
    vec![
        BinFile { name: "hostfile", contents: hostfile, mode: 0o644 },
        BinFile { name: "known_hosts", contents: known_hosts, mode: 0o644 },
        BinFile { name: "id_ed25519", contents: client_key.to_string(), mode: 0o600 },
        BinFile { name: "bee-rsh", contents: rsh_agent(container), mode: 0o755 },
    ]
}

/// The rsh agent: `bee-rsh HOST COMMAND...` runs COMMAND in HOST's container, the way
/// `ssh HOST COMMAND...` would run it on HOST (the words joined by spaces, read by a
/// shell).
fn rsh_agent(container: &str) -> String {
    format!(
        r#"#!/bin/sh
# OpenMPI's rsh agent in bee clusters: runs the command in the peer node's container.
host=$1
shift
quoted=$(printf '%s' "$*" | sed "s/'/'\\\\''/g")
exec ssh -F /dev/null -i {BIN_DIR}/id_ed25519 -o UserKnownHostsFile={BIN_DIR}/known_hosts \
  -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR \
  "bee@$host" "docker exec -i {container} sh -c '$quoted'"
"#
    )
}

/// The environment that makes a plain `mpirun -np N prog` use every node.
pub fn environment(network: &NetworkSpec, nodes: usize) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        env.insert(key.to_string(), value);
    };
    set("BEE_NODES", nodes.to_string());
    set("OMPI_ALLOW_RUN_AS_ROOT", "1".into());
    set("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1".into());
    if nodes > 1 {
        let subnet = format!("{}/{}", network.subnet, network.prefix);
        set("BEE_HOSTFILE", format!("{BIN_DIR}/hostfile"));
        set("OMPI_MCA_orte_default_hostfile", format!("{BIN_DIR}/hostfile"));
        set("OMPI_MCA_plm_rsh_agent", format!("{BIN_DIR}/bee-rsh"));
        // Daemons must not start further daemons: only the master has the agent.
        set("OMPI_MCA_plm_rsh_no_tree_spawn", "1".into());
        set("OMPI_MCA_btl_tcp_if_include", subnet.clone());
        set("OMPI_MCA_oob_tcp_if_include", subnet);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetworkMode, Transport};

    fn spec() -> NetworkSpec {
        NetworkSpec {
            mode: NetworkMode::P2pTree,
            transport: Transport::Stream,
            subnet: Ipv4Addr::new(192, 168, 100, 0),
            prefix: 24,
        }
    }

    #[test]
    fn hostfile_and_known_hosts_list_every_node() {
        let nodes = [
            MpiNode {
                address: [192, 168, 100, 1].into(),
                slots: 2,
                host_key: "ssh-ed25519 A".into(),
            },
            MpiNode {
                address: [192, 168, 100, 2].into(),
                slots: 1,
                host_key: "ssh-ed25519 B".into(),
            },
        ];
        let files = bin_files(&nodes, "bee-ring", "KEY\n");
        assert_eq!(files[0].contents, "192.168.100.1 slots=2\n192.168.100.2 slots=1\n");
        assert_eq!(files[1].contents, "192.168.100.1 ssh-ed25519 A\n192.168.100.2 ssh-ed25519 B\n");
        assert_eq!((files[2].contents.as_str(), files[2].mode), ("KEY\n", 0o600));
        assert!(files[3].contents.contains("\"docker exec -i bee-ring sh -c '$quoted'\""));
    }

    #[test]
    fn agent_quotes_like_ssh_would() {
        let script = rsh_agent("c");
        let dir = tempfile::tempdir().unwrap();
        // A fake ssh that prints the remote command line it was given.
        std::fs::write(
            dir.path().join("ssh"),
            "#!/bin/sh\nfor a; do last=$a; done\necho \"$last\"\n",
        )
        .unwrap();
        let agent = dir.path().join("bee-rsh");
        std::fs::write(&agent, script).unwrap();
        for file in ["ssh", "bee-rsh"] {
            let path = dir.path().join(file);
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let output = std::process::Command::new(&agent)
            .args(["10.0.0.2", "orted", "-mca", "x", "\"it's\""])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        let remote = String::from_utf8(output.stdout).unwrap();
        assert_eq!(remote, "docker exec -i c sh -c 'orted -mca x \"it'\\''s\"'\n");
        // The remote shell turns it back into the words OpenMPI meant.
        let words = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "set -- {}; printf '%s|' \"$@\"",
                remote["docker exec -i c sh -c ".len()..].trim_end()
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(words.stdout).unwrap(), "orted -mca x \"it's\"|");
    }

    #[test]
    fn single_node_needs_no_agent_or_interface() {
        let env = environment(&spec(), 1);
        assert!(!env.contains_key("OMPI_MCA_plm_rsh_agent"));
        let env = environment(&spec(), 3);
        assert_eq!(env["OMPI_MCA_btl_tcp_if_include"], "192.168.100.0/24");
        assert_eq!(env["OMPI_MCA_orte_default_hostfile"], "/bee/bin/hostfile");
    }
}
