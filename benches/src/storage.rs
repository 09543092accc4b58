//! `bee bench storage`: sequential write and read bandwidth through each of bee's shared
//! storages, against the same I/O on a directory of the host.
//!
//! For each storage mode (`virtio-9p`, `data-image-nfs`) it starts one two-node cluster
//! (network `p2p-tree`, 1 GiB of memory per guest) with `bee up`. Node 0 writes file A
//! into the shared directory once. Then, in every run:
//!
//! 1. node 1 writes file B (the timed write);
//! 2. every guest syncs and drops its caches, and the host syncs and drops its cache of
//!    the files that back the shared directory (`posix_fadvise(POSIX_FADV_DONTNEED)`):
//!    the 9p export directory's files, or the data image;
//! 3. node 1 reads file A, which node 0 wrote (the timed read).
//!
//! Both are fio jobs, sequential with 1 MiB blocks and `end_fsync=1` for the write, and
//! the figures are fio's bandwidths (`jobs[0].write.bw`, `jobs[0].read.bw`). The
//! reference, in the same run and while the cluster is up, is the same pair of fio jobs
//! on a host directory next to bee's state directory (so on the same file system), with
//! the host's cache of file A dropped before the read. The report gives each mode's
//! bandwidths as ratios to the reference's medians; the targets, from the paper, are
//! [`VIRTIO_9P_WRITE_TARGET`] and [`VIRTIO_9P_READ_TARGET`] for `virtio-9p`.
//! `data-image-nfs` has no target: its data crosses the data-plane network.
//!
//! # Limitations
//!
//! - bee sizes a data image from its input (at least 1 GiB), and two files of the
//!   default 512 MiB do not fit in 1 GiB of ext4. The benchmark gives the
//!   `data-image-nfs` cluster an input holding one sparse file, [`ROOM_FILE`], of twice
//!   the file size, which makes bee create a larger image; `mkfs.ext4 -d` keeps the file
//!   sparse, so it takes no room in the image.
//! - Dropping the host's cache needs the backing files to be readable by the user that
//!   runs the benchmark; they are, since QEMU runs as that user too.
//! - fio's write bandwidth includes its final `fsync`, so a storage that acknowledges
//!   writes early shows it only as far as `fsync` makes it wait.
//! - Under TCG every I/O also costs guest CPU time; the ratios then say as much about
//!   emulation as about the storage.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bee_core::config::StorageMode;
use bee_core::docker::SHARED_DIR;
use bee_storage::{EXPORT_DIR, IMAGE_FILE};
use bee_vm::qemu::Accel;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use serde_json::{json, Value};

use crate::bee::{choose_accel, require_host_tool, BeeState, Cluster, Tools};
use crate::results::{Better, Comparison, Metric, Results, Series, Target, TargetOn};
use crate::text::{fixed, heading, median_of, progress, step, verdict, Align, Table};
use crate::{Common, Kind};

/// The modes measured, in report order.
const MODES: [StorageMode; 2] = [StorageMode::Virtio9p, StorageMode::DataImageNfs];

/// The modes `--quick` measures: the one with the paper's targets.
const QUICK_MODES: [StorageMode; 1] = [StorageMode::Virtio9p];

/// Nodes of each cluster.
const NODES: u32 = 2;

/// The node that writes file A, untimed.
const WRITER: u32 = 0;

/// The node whose write and read are timed.
const READER: u32 = 1;

/// The data-plane network of the clusters.
const NETWORK: &str = "p2p-tree";

/// Guest memory, as `[hardware] memory` takes it.
const GUEST_MEMORY: &str = "1GiB";

/// Size of each file in MiB by default.
const DEFAULT_SIZE_MIB: u32 = 512;

/// Size of each file in MiB with `--quick`.
const QUICK_SIZE_MIB: u32 = 128;

/// The file node 0 writes and node 1 reads.
const FILE_A: &str = "bee-bench-a";

/// The file node 1 writes.
const FILE_B: &str = "bee-bench-b";

/// The sparse file in the input of the `data-image-nfs` cluster that makes bee create an
/// image with room for both files.
pub(crate) const ROOM_FILE: &str = "bee-bench-room";

/// The input directory of the `data-image-nfs` cluster, next to its `bee.toml`.
const INPUT_DIR: &str = "input";

/// The host directory of the reference, inside the state directory.
const NATIVE_DIR: &str = "native";

/// The reference's subject name in the results.
const NATIVE: &str = "native";

/// Target for virtio-9p's write bandwidth over the host's.
const VIRTIO_9P_WRITE_TARGET: f64 = 0.9;

/// Target for virtio-9p's read bandwidth over the host's.
const VIRTIO_9P_READ_TARGET: f64 = 0.95;

/// Flushes and drops a guest's page cache, dentries and inodes.
const DROP_CACHES: &str = "sudo sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches'";

/// Which way a fio job moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Write,
    Read,
}

impl Io {
    /// fio's name of the direction, as in `--rw` and its JSON.
    fn name(self) -> &'static str {
        match self {
            Io::Write => "write",
            Io::Read => "read",
        }
    }
}

/// The arguments of the fio job that writes or reads `file` of `size_mib` MiB.
fn fio_args(io: Io, file: &str, size_mib: u32) -> Vec<String> {
    let mut args = vec![
        "--name=bee-bench".to_owned(),
        format!("--rw={}", io.name()),
        "--bs=1M".to_owned(),
        format!("--size={size_mib}M"),
        "--ioengine=psync".to_owned(),
    ];
    if io == Io::Write {
        args.push("--end_fsync=1".to_owned());
    }
    args.push(format!("--filename={file}"));
    args.push("--output-format=json".to_owned());
    args
}

/// fio's bandwidth in KiB/s of `io` from its JSON output, which may follow other lines.
fn parse_fio_bw_kib(output: &str, io: Io) -> Result<f64> {
    let start =
        output.find('{').with_context(|| format!("fio printed no JSON: {}", output.trim()))?;
    let value: Value = serde_json::from_str(&output[start..])
        .with_context(|| format!("fio printed no JSON: {}", output.trim()))?;
    let job = value.pointer("/jobs/0").context("fio's JSON has no jobs")?;
    match job.get("error").and_then(Value::as_i64) {
        Some(0) | None => {}
        Some(error) => bail!("fio's job failed with error {error}"),
    }
    let name = io.name();
    job.get(name)
        .and_then(|stats| stats.get("bw"))
        .and_then(Value::as_f64)
        .with_context(|| format!("fio's JSON has no jobs[0].{name}.bw"))
}

/// Write and read bandwidths over the runs, in MiB/s.
#[derive(Debug, Default, Clone, PartialEq)]
struct IoSamples {
    write_mib_s: Vec<f64>,
    read_mib_s: Vec<f64>,
}

impl IoSamples {
    fn write(&self) -> f64 {
        median_of(&self.write_mib_s)
    }

    fn read(&self) -> f64 {
        median_of(&self.read_mib_s)
    }
}

/// The targets of `mode`, write and read, if it has any.
fn targets(mode: StorageMode) -> Option<(f64, f64)> {
    (mode == StorageMode::Virtio9p).then_some((VIRTIO_9P_WRITE_TARGET, VIRTIO_9P_READ_TARGET))
}

/// The `bee.toml` of the cluster of `mode` named `name`.
fn config(name: &str, mode: StorageMode) -> String {
    let input = match mode {
        StorageMode::DataImageNfs => format!("input = \"{INPUT_DIR}\"\n"),
        StorageMode::Virtio9p => String::new(),
    };
    format!(
        "[cluster]\nname = \"{name}\"\nnodes = {NODES}\n\n\
         [hardware]\nmemory = \"{GUEST_MEMORY}\"\n\n\
         [network]\nmode = \"{NETWORK}\"\n\n\
         [storage]\nmode = \"{}\"\n{input}",
        mode.name()
    )
}

/// The cluster name of `mode`, short: see [`crate::bee::BeeState`] for why.
fn cluster_name(mode: StorageMode) -> &'static str {
    match mode {
        StorageMode::Virtio9p => "sto-9p",
        StorageMode::DataImageNfs => "sto-nfs",
    }
}

/// Fixed and per-run time on a two-core TCG host: a boot and a first file per mode, then
/// the runs.
pub(crate) fn expected(quick: bool) -> (Duration, Duration) {
    if quick {
        (Duration::from_secs(150), Duration::from_secs(40))
    } else {
        (Duration::from_secs(420), Duration::from_secs(120))
    }
}

/// Runs the storage benchmark.
pub(crate) fn run(common: &Common) -> Result<Results> {
    require_host_tool("fio", "fio")?;
    let quick = common.quick;
    let size_mib = if quick { QUICK_SIZE_MIB } else { DEFAULT_SIZE_MIB };
    let tools = Tools::locate(common.bee.clone())?;
    let accel = choose_accel()?;
    progress(&format!("accelerator for the guests: {}", accel.as_str()));

    let mut native = IoSamples::default();
    let mut modes = Vec::new();
    for mode in if quick { &QUICK_MODES[..] } else { &MODES[..] } {
        let mode = *mode;
        let measured = measure(&tools, accel, common.runs, size_mib, mode, &mut native)?;
        modes.push((mode, measured));
    }

    let report = Report { accel, runs: common.runs, size_mib, native, modes };
    Ok(report.results(quick))
}

fn mib_s_text(mib_s: &f64) -> String {
    format!("{mib_s:.1} MiB/s")
}

/// Starts the cluster of `mode`, measures it and the host directory `runs` times, adding
/// the host's figures to `native`, and brings the cluster down.
fn measure(
    tools: &Tools,
    accel: Accel,
    runs: u32,
    size_mib: u32,
    mode: StorageMode,
    native: &mut IoSamples,
) -> Result<IoSamples> {
    let name = cluster_name(mode);
    let state = BeeState::new(tools)?;
    if mode == StorageMode::DataImageNfs {
        make_room(&state.path().join(INPUT_DIR), size_mib)?;
    }
    let native_dir = state.path().join(NATIVE_DIR);
    fs::create_dir(&native_dir)
        .with_context(|| format!("cannot create {}", native_dir.display()))?;
    progress(&format!("{}: cluster {name} in {}", mode.name(), state.path().display()));
    let cluster = Cluster::up_step(tools, accel, state, name, &config(name, mode))?;

    let shared = |file: &str| format!("{SHARED_DIR}/{file}");
    let what = format!("node {WRITER} writes {size_mib} MiB to read later");
    step(&what, || guest_fio(&cluster, WRITER, Io::Write, &shared(FILE_A), size_mib), mib_s_text)?;
    let native_a = native_dir.join(FILE_A).display().to_string();
    let native_b = native_dir.join(FILE_B).display().to_string();
    step("host writes the same", || host_fio(Io::Write, &native_a, size_mib), mib_s_text)?;

    let mut samples = IoSamples::default();
    for run in 1..=runs {
        progress(&format!("{}: run {run} of {runs}", mode.name()));
        remove_file(&native_b)?;
        let write = step("native write", || host_fio(Io::Write, &native_b, size_mib), mib_s_text)?;
        native.write_mib_s.push(write);
        drop_host_cache(Path::new(&native_a))?;
        let read = step("native read", || host_fio(Io::Read, &native_a, size_mib), mib_s_text)?;
        native.read_mib_s.push(read);

        cluster.ssh(READER, &format!("rm -f {}", shared(FILE_B)))?;
        let what = format!("node {READER} writes");
        let write = || guest_fio(&cluster, READER, Io::Write, &shared(FILE_B), size_mib);
        samples.write_mib_s.push(step(&what, write, mib_s_text)?);
        step("dropping every cache", || drop_caches(&cluster, mode), |_| "done".to_owned())?;
        let what = format!("node {READER} reads node {WRITER}'s file");
        let read = || guest_fio(&cluster, READER, Io::Read, &shared(FILE_A), size_mib);
        samples.read_mib_s.push(step(&what, read, mib_s_text)?);
    }

    cluster.down_step()?;
    Ok(samples)
}

/// Creates `input` holding [`ROOM_FILE`], sparse, of twice `size_mib` MiB.
fn make_room(input: &Path, size_mib: u32) -> Result<()> {
    fs::create_dir(input).with_context(|| format!("cannot create {}", input.display()))?;
    let room = input.join(ROOM_FILE);
    let file = File::create(&room).with_context(|| format!("cannot create {}", room.display()))?;
    file.set_len((2 * u64::from(size_mib)) << 20)
        .with_context(|| format!("cannot size {}", room.display()))
}

/// Removes `path` unless it is already gone.
fn remove_file(path: &str) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {path}"))
        }
        _ => Ok(()),
    }
}

/// Runs the fio job on `node` and returns its bandwidth in MiB/s.
fn guest_fio(cluster: &Cluster<'_>, node: u32, io: Io, file: &str, size_mib: u32) -> Result<f64> {
    let command = format!("fio {}", fio_args(io, file, size_mib).join(" "));
    Ok(parse_fio_bw_kib(&cluster.ssh(node, &command)?, io)? / 1024.0)
}

/// Runs the fio job on the host and returns its bandwidth in MiB/s.
fn host_fio(io: Io, file: &str, size_mib: u32) -> Result<f64> {
    let output = Command::new("fio")
        .args(fio_args(io, file, size_mib))
        .stdin(Stdio::null())
        .output()
        .context("cannot run fio")?;
    if !output.status.success() {
        bail!("fio failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(parse_fio_bw_kib(&String::from_utf8_lossy(&output.stdout), io)? / 1024.0)
}

/// Drops the caches of every guest, then the host's cache of the files that back the
/// shared directory.
fn drop_caches(cluster: &Cluster<'_>, mode: StorageMode) -> Result<()> {
    for node in 0..NODES {
        cluster.ssh(node, DROP_CACHES)?;
    }
    for file in backing_files(mode, &cluster.dir())? {
        drop_host_cache(&file)?;
    }
    Ok(())
}

/// The host files that hold the shared directory's data: the regular files of the 9p
/// export directory, or the data image.
fn backing_files(mode: StorageMode, cluster_dir: &Path) -> Result<Vec<PathBuf>> {
    match mode {
        StorageMode::DataImageNfs => Ok(vec![cluster_dir.join(IMAGE_FILE)]),
        StorageMode::Virtio9p => {
            let export = cluster_dir.join(EXPORT_DIR);
            let mut files = Vec::new();
            let entries = fs::read_dir(&export)
                .with_context(|| format!("cannot read {}", export.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("cannot read {}", export.display()))?;
                if entry.file_type()?.is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            Ok(files)
        }
    }
}

/// Writes back and drops the host's cached pages of `path`.
fn drop_host_cache(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .with_context(|| format!("cannot drop the cache of {}", path.display()))
}

/// Everything the storage benchmark reports.
struct Report {
    accel: Accel,
    runs: u32,
    size_mib: u32,
    native: IoSamples,
    modes: Vec<(StorageMode, IoSamples)>,
}

impl Report {
    fn write_ratio(&self, samples: &IoSamples) -> f64 {
        samples.write() / self.native.write()
    }

    fn read_ratio(&self, samples: &IoSamples) -> f64 {
        samples.read() / self.native.read()
    }

    /// Whether `mode` met its write and read targets, if it has any.
    fn met(&self, mode: StorageMode, samples: &IoSamples) -> Option<(bool, bool)> {
        targets(mode).map(|(write, read)| {
            (self.write_ratio(samples) >= write, self.read_ratio(samples) >= read)
        })
    }

    /// The human-readable table.
    fn table(&self) -> String {
        let size = format!("files of {} MiB", self.size_mib);
        let memory = format!("guests with {GUEST_MEMORY}");
        let mut out = heading("storage benchmark", self.accel, self.runs, &[&size, &memory]);
        let mut table = Table::new(&[
            ("storage", Align::Left),
            ("write MiB/s", Align::Right),
            ("x native", Align::Right),
            ("target", Align::Left),
            ("read MiB/s", Align::Right),
            ("x native", Align::Right),
            ("target", Align::Left),
        ]);
        let native = &self.native;
        let dash = || "-".to_owned();
        table.push(vec![
            "native".to_owned(),
            fixed(native.write(), 1),
            dash(),
            String::new(),
            fixed(native.read(), 1),
            dash(),
        ]);
        for (mode, samples) in &self.modes {
            let target = |target: Option<f64>, met: Option<bool>| match (target, met) {
                (Some(target), Some(met)) => format!(">= {target}: {}", verdict(met)),
                _ => "none".to_owned(),
            };
            let (targets, met) = (targets(*mode), self.met(*mode, samples));
            table.push(vec![
                mode.name().to_owned(),
                fixed(samples.write(), 1),
                fixed(self.write_ratio(samples), 2),
                target(targets.map(|(write, _)| write), met.map(|(write, _)| write)),
                fixed(samples.read(), 1),
                fixed(self.read_ratio(samples), 2),
                target(targets.map(|(_, read)| read), met.map(|(_, read)| read)),
            ]);
        }
        out += &table.render();

        let of = if self.runs > 1 { format!(", median of {}", self.runs) } else { String::new() };
        out += &format!(
            "fio, sequential, 1 MiB blocks{of}; write: node {READER}, with end_fsync=1; \
             read: node {READER} reads\n"
        );
        out += &format!(
            "node {WRITER}'s file after every cache was dropped; native: the same on a host \
             directory\n"
        );
        out
    }

    /// The results for `report.json`: every storage's samples against the host's.
    fn results(&self, quick: bool) -> Results {
        let metric = |id, io: &str| Metric {
            id,
            title: format!("sequential {io}, {} MiB, 1 MiB blocks (fio)", self.size_mib),
            unit: "MiB/s",
            better: Better::Higher,
            x_label: None,
        };
        let mut series = Vec::new();
        let mut add = |subject: &str, samples: &IoSamples| {
            for (metric, values) in [("write", &samples.write_mib_s), ("read", &samples.read_mib_s)]
            {
                series.push(Series {
                    metric,
                    subject: subject.to_owned(),
                    x: None,
                    samples: values.clone(),
                });
            }
        };
        add(NATIVE, &self.native);
        for (mode, samples) in &self.modes {
            add(mode.name(), samples);
        }
        let mut comparisons = Vec::new();
        for (mode, _) in &self.modes {
            let targets = targets(*mode);
            let of = |value: f64| Target { on: TargetOn::Ratio, at_least: true, value };
            for (metric, target) in
                [("write", targets.map(|(w, _)| of(w))), ("read", targets.map(|(_, r)| of(r)))]
            {
                comparisons.push(Comparison {
                    metric,
                    subject: mode.name().to_owned(),
                    x: None,
                    reference: Some(NATIVE.to_owned()),
                    target,
                });
            }
        }
        Results {
            kind: Kind::Storage,
            accel: self.accel,
            quick,
            runs: self.runs,
            settings: json!({
                "size_mib": self.size_mib,
                "nodes": NODES,
                "network": NETWORK,
                "guest_memory": GUEST_MEMORY,
                "writer": WRITER,
                "reader": READER,
            }),
            metrics: vec![metric("write", "write"), metric("read", "read")],
            series,
            comparisons,
            notes: vec![
                format!(
                    "write: node {READER}, with end_fsync=1; read: node {READER} reads node \
                     {WRITER}'s file after every guest cache and the host's cache of the \
                     backing files were dropped"
                ),
                "native: the same fio jobs on a host directory next to bee's state".to_owned(),
            ],
            table: self.table(),
            recommendations: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fio 3.33's `--output-format=json`, cut down to what is read, after a warning line.
    const FIO_WRITE: &str = r#"fio: this platform does not support process shared mutexes
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "bee-bench",
      "error" : 0,
      "read" : { "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0 },
      "write" : { "io_bytes" : 536870912, "bw_bytes" : 316669952, "bw" : 309248 }
    }
  ]
}
"#;

    #[test]
    fn fio_bandwidth_is_read_from_its_json() {
        assert_eq!(parse_fio_bw_kib(FIO_WRITE, Io::Write).unwrap(), 309_248.0);
        assert_eq!(parse_fio_bw_kib(FIO_WRITE, Io::Read).unwrap(), 0.0);
    }

    #[test]
    fn fio_failures_are_reported() {
        let failed = r#"{"jobs": [{"error": 28, "write": {"bw": 0}}]}"#;
        let err = parse_fio_bw_kib(failed, Io::Write).unwrap_err().to_string();
        assert_eq!(err, "fio's job failed with error 28");
        let err = parse_fio_bw_kib("fio: file not found", Io::Read).unwrap_err().to_string();
        assert_eq!(err, "fio printed no JSON: fio: file not found");
        let err = parse_fio_bw_kib(r#"{"jobs": [{"error": 0}]}"#, Io::Read).unwrap_err();
        assert_eq!(err.to_string(), "fio's JSON has no jobs[0].read.bw");
    }

    #[test]
    fn fio_jobs_are_sequential_with_a_final_fsync_for_writes() {
        let write = fio_args(Io::Write, "/bee/shared/bee-bench-b", 128).join(" ");
        assert_eq!(
            write,
            "--name=bee-bench --rw=write --bs=1M --size=128M --ioengine=psync --end_fsync=1 \
             --filename=/bee/shared/bee-bench-b --output-format=json"
        );
        let read = fio_args(Io::Read, "/tmp/a", 512).join(" ");
        assert_eq!(
            read,
            "--name=bee-bench --rw=read --bs=1M --size=512M --ioengine=psync \
             --filename=/tmp/a --output-format=json"
        );
    }

    #[test]
    fn config_gives_the_data_image_room() {
        let expected = "\
[cluster]
name = \"sto-nfs\"
nodes = 2

[hardware]
memory = \"1GiB\"

[network]
mode = \"p2p-tree\"

[storage]
mode = \"data-image-nfs\"
input = \"input\"
";
        let mode = StorageMode::DataImageNfs;
        assert_eq!(config(cluster_name(mode), mode), expected);
        let nine_p = config(cluster_name(StorageMode::Virtio9p), StorageMode::Virtio9p);
        assert!(nine_p.ends_with("[storage]\nmode = \"virtio-9p\"\n"), "{nine_p}");
    }

    #[test]
    fn room_file_is_sparse_and_twice_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input");
        make_room(&input, 512).unwrap();
        let meta = fs::metadata(input.join(ROOM_FILE)).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert_eq!(std::os::unix::fs::MetadataExt::blocks(&meta), 0);
    }

    #[test]
    fn backing_files_are_the_export_files_or_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join(EXPORT_DIR);
        fs::create_dir_all(export.join("sub")).unwrap();
        fs::write(export.join(FILE_B), b"b").unwrap();
        fs::write(export.join(FILE_A), b"a").unwrap();
        let files = backing_files(StorageMode::Virtio9p, dir.path()).unwrap();
        assert_eq!(files, [export.join(FILE_A), export.join(FILE_B)]);
        let image = backing_files(StorageMode::DataImageNfs, dir.path()).unwrap();
        assert_eq!(image, [dir.path().join(IMAGE_FILE)]);
        drop_host_cache(&files[0]).unwrap();
    }

    fn report() -> Report {
        let io =
            |write: f64, read: f64| IoSamples { write_mib_s: vec![write], read_mib_s: vec![read] };
        Report {
            accel: Accel::Tcg,
            runs: 1,
            size_mib: 128,
            native: IoSamples { write_mib_s: vec![350.0, 370.0], read_mib_s: vec![400.0, 420.0] },
            modes: vec![
                (StorageMode::Virtio9p, io(306.0, 400.0)),
                (StorageMode::DataImageNfs, io(18.0, 36.9)),
            ],
        }
    }

    #[test]
    fn table_shows_ratios_and_targets() {
        let expected = "\
storage benchmark (accelerator: tcg, runs: 1, files of 128 MiB, guests with 1GiB)
storage         write MiB/s  x native  target          read MiB/s  x native  target
native                360.0         -                       410.0         -
virtio-9p             306.0      0.85  >= 0.9: missed       400.0      0.98  >= 0.95: met
data-image-nfs         18.0      0.05  none                  36.9      0.09  none
fio, sequential, 1 MiB blocks; write: node 1, with end_fsync=1; read: node 1 reads
node 0's file after every cache was dropped; native: the same on a host directory
";
        assert_eq!(report().table(), expected);
    }

    #[test]
    fn results_compare_each_mode_with_native() {
        let results = report().results(true);
        assert_eq!(results.series_of("write", "native", None).unwrap().median(), 360.0);
        let verdicts: Vec<Option<bool>> =
            results.comparisons.iter().map(|c| results.met(c)).collect();
        assert_eq!(verdicts, [Some(false), Some(true), None, None]);
        assert_eq!(results.ratio(&results.comparisons[0]), 0.85);
        assert_eq!(results.settings["size_mib"], 128);
    }
}
