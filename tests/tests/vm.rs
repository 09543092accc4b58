//! Real guests: bee boots QEMU (software emulation where KVM does not work), Docker runs
//! inside, and the container's output comes back. Needs the guest image, which
//! `scripts/test.sh` builds when it is missing.

use std::time::Duration;

use bee_tests::{port_in_use, repo_root, stderr, stdout, wait_until, write_config, BeeEnv};

/// Asserts that nothing of the environment's clusters is left: no QEMU, no record, and
/// none of the given ports listening.
fn assert_clean(env: &BeeEnv, ports: &[u16]) {
    env.assert_no_cluster_left();
    for port in ports {
        assert!(!port_in_use(*port), "port {port} still listening");
    }
}

fn status_json(env: &BeeEnv) -> serde_json::Value {
    let output = env.bee(&["status", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("status --json parses")
}

#[test]
fn run_builds_a_dockerfile_from_bee_base_and_prints_from_the_container() {
    let env = BeeEnv::new();
    let config = repo_root().join("examples/hello/bee.toml");
    let output = env.bee(&["run", config.to_str().unwrap()]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("hello from a container on hello-0"), "{out}");
    assert!(out.contains("MPI rank 0 of 2\nMPI rank 1 of 2"), "{out}");
    assert!(out.contains("shared directory: d"), "{out}");
    assert!(err.contains("application exited with code 0"), "{err}");
    assert_clean(&env, &[]);
}

#[test]
fn up_status_ssh_and_down_from_fresh_processes() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[cluster]\nname = \"updown\"\nnodes = 1\n");
    let output = env.bee(&["up", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));

    let status = status_json(&env);
    let cluster = &status["clusters"][0];
    assert_eq!(cluster["name"], "updown");
    assert_eq!(cluster["phase"], "ready");
    assert_eq!(cluster["nodes"][0]["name"], "updown-0");
    assert_eq!(cluster["nodes"][0]["alive"], true);
    let port = cluster["nodes"][0]["ssh_port"].as_u64().expect("ssh port") as u16;
    assert!(port_in_use(port));

    let remote = "hostname; docker info -f '{{.ServerVersion}}'; cat /etc/machine-id";
    let output = env.bee(&["ssh", "updown", "0", "--", remote]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_string).collect();
    assert_eq!(lines[0], "updown-0");
    assert!(lines[1].starts_with("20.10"), "docker version {:?}", lines[1]);
    // The image ships no machine-id; each node makes its own at first boot.
    assert!(lines[2].len() == 32 && lines[2].chars().all(|c| c.is_ascii_hexdigit()), "{lines:?}");

    // The node's host key is pinned: a different key in known_hosts must be refused.
    let node_dir = env.state_dir().join("clusters/updown/updown-0");
    let known_hosts = node_dir.join("known_hosts");
    let pinned = std::fs::read_to_string(&known_hosts).unwrap();
    let other = dir.path().join("other_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {other_pub}")).unwrap();
    let output = env.bee(&["ssh", "updown", "--", "true"]);
    assert_ne!(output.status.code(), Some(0), "ssh accepted an unpinned host key");
    assert!(stderr(&output).contains("Host key verification failed"), "{}", stderr(&output));
    std::fs::write(&known_hosts, pinned).unwrap();

    let key_mode = std::fs::metadata(node_dir.join("ssh_host_ed25519_key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777, 0o600);

    let output = env.bee(&["down", "updown"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_clean(&env, &[port]);
    assert_eq!(status_json(&env)["clusters"], serde_json::json!([]));
}

#[test]
fn killing_qemu_during_a_run_names_the_node_and_tears_down() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM bee/base\n").unwrap();
    let config = write_config(
        dir.path(),
        "[cluster]\nname = \"victim\"\nnodes = 1\n[application]\ndockerfile = \"Dockerfile\"\n\
         command = [\"sh\", \"-c\", \"echo started; sleep 900\"]\n",
    );
    let child = env.spawn(&["run", config.to_str().unwrap()]);
    let record = env.state_dir().join("clusters/victim/record.json");
    wait_until("the run to start", Duration::from_secs(900), || {
        std::fs::read_to_string(&record).is_ok_and(|text| text.contains("\"phase\": \"running\""))
    });
    let pid = env.kill_qemu("victim", "victim-0");

    let output = bee_tests::wait_with_timeout(child, Duration::from_secs(300), "bee run");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!("node victim-0 died: its qemu process (pid {pid}) is gone")),
        "{err}"
    );
    assert!(err.contains("the run failed; the cluster was torn down"), "{err}");
    assert_clean(&env, &[]);
}

#[test]
fn run_loads_a_docker_save_tarball() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let tag = "bee-test/busybox:1";
    bee_tests::write_busybox_app(dir.path(), tag);
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"tarball\"\nnodes = 1\n[application]\ntarball = \"app.tar\"\n\
             tag = \"{tag}\"\ncommand = [\"/bin/busybox\", \"echo\", \"loaded from a tarball\"]\n"
        ),
    );
    let output = env.bee(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "loaded from a tarball\n");
    assert_clean(&env, &[]);
}

#[test]
fn run_pulls_from_a_registry_on_this_host() {
    let registry = bee_tests::Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    bee_tests::write_docker_archive(
        &archive,
        "pushed:1",
        &bee_tests::busybox_layer(),
        &["/bin/sh"],
    );
    registry.push(&archive, "bee-test/busybox:2");

    let env = BeeEnv::new();
    let image = format!("127.0.0.1:{}/bee-test/busybox:2", registry.port);
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"pull\"\nnodes = 1\n[application]\nimage = \"{image}\"\n\
             command = [\"/bin/busybox\", \"echo\", \"pulled from a registry\"]\n"
        ),
    );
    let output = env.bee(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "pulled from a registry\n");
    assert_clean(&env, &[]);
}

#[test]
fn ctrl_c_during_bee_up_tears_down_what_had_started() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[cluster]\nname = \"halfway\"\nnodes = 1\n");
    let child = env.spawn(&["up", config.to_str().unwrap()]);
    // The guest boots; bee waits for its SSH.
    wait_until("the guest's QEMU", Duration::from_secs(300), || env.qemu_recorded("halfway"));
    bee_tests::ctrl_c(&child);
    let output = bee_tests::wait_with_timeout(child, Duration::from_secs(120), "bee up");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bee: error: interrupted; what had started of cluster halfway is torn down"),
        "{err}"
    );
    assert_clean(&env, &[]);
}

#[test]
fn ctrl_c_during_bee_run_tears_down_and_the_run_can_be_discarded() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let tag = "bee-test/busybox:ctrlc";
    bee_tests::write_busybox_app(dir.path(), tag);
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"ctrlc\"\nnodes = 1\n[application]\ntarball = \"app.tar\"\n\
             tag = \"{tag}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"600\"]\n"
        ),
    );
    let child = env.spawn(&["run", config.to_str().unwrap()]);
    let record = env.state_dir().join("clusters/ctrlc/record.json");
    wait_until("the run to start", Duration::from_secs(600), || {
        std::fs::read_to_string(&record).is_ok_and(|text| text.contains("\"phase\": \"running\""))
    });
    bee_tests::ctrl_c(&child);
    let output = bee_tests::wait_with_timeout(child, Duration::from_secs(120), "bee run");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(125), "{err}");
    assert!(
        err.contains(
            "bee: error: interrupted; the cluster was torn down: `bee resume ctrlc` continues"
        ),
        "{err}"
    );
    assert_clean(&env, &[]);
    let runs = &status_json(&env)["runs"];
    assert_eq!(
        (runs[0]["phase"].as_str(), runs[0]["detail"].as_str()),
        (Some("failed"), Some("interrupted")),
        "{runs}"
    );
    let output = env.bee(&["discard", "ctrlc"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(status_json(&env)["runs"], serde_json::json!([]));
}
