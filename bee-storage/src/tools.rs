//! The programs bee runs on the host for storage (e2fsprogs' `mkfs.ext4`, `debugfs` and
//! `e2fsck`): found where Debian puts them, run without a shell, and their failures
//! turned into errors that end with what they printed. Images are copied by
//! [`bee_core::files::copy_sparse`].

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use bee_core::error::CoreError;
use tokio::process::Command;

/// The Debian package that has the e2fsprogs programs of this module.
pub(crate) const E2FSPROGS: &str = "e2fsprogs";

/// Where Debian installs e2fsprogs; not on the `PATH` of ordinary users.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// How many lines of a failed program's output an error keeps.
const TAIL_LINES: usize = 8;

/// What a program printed, and how it ended.
#[derive(Debug)]
pub(crate) struct Output {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// Standard output, lossily decoded.
    pub(crate) stdout: String,
    /// Standard error, lossily decoded.
    pub(crate) stderr: String,
}

/// Finds `program` on `PATH`, then in `/usr/sbin` and `/sbin`.
pub(crate) fn find(program: &str) -> Result<PathBuf, CoreError> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| CoreError::Command {
            program: program.to_string(),
            detail: format!(
                "not found on PATH, in /usr/sbin or in /sbin: install the Debian package \
                 {E2FSPROGS}"
            ),
        })
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program` with `args` in `cwd` (or bee's own directory) and waits for it.
pub(crate) async fn run(
    program: &str,
    args: &[&OsStr],
    cwd: Option<&Path>,
) -> Result<Output, CoreError> {
    let binary = find(program)?;
    tracing::debug!(program, ?args, ?cwd, "running");
    let mut command = Command::new(&binary);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command.output().await.map_err(|e| CoreError::Command {
        program: program.to_string(),
        detail: format!("cannot start {}: {e}", binary.display()),
    })?;
    Ok(Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The last lines of `text` that say something, joined on one line.
pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    match lines[start..].join("; ") {
        joined if joined.is_empty() => "no output".to_string(),
        joined => joined,
    }
}

/// The error for a program that ran and failed: what it was doing, its status, the end
/// of its output.
pub(crate) fn failed(program: &str, doing: &str, status: ExitStatus, output: &str) -> CoreError {
    CoreError::Command {
        program: program.to_string(),
        detail: format!("{doing}: {status}: {}", tail(output)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_e2fsprogs_outside_path() {
        // Ordinary users on Debian have no sbin directory on PATH; mkfs.ext4 lives there.
        let found = find("mkfs.ext4").unwrap();
        assert!(found.ends_with("mkfs.ext4"), "{}", found.display());
    }

    #[test]
    fn a_missing_program_names_its_package() {
        let err = find("bee-no-such-mkfs").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bee-no-such-mkfs failed: not found on PATH, in /usr/sbin or in /sbin: install \
             the Debian package e2fsprogs"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines_on_one_line() {
        let text = (1..=10).map(|i| format!("line {i}\n\n")).collect::<String>();
        assert_eq!(tail(&text), "line 3; line 4; line 5; line 6; line 7; line 8; line 9; line 10");
        assert_eq!(tail("  \n"), "no output");
    }
}
