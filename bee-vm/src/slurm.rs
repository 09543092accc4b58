//! Nodes of the current Slurm allocation as VM hosts (`hosts = "slurm"`).
//!
//! bee runs inside `salloc` or an `sbatch` script; the allocation is the one the
//! `SLURM_JOB_ID` and `SLURM_JOB_NODELIST` variables name. Each guest's QEMU runs in the
//! foreground of its own job step (`srun --overlap`, one task on one node), so that
//! Slurm accounts for it, signals it, and ends it with the allocation. The `srun`
//! process runs on the host that runs bee and is what bee records and watches: it exits
//! when QEMU does, and a SIGTERM to it makes Slurm stop the QEMU on its node.
//!
//! QEMU's QMP socket is a Unix socket on the guest's node, which a connection from the
//! node that runs bee cannot reach, even when the cluster directory is on a file system
//! both see. So each guest has a relay on bee's host: `socat` listens on a socket in the
//! node's directory and, for each connection, runs [`Allocation::qmp_relay_script`],
//! which joins the allocation with a short `srun` step on the guest's node whose `socat`
//! connects to QEMU's socket there. bee and the Python module talk to the relay's socket
//! as to a local QEMU's. Both bee's host and the nodes need `socat`.

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

/// The program that relays QMP connections to the guests' nodes.
pub const RELAY_PROGRAM: &str = "socat";
/// How long checking that the nodes can run it may take.
const RELAY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why there is no allocation to run in (or no relay program to reach its guests with),
/// or `None` when bee can start guests there; cheap (reads the environment and looks
/// for a file only), for choosing among platforms.
pub fn unavailable() -> Option<String> {
    let missing: Vec<&str> = [JOB_ID_VAR, NODE_LIST_VAR]
        .into_iter()
        .filter(|var| std::env::var_os(var).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "hosts = \"slurm\" needs a Slurm allocation, and {} {} not set: run bee inside \
             `salloc` or an `sbatch` script",
            missing.join(" and "),
            if missing.len() == 1 { "is" } else { "are" }
        ));
    }
    match crate::image::which(RELAY_PROGRAM) {
        Some(_) => None,
        None => Some(relay_missing()),
    }
}

/// What to do when the relay program is not installed here.
pub fn relay_missing() -> String {
    format!(
        "hosts = \"slurm\" reaches each guest's QMP socket through {RELAY_PROGRAM}, which is \
         not on PATH: install it (Debian's socat) here and on the allocation's nodes"
    )
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
        let allocation = Allocation { job_id, nodes };
        allocation.check_relay().await?;
        Ok(allocation)
    }

    /// Checks, with one job step on all nodes, that each node can run the relay program
    /// (see the module's description), so that a node without it is named before any
    /// guest starts rather than when bee cannot reach that guest's QMP.
    async fn check_relay(&self) -> Result<(), CoreError> {
        let mut srun = self.on_every_node("bee-relay-check");
        srun.args([RELAY_PROGRAM, "-V"]);
        let output = match tokio::time::timeout(RELAY_CHECK_TIMEOUT, srun.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                return Err(slurm_error(format!(
                    "cannot run srun ({e}); install slurm-client (slurm-wlm)"
                )))
            }
            Err(_) => {
                return Err(slurm_error(format!(
                    "`srun {RELAY_PROGRAM} -V` on the allocation's nodes did not finish within \
                     {}s",
                    RELAY_CHECK_TIMEOUT.as_secs()
                )))
            }
        };
        if output.status.success() {
            return Ok(());
        }
        // What failed says so on stderr; the nodes that could run it print its version.
        let said = String::from_utf8_lossy(&output.stderr);
        Err(slurm_error(format!(
            "hosts = \"slurm\" reaches each guest's QMP socket through {RELAY_PROGRAM} on its \
             node, and `srun {RELAY_PROGRAM} -V` on the allocation's nodes failed ({}): {}; \
             install it (Debian's socat) on every node",
            output.status,
            bee_core::ssh::tail(&said, 4)
        )))
    }

    /// An `srun` step of one task on every node, to which the caller adds the program
    /// and its arguments. Its output lines start with the task's number and `: `; task `i`
    /// runs on `nodes[i]` (one task per node, in the allocation's order).
    pub fn on_every_node(&self, step_name: &str) -> Command {
        let mut srun = Command::new("srun");
        srun.arg(format!("--jobid={}", self.job_id))
            .arg(format!("--nodes={}", self.nodes.len()))
            .args(["--ntasks-per-node=1", "--overlap", "--quiet", "--label"])
            .arg(format!("--job-name={step_name}"))
            .arg("--")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        srun
    }

    /// The lines of output of `on_every_node` from task `index`, without their label.
    pub fn lines_of(output: &str, index: usize) -> String {
        let label = format!("{index}: ");
        let lines: Vec<&str> =
            output.lines().filter_map(|l| l.trim_start().strip_prefix(&label)).collect();
        lines.join("\n")
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

    /// The shell script that bee's QMP relay runs for each connection to the socket of
    /// the guest in `dir` (on a file system `node` sees under the same path): a job step
    /// on `node` whose `socat` joins its standard input and output to `socket` there.
    pub fn qmp_relay_script(
        &self,
        node: &SlurmNode,
        step_name: &str,
        dir: &Path,
        socket: &str,
    ) -> String {
        let quote = |word: &str| crate::ssh_hosts::quote(word);
        format!(
            "#!/bin/sh\n# Written by bee: one QMP connection to the guest on Slurm node {node}.\n\
             exec srun --jobid={job} --nodelist={node} --nodes=1 --ntasks=1 --overlap --quiet \
             --unbuffered --job-name={step} --chdir={dir} -- {RELAY_PROGRAM} STDIO {target}\n",
            node = quote(&node.name),
            job = quote(&self.job_id),
            step = quote(step_name),
            dir = quote(&dir.to_string_lossy()),
            target = quote(&format!("UNIX-CONNECT:{socket}")),
        )
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

    #[test]
    fn labelled_lines_are_told_apart_by_task() {
        let output =
            "0: bee-kvm-probe exit 137\n 1: qemu: no kvm\n10: far\n1: bee-kvm-probe absent\n";
        assert_eq!(Allocation::lines_of(output, 0), "bee-kvm-probe exit 137");
        assert_eq!(Allocation::lines_of(output, 1), "qemu: no kvm\nbee-kvm-probe absent");
        assert_eq!(Allocation::lines_of(output, 10), "far");
        assert_eq!(Allocation::lines_of(output, 2), "");
    }

    #[test]
    fn the_qmp_relay_joins_a_step_on_the_guests_node() {
        let node = SlurmNode { name: "cn-2".into(), addr: Ipv4Addr::new(10, 0, 0, 2) };
        let allocation = Allocation { job_id: "41".into(), nodes: vec![node.clone()] };
        let script = allocation.qmp_relay_script(
            &node,
            "bee-x-1-qmp",
            Path::new("/st/my x/x-1"),
            "qmp.sock",
        );
        assert_eq!(
            script.lines().last().unwrap(),
            "exec srun --jobid=41 --nodelist=cn-2 --nodes=1 --ntasks=1 --overlap --quiet \
             --unbuffered --job-name=bee-x-1-qmp --chdir='/st/my x/x-1' -- socat STDIO \
             UNIX-CONNECT:qmp.sock"
        );
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
    }
}
