//! `bee bench compute`: HPC Challenge (Debian's `hpcc`, with its reference BLAS) in the
//! paper's three places: on the host (the reference), in a guest, and in a `bee/base`
//! container in that guest, the way bee runs an application.
//!
//! One cluster of one node is started with `bee up`; in every run the host, the guest and
//! the container each run `mpirun -np CPUS hpcc` on the same input (one process per vCPU
//! of the guest, HPL problem size N), one after another. From hpcc's summary the report
//! takes STREAM triad (`StarSTREAM_Triad`, GB/s per process) and DGEMM
//! (`StarDGEMM_Gflops`, GFLOP/s per process) and gives the guest's and the container's
//! as ratios to the host's. The target, from the paper's section VI-C (about 9 %
//! overhead with KVM), is at least [`TARGET`] of native.
//!
//! # Limitations
//!
//! - hpcc runs all of its tests (HPL, PTRANS, FFT, RandomAccess too); only the two above
//!   are reported. Its STREAM arrays are sized from N (a third of the HPL matrix each),
//!   so with the small N of `--quick` they fit in a large cache and the triad measures
//!   cache bandwidth as much as memory's.
//! - Under TCG every guest instruction is translated: the ratios then measure emulation,
//!   not the paper's virtualization overhead, and the report says so.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bee_core::docker::{BASE_IMAGE, BASE_TARBALL};
use bee_vm::qemu::Accel;
use serde_json::json;

use crate::bee::{
    choose_accel, require_host_tool, wait_with_deadline, BeeState, Cluster, ScratchDir, Tools,
    COMMAND_DEADLINE, POLL,
};
use crate::results::{Better, Comparison, Metric, Results, Series, Target, TargetOn};
use crate::text::{fixed, heading, progress, step, verdict, Align, Table};
use crate::{Common, Kind};

/// The cluster's name.
const CLUSTER: &str = "compute";

/// Guest memory, as `[hardware] memory` takes it.
const GUEST_MEMORY: &str = "1GiB";

/// Target for the guest's and the container's figures over the host's.
const TARGET: f64 = 0.9;

/// The places hpcc runs in, in report order; the first is the reference.
const PLACES: [Place; 3] = [Place::Native, Place::Guest, Place::Container];

/// Where hpcc runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// On the host.
    Native,
    /// In the guest, outside any container.
    Guest,
    /// In a `bee/base` container in the guest.
    Container,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Native => "native",
            Place::Guest => "guest",
            Place::Container => "container",
        }
    }
}

/// The size of the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    /// HPL's N, which also sizes STREAM and DGEMM.
    n: u32,
    /// vCPUs of the guest, and MPI processes everywhere.
    cpus: u32,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings { n: 1000, cpus: 1 }
        } else {
            Settings { n: 1500, cpus: 1 }
        }
    }
}

/// Fixed and per-run time on a two-core TCG host: a boot, then three hpcc runs.
pub(crate) fn expected(quick: bool) -> (Duration, Duration) {
    if quick {
        (Duration::from_secs(90), Duration::from_secs(70))
    } else {
        (Duration::from_secs(90), Duration::from_secs(200))
    }
}

/// What hpcc reported in one run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    triad_gb_s: f64,
    dgemm_gflop_s: f64,
}

/// Reads STREAM triad and DGEMM from the summary of an `hpccoutf.txt`; fails when hpcc
/// did not report success.
fn parse_hpcc(output: &str) -> Result<Figures> {
    let value = |key: &str| -> Option<&str> {
        output.lines().find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
    };
    if value("Success") != Some("1") {
        bail!("hpcc did not report Success=1 in its summary");
    }
    let number = |key: &str| -> Result<f64> {
        let text = value(key).with_context(|| format!("hpcc's summary has no {key}"))?;
        text.parse().with_context(|| format!("hpcc's {key} is not a number: {text}"))
    };
    Ok(Figures {
        triad_gb_s: number("StarSTREAM_Triad")?,
        dgemm_gflop_s: number("StarDGEMM_Gflops")?,
    })
}

/// The lines of `hpccinf.txt`: one HPL problem of size `n` on a 1 x `processes` grid.
///
/// HPL reads each value from the start of its line and ignores the rest, which names it.
fn input_lines(settings: &Settings) -> Vec<String> {
    let fixed = |value: &str, name: &str| format!("{value:<12} {name}");
    vec![
        "bee bench compute: HPC Challenge input".to_owned(),
        "written by bee".to_owned(),
        fixed("HPL.out", "output file name"),
        fixed("8", "device out (8 = hpccoutf.txt)"),
        fixed("1", "number of problem sizes"),
        fixed(&settings.n.to_string(), "N"),
        fixed("1", "number of block sizes"),
        fixed("80", "NB"),
        fixed("0", "process mapping: row-major"),
        fixed("1", "number of process grids"),
        fixed("1", "P"),
        fixed(&settings.cpus.to_string(), "Q"),
        fixed("16.0", "residual threshold"),
        fixed("1", "number of panel factorizations"),
        fixed("2", "PFACT: right"),
        fixed("1", "number of recursion stops"),
        fixed("4", "NBMIN"),
        fixed("1", "number of recursion panels"),
        fixed("2", "NDIV"),
        fixed("1", "number of recursive factorizations"),
        fixed("1", "RFACT: Crout"),
        fixed("1", "number of broadcasts"),
        fixed("1", "BCAST: increasing ring, modified"),
        fixed("1", "number of look-ahead depths"),
        fixed("1", "DEPTH"),
        fixed("2", "SWAP: mix"),
        fixed("64", "swapping threshold"),
        fixed("0", "L1: transposed"),
        fixed("0", "U: transposed"),
        fixed("1", "equilibration: yes"),
        fixed("8", "memory alignment in doubles"),
        "(separator line, ignored)".to_owned(),
        fixed("0", "additional PTRANS problem sizes"),
        fixed("0", "PTRANS sizes"),
        fixed("0", "additional PTRANS block sizes"),
        fixed("0", "PTRANS block sizes"),
    ]
}

/// A shell command that writes `hpccinf.txt` into the working directory, runs hpcc and
/// prints its output file. It holds no `$` and no double quote, so that it can be passed
/// inside double quotes.
fn hpcc_script(settings: &Settings) -> String {
    let lines: Vec<String> = input_lines(settings).iter().map(|l| format!("'{l}'")).collect();
    format!(
        "printf '%s\\n' {} > hpccinf.txt && mpirun -np {} hpcc > hpcc.stdout && cat hpccoutf.txt",
        lines.join(" "),
        settings.cpus
    )
}

/// The command run in the guest for `place`.
fn guest_command(place: Place, settings: &Settings) -> String {
    let script = hpcc_script(settings);
    match place {
        Place::Guest => {
            format!("d=$(mktemp -d) && cd $d && {script}; status=$?; rm -rf $d; exit $status")
        }
        _ => format!(
            "(docker image inspect {BASE_IMAGE} > /dev/null 2>&1 || docker import {BASE_TARBALL} \
             {BASE_IMAGE} > /dev/null) && docker run --rm -w /tmp -e OMPI_ALLOW_RUN_AS_ROOT=1 \
             -e OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 {BASE_IMAGE} sh -c \"{script}\""
        ),
    }
}

/// hpcc on the host, in a fresh directory.
fn native_hpcc(settings: &Settings) -> Result<Figures> {
    let dir = ScratchDir::new("bee-bench-hpcc-")?;
    fs::write(dir.path().join("hpccinf.txt"), input_lines(settings).join("\n") + "\n")?;
    let stdout = fs::File::create(dir.path().join("hpcc.stdout"))?;
    let child = Command::new("mpirun")
        .args(["-np", &settings.cpus.to_string(), "hpcc"])
        .current_dir(dir.path())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run mpirun")?;
    let status = wait_with_deadline(child, COMMAND_DEADLINE, POLL, |_| ())?;
    let output = dir.path().join("hpccoutf.txt");
    if !status.success() {
        bail!("mpirun -np {} hpcc failed on the host ({status})", settings.cpus);
    }
    parse_hpcc(
        &fs::read_to_string(&output)
            .with_context(|| format!("cannot read {}", output.display()))?,
    )
}

fn figures_text(figures: &Figures) -> String {
    format!("triad {:.3} GB/s, dgemm {:.3} GFLOP/s", figures.triad_gb_s, figures.dgemm_gflop_s)
}

/// Runs the compute benchmark.
pub(crate) fn run(common: &Common) -> Result<Results> {
    require_host_tool("hpcc", "hpcc")?;
    require_host_tool("mpirun", "openmpi-bin")?;
    let tools = Tools::locate(common.bee.clone())?;
    let accel = choose_accel()?;
    let settings = Settings::new(common.quick);
    progress(&format!("accelerator for the guest: {}", accel.as_str()));

    let state = BeeState::new(&tools)?;
    progress(&format!("cluster {CLUSTER} in {}", state.path().display()));
    let config = format!(
        "[cluster]\nname = \"{CLUSTER}\"\nnodes = 1\n\n[hardware]\ncpus = {}\nmemory = \"{GUEST_MEMORY}\"\n",
        settings.cpus
    );
    let cluster = Cluster::up_step(&tools, accel, state, CLUSTER, &config)?;

    let mut samples: Vec<Vec<Figures>> = vec![Vec::new(); PLACES.len()];
    for run in 1..=common.runs {
        progress(&format!("run {run} of {}", common.runs));
        for (place, samples) in PLACES.iter().zip(&mut samples) {
            let what = format!("hpcc N={} {}", settings.n, place.name());
            let measure = || match place {
                Place::Native => native_hpcc(&settings),
                _ => parse_hpcc(&cluster.ssh(0, &guest_command(*place, &settings))?),
            };
            samples.push(step(&what, measure, figures_text)?);
        }
    }
    cluster.down_step()?;
    Ok(results(accel, common, settings, &samples))
}

/// The results of the runs: `samples` holds each place's figures, in [`PLACES`] order.
fn results(accel: Accel, common: &Common, settings: Settings, samples: &[Vec<Figures>]) -> Results {
    let metrics = vec![
        Metric {
            id: "stream_triad",
            title: format!("STREAM triad per process (hpcc, N={})", settings.n),
            unit: "GB/s",
            better: Better::Higher,
            x_label: None,
        },
        Metric {
            id: "dgemm",
            title: format!("DGEMM per process (hpcc, N={})", settings.n),
            unit: "GFLOP/s",
            better: Better::Higher,
            x_label: None,
        },
    ];
    let mut series = Vec::new();
    let mut comparisons = Vec::new();
    for (place, figures) in PLACES.iter().zip(samples) {
        let of = |pick: fn(&Figures) -> f64| figures.iter().map(pick).collect::<Vec<f64>>();
        for (metric, values) in
            [("stream_triad", of(|f| f.triad_gb_s)), ("dgemm", of(|f| f.dgemm_gflop_s))]
        {
            series.push(Series {
                metric,
                subject: place.name().to_owned(),
                x: None,
                samples: values,
            });
            if *place != Place::Native {
                comparisons.push(Comparison {
                    metric,
                    subject: place.name().to_owned(),
                    x: None,
                    reference: Some(Place::Native.name().to_owned()),
                    target: Some(Target { on: TargetOn::Ratio, at_least: true, value: TARGET }),
                });
            }
        }
    }
    let mut results = Results {
        kind: Kind::Compute,
        accel,
        quick: common.quick,
        runs: common.runs,
        settings: json!({
            "hpl_n": settings.n,
            "processes": settings.cpus,
            "guest_cpus": settings.cpus,
            "guest_memory": GUEST_MEMORY,
            "blas": "Debian's reference BLAS (libblas3), on the host and in the image",
        }),
        metrics,
        series,
        comparisons,
        notes: vec![
            "hpcc's StarSTREAM_Triad and StarDGEMM_Gflops: the per-process figures with \
             every process running at once"
                .to_owned(),
            format!(
                "target: at least {TARGET}x native, from the paper's section VI-C (about 9 % \
                 overhead under KVM)"
            ),
        ],
        table: String::new(),
        recommendations: Vec::new(),
    };
    results.table = table(&results);
    results
}

/// The human-readable table of compute results.
fn table(results: &Results) -> String {
    let problem = [results.metrics[0].title.as_str()];
    let mut out = heading("compute benchmark", results.accel, results.runs, &problem);
    let mut table = Table::new(&[
        ("place", Align::Left),
        ("triad GB/s", Align::Right),
        ("x native", Align::Right),
        ("dgemm GFLOP/s", Align::Right),
        ("x native", Align::Right),
        ("target", Align::Left),
    ]);
    for place in PLACES {
        let median = |metric: &str| {
            results.series_of(metric, place.name(), None).map_or(f64::NAN, Series::median)
        };
        let compared: Vec<&Comparison> =
            results.comparisons.iter().filter(|c| c.subject == place.name()).collect();
        let ratio = |metric: &str| {
            compared.iter().find(|c| c.metric == metric).map_or(f64::NAN, |c| results.ratio(c))
        };
        let target = match compared.iter().map(|c| results.met(c)).collect::<Option<Vec<bool>>>() {
            Some(met) if !met.is_empty() => {
                format!(">= {TARGET}x: {}", verdict(met.iter().all(|&m| m)))
            }
            _ => String::new(),
        };
        table.push(vec![
            place.name().to_owned(),
            fixed(median("stream_triad"), 3),
            if place == Place::Native { "-".to_owned() } else { fixed(ratio("stream_triad"), 2) },
            fixed(median("dgemm"), 3),
            if place == Place::Native { "-".to_owned() } else { fixed(ratio("dgemm"), 2) },
            target,
        ]);
    }
    out += &table.render();
    out += results.accel_note();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary section of hpcc 1.5.0's `hpccoutf.txt`, cut down.
    const SUMMARY: &str = "Begin of Summary section.\nVersionMajor=1\nSuccess=1\n\
        StarDGEMM_Gflops=2.56765\nSingleDGEMM_Gflops=2.8498\nStarSTREAM_Triad=24.5964\n\
        End of Summary section.\n";

    #[test]
    fn hpcc_summary_is_parsed() {
        let figures = parse_hpcc(SUMMARY).unwrap();
        assert_eq!(figures, Figures { triad_gb_s: 24.5964, dgemm_gflop_s: 2.56765 });
        let failed = SUMMARY.replace("Success=1", "Success=0");
        assert_eq!(
            parse_hpcc(&failed).unwrap_err().to_string(),
            "hpcc did not report Success=1 in its summary"
        );
        let missing = SUMMARY.replace("StarDGEMM_Gflops=2.56765\n", "");
        assert_eq!(
            parse_hpcc(&missing).unwrap_err().to_string(),
            "hpcc's summary has no StarDGEMM_Gflops"
        );
    }

    #[test]
    fn input_sets_n_and_the_process_grid() {
        let lines = input_lines(&Settings { n: 1500, cpus: 2 });
        assert_eq!(lines.len(), 36, "HPL reads a fixed number of lines");
        assert!(lines[5].starts_with("1500 "));
        assert!(lines[10].starts_with("1 ") && lines[11].starts_with("2 "));
        let script = hpcc_script(&Settings { n: 1000, cpus: 1 });
        assert!(!script.contains('$') && !script.contains('"'), "{script}");
        assert!(script.ends_with("mpirun -np 1 hpcc > hpcc.stdout && cat hpccoutf.txt"));
    }

    #[test]
    fn the_container_runs_bee_base_as_root() {
        let command = guest_command(Place::Container, &Settings::new(true));
        assert!(
            command.contains("docker run --rm -w /tmp -e OMPI_ALLOW_RUN_AS_ROOT=1"),
            "{command}"
        );
        assert!(command.contains(&format!("docker import {BASE_TARBALL} {BASE_IMAGE}")));
    }

    #[test]
    fn results_compare_guest_and_container_with_native() {
        let figures = |triad, dgemm| Figures { triad_gb_s: triad, dgemm_gflop_s: dgemm };
        let samples =
            vec![vec![figures(20.0, 2.0)], vec![figures(19.0, 1.9)], vec![figures(1.0, 0.1)]];
        let common = Common { bee: None, runs: 1, quick: true, out: std::path::PathBuf::new() };
        let results = results(Accel::Tcg, &common, Settings::new(true), &samples);
        assert_eq!(results.comparisons.len(), 4);
        assert_eq!(
            results.table.lines().next(),
            Some(
                "compute benchmark (accelerator: tcg, runs: 1, STREAM triad per process \
                 (hpcc, N=1000))"
            )
        );
        let met: Vec<Option<bool>> = results.comparisons.iter().map(|c| results.met(c)).collect();
        assert_eq!(met, [Some(true), Some(true), Some(false), Some(false)]);
        assert!(
            results
                .table
                .contains("guest          19.000      0.95          1.900      0.95  >= 0.9x: met"),
            "{}",
            results.table
        );
        assert!(results.table.contains("TCG overhead is not the paper's figure"));
    }
}
