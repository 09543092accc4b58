//! Algorithm 1 on real guests: an MPI application outlives its time slot, is checkpointed,
//! moves to the next platform (a real Slurm allocation of the node in a network
//! namespace, see [`bee_tests::slurm`], so that bee reaches its QEMU through the QMP relay
//! and its SSH at that node's address) and is restored there; with no platform left its checkpoint
//! waits for `bee resume`. The same counter without a checkpoint of its own is moved as a
//! whole VM (QEMU migration into a file, restored with `-incoming`), to a Slurm
//! allocation and to a host reached over SSH (see [`bee_tests::hosts`]). Needs the guest
//! image, which `scripts/test.sh` builds when it is missing.
//!
//! The clusters have one node running two MPI ranks, to keep the suite within CI's time
//! on two cores (MPI across nodes is what `mpi.rs` tests). The result of an uninterrupted
//! run is computed by [`expected_result`], the counter's arithmetic redone here, rather
//! than by a third guest.

use std::path::{Path, PathBuf};

use std::process::Stdio;

use bee_tests::hosts::SshHosts;
use bee_tests::slurm::{Slurm, NODE, REMOTE_NODE};
use bee_tests::{
    repo_root, stderr, stdout, wait_with_timeout, write_config, BeeEnv, COMMAND_TIMEOUT,
};

/// Steps the counter runs and its sleep per step: about a minute of work, so that a slot
/// of 50 s less a 10 s margin interrupts it.
const STEPS: u64 = 600;
const STEP_MS: u64 = 100;
const RANKS: u64 = 2;

/// The checksum line the counter example writes after `steps` steps on `ranks` ranks,
/// computed the way `examples/checkpoint-counter/counter.c` does.
fn expected_result(ranks: u64, steps: u64) -> String {
    let mut states: Vec<u64> =
        (0..ranks).map(|r| 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(r + 1)).collect();
    for step in 0..steps {
        for state in &mut states {
            *state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                .wrapping_add(step);
        }
        let mixed = states.iter().fold(0, |acc, s| acc ^ s);
        for state in &mut states {
            *state ^= mixed >> 17;
        }
    }
    let sum = states.iter().fold(0u64, |acc, s| acc.wrapping_add(*s));
    format!("{ranks} ranks, {steps} steps: checksum {sum:016x}\n")
}

/// A directory with the counter example's sources and a configuration whose cluster is
/// `name`, with `extra` appended (checkpoint and platforms).
fn counter_project(name: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    counter_project_on(name, 1, "virtio-9p", extra)
}

/// [`counter_project`] of `nodes` nodes (joined by a P2P star), with the shared directory
/// on `storage`.
fn counter_project_on(
    name: &str,
    nodes: u32,
    storage: &str,
    extra: &str,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for file in ["counter.c", "Dockerfile"] {
        let from = repo_root().join("examples/checkpoint-counter").join(file);
        std::fs::copy(from, dir.path().join(file)).unwrap();
    }
    let args = format!("\"/app/counter\", \"/bee/shared\", \"{STEPS}\", \"{STEP_MS}\"");
    let network = if nodes > 1 { "[network]\nmode = \"p2p-star\"\n" } else { "" };
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"{name}\"\nnodes = {nodes}\n{network}\
             [storage]\nmode = \"{storage}\"\noutput = \"out\"\n\
             [application]\ndockerfile = \"Dockerfile\"\ntag = \"bee/counter:latest\"\n\
             command = [\"mpirun\", \"--oversubscribe\", \"-np\", \"{RANKS}\", {args}]\n{extra}"
        ),
    );
    (dir, config)
}

/// `[checkpoint]` of the counter: a request file, and the same command with `--restart`.
fn checkpoint_section() -> String {
    let args = format!("\"/app/counter\", \"/bee/shared\", \"{STEPS}\", \"{STEP_MS}\"");
    format!(
        "[checkpoint]\ncommand = \"touch /bee/shared/checkpoint-now\"\n\
         restore = [\"mpirun\", \"--oversubscribe\", \"-np\", \"{RANKS}\", {args}, \"--restart\"]\n\
         timeout = \"3m\"\nmargin = \"10s\"\n"
    )
}

fn result_file(dir: &Path) -> String {
    let file = dir.join("out/result.txt");
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn run_of(env: &BeeEnv, name: &str) -> serde_json::Value {
    let output = env.bee(&["status", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    runs.into_iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no run {name}"))
}

#[test]
fn a_checkpointed_run_moves_to_a_slurm_allocation_and_ends_like_an_uninterrupted_one() {
    let slurm = Slurm::start();
    let env = BeeEnv::new();
    let platforms = "[[platform]]\nbackend = \"vm\"\nhosts = \"local\"\ntime_slot = \"50s\"\n\
                     [[platform]]\nbackend = \"vm\"\nhosts = \"slurm\"\n";
    let (moved_dir, moved) =
        counter_project("ckpt-move", &format!("{}{platforms}", checkpoint_section()));
    // `bee run` inside an allocation, as a user would type it on a login node; the
    // allocation's node is the other one.
    let allocation = ["--nodes=1", "--job-name=ckpt-move", &format!("--nodelist={REMOTE_NODE}")];
    let child = slurm
        .salloc_bee(&allocation, env.state_dir(), &["run", moved.to_str().unwrap()])
        .spawn()
        .expect("salloc starts");
    let output = wait_with_timeout(child, COMMAND_TIMEOUT, "salloc bee run");

    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(
            "checkpointing ckpt-move before the time slot of platform 0 (vm on local, \
                      time slot 50s) ends"
        ),
        "{err}"
    );
    assert!(err.contains("checkpoint 1 saved; moving to platform 1 (vm on slurm)"), "{err}");
    assert!(err.contains("restoring checkpoint 1 on platform 1 (vm on slurm)"), "{err}");
    assert!(
        err.contains(&format!("ckpt-move-0: qemu started on {REMOTE_NODE} (step of Slurm job ")),
        "{err}"
    );
    assert!(out.contains("counter: checkpoint saved at step "), "{out}");
    assert!(out.contains("counter: 2 ranks, restarting at step "), "{out}");

    assert_eq!(result_file(moved_dir.path()), expected_result(RANKS, STEPS));
    let state = moved_dir.path().join("out/state/rank-1");
    assert!(state.is_file(), "the saved state reached the output too: {}", state.display());

    let run = run_of(&env, "ckpt-move");
    assert_eq!(run["phase"], "completed");
    assert_eq!(run["checkpoints"], 1);
    assert_eq!(run["exit_code"], 0);
    assert!(!env.state_dir().join("runs/ckpt-move/data").exists(), "checkpoint left behind");
    env.assert_no_cluster_left();
    assert_eq!(slurm.steps_left(), "", "job steps left running");
}

#[test]
fn bee_killed_while_moving_a_checkpoint_is_resumed_with_the_same_result() {
    let env = BeeEnv::new();
    let platforms = "[[platform]]\nbackend = \"vm\"\ntime_slot = \"50s\"\n\
                     [[platform]]\nbackend = \"vm\"\n";
    // On the data image, which moves as one file (Storage::keep) that the resumed bee
    // must find moved, or move.
    let (dir, config) = counter_project_on(
        "ckpt-kill",
        1,
        "data-image-nfs",
        &format!("{}{platforms}", checkpoint_section()),
    );
    let mut child = env
        .command(&["run", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bee starts");
    // SIGKILL as soon as bee says it is saving the checkpoint: the run is then in its
    // transfer (stopping the guest, keeping the data image), which takes seconds.
    let transfer = "saving checkpoint 1 from platform 0";
    let lines = stderr_lines(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    while !seen.contains(transfer) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push_str(&(line + "\n")),
            Err(_) => {
                let _ = child.kill();
                panic!("bee ended or hung before {transfer:?}; it said:\n{seen}");
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let run = run_of(&env, "ckpt-kill");
    assert_eq!(run["phase"], "transferring", "the kill missed the transfer: {run}\n{seen}");
    assert!(env.state_dir().join("clusters/ckpt-kill").exists(), "the cluster was still up");

    let output = env.bee(&["resume", "ckpt-kill"]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("resuming run ckpt-kill (transferring)"), "{err}");
    assert!(err.contains("tearing down cluster ckpt-kill, left by an earlier bee"), "{err}");
    assert!(err.contains("checkpoint 1 saved; moving to platform 1 (vm on local)"), "{err}");
    assert!(err.contains("restoring checkpoint 1 on platform 1 (vm on local)"), "{err}");
    let kept = env.state_dir().join("runs/ckpt-kill/data/bee-data-image.ext4");
    assert!(err.contains(&format!(" from {}: done in ", kept.display())), "{err}");
    assert!(out.contains("counter: 2 ranks, restarting at step "), "{out}");
    assert_eq!(result_file(dir.path()), expected_result(RANKS, STEPS));
    let run = run_of(&env, "ckpt-kill");
    assert_eq!((run["phase"].as_str(), run["checkpoints"].as_u64()), (Some("completed"), Some(1)));
    env.assert_no_cluster_left();
}

#[test]
fn an_mpi_job_without_checkpoints_moves_as_whole_vms_to_two_slurm_nodes_and_ends_like_an_uninterrupted_one(
) {
    // The two saved guests, one rank on each, are restored one on each node of the
    // allocation, their QMP reached through the relay and their link between the nodes new.
    let slurm = Slurm::start();
    vm_level_move("ckpt-vm", 2, Next::Slurm(&slurm));
}

#[test]
fn a_job_without_checkpoints_moves_as_a_whole_vm_to_an_ssh_host_and_ends_like_an_uninterrupted_one()
{
    // The saved guest is restored by a QEMU in an SSH session on the host, its QMP
    // forwarded back through that session.
    let hosts = SshHosts::start(1);
    vm_level_move("ckpt-vmssh", 1, Next::Ssh(&hosts));
}

/// Where a VM-level checkpoint moves the guests.
enum Next<'a> {
    /// A two-node allocation of this Slurm: guest i on node i.
    Slurm(&'a Slurm),
    /// These SSH hosts: guest i on host i.
    Ssh(&'a SshHosts),
}

/// The counter without a checkpoint of its own on `nodes` guests (one MPI rank each when
/// there are two), 45 s on this host, then moved as whole VMs to `next`: with no
/// [checkpoint] the slot ends in a VM-level checkpoint, 30 s before it ends. The counter
/// runs on, one process from start to end, and its result is an uninterrupted run's.
fn vm_level_move(name: &str, nodes: u32, next: Next<'_>) {
    let env = BeeEnv::new();
    let second = match &next {
        Next::Slurm(_) => "\"slurm\"".to_string(),
        Next::Ssh(hosts) => hosts.toml_list(),
    };
    let platforms = format!(
        "[[platform]]\nbackend = \"vm\"\ntime_slot = \"45s\"\n\
         [[platform]]\nbackend = \"vm\"\nhosts = {second}\n"
    );
    let (dir, config) = counter_project_on(name, nodes, "data-image-nfs", &platforms);
    let args = ["-v", "run", config.to_str().unwrap()];
    let started = std::time::Instant::now();
    let child = match &next {
        Next::Slurm(slurm) => {
            let allocation = ["--nodes=2", &format!("--job-name={name}")];
            slurm.salloc_bee(&allocation, env.state_dir(), &args).spawn().expect("salloc starts")
        }
        Next::Ssh(hosts) => {
            let mut bee = env.command(&args);
            bee.env("BEE_SSH_CONFIG", hosts.ssh_config());
            bee.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("bee starts")
        }
    };
    let output = wait_with_timeout(child, COMMAND_TIMEOUT, "bee run");
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    eprintln!(
        "vm-level checkpoint run took {:.0}s; bee said:\n{err}",
        started.elapsed().as_secs_f64()
    );

    let checkpointing = format!(
        "checkpointing {name} before the time slot of platform 0 (vm on local, time slot 45s) \
         ends"
    );
    assert!(err.contains(&checkpointing), "{err}");
    assert!(err.contains("saved checkpoint 1 of the whole nodes from platform 0"), "{err}");
    let on = match &next {
        Next::Slurm(_) => "slurm".to_string(),
        Next::Ssh(hosts) => hosts.addresses().join(", "),
    };
    let moving = format!("checkpoint 1 saved; moving to platform 1 (vm on {on})");
    assert!(err.contains(&moving), "{err}");
    let restoring = format!("restoring checkpoint 1 on platform 1 (vm on {on})");
    assert!(err.contains(&restoring), "{err}");
    assert!(err.contains(&format!("restoring {nodes} node(s) from their checkpoint")), "{err}");
    for index in 0..nodes as usize {
        assert!(err.contains(&format!("{name}-{index}: saved ")), "{err}");
        let started = match &next {
            Next::Slurm(_) => format!(
                "{name}-{index}: qemu started on {} (step of Slurm job ",
                [NODE, REMOTE_NODE][index]
            ),
            Next::Ssh(hosts) => {
                format!("{name}-{index}: qemu started on {} over SSH", hosts.addresses()[index])
            }
        };
        assert!(err.contains(&started), "{started:?} missing from:\n{err}");
    }
    // One process from start to end: it never restarted, and its output is not repeated.
    assert_eq!(out.matches("counter: 2 ranks, starting at step 0 of 600").count(), 1, "{out}");
    assert!(!out.contains("restarting"), "{out}");
    let checksum = expected_result(RANKS, STEPS);
    assert_eq!(out.matches(&format!("counter: {checksum}")).count(), 1, "{out}");

    assert_eq!(result_file(dir.path()), checksum);
    assert!(!dir.path().join("out/state").exists(), "the application saved no state itself");
    let run = run_of(&env, name);
    assert_eq!(run["phase"], "completed");
    assert_eq!(run["checkpoints"], 1);
    assert_eq!(run["exit_code"], 0);
    assert!(!env.state_dir().join(format!("runs/{name}/data")).exists(), "checkpoint left");
    assert!(!env.state_dir().join(format!("runs/{name}/data.partial")).exists());
    env.assert_no_cluster_left();
    if let Next::Slurm(slurm) = next {
        assert_eq!(slurm.steps_left(), "", "job steps left running");
    }
}

/// The lines of a child's stderr as they come, read on a thread of their own.
fn stderr_lines(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<String> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

#[test]
fn with_no_platform_left_the_checkpoint_waits_for_resume() {
    let env = BeeEnv::new();
    let slot = "[[platform]]\nbackend = \"vm\"\ntime_slot = \"50s\"\n";
    let (dir, config) = counter_project("ckpt-wait", &format!("{}{slot}", checkpoint_section()));
    let output = env.bee(&["run", config.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(75), "{err}");
    let data = env.state_dir().join("runs/ckpt-wait/data");
    assert!(
        err.contains(&format!(
            "no platform left: checkpoint 1 kept in {}; `bee resume ckpt-wait` continues from it",
            data.display()
        )),
        "{err}"
    );
    assert!(data.join("state/rank-0").is_file() && data.join("state/rank-1").is_file());
    assert!(!data.join("checkpoint-now").exists(), "the request was not consumed");
    assert!(!dir.path().join("out/result.txt").exists());
    assert_eq!(run_of(&env, "ckpt-wait")["phase"], "waiting");
    env.assert_no_cluster_left();

    // A new run would lose the checkpoint, so it is refused.
    let output = env.bee(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(125));
    assert_eq!(
        stderr(&output),
        "bee: error: run \"ckpt-wait\" has not completed (waiting): `bee resume ckpt-wait` \
         continues it, `bee discard ckpt-wait` deletes it and its checkpoint\n"
    );

    // New resources: the same platform without a slot. Resume reads the file again.
    let text = std::fs::read_to_string(&config).unwrap().replace("time_slot = \"50s\"\n", "");
    std::fs::write(&config, text).unwrap();
    let output = env.bee(&["resume", "ckpt-wait"]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("resuming run ckpt-wait (waiting)"), "{err}");
    assert!(err.contains("restoring checkpoint 1 on platform 0 (vm on local)"), "{err}");
    assert_eq!(result_file(dir.path()), expected_result(RANKS, STEPS));
    let run = run_of(&env, "ckpt-wait");
    assert_eq!((run["phase"].as_str(), run["checkpoints"].as_u64()), (Some("completed"), Some(1)));
    env.assert_no_cluster_left();
}

#[test]
fn a_signal_asks_for_the_checkpoint_and_resume_restores_from_it() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let tag = "bee-test/busybox:signal";
    bee_tests::write_busybox_app(dir.path(), tag);
    // Saves its state and exits on SIGUSR1; started again with a saved state, prints it.
    let app = "b=/bin/busybox; s=/bee/shared; if $b test -f $s/state; then echo restored \
               $($b cat $s/state); exit 0; fi; trap 'echo saved > $s/state; exit 0' USR1; \
               echo started; while true; do $b sleep 0.2; done";
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"ckpt-sig\"\nnodes = 1\n[storage]\nmode = \"virtio-9p\"\n\
             [application]\ntarball = \"app.tar\"\ntag = \"{tag}\"\n\
             command = [\"/bin/busybox\", \"sh\", \"-c\", \"{app}\"]\n\
             [checkpoint]\nsignal = \"usr1\"\ntimeout = \"1m\"\nmargin = \"10s\"\n\
             [[platform]]\nbackend = \"vm\"\ntime_slot = \"40s\"\n"
        ),
    );
    let output = env.bee(&["run", config.to_str().unwrap()]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(75), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out, "started\n", "{err}");
    let state = env.state_dir().join("runs/ckpt-sig/data/state");
    assert_eq!(std::fs::read_to_string(state).unwrap_or_default(), "saved\n", "{err}");
    env.assert_no_cluster_left();

    let text = std::fs::read_to_string(&config).unwrap().replace("time_slot = \"40s\"\n", "");
    std::fs::write(&config, text).unwrap();
    let output = env.bee(&["resume", "ckpt-sig"]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out, "restored saved\n", "{err}");
    assert_eq!(run_of(&env, "ckpt-sig")["phase"], "completed");
    env.assert_no_cluster_left();
}

#[test]
fn resume_and_discard_of_an_unknown_run_say_so() {
    let env = BeeEnv::new();
    for (args, code) in [(&["resume", "ghost"][..], 125), (&["discard", "ghost"][..], 1)] {
        let output = env.bee(args);
        assert_eq!(output.status.code(), Some(code), "{args:?}");
        assert_eq!(
            stderr(&output),
            "bee: error: no run named \"ghost\": `bee status` lists the runs there are\n"
        );
    }
}

#[test]
fn the_expected_checksum_depends_on_every_step_and_rank() {
    let full = expected_result(2, 600);
    assert_ne!(full, expected_result(2, 599));
    assert_ne!(full, expected_result(3, 600));
    assert!(full.starts_with("2 ranks, 600 steps: checksum "), "{full}");
}
