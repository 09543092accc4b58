//! `bee bench network --recommend FILE`: which network mode suits the application of a
//! `bee.toml`, measured on this host.
//!
//! The advisor brings the file's cluster up once under each data-plane network that lays
//! out different links for its number of nodes, delivers the application's image, runs
//! the application's command the given number of times, timing each run from the start
//! of its container to its exit (as `bee run` runs it: `mpirun` start-up included), and
//! recommends the mode with the lowest median; the output of every run is kept in the
//! output directory ([`RUN_LOGS`]). The recommendation is *clear* when the
//! medians differ by at least [`CLEAR_MARGIN`] and every run under the recommended mode
//! was faster than every run under the others; otherwise the report says the modes are
//! within noise here.
//!
//! The clusters run in-process, through the same cluster builder as `bee up`, on the
//! hosts of the file's first platform, in a state directory of the benchmark's own.
//!
//! # Limitations
//!
//! - The application runs several times on one cluster: one that keeps state in the shared
//!   directory between runs (a checkpoint, say) must start from scratch each time, or its
//!   later runs measure something else. `[checkpoint]` and the time slots are ignored,
//!   and nothing is collected into `storage.output`.
//! - Only the data-plane network changes between the clusters; the transport, subnet,
//!   hardware and storage are the file's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bee_core::cluster::{Cluster, ClusterBuilder};
use bee_core::config::{Application, Config, Hosts, NetworkMode, Transport};
use bee_core::events::{Event, Events};
use bee_vm::{ImageInputs, VmBackend};
use serde_json::json;

use crate::bee::{choose_accel, BeeState, Tools};
use crate::results::{Better, Comparison, Metric, Recommendation, Results, Series};
use crate::text::{fixed, heading, median_of, progress, step, Align, Table};
use crate::{Common, Kind};

/// The medians of the recommended mode and the runner-up must differ by this fraction of
/// the recommended one's for a clear recommendation.
pub const CLEAR_MARGIN: f64 = 0.10;

/// The directory in the output directory that keeps the output of every run, as
/// `METRIC-MODE-RUN.log`, runs counted from 1.
pub const RUN_LOGS: &str = "runs";

/// How long an advice takes on the two-core TCG host: bringing up a cluster and delivering
/// the image for each of `modes`, and there `runs` runs of each of `apps` short
/// applications (`mpirun`'s start-up alone takes about half a minute there).
pub(crate) fn expected(modes: usize, apps: usize, runs: u32) -> Duration {
    let per_mode = Duration::from_secs(150) + Duration::from_secs(60) * (apps as u32 * runs);
    per_mode * modes as u32
}

/// The data-plane networks worth measuring for a cluster of `nodes` nodes: those that lay
/// out different links. Below four nodes the tree is the star (nodes 1 and 2 both hang
/// below the master), so it is measured once, as the star.
pub fn modes_for(nodes: u32) -> Vec<NetworkMode> {
    let mut modes = vec![NetworkMode::Multicast, NetworkMode::P2pStar];
    if nodes >= 4 {
        modes.push(NetworkMode::P2pTree);
    }
    modes
}

/// The most files one advice takes: each gets a metric of its own.
pub const METRICS: [&str; 8] =
    ["app_1", "app_2", "app_3", "app_4", "app_5", "app_6", "app_7", "app_8"];

/// One application to advise on: its file, as given, and what it says.
#[derive(Debug, Clone)]
pub struct Advised {
    /// The `bee.toml`, as given on the command line.
    pub file: PathBuf,
    /// Its configuration.
    pub config: Config,
    /// Its application.
    pub app: Application,
}

/// The configuration the advisor can use: `file` with at least two nodes and an
/// application.
pub fn load(file: &Path) -> Result<Advised> {
    let config = Config::load(file).map_err(|e| anyhow!("--recommend {}: {e}", file.display()))?;
    if config.nodes < 2 {
        bail!(
            "--recommend {}: cluster.nodes = {}: one node has no data-plane network to choose; \
             give a configuration with nodes >= 2",
            file.display(),
            config.nodes
        );
    }
    let Some(app) = config.application.clone() else {
        bail!(
            "--recommend {}: has no [application]: the advisor times the application under each \
             network mode; add [application] with its image and command",
            file.display()
        );
    };
    Ok(Advised { file: file.to_path_buf(), config, app })
}

/// Every file of one advice, checked: they must describe the same cluster and image, so
/// that one cluster per mode runs all their applications.
pub fn load_all(files: &[PathBuf]) -> Result<Vec<Advised>> {
    if files.len() > METRICS.len() {
        bail!(
            "--recommend was given {} files; one advice takes at most {}: run the advisor again \
             for the others",
            files.len(),
            METRICS.len()
        );
    }
    let advised = files.iter().map(|f| load(f)).collect::<Result<Vec<_>>>()?;
    if let Some(first) = advised.first() {
        for other in &advised[1..] {
            if cluster_of(&other.config) != cluster_of(&first.config) {
                bail!(
                    "--recommend {}: describes another cluster or image than {}; the files of \
                     one advice may differ only in [application] command, env and workdir: run \
                     the advisor once for each",
                    other.file.display(),
                    first.file.display()
                );
            }
        }
    }
    Ok(advised)
}

/// What the clusters of an advice are made of: `config` without what may differ between
/// its files (the network mode too, which the advisor sets itself).
fn cluster_of(config: &Config) -> Config {
    let mut cluster = config.clone();
    cluster.file = PathBuf::new();
    cluster.name = String::new();
    cluster.network.mode = NetworkMode::Multicast;
    cluster.checkpoint = None;
    cluster.platforms.truncate(1);
    if let Some(platform) = cluster.platforms.first_mut() {
        platform.time_slot = None;
    }
    if let Some(storage) = &mut cluster.storage {
        storage.output = None;
    }
    if let Some(app) = &mut cluster.application {
        app.command = Vec::new();
        app.env.clear();
        app.workdir = None;
    }
    cluster
}

/// Runs the advisor on the applications [`load_all`] checked.
pub(crate) fn run(common: &Common, advised: &[Advised]) -> Result<Results> {
    let Some(first) = advised.first() else { bail!("--recommend needs a bee.toml") };
    let config = &first.config;
    let tools = Tools::locate(common.bee.clone())?;
    let accel = choose_accel()?;
    let modes = modes_for(config.nodes);
    let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    let shown: Vec<String> = advised.iter().map(|a| a.file.display().to_string()).collect();
    progress(&format!(
        "advising on {} ({} nodes, image {}): {} run(s) of each application under each of \
         {} (accelerator: {})",
        shown.join(", "),
        config.nodes,
        first.app.image,
        common.runs,
        names.join(", "),
        accel.as_str()
    ));

    let logs = common.out.join(RUN_LOGS);
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // measured[app] = [(mode, seconds of each run)]
    let mut measured: Vec<Vec<(NetworkMode, Vec<f64>)>> = vec![Vec::new(); advised.len()];
    for &mode in &modes {
        let state = BeeState::new(&tools)?;
        let times = runtime.block_on(measure(advised, mode, common.runs, &state, &logs))?;
        for (app, times) in measured.iter_mut().zip(times) {
            app.push((mode, times));
        }
    }

    let picks: Vec<Recommendation> = advised
        .iter()
        .zip(&measured)
        .enumerate()
        .map(|(i, (a, m))| recommend(&a.file.display().to_string(), METRICS[i], m))
        .collect();
    for pick in &picks {
        progress(&format!("recommended for {}: {}", pick.file, pick.reason));
    }
    Ok(results(advised, accel, common, &measured, picks))
}

/// Short cluster names, so that the SSH sockets' paths stay short (see `BeeState`).
fn cluster_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Multicast => "adv-mcast",
        NetworkMode::P2pStar => "adv-star",
        NetworkMode::P2pTree => "adv-tree",
    }
}

/// `config` as the advisor runs it under `mode`: its own name, nothing collected.
fn config_for(config: &Config, mode: NetworkMode) -> Config {
    let mut config = config.clone();
    config.name = cluster_name(mode).to_owned();
    config.network.mode = mode;
    if let Some(storage) = &mut config.storage {
        storage.output = None;
    }
    config
}

/// Brings the cluster up under `mode`, runs each application `runs` times (taking turns),
/// and brings the cluster down again; the seconds of each run, per application.
async fn measure(
    advised: &[Advised],
    mode: NetworkMode,
    runs: u32,
    state: &BeeState,
    logs: &Path,
) -> Result<Vec<Vec<f64>>> {
    let config = config_for(&advised[0].config, mode);
    progress(&format!("{}: starting {} nodes", mode.name(), config.nodes));
    let mut cluster = builder(&config, &state.path().join("clusters"))
        .up(&config, &Printed)
        .await
        .with_context(|| format!("network mode {}: cannot start the cluster", mode.name()))?;
    let measured = async {
        cluster.deliver(&advised[0].app, &Printed).await?;
        let mut times = vec![Vec::new(); advised.len()];
        for run in 1..=runs {
            for (i, (a, app_times)) in advised.iter().zip(&mut times).enumerate() {
                let what = format!("{}: {}: run {run} of {runs}", mode.name(), a.file.display());
                let log = logs.join(format!("{}-{}-{run}.log", METRICS[i], mode.name()));
                let seconds =
                    timed_run(&mut cluster, &a.app, &log).await.with_context(|| what.clone());
                let seconds = step(&what, || seconds, |s| format!("{s:.2} s"))?;
                app_times.push(seconds);
            }
        }
        Ok::<_, anyhow::Error>(times)
    }
    .await;
    let down = cluster.down(&Printed).await;
    let times = measured.with_context(|| format!("network mode {}", mode.name()))?;
    down.with_context(|| format!("network mode {}: cannot stop the cluster", mode.name()))?;
    Ok(times)
}

/// One run of the application, its output kept in `log`: its seconds, or its exit code and
/// last output.
async fn timed_run(cluster: &mut Cluster, app: &Application, log: &Path) -> Result<f64> {
    let mut printed = Vec::new();
    let started = Instant::now();
    let code = cluster.run(app, &mut |_, bytes| printed.extend_from_slice(bytes)).await?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(log, &printed).with_context(|| format!("cannot write {}", log.display()))?;
    if code != 0 {
        let text = String::from_utf8_lossy(&printed);
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("the application exited with code {code}; its last output:\n{}", tail.join("\n"));
    }
    Ok(seconds)
}

/// The cluster builder `bee up` would use for `config`, with its clusters in
/// `clusters_dir`.
fn builder(config: &Config, clusters_dir: &Path) -> ClusterBuilder {
    let hosts = config.platforms.first().map_or(Hosts::Local, |p| p.hosts.clone());
    let backend = VmBackend::from_cache(bee_core::paths::cache_dir(), ImageInputs::from_env());
    let mut builder = ClusterBuilder::new(Arc::new(backend.on_hosts(hosts)), clusters_dir);
    builder = builder.network(bee_net::for_mode(config.network.mode));
    if let Some(spec) = &config.storage {
        builder = builder.storage(bee_storage::for_mode(spec.mode));
    }
    builder
}

/// Passes bee's steps on as progress lines.
struct Printed;

impl Events for Printed {
    fn event(&self, event: Event) {
        match event {
            Event::Started { step } => progress(&format!("  {step}")),
            Event::Message { line } => progress(&format!("  {line}")),
            Event::Warning { message } => progress(&format!("  warning: {message}")),
            _ => {}
        }
    }
}

/// The mode with the lowest median time for the application of `file`, and how clearly it
/// beat the others.
pub fn recommend(
    file: &str,
    metric: &'static str,
    measured: &[(NetworkMode, Vec<f64>)],
) -> Recommendation {
    let median = |times: &[f64]| median_of(times);
    let mut ranked: Vec<&(NetworkMode, Vec<f64>)> = measured.iter().collect();
    ranked.sort_by(|a, b| median(&a.1).total_cmp(&median(&b.1)));
    let (best, best_times) = ranked[0];
    let file = file.to_owned();
    let Some((runner_up, runner_times)) = ranked.get(1).map(|r| (r.0, &r.1)) else {
        let reason = format!("{}: the only mode measured", best.name());
        let mode = best.name().to_owned();
        return Recommendation {
            file,
            metric,
            mode,
            runner_up: None,
            margin: None,
            clear: false,
            reason,
        };
    };
    let margin = median(runner_times) / median(best_times) - 1.0;
    let slowest_best = best_times.iter().copied().fold(f64::MIN, f64::max);
    let separated = ranked[1..].iter().all(|(_, times)| times.iter().all(|&t| t > slowest_best));
    let clear = margin >= CLEAR_MARGIN && separated;
    let percent = margin * 100.0;
    let reason = if clear {
        format!(
            "{}: its median run was {percent:.0} % faster than under {} (the next best), and \
             every run under it was faster than every run under the others",
            best.name(),
            runner_up.name()
        )
    } else {
        let why = if separated {
            format!("less than the {:.0} % a clear recommendation needs", CLEAR_MARGIN * 100.0)
        } else {
            "and the runs under the two overlap".to_owned()
        };
        format!(
            "{} by a small margin: its median run was {percent:.0} % faster than under {}, \
             {why}; the modes are within noise on this host (more --runs may separate them)",
            best.name(),
            runner_up.name()
        )
    };
    Recommendation {
        file,
        metric,
        mode: best.name().to_owned(),
        runner_up: Some(runner_up.name().to_owned()),
        margin: Some(margin),
        clear,
        reason,
    }
}

/// The report of the advisor's measurements: `measured[i]` and `picks[i]` are those of
/// `advised[i]`.
fn results(
    advised: &[Advised],
    accel: bee_vm::qemu::Accel,
    common: &Common,
    measured: &[Vec<(NetworkMode, Vec<f64>)>],
    picks: Vec<Recommendation>,
) -> Results {
    let config = &advised[0].config;
    let mut metrics = Vec::new();
    let mut series = Vec::new();
    let mut comparisons = Vec::new();
    for (i, (a, by_mode)) in advised.iter().zip(measured).enumerate() {
        let metric = METRICS[i];
        metrics.push(Metric {
            id: metric,
            title: format!("run time of {} on {} nodes", a.file.display(), config.nodes),
            unit: "s",
            better: Better::Lower,
            x_label: None,
        });
        for (mode, times) in by_mode {
            let subject = mode.name().to_owned();
            series.push(Series {
                metric,
                subject: subject.clone(),
                x: None,
                samples: times.clone(),
            });
            if subject != picks[i].mode {
                let reference = Some(picks[i].mode.clone());
                comparisons.push(Comparison { metric, subject, x: None, reference, target: None });
            }
        }
    }
    let modes: Vec<&str> = measured[0].iter().map(|(m, _)| m.name()).collect();
    let applications: Vec<serde_json::Value> = advised
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "file": a.file.display().to_string(),
                "metric": METRICS[i],
                "command": a.app.command,
            })
        })
        .collect();
    let settings = json!({
        "applications": applications,
        "image": advised[0].app.image,
        "nodes": config.nodes,
        "cpus": config.hardware.cpus,
        "memory_mib": config.hardware.memory_mib,
        "transport": Transport::ALL
            .iter()
            .find(|(t, _)| *t == config.network.transport)
            .map(|(_, name)| *name),
        "storage": config.storage.as_ref().map(|s| s.mode.name()),
        "modes": modes,
        "run_logs": RUN_LOGS,
        "clear_margin": CLEAR_MARGIN,
    });
    let mut notes = vec![
        "app_N: seconds from the start of application N's container on the master to its \
         exit, as `bee run` runs it (mpirun's start-up included), on one cluster per network \
         mode, the applications taking turns; the output of every run is in \
         runs/METRIC-MODE-RUN.log"
            .to_owned(),
        "the paper (sections III-A and VII) suggests p2p-tree for codes heavy in one-to-one \
         communication and multicast for all-to-all heavy ones; this measures the \
         applications themselves on this host"
            .to_owned(),
    ];
    if config.nodes < 4 {
        notes.push(format!(
            "p2p-tree was not measured: with {} nodes it lays out the same links as p2p-star \
             (every node below the master)",
            config.nodes
        ));
    }
    let nodes = format!("{} nodes", config.nodes);
    let mut table = heading("network-mode advisor", accel, common.runs, &[&nodes]);
    for ((a, by_mode), pick) in advised.iter().zip(measured).zip(&picks) {
        table += &format!("\n{}\n", a.file.display());
        table += &mode_table(by_mode, pick);
    }
    Results {
        kind: Kind::Network,
        accel,
        quick: common.quick,
        runs: common.runs,
        settings,
        metrics,
        series,
        comparisons,
        notes,
        table,
        recommendations: picks,
    }
}

/// One application's table: each mode's median, its ratio to the best, its samples.
fn mode_table(measured: &[(NetworkMode, Vec<f64>)], pick: &Recommendation) -> String {
    let medians: BTreeMap<&str, f64> =
        measured.iter().map(|(m, t)| (m.name(), median_of(t))).collect();
    let best = medians.get(pick.mode.as_str()).copied().unwrap_or(f64::NAN);
    let mut table = Table::new(&[
        ("mode", Align::Left),
        ("median s", Align::Right),
        ("x best", Align::Right),
        ("runs (s)", Align::Left),
    ]);
    for (mode, times) in measured {
        let median = medians[mode.name()];
        let samples: Vec<String> = times.iter().map(|t| fixed(*t, 2)).collect();
        table.push(vec![
            mode.name().to_owned(),
            fixed(median, 2),
            fixed(median / best, 2),
            samples.join(" "),
        ]);
    }
    let verdict = if pick.clear { "clear" } else { "not clear" };
    format!("{}recommended: {} ({verdict})\n", table.render(), pick.mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_measured_only_where_it_differs_from_the_star() {
        assert_eq!(modes_for(2), [NetworkMode::Multicast, NetworkMode::P2pStar]);
        assert_eq!(modes_for(3), [NetworkMode::Multicast, NetworkMode::P2pStar]);
        assert_eq!(
            modes_for(4),
            [NetworkMode::Multicast, NetworkMode::P2pStar, NetworkMode::P2pTree]
        );
    }

    #[test]
    fn a_mode_faster_in_every_run_by_enough_is_a_clear_pick() {
        let pick = recommend(
            "a.toml",
            "app_1",
            &[(NetworkMode::Multicast, vec![10.0, 10.4]), (NetworkMode::P2pStar, vec![12.0, 12.2])],
        );
        assert_eq!(pick.mode, "multicast");
        assert_eq!(pick.runner_up.as_deref(), Some("p2p-star"));
        assert!(pick.clear, "{}", pick.reason);
        assert!((pick.margin.unwrap() - (12.1 / 10.2 - 1.0)).abs() < 1e-9);
        assert!(
            pick.reason.starts_with("multicast: its median run was 19 % faster"),
            "{}",
            pick.reason
        );
    }

    #[test]
    fn overlapping_or_close_runs_are_no_clear_pick() {
        let overlap = recommend(
            "a.toml",
            "app_1",
            &[
                (NetworkMode::P2pStar, vec![10.0, 14.0, 10.2]),
                (NetworkMode::Multicast, vec![12.0, 12.1, 12.2]),
            ],
        );
        assert_eq!(overlap.mode, "p2p-star");
        assert!(!overlap.clear);
        assert!(overlap.reason.contains("the runs under the two overlap"), "{}", overlap.reason);

        let close = recommend(
            "b.toml",
            "app_2",
            &[(NetworkMode::Multicast, vec![10.5]), (NetworkMode::P2pStar, vec![10.0])],
        );
        assert_eq!(close.mode, "p2p-star");
        assert!(!close.clear);
        assert!(close.reason.contains("less than the 10 %"), "{}", close.reason);
    }

    #[test]
    fn each_mode_gets_its_own_short_cluster_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bee.toml");
        std::fs::write(
            &file,
            "[cluster]\nname = \"mine\"\nnodes = 3\n\n[network]\nmode = \"p2p-tree\"\n\n\
             [storage]\nmode = \"data-image-nfs\"\noutput = \"out\"\n\n\
             [application]\nimage = \"bee/base:latest\"\ncommand = [\"true\"]\n",
        )
        .unwrap();
        let Advised { config, app, .. } = load(&file).unwrap();
        assert_eq!(app.command, ["true"]);
        let star = config_for(&config, NetworkMode::P2pStar);
        assert_eq!(star.name, "adv-star");
        assert_eq!(star.network.mode, NetworkMode::P2pStar);
        assert_eq!(star.storage.as_ref().unwrap().output, None);
        assert_eq!(star.nodes, 3);
        assert_eq!(config_for(&config, NetworkMode::Multicast).name, "adv-mcast");
    }

    #[test]
    fn a_file_the_advisor_cannot_use_is_named_with_what_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bee.toml");
        std::fs::write(&file, "[cluster]\nname = \"one\"\nnodes = 1\n").unwrap();
        let err = load(&file).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "--recommend {}: cluster.nodes = 1: one node has no data-plane network to \
                 choose; give a configuration with nodes >= 2",
                file.display()
            )
        );

        std::fs::write(&file, "[cluster]\nname = \"two\"\nnodes = 2\n").unwrap();
        let err = load(&file).unwrap_err().to_string();
        assert!(err.ends_with("has no [application]: the advisor times the application under each network mode; add [application] with its image and command"), "{err}");

        let missing = dir.path().join("missing.toml");
        let err = load(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&format!("--recommend {}: ", missing.display())), "{err}");
    }

    #[test]
    fn the_files_of_one_advice_must_share_their_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, nodes: u32, command: &str| {
            let file = dir.path().join(name);
            std::fs::write(
                &file,
                format!(
                    "[cluster]\nname = \"{name}\"\nnodes = {nodes}\n\n[network]\n\
                     mode = \"{}\"\n\n[application]\nimage = \"bee/base:latest\"\n\
                     command = [\"{command}\"]\n",
                    if command == "x" { "multicast" } else { "p2p-tree" }
                ),
            )
            .unwrap();
            file
        };
        let (a, b, c) = (write("a", 3, "x"), write("b", 3, "y"), write("c", 4, "x"));
        let advised = load_all(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(advised[1].app.command, ["y"]);
        let err = load_all(&[a.clone(), c.clone()]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "--recommend {}: describes another cluster or image than {}; the files of one \
                 advice may differ only in [application] command, env and workdir: run the \
                 advisor once for each",
                c.display(),
                a.display()
            )
        );
        let err = load_all(&vec![a; 9]).unwrap_err().to_string();
        assert!(err.starts_with("--recommend was given 9 files; one advice takes at most 8"));
    }

    #[test]
    fn the_table_shows_each_mode_against_the_best() {
        let measured =
            [(NetworkMode::Multicast, vec![10.0, 10.4]), (NetworkMode::P2pStar, vec![12.0, 12.2])];
        let pick = recommend("a.toml", "app_1", &measured);
        let expected = "\
mode       median s  x best  runs (s)
multicast     10.20    1.00  10.00 10.40
p2p-star      12.10    1.19  12.00 12.20
recommended: multicast (clear)
";
        assert_eq!(mode_table(&measured, &pick), expected);
    }
}
