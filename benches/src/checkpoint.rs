//! `bee bench checkpoint`: how long bee takes to checkpoint an application, move its state
//! to the next platform and restore it there, against a plain copy of the same bytes
//! between the same places.
//!
//! For each data size (64 MiB, 256 MiB and 1 GiB; `--quick`: 64 MiB) it runs one `bee run`
//! of a real application, `benches/app/ckpt-state.c`, whose state is that many bytes in
//! memory, on `runs + 1` platforms of one node each (`backend = "vm"`, `hosts = "local"`:
//! the platforms are this host, one after the other). Every platform but the last has a
//! time slot; when it ends, bee runs the `[checkpoint]` command, the application writes
//! its state into the shared directory (`data-image-nfs`, the storage that moves between
//! platforms) and exits, bee stops the node and moves the data image file into the run's
//! data directory, and on the next platform copies it into the new cluster, boots, and
//! runs the restore command, which reads the state back and checks it.
//!
//! The times come from the lines bee prints on stderr (its progress: the same steps it
//! records in the run database, whose timestamps have one-second resolution), and the
//! application's own lines on stdout, which bee passes on; the benchmark stamps each line
//! as it arrives. For checkpoint `i` the measured interval is:
//!
//! - **checkpoint**: from `checkpointing NAME before the time slot of platform i` (bee
//!   has sent the checkpoint command) to `saving checkpoint i+1 from platform i` (the
//!   application has written and fsynced its state, and exited);
//! - **transfer**: from there to the end of `filling data image` on platform `i+1`:
//!   stopping the node, keeping the data image in the run's data directory (`e2fsck`,
//!   then a rename), and copying it into the next platform's cluster (`cp --sparse`);
//! - **restore**: from `running IMAGE on platform i+1` (bee starts the restore command) to
//!   the application's `restored` line (it has read the whole state and checked its
//!   checksum).
//!
//! Left out, and reported beside it as `deploy (excluded)`: what lies between the end of
//! the fill and the restore command, which any new platform costs whatever it restores
//! (booting the node, SSH and Docker, mounting the data image, building the application's
//! image).
//!
//! The reference, in the same run right after each `bee run`, is `cp` of a file of the
//! same bytes between two directories of the host, next to bee's state directory (so on
//! the same file system), followed by an `fsync` of the copy; the source is fsynced and its
//! pages dropped from the host's cache (`posix_fadvise(POSIX_FADV_DONTNEED)`) before each
//! copy. The target is a ratio under [`TARGET_RATIO`].
//!
//! # Limitations
//!
//! - Both platforms are this host: the transfer never crosses a network, as it does
//!   between two sites. The plain copy does not either, so the ratio stays fair.
//! - The host's page cache is not dropped on bee's path: the data image it collects was
//!   just written by the guest through QEMU, and the data image it fills is read by the
//!   next guest shortly after.
//! - Under TCG every byte the guest writes or reads also costs emulated CPU time, and the
//!   application's checksum runs emulated: the ratio then says more about emulation than
//!   about bee's transfer.
//! - bee sizes a data image from its input, at least 1 GiB, and a state of 1 GiB does not
//!   fit into that. The first platform's input is one sparse file, [`ROOM_FILE`], of twice
//!   the state's size, which makes bee create a larger image and takes no room in it; the
//!   application's command removes it before it starts.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bee_core::docker::SHARED_DIR;
use bee_vm::qemu::Accel;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use serde_json::json;

use crate::bee::{choose_accel, tail, wait_with_deadline, BeeState, Tools, POLL};
use crate::results::{Better, Comparison, Metric, Results, Series, Target, TargetOn};
use crate::storage::ROOM_FILE;
use crate::text::{fixed, heading, median_of, progress, step, verdict, Align, Table};
use crate::{Common, Kind};

/// The data sizes of the full set, in MiB.
const SIZES_MIB: [u64; 3] = [64, 256, 1024];

/// The data sizes of `--quick`, in MiB.
const QUICK_SIZES_MIB: [u64; 1] = [64];

/// The target: bee's checkpoint, transfer and restore within this many times a plain copy.
const TARGET_RATIO: f64 = 1.5;

/// The application's source and the Dockerfile that builds it, written next to the
/// configuration of every run.
const APP_SOURCE: &str = include_str!("../app/ckpt-state.c");
const DOCKERFILE: &str = include_str!("../app/Dockerfile");

/// The application's image tag.
const IMAGE: &str = "bee/ckpt-state:latest";

/// The application's binary in its image.
const APP: &str = "/app/ckpt-state";

/// What the application's lines start with.
const APP_PREFIX: &str = "ckpt-state: ";

/// The file whose existence asks the application to checkpoint.
const REQUEST: &str = "checkpoint-now";

/// `checkpoint.margin`: how long before a slot ends bee asks for the checkpoint. Only
/// the time from the application's start to the request matters here.
const MARGIN_S: u64 = 5;

/// `checkpoint.timeout`: how long the application may take to save its state and exit.
const SAVE_TIMEOUT: &str = "10m";

/// The directory of the configuration and the application, in the state directory.
const PROJECT_DIR: &str = "app";

/// The input directory of the first platform, beside [`PROJECT_DIR`] (not in it: it would
/// be part of the image's build context).
const INPUT_DIR: &str = "input";

/// The reference's directory in the state directory.
const COPY_DIR: &str = "copy";

/// The subject of bee's interval, and the reference's, in the results.
const BEE: &str = "bee";
const PLAIN_COPY: &str = "plain copy";

/// The parts of bee's path, in the order they happen, as subjects of the `phases` metric.
const CHECKPOINT: &str = "checkpoint";
const TRANSFER: &str = "transfer";
const RESTORE: &str = "restore";
const DEPLOY: &str = "deploy (excluded)";

/// The cluster (and run) name of the run of `size_mib`: short, see
/// [`crate::bee::BeeState`].
fn cluster_name(size_mib: u64) -> String {
    format!("ckpt-{size_mib}")
}

/// How long after the application starts on a platform bee asks it to checkpoint: time
/// for its container to start and its state to be filled or restored under TCG
/// (measured: 8 s from bee's `running` line to `ready` for 64 MiB), with room to spare.
fn wait_before_checkpoint(size_mib: u64) -> Duration {
    Duration::from_secs(12) + Duration::from_millis(60 * size_mib)
}

/// Guest memory in MiB: the state, and 768 MiB for the system and Docker; at least 1 GiB.
fn guest_memory_mib(size_mib: u64) -> u64 {
    (size_mib + 768).max(1024)
}

/// The `bee.toml` of the run of `size_mib` MiB with `checkpoints` checkpoints.
fn config(size_mib: u64, checkpoints: u32) -> String {
    let name = cluster_name(size_mib);
    let bytes = size_mib << 20;
    let slot = wait_before_checkpoint(size_mib).as_secs() + MARGIN_S;
    let start =
        format!("rm -f {SHARED_DIR}/{ROOM_FILE} && exec {APP} {SHARED_DIR} {bytes} {checkpoints}");
    let mut text = format!(
        "[cluster]\nname = \"{name}\"\nnodes = 1\n\n\
         [hardware]\nmemory = \"{}MiB\"\n\n\
         [storage]\nmode = \"data-image-nfs\"\ninput = \"../{INPUT_DIR}\"\n\n\
         [application]\ndockerfile = \"Dockerfile\"\ntag = \"{IMAGE}\"\n\
         command = [\"sh\", \"-c\", \"{start}\"]\n\n\
         [checkpoint]\ncommand = \"touch {SHARED_DIR}/{REQUEST}\"\n\
         restore = [\"{APP}\", \"{SHARED_DIR}\", \"{bytes}\", \"{checkpoints}\", \"--restart\"]\n\
         timeout = \"{SAVE_TIMEOUT}\"\nmargin = \"{MARGIN_S}s\"\n",
        guest_memory_mib(size_mib)
    );
    for _ in 0..checkpoints {
        text += &format!(
            "\n[[platform]]\nbackend = \"vm\"\nhosts = \"local\"\ntime_slot = \"{slot}s\"\n"
        );
    }
    text += "\n[[platform]]\nbackend = \"vm\"\nhosts = \"local\"\n";
    text
}

/// Fixed and per-run time on a two-core TCG host: the first platform of each size, then
/// one more platform and its checkpoint per run.
pub(crate) fn expected(quick: bool) -> (Duration, Duration) {
    if quick {
        (Duration::from_secs(110), Duration::from_secs(110))
    } else {
        (Duration::from_secs(360), Duration::from_secs(480))
    }
}

/// Which stream of `bee run` a line came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// The application's output, which bee passes on.
    Stdout,
    /// bee's progress.
    Stderr,
}

/// A line of `bee run` and when it arrived, since the run started.
#[derive(Debug, Clone, PartialEq)]
struct Stamped {
    at: Duration,
    stream: Stream,
    line: String,
}

/// The parts of one checkpoint, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Round {
    checkpoint: f64,
    transfer: f64,
    restore: f64,
    /// The next platform's deployment, left out of [`Round::total`].
    deploy: f64,
}

impl Round {
    /// The measured interval: checkpoint, transfer and restore.
    fn total(&self) -> f64 {
        self.checkpoint + self.transfer + self.restore
    }
}

/// The rounds of the run named `name` with `checkpoints` checkpoints, from its stamped
/// lines (see the module's documentation for what each interval spans).
fn rounds(lines: &[Stamped], name: &str, checkpoints: u32) -> Result<Vec<Round>> {
    let mut rounds = Vec::new();
    let mut from = 0;
    for platform in 0..checkpoints {
        let next = platform + 1;
        let find = |from: usize, stream: Stream, what: &str, matches: &dyn Fn(&str) -> bool| {
            lines[from..]
                .iter()
                .position(|l| l.stream == stream && matches(&l.line))
                .map(|i| from + i)
                .with_context(|| format!("bee run {name} never printed {what}"))
        };
        let starts = |prefix: String| move |line: &str| line.starts_with(&prefix);
        let requested = find(
            from,
            Stream::Stderr,
            &format!("that it checkpoints on platform {platform}"),
            &starts(format!(
                "bee: checkpointing {name} before the time slot of platform {platform} "
            )),
        )?;
        let ready = lines[from..requested].iter().any(|l| {
            l.stream == Stream::Stdout
                && (l.line.starts_with(&format!("{APP_PREFIX}ready "))
                    || l.line.starts_with(&format!("{APP_PREFIX}restored ")))
        });
        if !ready {
            bail!(
                "the application was not ready when bee asked for checkpoint {next}: its state \
                 was still being filled or restored, which would be counted as checkpoint time"
            );
        }
        let saved = find(
            requested,
            Stream::Stderr,
            &format!("that it saves checkpoint {next}"),
            &starts(format!("bee: saving checkpoint {next} from platform {platform}")),
        )?;
        let restoring = find(
            saved,
            Stream::Stderr,
            &format!("that it restores checkpoint {next}"),
            &starts(format!("bee: restoring checkpoint {next} on platform {next} ")),
        )?;
        let filled = find(restoring, Stream::Stderr, "that it filled the next data image", &|l| {
            l.starts_with("bee: filling data image ") && l.contains(": done in ")
        })?;
        let running = find(
            filled,
            Stream::Stderr,
            &format!("that it runs the restore command on platform {next}"),
            &|l| l.starts_with("bee: running ") && l.contains(&format!(" on platform {next} ")),
        )?;
        let restored = find(
            running,
            Stream::Stdout,
            &format!("the application's line that it restored checkpoint {next}"),
            &starts(format!("{APP_PREFIX}restored ")),
        )?;
        let between = |a: usize, b: usize| (lines[b].at - lines[a].at).as_secs_f64();
        rounds.push(Round {
            checkpoint: between(requested, saved),
            transfer: between(saved, filled),
            restore: between(running, restored),
            deploy: between(filled, running),
        });
        from = restored;
    }
    Ok(rounds)
}

/// Runs the checkpoint benchmark.
pub(crate) fn run(common: &Common) -> Result<Results> {
    let tools = Tools::locate(common.bee.clone())?;
    let accel = choose_accel()?;
    progress(&format!("accelerator for the guests: {}", accel.as_str()));
    let sizes: &[u64] = if common.quick { &QUICK_SIZES_MIB } else { &SIZES_MIB };
    let mut measured = Vec::new();
    for &size_mib in sizes {
        measured.push(measure(&tools, accel, common.runs, size_mib)?);
    }
    let report = Report { accel, runs: common.runs, sizes: measured };
    Ok(report.results(common.quick))
}

/// What was measured at one data size.
#[derive(Debug, Clone, PartialEq)]
struct Sized {
    size_mib: u64,
    rounds: Vec<Round>,
    /// Seconds of each plain copy.
    copies: Vec<f64>,
}

/// One `bee run` with `runs` checkpoints of a state of `size_mib` MiB, then `runs` plain
/// copies of as many bytes.
fn measure(tools: &Tools, accel: Accel, runs: u32, size_mib: u64) -> Result<Sized> {
    let name = cluster_name(size_mib);
    let state = BeeState::new(tools)?;
    progress(&format!("{size_mib} MiB: run {name} in {}", state.path().display()));
    let config_file = write_project(state.path(), size_mib, runs)?;
    let platforms = runs + 1;
    let what = format!("bee run {name}: {runs} checkpoint(s) over {platforms} platforms");
    progress(&format!("{what}; its lines follow"));
    let lines = bee_run(tools, accel, &state, &config_file, platforms).context(what.clone())?;
    let took = lines.last().map_or(0.0, |l| l.at.as_secs_f64());
    progress(&format!("{what}: done in {took:.0} s"));
    let rounds = rounds(&lines, &name, runs)?;
    for (index, round) in rounds.iter().enumerate() {
        progress(&format!(
            "{size_mib} MiB, checkpoint {}: checkpoint {:.1} s, transfer {:.1} s, restore \
             {:.1} s: {:.1} s (deploy {:.1} s, excluded)",
            index + 1,
            round.checkpoint,
            round.transfer,
            round.restore,
            round.total(),
            round.deploy
        ));
    }

    let dir = state.path().join(COPY_DIR);
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let source = dir.join("state");
    write_state(&source, size_mib << 20)?;
    let mut copies = Vec::new();
    for run in 1..=runs {
        let what = format!("plain copy of {size_mib} MiB, run {run} of {runs}");
        let copy = || plain_copy(&source, &dir.join("copy"));
        copies.push(step(&what, copy, |s| format!("{s:.2} s"))?);
    }
    Ok(Sized { size_mib, rounds, copies })
}

/// Writes the configuration and the application into `dir`/[`PROJECT_DIR`] (the build
/// context of its image, so nothing else goes there), and the first platform's input
/// beside it; returns the configuration's path.
fn write_project(dir: &Path, size_mib: u64, checkpoints: u32) -> Result<PathBuf> {
    let project = dir.join(PROJECT_DIR);
    fs::create_dir(&project).with_context(|| format!("cannot create {}", project.display()))?;
    let write = |name: &str, text: &str| {
        let path = project.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("ckpt-state.c", APP_SOURCE)?;
    write("Dockerfile", DOCKERFILE)?;
    write("bee.toml", &config(size_mib, checkpoints))?;
    let input = dir.join(INPUT_DIR);
    fs::create_dir(&input).with_context(|| format!("cannot create {}", input.display()))?;
    let room = input.join(ROOM_FILE);
    let file = File::create(&room).with_context(|| format!("cannot create {}", room.display()))?;
    file.set_len(2 * (size_mib << 20))
        .with_context(|| format!("cannot size {}", room.display()))?;
    Ok(project.join("bee.toml"))
}

/// Runs `bee run CONFIG` in `state` and returns its lines, stamped as they arrived; fails
/// with the end of its stderr unless it completed.
fn bee_run(
    tools: &Tools,
    accel: Accel,
    state: &BeeState,
    config: &Path,
    platforms: u32,
) -> Result<Vec<Stamped>> {
    let (out_log, out_file) = state.log("run.stdout")?;
    let (err_log, err_file) = state.log("run.stderr")?;
    let mut child = tools
        .bee(state.path(), accel)
        .arg("run")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", tools.bee.display()))?;
    let started = Instant::now();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        read_lines(child.stdout.take(), Stream::Stdout, out_file, started, lines.clone()),
        read_lines(child.stderr.take(), Stream::Stderr, err_file, started, lines.clone()),
    ];
    // A platform takes about two minutes under TCG; far more than that is a hang.
    let limit = Duration::from_secs(300) * platforms + Duration::from_secs(300);
    let status = wait_with_deadline(child, limit, POLL, |_| ());
    for reader in readers {
        let _ = reader.join();
    }
    let status = status.context("bee run")?;
    if !status.success() {
        bail!(
            "bee run failed ({status}); its stderr ends with:\n{}\nits stdout ends with:\n{}",
            tail(&err_log),
            tail(&out_log)
        );
    }
    let mut lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|e| e.into_inner()));
    lines.sort_by_key(|l: &Stamped| l.at);
    Ok(lines)
}

/// Reads `pipe` line by line on a thread of its own, stamping each line, copying it into
/// `log`, and showing bee's messages and the application's lines as progress.
fn read_lines(
    pipe: Option<impl Read + Send + 'static>,
    stream: Stream,
    mut log: File,
    started: Instant,
    lines: Arc<Mutex<Vec<Stamped>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let Some(pipe) = pipe else { return };
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let at = started.elapsed();
            let _ = writeln!(log, "{line}");
            if line.starts_with("bee: ") || line.starts_with(APP_PREFIX) {
                progress(&format!("  {line}"));
            }
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(Stamped { at, stream, line });
        }
    })
}

/// Writes `bytes` bytes of the application's state sequence to `path`, fsynced.
fn write_state(path: &Path, bytes: u64) -> Result<()> {
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

/// Drops the host's cache of `source`, then times `cp source copy` and an `fsync` of the
/// copy, in seconds.
fn plain_copy(source: &Path, copy: &Path) -> Result<f64> {
    let file = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .with_context(|| format!("cannot drop the cache of {}", source.display()))?;
    drop(file);
    match fs::remove_file(copy) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("cannot remove {}", copy.display()));
        }
        _ => {}
    }
    let start = Instant::now();
    let output = Command::new("cp")
        .arg(source)
        .arg(copy)
        .stdin(Stdio::null())
        .output()
        .context("cannot run cp")?;
    if !output.status.success() {
        bail!("cp failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    File::open(copy)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", copy.display()))?;
    Ok(start.elapsed().as_secs_f64())
}

/// Everything the checkpoint benchmark reports.
struct Report {
    accel: Accel,
    runs: u32,
    sizes: Vec<Sized>,
}

/// The medians of one size's rounds, part by part.
fn medians(sized: &Sized) -> Round {
    let of =
        |part: fn(&Round) -> f64| median_of(&sized.rounds.iter().map(part).collect::<Vec<_>>());
    Round {
        checkpoint: of(|r| r.checkpoint),
        transfer: of(|r| r.transfer),
        restore: of(|r| r.restore),
        deploy: of(|r| r.deploy),
    }
}

impl Report {
    /// The human-readable table.
    fn table(&self) -> String {
        let setup = ["one node", "data-image-nfs", "hosts \"local\""];
        let mut out = heading("checkpoint benchmark", self.accel, self.runs, &setup);
        let mut table = Table::new(&[
            ("MiB", Align::Right),
            ("checkpoint s", Align::Right),
            ("transfer s", Align::Right),
            ("restore s", Align::Right),
            ("total s", Align::Right),
            ("plain copy s", Align::Right),
            ("ratio", Align::Right),
            ("target", Align::Left),
            ("deploy s", Align::Right),
        ]);
        for sized in &self.sizes {
            let parts = medians(sized);
            let total = median_of(&sized.rounds.iter().map(Round::total).collect::<Vec<_>>());
            let copy = median_of(&sized.copies);
            let ratio = total / copy;
            let met = if ratio.is_finite() { verdict(ratio < TARGET_RATIO) } else { "-" };
            table.push(vec![
                sized.size_mib.to_string(),
                fixed(parts.checkpoint, 1),
                fixed(parts.transfer, 1),
                fixed(parts.restore, 1),
                fixed(total, 1),
                fixed(copy, 2),
                fixed(ratio, 1),
                format!("< {TARGET_RATIO}: {met}"),
                fixed(parts.deploy, 1),
            ]);
        }
        out += &table.render();
        let of = if self.runs > 1 { format!(", medians of {}", self.runs) } else { String::new() };
        out += &format!(
            "total = checkpoint (request to fsynced save and exit) + transfer (stop, keep the\n\
             data image, copy it) + restore (restore command to state read and checked){of}\n"
        );
        out += "deploy: the next platform's boot, Docker and image build, not in the total\n\
                plain copy: cp + fsync of the copy, its source dropped from the host's cache\n";
        out
    }

    /// The results for `report.json`.
    fn results(&self, quick: bool) -> Results {
        let metric = |id, title: &str| Metric {
            id,
            title: title.to_owned(),
            unit: "s",
            better: Better::Lower,
            x_label: Some("MiB"),
        };
        let mut series = Vec::new();
        let mut comparisons = Vec::new();
        for sized in &self.sizes {
            let x = Some(sized.size_mib as f64);
            let mut add = |metric, subject: &str, samples: Vec<f64>| {
                series.push(Series { metric, subject: subject.to_owned(), x, samples });
            };
            let parts = |part: fn(&Round) -> f64| sized.rounds.iter().map(part).collect();
            add("ckpt_time", PLAIN_COPY, sized.copies.clone());
            add("ckpt_time", BEE, parts(Round::total));
            add("phases", CHECKPOINT, parts(|r| r.checkpoint));
            add("phases", TRANSFER, parts(|r| r.transfer));
            add("phases", RESTORE, parts(|r| r.restore));
            add("phases", DEPLOY, parts(|r| r.deploy));
            comparisons.push(Comparison {
                metric: "ckpt_time",
                subject: BEE.to_owned(),
                x,
                reference: Some(PLAIN_COPY.to_owned()),
                target: Some(Target { on: TargetOn::Ratio, at_least: false, value: TARGET_RATIO }),
            });
        }
        let sizes: Vec<u64> = self.sizes.iter().map(|s| s.size_mib).collect();
        let memory: Vec<u64> = sizes.iter().map(|&s| guest_memory_mib(s)).collect();
        let waits: Vec<u64> = sizes.iter().map(|&s| wait_before_checkpoint(s).as_secs()).collect();
        Results {
            kind: Kind::Checkpoint,
            accel: self.accel,
            quick,
            runs: self.runs,
            settings: json!({
                "sizes_mib": sizes,
                "nodes": 1,
                "storage": "data-image-nfs",
                "platforms": self.runs + 1,
                "hosts": ["local", "local"],
                "guest_memory_mib": memory,
                "checkpoint_after_s": waits,
                "checkpoint_margin_s": MARGIN_S,
            }),
            metrics: vec![
                metric("ckpt_time", "checkpoint + transfer + restore, against a plain copy"),
                metric("phases", "bee's checkpoint path by part (deploy is not in the total)"),
            ],
            series,
            comparisons,
            notes: self.notes(),
            table: self.table(),
            recommendations: Vec::new(),
        }
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "both platforms are this host (hosts = \"local\"): the checkpoint moves between \
             two clusters of one node each, one after the other, never across a network"
                .to_owned(),
            "bee's interval, per checkpoint, from bee's own progress lines stamped as they \
             arrived: from `checkpointing NAME before the time slot of platform i` to the end \
             of `filling data image` on platform i+1 (the application writing and fsyncing \
             its state and exiting, stopping the node, keeping the data image file, copying \
             it into the next cluster), plus from `running IMAGE on platform i+1` to the application's \
             `restored` line (starting its container in the guest, reading the state and \
             checking its checksum)"
                .to_owned(),
            "left out: the next platform's deployment between the two (node boot, SSH and \
             Docker, mounting, building the application's image), reported as deploy"
                .to_owned(),
            "plain copy: `cp` of a file of the same bytes between two host directories on \
             the file system of bee's state, then fsync of the copy; the source was fsynced \
             and its pages dropped from the host's cache before each copy"
                .to_owned(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bee_core::config::{Config, Hosts, StorageMode};

    fn stamped(at: f64, stream: Stream, line: &str) -> Stamped {
        Stamped { at: Duration::from_secs_f64(at), stream, line: line.to_owned() }
    }

    /// What `bee run` of one checkpoint prints, cut down, with made-up arrival times.
    fn one_checkpoint() -> Vec<Stamped> {
        use Stream::{Stderr as E, Stdout as O};
        [
            (0.0, E, "bee: starting on platform 0 (vm on local, time slot 17s)"),
            (0.2, E, "bee: filling data image /s/c/data.img with /s/input ..."),
            (0.4, E, "bee: filling data image /s/c/data.img with /s/input: done in 0.2s"),
            (60.0, E, "bee: running bee/ckpt-state:latest on platform 0 (vm on local, ...)"),
            (61.0, O, "ckpt-state: ready with 67108864 bytes of state"),
            (72.0, E, "bee: checkpointing ckpt-64 before the time slot of platform 0 (...) ends"),
            (75.0, O, "ckpt-state: saved 67108864 bytes in round 1"),
            (75.5, E, "bee: saving checkpoint 1 from platform 0 (vm on local, time slot 17s)"),
            (80.0, E, "bee: checkpoint 1 saved; moving to platform 1 (vm on local)"),
            (80.1, E, "bee: restoring checkpoint 1 on platform 1 (vm on local)"),
            (80.2, E, "bee: filling data image /s/c/data.img from /s/r/data/kept ..."),
            (81.5, E, "bee: filling data image /s/c/data.img from /s/r/data/kept: done in 1.3s"),
            (140.0, E, "bee: running bee/ckpt-state:latest on platform 1 (vm on local)"),
            (142.5, O, "ckpt-state: restored 67108864 bytes of round 1"),
            (142.6, O, "ckpt-state: done after 1 checkpoint(s)"),
            (150.0, E, "bee: completed with exit code 0 after 1 checkpoint(s)"),
        ]
        .into_iter()
        .map(|(at, stream, line)| stamped(at, stream, line))
        .collect()
    }

    #[test]
    fn rounds_are_read_from_bee_lines_and_the_application_lines() {
        let rounds = rounds(&one_checkpoint(), "ckpt-64", 1).unwrap();
        assert_eq!(rounds.len(), 1);
        let round = rounds[0];
        assert!((round.checkpoint - 3.5).abs() < 1e-9, "{round:?}");
        assert!((round.transfer - 6.0).abs() < 1e-9, "{round:?}");
        assert!((round.restore - 2.5).abs() < 1e-9, "{round:?}");
        assert!((round.deploy - 58.5).abs() < 1e-9, "{round:?}");
        assert!((round.total() - 12.0).abs() < 1e-9);
    }

    #[test]
    fn a_missing_line_or_a_late_state_is_an_error() {
        let lines = one_checkpoint();
        let err = rounds(&lines, "ckpt-64", 2).unwrap_err().to_string();
        assert_eq!(err, "bee run ckpt-64 never printed that it checkpoints on platform 1");

        let no_restore: Vec<Stamped> =
            lines.iter().filter(|l| !l.line.contains("restored")).cloned().collect();
        let err = rounds(&no_restore, "ckpt-64", 1).unwrap_err().to_string();
        assert_eq!(
            err,
            "bee run ckpt-64 never printed the application's line that it restored checkpoint 1"
        );

        let late: Vec<Stamped> = lines
            .iter()
            .map(|l| match l.line.starts_with("ckpt-state: ready") {
                true => Stamped { at: Duration::from_secs(73), ..l.clone() },
                false => l.clone(),
            })
            .collect();
        let mut late = late;
        late.sort_by_key(|l| l.at);
        let err = rounds(&late, "ckpt-64", 1).unwrap_err().to_string();
        assert!(err.starts_with("the application was not ready when bee asked for checkpoint 1"));
    }

    #[test]
    fn bee_accepts_the_project_with_a_slot_per_checkpoint_and_room_for_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_project(dir.path(), 64, 2).unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.name, "ckpt-64");
        let slots: Vec<Option<Duration>> = config.platforms.iter().map(|p| p.time_slot).collect();
        assert_eq!(slots, [Some(Duration::from_secs(20)), Some(Duration::from_secs(20)), None]);
        assert!(config.platforms.iter().all(|p| p.hosts == Hosts::Local));
        let storage = config.storage.unwrap();
        assert_eq!(storage.mode, StorageMode::DataImageNfs);
        let input = dir.path().join(PROJECT_DIR).join("..").join(INPUT_DIR);
        assert_eq!(storage.input, Some(input));
        assert_eq!(config.hardware.memory_mib, 1024);
        let start = "rm -f /bee/shared/bee-bench-room && exec /app/ckpt-state /bee/shared \
                     67108864 2";
        assert_eq!(config.application.unwrap().command, ["sh", "-c", start]);
        let checkpoint = config.checkpoint.unwrap();
        assert_eq!(
            checkpoint.restore,
            ["/app/ckpt-state", "/bee/shared", "67108864", "2", "--restart"]
        );
        assert_eq!(checkpoint.margin, Duration::from_secs(MARGIN_S));
        assert_eq!(guest_memory_mib(1024), 1792);

        let dockerfile = dir.path().join(PROJECT_DIR).join("Dockerfile");
        assert!(fs::read_to_string(dockerfile).unwrap().contains("gcc"));
        let meta = fs::metadata(dir.path().join(INPUT_DIR).join(ROOM_FILE)).unwrap();
        assert_eq!(meta.len(), 128 << 20);
        assert_eq!(std::os::unix::fs::MetadataExt::blocks(&meta), 0);
    }

    #[test]
    fn the_plain_copy_copies_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (source, copy) = (dir.path().join("a"), dir.path().join("b"));
        write_state(&source, (1 << 20) + 16).unwrap();
        assert!(plain_copy(&source, &copy).unwrap() > 0.0);
        let bytes = fs::read(&copy).unwrap();
        assert_eq!(bytes, fs::read(&source).unwrap());
        assert_eq!(bytes.len(), (1 << 20) + 16);
        // The application's sequence: xorshift64 from its seed, little-endian words.
        let first = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert_eq!(first, x);
    }

    fn report() -> Report {
        let round =
            |checkpoint, transfer, restore| Round { checkpoint, transfer, restore, deploy: 60.0 };
        Report {
            accel: Accel::Tcg,
            runs: 1,
            sizes: vec![
                Sized { size_mib: 64, rounds: vec![round(3.0, 6.0, 2.0)], copies: vec![0.5] },
                Sized { size_mib: 256, rounds: vec![round(0.1, 0.2, 0.1)], copies: vec![0.4] },
            ],
        }
    }

    #[test]
    fn table_shows_parts_totals_and_ratios() {
        let expected = "\
checkpoint benchmark (accelerator: tcg, runs: 1, one node, data-image-nfs, hosts \"local\")
MiB  checkpoint s  transfer s  restore s  total s  plain copy s  ratio  target         deploy s
 64           3.0         6.0        2.0     11.0          0.50   22.0  < 1.5: missed      60.0
256           0.1         0.2        0.1      0.4          0.40    1.0  < 1.5: met         60.0
total = checkpoint (request to fsynced save and exit) + transfer (stop, keep the
data image, copy it) + restore (restore command to state read and checked)
deploy: the next platform's boot, Docker and image build, not in the total
plain copy: cp + fsync of the copy, its source dropped from the host's cache
";
        let table = report().table();
        assert_eq!(table, expected);
    }

    #[test]
    fn results_compare_each_size_with_the_plain_copy() {
        let results = report().results(false);
        assert_eq!(results.comparisons.len(), 2);
        let verdicts: Vec<Option<bool>> =
            results.comparisons.iter().map(|c| results.met(c)).collect();
        assert_eq!(verdicts, [Some(false), Some(true)]);
        assert_eq!(results.ratio(&results.comparisons[0]), 22.0);
        let bee = results.series_of("ckpt_time", BEE, Some(64.0)).unwrap();
        assert_eq!(bee.samples, [11.0]);
        assert_eq!(results.series_of("phases", DEPLOY, Some(256.0)).unwrap().samples, [60.0]);
        assert_eq!(results.settings["sizes_mib"], json!([64, 256]));
    }
}
