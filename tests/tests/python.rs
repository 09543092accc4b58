//! The `bee` Python module (bee-py), imported by python3 as a user would: bad input raises
//! bee's exceptions with bee's messages, a run hands the application's output to a
//! callable and returns its exit code, and Ctrl-C tears the cluster down (during `up`, what
//! had started). The guest tests need the guest image, which `scripts/test.sh` builds when
//! it is missing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bee_tests::{
    repo_root, stderr, stdout, wait_until, wait_with_timeout, write_config, BeeEnv, PythonPath,
    COMMAND_TIMEOUT,
};

/// Starts `script` with `args` in python3 with the module importable, its stdout and stderr
/// piped.
fn spawn_python(env: &BeeEnv, python: &PythonPath, script: &str, args: &[&str]) -> Child {
    let mut command = env.python(python, script, args);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.spawn().expect("python3 starts")
}

/// Runs `script` with `args` in python3 with the module importable, and waits for it.
fn python(env: &BeeEnv, script: &str, args: &[&str], timeout: Duration) -> (String, String) {
    let python = PythonPath::new();
    let child = spawn_python(env, &python, script, args);
    let output = wait_with_timeout(child, timeout, "python3");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

/// Prints `NAME: MESSAGE` for the exception each bad call raises, and the results of the
/// good ones.
const BAD_INPUT: &str = r#"
import sys, bee
calls = [
    ("missing file", lambda: bee.check(sys.argv[1] + "/absent.toml")),
    ("zero nodes", lambda: bee.check(sys.argv[1] + "/zero.toml")),
    ("aws backend", lambda: bee.check(sys.argv[1] + "/aws.toml")),
    ("no backend", lambda: bee.check(sys.argv[1] + "/nobackend.toml")),
    ("run without application", lambda: bee.run(sys.argv[1] + "/noapp.toml")),
    ("up of aws", lambda: bee.up(sys.argv[1] + "/aws.toml")),
    ("down unknown", lambda: bee.down("nosuch")),
    ("resume unknown", lambda: bee.resume("nosuch")),
    ("discard unknown", lambda: bee.discard("nosuch")),
    ("not a path", lambda: bee.check(3)),
    ("ssh unknown", lambda: bee.ssh("nosuch", ["true"])),
    ("ssh without a command", lambda: bee.ssh("nosuch", [])),
    ("ssh of a string", lambda: bee.ssh("nosuch", "hostname")),
    ("ssh of numbers", lambda: bee.ssh("nosuch", [1, 2])),
]
for what, call in calls:
    try:
        call()
        print(f"{what}: no exception")
    except Exception as err:
        kind = type(err).__name__
        base = "bee.Error" if isinstance(err, bee.Error) else "other"
        print(f"{what}: {kind} ({base}): {err}")
print("check:", bee.check(sys.argv[1] + "/noapp.toml"))
print("status:", bee.status())
"#;

#[test]
fn bad_input_from_python_raises_bee_exceptions_that_name_it() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    file("zero.toml", "[cluster]\nname = \"zero\"\nnodes = 0\n");
    file(
        "nobackend.toml",
        "[cluster]\nname = \"nb\"\nnodes = 1\n[[platform]]\nhosts = \"local\"\n",
    );
    file("aws.toml", "[cluster]\nname = \"aws\"\nnodes = 1\n[[platform]]\nbackend = \"aws\"\n");
    file(
        "noapp.toml",
        "[cluster]\nname = \"noapp\"\nnodes = 2\n[storage]\nmode = \"data-image-nfs\"\n\
         [[platform]]\nbackend = \"vm\"\nhosts = \"local\"\ntime_slot = \"20m\"\n",
    );
    let (out, _) =
        python(&env, BAD_INPUT, &[dir.path().to_str().unwrap()], Duration::from_secs(60));
    let d = dir.path().display();
    for expected in [
        format!("missing file: ConfigError (bee.Error): cannot read {d}/absent.toml"),
        format!(
            "zero nodes: ConfigError (bee.Error): {d}/zero.toml: cluster.nodes = 0: expected a \
             whole number from 1 to 64"
        ),
        format!("aws backend: Error (bee.Error): {d}/aws.toml: platform[0].backend = \"aws\""),
        format!(
            "no backend: ConfigError (bee.Error): {d}/nobackend.toml: [platform]: entry 0 has no \
             backend: add backend = \"vm\""
        ),
        format!("run without application: ConfigError (bee.Error): {d}/noapp.toml: [application] is missing"),
        format!("up of aws: Error (bee.Error): {d}/aws.toml: platform[0].backend = \"aws\""),
        "down unknown: Error (bee.Error): no cluster named \"nosuch\"".to_string(),
        "resume unknown: Error (bee.Error): no run named \"nosuch\"".to_string(),
        "discard unknown: Error (bee.Error): no run named \"nosuch\"".to_string(),
        "not a path: TypeError (other): argument 'config': expected str, bytes or os.PathLike"
            .to_string(),
        "ssh unknown: Error (bee.Error): no cluster named \"nosuch\"".to_string(),
        "ssh without a command: ValueError (other): bee.ssh needs a command to run, such as \
         [\"hostname\"]"
            .to_string(),
        "ssh of a string: TypeError (other): bee.ssh: command must be a list of strings, such \
         as [\"hostname\"], not a str"
            .to_string(),
        "ssh of numbers: TypeError (other): bee.ssh: command must be a list of strings, such \
         as [\"hostname\"]: "
            .to_string(),
        "check: {'name': 'noapp', 'nodes': 2, 'cpus': 1, 'memory_mib': 1024, 'network': \
         'p2p-tree', 'storage': 'data-image-nfs', 'image': None, 'platforms': [{'backend': 'vm', \
         'hosts': 'local', 'time_slot_s': 1200.0}]}"
            .to_string(),
        "status: {'clusters': [], 'runs': [], 'version': 1}".to_string(),
    ] {
        assert!(out.lines().any(|line| line.starts_with(&expected)), "{expected:?} in:\n{out}");
    }
    env.assert_no_cluster_left();
}

/// Runs a bee.toml, collecting the application's output and bee's progress through
/// callables, and prints the exit code, the output, some of the progress and what
/// `bee.status()` says afterwards.
const RUN: &str = r#"
import sys, bee
chunks, events = [], []
code = bee.run(sys.argv[1], output=lambda stream, data: chunks.append((stream, data)),
               progress=lambda kind, text: events.append((kind, text)))
print("exit code:", code)
print("kinds:", sorted(set(kind for kind, _ in events)))
for kind, text in events:
    if kind == "message" or text.startswith("stopping cluster"):
        print("progress:", kind, text.split(": done in")[0])
print("stdout:", repr(b"".join(d for s, d in chunks if s == "stdout").decode()))
status = bee.status()
print("clusters:", len(status["clusters"]))
print("runs:", [(r["name"], r["phase"]) for r in status["runs"]])
"#;

#[test]
fn run_from_python_returns_the_exit_code_and_hands_the_output_to_a_callable() {
    let env = BeeEnv::new();
    let config = repo_root().join("examples/hello/bee.toml");
    let (out, err) = python(&env, RUN, &[config.to_str().unwrap()], COMMAND_TIMEOUT);
    assert!(out.contains("exit code: 0\n"), "{out}");
    assert!(out.contains("hello from a container on hello-0\\n"), "{out}");
    assert!(out.contains("MPI rank 0 of 2\\nMPI rank 1 of 2\\n"), "{out}");
    assert!(out.contains("clusters: 0\nruns: [('hello', 'completed')]\n"), "{out}");
    let kinds = out.lines().find(|l| l.starts_with("kinds: ")).unwrap_or_default();
    for kind in ["'started'", "'finished'", "'message'"] {
        assert!(kinds.contains(kind), "{kind} in {kinds:?}");
    }
    for line in [
        "progress: message starting on platform 0 (vm on local)\n",
        "progress: message running bee/hello:latest on platform 0 (vm on local)\n",
        "progress: started stopping cluster hello\n",
        "progress: finished stopping cluster hello\n",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    // With a progress callable, nothing of bee's goes to stderr.
    assert!(!err.contains("bee: "), "{err}");
    env.assert_no_cluster_left();
}

/// Runs a bee.toml whose application never ends, printing its output as it comes; on
/// KeyboardInterrupt prints what `bee.status()` says, discards the run and says that too.
/// A process started in the background by a shell without job control (CI's, often) has
/// SIGINT ignored, and Python then leaves it ignored: the script installs Python's own
/// handler so that the test's SIGINT is Ctrl-C wherever the tests run.
const INTERRUPTED: &str = r#"
import signal, sys, bee
signal.signal(signal.SIGINT, signal.default_int_handler)
def show(stream, data):
    sys.stdout.write(data.decode())
    sys.stdout.flush()
try:
    bee.run(sys.argv[1], output=show)
    print("not interrupted")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
    status = bee.status()
    print("clusters:", len(status["clusters"]))
    print("runs:", [(r["name"], r["phase"], r["detail"]) for r in status["runs"]])
    bee.discard("pyint")
    print("runs after discard:", len(bee.status()["runs"]))
"#;

#[test]
fn ctrl_c_in_python_tears_the_cluster_down_and_the_run_can_be_discarded() {
    let env = BeeEnv::new();
    let python = PythonPath::new();
    let dir = tempfile::tempdir().unwrap();
    let tag = "bee-test/busybox:py";
    bee_tests::write_busybox_app(dir.path(), tag);
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"pyint\"\nnodes = 1\n[application]\ntarball = \"app.tar\"\n\
             tag = \"{tag}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \
             \"echo started; exec /bin/busybox sleep 600\"]\n"
        ),
    );
    let mut child = spawn_python(&env, &python, INTERRUPTED, &[config.to_str().unwrap()]);
    let (lines, seen) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let forward = std::thread::spawn(move || {
        let mut all = String::new();
        for line in reader.lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    let started = loop {
        match seen.recv_timeout(COMMAND_TIMEOUT) {
            Ok(line) if line == "started" => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    if !started {
        let _ = child.kill();
    }
    assert!(
        started,
        "the application never printed `started`: {}",
        stderr(&child.wait_with_output().unwrap())
    );
    assert_eq!(env.qemu_processes().len(), 1, "one guest runs the application");
    bee_tests::ctrl_c(&child);
    let output = wait_with_timeout(child, COMMAND_TIMEOUT, "python3 after Ctrl-C");
    let out = forward.join().expect("the reader thread");
    let err = stderr(&output);
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    // Without a progress callable, bee's progress goes to stderr as the command prints it.
    assert!(err.contains("bee: starting on platform 0 (vm on local)\n"), "{err}");
    assert!(
        out.ends_with(
            "started\nKeyboardInterrupt\nclusters: 0\nruns: [('pyint', 'failed', 'interrupted')]\n\
             runs after discard: 0\n"
        ),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    env.assert_no_cluster_left();
}

/// Runs a bee.toml whose only platform's time slot ends in a checkpoint, prints what
/// bee.Waiting says, then resumes from a file without the slot with an output callable
/// that raises, and prints what it saw, what it raised and the run's phase.
const WAITING: &str = r#"
import sys, bee
show = lambda stream, data: print(stream, data.decode().strip(), flush=True)
try:
    bee.run(sys.argv[1], output=show)
    print("not waiting")
except bee.Waiting as err:
    print("Waiting:", err)
    print("phase:", [r["phase"] for r in bee.status()["runs"]])
text = open(sys.argv[1]).read().replace('time_slot = "40s"\n', "")
open(sys.argv[1], "w").write(text)
seen = []
def failing(stream, data):
    seen.append(data.decode().strip())
    raise RuntimeError("callback failed")
try:
    bee.resume("pywait", output=failing)
    print("no exception")
except RuntimeError as err:
    print("resume raised:", err, "after", seen)
print("phase:", [r["phase"] for r in bee.status()["runs"]])
"#;

#[test]
fn a_run_from_python_that_waits_for_a_platform_raises_waiting_and_resumes() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let tag = "bee-test/busybox:wait";
    bee_tests::write_busybox_app(dir.path(), tag);
    // Waits for the checkpoint request, saves its state and exits; started again with a
    // saved state, prints it and ends.
    let app = "b=/bin/busybox; s=/bee/shared; if $b test -f $s/state; then echo restored \
               $($b cat $s/state); exit 0; fi; echo started; while ! $b test -f \
               $s/checkpoint-now; do $b sleep 0.2; done; echo saved > $s/state";
    let config = write_config(
        dir.path(),
        &format!(
            "[cluster]\nname = \"pywait\"\nnodes = 1\n[storage]\nmode = \"virtio-9p\"\n\
             [application]\ntarball = \"app.tar\"\ntag = \"{tag}\"\n\
             command = [\"/bin/busybox\", \"sh\", \"-c\", \"{app}\"]\n\
             [checkpoint]\ncommand = [\"/bin/busybox\", \"touch\", \"/bee/shared/checkpoint-now\"]\n\
             timeout = \"1m\"\nmargin = \"10s\"\n\
             [[platform]]\nbackend = \"vm\"\ntime_slot = \"40s\"\n"
        ),
    );
    let (out, err) = python(&env, WAITING, &[config.to_str().unwrap()], COMMAND_TIMEOUT);
    let data = env.state_dir().join("runs/pywait/data");
    let expected = format!(
        "stdout started\nWaiting: run pywait was checkpointed and no platform is left: its \
         checkpoint is in {}; bee.resume(\"pywait\") continues\nphase: ['waiting']\n\
         resume raised: callback failed after ['restored saved']\nphase: ['completed']\n",
        data.display()
    );
    assert_eq!(out, expected, "stderr:\n{err}");
    env.assert_no_cluster_left();
}

/// Starts a cluster with `bee.up`; on KeyboardInterrupt says how many clusters are left.
/// Installs Python's SIGINT handler, as [`INTERRUPTED`] does.
const UP_INTERRUPTED: &str = r#"
import signal, sys, bee
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    bee.up(sys.argv[1])
    print("not interrupted")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
    print("clusters:", len(bee.status()["clusters"]))
"#;

#[test]
fn ctrl_c_during_up_from_python_tears_down_what_had_started() {
    let env = BeeEnv::new();
    let python = PythonPath::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[cluster]\nname = \"pyhalf\"\nnodes = 1\n");
    let child = spawn_python(&env, &python, UP_INTERRUPTED, &[config.to_str().unwrap()]);
    wait_until("the guest's QEMU", Duration::from_secs(300), || env.qemu_recorded("pyhalf"));
    bee_tests::ctrl_c(&child);
    let output = wait_with_timeout(child, Duration::from_secs(120), "python3 after Ctrl-C");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out, "KeyboardInterrupt\nclusters: 0\n", "stderr:\n{err}");
    env.assert_no_cluster_left();
}

/// Starts a cluster with `bee.up`, runs commands on its node with `bee.ssh` and stops it
/// with `bee.down`, printing what each returns.
const UP_SSH_DOWN: &str = r#"
import sys, bee
name = bee.up(sys.argv[1], progress=lambda kind, text: None)
print("up:", name)
done = bee.ssh(name, ["hostname"])
print("hostname:", done.returncode, done.stdout, done.stderr, done.args)
done = bee.ssh(name, ["printf", "%s|", "a b", "it's", "$HOME"])
print("words:", done.stdout)
done = bee.ssh(name, ["sh", "-c", "echo oops >&2; exit 3"], node="pyup-0")
print("failing:", done.returncode, done.stdout, done.stderr)
try:
    bee.ssh(name, ["true"], node="1")
except bee.Error as err:
    print("node 1:", err)
print("clusters:", [c["name"] for c in bee.status()["clusters"]])
bee.down(name)
print("after down:", len(bee.status()["clusters"]))
"#;

#[test]
fn up_ssh_and_down_from_python() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[cluster]\nname = \"pyup\"\nnodes = 1\n");
    let (out, err) = python(&env, UP_SSH_DOWN, &[config.to_str().unwrap()], COMMAND_TIMEOUT);
    let expected = "up: pyup\nhostname: 0 b'pyup-0\\n' b'' ['hostname']\n\
                    words: b\"a b|it's|$HOME|\"\n\
                    failing: 3 b'' b'oops\\n'\n\
                    node 1: cluster pyup has no node \"1\": expected an index from 0 to 0 or one \
                    of pyup-0\nclusters: ['pyup']\nafter down: 0\n";
    assert_eq!(out, expected, "stderr:\n{err}");
    env.assert_no_cluster_left();
}
