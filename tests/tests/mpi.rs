//! Multi-node clusters: an MPI job in containers across three or four guests, on every
//! combination of the paper's networks and storages (one of them with the guests on two
//! hosts reached over SSH, one on the two nodes of a Slurm allocation), and a guest that
//! dies mid-run.
//! Needs the guest image, which `scripts/test.sh` builds when it is missing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bee_tests::hosts::SshHosts;
use bee_tests::slurm::{Slurm, NODE, REMOTE_NODE};
use bee_tests::{
    repo_root, stderr, stdout, wait_until, wait_with_timeout, write_config, BeeEnv, COMMAND_TIMEOUT,
};

/// Where a test's guests run.
enum On<'a> {
    /// This host.
    Here,
    /// Hosts reached over SSH, in turn.
    Ssh(&'a SshHosts),
    /// The nodes of a two-node allocation of this Slurm, in turn.
    Slurm(&'a Slurm),
}

/// A directory holding the mpi-pairs example's sources and a configuration for them.
fn pairs_project(
    name: &str,
    nodes: u32,
    network: &str,
    storage: &str,
    command: &str,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for file in ["pairs.c", "Dockerfile"] {
        std::fs::copy(repo_root().join("examples/mpi-pairs").join(file), dir.path().join(file))
            .unwrap();
    }
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"{name}\"\nnodes = {nodes}\n[network]\nmode = \"{network}\"\n\
             [storage]\nmode = \"{storage}\"\noutput = \"out\"\n[application]\n\
             dockerfile = \"Dockerfile\"\ntag = \"bee/mpi-pairs:latest\"\ncommand = {command}\n"
        ),
    );
    (dir, config)
}

/// Runs the pairs program on `nodes` nodes and checks its output and result files.
fn pairs_pass(name: &str, nodes: u32, network: &str, storage: &str) {
    pairs_pass_on(name, nodes, network, storage, On::Here);
}

/// [`pairs_pass`] with the nodes where `on` says.
fn pairs_pass_on(name: &str, nodes: u32, network: &str, storage: &str, on: On<'_>) {
    let env = BeeEnv::new();
    let command = format!("[\"mpirun\", \"-np\", \"{nodes}\", \"/app/pairs\", \"/bee/shared\"]");
    let (dir, config) = pairs_project(name, nodes, network, storage, &command);
    let config_arg = config.to_str().unwrap();
    let hosts = match &on {
        On::Here => None,
        On::Ssh(hosts) => Some(hosts.toml_list()),
        On::Slurm(_) => Some("\"slurm\"".to_string()),
    };
    if let Some(hosts) = hosts {
        let platform = format!("[[platform]]\nbackend = \"vm\"\nhosts = {hosts}\n");
        let text = std::fs::read_to_string(&config).unwrap() + &platform;
        std::fs::write(&config, text).unwrap();
    }
    let mut bee = match &on {
        On::Here => env.command(&["run", config_arg]),
        On::Ssh(hosts) => {
            let mut bee = env.command(&["run", config_arg]);
            bee.env("BEE_SSH_CONFIG", hosts.ssh_config());
            bee
        }
        On::Slurm(slurm) => {
            let allocation = ["--nodes=2", &format!("--job-name={name}")];
            slurm.salloc_bee(&allocation, env.state_dir(), &["run", config_arg])
        }
    };
    let child = bee.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let output = wait_with_timeout(child, COMMAND_TIMEOUT, "bee run");
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        out,
        format!("{nodes} ranks: every pair exchanged 65536 bytes: all payloads intact\n")
    );
    for rank in 0..nodes {
        let file = dir.path().join(format!("out/rank-{rank}.txt"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}\nstderr:\n{err}", file.display()));
        assert_eq!(
            text,
            format!(
                "rank {rank} of {nodes} on {name}-{rank}: {} peers checked, 0 bad\n",
                nodes - 1
            )
        );
    }
    let probed = err.contains("bee: checking KVM where the guests run: done in ");
    assert_eq!(probed, !matches!(on, On::Here), "KVM probed where the guests run:\n{err}");
    match on {
        On::Here => {}
        On::Ssh(hosts) => {
            for (index, host) in hosts.addresses().iter().enumerate() {
                let node = format!("{name}-{index}: qemu started on {host} over SSH");
                assert!(err.contains(&node), "{node:?} missing from:\n{err}");
            }
        }
        On::Slurm(slurm) => {
            for index in 0..nodes {
                let host = [NODE, REMOTE_NODE][index as usize % 2];
                let node = format!("{name}-{index}: qemu started on {host} (step of Slurm job ");
                assert!(err.contains(&node), "{node:?} missing from:\n{err}");
            }
            assert_eq!(slurm.steps_left(), "", "job steps left running");
        }
    }
    env.assert_no_cluster_left();
}

#[test]
fn multicast_with_virtio_9p() {
    pairs_pass("mc-9p", 3, "multicast", "virtio-9p");
}

#[test]
fn multicast_with_data_image_nfs() {
    pairs_pass("mc-nfs", 3, "multicast", "data-image-nfs");
}

#[test]
fn p2p_star_with_virtio_9p() {
    pairs_pass("star-9p", 3, "p2p-star", "virtio-9p");
}

/// Three guests on two hosts reached over SSH (network namespaces with their own sshd):
/// the master's star links to the other host cross the namespaces' bridge.
#[test]
fn p2p_star_with_data_image_nfs_across_two_ssh_hosts() {
    let hosts = SshHosts::start(2);
    pairs_pass_on("star-nfs", 3, "p2p-star", "data-image-nfs", On::Ssh(&hosts));
}

#[test]
fn p2p_tree_with_virtio_9p() {
    pairs_pass("tree-9p", 3, "p2p-tree", "virtio-9p");
}

/// Three guests on the two nodes of a Slurm allocation (one of them a network namespace
/// with an address of its own): the tree of three is the master's star, whose links to
/// the other node meet at that node's address; bee reaches each guest's QMP through a
/// relay step on its node.
#[test]
fn p2p_tree_with_data_image_nfs_on_two_slurm_nodes() {
    let slurm = Slurm::start();
    pairs_pass_on("tree-nfs", 3, "p2p-tree", "data-image-nfs", On::Slurm(&slurm));
}

/// In a tree of four, node 3 hangs below node 1 and node 2 below the master: their
/// messages cross three links and two bridges.
#[test]
fn p2p_tree_of_four_carries_messages_between_nodes_three_hops_apart() {
    pairs_pass("tree4", 4, "p2p-tree", "virtio-9p");
}

#[test]
fn a_guest_killed_mid_run_is_named_and_output_already_written_is_kept() {
    let env = BeeEnv::new();
    let command = "[\"sh\", \"-c\", \"hostname > /bee/shared/before-fault.txt && \
                   mpirun -np 3 sleep 900\"]";
    let (dir, config) = pairs_project("fault", 3, "p2p-star", "virtio-9p", command);
    let child = env.spawn(&["run", config.to_str().unwrap()]);
    let cluster = env.state_dir().join("clusters/fault");
    wait_until("the job to write into the shared directory", Duration::from_secs(1200), || {
        cluster.join("shared/before-fault.txt").is_file()
    });
    let pid = env.kill_qemu("fault", "fault-2");

    let output = wait_with_timeout(child, Duration::from_secs(300), "bee run");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!("node fault-2 died: its qemu process (pid {pid}) is gone")),
        "{err}"
    );
    let kept = std::fs::read_to_string(dir.path().join("out/before-fault.txt"));
    assert_eq!(kept.unwrap_or_default(), "fault-0\n", "{err}");
    env.assert_no_cluster_left();
}
