//! Directory trees on the host: staging input in, collecting results out, measuring
//! input.
//!
//! A merge never deletes what the destination already holds: an entry of the source
//! replaces the destination's entry of the same name when both are files or symbolic
//! links, and is merged into it when both are directories. A file meeting a directory of
//! the same name, or the other way round, is an error, not a deletion. FIFOs, sockets and
//! device nodes are skipped and returned to the caller to report.
//!
//! Everything here blocks: callers run it on tokio's blocking pool.

use std::fs::{self, File, Metadata};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{lchown, symlink, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::CoreError;

/// ext4's block size: what a file takes at least, for sizing data images.
const BLOCK: u64 = 4096;

/// Whether a merge leaves its source in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Copy every entry; the source stays as it was.
    Copy,
    /// Rename entries into the destination where the file system allows it, copy them
    /// where it does not; the caller removes what is left of the source.
    Move,
}

/// Merges the contents of directory `src` into directory `dst`, creating `dst` if needed
/// and leaving out the top-level entries named in `skip`. Returns the special files it
/// skipped.
pub fn merge_tree(
    src: &Path,
    dst: &Path,
    how: Merge,
    skip: &[&str],
) -> Result<Vec<PathBuf>, CoreError> {
    fs::create_dir_all(dst).map_err(|e| CoreError::io("cannot write", dst, e))?;
    let inner = fs::canonicalize(src).map_err(|e| CoreError::io("cannot read", src, e))?;
    let outer = fs::canonicalize(dst).map_err(|e| CoreError::io("cannot write", dst, e))?;
    if outer.starts_with(&inner) {
        let why = format!("it is inside {}, which is being copied", src.display());
        return Err(CoreError::io("cannot copy into", dst, io::Error::other(why)));
    }
    let mut skipped = Vec::new();
    merge_dir(src, dst, how, skip, &mut skipped)?;
    Ok(skipped)
}

fn merge_dir(
    src: &Path,
    dst: &Path,
    how: Merge,
    skip: &[&str],
    skipped: &mut Vec<PathBuf>,
) -> Result<(), CoreError> {
    for entry in fs::read_dir(src).map_err(|e| CoreError::io("cannot read", src, e))? {
        let entry = entry.map_err(|e| CoreError::io("cannot read", src, e))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == **s) {
            continue;
        }
        let (from, to) = (src.join(&name), dst.join(&name));
        let meta =
            fs::symlink_metadata(&from).map_err(|e| CoreError::io("cannot read", &from, e))?;
        let existing = match fs::symlink_metadata(&to) {
            Ok(existing) => Some(existing),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(CoreError::io("cannot write", &to, e)),
        };
        let kind = meta.file_type();
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            skipped.push(from);
            continue;
        }
        match existing {
            Some(old) if old.is_dir() && kind.is_dir() => {
                merge_dir(&from, &to, how, &[], skipped)?;
                continue;
            }
            Some(old) if old.is_dir() != kind.is_dir() => {
                return Err(in_the_way(&from, &to, old.is_dir()));
            }
            _ => {}
        }
        if how == Merge::Move {
            match fs::rename(&from, &to) {
                Ok(()) => continue,
                Err(e) if e.kind() == ErrorKind::CrossesDevices => {}
                Err(e) => return Err(CoreError::io("cannot write", &to, e)),
            }
        }
        if existing.is_some() {
            fs::remove_file(&to).map_err(|e| CoreError::io("cannot overwrite", &to, e))?;
        }
        copy_entry(&from, &to, &meta, skipped)?;
    }
    Ok(())
}

/// Copies one file, symbolic link or directory tree to `to`, which does not exist.
fn copy_entry(
    from: &Path,
    to: &Path,
    meta: &Metadata,
    skipped: &mut Vec<PathBuf>,
) -> Result<(), CoreError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(from).map_err(|e| CoreError::io("cannot read", from, e))?;
        symlink(target, to).map_err(|e| CoreError::io("cannot write", to, e))
    } else if kind.is_dir() {
        fs::create_dir(to).map_err(|e| CoreError::io("cannot write", to, e))?;
        merge_dir(from, to, Merge::Copy, &[], skipped)?;
        // Last, so that a read-only directory can still be filled.
        fs::set_permissions(to, meta.permissions())
            .map_err(|e| CoreError::io("cannot write", to, e))
    } else {
        fs::copy(from, to).map_err(|e| CoreError::io("cannot copy", from, e))?;
        keep_mtime(to, meta);
        Ok(())
    }
}

/// Gives the copy `to` the modification time of its original; a file system that refuses
/// is no reason to fail a copy.
fn keep_mtime(to: &Path, meta: &Metadata) {
    let result = meta.modified().and_then(|mtime| File::open(to)?.set_modified(mtime));
    if let Err(err) = result {
        tracing::debug!(path = %to.display(), %err, "cannot keep the modification time");
    }
}

fn in_the_way(from: &Path, to: &Path, old_is_dir: bool) -> CoreError {
    let why = match old_is_dir {
        true => format!("it is a directory and {} is not", from.display()),
        false => format!("it is not a directory and {} is", from.display()),
    };
    CoreError::io("cannot overwrite", to, io::Error::new(ErrorKind::AlreadyExists, why))
}

/// What a tree takes on an ext4 file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes, each file and directory rounded up to whole blocks.
    pub bytes: u64,
    /// Files, directories and links: one inode each.
    pub entries: u64,
}

/// Measures the tree under `root`, `root` itself not counted.
pub fn usage(root: &Path) -> Result<Usage, CoreError> {
    let mut total = Usage::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| CoreError::io("cannot read", &dir, e))? {
            let path = entry.map_err(|e| CoreError::io("cannot read", &dir, e))?.path();
            let meta =
                fs::symlink_metadata(&path).map_err(|e| CoreError::io("cannot read", &path, e))?;
            total.entries += 1;
            total.bytes += meta.len().div_ceil(BLOCK).max(1) * BLOCK;
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(total)
}

/// Gives every entry under `root`, and `root` itself, to `uid` and `gid`, touching only
/// those that belong to someone else. Symbolic links are changed, not followed.
pub fn own_tree(root: &Path, uid: u32, gid: u32) -> Result<(), CoreError> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta =
            fs::symlink_metadata(&path).map_err(|e| CoreError::io("cannot read", &path, e))?;
        if meta.uid() != uid || meta.gid() != gid {
            lchown(&path, Some(uid), Some(gid))
                .map_err(|e| CoreError::io("cannot change the owner of", &path, e))?;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| CoreError::io("cannot read", &path, e))? {
                pending.push(entry.map_err(|e| CoreError::io("cannot read", &path, e))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn copy_merges_and_overwrites_but_never_deletes() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        write(&src.join("a/new.txt"), "new");
        write(&src.join("same.txt"), "from src");
        fs::set_permissions(src.join("same.txt"), fs::Permissions::from_mode(0o751)).unwrap();
        symlink("a/new.txt", src.join("link")).unwrap();
        write(&dst.join("a/old.txt"), "old");
        write(&dst.join("same.txt"), "from dst");
        write(&dst.join("link"), "a file where src has a link");

        let skipped = merge_tree(&src, &dst, Merge::Copy, &[]).unwrap();

        assert!(skipped.is_empty());
        assert_eq!(fs::read_to_string(dst.join("a/new.txt")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dst.join("a/old.txt")).unwrap(), "old");
        assert_eq!(fs::read_to_string(dst.join("same.txt")).unwrap(), "from src");
        let mode = fs::metadata(dst.join("same.txt")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o751);
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a/new.txt"));
        assert_eq!(fs::read_to_string(src.join("same.txt")).unwrap(), "from src");
    }

    #[test]
    fn move_renames_and_skips_top_level_names() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        write(&src.join("d/f"), "f");
        write(&src.join("lost+found/x"), "x");
        write(&dst.join("d/g"), "g");

        merge_tree(&src, &dst, Merge::Move, &["lost+found"]).unwrap();

        assert_eq!(fs::read_to_string(dst.join("d/f")).unwrap(), "f");
        assert_eq!(fs::read_to_string(dst.join("d/g")).unwrap(), "g");
        assert!(!dst.join("lost+found").exists());
        assert!(!src.join("d/f").exists());
    }

    #[test]
    fn a_file_never_replaces_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        write(&src.join("x"), "file");
        write(&dst.join("x/keep"), "keep");

        let err = merge_tree(&src, &dst, Merge::Copy, &[]).unwrap_err();

        assert_eq!(err.to_string(), format!("cannot overwrite {}", dst.join("x").display()));
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, format!("it is a directory and {} is not", src.join("x").display()));
        assert_eq!(fs::read_to_string(dst.join("x/keep")).unwrap(), "keep");
    }

    #[test]
    fn refuses_to_copy_a_tree_into_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("out");
        let err = merge_tree(tmp.path(), &inner, Merge::Copy, &[]).unwrap_err();
        assert_eq!(err.to_string(), format!("cannot copy into {}", inner.display()));
    }

    #[test]
    fn usage_counts_blocks_and_entries() {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("d/one"), "1");
        fs::write(tmp.path().join("big"), vec![0u8; 5000]).unwrap();
        let usage = usage(tmp.path()).unwrap();
        assert_eq!(usage, Usage { bytes: 4 * BLOCK, entries: 3 });
    }
}
