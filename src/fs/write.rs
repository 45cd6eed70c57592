//! Writing: every change to a file goes to a staging file in the cache directory (a new file
//! written from start to end passes through part buffers on the way, see `streaming`); the
//! object is uploaded when the program flushes, fsyncs or closes (PutObject for small files, a
//! multipart upload otherwise, see `upload` and `parts`), and those calls succeed only once the
//! bucket holds the new object. When the upload fails, the multipart upload is aborted and the
//! staging file moves to `recovery/TIME/PATH` with a log line naming it and the key.
//!
//! A staging copy (`Staged`) is a state machine: its `StagedState` (documented in `journal`,
//! which records it beside the bytes) changes only through the transitions defined in this
//! file, each named for what happened: `mark_written`, `acknowledge`, `begin_upload`,
//! `uploaded`, `upload_failed`, `unlink`. The streaming fields (`tail`, `sealed`, `landing`,
//! `streaming`) are how bytes travel, not where the file stands.
//!
//! An existing object opened for writing is not downloaded: the staging file starts sparse and
//! fetches only the ranges a program reads (ranged GETs pinned by ETag). At upload, runs the
//! program did not change are copied server-side (UploadPartCopy), so appending 1 MiB to a
//! 10 GiB object uploads about 1 MiB.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::blocking::blocking;
use super::error::FsError;
use super::journal::{Base, JournalEntry, Record, Source, StagedState};

mod cache_dir;
mod content;
mod parts;
mod streaming;
mod upload;
use super::progress::{Tracked, UploadProgress, UploadTracking};
use super::ranges::RangeSet;
use crate::store::{Metadata, ObjectInfo, ObjectStore, StoreError};
pub use cache_dir::{files_below, filesystem_space, CacheDir, UploadBudget, UploadPermit};
pub use parts::{
    complete_or_abort, part_size_for, plan_parts, send_parts, tile, PartSources, PlannedPart,
    MIN_PART_SIZE,
};
use parts::{read_piece, MAX_PARTS};
use streaming::StreamPath;

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

/// Largest ranged GET that fills a staging file.
const FILL_PIECE: u64 = 8 << 20;

/// One file being written: its staging copy and what is known about it.
pub struct Staged {
    /// The staging file and the cache space it holds.
    disk: StagingFile,
    pub key: String,
    size: u64,
    /// Where the copy stands on its way to the bucket (see `StagedState`); every change of
    /// it goes through one of the named transitions below and is written to the journal.
    state: StagedState,
    /// The journal record, the upload's progress and the store uploads go through.
    pub record: UploadRecord,
    /// How the bytes of a file written from start to end travel while it is written.
    stream: StreamPath,
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
}

/// Where a staging copy's bytes live: its data file (or its recovery copy after a failure)
/// in the cache directory, and the cache space reserved for what it holds.
struct StagingFile {
    cache: Arc<CacheDir>,
    path: PathBuf,
    file: std::fs::File,
    reserved: u64,
}

/// What is recorded about a staging copy's way to the bucket: its journal record, what the
/// bucket has received of the current upload (for `pailfs status`), and the store uploads go
/// through (counting into `progress`; made once, on first use).
pub struct UploadRecord {
    journal: Arc<JournalEntry>,
    pub progress: Arc<UploadProgress>,
    tracked: Option<Arc<dyn ObjectStore>>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.disk.cache.release(self.disk.reserved);
        if self.state != StagedState::Failed {
            self.disk
                .cache
                .journal
                .retire(&self.disk.path, &self.disk.file);
            self.record.journal.remove_record();
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
        let staged = Staged::created(cache, key, metadata, StagedState::Writing)?;
        staged.persist(false)?;
        Ok(staged)
    }

    /// A new staging entry in `state`, its data file empty; the caller writes its record once
    /// it is complete.
    fn created(
        cache: Arc<CacheDir>,
        key: String,
        metadata: Metadata,
        state: StagedState,
    ) -> Result<Staged, FsError> {
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
        let (journal, file) = cache.journal.create_entry(record).map_err(io_error)?;
        Ok(Staged::assemble(
            cache,
            key,
            Arc::new(journal),
            file,
            state,
            metadata,
        ))
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
            disk: StagingFile {
                cache,
                path: journal.data.clone(),
                file,
                reserved: 0,
            },
            record: UploadRecord {
                journal,
                progress: Arc::new(UploadProgress::new(&key)),
                tracked: None,
            },
            key,
            size: 0,
            state,
            stream: StreamPath::new(),
            handles: 0,
            metadata,
            modified: std::time::SystemTime::now(),
            source: None,
            base: Base::Absent,
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
        staged.stream.streamable = false;
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
        staged.disk.cache.used.fetch_add(held, Ordering::AcqRel);
        staged.disk.reserved = held;
        staged
            .record
            .progress
            .pending
            .store(true, Ordering::Relaxed);
        staged.record.progress.total.store(size, Ordering::Relaxed);
        staged.persist(true)?;
        Ok(staged)
    }

    /// Writes the journal record of this copy as it is now; `durable` fsyncs it (a state a
    /// program is told about). The multipart upload id is kept as the store wrapper noted it.
    fn persist(&self, durable: bool) -> Result<(), FsError> {
        let headers = self.headers();
        self.record.journal
            .update(durable, |r| {
                r.key = self.key.clone();
                r.path = self.disk.cache.path_of(&self.key);
                r.state = self.state;
                r.base = self.base.clone();
                r.metadata = headers;
                r.size = self.size;
                r.source = self.source.clone();
            })
            .map_err(|e| {
                tracing::error!(record = %self.disk.path.display(), error = %e, "could not write the staging journal");
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
        blocking(|| self.disk.file.sync_data()).map_err(io_error)?;
        if self.state == StagedState::Writing {
            self.state = StagedState::Closed;
        }
        self.persist(true)
    }

    /// Transition: an upload starts. An acknowledged copy is `Uploading` until it ends (a
    /// crash meanwhile uploads it again); an unacknowledged one stays `Writing` (a crash
    /// meanwhile sends it to recovery: its program was never told it was saved).
    fn begin_upload(&mut self) {
        if self.state == StagedState::Closed {
            self.state = StagedState::Uploading;
            let _ = self.persist(false);
        }
    }

    /// Transition: the bucket holds exactly these bytes (as `etag`). The copy is `Clean` and
    /// becomes the source of later changes, so that they upload only what differs.
    pub(super) fn uploaded(&mut self, etag: &str) {
        tracing::debug!(key = %self.key, size = self.size, %etag, "uploaded");
        self.stream.streamable = self.size == 0;
        self.state = StagedState::Clean;
        self.record.progress.pending.store(false, Ordering::Relaxed);
        self.base = Base::Etag(etag.to_string());
        self.take_uploaded_as_source(etag);
        let _ = self.persist(false);
    }

    /// Transition: an upload failed and its program is told. The bytes move to `recovery/`
    /// (made as whole as possible first: the part in memory lands, bytes never read are
    /// fetched if the old object still answers), and the copy refuses further changes.
    async fn upload_failed(&mut self, error: &StoreError, store: &dyn ObjectStore) {
        self.state = StagedState::Failed;
        let landed = self.land().await.is_ok();
        let whole = landed && self.fill(0, self.size, store).await.is_ok();
        let kept = self.keep_for_recovery();
        tracing::error!(
            key = %self.key,
            %error,
            recovery = %kept,
            complete = whole,
            "upload failed: the program was told (close/fsync error); the written bytes are kept{}",
            if !landed { " (a part could not be written to the staging file; see the error before)" }
            else if whole { "" }
            else { " (bytes never read from the old object are zeros there; the old object is still in the bucket)" }
        );
    }

    /// Transition: the name was removed while the file is open (unlink, or a rename over
    /// it). The handles keep reading and writing these bytes; nothing is uploaded, and a
    /// multipart upload in flight is aborted.
    pub fn unlink(&mut self, store: &Arc<dyn ObjectStore>) {
        let store = self.tracked(store);
        self.stop_streaming(&store, "the file was unlinked");
        self.state = StagedState::Unlinked;
        self.record.progress.pending.store(false, Ordering::Relaxed);
        let _ = self.persist(false);
    }

    /// `store`, wrapped so that what it uploads or copies is credited to this file's progress
    /// and every multipart upload it starts is in the journal until it ends.
    fn tracked(&mut self, store: &Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        let (progress, journal) = (&self.record.progress, &self.record.journal);
        self.record
            .tracked
            .get_or_insert_with(|| {
                Arc::new(Tracked::over(
                    store.clone(),
                    UploadTracking {
                        progress: progress.clone(),
                        journal: journal.clone(),
                    },
                ))
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
        blocking(|| staged.disk.file.set_len(info.size)).map_err(io_error)?;
        staged.size = info.size;
        // An empty object appended to streams like a new file.
        staged.stream.streamable = info.size == 0;
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

    /// The file was renamed (its object copied to `key`, now at `etag`). The journal says so
    /// (durably) before the rename returns, so a crash cannot upload to the old name.
    pub fn retarget(&mut self, key: &str, etag: &str) -> Result<(), FsError> {
        self.key = key.to_string();
        *self
            .record
            .progress
            .key
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = key.to_string();
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
}
