//! Where pailfs keeps its own files (logs, staging cache, control sockets) and how a
//! mountpoint becomes a file name among them.

use std::path::{Path, PathBuf};

use crate::fs::names::safe_file_name;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
}

/// Environment variable that puts all of pailfs's own files under one directory (`log/`,
/// `cache/`, `run/` inside it), for containers, CI and test suites that must not touch the
/// system's directories.
pub const DIRS_VAR: &str = "PAILFS_DIRS";

/// One kind of pailfs directory: `$PAILFS_DIRS/KIND` when set, `system` for root,
/// `$XDG_VAR/pailfs` for a user who has that variable, `fallback` otherwise.
fn pailfs_dir(
    kind: &str,
    system: &str,
    xdg_var: &str,
    fallback: impl FnOnce() -> PathBuf,
) -> PathBuf {
    if let Some(base) = std::env::var_os(DIRS_VAR).filter(|b| !b.is_empty()) {
        PathBuf::from(base).join(kind)
    } else if is_root() {
        PathBuf::from(system)
    } else if let Some(dir) = std::env::var_os(xdg_var) {
        PathBuf::from(dir).join("pailfs")
    } else {
        fallback()
    }
}

/// Logs: `$PAILFS_DIRS/log`, `/var/log/pailfs`, `$XDG_STATE_HOME/pailfs` or `~/.local/state/pailfs`.
pub fn log_dir() -> PathBuf {
    pailfs_dir("log", "/var/log/pailfs", "XDG_STATE_HOME", || {
        home().join(".local/state/pailfs")
    })
}

/// Staging and recovery: `$PAILFS_DIRS/cache`, `/var/cache/pailfs`, `$XDG_CACHE_HOME/pailfs` or `~/.cache/pailfs`.
pub fn cache_dir() -> PathBuf {
    pailfs_dir("cache", "/var/cache/pailfs", "XDG_CACHE_HOME", || {
        home().join(".cache/pailfs")
    })
}

/// Control sockets: `$PAILFS_DIRS/run`, `/run/pailfs`, `$XDG_RUNTIME_DIR/pailfs` or `/tmp/pailfs-UID`.
pub fn socket_dir() -> PathBuf {
    pailfs_dir("run", "/run/pailfs", "XDG_RUNTIME_DIR", || {
        // SAFETY: geteuid has no preconditions.
        PathBuf::from(format!("/tmp/pailfs-{}", unsafe { libc::geteuid() }))
    })
}

/// A file-name-safe form of a mountpoint path, shared by socket, log and cache names.
pub fn mount_name(mountpoint: &Path) -> String {
    let canonical = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let name = safe_file_name(canonical.to_string_lossy().trim_matches('/'));
    if name.is_empty() {
        "root".to_string()
    } else {
        name
    }
}
