//! A Dockerfile's build context, packed as the tar archive Docker's build API takes.
//!
//! Packing follows `docker build`: the context's `.dockerignore` leaves paths out (last
//! matching line wins, `!` brings a path back, `**` spans directories, a pattern that
//! matches a directory leaves out all below it), and sockets, FIFOs and device files are
//! left out because an archive cannot carry them. The Dockerfile and `.dockerignore` are
//! always sent. bee also leaves out its own state and cache directories when they lie
//! inside the context: they hold sockets, disk images and runs that belong to no image.
//!
//! # Limitations
//!
//! The archive is built in memory before it is sent; contexts of many gigabytes need that
//! much memory (a `.dockerignore` is the way to keep them small).

use std::path::{Path, PathBuf};

use crate::error::CoreError;

/// The name under which a Dockerfile from outside the context is added.
const OUTSIDE_DOCKERFILE: &str = ".bee.Dockerfile";

/// The ignore file read from the context's top directory.
const IGNORE_FILE: &str = ".dockerignore";

/// A packed build context.
#[derive(Debug)]
pub struct Packed {
    /// The tar archive.
    pub archive: Vec<u8>,
    /// The Dockerfile's name inside the archive.
    pub dockerfile: String,
    /// What was left out besides `.dockerignore`'s matches, each with the reason.
    pub left_out: Vec<String>,
}

/// Packs `context` for a build of `dockerfile`, leaving out the directories of `skip`
/// (bee's own state) where they lie inside the context.
pub fn pack(dockerfile: &Path, context: &Path, skip: &[PathBuf]) -> Result<Packed, CoreError> {
    let root = context
        .canonicalize()
        .map_err(|e| CoreError::io("cannot read the build context", context, e))?;
    let rules = match std::fs::read_to_string(root.join(IGNORE_FILE)) {
        Ok(text) => IgnoreRules::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => return Err(CoreError::io("cannot read", root.join(IGNORE_FILE), e)),
    };
    let inside = dockerfile
        .canonicalize()
        .ok()
        .and_then(|file| file.strip_prefix(&root).ok().map(|p| p.to_string_lossy().into_owned()));
    let skip: Vec<PathBuf> = skip.iter().filter_map(|dir| dir.canonicalize().ok()).collect();

    let mut packer = Packer {
        builder: tar::Builder::new(Vec::new()),
        rules,
        skip,
        always: [inside.clone().unwrap_or_default(), IGNORE_FILE.to_string()],
        left_out: Vec::new(),
        dockerfile_packed: false,
    };
    packer.builder.follow_symlinks(false);
    packer.walk(&root, "")?;

    let name = match inside {
        Some(relative) => {
            if !packer.dockerfile_packed {
                packer.append(dockerfile, &relative)?;
            }
            relative
        }
        None => {
            packer.append(dockerfile, OUTSIDE_DOCKERFILE)?;
            OUTSIDE_DOCKERFILE.to_string()
        }
    };
    let archive = packer
        .builder
        .into_inner()
        .map_err(|e| CoreError::io("cannot pack the build context", context, e))?;
    Ok(Packed { archive, dockerfile: name, left_out: packer.left_out })
}

struct Packer {
    builder: tar::Builder<Vec<u8>>,
    rules: IgnoreRules,
    skip: Vec<PathBuf>,
    /// Paths sent whatever `.dockerignore` says: the Dockerfile and the ignore file.
    always: [String; 2],
    left_out: Vec<String>,
    dockerfile_packed: bool,
}

impl Packer {
    fn walk(&mut self, dir: &Path, relative: &str) -> Result<(), CoreError> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
            .map_err(|e| CoreError::io("cannot read the build context", dir, e))?;
        entries.sort_by_key(|entry| entry.file_name());

        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if relative.is_empty() { name } else { format!("{relative}/{name}") };
            if self.skip.contains(&path) {
                self.left_out.push(format!("{relative} (bee's own state)"));
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|e| CoreError::io("cannot read the build context", &path, e))?;
            let sent_anyway = self.always.contains(&relative);
            if !sent_anyway && self.rules.excludes(&relative) {
                if kind.is_dir() && self.rules.has_exceptions() {
                    self.walk(&path, &relative)?;
                }
                continue;
            }
            if kind.is_dir() {
                self.builder
                    .append_dir(&relative, &path)
                    .map_err(|e| CoreError::io("cannot pack the build context", &path, e))?;
                self.walk(&path, &relative)?;
            } else if kind.is_file() || kind.is_symlink() {
                self.append(&path, &relative)?;
                self.dockerfile_packed |= relative == self.always[0];
            } else {
                self.left_out.push(format!("{relative} (not a file, directory or link)"));
            }
        }
        Ok(())
    }

    fn append(&mut self, path: &Path, name: &str) -> Result<(), CoreError> {
        self.builder
            .append_path_with_name(path, name)
            .map_err(|e| CoreError::io("cannot pack the build context", path, e))
    }
}

/// The lines of a `.dockerignore`.
#[derive(Debug, Default)]
struct IgnoreRules {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    segments: Vec<String>,
    exception: bool,
}

impl IgnoreRules {
    fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| {
                let (exception, pattern) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let segments = clean(pattern);
                (!segments.is_empty()).then_some(Rule { segments, exception })
            })
            .collect();
        IgnoreRules { rules }
    }

    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|rule| rule.exception)
    }

    /// True when the last rule matching `relative` (or a directory above it) excludes it.
    fn excludes(&self, relative: &str) -> bool {
        let path: Vec<&str> = relative.split('/').collect();
        let mut excluded = false;
        for rule in &self.rules {
            let matched =
                (1..=path.len()).any(|depth| segments_match(&rule.segments, &path[..depth]));
            if matched {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

/// A pattern's path segments, cleaned as Go's `filepath.Clean` would, relative to the
/// context's top.
fn clean(pattern: &str) -> Vec<String> {
    let mut segments: Vec<String> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(part.to_string()),
        }
    }
    segments
}

fn segments_match(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skipped| segments_match(rest, &path[skipped..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((name, below)) => {
                glob(&first.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
                    && segments_match(rest, below)
            }
            None => false,
        },
    }
}

/// Matches one path segment against one pattern segment: `*`, `?`, `[a-z]`, `[^a-z]` and
/// `\` escapes, as in Go's `filepath.Match`. A malformed class matches nothing.
fn glob(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|taken| glob(rest, &name[taken..])),
        Some(('?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some(('[', rest)) => match (name.split_first(), class(rest)) {
            (Some((c, name_rest)), Some((members, after))) => {
                members.matches(*c) && glob(after, name_rest)
            }
            _ => false,
        },
        Some(('\\', rest)) => match rest.split_first() {
            Some((escaped, after)) => name.first() == Some(escaped) && glob(after, &name[1..]),
            None => false,
        },
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(low, high)| low <= c && c <= high) != self.negated
    }
}

/// Reads a character class after its `[`; returns it and the pattern after its `]`, or
/// nothing when the class is malformed (unclosed, empty, or an unescaped `-` or `]` where
/// a member belongs).
fn class(pattern: &[char]) -> Option<(Class, &[char])> {
    let (negated, mut rest) = match pattern.split_first() {
        Some(('^', rest)) => (true, rest),
        _ => (false, pattern),
    };
    let mut ranges = Vec::new();
    loop {
        if let Some((']', after)) = rest.split_first() {
            if !ranges.is_empty() {
                return Some((Class { negated, ranges }, after));
            }
        }
        let (low, after) = class_char(rest)?;
        rest = after;
        let mut high = low;
        if let Some(('-', after_dash)) = rest.split_first() {
            (high, rest) = class_char(after_dash)?;
        }
        ranges.push((low, high));
    }
}

fn class_char(pattern: &[char]) -> Option<(char, &[char])> {
    match pattern.split_first()? {
        ('-' | ']', _) => None,
        ('\\', rest) => rest.split_first().map(|(c, after)| (*c, after)),
        (c, rest) => Some((*c, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(packed: &Packed) -> Vec<String> {
        let mut names: Vec<String> = tar::Archive::new(packed.archive.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().trim_end_matches('/').into())
            .collect();
        names.sort();
        names
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn a_dockerfile_outside_the_context_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("ctx");
        write(&context, &[("app.txt", "hi")]);
        write(dir.path(), &[("Dockerfile", "FROM bee/base\n")]);
        let packed = pack(&dir.path().join("Dockerfile"), &context, &[]).unwrap();
        assert_eq!(packed.dockerfile, OUTSIDE_DOCKERFILE);
        assert_eq!(names(&packed), [OUTSIDE_DOCKERFILE, "app.txt"]);
    }

    #[test]
    fn a_dockerfile_inside_the_context_keeps_its_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("docker/Dockerfile", "FROM bee/base\n")]);
        let packed = pack(&dir.path().join("docker/Dockerfile"), dir.path(), &[]).unwrap();
        assert_eq!(packed.dockerfile, "docker/Dockerfile");
        assert_eq!(names(&packed), ["docker", "docker/Dockerfile"]);
    }

    #[test]
    fn dockerignore_leaves_paths_out_but_never_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                (".dockerignore", "# build outputs\ntarget\n*.log\n!keep.log\nbuild/Dockerfile\n"),
                ("build/Dockerfile", "FROM bee/base\n"),
                ("target/debug/big", "x"),
                ("run.log", "x"),
                ("keep.log", "x"),
                ("src/main.c", "x"),
                ("src/deep.log", "x"),
            ],
        );
        let packed = pack(&dir.path().join("build/Dockerfile"), dir.path(), &[]).unwrap();
        assert_eq!(
            names(&packed),
            [
                ".dockerignore",
                "build",
                "build/Dockerfile",
                "keep.log",
                "src",
                "src/deep.log",
                "src/main.c"
            ]
        );
        assert!(packed.left_out.is_empty(), "{:?}", packed.left_out);
    }

    #[test]
    fn an_exception_reaches_into_an_excluded_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                (".dockerignore", "data\n!data/input.txt\n"),
                ("Dockerfile", "FROM bee/base\n"),
                ("data/input.txt", "x"),
                ("data/scratch.bin", "x"),
            ],
        );
        let packed = pack(&dir.path().join("Dockerfile"), dir.path(), &[]).unwrap();
        assert_eq!(names(&packed), [".dockerignore", "Dockerfile", "data/input.txt"]);
    }

    #[test]
    fn sockets_and_bees_own_state_are_left_out_and_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("Dockerfile", "FROM bee/base\n"), ("state/runs.db", "x")]);
        let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock"));
        let skip = [dir.path().join("state"), dir.path().join("absent")];
        let packed = pack(&dir.path().join("Dockerfile"), dir.path(), &skip).unwrap();
        assert_eq!(names(&packed), ["Dockerfile"]);
        assert_eq!(
            packed.left_out,
            ["agent.sock (not a file, directory or link)", "state (bee's own state)"]
        );
    }

    #[test]
    fn a_missing_context_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let err = pack(&dir.path().join("Dockerfile"), &missing, &[]).unwrap_err().to_string();
        assert!(err.contains("cannot read the build context") && err.contains("nowhere"), "{err}");
    }

    #[test]
    fn patterns_follow_docker() {
        let rules = IgnoreRules::parse(
            "/out/\n**/*.o\ndocs/**/draft?.md\n./tmp/../cache\n[abc]x.txt\n[^0-9]y.txt\n\\*.lit\n",
        );
        for excluded in [
            "out",
            "out/a/b",
            "x.o",
            "a/b/x.o",
            "docs/draft1.md",
            "docs/a/b/draft2.md",
            "cache",
            "bx.txt",
            "ay.txt",
            "*.lit",
        ] {
            assert!(rules.excludes(excluded), "{excluded} should be excluded");
        }
        for kept in
            ["outer", "src/out", "x.oo", "docs/draft10.md", "tmp", "dx.txt", "5y.txt", "a.lit"]
        {
            assert!(!rules.excludes(kept), "{kept} should be kept");
        }
    }

    #[test]
    fn malformed_classes_match_nothing() {
        let glob = |pattern: &str, name: &str| {
            glob(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
        };
        for malformed in ["[a", "a\\", "[]a]", "[a-]", "[]"] {
            assert!(!glob(malformed, "a") && !glob(malformed, "]") && !glob(malformed, "-"));
        }
        assert!(glob("[\\]a]", "]"));
        assert!(glob("[a\\-]", "-"));
        assert!(glob("[a-c]", "b") && !glob("[a-c]", "d"));
    }
}
