//! A host directory shared into every guest over virtio-9p (paper Fig. 5).
//!
//! The export directory is `shared/` in the cluster directory. Every node mounts it at
//! [`SHARED_DIR`]; the guests share no network traffic for storage, and the host sees
//! what they write while they write it. This module does not attach the share: the
//! backend renders [`StorageDevice::Share`] into its own device model.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use bee_core::config::{StorageMode, StorageSpec};
use bee_core::docker::SHARED_DIR;
use bee_core::error::CoreError;
use bee_core::events::Events;
use bee_core::traits::{GuestStep, NodeStorage, Storage, StorageDevice};

use crate::{blocking, check_input, data_image, give_to_bee, no_nodes, report_skipped};
use bee_core::tree::{self, Merge};

/// The export directory's name inside the cluster directory.
pub const EXPORT_DIR: &str = "shared";

/// The mount tag the guests mount the share by.
pub const MOUNT_TAG: &str = "beeshared";

/// The largest 9p message size the guest kernel's virtio transport takes (Linux 6.1:
/// 125 pages of 4 KiB); larger requests are cut down to it with a warning.
pub const MSIZE: u32 = 512_000;

/// The `security_model` a backend must give the share (QEMU `-virtfs`/`-fsdev`).
///
/// `mapped-xattr` is the only model that works both for bee as an ordinary user on an
/// HPC host and for every user inside the guests:
///
/// - The files QEMU creates belong to the user that runs QEMU, who is the user that runs
///   bee; the owner, group and mode the guest asked for are kept in `user.virtfs.*`
///   extended attributes. The host can always read the results back, also without root.
///   Measured here (QEMU 7.2, QEMU run as root): files and directories the guest creates
///   appear on the host as `0600` and `0700`, owned by QEMU's user, whoever created them
///   in the guest, while the guest sees `bee:bee 0644`, `root:root`, and whatever
///   `chmod` and `chown` set.
/// - `passthrough` makes the host files really owned by the guest's user: QEMU must run
///   as root to `chown`, which bee does not on HPC hosts.
/// - `none` stores the guest's modes for real but drops its `chown`s: the guest sees
///   every file owned by the host user that runs QEMU, so the guest's `bee` (uid 1000)
///   cannot write into the shared directory, or even into directories it created itself,
///   unless the host user happens to be uid 1000 too.
///
/// # Limitations
///
/// The cluster directory must be on a file system with `user.*` extended attributes
/// (ext4, XFS, Btrfs, Lustre, GPFS; not tmpfs before Linux 6.6, not NFS before 4.2);
/// without them the guests cannot create files in the share. Modes set in the guest live
/// in those attributes, so [`Storage::collect`] leaves files the guest created at `0600`
/// and directories at `0700` in the output: readable by the user, but executable bits
/// set in the guest are lost.
pub const SECURITY_MODEL: &str = "mapped-xattr";

/// A host directory shared into every guest over virtio-9p (paper Fig. 5).
///
/// [`Storage::prepare`] creates `DIR/shared` (DIR being the cluster directory), copies
/// `spec.input` into it with its modes, and plans the same share for every node, mounted
/// at [`SHARED_DIR`] and handed to the guests' `bee` user (uid 1000; root can use it
/// too). [`Storage::collect`] copies `DIR/shared` into `spec.output`, merging: what the
/// output already holds stays, except files of the same name, which are overwritten.
///
/// The guests mount with the Linux default `cache=none`, so every node sees the others'
/// writes at once. See [`SECURITY_MODEL`] for how ownership is mapped, and what that
/// means for the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct Virtio9p;

impl Virtio9p {
    /// Creates the storage.
    pub fn new() -> Virtio9p {
        Virtio9p
    }
}

#[async_trait]
impl Storage for Virtio9p {
    fn mode(&self) -> StorageMode {
        StorageMode::Virtio9p
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
        let export = std::path::absolute(dir.join(EXPORT_DIR))
            .map_err(|e| CoreError::io("cannot create", dir.join(EXPORT_DIR), e))?;
        std::fs::create_dir_all(&export).map_err(|e| CoreError::io("cannot create", &export, e))?;
        if let Some(input) = &spec.input {
            check_input(input)?;
            let kept = data_image::kept_image(input);
            let (doing, from) = match &kept {
                Some(image) => ("unpacking", image.as_path()),
                None => ("copying", input.as_path()),
            };
            let step = format!("{doing} {} into {}", from.display(), export.display());
            let started = Instant::now();
            events.started(&step);
            let skipped = match kept {
                Some(image) => data_image::unpack_image(&image, &export).await?,
                None => {
                    let (from, to) = (input.clone(), export.clone());
                    blocking(move || tree::merge_tree(&from, &to, Merge::Copy, &[])).await?
                }
            };
            report_skipped(&skipped, events);
            events.finished(&step, started.elapsed());
        }
        Ok(plan(&export, addresses.len()))
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
        let export = dir.join(EXPORT_DIR);
        std::fs::create_dir_all(output)
            .map_err(|e| CoreError::io("cannot write storage output", output, e))?;
        let step = format!("collecting {} into {}", export.display(), output.display());
        let started = Instant::now();
        events.started(&step);
        let (from, to) = (export, output.clone());
        let skipped = blocking(move || tree::merge_tree(&from, &to, Merge::Copy, &[])).await?;
        report_skipped(&skipped, events);
        events.finished(&step, started.elapsed());
        Ok(())
    }
}

/// Plans the share `export` for `nodes` nodes; node 0 also hands it to user `bee`.
fn plan(export: &Path, nodes: usize) -> Vec<NodeStorage> {
    let device = StorageDevice::Share { path: PathBuf::from(export), tag: MOUNT_TAG.to_string() };
    let mount = GuestStep {
        what: "mounting the shared directory (virtio-9p)".to_string(),
        command: format!(
            "mkdir -p {SHARED_DIR} && (mountpoint -q {SHARED_DIR} || mount -t 9p -o \
             trans=virtio,version=9p2000.L,msize={MSIZE} {MOUNT_TAG} {SHARED_DIR})"
        ),
    };
    (0..nodes)
        .map(|node| {
            let mut guest_steps = vec![mount.clone()];
            if node == 0 {
                // With mapped-xattr this only writes attributes: the host files stay the
                // host user's. One node is enough, they all see the same files.
                guest_steps.push(give_to_bee());
            }
            NodeStorage { devices: vec![device.clone()], guest_steps }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_same_tree, Recorder};
    use bee_core::events::Quiet;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    const MOUNT: &str = "mkdir -p /bee/shared && (mountpoint -q /bee/shared || mount -t 9p -o \
                         trans=virtio,version=9p2000.L,msize=512000 beeshared /bee/shared)";

    fn addresses(n: u8) -> Vec<Ipv4Addr> {
        (1..=n).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect()
    }

    fn spec(input: Option<PathBuf>, output: Option<PathBuf>) -> StorageSpec {
        StorageSpec { mode: StorageMode::Virtio9p, input, output }
    }

    #[tokio::test]
    async fn a_kept_data_image_as_input_is_unpacked_into_the_share() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        crate::test_support::sample_input(&input);
        let images = crate::DataImageNfs::new();
        let image_spec = StorageSpec {
            mode: StorageMode::DataImageNfs,
            input: Some(input.clone()),
            output: None,
        };
        let (imaged, kept) = (tmp.path().join("imaged"), tmp.path().join("runs/r/data"));
        images.prepare(&image_spec, &addresses(1), &imaged, &Quiet).await.unwrap();
        images.keep(&imaged, &kept, &Quiet).await.unwrap();
        let events = Recorder::default();
        let cluster = tmp.path().join("cluster");

        Virtio9p::new()
            .prepare(&spec(Some(kept.clone()), None), &addresses(2), &cluster, &events)
            .await
            .unwrap();

        let export = cluster.join(EXPORT_DIR);
        assert_same_tree(&input, &export);
        let step = format!(
            "unpacking {} into {}",
            kept.join(crate::KEPT_IMAGE).display(),
            std::path::absolute(&export).unwrap().display()
        );
        assert_eq!(events.steps(), [format!("started {step}"), format!("finished {step}")]);
    }

    #[test]
    fn plans_the_same_share_for_three_nodes_and_chown_on_the_master() {
        let plan = plan(Path::new("/c/ring/shared"), 3);

        let share = StorageDevice::Share { path: "/c/ring/shared".into(), tag: "beeshared".into() };
        let mount = GuestStep {
            what: "mounting the shared directory (virtio-9p)".into(),
            command: MOUNT.into(),
        };
        let chown = GuestStep {
            what: "handing the shared directory to user bee".into(),
            command: "chown -R 1000:1000 /bee/shared".into(),
        };
        assert_eq!(plan.len(), 3);
        assert_eq!(
            plan[0],
            NodeStorage { devices: vec![share.clone()], guest_steps: vec![mount.clone(), chown] }
        );
        for node in &plan[1..] {
            assert_eq!(
                node,
                &NodeStorage { devices: vec![share.clone()], guest_steps: vec![mount.clone()] }
            );
        }
    }

    #[tokio::test]
    async fn prepare_copies_the_input_with_its_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        fs::create_dir_all(input.join("deep/er")).unwrap();
        fs::write(input.join("deep/er/data.bin"), [0u8, 1, 2, 255]).unwrap();
        fs::write(input.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(input.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let cluster = tmp.path().join("cluster");
        let events = Recorder::default();

        let plan = Virtio9p
            .prepare(&spec(Some(input.clone()), None), &addresses(3), &cluster, &events)
            .await
            .unwrap();

        assert_same_tree(&input, &cluster.join("shared"));
        let share = StorageDevice::Share { path: cluster.join("shared"), tag: MOUNT_TAG.into() };
        assert!(plan.iter().all(|node| node.devices == [share.clone()]));
        let step = format!("copying {} into {}", input.display(), cluster.join("shared").display());
        assert_eq!(events.steps(), [format!("started {step}"), format!("finished {step}")]);
    }

    #[tokio::test]
    async fn prepare_without_input_creates_an_empty_export() {
        let tmp = tempfile::tempdir().unwrap();
        Virtio9p.prepare(&spec(None, None), &addresses(1), tmp.path(), &Quiet).await.unwrap();
        assert_eq!(fs::read_dir(tmp.path().join("shared")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn prepare_refuses_a_missing_input() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("missing");

        let err = Virtio9p
            .prepare(&spec(Some(input.clone()), None), &addresses(2), tmp.path(), &Quiet)
            .await
            .unwrap_err();

        assert_eq!(err.to_string(), format!("cannot use storage input {}", input.display()));
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, "No such file or directory (os error 2)");
    }

    #[tokio::test]
    async fn prepare_refuses_an_input_that_is_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("file");
        fs::write(&input, "not a directory").unwrap();

        let err = Virtio9p
            .prepare(&spec(Some(input.clone()), None), &addresses(2), tmp.path(), &Quiet)
            .await
            .unwrap_err();

        assert_eq!(err.to_string(), format!("cannot use storage input {}", input.display()));
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, "not a directory");
    }

    #[tokio::test]
    async fn collect_merges_into_the_output() {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = tmp.path().join("cluster");
        let shared = cluster.join("shared");
        fs::create_dir_all(shared.join("results")).unwrap();
        fs::write(shared.join("results/r.txt"), "result").unwrap();
        fs::write(shared.join("same.txt"), "new").unwrap();
        let output = tmp.path().join("output");
        fs::create_dir_all(output.join("results")).unwrap();
        fs::write(output.join("results/earlier.txt"), "earlier").unwrap();
        fs::write(output.join("same.txt"), "old").unwrap();
        let events = Recorder::default();

        Virtio9p.collect(&spec(None, Some(output.clone())), &cluster, &events).await.unwrap();

        assert_eq!(fs::read_to_string(output.join("results/r.txt")).unwrap(), "result");
        assert_eq!(fs::read_to_string(output.join("results/earlier.txt")).unwrap(), "earlier");
        assert_eq!(fs::read_to_string(output.join("same.txt")).unwrap(), "new");
        assert_eq!(fs::read_to_string(shared.join("same.txt")).unwrap(), "new");
        let step = format!("collecting {} into {}", shared.display(), output.display());
        assert_eq!(events.steps(), [format!("started {step}"), format!("finished {step}")]);
    }

    #[tokio::test]
    async fn collect_says_when_the_output_cannot_be_written() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("shared")).unwrap();
        let blocker = tmp.path().join("a-file");
        fs::write(&blocker, "").unwrap();
        let output = blocker.join("output");

        let err = Virtio9p
            .collect(&spec(None, Some(output.clone())), tmp.path(), &Quiet)
            .await
            .unwrap_err();

        assert_eq!(err.to_string(), format!("cannot write storage output {}", output.display()));
    }

    #[tokio::test]
    async fn collect_without_output_does_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        Virtio9p.collect(&spec(None, None), tmp.path(), &Quiet).await.unwrap();
    }
}
