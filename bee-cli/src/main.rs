//! `bee`: run a containerized HPC application in Docker inside QEMU guests.
//!
//! This file parses the command line, sets up logging, calls the libraries and maps
//! errors to exit codes; [`progress`] draws what the libraries report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use bee_core::docker::OutputStream;
use bee_core::events::Events;
use bee_core::orchestrator::{Orchestrator, Platforms, RunOutcome};
use bee_core::{paths, Config, CoreError};
use bee_vm::{GuestImage, ImageInputs};
use clap::{Parser, Subcommand};

use bee_cli::compose::{self, VmPlatforms};
use bee_cli::format_chain;
use bee_cli::progress::Progress;

/// Exit code of `bee run` when bee itself failed, so that it is not confused with the
/// application's own codes.
const EXIT_BEE_FAILED: u8 = 125;

/// Exit code of `bee run` and `bee resume` when the application was checkpointed and no
/// platform is left: not done, try again later (sysexits' `EX_TEMPFAIL`).
const EXIT_WAITING: u8 = 75;

/// Run one container image unmodified on a laptop, an HPC allocation or a cloud.
#[derive(Debug, Parser)]
#[command(name = "bee", version, about)]
struct Cli {
    /// More diagnostics on stderr: -v for lifecycle steps, -vv for commands, -vvv for all.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    // Flattened: its commands are listed first, as `bee image`, `bee up` and so on.
    #[command(flatten)]
    Runtime(RuntimeCommand),
    /// Measure bee against references run on this host in the same invocation, and write
    /// report.json, summary.md and plots.
    Bench {
        /// What to measure.
        kind: bee_benches::Kind,
        /// The reduced set, in a few minutes.
        #[arg(long)]
        quick: bool,
        /// Runs of each measurement (default: 1 with --quick, else 3).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: Option<u32>,
        /// The output directory (default: ./bee-bench-KIND-TIMESTAMP).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// With `network`: time this bee.toml's application under each network mode and
        /// recommend the one that suits it. Repeat it for applications of the same cluster
        /// and image, which then share one cluster per mode.
        #[arg(long, value_name = "FILE")]
        recommend: Vec<PathBuf>,
    },
}

/// The commands that run on bee's async runtime. `bee bench` is not one of them: the
/// benchmarks drive `bee` as child processes and start runtimes of their own.
#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Build or inspect the guest image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Start the cluster a bee.toml describes and leave it running.
    Up {
        /// The configuration file.
        config: PathBuf,
    },
    /// Start the cluster, run the application, print its output, tear the cluster down.
    Run {
        /// The configuration file.
        config: PathBuf,
    },
    /// Continue a run from its last completed step: after a crash of bee, or a checkpoint
    /// that found no platform left.
    Resume {
        /// The run's name (its cluster.name).
        run: String,
    },
    /// Delete a run that has not completed, its checkpoint and any cluster it left.
    Discard {
        /// The run's name.
        run: String,
    },
    /// List runs and clusters, with their phase and nodes.
    Status {
        /// Print JSON (schema version 1) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Open a shell on a node, or run a command there.
    Ssh {
        /// The cluster name.
        cluster: String,
        /// The node: its name or index (default: 0, the master).
        node: Option<String>,
        /// A command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Stop a cluster and remove everything it left on this host.
    Down {
        /// The cluster name.
        cluster: String,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the guest image from Debian packages (needs root), unless it is cached.
    Build {
        /// Rebuild even when a cached image exists.
        #[arg(long)]
        force: bool,
    },
    /// Print where the image is and what it holds.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let command = match cli.command {
        Commands::Runtime(command) => command,
        Commands::Bench { kind, quick, runs, out, recommend } => {
            return bench(bee_benches::Options { kind, quick, runs, out, recommend, bee: None });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bee: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let is_run = matches!(command, RuntimeCommand::Run { .. } | RuntimeCommand::Resume { .. });
    match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bee: error: {}", format_chain(&err));
            ExitCode::from(if is_run { EXIT_BEE_FAILED } else { 1 })
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "off",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(command: RuntimeCommand) -> Result<ExitCode> {
    match command {
        RuntimeCommand::Image { command: ImageCommand::Build { force } } => {
            image_build(force).await
        }
        RuntimeCommand::Image { command: ImageCommand::Show } => image_show(),
        RuntimeCommand::Up { config } => up(&config).await,
        RuntimeCommand::Run { config } => run(&config).await,
        RuntimeCommand::Resume { run } => resume(&run).await,
        RuntimeCommand::Discard { run } => discard(&run).await,
        RuntimeCommand::Status { json } => status(json).await,
        RuntimeCommand::Ssh { cluster, node, command } => ssh(&cluster, node.as_deref(), &command),
        RuntimeCommand::Down { cluster } => down(&cluster).await,
    }
}

/// `bee bench`: prints the table on stdout and where the report went on stderr.
fn bench(mut options: bee_benches::Options) -> ExitCode {
    options.bee = std::env::current_exe().ok();
    match bee_benches::run(&options) {
        Ok(outcome) => {
            print!("{}", outcome.table);
            let missed = match outcome.missed {
                0 => "every target met".to_owned(),
                n => format!("{n} target(s) missed"),
            };
            eprintln!("bee: bench report in {} ({missed}):", outcome.dir.display());
            for file in &outcome.files {
                eprintln!("  {}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("bee: error: {}", format_chain(&err));
            ExitCode::FAILURE
        }
    }
}

async fn image_build(force: bool) -> Result<ExitCode> {
    let progress = Progress::new();
    let inputs = ImageInputs::from_env();
    let cache = paths::cache_dir();
    let image = tokio::task::spawn_blocking(move || {
        bee_vm::image::build(&cache, &inputs, force, &Progress::new())
    })
    .await
    .context("the image build task failed")??;
    progress.message(&format!("guest image ready in {}", image.dir.display()));
    Ok(ExitCode::SUCCESS)
}

fn image_show() -> Result<ExitCode> {
    let image = GuestImage::locate(&paths::cache_dir(), &ImageInputs::from_env())?;
    let manifest = std::fs::read_to_string(image.manifest())
        .with_context(|| format!("cannot read {}", image.manifest().display()))?;
    println!("{}", image.dir.display());
    println!("{}", manifest.trim());
    Ok(ExitCode::SUCCESS)
}

async fn up(config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    VmPlatforms.supports(&config, 0)?;
    let progress = Progress::new();
    let up = compose::Up::new(&config)?;
    let started = tokio::select! {
        name = up.start(&config, &progress) => Some(name?),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some(name) = started else {
        up.interrupted(&progress).await?;
        return Err(anyhow!(
            "interrupted; what had started of cluster {} is torn down",
            config.name
        ));
    };
    progress.message(&format!(
        "cluster {name} is up: `bee ssh {name}` opens a shell, `bee down {name}` stops it"
    ));
    Ok(ExitCode::SUCCESS)
}

async fn run(config_path: &Path) -> Result<ExitCode> {
    let config = compose::load_for_run(config_path)?;
    let progress = Progress::new();
    let orchestrator =
        Orchestrator::new(&VmPlatforms, &paths::state_dir(), paths::clusters_dir(), &progress)?;
    let name = config.name.clone();
    let mut output = write_output;
    let outcome = tokio::select! {
        outcome = orchestrator.start(&config, &mut output) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    finish_run(&orchestrator, &name, outcome, &progress).await
}

async fn resume(name: &str) -> Result<ExitCode> {
    let progress = Progress::new();
    let orchestrator =
        Orchestrator::new(&VmPlatforms, &paths::state_dir(), paths::clusters_dir(), &progress)?;
    let mut output = write_output;
    let outcome = tokio::select! {
        outcome = orchestrator.resume(name, &mut output) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    finish_run(&orchestrator, name, outcome, &progress).await
}

/// Turns a run's outcome into bee's exit code: the application's own when it completed,
/// [`EXIT_WAITING`] when its checkpoint waits for a platform. `None` means interrupted.
async fn finish_run(
    orchestrator: &Orchestrator<'_>,
    name: &str,
    outcome: Option<Result<RunOutcome, CoreError>>,
    progress: &Progress,
) -> Result<ExitCode> {
    match outcome {
        None => {
            orchestrator.interrupted(name).await?;
            Err(anyhow!("interrupted; the cluster was torn down: `bee resume {name}` continues"))
        }
        Some(Err(err)) => Err(err.into()),
        Some(Ok(RunOutcome::Waiting { .. })) => Ok(ExitCode::from(EXIT_WAITING)),
        Some(Ok(RunOutcome::Completed(code))) => {
            progress.message(&format!("application exited with code {code}"));
            Ok(ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)))
        }
    }
}

/// Passes the application's output through as it comes.
fn write_output(stream: OutputStream, bytes: &[u8]) {
    let _ = match stream {
        OutputStream::Stdout => std::io::stdout().write_all(bytes),
        OutputStream::Stderr => std::io::stderr().write_all(bytes),
    };
}

async fn discard(name: &str) -> Result<ExitCode> {
    let progress = Progress::new();
    let orchestrator =
        Orchestrator::new(&VmPlatforms, &paths::state_dir(), paths::clusters_dir(), &progress)?;
    orchestrator.discard(name).await?;
    progress.message(&format!("run {name} and its checkpoint are deleted"));
    Ok(ExitCode::SUCCESS)
}

async fn status(json: bool) -> Result<ExitCode> {
    let compose::Status { clusters, runs } = compose::status().await?;
    if json {
        let report = compose::Status { clusters, runs }.to_json();
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for run in &runs {
        println!(
            "run {}  phase={}  platform={}  checkpoints={}  {}",
            run.name,
            run.phase.name(),
            run.platform,
            run.checkpoints,
            run.detail
        );
    }
    if clusters.is_empty() {
        println!("no clusters");
    }
    for cluster in &clusters {
        let notes: Vec<&str> =
            cluster["notes"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
        println!(
            "{}  backend={}  phase={}  {}",
            cluster["name"].as_str().unwrap_or_default(),
            cluster["backend"].as_str().unwrap_or_default(),
            cluster["phase"].as_str().unwrap_or_default(),
            notes.join(", "),
        );
        for node in cluster["nodes"].as_array().into_iter().flatten() {
            println!(
                "  {}  ssh=127.0.0.1:{}  {}",
                node["name"].as_str().unwrap_or_default(),
                node["ssh_port"],
                node["detail"].as_str().unwrap_or("unknown"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ssh(cluster: &str, node: Option<&str>, command: &[String]) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let err = compose::ssh_command(cluster, node)?.args(command).exec();
    Err(anyhow!("cannot run ssh: {err}"))
}

async fn down(cluster: &str) -> Result<ExitCode> {
    let progress = Progress::new();
    compose::tear_down(cluster, &progress).await?;
    progress.message(&format!("cluster {cluster} is down"));
    Ok(ExitCode::SUCCESS)
}
