//! The cache directory of a mount: `staging/` (files being written, each with its journal
//! record), `recovery/` (bytes of failed uploads and of files a crash left unsaved), the cap
//! on staged bytes and the free share of its filesystem, and the mount-wide budgets of write
//! memory and parts being uploaded.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fs::block_cache::BlockCache;
use crate::fs::error::FsError;
use crate::fs::journal::{self, Journal};
use crate::fs::write_buffers::PartPool;

/// How long a write waits for other files' uploads to free cache space before ENOSPC.
const DRAIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// Memory for write parts unless configured (the `--write-buffer-memory` default).
const DEFAULT_WRITE_BUFFERS: u64 = 64 << 20;
/// Parts uploaded at once unless configured (the `--max-upload-concurrency` default).
const DEFAULT_UPLOADS_AT_ONCE: usize = 4;

/// The cache directory: `staging/` for files being written (each with its journal record),
/// `recovery/` for the bytes of uploads that failed and of files a crash left unsaved. Space
/// used by staging files is capped.
pub struct CacheDir {
    pub(super) staging: PathBuf,
    pub(super) recovery: PathBuf,
    /// The bucket this cache serves (journal records name it) and the internal path (the
    /// recovery copy of a file is named by its path below it).
    pub(super) location: String,
    pub(super) prefix: String,
    pub(super) max_bytes: u64,
    /// Bytes staged (shared with the data cache, which makes room for them).
    pub(super) used: Arc<AtomicU64>,
    /// The data cache in the same directory, whose blocks give way to staged bytes.
    blocks: Option<Arc<BlockCache>>,
    /// The staging journal: numbers the staging files and records where each stands.
    pub(crate) journal: Arc<Journal>,
    /// Share of the filesystem that must stay free.
    pub(super) min_free_ratio: f64,
    /// Memory for parts on their way from programs to the bucket and the staging file.
    pub(super) parts: PartPool,
    /// Parts being uploaded, by every file of the mount.
    pub(super) uploads: UploadBudget,
    /// Woken whenever staging space is freed.
    pub(super) drained: tokio::sync::Notify,
}

/// (bytes free for unprivileged users, total bytes) of the filesystem holding `path`.
pub fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is a valid NUL-terminated string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

impl CacheDir {
    pub fn open(root: &Path, max_bytes: u64) -> std::io::Result<CacheDir> {
        let staging = root.join(journal::STAGING);
        let recovery = root.join("recovery");
        private_dir(root)?;
        private_dir(&staging)?;
        private_dir(&recovery)?;
        private_dir(&root.join(journal::SPARE))?;
        let journal = Arc::new(Journal::open(root)?);
        Ok(CacheDir {
            staging,
            recovery,
            location: String::new(),
            prefix: String::new(),
            max_bytes,
            used: Arc::new(AtomicU64::new(0)),
            blocks: None,
            journal,
            min_free_ratio: 0.0,
            parts: PartPool::new(DEFAULT_WRITE_BUFFERS),
            uploads: UploadBudget::new(DEFAULT_UPLOADS_AT_ONCE, DEFAULT_WRITE_BUFFERS),
            drained: tokio::sync::Notify::new(),
        })
    }

    /// The bucket (as `s3://bucket/` at an endpoint) and internal path this cache serves.
    pub fn for_mount(mut self, location: &str, prefix: &str) -> CacheDir {
        self.location = location.to_string();
        self.prefix = prefix.to_string();
        self
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// The path below the mount root of the object `key` (the key itself when it lies
    /// outside the internal path).
    pub fn path_of(&self, key: &str) -> String {
        key.strip_prefix(&self.prefix).unwrap_or(key).to_string()
    }

    /// Where a file at `path` (below the mount root) is kept in `recovery/`: under a folder
    /// named by `stamp` (the time), with its path, so a person finds it by name. Never an
    /// existing file: a second copy gets a numbered suffix.
    pub fn recovery_place(&self, stamp: &str, path: &str) -> PathBuf {
        let clean: Vec<String> = path
            .split('/')
            .filter(|s| crate::fs::names::check_name(s).is_ok())
            .map(str::to_string)
            .collect();
        let rel = if clean.is_empty() {
            "unnamed".to_string()
        } else {
            clean.join("/")
        };
        let base = self.recovery.join(stamp).join(rel);
        if let Some(parent) = base.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let mut target = base.clone();
        let mut n = 1;
        while target.exists() {
            target = PathBuf::from(format!("{}.{n}", base.display()));
            n += 1;
        }
        target
    }

    /// Caps the memory holding parts of sequentially written files (`--write-buffer-memory`).
    /// and the parts being uploaded, by all files together (`--max-upload-concurrency` parts
    /// at once).
    pub fn with_write_buffers(mut self, bytes: u64, parts_at_once: usize) -> CacheDir {
        self.parts = PartPool::new(bytes);
        self.uploads = UploadBudget::new(parts_at_once, bytes);
        self
    }

    /// The count of staged bytes, which the data cache keeps room for.
    pub fn staged_counter(&self) -> Arc<AtomicU64> {
        self.used.clone()
    }

    /// The data cache sharing this directory: its blocks are evicted when staging needs room.
    pub fn with_blocks(mut self, blocks: Arc<BlockCache>) -> CacheDir {
        self.blocks = Some(blocks);
        self
    }

    /// The mount-wide budget of parts being uploaded.
    pub fn uploads(&self) -> &UploadBudget {
        &self.uploads
    }

    /// Keeps at least `min_free_ratio` of the cache's filesystem free, whoever else uses it.
    pub fn with_min_free_ratio(mut self, ratio: f64) -> CacheDir {
        self.min_free_ratio = ratio.clamp(0.0, 0.9);
        self
    }

    /// Refuses a write that would leave less than the minimum free share of the cache's
    /// filesystem (the local disk is never filled), saying why.
    pub(super) fn check_free_space(&self, more: u64) -> Result<(), String> {
        if self.min_free_ratio <= 0.0 {
            return Ok(());
        }
        let Some((free, total)) = filesystem_space(&self.staging) else {
            return Ok(());
        };
        let floor = (total as f64 * self.min_free_ratio) as u64;
        if free.saturating_sub(more) < floor {
            return Err(format!(
                "{} has {free} bytes free and keeps {floor} free (--cache-min-free)",
                self.staging.display()
            ));
        }
        Ok(())
    }

    /// The memory for parts of files being written.
    pub fn write_buffers(&self) -> &PartPool {
        &self.parts
    }

    pub fn recovery_dir(&self) -> &Path {
        &self.recovery
    }

    /// Files kept in `recovery/` (path below it, size), sorted, at most `limit` of them, and
    /// how many there are in all.
    pub fn recovered_files(&self, limit: usize) -> (Vec<(String, u64)>, usize) {
        let found = files_below(&self.recovery);
        let all = found.len();
        let shown = found
            .iter()
            .take(limit)
            .filter_map(|path| {
                let rel = path.strip_prefix(&self.recovery).ok()?;
                let size = std::fs::metadata(path).map_or(0, |m| m.len());
                Some((rel.to_string_lossy().to_string(), size))
            })
            .collect();
        (shown, all)
    }

    /// Accounts `more` bytes of staging space, or says which limit refuses them.
    pub(super) fn try_reserve(&self, more: u64) -> Result<(), String> {
        // Cached blocks give way first: to the cap, and to the free-space floor.
        if let Some(blocks) = &self.blocks {
            blocks.make_room(more);
            if self.check_free_space(more).is_err() {
                blocks.shrink_by(more);
            }
        }
        self.check_free_space(more)?;
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(more) > self.max_bytes {
                return Err(format!(
                    "{used} bytes are staged and the cap is {} (--max-cache-size)",
                    self.max_bytes
                ));
            }
            match self
                .used
                .compare_exchange(used, used + more, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    pub(super) fn release(&self, n: u64) {
        if self.used.fetch_sub(n, Ordering::AcqRel) == n {
            // Nothing is staged any more: no part buffer will be wanted soon.
            self.parts.trim();
        }
        self.drained.notify_waiters();
    }

    /// Like `reserve`, but when the space is held by other files (whose uploads free it once
    /// done), waits for them instead of failing: ENOSPC comes only if no space was freed for
    /// `DRAIN_PATIENCE`, or if the writer itself holds it all.
    pub(super) async fn reserve_or_wait(&self, more: u64, own: u64) -> Result<(), FsError> {
        let mut told = false;
        loop {
            let freed = self.drained.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let why = match self.try_reserve(more) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if self.used() <= own {
                tracing::warn!(
                    "the cache is full ({why}) and the file being written holds it: the write fails with ENOSPC. A file needs its whole size in --cache-dir until the bucket has it; give it room (--max-cache-size, --cache-min-free) or a bigger disk (--cache-dir)"
                );
                return Err(FsError::NoSpace);
            }
            if !told {
                tracing::info!(
                    "the cache is full ({why}): the write waits for other files' uploads to free space"
                );
                told = true;
            }
            if tokio::time::timeout(DRAIN_PATIENCE, freed).await.is_err() {
                tracing::warn!(
                    "the cache is full ({why}) and no upload freed space for {DRAIN_PATIENCE:?}: the write fails with ENOSPC"
                );
                return Err(FsError::NoSpace);
            }
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Mount-wide limits on parts being uploaded, shared by every file being written: at most
/// `--max-upload-concurrency` parts at once, holding at most `--write-buffer-memory` bytes, so
/// that N files written at once use no more memory or connections than one.
pub struct UploadBudget {
    parts: Arc<tokio::sync::Semaphore>,
    mib: Arc<tokio::sync::Semaphore>,
    total_mib: u32,
}

/// One part's share of the `UploadBudget`, returned when dropped.
pub struct UploadPermit {
    _part: tokio::sync::OwnedSemaphorePermit,
    _mib: tokio::sync::OwnedSemaphorePermit,
}

impl UploadBudget {
    pub fn new(parts: usize, memory: u64) -> UploadBudget {
        let total_mib = (memory >> 20).clamp(1, u32::MAX as u64 >> 4) as u32;
        UploadBudget {
            parts: Arc::new(tokio::sync::Semaphore::new(parts.max(1))),
            mib: Arc::new(tokio::sync::Semaphore::new(total_mib as usize)),
            total_mib,
        }
    }

    /// Waits until a part of `len` bytes may be held and sent (a part larger than the whole
    /// budget waits for all of it).
    pub async fn admit(&self, len: u64) -> UploadPermit {
        let mib = (len.div_ceil(1 << 20) as u32).clamp(1, self.total_mib);
        // The semaphores are never closed, so acquiring only waits.
        let part = self.parts.clone().acquire_owned().await;
        let bytes = self.mib.clone().acquire_many_owned(mib).await;
        match (part, bytes) {
            (Ok(_part), Ok(_mib)) => UploadPermit { _part, _mib },
            _ => unreachable!("upload budget semaphores are never closed"),
        }
    }
}

/// Every file below `dir`, at any depth, sorted (none when `dir` does not exist).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_filesystem_keeps_its_free_share() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = filesystem_space(dir.path()).unwrap();
        let margin = 64u64 << 20;
        let ratio = free.saturating_sub(margin) as f64 / total as f64;
        let cache = CacheDir::open(dir.path(), u64::MAX)
            .unwrap()
            .with_min_free_ratio(ratio);
        assert!(cache.try_reserve(4096).is_ok(), "well above the floor");
        let why = cache.try_reserve(2 * margin).unwrap_err();
        assert!(why.contains("--cache-min-free"), "{why}");
    }
}
