//! An extra data image on the master, exported over NFS to the other nodes (paper Fig. 4).
//!
//! The image is a raw ext4 file, `data.img` in the cluster directory, created and filled
//! with the input on the host before boot by `mkfs.ext4 -d`, and read back after the
//! nodes stop by `debugfs rdump`: neither needs root nor a running guest. Only the master
//! attaches it, because each guest would otherwise cache its own view of a file system
//! others change underneath it. This module does not attach the disk: the backend renders
//! [`StorageDevice::Disk`] into its own device model.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use bee_core::config::{StorageMode, StorageSpec};
use bee_core::docker::SHARED_DIR;
use bee_core::error::CoreError;
use bee_core::events::Events;
use bee_core::traits::{GuestStep, NodeStorage, Storage, StorageDevice};

use crate::tools::{self, Output};
use crate::{blocking, check_input, give_to_bee, no_nodes, report_skipped, GUEST_UID};
use bee_core::tree::{self, Merge};

/// The image's file name inside the cluster directory.
pub const IMAGE_FILE: &str = "data.img";

/// The data image's file name in a checkpoint directory ([`Storage::keep`]): a directory
/// that holds it holds the data image of the cluster it was kept from, and nothing else.
pub const KEPT_IMAGE: &str = "bee-data-image.ext4";

/// The ext4 label the master finds the image by, whatever its device name.
pub const LABEL: &str = "beedata";

/// The smallest image [`DataImageNfs`] creates by default: 1 GiB. Images are sparse, so
/// space the job never writes costs nothing on the host.
pub const MIN_IMAGE_SIZE: u64 = 1 << 30;

/// Room for results on top of the input: half the input again, plus this.
pub const HEADROOM: u64 = 256 << 20;

/// Options of the master's NFS export, given to each worker address.
///
/// `no_root_squash` lets root in the workers' containers write as root, as it can on the
/// master. No `fsid=0`: with it the export becomes the NFSv4 pseudo-root, and the workers
/// would have to mount `MASTER:/` instead of `MASTER:/bee/shared`.
pub const EXPORT_OPTIONS: &str = "rw,sync,no_root_squash,no_subtree_check";

/// NFS mount options of the workers. `retry=0` makes each `mount` try once, so that the
/// workers' own bounded loop ([`MOUNT_ATTEMPTS`]) decides how long to wait for the
/// master, instead of `mount.nfs`'s two minutes.
pub const NFS_MOUNT_OPTIONS: &str = "vers=4.2,hard,noatime,retry=0";

/// How many times a worker tries to mount the master's export, 2 s apart. The builder
/// starts the NFS server before any worker mounts; measured, it takes about 1.3 s to
/// start, and a refused mount about 1.4 s to fail.
pub const MOUNT_ATTEMPTS: u32 = 30;

/// The top-level directory of ext4 that holds no data of the job.
const LOST_FOUND: &str = "lost+found";

/// Where `collect` unpacks the image before merging it into the output: inside the
/// output, so that the merge can rename instead of copy.
const STAGING: &str = ".bee-collect.tmp";

/// An extra data image on the master, exported over NFS to the workers (paper Fig. 4).
///
/// [`Storage::prepare`] creates `DIR/data.img` (DIR being the cluster directory), a
/// sparse ext4 image labelled [`LABEL`] and filled with `spec.input`, and plans it as a
/// disk of the master only. The master mounts it at [`SHARED_DIR`], hands it to the
/// guests' `bee` user (uid 1000; root can use it too) and exports it to every worker over
/// NFS; the workers mount the export. A cluster of one node only mounts the disk.
///
/// [`Storage::collect`] checks the image (replaying the journal a guest that did not shut
/// down cleanly left) and unpacks it into `spec.output`, merging: what the output already
/// holds stays, except files of the same name, which are overwritten. `lost+found` is left
/// out. As root, the collected files become root's; as an ordinary user, they are the
/// user's.
///
/// [`Storage::keep`] checks the image and moves the file itself into the checkpoint
/// directory as [`KEPT_IMAGE`] (a rename: cluster and run directories share bee's state
/// directory), and [`Storage::prepare`] given such a directory as input copies that image
/// (sparse, cloned where the file system can) instead of creating one: the data moves as
/// it was on disk, owners, modes, special files and all, and no file is unpacked on the
/// way. [`crate::Virtio9p`] unpacks a kept image into its share.
///
/// # Limitations
///
/// - An image already in the cluster directory is reused as it is, and the input is not
///   copied into it again; [`Storage::prepare`] warns when that happens.
/// - The image's size is fixed when it is created: the input, half the input again and
///   [`HEADROOM`], at least [`DataImageNfs::with_min_size`] (default [`MIN_IMAGE_SIZE`]).
/// - Workers reach the data through the master over the data-plane network, so heavy I/O
///   competes with MPI traffic (paper section IV-A); [`crate::Virtio9p`] does not.
#[derive(Debug, Clone, Copy)]
pub struct DataImageNfs {
    min_size: u64,
}

impl Default for DataImageNfs {
    fn default() -> DataImageNfs {
        DataImageNfs { min_size: MIN_IMAGE_SIZE }
    }
}

impl DataImageNfs {
    /// Creates the storage with images of at least [`MIN_IMAGE_SIZE`].
    pub fn new() -> DataImageNfs {
        DataImageNfs::default()
    }

    /// Sets the smallest image size in bytes; it is rounded up to whole MiB.
    pub fn with_min_size(mut self, bytes: u64) -> DataImageNfs {
        self.min_size = bytes;
        self
    }

    /// The image size for an input of `usage`: whole MiB.
    fn image_size(&self, usage: tree::Usage) -> u64 {
        let wanted = usage.bytes + usage.bytes / 2 + HEADROOM;
        wanted.max(self.min_size).div_ceil(1 << 20) << 20
    }
}

#[async_trait]
impl Storage for DataImageNfs {
    fn mode(&self) -> StorageMode {
        StorageMode::DataImageNfs
    }

    async fn prepare(
        &self,
        spec: &StorageSpec,
        addresses: &[Ipv4Addr],
        dir: &Path,
        events: &dyn Events,
    ) -> Result<Vec<NodeStorage>, CoreError> {
        if addresses.is_empty() {
            return Err(no_nodes());
        }
        if let Some(input) = &spec.input {
            check_input(input)?;
        }
        fs::create_dir_all(dir).map_err(|e| CoreError::io("cannot create", dir, e))?;
        let image = std::path::absolute(dir.join(IMAGE_FILE))
            .map_err(|e| CoreError::io("cannot create", dir.join(IMAGE_FILE), e))?;
        let kept = spec.input.as_deref().and_then(kept_image);
        if image.exists() {
            events.warning(&format!(
                "reusing the data image {} as it is; the input is not copied into it again",
                image.display()
            ));
        } else if let Some(kept) = kept {
            let step = format!("filling data image {} from {}", image.display(), kept.display());
            let started = Instant::now();
            events.started(&step);
            bee_core::files::copy_sparse(&kept, &image).await?;
            events.finished(&step, started.elapsed());
        } else {
            self.create_image(&image, spec.input.as_deref(), events).await?;
        }
        Ok(plan(&image, addresses))
    }

    async fn keep(&self, dir: &Path, into: &Path, events: &dyn Events) -> Result<(), CoreError> {
        let (image, kept) = (dir.join(IMAGE_FILE), into.join(KEPT_IMAGE));
        if !image.exists() && kept.is_file() {
            // Moved by an earlier call that was interrupted before the record went.
            return Ok(());
        }
        fs::metadata(&image).map_err(|e| CoreError::io("cannot read data image", &image, e))?;
        let step = format!("keeping data image {} in {}", image.display(), into.display());
        let started = Instant::now();
        events.started(&step);
        check_image(&image).await?;
        fs::create_dir_all(into).map_err(|e| CoreError::io("cannot create", into, e))?;
        match fs::rename(&image, &kept) {
            Ok(()) => {}
            // Another file system after all: copy, then let the cluster's go.
            Err(e) if e.kind() == ErrorKind::CrossesDevices => {
                bee_core::files::copy_sparse(&image, &kept).await?;
                fs::remove_file(&image).map_err(|e| CoreError::io("cannot remove", &image, e))?;
            }
            Err(e) => return Err(CoreError::io("cannot move the data image to", &kept, e)),
        }
        events.finished(&step, started.elapsed());
        Ok(())
    }

    async fn collect(
        &self,
        spec: &StorageSpec,
        dir: &Path,
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        let Some(output) = &spec.output else {
            return Ok(());
        };
        let image = dir.join(IMAGE_FILE);
        fs::metadata(&image).map_err(|e| CoreError::io("cannot read data image", &image, e))?;
        fs::create_dir_all(output)
            .map_err(|e| CoreError::io("cannot write storage output", output, e))?;

        let step = format!("collecting {} into {}", image.display(), output.display());
        let started = Instant::now();
        events.started(&step);
        report_skipped(&unpack_image(&image, output).await?, events);
        events.finished(&step, started.elapsed());
        Ok(())
    }
}

impl DataImageNfs {
    /// Creates `image` filled with `input`, sized for it.
    async fn create_image(
        &self,
        image: &Path,
        input: Option<&Path>,
        events: &dyn Events,
    ) -> Result<(), CoreError> {
        let usage = match input {
            Some(input) => {
                let input = input.to_path_buf();
                blocking(move || tree::usage(&input)).await?
            }
            None => tree::Usage::default(),
        };
        let step = match input {
            Some(input) => {
                format!("filling data image {} with {}", image.display(), input.display())
            }
            None => format!("creating data image {}", image.display()),
        };
        let started = Instant::now();
        events.started(&step);
        make_image(image, input, self.image_size(usage), usage.entries).await?;
        events.finished(&step, started.elapsed());
        Ok(())
    }
}

/// Runs `mkfs.ext4` to create `image` of `size` bytes holding `input` with `entries`
/// entries, under a temporary name first so that an image in its place is always whole.
async fn make_image(
    image: &Path,
    input: Option<&Path>,
    size: u64,
    entries: u64,
) -> Result<(), CoreError> {
    let partial = image.with_extension("img.partial");
    match fs::remove_file(&partial) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(CoreError::io("cannot remove", &partial, e));
        }
        _ => {}
    }
    let args = mkfs_args(&partial, input, size, entries);
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = tools::run("mkfs.ext4", &args, None).await?;
    if !out.status.success() {
        let _ = fs::remove_file(&partial);
        let doing = format!("creating {}", image.display());
        return Err(tools::failed("mkfs.ext4", &doing, out.status, &out.stderr));
    }
    fs::rename(&partial, image).map_err(|e| CoreError::io("cannot create", image, e))
}

/// The arguments of `mkfs.ext4` for an image of `size` bytes (whole MiB) holding `input`
/// with `entries` files, directories and links.
fn mkfs_args(image: &Path, input: Option<&Path>, size: u64, entries: u64) -> Vec<PathBuf> {
    let owner = format!("root_owner={GUEST_UID}:{GUEST_UID}");
    // `-m 0`: no blocks kept back for root; nothing but the job's data lives here.
    let mut args: Vec<PathBuf> =
        ["-q", "-F", "-m", "0", "-L", LABEL, "-E", &owner].iter().map(PathBuf::from).collect();
    // mke2fs gives a file system of this size one inode per 16 KiB; inputs of many small
    // files need more, with room for as many again.
    let default_inodes = size / (16 << 10);
    if entries * 2 + 1024 > default_inodes {
        args.push("-N".into());
        args.push((entries * 2 + 1024).to_string().into());
    }
    if let Some(input) = input {
        args.push("-d".into());
        args.push(input.into());
    }
    args.push(image.into());
    // A bare number would count blocks, not bytes.
    args.push(format!("{}M", size >> 20).into());
    args
}

/// The data image a checkpoint directory `input` holds, if it holds one
/// ([`KEPT_IMAGE`]).
pub(crate) fn kept_image(input: &Path) -> Option<PathBuf> {
    let kept = input.join(KEPT_IMAGE);
    kept.is_file().then_some(kept)
}

/// Checks `image` and unpacks it into `output`, merging: what [`Storage::collect`] does,
/// and what a storage that shares plain files does with a kept image. Returns the special
/// files it skipped.
pub(crate) async fn unpack_image(image: &Path, output: &Path) -> Result<Vec<PathBuf>, CoreError> {
    check_image(image).await?;
    let staging = output.join(STAGING);
    let result = unpack_into(image, &staging, output).await;
    let cleanup = match fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(CoreError::io("cannot remove", &staging, e))
        }
        _ => Ok(()),
    };
    let skipped = result?;
    cleanup.map(|()| skipped)
}

/// Replays the journal and repairs what a guest killed in the middle of writing left, so
/// that `debugfs`, which reads the image as it is, sees every committed write.
async fn check_image(image: &Path) -> Result<(), CoreError> {
    let out = tools::run("e2fsck", &[OsStr::new("-p"), image.as_os_str()], None).await?;
    // 1 and 2: errors were corrected.
    if matches!(out.status.code(), Some(0..=2)) {
        return Ok(());
    }
    let doing = format!("checking {}", image.display());
    Err(tools::failed("e2fsck", &doing, out.status, &format!("{}\n{}", out.stdout, out.stderr)))
}

/// Unpacks `image` into the fresh directory `staging` and merges that into `output`.
/// Returns the special files it skipped.
async fn unpack_into(
    image: &Path,
    staging: &Path,
    output: &Path,
) -> Result<Vec<PathBuf>, CoreError> {
    match fs::remove_dir_all(staging) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(CoreError::io("cannot remove", staging, e));
        }
        _ => {}
    }
    fs::create_dir(staging)
        .map_err(|e| CoreError::io("cannot write storage output", staging, e))?;
    let ours = fs::metadata(staging).map_err(|e| CoreError::io("cannot read", staging, e))?;

    // Run in the staging directory so that no path goes through debugfs's own quoting.
    let args = [OsStr::new("-R"), OsStr::new("rdump / ."), image.as_os_str()];
    let out = tools::run("debugfs", &args, Some(staging)).await?;
    rdump_result(image, &out)?;

    let (staging, output) = (staging.to_path_buf(), output.to_path_buf());
    blocking(move || {
        // rdump gives files their owners in the image when it may, that is as root.
        tree::own_tree(&staging, ours.uid(), ours.gid())?;
        tree::merge_tree(&staging, &output, Merge::Move, &[LOST_FOUND])
    })
    .await
}

/// Reads what `debugfs rdump` printed: it exits 0 whatever happens, and reports each
/// failure as a line on standard error.
fn rdump_result(image: &Path, out: &Output) -> Result<(), CoreError> {
    let failures: Vec<&str> = out
        .stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        // The banner, such as "debugfs 1.47.0 (5-Feb-2023)".
        .filter(|line| !(line.starts_with("debugfs ") && line.ends_with(')')))
        // An ordinary user cannot give files the owners they have in the image; they
        // become the user's, which is what the user wants.
        .filter(|line| !is_chown(line))
        .collect();
    if out.status.success() && failures.is_empty() {
        return Ok(());
    }
    let doing = format!("unpacking {}", image.display());
    Err(tools::failed("debugfs", &doing, out.status, &failures.join("\n")))
}

fn is_chown(line: &str) -> bool {
    line.contains(": Operation not permitted while changing ownership of ")
}

/// Plans the disk `image` for the master and NFS for the other nodes of `addresses`.
fn plan(image: &Path, addresses: &[Ipv4Addr]) -> Vec<NodeStorage> {
    let mount_disk = GuestStep {
        what: "mounting the data image".to_string(),
        command: format!(
            "mkdir -p {SHARED_DIR} && (mountpoint -q {SHARED_DIR} || mount -o noatime \
             LABEL={LABEL} {SHARED_DIR})"
        ),
    };
    let mut master = vec![mount_disk, give_to_bee()];
    if addresses.len() > 1 {
        master.push(export_step(&addresses[1..]));
    }
    let mut plan = vec![NodeStorage {
        devices: vec![StorageDevice::Disk { path: image.to_path_buf() }],
        guest_steps: master,
    }];
    let mount_nfs = mount_nfs_step(addresses[0]);
    plan.extend(
        addresses[1..]
            .iter()
            .map(|_| NodeStorage { devices: Vec::new(), guest_steps: vec![mount_nfs.clone()] }),
    );
    plan
}

fn export_step(workers: &[Ipv4Addr]) -> GuestStep {
    let clients: Vec<String> = workers.iter().map(|w| format!("{w}({EXPORT_OPTIONS})")).collect();
    GuestStep {
        what: "exporting the shared directory over NFS".to_string(),
        // exports.d keeps the image's own /etc/exports untouched; `exportfs -ra` applies
        // the file also when the server was already running.
        command: format!(
            "mkdir -p /etc/exports.d && echo '{SHARED_DIR} {}' > /etc/exports.d/bee.exports \
             && systemctl start nfs-server && exportfs -ra",
            clients.join(" ")
        ),
    }
}

fn mount_nfs_step(master: Ipv4Addr) -> GuestStep {
    GuestStep {
        what: format!("mounting the shared directory over NFS from {master}"),
        command: format!(
            "mkdir -p {SHARED_DIR} && for i in $(seq {MOUNT_ATTEMPTS}); do mountpoint -q \
             {SHARED_DIR} && break; mount -t nfs -o {NFS_MOUNT_OPTIONS} \
             {master}:{SHARED_DIR} {SHARED_DIR} && break; sleep 2; done; mountpoint -q \
             {SHARED_DIR}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_same_tree, sample_input, Recorder};
    use bee_core::events::Quiet;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    const MOUNT_DISK: &str = "mkdir -p /bee/shared && (mountpoint -q /bee/shared || mount -o \
                              noatime LABEL=beedata /bee/shared)";
    const CHOWN: &str = "chown -R 1000:1000 /bee/shared";

    fn addresses(n: u8) -> Vec<Ipv4Addr> {
        (1..=n).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect()
    }

    fn spec(input: Option<PathBuf>, output: Option<PathBuf>) -> StorageSpec {
        StorageSpec { mode: StorageMode::DataImageNfs, input, output }
    }

    fn step(what: &str, command: &str) -> GuestStep {
        GuestStep { what: what.to_string(), command: command.to_string() }
    }

    #[test]
    fn plans_the_disk_on_the_master_and_nfs_on_two_workers() {
        let plan = plan(Path::new("/c/ring/data.img"), &addresses(3));

        let master = NodeStorage {
            devices: vec![StorageDevice::Disk { path: "/c/ring/data.img".into() }],
            guest_steps: vec![
                step("mounting the data image", MOUNT_DISK),
                step("handing the shared directory to user bee", CHOWN),
                step(
                    "exporting the shared directory over NFS",
                    "mkdir -p /etc/exports.d && echo '/bee/shared \
                     10.0.0.2(rw,sync,no_root_squash,no_subtree_check) \
                     10.0.0.3(rw,sync,no_root_squash,no_subtree_check)' > \
                     /etc/exports.d/bee.exports && systemctl start nfs-server && exportfs -ra",
                ),
            ],
        };
        let worker = NodeStorage {
            devices: vec![],
            guest_steps: vec![step(
                "mounting the shared directory over NFS from 10.0.0.1",
                "mkdir -p /bee/shared && for i in $(seq 30); do mountpoint -q /bee/shared && \
                 break; mount -t nfs -o vers=4.2,hard,noatime,retry=0 10.0.0.1:/bee/shared \
                 /bee/shared && break; sleep 2; done; mountpoint -q /bee/shared",
            )],
        };
        assert_eq!(plan, [master, worker.clone(), worker]);
    }

    #[test]
    fn one_node_only_mounts_the_disk() {
        let plan = plan(Path::new("/c/solo/data.img"), &addresses(1));

        let master = NodeStorage {
            devices: vec![StorageDevice::Disk { path: "/c/solo/data.img".into() }],
            guest_steps: vec![
                step("mounting the data image", MOUNT_DISK),
                step("handing the shared directory to user bee", CHOWN),
            ],
        };
        assert_eq!(plan, [master]);
    }

    #[test]
    fn images_are_at_least_the_minimum_and_grow_with_the_input() {
        let storage = DataImageNfs::new();
        assert_eq!(storage.image_size(tree::Usage::default()), 1 << 30);
        let big = tree::Usage { bytes: 4 << 30, entries: 10 };
        assert_eq!(storage.image_size(big), (6 << 30) + (256 << 20));
        let small = DataImageNfs::new().with_min_size(1);
        assert_eq!(small.image_size(tree::Usage::default()), 256 << 20);
    }

    #[test]
    fn mkfs_gets_more_inodes_only_for_many_files() {
        let few = mkfs_args(Path::new("/c/data.img.partial"), Some(Path::new("/in")), 1 << 30, 10);
        let few: Vec<_> = few.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            few,
            [
                "-q",
                "-F",
                "-m",
                "0",
                "-L",
                "beedata",
                "-E",
                "root_owner=1000:1000",
                "-d",
                "/in",
                "/c/data.img.partial",
                "1024M"
            ]
        );
        let many = mkfs_args(Path::new("/c/x"), None, 1 << 30, 100_000);
        let many: Vec<_> = many.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(&many[8..], ["-N", "201024", "/c/x", "1024M"]);
    }

    #[test]
    fn rdump_output_is_read_line_by_line() {
        let ok = ExitStatus::from_raw(0);
        let out =
            |stderr: &str| Output { status: ok, stdout: String::new(), stderr: stderr.into() };
        let image = Path::new("/c/data.img");
        let quiet = "debugfs 1.47.0 (5-Feb-2023)\nrdump: Operation not permitted while \
                     changing ownership of .//lost+found\ndump_file: Operation not permitted \
                     while changing ownership of .//a/b\n";
        rdump_result(image, &out(quiet)).unwrap();

        let failed = "debugfs 1.47.0 (5-Feb-2023)\ndebugfs: No such file or directory while \
                      trying to open /c/data.img\nrdump: Filesystem not open\n";
        let err = rdump_result(image, &out(failed)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "debugfs failed: unpacking /c/data.img: exit status: 0: debugfs: No such file or \
             directory while trying to open /c/data.img; rdump: Filesystem not open"
        );
    }

    #[tokio::test]
    async fn round_trip_through_a_real_ext4_image() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        sample_input(&input);
        let cluster = tmp.path().join("cluster");
        let output = tmp.path().join("output");
        let events = Recorder::default();
        let storage = DataImageNfs::new();

        let plan = storage
            .prepare(&spec(Some(input.clone()), None), &addresses(3), &cluster, &events)
            .await
            .unwrap();
        let image = cluster.join("data.img");
        assert_eq!(plan[0].devices, [StorageDevice::Disk { path: image.clone() }]);
        let meta = fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(meta.blocks() * 512 < 128 << 20, "not sparse: {} blocks", meta.blocks());
        assert!(!cluster.join("data.img.partial").exists());

        storage.collect(&spec(None, Some(output.clone())), &cluster, &events).await.unwrap();

        assert_same_tree(&input, &output);
        let owner = fs::metadata(&output).unwrap().uid();
        for entry in fs::read_dir(&output).unwrap() {
            let meta = fs::symlink_metadata(entry.unwrap().path()).unwrap();
            assert_eq!(meta.uid(), owner);
        }
        let fill = format!("filling data image {} with {}", image.display(), input.display());
        let collect = format!("collecting {} into {}", image.display(), output.display());
        assert_eq!(
            events.steps(),
            [
                format!("started {fill}"),
                format!("finished {fill}"),
                format!("started {collect}"),
                format!("finished {collect}"),
            ]
        );
    }

    #[tokio::test]
    async fn a_kept_image_moves_as_it_is_and_comes_back_as_the_next_input() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        sample_input(&input);
        let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
        let kept_dir = tmp.path().join("runs/r/data");
        let output = tmp.path().join("output");
        let events = Recorder::default();
        let storage = DataImageNfs::new().with_min_size(1);
        storage
            .prepare(&spec(Some(input.clone()), None), &addresses(2), &first, &Quiet)
            .await
            .unwrap();
        let inode = fs::metadata(first.join(IMAGE_FILE)).unwrap().ino();

        storage.keep(&first, &kept_dir, &events).await.unwrap();
        let kept = kept_dir.join(KEPT_IMAGE);
        assert!(!first.join(IMAGE_FILE).exists(), "the image is still in the cluster");
        assert_eq!(fs::metadata(&kept).unwrap().ino(), inode, "the image was not moved");
        let bytes = fs::read(&kept).unwrap();
        let same = |path: &Path| fs::read(path).unwrap() == bytes;
        // Interrupted after the move and called again: nothing left to do.
        storage.keep(&first, &kept_dir, &events).await.unwrap();

        let plan = storage
            .prepare(&spec(Some(kept_dir.clone()), None), &addresses(2), &second, &events)
            .await
            .unwrap();
        let image = second.join(IMAGE_FILE);
        assert_eq!(plan[0].devices, [StorageDevice::Disk { path: image.clone() }]);
        assert!(same(&image), "the next image is not the kept one");
        let blocks = fs::metadata(&image).unwrap().blocks();
        assert!(blocks * 512 < 128 << 20, "not sparse: {blocks} blocks");
        assert!(kept.is_file(), "the checkpoint must stay until the run moves on");
        storage.collect(&spec(None, Some(output.clone())), &second, &Quiet).await.unwrap();
        assert_same_tree(&input, &output);

        let first_image = first.join(IMAGE_FILE);
        let keep =
            format!("keeping data image {} in {}", first_image.display(), kept_dir.display());
        let fill = format!("filling data image {} from {}", image.display(), kept.display());
        assert_eq!(
            events.steps(),
            [
                format!("started {keep}"),
                format!("finished {keep}"),
                format!("started {fill}"),
                format!("finished {fill}"),
            ]
        );
    }

    #[tokio::test]
    async fn keep_without_an_image_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let into = tmp.path().join("data");

        let err = DataImageNfs::new().keep(tmp.path(), &into, &Quiet).await.unwrap_err();

        let image = tmp.path().join("data.img");
        assert_eq!(err.to_string(), format!("cannot read data image {}", image.display()));
        assert!(!into.exists());
    }

    #[tokio::test]
    async fn the_image_root_belongs_to_bee() {
        let tmp = tempfile::tempdir().unwrap();
        DataImageNfs::new()
            .prepare(&spec(None, None), &addresses(1), tmp.path(), &Quiet)
            .await
            .unwrap();
        let image = tmp.path().join("data.img");
        let args = [OsStr::new("-R"), OsStr::new("stat /"), image.as_os_str()];
        let out = tools::run("debugfs", &args, None).await.unwrap();
        assert!(out.stdout.contains("User:  1000   Group:  1000"), "{}", out.stdout);
    }

    #[tokio::test]
    async fn collect_merges_into_an_existing_output() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        fs::create_dir_all(input.join("results")).unwrap();
        fs::write(input.join("results/new.txt"), "new").unwrap();
        fs::write(input.join("same.txt"), "from the image").unwrap();
        let output = tmp.path().join("output");
        fs::create_dir_all(output.join("results")).unwrap();
        fs::write(output.join("results/old.txt"), "old").unwrap();
        fs::write(output.join("same.txt"), "from before").unwrap();
        let storage = DataImageNfs::new();
        let both = spec(Some(input), Some(output.clone()));

        storage.prepare(&both, &addresses(2), tmp.path(), &Quiet).await.unwrap();
        storage.collect(&both, tmp.path(), &Quiet).await.unwrap();

        assert_eq!(fs::read_to_string(output.join("results/new.txt")).unwrap(), "new");
        assert_eq!(fs::read_to_string(output.join("results/old.txt")).unwrap(), "old");
        assert_eq!(fs::read_to_string(output.join("same.txt")).unwrap(), "from the image");
        let mut names: Vec<_> =
            fs::read_dir(&output).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["results", "same.txt"]);
    }

    #[tokio::test]
    async fn prepare_refuses_a_missing_input_before_creating_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("missing");

        let err = DataImageNfs::new()
            .prepare(&spec(Some(input.clone()), None), &addresses(2), tmp.path(), &Quiet)
            .await
            .unwrap_err();

        assert_eq!(err.to_string(), format!("cannot use storage input {}", input.display()));
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, "No such file or directory (os error 2)");
        assert!(!tmp.path().join("data.img").exists());
    }

    #[tokio::test]
    async fn an_existing_image_is_reused_with_a_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("data.img");
        fs::write(&image, "kept").unwrap();
        let events = Recorder::default();

        DataImageNfs::new()
            .prepare(&spec(None, None), &addresses(2), tmp.path(), &events)
            .await
            .unwrap();

        assert_eq!(fs::read_to_string(&image).unwrap(), "kept");
        assert_eq!(
            events.steps(),
            [format!(
                "warning reusing the data image {} as it is; the input is not copied into it again",
                image.display()
            )]
        );
    }

    #[tokio::test]
    async fn collect_without_an_image_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let output = tmp.path().join("output");

        let err = DataImageNfs::new()
            .collect(&spec(None, Some(output)), tmp.path(), &Quiet)
            .await
            .unwrap_err();

        let image = tmp.path().join("data.img");
        assert_eq!(err.to_string(), format!("cannot read data image {}", image.display()));
    }

    #[tokio::test]
    async fn a_failing_mkfs_says_why() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        fs::create_dir(&input).unwrap();
        fs::write(input.join("big"), vec![1u8; 3 << 20]).unwrap();
        let image = tmp.path().join("data.img");

        let err = make_image(&image, Some(&input), 2 << 20, 1).await.unwrap_err();

        let text = err.to_string();
        let start = format!("mkfs.ext4 failed: creating {}: exit status: 1: ", image.display());
        assert!(text.starts_with(&start), "{text}");
        assert!(text.contains("Could not allocate block"), "{text}");
        assert!(!image.exists() && !tmp.path().join("data.img.partial").exists());
    }
}
