//! Where bee keeps its state and caches on the host.
//!
//! State (cluster records, overlays, sockets, keys) lives under `$BEE_STATE_DIR`, else
//! `$XDG_STATE_HOME/bee`, else `~/.local/state/bee`. Caches (guest images) live under
//! `$BEE_CACHE_DIR`, else `$XDG_CACHE_HOME/bee`, else `~/.cache/bee`. Both are outside any
//! repository, so that a fresh clone reuses a built image.

use std::path::PathBuf;

fn from_env(own: &str, xdg: &str, fallback: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(own).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os(xdg).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("bee");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/tmp".into());
    home.join(fallback).join("bee")
}

/// The directory of bee's state.
pub fn state_dir() -> PathBuf {
    from_env("BEE_STATE_DIR", "XDG_STATE_HOME", ".local/state")
}

/// The directory of bee's caches.
pub fn cache_dir() -> PathBuf {
    from_env("BEE_CACHE_DIR", "XDG_CACHE_HOME", ".cache")
}

/// The directory holding one directory per cluster.
pub fn clusters_dir() -> PathBuf {
    state_dir().join("clusters")
}
