//! `bee bench KIND --quick --out DIR` on real guests: each benchmark writes a `report.json`
//! that validates against the committed schema (`benches/schema/report.schema.json`),
//! holds real samples, and comes with non-empty PNG and SVG plots and a summary; nothing
//! it started is left behind. The network-mode advisor (`bee bench network --recommend`)
//! is checked against the synthetic programs of examples/net-patterns. Needs the guest
//! image, and on the host fio, iperf3, ping,
//! hpcc and the DejaVu font (`scripts/setup.sh --tests` installs them). The benchmarks
//! measure, so `scripts/test.sh` runs these one at a time.

use std::fs;
use std::path::Path;

use bee_tests::{processes_mentioning, repo_root, stderr, stdout, BeeEnv};
use serde_json::Value;

/// The schema every report validates against.
fn schema() -> jsonschema::Validator {
    let path = repo_root().join("benches/schema/report.schema.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

/// Runs `bee bench KIND --quick` into a fresh directory and checks what it wrote; returns
/// the report.
fn quick_bench(kind: &str) -> Value {
    let env = BeeEnv::new();
    // The benchmark's state directories go under TMPDIR, which must stay short (bee's SSH
    // control sockets live inside them): /tmp/bee-bench-tmp- and six random characters
    // make 24, so use a shorter prefix.
    let tmp = tempfile::Builder::new().prefix("bbt-").tempdir_in("/tmp").expect("temp dir");
    let out_parent = tempfile::tempdir().expect("temp dir");
    let out = out_parent.path().join("report");
    let output =
        bench_in(&env, tmp.path(), &["bench", kind, "--quick", "--out", out.to_str().unwrap()]);
    let (out_text, err_text) = (stdout(&output), stderr(&output));
    assert!(
        output.status.success(),
        "bee bench {kind} failed\nstdout:\n{out_text}\nstderr:\n{err_text}"
    );
    assert!(out_text.contains(&format!("{kind} benchmark (accelerator: ")), "{out_text}");
    assert!(err_text.contains("expect about"), "the expected duration is stated first: {err_text}");

    let report = read_report(&out.join("report.json"));
    let errors: Vec<String> =
        schema().iter_errors(&report).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "report.json does not validate: {errors:#?}\n{report:#}");
    assert_eq!(report["benchmark"], kind);
    assert_eq!(report["quick"], true);
    let series = report["series"].as_array().expect("series");
    assert!(
        series.iter().any(|s| s["samples"].as_array().is_some_and(|v| !v.is_empty())),
        "no samples: {report:#}"
    );
    for s in series.iter().filter(|s| !s["samples"].as_array().unwrap().is_empty()) {
        let positive = s["samples"].as_array().unwrap().iter().all(|v| v.as_f64().unwrap() > 0.0);
        assert!(positive, "a sample is not a positive measurement: {s}");
    }
    let accel = report["qemu"]["accelerator"].as_str().unwrap();
    let summary = fs::read_to_string(out.join("summary.md")).expect("summary.md");
    // The figures of this run, for whoever reads the test's output.
    eprintln!("{summary}");
    assert!(summary.contains(&format!("accelerator: **{accel}**")), "{summary}");
    if accel == "tcg" {
        assert!(summary.contains("TCG overhead is not the paper's figure"), "{summary}");
    }

    for metric in report["metrics"].as_array().unwrap() {
        let id = metric["id"].as_str().unwrap();
        for ext in ["png", "svg"] {
            assert_plot(&out.join(format!("{id}.{ext}")));
        }
    }
    assert_plot(&out.join("ratios.png"));
    assert_plot(&out.join("ratios.svg"));

    env.assert_no_cluster_left();
    assert_eq!(processes_mentioning(tmp.path()), Vec::<u32>::new(), "processes left behind");
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "files left in TMPDIR: {left:?}");
    report
}

/// Runs `bee ARGS` with `tmp` as its TMPDIR, failing the test if it hangs.
fn bench_in(env: &BeeEnv, tmp: &Path, args: &[&str]) -> std::process::Output {
    let mut command = env.command(args);
    command.env("TMPDIR", tmp);
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bee starts");
    bee_tests::wait_with_timeout(
        child,
        bee_tests::COMMAND_TIMEOUT,
        &format!("bee {}", args.join(" ")),
    )
}

fn read_report(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A plot exists, is not empty and starts as its format does.
fn assert_plot(path: &Path) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let magic: &[u8] =
        if path.extension().is_some_and(|e| e == "png") { b"\x89PNG" } else { b"<svg" };
    assert!(bytes.len() > 1000 && bytes.starts_with(magic), "{} is not a plot", path.display());
}

/// The subjects of `metric` that have samples.
fn measured(report: &Value, metric: &str) -> Vec<String> {
    report["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metric"] == metric && !s["samples"].as_array().unwrap().is_empty())
        .map(|s| s["subject"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bench_compute_quick_compares_guest_and_container_with_the_host() {
    let report = quick_bench("compute");
    assert_eq!(measured(&report, "stream_triad"), ["native", "guest", "container"]);
    assert_eq!(measured(&report, "dgemm"), ["native", "guest", "container"]);
    let comparisons = report["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 4);
    assert!(comparisons.iter().all(|c| c["reference"] == "native" && c["met"].is_boolean()));
}

#[test]
fn bench_deploy_quick_times_bee_up_against_plain_qemu() {
    let report = quick_bench("deploy");
    assert_eq!(measured(&report, "deploy_time"), ["plain qemu", "bee up"]);
    assert_eq!(measured(&report, "bee_peak_rss"), ["bee"]);
}

#[test]
fn bench_network_quick_measures_the_default_mode_against_one_link() {
    let report = quick_bench("network");
    assert_eq!(measured(&report, "bandwidth"), ["host loopback", "reference", "p2p-tree"]);
    assert_eq!(measured(&report, "all_to_all"), ["reference", "p2p-tree", "p2p-tree"]);
}

#[test]
fn bench_storage_quick_measures_virtio_9p_against_a_host_directory() {
    let report = quick_bench("storage");
    assert_eq!(measured(&report, "write"), ["native", "virtio-9p"]);
    assert_eq!(measured(&report, "read"), ["native", "virtio-9p"]);
}

#[test]
fn bench_checkpoint_quick_times_one_checkpoint_against_a_plain_copy() {
    let report = quick_bench("checkpoint");
    assert_eq!(measured(&report, "ckpt_time"), ["plain copy", "bee"]);
    assert_eq!(
        measured(&report, "phases"),
        ["checkpoint", "transfer", "restore", "deploy (excluded)"]
    );
    let comparisons = report["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 1);
    let comparison = &comparisons[0];
    assert_eq!(
        (comparison["x"].as_f64(), comparison["reference"].as_str()),
        (Some(64.0), Some("plain copy"))
    );
    assert_eq!(comparison["target"], serde_json::json!({"on": "ratio", "op": "<", "value": 1.5}));
    assert!(comparison["met"].is_boolean(), "{comparison}");
    assert_eq!(report["settings"]["hosts"], serde_json::json!(["local", "local"]));
}

#[test]
fn bench_refuses_an_out_that_is_a_file_before_it_starts_anything() {
    let env = BeeEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let output = env.bee(&["bench", "compute", "--quick", "--out", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!(
            "bee: error: --out {}: exists and is not a directory; give a directory, which is \
             created if it is missing\n",
            file.display()
        )
    );
    let output = env.bee(&["bench", "storage", "--recommend", "bee.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "bee: error: --recommend is for `bee bench network` (it recommends a network mode), \
         not for `bee bench storage`\n"
    );
    let single = dir.path().join("single.toml");
    fs::write(&single, "[cluster]\nname = \"single\"\nnodes = 1\n").unwrap();
    let output = env.bee(&["bench", "network", "--recommend", single.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!(
            "bee: error: --recommend {}: cluster.nodes = 1: one node has no data-plane network \
             to choose; give a configuration with nodes >= 2\n",
            single.display()
        )
    );
    let missing = dir.path().join("missing.toml");
    let output = env.bee(&["bench", "network", "--recommend", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with(&format!("bee: error: --recommend {}: ", missing.display())),
        "{}",
        stderr(&output)
    );
    let output = env.bee(&["bench", "gpu"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output)
        .contains("[possible values: deploy, network, storage, compute, checkpoint]"));
}

/// One `pattern=NAME ... seconds=S` line of examples/net-patterns' program: its name and
/// seconds.
fn pattern_seconds(line: &str) -> Option<(String, f64)> {
    let field =
        |key: &str| line.split_whitespace().find_map(|f| f.strip_prefix(key).map(str::to_owned));
    Some((field("pattern=")?, field("seconds=")?.parse().ok()?))
}

/// The network-mode advisor on two synthetic applications (examples/net-patterns: an
/// all-to-all heavy one and a neighbour-exchange heavy one, a 1-D halo exchange) picks,
/// for each, the mode that a direct measurement picks: the programs' own timing of their
/// exchanges (MPI_Wtime), in the output of the same runs, which the advisor keeps. The
/// advisor itself times each run from outside, start of the container to its exit, as it
/// does for any application.
#[test]
fn the_advisor_picks_the_mode_a_direct_measurement_picks_for_two_synthetic_apps() {
    const MODES: [&str; 2] = ["multicast", "p2p-star"];
    const PATTERNS: [&str; 2] = ["alltoall", "halo"];
    let examples = repo_root().join("examples/net-patterns");
    let env = BeeEnv::new();
    let tmp = tempfile::Builder::new().prefix("bbt-").tempdir_in("/tmp").expect("temp dir");
    let out_parent = tempfile::tempdir().expect("temp dir");
    let out = out_parent.path().join("advice");
    let files: Vec<String> = PATTERNS
        .iter()
        .map(|pattern| examples.join(format!("{pattern}.toml")).display().to_string())
        .collect();
    let mut args = vec!["bench", "network", "--runs", "1", "--out", out.to_str().unwrap()];
    for file in &files {
        args.extend(["--recommend", file.as_str()]);
    }
    let output = bench_in(&env, tmp.path(), &args);
    let (out_text, err_text) = (stdout(&output), stderr(&output));
    assert!(
        output.status.success(),
        "the advisor failed\nstdout:\n{out_text}\nstderr:\n{err_text}"
    );
    assert!(out_text.starts_with("network-mode advisor (accelerator: "), "{out_text}");
    assert!(err_text.contains("expect about"), "the expected duration is stated first: {err_text}");

    let report = read_report(&out.join("report.json"));
    let errors: Vec<String> =
        schema().iter_errors(&report).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "report.json does not validate: {errors:#?}\n{report:#}");
    for metric in ["app_1", "app_2"] {
        assert_eq!(measured(&report, metric), MODES);
        assert_plot(&out.join(format!("{metric}.png")));
        assert_plot(&out.join(format!("{metric}.svg")));
    }
    let summary = fs::read_to_string(out.join("summary.md")).expect("summary.md");
    eprintln!("{summary}");

    let picks = report["recommendations"].as_array().expect("recommendations");
    assert_eq!(picks.len(), 2, "{report:#}");
    for (i, (pattern, (pick, file))) in PATTERNS.iter().zip(picks.iter().zip(&files)).enumerate() {
        assert_eq!(pick["file"], file.as_str());
        let mut direct: Vec<(&str, f64)> = Vec::new();
        for mode in MODES {
            let log = out.join(format!("runs/app_{}-{mode}-1.log", i + 1));
            let text =
                fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            let (name, seconds) = text
                .lines()
                .find_map(pattern_seconds)
                .unwrap_or_else(|| panic!("{} has no timing: {text}", log.display()));
            assert_eq!(name, *pattern, "{}", log.display());
            direct.push((mode, seconds));
        }
        let fastest = direct.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
        eprintln!("{pattern}: the program's own seconds: {direct:?}");
        assert_eq!(
            pick["mode"], fastest,
            "the advisor and the direct measurement disagree on {pattern}: advisor {pick}, \
             direct {direct:?}"
        );
    }

    env.assert_no_cluster_left();
    assert_eq!(processes_mentioning(tmp.path()), Vec::<u32>::new(), "processes left behind");
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "files left in TMPDIR: {left:?}");
}
