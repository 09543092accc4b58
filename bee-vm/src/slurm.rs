//! Nodes of the current Slurm allocation as VM hosts (`hosts = "slurm"`).
//!
//! bee runs inside `salloc` or an `sbatch` script; the allocation is the one the
//! `SLURM_JOB_ID` and `SLURM_JOB_NODELIST` variables name. Each guest's QEMU runs in the
//! foreground of its own job step (`srun --overlap`, one task on one node), so that
//! Slurm accounts for it, signals it, and ends it with the allocation. The `srun`
//! process runs on the host that runs bee and is what bee records and watches: it exits
//! when QEMU does, and a SIGTERM to it makes Slurm stop the QEMU on its node.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::Path;

use bee_core::CoreError;
use tokio::process::Command;

/// The variable Slurm sets inside an allocation, holding the job id.
pub const JOB_ID_VAR: &str = "SLURM_JOB_ID";
/// The variable Slurm sets inside an allocation, holding its nodes in Slurm's
/// compressed notation (`node[1-3]`).
pub const NODE_LIST_VAR: &str = "SLURM_JOB_NODELIST";

/// One node of the allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmNode {
    /// The node's name in Slurm.
    pub name: String,
    /// Its IPv4 address, from the node's `NodeAddr`: socket links between guests on
    /// different nodes meet there, and the guest's SSH is forwarded there.
    pub addr: Ipv4Addr,
}

/// The Slurm allocation bee runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The job id.
    pub job_id: String,
    /// Its nodes, in Slurm's order.
    pub nodes: Vec<SlurmNode>,
}

/// Why there is no allocation to run in, or `None` when the variables are set; cheap
/// (reads the environment only), for choosing among platforms.
pub fn unavailable() -> Option<String> {
    let missing: Vec<&str> = [JOB_ID_VAR, NODE_LIST_VAR]
        .into_iter()
        .filter(|var| std::env::var_os(var).is_none_or(|v| v.is_empty()))
        .collect();
    match missing.is_empty() {
        true => None,
        false => Some(format!(
            "hosts = \"slurm\" needs a Slurm allocation, and {} {} not set: run bee inside \
             `salloc` or an `sbatch` script",
            missing.join(" and "),
            if missing.len() == 1 { "is" } else { "are" }
        )),
    }
}

impl Allocation {
    /// Reads the allocation from the environment, expanding its node list and looking up
    /// each node's address with `scontrol`.
    pub async fn from_env() -> Result<Allocation, CoreError> {
        if let Some(reason) = unavailable() {
            return Err(slurm_error(reason));
        }
        let job_id = std::env::var(JOB_ID_VAR).unwrap_or_default();
        let list = std::env::var(NODE_LIST_VAR).unwrap_or_default();
        let names = scontrol(&["show", "hostnames", &list]).await?;
        let mut nodes = Vec::new();
        for name in names.split_whitespace() {
            let shown = scontrol(&["show", "node", "--oneliner", name]).await?;
            let addr = node_addr(name, &shown)?;
            nodes.push(SlurmNode { name: name.to_string(), addr });
        }
        if nodes.is_empty() {
            return Err(slurm_error(format!("{NODE_LIST_VAR}={list:?} names no nodes")));
        }
        Ok(Allocation { job_id, nodes })
    }

    /// The node that hosts guest `index`: guests are spread over the nodes in turn.
    pub fn node_for(&self, index: usize) -> &SlurmNode {
        &self.nodes[index % self.nodes.len()]
    }

    /// An `srun` command that runs `program` as one task of a new step on `node`,
    /// sharing the allocation's resources with the other guests' steps.
    pub fn srun(&self, node: &SlurmNode, step_name: &str, program: &Path) -> Command {
        let mut command = Command::new("srun");
        command
            .arg(format!("--jobid={}", self.job_id))
            .arg(format!("--nodelist={}", node.name))
            .args(["--nodes=1", "--ntasks=1", "--overlap", "--quiet", "--kill-on-bad-exit=1"])
            .arg(format!("--job-name={step_name}"))
            .arg("--")
            .arg(program);
        command
    }
}

/// The address in the `NodeAddr=` field of `scontrol show node --oneliner` output,
/// resolved when it is a host name.
fn node_addr(name: &str, shown: &str) -> Result<Ipv4Addr, CoreError> {
    let field = shown
        .split_whitespace()
        .find_map(|word| word.strip_prefix("NodeAddr="))
        .ok_or_else(|| slurm_error(format!("scontrol shows no NodeAddr for node {name}")))?;
    if let Ok(addr) = field.parse::<Ipv4Addr>() {
        return Ok(addr);
    }
    let resolved = (field, 0)
        .to_socket_addrs()
        .map_err(|e| slurm_error(format!("node {name}: cannot resolve NodeAddr {field}: {e}")))?;
    resolved
        .into_iter()
        .find_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| slurm_error(format!("node {name}: NodeAddr {field} has no IPv4 address")))
}

async fn scontrol(args: &[&str]) -> Result<String, CoreError> {
    let output = Command::new("scontrol").args(args).output().await.map_err(|e| {
        slurm_error(format!("cannot run scontrol ({e}); install slurm-client (slurm-wlm)"))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(slurm_error(format!(
            "scontrol {} failed with {}: {}",
            args.join(" "),
            output.status,
            bee_core::ssh::tail(&stderr, 5)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn slurm_error(detail: String) -> CoreError {
    CoreError::Backend { backend: "vm", detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_address_comes_from_node_addr() {
        let shown = "NodeName=c1 Arch=x86_64 CoresPerSocket=1 NodeAddr=10.1.2.3 NodeHostName=c1";
        assert_eq!(node_addr("c1", shown).unwrap(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(node_addr("c1", "NodeName=c1 NodeAddr=localhost").unwrap(), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn missing_node_address_is_named() {
        let err = node_addr("c1", "NodeName=c1 State=IDLE").unwrap_err();
        assert_eq!(err.to_string(), "vm: scontrol shows no NodeAddr for node c1");
    }

    #[test]
    fn guests_are_spread_over_the_nodes_in_turn() {
        let node =
            |n: &str, last| SlurmNode { name: n.into(), addr: Ipv4Addr::new(10, 0, 0, last) };
        let allocation = Allocation { job_id: "7".into(), nodes: vec![node("a", 1), node("b", 2)] };
        let names: Vec<&str> = (0..5).map(|i| allocation.node_for(i).name.as_str()).collect();
        assert_eq!(names, ["a", "b", "a", "b", "a"]);
        let srun = allocation.srun(allocation.node_for(1), "bee-x-1", Path::new("/usr/bin/qemu"));
        let args: Vec<String> =
            srun.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--jobid=7",
                "--nodelist=b",
                "--nodes=1",
                "--ntasks=1",
                "--overlap",
                "--quiet",
                "--kill-on-bad-exit=1",
                "--job-name=bee-x-1",
                "--",
                "/usr/bin/qemu"
            ]
        );
    }
}
