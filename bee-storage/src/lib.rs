//! Shared storage for bee clusters (paper section III-B).
//!
//! Two implementations of [`Storage`] give every node of a cluster one directory,
//! [`SHARED_DIR`], that all nodes and their containers see at once, kept apart from the
//! guests' OS image so that the data can move on its own:
//!
//! - [`Virtio9p`] (`virtio-9p`, paper Fig. 5): a host directory shared into every guest
//!   over virtio-9p. No storage traffic on the data-plane network, and the host sees the
//!   results as they are written.
//! - [`DataImageNfs`] (`data-image-nfs`, paper Fig. 4): an ext4 data image, filled with
//!   the input on the host before boot, attached to the master as a second disk and
//!   exported over NFS to the other nodes. The image is one file that carries the data to
//!   the next platform.
//!
//! Both only prepare host state and plan: which device each node needs and which
//! commands, run as root in the guests, mount the directory. Attaching the devices is the
//! backend's job, running the commands the cluster builder's. Both move data in
//! ([`Storage::prepare`]) and out ([`Storage::collect`]) on the host, without booting a
//! guest and without root, and keep it as a checkpoint for the next platform
//! ([`Storage::keep`]): [`DataImageNfs`] moves its image file as it is, which either mode
//! takes back as input. In the guests the directory belongs to the `bee` user
//! ([`GUEST_UID`]), so that the application can write to it as `bee` or as root.

mod data_image;
mod tools;
mod virtio9p;

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use bee_core::config::StorageMode;
use bee_core::docker::SHARED_DIR;
use bee_core::error::CoreError;
use bee_core::events::Events;
use bee_core::traits::{GuestStep, Storage};

pub use data_image::{
    DataImageNfs, EXPORT_OPTIONS, HEADROOM, IMAGE_FILE, KEPT_IMAGE, LABEL, MIN_IMAGE_SIZE,
    MOUNT_ATTEMPTS, NFS_MOUNT_OPTIONS,
};
pub use virtio9p::{Virtio9p, EXPORT_DIR, MOUNT_TAG, MSIZE, SECURITY_MODEL};

/// The uid and gid of the `bee` user in bee's guest image, who owns the shared directory.
pub const GUEST_UID: u32 = 1000;

/// How many skipped files a warning names before it only counts the rest.
const SKIPPED_NAMED: usize = 5;

/// The storage for `mode`, with default settings.
pub fn for_mode(mode: StorageMode) -> Box<dyn Storage> {
    match mode {
        StorageMode::Virtio9p => Box::new(Virtio9p::new()),
        StorageMode::DataImageNfs => Box::new(DataImageNfs::new()),
    }
}

/// Checks that `input` is a directory bee can read.
fn check_input(input: &Path) -> Result<(), CoreError> {
    let unusable = |e| CoreError::io("cannot use storage input", input, e);
    let meta = fs::metadata(input).map_err(unusable)?;
    if !meta.is_dir() {
        return Err(unusable(io::Error::from(ErrorKind::NotADirectory)));
    }
    fs::read_dir(input).map(drop).map_err(unusable)
}

/// The guest step that gives the mounted directory, and what it holds, to user `bee`.
fn give_to_bee() -> GuestStep {
    GuestStep {
        what: "handing the shared directory to user bee".to_string(),
        command: format!("chown -R {GUEST_UID}:{GUEST_UID} {SHARED_DIR}"),
    }
}

/// The error for a plan asked for no nodes at all.
fn no_nodes() -> CoreError {
    CoreError::Backend { backend: "storage", detail: "no nodes to plan storage for".to_string() }
}

/// Runs file-system work on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, CoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, CoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(CoreError::Backend {
            backend: "storage",
            detail: format!("copying files was cancelled: {err}"),
        }),
    }
}

/// Warns about special files (FIFOs, sockets, devices) a copy left out.
fn report_skipped(skipped: &[PathBuf], events: &dyn Events) {
    if skipped.is_empty() {
        return;
    }
    let mut named: Vec<String> =
        skipped.iter().take(SKIPPED_NAMED).map(|p| p.display().to_string()).collect();
    if skipped.len() > SKIPPED_NAMED {
        named.push(format!("and {} more", skipped.len() - SKIPPED_NAMED));
    }
    events.warning(&format!(
        "skipped what is not a file, directory or symbolic link: {}",
        named.join(", ")
    ));
}

#[cfg(test)]
mod test_support {
    //! Helpers shared by the tests of this crate.

    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use bee_core::events::{Event, Events};

    /// Records the steps and warnings reported to it.
    #[derive(Debug, Default)]
    pub(crate) struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        /// What was reported, in order, as `started STEP`, `finished STEP`, `warning TEXT`.
        pub(crate) fn steps(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Events for Recorder {
        fn event(&self, event: Event) {
            let line = match event {
                Event::Started { step } => format!("started {step}"),
                Event::Finished { step, .. } => format!("finished {step}"),
                Event::Warning { message } => format!("warning {message}"),
                Event::Detail { line } => format!("detail {line}"),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    /// One entry of a tree, as compared: kind, permission bits, contents or link target.
    #[derive(Debug, PartialEq, Eq)]
    enum Entry {
        Dir(u32),
        File(u32, Vec<u8>),
        Link(PathBuf),
    }

    fn entries(root: &Path) -> BTreeMap<PathBuf, Entry> {
        let mut found = BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let mode = meta.permissions().mode() & 0o7777;
                let entry = if meta.file_type().is_symlink() {
                    Entry::Link(fs::read_link(&path).unwrap())
                } else if meta.is_dir() {
                    pending.push(path.clone());
                    Entry::Dir(mode)
                } else {
                    Entry::File(mode, fs::read(&path).unwrap())
                };
                found.insert(path.strip_prefix(root).unwrap().to_path_buf(), entry);
            }
        }
        found
    }

    /// Asserts that two trees hold the same names, kinds, modes, bytes and link targets.
    pub(crate) fn assert_same_tree(expected: &Path, actual: &Path) {
        let (expected, actual) = (entries(expected), entries(actual));
        assert_eq!(
            expected.keys().collect::<Vec<_>>(),
            actual.keys().collect::<Vec<_>>(),
            "names differ"
        );
        for (path, entry) in &expected {
            assert!(&actual[path] == entry, "{} differs", path.display());
        }
    }

    /// A tree with nested directories, binary and empty files, modes, a name with a
    /// space and a quote, and a symbolic link.
    pub(crate) fn sample_input(root: &Path) {
        fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
        fs::create_dir_all(root.join("empty dir")).unwrap();
        let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        fs::write(root.join("nested/deeper/deepest/data.bin"), binary).unwrap();
        fs::write(root.join("nested/empty"), b"").unwrap();
        fs::write(root.join("nested/it's \"quoted\".txt"), b"a name to quote\n").unwrap();
        fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("nested/deeper"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("nested/empty", root.join("link")).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_mode_gives_the_storage_of_that_mode() {
        for (mode, _) in StorageMode::ALL {
            assert_eq!(for_mode(mode).mode(), mode);
        }
    }
}
