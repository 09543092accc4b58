//! Copies of large files on the host: data images and checkpoints.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::error::CoreError;

/// How many lines of `cp`'s complaint an error keeps.
const TAIL_LINES: usize = 8;

/// Copies the file `from` to `to`, under a temporary name (`to` + `.partial`) first so
/// that a file in `to`'s place is always whole: sparse, so that space a guest never wrote
/// costs nothing, and cloned where the file system can. On failure nothing is left at
/// either name.
pub async fn copy_sparse(from: &Path, to: &Path) -> Result<(), CoreError> {
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut cp = Command::new("cp");
    cp.args(["--sparse=always", "--reflink=auto", "--"])
        .arg(from)
        .arg(&partial)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tracing::debug!(?cp, "running");
    let output = cp.output().await.map_err(|e| CoreError::Command {
        program: "cp".to_string(),
        detail: format!("cannot start it ({e}): install the Debian package coreutils"),
    })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(CoreError::Command {
            program: "cp".to_string(),
            detail: format!(
                "copying {} to {}: {}: {}",
                from.display(),
                to.display(),
                output.status,
                crate::ssh::tail(&said, TAIL_LINES).replace('\n', "; ")
            ),
        });
    }
    std::fs::rename(&partial, to).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        CoreError::io("cannot create", to, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn a_copy_keeps_holes_and_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("data.img"), tmp.path().join("copy.img"));
        let mut file = std::fs::File::create(&from).unwrap();
        file.write_all(b"start").unwrap();
        file.seek(SeekFrom::Start(64 << 20)).unwrap();
        file.write_all(b"end").unwrap();
        drop(file);

        copy_sparse(&from, &to).await.unwrap();

        assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&from).unwrap());
        let copy = std::fs::metadata(&to).unwrap();
        assert!(copy.blocks() * 512 < 1 << 20, "{} blocks for 64 MiB", copy.blocks());
        assert!(!tmp.path().join("copy.img.partial").exists());
    }

    #[tokio::test]
    async fn a_failing_copy_says_why_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("missing.img"), tmp.path().join("data.img"));

        let err = copy_sparse(&from, &to).await.unwrap_err();

        let text = err.to_string();
        let (from_text, to_text) = (from.display(), to.display());
        let start = format!("cp failed: copying {from_text} to {to_text}: exit status: 1: ");
        assert!(text.starts_with(&start) && text.contains("No such file"), "{text}");
        assert!(!to.exists() && !tmp.path().join("data.img.partial").exists());
    }
}
