//! Multi-node clusters: an MPI job in containers across three or four guests, on every
//! combination of the paper's networks and storages (one of them with the guests on two
//! hosts reached over SSH), and a guest that dies mid-run.
//! Needs the guest image, which `scripts/test.sh` builds when it is missing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bee_tests::hosts::SshHosts;
use bee_tests::{
    repo_root, stderr, stdout, wait_until, wait_with_timeout, write_config, BeeEnv, COMMAND_TIMEOUT,
};

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
    pairs_pass_on(name, nodes, network, storage, None);
}

/// [`pairs_pass`] with the nodes on `hosts` (reached over SSH) instead of this host.
fn pairs_pass_on(name: &str, nodes: u32, network: &str, storage: &str, hosts: Option<&SshHosts>) {
    let env = BeeEnv::new();
    let command = format!("[\"mpirun\", \"-np\", \"{nodes}\", \"/app/pairs\", \"/bee/shared\"]");
    let (dir, config) = pairs_project(name, nodes, network, storage, &command);
    let mut bee = env.command(&["run", config.to_str().unwrap()]);
    if let Some(hosts) = hosts {
        let platform = format!("[[platform]]\nbackend = \"vm\"\nhosts = {}\n", hosts.toml_list());
        let text = std::fs::read_to_string(&config).unwrap() + &platform;
        std::fs::write(&config, text).unwrap();
        bee.env("BEE_SSH_CONFIG", hosts.ssh_config());
    }
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
    if let Some(hosts) = hosts {
        for (index, host) in hosts.addresses().iter().enumerate() {
            let node = format!("{name}-{index}: qemu started on {host} over SSH");
            assert!(err.contains(&node), "{node:?} missing from:\n{err}");
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
    pairs_pass_on("star-nfs", 3, "p2p-star", "data-image-nfs", Some(&hosts));
}

#[test]
fn p2p_tree_with_virtio_9p() {
    pairs_pass("tree-9p", 3, "p2p-tree", "virtio-9p");
}

#[test]
fn p2p_tree_with_data_image_nfs() {
    pairs_pass("tree-nfs", 3, "p2p-tree", "data-image-nfs");
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
    let child = env
        .command(&["run", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
