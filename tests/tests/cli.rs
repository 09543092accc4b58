//! Failure paths of the `bee` command that need no guest: each gives a clear error and
//! the documented exit code.

use bee_tests::hosts::SshHosts;
use bee_tests::slurm::{Slurm, REMOTE_NODE};
use bee_tests::{stderr, write_config, BeeEnv};

#[test]
fn invalid_configuration_names_file_key_and_value() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[cluster]\nname = \"x\"\nnodes = 0\n");
    let output = env.bee(&["up", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let expected = format!(
        "bee: error: {}: cluster.nodes = 0: expected a whole number from 1 to 64\n",
        config.display()
    );
    assert_eq!(stderr(&output), expected);
}

#[test]
fn run_failures_exit_with_125() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[cluster]\nname = \"x\"\nnodes = 1\n");
    let output = env.bee(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(125));
    assert!(
        stderr(&output).contains("[application] is missing: `bee run` needs an image"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_configuration_file_is_named() {
    let env = BeeEnv::new();
    let output = env.bee(&["up", "/nonexistent/bee.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "bee: error: cannot read /nonexistent/bee.toml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn unknown_cluster_is_reported_by_down_and_ssh() {
    let env = BeeEnv::new();
    for args in [&["down", "ghost"][..], &["ssh", "ghost"][..]] {
        let output = env.bee(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&output),
            "bee: error: no cluster named \"ghost\": `bee status` lists the clusters there are\n"
        );
    }
}

#[test]
fn an_unreachable_host_is_named_before_anything_boots() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[cluster]\nname = \"far\"\nnodes = 1\n[[platform]]\nbackend = \"vm\"\n\
         hosts = [\"bee-no-such-host.invalid\"]\n",
    );
    let output = env.bee(&["up", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with(
            "bee: error: cannot start cluster far: placing the nodes: vm: hosts[0] = \
             \"bee-no-such-host.invalid\": cannot reach it over SSH (exit status: 255): "
        ),
        "{err}"
    );
    assert!(err.contains("Could not resolve hostname bee-no-such-host.invalid"), "{err}");
    assert!(!env.state_dir().join("clusters/far").exists());
    assert!(env.qemu_processes().is_empty());
}

#[test]
fn kvm_is_probed_on_each_ssh_host_and_what_fails_there_is_named() {
    let hosts = SshHosts::start(2);
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"kp\"\nnodes = 2\n[[platform]]\nbackend = \"vm\"\n\
             hosts = {}\n",
            hosts.toml_list()
        ),
    );
    // A QEMU that cannot run anything, on every host: the probe there fails (or finds no
    // KVM device, on a machine without one), and so do the guests.
    let bin = tempfile::tempdir().unwrap();
    let qemu = bin.path().join("qemu-system-x86_64");
    std::fs::write(&qemu, "#!/bin/sh\necho \"qemu: cannot run here\" >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let output = env
        .command(&["up", config.to_str().unwrap()])
        .env("BEE_SSH_CONFIG", hosts.ssh_config())
        .env("BEE_QEMU", &qemu)
        .output()
        .unwrap();

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("bee: checking KVM where the guests run: done in "), "{err}");
    let warning = err.lines().find(|l| l.starts_with("bee: warning: ")).unwrap_or_default();
    for host in hosts.addresses() {
        assert!(warning.contains(&format!("{host}: /dev/kvm ")), "{host}: {err}");
    }
    let reason = "is present but QEMU could not run a test guest with KVM (qemu: cannot run here)";
    assert!(warning.contains(reason) || warning.contains("does not exist"), "{err}");
    assert!(warning.ends_with("which is much slower on every host"), "{err}");
    assert!(err.contains("bee: error: cannot start cluster kp"), "{err}");
    assert!(!env.state_dir().join("clusters/kp").exists());
    assert!(env.qemu_processes().is_empty());
}

#[test]
fn status_json_with_no_clusters_parses() {
    let env = BeeEnv::new();
    let output = env.bee(&["status", "--json"]);
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["version"], 1);
    assert_eq!(report["clusters"], serde_json::json!([]));
}

#[test]
fn missing_guest_image_says_how_to_build_it() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[cluster]\nname = \"noimage\"\nnodes = 1\n");
    let output = env
        .command(&["up", config.to_str().unwrap()])
        .env("BEE_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr(&output);
    let err = stderr.lines().find(|l| l.starts_with("bee: error:")).unwrap_or_default();
    let expected = format!(
        "bee: error: cannot start cluster noimage: starting 1 node(s): vm: no guest image in \
         {}/images/",
        cache.path().display()
    );
    assert!(err.starts_with(&expected), "{err}");
    assert!(err.ends_with(": run `bee image build` first (needs root, a few minutes)"), "{err}");
    assert!(!env.state_dir().join("clusters/noimage").exists());
}

#[test]
fn state_directory_too_long_for_sockets_is_refused_at_once() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let long = env.state_dir().join("s".repeat(80));
    let config = write_config(dir.path(), "[cluster]\nname = \"deep\"\nnodes = 1\n");
    let output = env
        .command(&["up", config.to_str().unwrap()])
        .env("BEE_STATE_DIR", &long)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let control = long.join("clusters/deep/ssh/.ssh-connection??????/master.????????????????");
    let expected = format!(
        "bee: error: cannot start cluster deep: the Unix socket {} would be {} bytes long, over the limit of 107: set \
         BEE_STATE_DIR to a shorter directory or give the cluster a shorter name\n",
        control.display(),
        control.as_os_str().len()
    );
    assert_eq!(stderr(&output), expected);
    assert!(!long.join("clusters/deep").exists());
    assert!(env.qemu_processes().is_empty());
}

#[test]
fn slurm_hosts_outside_an_allocation_are_refused_or_skipped() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[cluster]\nname = \"sl\"\nnodes = 1\n[application]\nimage = \"bee/base\"\n\
         command = [\"true\"]\n[[platform]]\nbackend = \"vm\"\nhosts = \"slurm\"\n",
    );
    let reason = "hosts = \"slurm\" needs a Slurm allocation, and SLURM_JOB_ID and \
                  SLURM_JOB_NODELIST are not set: run bee inside `salloc` or an `sbatch` script";
    let outside = |args: &[&str]| {
        env.command(args)
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_JOB_NODELIST")
            .output()
            .unwrap()
    };

    let output = outside(&["up", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let expected =
        format!("bee: error: cannot start cluster sl: placing the nodes: vm: {reason}\n");
    assert_eq!(stderr(&output), expected);

    // `bee run` skips the platform; with none left and nothing to resume, it fails.
    let output = outside(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(125));
    let err = stderr(&output);
    assert!(err.contains(&format!("skipping platform 0 (vm on slurm): {reason}")), "{err}");
    assert!(
        err.ends_with(&format!(
            "bee: error: no platform can start run \"sl\": platform 0 (vm on slurm): {reason}\n"
        )),
        "{err}"
    );
    assert!(!env.state_dir().join("clusters/sl").exists());
    assert!(env.qemu_processes().is_empty());
}

#[test]
fn a_slurm_node_that_cannot_run_the_qmp_relay_is_named_before_any_guest_starts() {
    let slurm = Slurm::start();
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[cluster]\nname = \"sn\"\nnodes = 2\n[application]\nimage = \"bee/base\"\n\
         command = [\"true\"]\n[[platform]]\nbackend = \"vm\"\nhosts = \"slurm\"\n",
    );
    // A socat that runs for bee here but not in a job step on the other node, as on a
    // cluster whose compute nodes lack it.
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("socat");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$SLURMD_NODENAME\" = {REMOTE_NODE} ]; then\n  \
             echo \"socat: not found on $SLURMD_NODENAME\" >&2; exit 127\nfi\n\
             exec /usr/bin/socat \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());

    let output = slurm
        .salloc_bee(&["--nodes=2"], env.state_dir(), &["up", config.to_str().unwrap()])
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    let start = "bee: error: cannot start cluster sn: placing the nodes: vm: hosts = \"slurm\" \
                 reaches each guest's QMP socket through socat on its node, and `srun socat -V` \
                 on the allocation's nodes failed (exit status: 127): ";
    assert!(err.starts_with(start), "{err}");
    // The node's own words and srun's line naming it, in either order.
    assert!(err.contains(&format!("1: socat: not found on {REMOTE_NODE}")), "{err}");
    assert!(err.ends_with("; install it (Debian's socat) on every node\n"), "{err}");
    assert!(!env.state_dir().join("clusters/sn").exists());
    assert!(env.qemu_processes().is_empty());
    assert_eq!(slurm.steps_left(), "", "job steps left running");
}

#[test]
fn slurm_hosts_without_the_qmp_relay_program_are_refused_or_skipped() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[cluster]\nname = \"sr\"\nnodes = 1\n[application]\nimage = \"bee/base\"\n\
         command = [\"true\"]\n[[platform]]\nbackend = \"vm\"\nhosts = \"slurm\"\n",
    );
    let reason = "hosts = \"slurm\" reaches each guest's QMP socket through socat, which is not \
                  on PATH: install it (Debian's socat) here and on the allocation's nodes";
    // Inside an allocation, as far as bee can tell, with a PATH that holds no socat.
    let empty = tempfile::tempdir().unwrap();
    let without_socat = |args: &[&str]| {
        env.command(args)
            .env("SLURM_JOB_ID", "1")
            .env("SLURM_JOB_NODELIST", "bee-node")
            .env("PATH", empty.path())
            .output()
            .unwrap()
    };

    let output = without_socat(&["up", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let expected =
        format!("bee: error: cannot start cluster sr: placing the nodes: vm: {reason}\n");
    assert_eq!(stderr(&output), expected);

    let output = without_socat(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(125));
    let err = stderr(&output);
    assert!(err.contains(&format!("skipping platform 0 (vm on slurm): {reason}")), "{err}");
    assert!(!env.state_dir().join("clusters/sr").exists());
    assert!(env.qemu_processes().is_empty());
}

#[test]
fn a_backend_this_bee_lacks_is_refused_before_anything_boots() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[cluster]\nname = \"cloud\"\nnodes = 1\n[application]\nimage = \"bee/base\"\n\
         command = [\"true\"]\n[[platform]]\nbackend = \"vm\"\n[[platform]]\n\
         backend = \"aws\"\n",
    );
    let expected = format!(
        "bee: error: {}: platform[1].backend = \"aws\" is not supported yet: this bee has \
         only the VM backend (bee-aws and bee-chameleon are placeholders); use backend = \
         \"vm\"\n",
        config.display()
    );
    // `bee run` checks every platform, so a run does not fail when it reaches the second.
    let output = env.bee(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(125));
    assert_eq!(stderr(&output), expected);

    let first = std::fs::read_to_string(&config).unwrap().replace("\"vm\"", "\"chameleon\"");
    std::fs::write(&config, first).unwrap();
    let output = env.bee(&["up", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("platform[0].backend = \"chameleon\" is not supported"));
    assert!(!env.state_dir().join("clusters/cloud").exists());
    assert!(env.qemu_processes().is_empty());
}

#[test]
fn a_vm_level_checkpoint_with_a_9p_share_is_refused_naming_what_works() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[cluster]\nname = \"x\"\nnodes = 1\n[storage]\nmode = \"virtio-9p\"\n\
         [application]\nimage = \"debian:bookworm\"\n\
         [[platform]]\nbackend = \"vm\"\ntime_slot = \"10m\"\n",
    );
    let output = env.bee(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(125));
    let expected = format!(
        "bee: error: {}: storage.mode = \"virtio-9p\": platform[0].time_slot without \
         [checkpoint] asks for a VM-level checkpoint (QEMU migration), and QEMU cannot migrate \
         a guest with a mounted 9p share: use mode = \"data-image-nfs\", or add [checkpoint] so \
         that the application saves its own state\n",
        config.display()
    );
    assert_eq!(stderr(&output), expected);
    env.assert_no_cluster_left();
}
