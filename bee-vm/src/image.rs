//! The guest image builder, phase 1 of the paper's BEE-VM builder (section III-C), without
//! Packer: a Debian guest made from Debian packages by `guest/build-image.sh`.
//!
//! The script is compiled into bee. Its output — kernel, initrd, a raw ext4 root file
//! system, the `bee/base` container tarball and bee's SSH key — is cached under
//! `<cache>/images/<key>/`, where the key is a hash of everything that shapes the image
//! (the script, the Debian suite, the mirror, the proxy). A changed script thus gets a new
//! image, and an unchanged one is reused by every clone of the repository.
//!
//! # Limitations
//!
//! Building needs root: mmdebstrap installs packages in a chroot, which needs root (or
//! user namespaces, which HPC systems often disable). Running clusters does not.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use bee_core::events::Events;
use sha2::{Digest, Sha256};

use crate::VmError;

/// The image build script, run as `bash build-image.sh OUTDIR`.
pub const BUILD_SCRIPT: &str = include_str!("../guest/build-image.sh");

/// Debian suite of the guest unless `BEE_SUITE` says otherwise.
pub const DEFAULT_SUITE: &str = "bookworm";

/// What shapes an image; its hash names the cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInputs {
    /// Debian suite.
    pub suite: String,
    /// Debian mirror; empty means the script's default (the host's mirror).
    pub mirror: String,
    /// HTTP proxy for the build and inside the guest; empty means none.
    pub proxy: String,
}

impl ImageInputs {
    /// Reads `BEE_SUITE`, `BEE_MIRROR` and `BEE_PROXY`.
    pub fn from_env() -> ImageInputs {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let suite = var("BEE_SUITE");
        ImageInputs {
            suite: if suite.is_empty() { DEFAULT_SUITE.to_string() } else { suite },
            mirror: var("BEE_MIRROR"),
            proxy: var("BEE_PROXY"),
        }
    }

    /// The cache key: 16 hex digits of a hash of the script and the inputs.
    pub fn key(&self) -> String {
        let mut hash = Sha256::new();
        for part in [BUILD_SCRIPT, &self.suite, &self.mirror, &self.proxy] {
            hash.update(part.len().to_le_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// A built guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The directory holding it.
    pub dir: PathBuf,
}

/// Files every image directory holds.
const IMAGE_FILES: [&str; 6] =
    ["vmlinuz", "initrd.img", "base.raw", "base-container.tar", "bee_ed25519", "manifest.json"];

impl GuestImage {
    /// The directory an image of `inputs` has in `cache_dir`.
    pub fn dir_for(cache_dir: &Path, inputs: &ImageInputs) -> PathBuf {
        cache_dir.join("images").join(inputs.key())
    }

    /// Finds the built image of `inputs`, or says how to build it.
    pub fn locate(cache_dir: &Path, inputs: &ImageInputs) -> Result<GuestImage, VmError> {
        let dir = Self::dir_for(cache_dir, inputs);
        match IMAGE_FILES.iter().find(|file| !dir.join(file).is_file()) {
            None => Ok(GuestImage { dir }),
            Some(_) => Err(VmError::NoImage { dir }),
        }
    }

    /// The kernel.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The initrd.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }

    /// The raw ext4 root file system every node's overlay is backed by.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("base.raw")
    }

    /// bee's private SSH key for the guests' `bee` user.
    pub fn key(&self) -> PathBuf {
        self.dir.join("bee_ed25519")
    }

    /// The build manifest (versions of the kernel, Docker, OpenMPI).
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
}

/// Builds the image of `inputs` into `cache_dir` unless it is there already (or `force`).
pub fn build(
    cache_dir: &Path,
    inputs: &ImageInputs,
    force: bool,
    events: &dyn Events,
) -> Result<GuestImage, VmError> {
    if !force {
        if let Ok(image) = GuestImage::locate(cache_dir, inputs) {
            events.detail(&format!("guest image is up to date in {}", image.dir.display()));
            return Ok(image);
        }
    }
    check_can_build()?;
    let images = cache_dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| VmError::io("cannot create", &images, e))?;
    let work = images.join(format!(".build-{}-{}", inputs.key(), std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let out = work.join("out");
    std::fs::create_dir_all(&out).map_err(|e| VmError::io("cannot create", &out, e))?;
    let result = run_script(&work, &out, inputs, events);
    if let Err(err) = result {
        let log = work.join("build.log");
        let kept = images.join("last-failed-build.log");
        let _ = std::fs::rename(&log, &kept);
        let _ = std::fs::remove_dir_all(&work);
        return Err(err);
    }
    let dir = GuestImage::dir_for(cache_dir, inputs);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&out, &dir).map_err(|e| VmError::io("cannot move the image to", &dir, e))?;
    let _ = std::fs::remove_dir_all(&work);
    GuestImage::locate(cache_dir, inputs)
}

fn check_can_build() -> Result<(), VmError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(VmError::BuildNeedsRoot);
    }
    for (program, package) in [("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs")] {
        if which(program).is_none() {
            return Err(VmError::MissingProgram {
                program: program.to_string(),
                package: package.to_string(),
            });
        }
    }
    Ok(())
}

/// Finds a program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

fn run_script(
    work: &Path,
    out: &Path,
    inputs: &ImageInputs,
    events: &dyn Events,
) -> Result<(), VmError> {
    let script = work.join("build-image.sh");
    std::fs::write(&script, BUILD_SCRIPT).map_err(|e| VmError::io("cannot write", &script, e))?;
    let log_path = work.join("build.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| VmError::io("cannot create", &log_path, e))?;
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(out)
        .env("BEE_SUITE", &inputs.suite)
        .env("BEE_MIRROR", &inputs.mirror)
        .env("BEE_PROXY", &inputs.proxy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| VmError::io("cannot run", &script, e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let started = Instant::now();
    let mut current: Option<(String, Instant)> = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        match line.strip_prefix("bee-step ") {
            Some(step) => {
                if let Some((what, since)) = current.take() {
                    events.finished(&what, since.elapsed());
                }
                events.started(step);
                current = Some((step.to_string(), Instant::now()));
            }
            None => events.detail(&line),
        }
    }
    let status = child.wait().map_err(|e| VmError::io("cannot wait for", &script, e))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(VmError::BuildFailed {
            step: current.map_or_else(|| "starting".to_string(), |(what, _)| what),
            status: status.to_string(),
            log_tail: bee_core::ssh::tail(&text, 15),
        });
    }
    if let Some((what, since)) = current {
        events.finished(&what, since.elapsed());
    }
    tracing::info!(seconds = started.elapsed().as_secs(), "guest image built");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ImageInputs {
        ImageInputs { suite: "bookworm".into(), mirror: String::new(), proxy: String::new() }
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = inputs().key();
        assert_eq!(base.len(), 16);
        assert_eq!(base, inputs().key());
        assert_ne!(base, ImageInputs { proxy: "http://p:3128".into(), ..inputs() }.key());
        assert_ne!(base, ImageInputs { suite: "trixie".into(), ..inputs() }.key());
        assert_ne!(base, ImageInputs { mirror: "http://m/debian".into(), ..inputs() }.key());
    }

    #[test]
    fn missing_image_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = GuestImage::locate(dir.path(), &inputs()).unwrap_err().to_string();
        assert!(err.starts_with("no guest image in "), "{err}");
        assert!(err.ends_with("run `bee image build` first (needs root, a few minutes)"), "{err}");
    }
}
