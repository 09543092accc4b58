//! bee's benchmarks, run by `bee bench KIND`: each measures bee side by side with its
//! reference in one run and reports ratios, so that the numbers mean something on any
//! host.
//!
//! - `deploy` ([`deploy`]): `bee up` to Docker ready against a plain QEMU boot to SSH, and
//!   bee's own peak memory.
//! - `network` ([`network`]): bandwidth, latency and all-to-all time on each data-plane
//!   network against two guests on one direct link, and the host's loopback.
//! - `storage` ([`storage`]): sequential write and read through each shared storage
//!   against the same I/O on a host directory.
//! - `compute` ([`compute`]): HPC Challenge's STREAM triad and DGEMM in a container in a
//!   guest, and in the guest itself, against the same run on the host.
//! - `network --recommend FILE` ([`advisor`]): the application of a `bee.toml` timed under
//!   each network mode, and the mode that suits it.
//! - `checkpoint` ([`checkpoint`]): checkpoint, transfer and restore of an application's
//!   state between two platforms, by data size, against a plain copy of the same bytes.
//!
//! [`run`] writes into one output directory `report.json` (schema:
//! `benches/schema/report.schema.json`, [`results::SCHEMA`]), `summary.md`, and a PNG and
//! an SVG of every figure. Progress goes to stderr. Missed targets are reported, not
//! failed: [`run`] fails only when a measurement could not be made, and then removes the
//! output directory it created. Every cluster, QEMU process and temporary directory a
//! benchmark starts is removed when it ends, also when it fails or is interrupted with
//! Ctrl-C.
//!
//! # Limitations
//!
//! Other signals than SIGINT (SIGTERM, SIGKILL, a hang-up) end the benchmark without its
//! cleanup: clusters that were up keep running, and their state directories
//! (`$TMPDIR/bee-bench-*`, named in the progress) stay; `BEE_STATE_DIR=DIR bee down
//! NAME` stops such a cluster.

pub mod advisor;
mod bee;
pub mod checkpoint;
pub mod compute;
pub mod deploy;
pub mod machine;
pub mod network;
pub mod plot;
pub mod results;
pub mod storage;
pub mod summary;
mod text;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::machine::Host;
use crate::results::{compact_timestamp, Results};
use crate::text::progress;

/// A benchmark `bee bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `bee up` against a plain QEMU boot, and bee's peak memory.
    Deploy,
    /// The data-plane networks against one direct link.
    Network,
    /// The shared storages against a host directory.
    Storage,
    /// STREAM and DGEMM in a container in a guest against the host.
    Compute,
    /// Checkpoint, transfer and restore between two platforms against a plain copy.
    Checkpoint,
}

impl Kind {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Network => "network",
            Kind::Storage => "storage",
            Kind::Compute => "compute",
            Kind::Checkpoint => "checkpoint",
        }
    }
}

/// Runs of each measurement by default: one for `--quick`, else this many.
pub const FULL_RUNS: u32 = 3;

/// What `bee bench` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The benchmark.
    pub kind: Kind,
    /// The reduced set, in a few minutes.
    pub quick: bool,
    /// Runs of each measurement (default: 1 with `quick`, else [`FULL_RUNS`]).
    pub runs: Option<u32>,
    /// The output directory (default: `./bee-bench-KIND-TIMESTAMP`).
    pub out: Option<PathBuf>,
    /// For the network benchmark: advise on the network mode for these `bee.toml`s'
    /// applications instead of measuring the networks themselves (see [`advisor`]).
    pub recommend: Vec<PathBuf>,
    /// The `bee` binary the benchmark drives (default: the one running, or the one next
    /// to this executable).
    pub bee: Option<PathBuf>,
}

/// The options every benchmark module takes.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub(crate) bee: Option<PathBuf>,
    pub(crate) runs: u32,
    pub(crate) quick: bool,
    /// The output directory, for what a benchmark keeps beside its report.
    pub(crate) out: PathBuf,
}

/// What a finished benchmark wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The output directory.
    pub dir: PathBuf,
    /// Every file written into it.
    pub files: Vec<PathBuf>,
    /// The benchmark's table, for the terminal.
    pub table: String,
    /// How many targets were missed.
    pub missed: usize,
}

/// The files of a report in its directory.
pub const REPORT_FILE: &str = "report.json";
/// See [`REPORT_FILE`].
pub const SUMMARY_FILE: &str = "summary.md";

/// Runs one benchmark and writes its report, summary and plots.
pub fn run(options: &Options) -> Result<Outcome> {
    let started = SystemTime::now();
    let advise = match (options.recommend.is_empty(), options.kind) {
        (true, _) => None,
        (false, Kind::Network) => Some(advisor::load_all(&options.recommend)?),
        (false, other) => bail!(
            "--recommend is for `bee bench network` (it recommends a network mode), not for \
             `bee bench {}`",
            other.name()
        ),
    };
    let out = OutDir::prepare(options.out.clone(), options.kind, started)?;
    plot::check_font()?;
    bee::clean_up_on_interrupt()?;
    let runs = options.runs.unwrap_or(if options.quick { 1 } else { FULL_RUNS });
    let common =
        Common { bee: options.bee.clone(), runs, quick: options.quick, out: out.path.clone() };

    let expected = match &advise {
        Some(advised) => {
            let nodes = advised.first().map_or(2, |a| a.config.nodes);
            advisor::expected(advisor::modes_for(nodes).len(), advised.len(), runs)
        }
        None => expected(options.kind, options.quick, runs),
    };
    let set = match (&advise, options.quick) {
        (Some(_), _) => "network-mode advisor",
        (None, true) => "reduced set (--quick)",
        (None, false) => "full set",
    };
    progress(&format!(
        "{} benchmark, {set}, {runs} run(s): expect about {} min under TCG on two cores, \
         less with KVM; writing to {}",
        options.kind.name(),
        expected.as_secs().div_ceil(60),
        out.path.display()
    ));

    let clock = Instant::now();
    let results = match (advise, options.kind) {
        (Some(advised), _) => advisor::run(&common, &advised)?,
        (None, Kind::Deploy) => deploy::run(&common)?,
        (None, Kind::Network) => network::run(&common)?,
        (None, Kind::Storage) => storage::run(&common)?,
        (None, Kind::Compute) => compute::run(&common)?,
        (None, Kind::Checkpoint) => checkpoint::run(&common)?,
    };
    let took = clock.elapsed();

    let files = write_report(&results, &out.path, started, took)?;
    let missed = results.comparisons.iter().filter(|c| results.met(c) == Some(false)).count();
    Ok(Outcome { dir: out.keep(), files, table: results.table, missed })
}

/// Writes `report.json`, the plots and `summary.md` of `results` into `dir`.
pub fn write_report(
    results: &Results,
    dir: &Path,
    started: SystemTime,
    took: Duration,
) -> Result<Vec<PathBuf>> {
    let host = Host::describe();
    let report = dir.join(REPORT_FILE);
    let json = serde_json::to_string_pretty(&results.to_json(&host, started, took))?;
    fs::write(&report, json + "\n")
        .with_context(|| format!("cannot write {}", report.display()))?;

    let plots = plot::write_all(results, dir)?;
    let names: Vec<String> = plots
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let summary = dir.join(SUMMARY_FILE);
    let text = summary::render(results, &host, started, took, &names);
    fs::write(&summary, text).with_context(|| format!("cannot write {}", summary.display()))?;

    let mut files = vec![report, summary];
    files.extend(plots);
    Ok(files)
}

/// How long a benchmark takes on the two-core TCG host its defaults were tuned on.
fn expected(kind: Kind, quick: bool, runs: u32) -> Duration {
    let (fixed, per_run) = match kind {
        Kind::Deploy => deploy::expected(quick),
        Kind::Network => network::expected(quick),
        Kind::Storage => storage::expected(quick),
        Kind::Compute => compute::expected(quick),
        Kind::Checkpoint => checkpoint::expected(quick),
    };
    fixed + per_run * runs
}

/// The output directory, removed again (if this run created it) unless [`OutDir::keep`]
/// is called.
struct OutDir {
    path: PathBuf,
    created: bool,
    kept: bool,
}

impl OutDir {
    /// Checks `out` (default `./bee-bench-KIND-TIMESTAMP`) and creates it if missing.
    fn prepare(out: Option<PathBuf>, kind: Kind, started: SystemTime) -> Result<OutDir> {
        let path = out.unwrap_or_else(|| {
            PathBuf::from(format!("bee-bench-{}-{}", kind.name(), compact_timestamp(started)))
        });
        if path.exists() && !path.is_dir() {
            bail!(
                "--out {}: exists and is not a directory; give a directory, which is created \
                 if it is missing",
                path.display()
            );
        }
        if path.join(REPORT_FILE).exists() {
            bail!(
                "--out {}: holds a report already; give a new or an empty directory",
                path.display()
            );
        }
        let created = !path.exists();
        fs::create_dir_all(&path)
            .with_context(|| format!("--out {}: cannot create the directory", path.display()))?;
        if created {
            bee::remove_on_interrupt(&path);
        }
        Ok(OutDir { path, created, kept: false })
    }

    /// Keeps the directory and returns its path.
    fn keep(mut self) -> PathBuf {
        self.kept = true;
        bee::forget_on_interrupt(&self.path);
        self.path.clone()
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.kept && self.created {
            bee::forget_on_interrupt(&self.path);
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_must_be_a_directory_without_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let err =
            OutDir::prepare(Some(file.clone()), Kind::Compute, SystemTime::now()).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "--out {}: exists and is not a directory; give a directory, which is created \
                 if it is missing",
                file.display()
            )
        );

        fs::write(dir.path().join(REPORT_FILE), "{}").unwrap();
        let err = OutDir::prepare(Some(dir.path().to_owned()), Kind::Deploy, SystemTime::now())
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .ends_with("holds a report already; give a new or an empty directory"));
    }

    #[test]
    fn a_new_out_dir_goes_again_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        drop(OutDir::prepare(Some(out.clone()), Kind::Network, SystemTime::now()).unwrap());
        assert!(!out.exists());
        let kept = OutDir::prepare(Some(out.clone()), Kind::Network, SystemTime::now()).unwrap();
        assert_eq!(kept.keep(), out);
        assert!(out.is_dir());
    }

    #[test]
    fn a_written_report_has_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let results = results::tests::synthetic();
        let files =
            write_report(&results, dir.path(), SystemTime::now(), Duration::from_secs(1)).unwrap();
        assert_eq!(files.len(), 10);
        let report: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join(REPORT_FILE)).unwrap())
                .unwrap();
        assert_eq!(report["benchmark"], "network");
        assert!(fs::read_to_string(dir.path().join(SUMMARY_FILE)).unwrap().contains("ratios.svg"));
    }

    #[test]
    fn full_runs_take_longer_than_quick_ones() {
        use clap::ValueEnum;
        for kind in Kind::value_variants() {
            let kind = *kind;
            assert!(expected(kind, true, 1) < expected(kind, false, FULL_RUNS), "{kind:?}");
        }
    }
}
