//! Writing: every change to a file goes to a staging file in the cache directory (a new file
//! written from start to end passes through part buffers on the way, see `streaming`); the
//! object is uploaded when the program flushes, fsyncs or closes (PutObject for small files, a
//! multipart upload otherwise), and those calls succeed only once the bucket holds the new
//! object. When the upload fails, the multipart upload is aborted and the staging file moves
//! to `recovery/` with a log line naming it and the key.
//!
//! An existing object opened for writing is not downloaded: the staging file starts sparse and
//! fetches only the ranges a program reads (ranged GETs pinned by ETag). At upload, runs the
//! program did not change are copied server-side (UploadPartCopy), so appending 1 MiB to a
//! 10 GiB object uploads about 1 MiB.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::blocking::blocking;
use super::error::FsError;
use super::journal::{Base, JournalEntry, Record, Source, StagedState};
use super::part_buffer::PartPool;

mod streaming;
use super::progress::{Tracked, UploadProgress};
use super::ranges::RangeSet;
use crate::store::{ByteRange, Metadata, ObjectInfo, ObjectStore, StoreError, UploadedPart};
use streaming::{streaming_part, LandingFiles, StreamingUpload, Tail};

/// How long a write waits for other files' uploads to free cache space before ENOSPC.
const DRAIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// Memory for write parts unless configured (the `--write-buffer-memory` default).
const DEFAULT_WRITE_BUFFERS: u64 = 64 << 20;
/// Parts uploaded at once unless configured (the `--max-upload-concurrency` default).
const DEFAULT_UPLOADS_AT_ONCE: usize = 4;
/// Largest number of parts S3 accepts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct WriteTuning {
    pub part_size: u64,
    pub upload_concurrency: usize,
    /// Memory that parts being uploaded may hold (`--write-buffer-memory`).
    pub buffer_memory: u64,
    pub conflict: ConflictPolicy,
}

/// What a close does when the object changed in the bucket since the file was opened here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConflictPolicy {
    /// Upload anyway (the last close wins) and log a warning naming the conflict.
    #[default]
    Warn,
    /// Refuse: the close fails (EIO) and the written bytes go to recovery.
    Fail,
}

/// The cache directory: `staging/` for files being written (each with its journal record),
/// `recovery/` for the bytes of uploads that failed and of files a crash left unsaved. Space
/// used by staging files is capped.
pub struct CacheDir {
    staging: PathBuf,
    recovery: PathBuf,
    /// The bucket this cache serves (journal records name it) and the internal path (the
    /// recovery copy of a file is named by its path below it).
    location: String,
    prefix: String,
    max_bytes: u64,
    used: AtomicU64,
    next: AtomicU64,
    /// Share of the filesystem that must stay free.
    min_free_ratio: f64,
    /// Memory for parts on their way from programs to the bucket and the staging file.
    parts: PartPool,
    /// Parts being uploaded, by every file of the mount.
    uploads: UploadBudget,
    /// Woken whenever staging space is freed.
    drained: tokio::sync::Notify,
}

/// (bytes free for unprivileged users, total bytes) of the filesystem holding `path`.
fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
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
        let staging = root.join("staging");
        let recovery = root.join("recovery");
        private_dir(root)?;
        private_dir(&staging)?;
        private_dir(&recovery)?;
        // Staging names are numbered; files a dead daemon left keep theirs until reconciled.
        let next = std::fs::read_dir(&staging)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.split('-').next()?.parse::<u64>().ok()
            })
            .max()
            .map_or(0, |n| n + 1);
        Ok(CacheDir {
            staging,
            recovery,
            location: String::new(),
            prefix: String::new(),
            max_bytes,
            used: AtomicU64::new(0),
            next: AtomicU64::new(next),
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
            .filter(|s| super::names::check_name(s).is_ok())
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
    fn check_free_space(&self, more: u64) -> Result<(), String> {
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

    /// Accounts `more` bytes of staging space, or says which limit refuses them.
    fn try_reserve(&self, more: u64) -> Result<(), String> {
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

    fn release(&self, n: u64) {
        if self.used.fetch_sub(n, Ordering::AcqRel) == n {
            // Nothing is staged any more: no part buffer will be wanted soon.
            self.parts.trim();
        }
        self.drained.notify_waiters();
    }

    /// Like `reserve`, but when the space is held by other files (whose uploads free it once
    /// done), waits for them instead of failing: ENOSPC comes only if no space was freed for
    /// `DRAIN_PATIENCE`, or if the writer itself holds it all.
    async fn reserve_or_wait(&self, more: u64, own: u64) -> Result<(), FsError> {
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

/// Largest part copied server-side in one UploadPartCopy (S3 allows 5 GiB).
const COPY_PART: u64 = 512 << 20;
/// Largest ranged GET that fills a staging file.
const FILL_PIECE: u64 = 8 << 20;

/// One part of a multipart upload over a source object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannedPart {
    /// `[start, end)` unchanged: UploadPartCopy from the source.
    Copy(u64, u64),
    /// `[start, end)` read from the staging file (filled where needed).
    Upload(u64, u64),
}

/// Parts for uploading a file of `size` bytes whose first `source_len` bytes mirror an object,
/// except the `written` ones: unchanged runs of at least the minimum part size (or ending the
/// file) are copied, everything else is uploaded in parts of `part` bytes.
pub fn plan_parts(size: u64, part: u64, source_len: u64, written: &RangeSet) -> Vec<PlannedPart> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        if pos < source_len && !written.overlaps(pos, pos + 1) {
            let run_end = written.next_start(pos).unwrap_or(u64::MAX).min(source_len);
            if run_end - pos >= MIN_PART_SIZE || run_end == size {
                let end = run_end.min(pos + COPY_PART.max(part));
                out.push(PlannedPart::Copy(pos, end));
                pos = end;
                continue;
            }
        }
        let end = (pos + part).min(size);
        out.push(PlannedPart::Upload(pos, end));
        pos = end;
    }
    out
}

/// One file being written: its staging copy and what is known about it.
pub struct Staged {
    cache: Arc<CacheDir>,
    pub key: String,
    /// Where the bytes are: the staging data file, or its recovery copy after a failure.
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    reserved: u64,
    /// Where the copy stands on its way to the bucket (see `StagedState`); every change of
    /// it goes through one of the named transitions below and is written to the journal.
    state: StagedState,
    journal: Arc<JournalEntry>,
    /// Started empty (new file or O_TRUNC) and written only sequentially so far: parts may
    /// stream while it is written.
    streamable: bool,
    streaming: Option<StreamingUpload>,
    /// Appended bytes of the current part, not yet in the staging file.
    tail: Option<Tail>,
    /// Complete parts in memory that the streaming upload has not started yet, in order.
    sealed: VecDeque<(u64, Bytes)>,
    /// Writes of parts into the staging file, still running.
    landing: VecDeque<JoinHandle<std::io::Result<()>>>,
    landing_files: Option<Arc<LandingFiles>>,
    /// Why bytes are missing from the staging file (a part could not be written to it): this
    /// copy can no longer be uploaded whole.
    damaged: Option<String>,
    pub handles: usize,
    /// User metadata the object is uploaded with (mode, owner, xattrs…); `mtime` is set from
    /// `modified` at each upload.
    pub metadata: Metadata,
    /// Last change of the content, or the time a program set with utimensat.
    pub modified: std::time::SystemTime,
    /// The object this copy mirrors, while it does (an existing file, or after an upload).
    source: Option<Source>,
    /// The version of the object this copy was made against.
    base: Base,
    /// What the bucket has received of the current upload (for `pailfs status`).
    pub progress: Arc<UploadProgress>,
    /// The store as uploads see it: counting into `progress` (made once, on first use).
    tracked: Option<Arc<dyn ObjectStore>>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.cache.release(self.reserved);
        if self.state != StagedState::Failed {
            let _ = std::fs::remove_file(&self.path);
            self.journal.remove_record();
        }
    }
}

fn io_error(e: std::io::Error) -> FsError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        FsError::NoSpace
    } else {
        FsError::Store(StoreError::Other(format!("staging file: {e}")))
    }
}

impl Staged {
    /// An empty staging file (a new file, or one opened with O_TRUNC), to be uploaded with
    /// `metadata`.
    pub fn empty(cache: Arc<CacheDir>, key: String, metadata: Metadata) -> Result<Staged, FsError> {
        Staged::created(cache, key, metadata, StagedState::Writing)
    }

    /// A new staging entry in `state`, its data file empty and its record written.
    fn created(
        cache: Arc<CacheDir>,
        key: String,
        metadata: Metadata,
        state: StagedState,
    ) -> Result<Staged, FsError> {
        let n = cache.next.fetch_add(1, Ordering::Relaxed);
        let record = Record {
            location: cache.location.clone(),
            key: key.clone(),
            path: cache.path_of(&key),
            state,
            upload_id: None,
            base: Base::Absent,
            metadata: metadata.clone(),
            size: 0,
            source: None,
        };
        let journal = Arc::new(JournalEntry::new(&cache.staging, n, record));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&journal.data)
            .map_err(io_error)?;
        let staged = Staged::assemble(cache, key, journal, file, state, metadata);
        staged.persist(false)?;
        Ok(staged)
    }

    fn assemble(
        cache: Arc<CacheDir>,
        key: String,
        journal: Arc<JournalEntry>,
        file: std::fs::File,
        state: StagedState,
        metadata: Metadata,
    ) -> Staged {
        Staged {
            progress: Arc::new(UploadProgress::new(&key)),
            cache,
            key,
            path: journal.data.clone(),
            journal,
            file,
            size: 0,
            reserved: 0,
            state,
            streamable: true,
            streaming: None,
            tail: None,
            sealed: VecDeque::new(),
            landing: VecDeque::new(),
            landing_files: None,
            damaged: None,
            handles: 0,
            metadata,
            modified: std::time::SystemTime::now(),
            source: None,
            base: Base::Absent,
            tracked: None,
        }
    }

    /// A staging copy a dead daemon left, from its journal record: `Closed` (its close was
    /// acknowledged), with no handle, ready for its upload.
    pub fn from_record(cache: Arc<CacheDir>, journal: JournalEntry) -> Result<Staged, FsError> {
        let record = journal.record();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal.data)
            .map_err(io_error)?;
        let size = file.metadata().map_err(io_error)?.len();
        let journal = Arc::new(journal);
        let mut staged = Staged::assemble(
            cache,
            record.key.clone(),
            journal,
            file,
            StagedState::Closed,
            record.metadata.clone(),
        );
        staged.size = size;
        staged.streamable = false;
        staged.base = record.base;
        staged.modified =
            super::meta::mtime_header(&record.metadata).unwrap_or_else(std::time::SystemTime::now);
        staged.source = record.source.map(|mut src| {
            if src.len > size {
                src.len = size;
                src.local.clip(size);
                src.written.clip(size);
            }
            src
        });
        let held = staged.local_bytes();
        staged.cache.used.fetch_add(held, Ordering::AcqRel);
        staged.reserved = held;
        staged.progress.pending.store(true, Ordering::Relaxed);
        staged.progress.total.store(size, Ordering::Relaxed);
        staged.persist(true)?;
        Ok(staged)
    }

    /// Writes the journal record of this copy as it is now; `durable` fsyncs it (a state a
    /// program is told about). The multipart upload id is kept as the store wrapper noted it.
    fn persist(&self, durable: bool) -> Result<(), FsError> {
        let headers = self.headers();
        self.journal
            .update(durable, |r| {
                r.key = self.key.clone();
                r.path = self.cache.path_of(&self.key);
                r.state = self.state;
                r.base = self.base.clone();
                r.metadata = headers;
                r.size = self.size;
                r.source = self.source.clone();
            })
            .map_err(|e| {
                tracing::error!(record = %self.path.display(), error = %e, "could not write the staging journal");
                io_error(e)
            })
    }

    pub fn state(&self) -> StagedState {
        self.state
    }

    /// Transition: a program changed the bytes. `Clean` becomes `Writing`; an acknowledged
    /// copy stays acknowledged (its bytes must reach the bucket all the same), but its record
    /// follows the changed ranges of a lazily staged object.
    fn mark_written(&mut self) -> Result<(), FsError> {
        match self.state {
            StagedState::Clean => {
                self.state = StagedState::Writing;
                self.persist(false)
            }
            StagedState::Closed if self.source.is_some() => self.persist(false),
            _ => Ok(()),
        }
    }

    /// Transition (async write-back's close): every byte is on local disk and the journal
    /// says the close was acknowledged, so a crash from here on still uploads the file.
    pub async fn acknowledge(&mut self) -> Result<(), FsError> {
        if !self.state.is_dirty() {
            return Ok(());
        }
        self.land().await?;
        blocking(|| self.file.sync_data()).map_err(io_error)?;
        if self.state == StagedState::Writing {
            self.state = StagedState::Closed;
        }
        self.persist(true)
    }

    /// Transition: the name was removed while the file is open (unlink, or a rename over
    /// it). The handles keep reading and writing these bytes; nothing is uploaded, and a
    /// multipart upload in flight is aborted.
    pub fn unlink(&mut self, store: &Arc<dyn ObjectStore>) {
        let store = self.tracked(store);
        self.stop_streaming(&store, "the file was unlinked");
        self.state = StagedState::Unlinked;
        self.progress.pending.store(false, Ordering::Relaxed);
        let _ = self.persist(false);
    }

    /// `store`, wrapped so that what it uploads or copies is credited to this file's progress
    /// and every multipart upload it starts is in the journal until it ends.
    fn tracked(&mut self, store: &Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        let (progress, journal) = (&self.progress, &self.journal);
        self.tracked
            .get_or_insert_with(|| {
                Arc::new(Tracked {
                    inner: store.clone(),
                    progress: progress.clone(),
                    journal: journal.clone(),
                })
            })
            .clone()
    }

    /// The copy starts from `etag` (O_TRUNC of a known object), or from an unknown version.
    pub fn set_base(&mut self, etag: Option<&str>) {
        self.base = match etag {
            Some(etag) => Base::Etag(etag.to_string()),
            None => Base::Unknown,
        };
        let _ = self.persist(false);
    }

    /// chmod, chown, utimensat, xattrs on a file being written: its coming upload carries
    /// them. An acknowledged copy records them durably (the change was acknowledged too).
    pub fn set_metadata(
        &mut self,
        metadata: Metadata,
        modified: Option<std::time::SystemTime>,
    ) -> Result<(), FsError> {
        self.metadata = metadata;
        if let Some(modified) = modified {
            self.modified = modified;
        }
        self.persist(self.state.is_acknowledged())
    }

    /// The ETag of the object version this copy was made against, when known.
    pub fn base_etag(&self) -> Option<&str> {
        match &self.base {
            Base::Etag(etag) => Some(etag),
            _ => None,
        }
    }

    /// Checks that the bucket still holds the version this copy was made against. A file the
    /// program created is checked only under `--conflict=fail` (it costs a HEAD per new file).
    async fn check_conflict(
        &self,
        store: &Arc<dyn ObjectStore>,
        policy: ConflictPolicy,
    ) -> Result<(), StoreError> {
        let expected = match &self.base {
            Base::Unknown => return Ok(()),
            Base::Absent if policy == ConflictPolicy::Warn => return Ok(()),
            Base::Absent => None,
            Base::Etag(etag) => Some(etag.as_str()),
        };
        let now = match store.head(&self.key).await {
            Ok(info) => Some(info.etag),
            Err(StoreError::NotFound) => None,
            // The upload will meet the same trouble and report it.
            Err(_) => return Ok(()),
        };
        if now.as_deref() == expected {
            return Ok(());
        }
        let describe = |e: Option<&str>| e.unwrap_or("absent").to_string();
        match policy {
            ConflictPolicy::Warn => {
                tracing::warn!(
                    key = %self.key,
                    opened_at = %describe(expected),
                    now = %describe(now.as_deref()),
                    "conflict: the object changed in the bucket since this file was opened here; this close replaces that version (last close wins; --conflict=fail refuses instead)"
                );
                Ok(())
            }
            ConflictPolicy::Fail => {
                tracing::error!(
                    key = %self.key,
                    opened_at = %describe(expected),
                    now = %describe(now.as_deref()),
                    "conflict: the object changed in the bucket since this file was opened here; upload refused (--conflict=fail)"
                );
                Err(StoreError::PreconditionFailed)
            }
        }
    }

    /// The metadata headers for an upload now: `metadata` with the current `mtime`.
    pub fn headers(&self) -> Metadata {
        let mut headers = self.metadata.clone();
        let secs = self
            .modified
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        headers.insert("mtime".into(), secs.to_string());
        headers
    }

    /// A staging copy of the object as it is in the bucket (for appends and in-place edits),
    /// holding none of its bytes yet: they are fetched when read, or copied at upload.
    pub fn over(cache: Arc<CacheDir>, info: &ObjectInfo) -> Result<Staged, FsError> {
        let mut staged = Staged::created(
            cache,
            info.key.clone(),
            info.metadata.clone(),
            StagedState::Clean,
        )?;
        blocking(|| staged.file.set_len(info.size)).map_err(io_error)?;
        staged.size = info.size;
        // An empty object appended to streams like a new file.
        staged.streamable = info.size == 0;
        staged.modified = super::meta::file_mtime(info);
        staged.base = Base::Etag(info.etag.clone());
        if info.size > 0 {
            staged.source = Some(Source {
                key: info.key.clone(),
                etag: info.etag.clone(),
                len: info.size,
                local: RangeSet::default(),
                written: RangeSet::default(),
            });
        }
        staged.persist(false)?;
        Ok(staged)
    }

    /// Bytes the staging file really holds (its holes cost no disk).
    fn local_bytes(&self) -> u64 {
        match &self.source {
            Some(src) => src.local.total() + (self.size - src.len),
            None => self.size,
        }
    }

    /// Reserves `more` bytes of cache space before they are written (ENOSPC beyond the cap).
    async fn reserve(&mut self, more: u64) -> Result<(), FsError> {
        self.cache.reserve_or_wait(more, self.reserved).await?;
        self.reserved += more;
        Ok(())
    }

    /// Brings the reservation back to what the file holds.
    fn settle(&mut self) {
        let held = self.local_bytes();
        if held < self.reserved {
            self.cache.release(self.reserved - held);
            self.reserved = held;
        }
    }

    /// Brings every byte of the file into the staging file, fetching what still lives only
    /// in the source object (before that object is deleted or replaced).
    pub async fn fill_all(&mut self, store: &dyn ObjectStore) -> Result<(), FsError> {
        self.land().await?;
        self.fill(0, self.size, store).await
    }

    /// Fetches the bytes of `[start, end)` that still live only in the source object.
    async fn fill(&mut self, start: u64, end: u64, store: &dyn ObjectStore) -> Result<(), FsError> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        let (key, etag) = (src.key.clone(), src.etag.clone());
        let gaps = src.local.missing(start, end.min(src.len));
        for (gap_start, gap_end) in gaps {
            let mut at = gap_start;
            while at < gap_end {
                let to = gap_end.min(at + FILL_PIECE);
                self.reserve(to - at).await?;
                let data = store
                    .get_range(&key, ByteRange::new(at, to), Some(&etag))
                    .await
                    .map_err(|e| match e {
                        StoreError::PreconditionFailed => FsError::Changed,
                        other => FsError::Store(other),
                    })?;
                if data.len() as u64 != to - at {
                    return Err(FsError::Changed);
                }
                blocking(|| self.file.write_all_at(&data, at)).map_err(io_error)?;
                if let Some(src) = &mut self.source {
                    src.local.insert(at, to);
                }
                at = to;
            }
        }
        self.settle();
        Ok(())
    }

    /// The file was renamed (its object copied to `key`, now at `etag`). The journal says so
    /// (durably) before the rename returns, so a crash cannot upload to the old name.
    pub fn retarget(&mut self, key: &str, etag: &str) -> Result<(), FsError> {
        self.key = key.to_string();
        *self.progress.key.lock().unwrap_or_else(|e| e.into_inner()) = key.to_string();
        if let Some(src) = &mut self.source {
            src.key = key.to_string();
            src.etag = etag.to_string();
        }
        self.persist(true)
    }

    /// Whether a listing of the bucket may not show this file although programs see it: new,
    /// never uploaded, and not deleted.
    pub fn only_local(&self) -> bool {
        self.base == Base::Absent && self.state.is_dirty()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_dirty(&self) -> bool {
        self.state.is_dirty()
    }

    /// Refuses to go on with a copy whose upload failed (the program was told; its bytes are
    /// in recovery).
    fn check_not_failed(&self) -> Result<(), FsError> {
        if self.state == StagedState::Failed {
            return Err(FsError::Store(StoreError::Other(
                "an earlier upload of this file failed; its bytes are in recovery".into(),
            )));
        }
        Ok(())
    }

    /// Refuses changes to a copy that can no longer be uploaded.
    fn check_writable(&self) -> Result<(), FsError> {
        self.check_not_failed()?;
        if let Some(why) = &self.damaged {
            return Err(FsError::Store(StoreError::Other(why.clone())));
        }
        Ok(())
    }

    /// Writes `data` at `offset`. Sequential writes to a new file go into part buffers from
    /// the second part on, and parts the writer has moved past start uploading (streaming);
    /// everything else goes to the staging file. Whatever streaming does not cover uploads
    /// from the staging file at close.
    pub async fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<u32, FsError> {
        self.check_writable()?;
        let store = &self.tracked(store);
        if !(self.tail.is_some() && offset == self.size) {
            // Not an append to the part in memory: the staging file must hold every byte.
            self.land().await?;
        }
        if self.streaming.as_ref().is_some_and(|s| offset < s.frozen) {
            self.stop_streaming(store, "a write went back into uploaded parts");
        }
        self.reserve(data.len() as u64).await?;
        let (mut at, mut rest) = (offset, data);
        while !rest.is_empty() {
            if let Some(tail) = &mut self.tail {
                if tail.buf.is_full() {
                    self.seal_tail().await;
                    continue;
                }
                let n = tail.buf.push(rest);
                (at, rest) = (at + n as u64, &rest[n..]);
                self.size = self.size.max(at);
                continue;
            }
            // Into the staging file, unless a part buffer takes over an append.
            let mut n = rest.len();
            if self.streamable && self.source.is_none() && at == self.size {
                let (number, start, len) = streaming_part(tuning.part_size, at);
                // The first part stays in the file: most files are small, and go up in one
                // PUT.
                if number > 1 && start == at && len <= tuning.buffer_memory {
                    if let Some(buf) = self.cache.parts.try_take(len as usize) {
                        self.tail = Some(Tail { start: at, buf });
                        continue;
                    }
                }
                // The append stops at the part boundary, where a buffer may take over.
                n = n.min((start + len - at) as usize);
            }
            if let Err(e) = blocking(|| self.file.write_all_at(&rest[..n], at)) {
                self.settle();
                return Err(io_error(e));
            }
            (at, rest) = (at + n as u64, &rest[n..]);
            self.size = self.size.max(at);
        }
        let end = offset + data.len() as u64;
        if let Some(src) = &mut self.source {
            let changed_end = end.min(src.len);
            if offset < changed_end {
                src.local.insert(offset, changed_end);
                src.written.insert(offset, changed_end);
            }
        }
        self.progress.pending.store(true, Ordering::Relaxed);
        self.progress.total.store(self.size, Ordering::Relaxed);
        self.modified = std::time::SystemTime::now();
        self.settle();
        self.mark_written()?;
        self.advance_stream(store, tuning, false).await;
        Ok(data.len() as u32)
    }

    pub async fn read(
        &mut self,
        offset: u64,
        len: u32,
        store: &dyn ObjectStore,
    ) -> Result<Bytes, FsError> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let n = (self.size - offset).min(len as u64) as usize;
        self.land().await?;
        self.fill(offset, offset + n as u64, store).await?;
        let mut buf = vec![0u8; n];
        blocking(|| self.file.read_exact_at(&mut buf, offset)).map_err(io_error)?;
        Ok(Bytes::from(buf))
    }

    pub async fn truncate(
        &mut self,
        size: u64,
        store: &Arc<dyn ObjectStore>,
    ) -> Result<(), FsError> {
        self.land().await?;
        if self.streaming.as_ref().is_some_and(|s| size < s.frozen) {
            self.stop_streaming(store, "truncated into uploaded parts");
        }
        if size > self.size {
            self.reserve(size - self.size).await?;
        }
        blocking(|| self.file.set_len(size)).map_err(io_error)?;
        if let Some(src) = &mut self.source {
            if size < src.len {
                src.len = size;
                src.local.clip(size);
                src.written.clip(size);
            }
        }
        self.size = size;
        self.modified = std::time::SystemTime::now();
        self.settle();
        self.mark_written()
    }

    /// Uploads the staging copy if it changed. On failure, keeps the bytes in `recovery/`.
    pub async fn upload(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<Option<String>, FsError> {
        let store = &self.tracked(store);
        if self.streaming.is_none() {
            self.progress.restart();
        }
        self.progress.total.store(self.size, Ordering::Relaxed);
        self.check_not_failed()?;
        if !self.state.is_dirty() {
            tracing::debug!(key = %self.key, state = ?self.state, "nothing to upload");
            return Ok(None);
        }
        tracing::debug!(key = %self.key, size = self.size, streaming = self.streaming.is_some(), "uploading");
        if self.state == StagedState::Closed {
            self.state = StagedState::Uploading;
            let _ = self.persist(false);
        }
        let over_source = self.source.as_ref().is_some_and(|s| s.len > 0);
        let result = match self.check_conflict(store, tuning.conflict).await {
            Err(e) => {
                self.stop_streaming(store, "conflict");
                Err(e)
            }
            Ok(()) => match self.finish_streaming(store, tuning).await {
                Some(streamed) => streamed,
                // No streaming upload (or it stopped): the file goes up from the staging file.
                None => match self.land().await {
                    Err(e) => Err(StoreError::Other(e.to_string())),
                    Ok(()) if over_source => self.upload_over_source(store, tuning).await,
                    Ok(()) => {
                        let headers = self.headers();
                        upload_file(
                            store,
                            &self.key,
                            (&self.file, &self.cache.uploads),
                            self.size,
                            &headers,
                            tuning,
                        )
                        .await
                    }
                },
            },
        };
        // Whatever happened, the next change starts from a known state: no streaming, except
        // into a file that is empty in the bucket (programs that create a file often close a
        // first descriptor of it before writing through another, as dd does).
        self.streamable = false;
        match result {
            Ok(etag) => {
                self.uploaded(&etag);
                Ok(Some(etag))
            }
            Err(e) => {
                self.state = StagedState::Failed;
                // The recovery copy should be whole: bytes still in memory go to it, and
                // what was never read is fetched, if the source still answers.
                let landed = self.land().await.is_ok();
                let whole = landed && self.fill(0, self.size, store.as_ref()).await.is_ok();
                let kept = self.keep_for_recovery();
                tracing::error!(
                    key = %self.key,
                    error = %e,
                    recovery = %kept,
                    complete = whole,
                    "upload failed: the program was told (close/fsync error); the written bytes are kept{}",
                    if !landed { " (a part could not be written to the staging file; see the error before)" }
                    else if whole { "" }
                    else { " (bytes never read from the old object are zeros there; the old object is still in the bucket)" }
                );
                Err(FsError::Store(e))
            }
        }
    }

    /// Transition: the bucket holds exactly these bytes (as `etag`). The copy is `Clean` and
    /// becomes the source of later changes, so that they upload only what differs.
    fn uploaded(&mut self, etag: &str) {
        tracing::debug!(key = %self.key, size = self.size, %etag, "uploaded");
        self.streamable = self.size == 0;
        self.state = StagedState::Clean;
        self.progress.pending.store(false, Ordering::Relaxed);
        self.base = Base::Etag(etag.to_string());
        self.now_mirrors(etag);
        let _ = self.persist(false);
    }

    fn now_mirrors(&mut self, etag: &str) {
        let mut local = match self.source.take() {
            Some(src) => {
                let mut local = src.local;
                local.insert(src.len, self.size);
                local
            }
            None => {
                let mut all = RangeSet::default();
                all.insert(0, self.size);
                all
            }
        };
        local.clip(self.size);
        self.source = (self.size > 0).then(|| Source {
            key: self.key.clone(),
            etag: etag.to_string(),
            len: self.size,
            local,
            written: RangeSet::default(),
        });
    }

    /// Uploads a file that mirrors an object: unchanged runs are copied server-side, the
    /// rest (filled from the object where a part needs it) is uploaded.
    async fn upload_over_source(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<String, StoreError> {
        let as_store = |e: FsError| match e {
            FsError::Changed => StoreError::PreconditionFailed,
            FsError::Store(e) => e,
            other => StoreError::Other(other.to_string()),
        };
        let part = part_size_for(self.size, tuning.part_size);
        let plan = match &self.source {
            Some(src) if self.size > part => plan_parts(self.size, part, src.len, &src.written),
            _ => Vec::new(),
        };
        let headers = self.headers();
        if plan.len() < 2 || plan.len() as u64 > MAX_PARTS {
            // Small, or too fragmented for 10,000 parts: the whole file goes up.
            self.fill(0, self.size, store.as_ref())
                .await
                .map_err(as_store)?;
            return upload_file(
                store,
                &self.key,
                (&self.file, &self.cache.uploads),
                self.size,
                &headers,
                tuning,
            )
            .await;
        }
        for planned in &plan {
            if let PlannedPart::Upload(start, end) = *planned {
                self.fill(start, end, store.as_ref())
                    .await
                    .map_err(as_store)?;
            }
        }
        let Some(src) = &self.source else {
            return Err(StoreError::Other("the source object vanished".into()));
        };
        let (source_key, source_etag) = (src.key.as_str(), src.etag.as_str());
        let key = self.key.as_str();
        let upload_id = store.create_multipart(key, &headers).await?;
        let upload = upload_id.as_str();
        let parts = send_parts(
            store,
            key,
            upload,
            plan,
            1,
            PartSources {
                object: Some((source_key, Some(source_etag))),
                file: Some((&self.file, &self.cache.uploads)),
            },
            tuning.parts_at_once(part),
        )
        .await;
        complete_or_abort(store, key, upload, parts).await
    }

    /// Moves the bytes to `recovery/TIME/PATH` (the journal record goes: a failed copy is
    /// the user's now, not the mount's).
    fn keep_for_recovery(&mut self) -> String {
        let stamp = super::journal::utc_stamp(std::time::SystemTime::now());
        let target = self
            .cache
            .recovery_place(&stamp, &self.cache.path_of(&self.key));
        match std::fs::rename(&self.path, &target) {
            Ok(()) => {
                self.journal.remove_record();
                self.path = target.clone();
                target.display().to_string()
            }
            Err(e) => {
                tracing::error!(error = %e, "could not move the staging file to recovery; it stays at its staging path");
                self.path.display().to_string()
            }
        }
    }
}

/// Part size for an object of `size` bytes: at least `part_size`, large enough that the object
/// fits in 10,000 parts (so a 5 TiB object still uploads).
pub fn part_size_for(size: u64, part_size: u64) -> u64 {
    part_size.max(MIN_PART_SIZE).max(size.div_ceil(MAX_PARTS))
}

impl WriteTuning {
    /// Parts of `part` bytes uploaded at once: within the part count and the memory cap
    /// (one at least), as parts grow for huge files.
    pub fn parts_at_once(&self, part: u64) -> usize {
        self.upload_concurrency
            .min((self.buffer_memory / part.max(1)) as usize)
            .max(1)
    }
}

/// Uploads the whole staging file: one PUT up to a part, a multipart upload above.
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    (file, budget): (&std::fs::File, &UploadBudget),
    size: u64,
    metadata: &Metadata,
    tuning: WriteTuning,
) -> Result<String, StoreError> {
    let part = part_size_for(size, tuning.part_size);
    if size <= part {
        let _permit = budget.admit(size).await;
        return store
            .put_object(key, read_piece(file, 0, size)?, metadata)
            .await;
    }
    let upload_id = store.create_multipart(key, metadata).await?;
    let parts = send_parts(
        store,
        key,
        &upload_id,
        tile(0, size, part, PlannedPart::Upload),
        1,
        PartSources::file(file, budget),
        tuning.parts_at_once(part),
    )
    .await;
    complete_or_abort(store, key, &upload_id, parts).await
}

/// Completes an upload from `parts`; when they or the completion failed, aborts it first so
/// that no parts stay behind (and billed), and passes the failure on.
pub async fn complete_or_abort(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    upload_id: &str,
    parts: Result<Vec<UploadedPart>, StoreError>,
) -> Result<String, StoreError> {
    let result = match parts {
        Ok(parts) => store.complete_multipart(key, upload_id, &parts).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        if let Err(abort) = store.abort_multipart(key, upload_id).await {
            tracing::warn!(key, error = %abort, "could not abort the failed multipart upload; the bucket may keep its parts until a lifecycle rule removes them");
        }
    }
    result
}

/// `[from, to)` cut into parts of `part` bytes (the last may be shorter), each made by
/// `as_part` (`PlannedPart::Upload` or `PlannedPart::Copy`).
pub fn tile(
    from: u64,
    to: u64,
    part: u64,
    as_part: fn(u64, u64) -> PlannedPart,
) -> Vec<PlannedPart> {
    (from..to)
        .step_by(part as usize)
        .map(|start| as_part(start, to.min(start + part)))
        .collect()
}

/// Where the bytes of planned parts come from.
#[derive(Clone, Copy)]
pub struct PartSources<'a> {
    /// For `Copy` parts: the object copied from, and the ETag it must still have.
    pub object: Option<(&'a str, Option<&'a str>)>,
    /// For `Upload` parts: the staging file, and the mount-wide budget each part read from it
    /// waits for.
    pub file: Option<(&'a std::fs::File, &'a UploadBudget)>,
}

impl<'a> PartSources<'a> {
    pub fn file(file: &'a std::fs::File, budget: &'a UploadBudget) -> Self {
        PartSources {
            object: None,
            file: Some((file, budget)),
        }
    }
}

/// Sends `plan` as parts `first`, `first + 1`, … of an upload: copies inside the server,
/// uploads read from the staging file when they start (so `concurrency`, the most at once,
/// also bounds the memory held).
pub async fn send_parts(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    upload_id: &str,
    plan: Vec<PlannedPart>,
    first: u32,
    from: PartSources<'_>,
    concurrency: usize,
) -> Result<Vec<UploadedPart>, StoreError> {
    let missing =
        |what: &str| StoreError::Other(format!("a planned part has no {what} to come from"));
    futures::stream::iter(plan)
        .enumerate()
        .map(|(i, planned)| async move {
            let number = first + i as u32;
            let etag = match planned {
                PlannedPart::Copy(start, end) => {
                    let (source, etag) = from.object.ok_or_else(|| missing("object"))?;
                    store
                        .upload_part_copy(
                            key,
                            upload_id,
                            number,
                            source,
                            etag,
                            ByteRange::new(start, end),
                        )
                        .await?
                }
                PlannedPart::Upload(start, end) => {
                    let (file, budget) = from.file.ok_or_else(|| missing("file"))?;
                    let _permit = budget.admit(end - start).await;
                    let body = read_piece(file, start, end - start)?;
                    store.upload_part(key, upload_id, number, body).await?
                }
            };
            Ok(UploadedPart { number, etag })
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn read_piece(file: &std::fs::File, offset: u64, len: u64) -> Result<Bytes, StoreError> {
    let mut buf = vec![0u8; len as usize];
    blocking(|| file.read_exact_at(&mut buf, offset))
        .map_err(|e| StoreError::Other(format!("reading the staging file: {e}")))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_copies_the_old_bytes_and_uploads_only_the_new_ones() {
        let mib = 1u64 << 20;
        let plan = plan_parts(101 * mib, 8 * mib, 100 * mib, &RangeSet::default());
        assert_eq!(
            plan,
            vec![
                PlannedPart::Copy(0, 100 * mib),
                PlannedPart::Upload(100 * mib, 101 * mib)
            ]
        );
        // A 4 KiB patch in the middle: one uploaded part around it, copies on both sides.
        let mut written = RangeSet::default();
        written.insert(50 * mib, 50 * mib + 4096);
        let plan = plan_parts(100 * mib, 8 * mib, 100 * mib, &written);
        assert_eq!(
            plan,
            vec![
                PlannedPart::Copy(0, 50 * mib),
                PlannedPart::Upload(50 * mib, 58 * mib),
                PlannedPart::Copy(58 * mib, 100 * mib)
            ]
        );
        // Every non-last part is at least the minimum, and the parts tile the file.
        let mut written = RangeSet::default();
        for i in 0..30 {
            written.insert(i * 7 * mib + 3, i * 7 * mib + 9);
        }
        let plan = plan_parts(230 * mib, 8 * mib, 200 * mib, &written);
        let mut at = 0;
        for (i, p) in plan.iter().enumerate() {
            let (PlannedPart::Copy(a, b) | PlannedPart::Upload(a, b)) = *p;
            assert_eq!(a, at);
            assert!(b - a >= MIN_PART_SIZE || i == plan.len() - 1, "{p:?}");
            if let PlannedPart::Copy(..) = p {
                assert!(!written.overlaps(a, b) && b <= 200 * mib);
            }
            at = b;
        }
        assert_eq!(at, 230 * mib);
    }

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

    #[test]
    fn part_size_keeps_huge_objects_within_ten_thousand_parts() {
        assert_eq!(part_size_for(1 << 30, 8 << 20), 8 << 20);
        let five_tib = 5u64 << 40;
        let p = part_size_for(five_tib, 8 << 20);
        assert!(five_tib.div_ceil(p) <= 10_000);
        assert_eq!(part_size_for(100, 1 << 20), MIN_PART_SIZE);
    }
}
