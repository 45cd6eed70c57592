//! Writing: every change to a file lands in a staging file in the cache directory first; the
//! object is uploaded from it when the program flushes, fsyncs or closes (PutObject for small
//! files, a multipart upload read back part by part otherwise), and those calls succeed only
//! once the bucket holds the new object. When the upload fails, the multipart upload is
//! aborted and the staging file moves to `recovery/` with a log line naming it and the key.
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

use super::error::FsError;
use super::progress::{Tracked, UploadProgress};
use super::ranges::RangeSet;
use crate::store::{ByteRange, Metadata, ObjectInfo, ObjectStore, StoreError, UploadedPart};

/// Largest number of parts S3 accepts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct WriteTuning {
    pub part_size: u64,
    pub upload_concurrency: usize,
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

/// The version of the object a staging copy was made against, for conflict checks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Base {
    /// The object did not exist (a new file).
    Absent,
    /// The object had this ETag.
    Etag(String),
    /// Not known (nothing to compare with).
    Unknown,
}

/// The cache directory: `staging/` for files being written, `recovery/` for the bytes of
/// uploads that failed. Space used by staging files is capped.
pub struct CacheDir {
    staging: PathBuf,
    recovery: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    next: AtomicU64,
    /// Share of the filesystem that must stay free.
    min_free_ratio: f64,
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
        Ok(CacheDir {
            staging,
            recovery,
            max_bytes,
            used: AtomicU64::new(0),
            next: AtomicU64::new(0),
            min_free_ratio: 0.0,
        })
    }

    /// Keeps at least `min_free_ratio` of the cache's filesystem free, whoever else uses it.
    pub fn with_min_free_ratio(mut self, ratio: f64) -> CacheDir {
        self.min_free_ratio = ratio.clamp(0.0, 0.9);
        self
    }

    /// Refuses (ENOSPC) a write that would leave less than the minimum free share of the
    /// cache's filesystem: the local disk is never filled.
    fn check_free_space(&self, more: u64) -> Result<(), FsError> {
        if self.min_free_ratio <= 0.0 {
            return Ok(());
        }
        let Some((free, total)) = filesystem_space(&self.staging) else {
            return Ok(());
        };
        let floor = (total as f64 * self.min_free_ratio) as u64;
        if free.saturating_sub(more) < floor {
            tracing::warn!(
                free,
                wanted = more,
                floor,
                dir = %self.staging.display(),
                "the cache directory's filesystem is nearly full (--cache-min-free); refusing the write with ENOSPC"
            );
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    pub fn recovery_dir(&self) -> &Path {
        &self.recovery
    }

    /// Accounts `more` bytes of staging space, or refuses with ENOSPC when over the cap.
    fn reserve(&self, more: u64) -> Result<(), FsError> {
        self.check_free_space(more)?;
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + more > self.max_bytes {
                tracing::warn!(
                    used,
                    wanted = more,
                    cap = self.max_bytes,
                    "cache directory full (--max-cache-size); refusing the write with ENOSPC"
                );
                return Err(FsError::NoSpace);
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
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// A multipart upload that runs while a new file is written sequentially: every part that
/// the writer has moved past goes up in the background.
struct StreamingUpload {
    id: String,
    part: u64,
    done: Vec<UploadedPart>,
    in_flight: VecDeque<JoinHandle<Result<UploadedPart, StoreError>>>,
    /// Bytes below this offset belong to parts already started; they must not change.
    frozen: u64,
}

impl StreamingUpload {
    /// Starts uploading `[start, start + len)` of the staging file as the part it belongs to.
    fn start_part(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        file: &std::fs::File,
        start: u64,
        len: u64,
    ) -> Result<(), StoreError> {
        let number = (start / self.part) as u32 + 1;
        let body = read_piece(file, start, len)?;
        let (store, key, id) = (store.clone(), key.to_string(), self.id.clone());
        self.in_flight.push_back(tokio::spawn(async move {
            let etag = store.upload_part(&key, &id, number, body).await?;
            Ok(UploadedPart { number, etag })
        }));
        Ok(())
    }

    /// Stops the upload: cancels parts in flight and asks the store to drop what it has.
    fn abandon(self, store: &Arc<dyn ObjectStore>, key: &str, why: &str) {
        tracing::debug!(
            key,
            why,
            "streaming upload abandoned; the whole file uploads at close"
        );
        for handle in &self.in_flight {
            handle.abort();
        }
        let (store, key, id) = (store.clone(), key.to_string(), self.id);
        tokio::spawn(async move {
            if let Err(e) = store.abort_multipart(&key, &id).await {
                tracing::warn!(key, error = %e, "could not abort an abandoned multipart upload");
            }
        });
    }
}

/// Largest part copied server-side in one UploadPartCopy (S3 allows 5 GiB).
const COPY_PART: u64 = 512 << 20;
/// Largest ranged GET that fills a staging file.
const FILL_PIECE: u64 = 8 << 20;

/// The object a staging copy mirrors: bytes of `[0, len)` not in `local` still come from it
/// (ranged GETs pinned by its ETag), and runs nobody changed are copied server-side at upload.
struct Source {
    key: String,
    etag: String,
    /// Bytes at the start of the file that may still come from the object (truncation
    /// shortens it; bytes beyond it live in the staging file only).
    len: u64,
    /// Offsets below `len` that the staging file holds (fetched or written).
    local: RangeSet,
    /// Offsets below `len` that a program changed.
    written: RangeSet,
}

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
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    reserved: u64,
    /// Bytes differ from what the bucket holds.
    dirty: bool,
    /// An upload failed and the program was told; the bytes are in recovery.
    failed: bool,
    /// Started empty (new file or O_TRUNC): sequential writes may stream parts.
    fresh: bool,
    streaming: Option<StreamingUpload>,
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
        if !self.failed {
            let _ = std::fs::remove_file(&self.path);
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
        let key_for_progress = key.clone();
        let n = cache.next.fetch_add(1, Ordering::Relaxed);
        let path = cache.staging.join(format!("{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error)?;
        Ok(Staged {
            cache,
            key,
            path,
            file,
            size: 0,
            reserved: 0,
            dirty: true,
            failed: false,
            fresh: true,
            streaming: None,
            handles: 0,
            metadata,
            modified: std::time::SystemTime::now(),
            source: None,
            base: Base::Absent,
            progress: Arc::new(UploadProgress::new(&key_for_progress)),
            tracked: None,
        })
    }

    /// `store`, wrapped so that what it uploads or copies is credited to this file's progress.
    fn tracked(&mut self, store: &Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        let progress = &self.progress;
        self.tracked
            .get_or_insert_with(|| {
                Arc::new(Tracked {
                    inner: store.clone(),
                    progress: progress.clone(),
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
        let mut staged = Staged::empty(cache, info.key.clone(), info.metadata.clone())?;
        staged.file.set_len(info.size).map_err(io_error)?;
        staged.size = info.size;
        staged.dirty = false;
        staged.fresh = false;
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
    fn reserve(&mut self, more: u64) -> Result<(), FsError> {
        self.cache.reserve(more)?;
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
                self.reserve(to - at)?;
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
                self.file.write_all_at(&data, at).map_err(io_error)?;
                if let Some(src) = &mut self.source {
                    src.local.insert(at, to);
                }
                at = to;
            }
        }
        self.settle();
        Ok(())
    }

    /// The file was renamed (its object copied to `key`, now at `etag`).
    pub fn retarget(&mut self, key: &str, etag: &str) {
        self.key = key.to_string();
        *self.progress.key.lock().unwrap_or_else(|e| e.into_inner()) = key.to_string();
        if let Some(src) = &mut self.source {
            src.key = key.to_string();
            src.etag = etag.to_string();
        }
    }

    /// Whether a listing of the bucket may not show this file although programs see it: new,
    /// never uploaded, and not deleted.
    pub fn only_local(&self) -> bool {
        self.base == Base::Absent && self.dirty
    }

    /// Makes the staging copy durable on local disk (async write-back's promise at close).
    pub fn sync_to_disk(&self) -> Result<(), FsError> {
        self.file.sync_data().map_err(io_error)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file was unlinked while open: like a local file, its content goes when the last
    /// handle closes, and nothing is uploaded.
    pub fn discard(&mut self) {
        self.dirty = false;
        self.progress.pending.store(false, Ordering::Relaxed);
        self.fresh = false;
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        if self.failed {
            return Err(FsError::Store(StoreError::Other(
                "an earlier upload of this file failed; its bytes are in recovery".into(),
            )));
        }
        let end = offset + data.len() as u64;
        self.reserve(data.len() as u64)?;
        if let Err(e) = self.file.write_all_at(data, offset) {
            self.settle();
            return Err(io_error(e));
        }
        self.size = self.size.max(end);
        if let Some(src) = &mut self.source {
            let changed_end = end.min(src.len);
            if offset < changed_end {
                src.local.insert(offset, changed_end);
                src.written.insert(offset, changed_end);
            }
        }
        self.dirty = true;
        self.progress.pending.store(true, Ordering::Relaxed);
        self.progress.total.store(self.size, Ordering::Relaxed);
        self.modified = std::time::SystemTime::now();
        self.settle();
        Ok(data.len() as u32)
    }

    /// After a write at `offset`: keeps a streaming upload of a sequentially written new
    /// file going (starting parts the writer has moved past, waiting when too many are in
    /// flight), or abandons it when the write went back into uploaded parts. Never fails the
    /// write: whatever the stream does not cover is uploaded from the staging file at close.
    pub async fn stream_parts(
        &mut self,
        offset: u64,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) {
        let store = &self.tracked(store);
        if self.streaming.as_ref().is_some_and(|s| offset < s.frozen) {
            if let Some(stream) = self.streaming.take() {
                stream.abandon(store, &self.key, "a write went back into uploaded parts");
            }
            self.fresh = false;
            return;
        }
        let part = tuning.part_size.max(MIN_PART_SIZE);
        if !self.fresh || self.failed || self.size < 2 * part {
            // Small files go up in one PUT at close; wait until a part is surely not the last.
            return;
        }
        if self.streaming.is_none() {
            match store.create_multipart(&self.key, &self.headers()).await {
                Ok(id) => {
                    self.streaming = Some(StreamingUpload {
                        id,
                        part,
                        done: Vec::new(),
                        in_flight: VecDeque::new(),
                        frozen: 0,
                    })
                }
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "no streaming upload; the file uploads at close");
                    self.fresh = false;
                    return;
                }
            }
        }
        let Some(mut stream) = self.streaming.take() else {
            return;
        };
        // Start every part that lies wholly below the writer, keeping one part of slack so
        // that the last part is never smaller than the minimum.
        while stream.frozen + 2 * stream.part <= self.size
            && (stream.done.len() + stream.in_flight.len()) < (MAX_PARTS as usize - 1)
        {
            while stream.in_flight.len() >= tuning.upload_concurrency.max(1) {
                match stream.in_flight.pop_front() {
                    Some(handle) => match handle.await {
                        Ok(Ok(done)) => stream.done.push(done),
                        Ok(Err(e)) => {
                            stream.abandon(store, &self.key, &format!("a part failed: {e}"));
                            self.fresh = false;
                            return;
                        }
                        Err(e) => {
                            stream.abandon(store, &self.key, &format!("a part task failed: {e}"));
                            self.fresh = false;
                            return;
                        }
                    },
                    None => break,
                }
            }
            let (start, len) = (stream.frozen, stream.part);
            if let Err(e) = stream.start_part(store, &self.key, &self.file, start, len) {
                stream.abandon(store, &self.key, &format!("reading the staging file: {e}"));
                self.fresh = false;
                return;
            }
            stream.frozen += stream.part;
        }
        self.streaming = Some(stream);
    }

    /// Finishes a streaming upload: waits for its parts, uploads the rest from the staging
    /// file, completes. Any failure aborts it.
    async fn finish_streaming(
        &mut self,
        mut stream: StreamingUpload,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<String, StoreError> {
        let mut failure = None;
        // The last part or two start at once, next to those still in flight.
        let rest = self.size - stream.frozen;
        if rest > 0 && rest <= 2 * stream.part {
            let mut start = stream.frozen;
            while start < self.size && failure.is_none() {
                let len = stream.part.min(self.size - start);
                if let Err(e) = stream.start_part(store, &self.key, &self.file, start, len) {
                    failure = Some(e);
                }
                start += len;
            }
            stream.frozen = self.size;
        }
        while let Some(handle) = stream.in_flight.pop_front() {
            match handle.await {
                Ok(Ok(done)) => stream.done.push(done),
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(StoreError::Other(format!("a part task failed: {e}"))),
            }
        }
        let parts = match failure {
            Some(e) => Err(e),
            None => send_parts(
                store,
                &self.key,
                &stream.id,
                tile(stream.frozen, self.size, stream.part, PlannedPart::Upload),
                stream.done.len() as u32 + 1,
                PartSources::file(&self.file),
                tuning.upload_concurrency,
            )
            .await
            .map(|mut rest| {
                stream.done.append(&mut rest);
                stream.done
            }),
        };
        complete_or_abort(store, &self.key, &stream.id, parts).await
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
        self.fill(offset, offset + n as u64, store).await?;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io_error)?;
        Ok(Bytes::from(buf))
    }

    pub fn truncate(&mut self, size: u64, store: &Arc<dyn ObjectStore>) -> Result<(), FsError> {
        if self.streaming.as_ref().is_some_and(|s| size < s.frozen) {
            if let Some(stream) = self.streaming.take() {
                stream.abandon(store, &self.key, "truncated into uploaded parts");
            }
            self.fresh = false;
        }
        if size > self.size {
            self.reserve(size - self.size)?;
        }
        self.file.set_len(size).map_err(io_error)?;
        if let Some(src) = &mut self.source {
            if size < src.len {
                src.len = size;
                src.local.clip(size);
                src.written.clip(size);
            }
        }
        self.size = size;
        self.dirty = true;
        self.modified = std::time::SystemTime::now();
        self.settle();
        Ok(())
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
        if !self.dirty {
            tracing::debug!(key = %self.key, "nothing to upload: unchanged since the last upload");
            return Ok(None);
        }
        tracing::debug!(key = %self.key, size = self.size, streaming = self.streaming.is_some(), "uploading");
        if self.failed {
            return Err(FsError::Store(StoreError::Other(
                "an earlier upload of this file failed; its bytes are in recovery".into(),
            )));
        }
        let over_source = self.source.as_ref().is_some_and(|s| s.len > 0);
        let result = match self.check_conflict(store, tuning.conflict).await {
            Err(e) => {
                if let Some(stream) = self.streaming.take() {
                    stream.abandon(store, &self.key, "conflict");
                }
                Err(e)
            }
            Ok(()) => match self.streaming.take() {
                Some(stream) => self.finish_streaming(stream, store, tuning).await,
                None if over_source => self.upload_over_source(store, tuning).await,
                None => {
                    let headers = self.headers();
                    upload_file(store, &self.key, &self.file, self.size, &headers, tuning).await
                }
            },
        };
        // Whatever happened, the next change starts from a known state: no streaming.
        self.fresh = false;
        match result {
            Ok(etag) => {
                tracing::debug!(key = %self.key, size = self.size, %etag, "uploaded");
                self.dirty = false;
                self.progress.pending.store(false, Ordering::Relaxed);
                self.base = Base::Etag(etag.clone());
                self.now_mirrors(&etag);
                Ok(Some(etag))
            }
            Err(e) => {
                self.failed = true;
                // The recovery copy should be whole: fetch what was never read, if the
                // source still answers.
                let whole = self.fill(0, self.size, store.as_ref()).await.is_ok();
                let kept = self.keep_for_recovery();
                tracing::error!(
                    key = %self.key,
                    error = %e,
                    recovery = %kept,
                    complete = whole,
                    "upload failed: the program was told (close/fsync error); the written bytes are kept{}",
                    if whole { "" } else { " (bytes never read from the old object are zeros there; the old object is still in the bucket)" }
                );
                Err(FsError::Store(e))
            }
        }
    }

    /// After an upload the bucket holds exactly this file: it becomes the new source, so
    /// a later change uploads only what differs from it.
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
            return upload_file(store, &self.key, &self.file, self.size, &headers, tuning).await;
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
                file: Some(&self.file),
            },
            tuning.upload_concurrency,
        )
        .await;
        complete_or_abort(store, key, upload, parts).await
    }

    fn keep_for_recovery(&mut self) -> String {
        let name = super::names::safe_file_name(&self.key);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let target = self.cache.recovery.join(format!("{stamp}-{name}"));
        match std::fs::rename(&self.path, &target) {
            Ok(()) => {
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

async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    file: &std::fs::File,
    size: u64,
    metadata: &Metadata,
    tuning: WriteTuning,
) -> Result<String, StoreError> {
    let part = part_size_for(size, tuning.part_size);
    if size <= part {
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
        PartSources::file(file),
        tuning.upload_concurrency,
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
    /// For `Upload` parts: the staging file.
    pub file: Option<&'a std::fs::File>,
}

impl<'a> PartSources<'a> {
    pub fn file(file: &'a std::fs::File) -> Self {
        PartSources {
            object: None,
            file: Some(file),
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
                    let file = from.file.ok_or_else(|| missing("file"))?;
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
    file.read_exact_at(&mut buf, offset)
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
        assert!(cache.reserve(4096).is_ok(), "well above the floor");
        let err = cache.reserve(2 * margin).unwrap_err();
        assert_eq!(err.errno(), libc::ENOSPC);
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
