//! The QEMU virtual machine backend of bee (BEE-VM, paper section III).
//!
//! - [`image`] builds the guest image from Debian packages (phase 1) and caches it.
//! - [`qemu`] renders a node's QEMU command line from its plan; [`kvm`] decides between
//!   KVM and software emulation; [`qmp`] talks to a running QEMU.
//! - [`backend`] implements [`bee_core::traits::Backend`]: one qcow2 overlay per node
//!   (phase 2), a host key per node that bee pins, QEMU processes that outlive the `bee`
//!   process that started them, and teardown from the on-disk record.
//! - [`checkpoint`] saves running nodes into a VM-level checkpoint (QEMU migration into a
//!   file) and starts them again from it, on this platform or another.
//!
//! - [`slurm`] places nodes in the current Slurm allocation (`hosts = "slurm"`), each
//!   QEMU in its own job step.
//!
//! # Limitations
//!
//! SSH host lists (`hosts = ["h1", ...]`) are refused at launch with an error that says
//! so. With Slurm, bee's files (image, overlays, shares) must be on a file system every
//! node of the allocation sees at the same path, as the state and cache directories are
//! on most clusters; the SSH port of each guest is picked free on the host that runs bee.

use std::path::{Path, PathBuf};

pub mod backend;
pub mod checkpoint;
pub mod image;
pub mod kvm;
pub mod qemu;
pub mod qmp;
pub mod slurm;
pub mod ssh_hosts;

pub use backend::VmBackend;
pub use image::{GuestImage, ImageInputs};

/// Errors of the VM backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// No image has been built for the current inputs.
    #[error("no guest image in {}: run `bee image build` first (needs root, a few minutes)",
            dir.display())]
    NoImage {
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// Building the image needs root.
    #[error(
        "building the guest image needs root: mmdebstrap installs Debian packages in a \
             chroot; run `sudo bee image build` once (running clusters needs no root)"
    )]
    BuildNeedsRoot,
    /// A program bee needs is not installed.
    #[error("{program} is not installed: install the Debian package {package}")]
    MissingProgram {
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: String,
    },
    /// The image build script failed.
    #[error(
        "building the guest image failed at step {step:?} ({status}); the log ends \
             with:\n{log_tail}"
    )]
    BuildFailed {
        /// The step that failed.
        step: String,
        /// The script's exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A file of the backend could not be used.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl VmError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> VmError {
        VmError::Io { action, path: path.to_path_buf(), source }
    }
}

impl From<VmError> for bee_core::CoreError {
    fn from(err: VmError) -> Self {
        bee_core::CoreError::Backend { backend: "vm", detail: bee_core_chain(&err) }
    }
}

fn bee_core_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
