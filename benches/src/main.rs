//! `bee-bench`: bee's benchmarks, each measured side by side with its reference in one run
//! and reported as a ratio, so that the numbers mean something on any host.
//!
//! - `deploy` ([`deploy`]): `bee up` to Docker ready against a plain QEMU boot to SSH, and
//!   bee's own peak memory.
//! - `network` ([`network`]): bandwidth, latency and all-to-all time on each data-plane
//!   network against two guests on one direct link, and the host's loopback.
//! - `storage` ([`storage`]): sequential write and read through each shared storage
//!   against the same I/O on a host directory.
//!
//! Progress goes to stderr; the table (or, with `--json`, a JSON object) to stdout. Missed
//! targets are reported, not failed: the exit code is non-zero only when a measurement
//! could not be made. Every cluster, QEMU process and temporary directory a benchmark
//! starts is removed when it ends, also when it fails or is interrupted with Ctrl-C.
//!
//! # Limitations
//!
//! Other signals than SIGINT (SIGTERM, SIGKILL, a hang-up) end the benchmark without its
//! cleanup: clusters that were up keep running, and their state directories
//! (`$TMPDIR/bee-bench-*`, named in the progress) stay; `BEE_STATE_DIR=DIR bee down
//! NAME` stops such a cluster.

mod bee;
mod deploy;
mod network;
mod report;
mod storage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Measure bee against references run on this host in the same invocation.
#[derive(Debug, Parser)]
#[command(name = "bee-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Benchmark,
}

#[derive(Debug, Subcommand)]
enum Benchmark {
    /// Plain-QEMU boot to SSH against `bee up` to Docker ready, and bee's peak memory.
    Deploy {
        #[command(flatten)]
        common: Common,
    },
    /// Bandwidth, latency and all-to-all time of each network against one direct link.
    Network {
        #[command(flatten)]
        common: Common,
        /// Shorter transfers and fewer pings, for a first look.
        #[arg(long)]
        quick: bool,
    },
    /// Sequential write and read through each shared storage against a host directory.
    Storage {
        #[command(flatten)]
        common: Common,
        /// Smaller files (128 MiB), for a first look.
        #[arg(long)]
        quick: bool,
        /// Size of each file in MiB (default 512, or 128 with --quick).
        #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u32).range(1..))]
        size: Option<u32>,
    },
}

/// The options every benchmark takes.
#[derive(Debug, Args)]
struct Common {
    /// The `bee` binary (default: the one next to this executable).
    #[arg(long)]
    bee: Option<PathBuf>,
    /// Runs of each measurement; the report shows medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Err(err) = bee::clean_up_on_interrupt() {
        eprintln!("bee-bench: cannot watch for Ctrl-C: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match command {
        Benchmark::Deploy { common } => deploy::run(&common),
        Benchmark::Network { common, quick } => network::run(&common, quick),
        Benchmark::Storage { common, quick, size } => storage::run(&common, quick, size),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bee-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
