//! Files being written, as the filesystem sees them: which inode has a staging copy, the
//! handles on it, the upload at close (or after it, with `--write-back=async`), and what
//! happens to a copy whose name goes while it is open (unlink, a rename over it): its handles
//! keep the bytes, and nothing is uploaded. The copy itself (`write::Staged`) owns the bytes
//! and the state machine; this module owns the map from inodes to copies.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::error::FsError;
use super::inode::Ino;
use super::meta::{self, file_attr};
use super::namespace::Caller;
use super::write::{CacheDir, Staged};
use super::{lock, progress, Attr, Fs, Kind, OpenFile, WriteBack};
use crate::store::{Metadata, ObjectInfo, StoreError};

/// How long an async upload waits after the last close before it starts.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// One staging copy, shared by the handles open on it.
pub(super) struct StagedFile {
    copy: tokio::sync::Mutex<Staged>,
    /// What `stat` and listings show of the copy without waiting for its lock (an upload
    /// holds it for as long as it runs). Refreshed whenever a holder of the lock lets go.
    shown: Mutex<Shown>,
}

#[derive(Clone)]
struct Shown {
    size: u64,
    headers: Metadata,
    only_local: bool,
    dirty: bool,
}

impl Shown {
    fn of(staged: &Staged) -> Shown {
        Shown {
            size: staged.size(),
            headers: staged.headers(),
            only_local: staged.only_local(),
            dirty: staged.is_dirty(),
        }
    }
}

/// The lock on a staging copy; letting go of it refreshes what `stat` shows.
pub(super) struct StagedGuard<'a> {
    guard: tokio::sync::MutexGuard<'a, Staged>,
    shown: &'a Mutex<Shown>,
}

impl Deref for StagedGuard<'_> {
    type Target = Staged;
    fn deref(&self) -> &Staged {
        &self.guard
    }
}

impl DerefMut for StagedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Staged {
        &mut self.guard
    }
}

impl Drop for StagedGuard<'_> {
    fn drop(&mut self) {
        *lock(self.shown) = Shown::of(&self.guard);
    }
}

impl StagedFile {
    pub(super) fn new(staged: Staged) -> StagedFile {
        StagedFile {
            shown: Mutex::new(Shown::of(&staged)),
            copy: tokio::sync::Mutex::new(staged),
        }
    }

    pub(super) async fn lock(&self) -> StagedGuard<'_> {
        StagedGuard {
            guard: self.copy.lock().await,
            shown: &self.shown,
        }
    }

    fn shown(&self) -> Shown {
        lock(&self.shown).clone()
    }
}

pub(super) type StagedRef = Arc<StagedFile>;

/// How a staging copy starts when a file is opened for writing.
pub(super) enum Start {
    /// A copy of the object (or empty, when there is none yet).
    Existing,
    /// Empty (O_TRUNC, truncate to 0), keeping the object's metadata.
    Truncated,
    /// A new file, with these metadata headers.
    New(Metadata),
}

/// The files being written, as the filesystem holds them: which inode has a staging copy,
/// the copies whose name is gone while handles hold them, the cache directory they live in,
/// the background uploads running at once, and every copy's upload progress.
pub(super) struct Staging {
    pub staged: Mutex<HashMap<Ino, StagedRef>>,
    /// Staging copies whose name is gone (unlinked or replaced) while handles hold them.
    pub unlinked: Mutex<HashMap<Ino, StagedRef>>,
    /// The cache directory: present on a writable mount.
    pub cache: Option<Arc<CacheDir>>,
    /// Background uploads (`--write-back=async`) running at once.
    pub background_uploads: Arc<tokio::sync::Semaphore>,
    /// Upload progress of every staging copy still alive.
    pub progress: Mutex<Vec<std::sync::Weak<progress::UploadProgress>>>,
}

impl Staging {
    pub fn new(uploads_at_once: usize) -> Staging {
        Staging {
            staged: Mutex::new(HashMap::new()),
            unlinked: Mutex::new(HashMap::new()),
            cache: None,
            background_uploads: Arc::new(tokio::sync::Semaphore::new(uploads_at_once)),
            progress: Mutex::new(Vec::new()),
        }
    }
}

impl Fs {
    /// Every file being written, taken out of the map so its locks can be awaited.
    pub(super) fn staged_files(&self) -> Vec<(Ino, StagedRef)> {
        lock(&self.writing.staged)
            .iter()
            .map(|(ino, s)| (*ino, s.clone()))
            .collect()
    }

    /// Metadata of a file written here that has no earlier version to take it from.
    pub(super) fn default_file_headers(&self) -> Metadata {
        self.new_file_headers(self.cfg.file_mode, self.cfg.uid, self.cfg.gid)
    }

    /// Whether `staged` is still the staging copy of `ino` (not finished and dropped).
    pub(super) fn is_current(&self, ino: Ino, staged: &StagedRef) -> bool {
        lock(&self.writing.staged)
            .get(&ino)
            .is_some_and(|current| Arc::ptr_eq(current, staged))
    }

    pub(super) fn staged_of(&self, ino: Ino) -> Option<StagedRef> {
        lock(&self.writing.staged).get(&ino).cloned()
    }

    /// The staging copy behind a handle, if it is one.
    fn staged_of_handle(&self, fh: u64) -> Result<Option<StagedRef>, FsError> {
        let file = lock(&self.handles.files)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        Ok(match file.as_ref() {
            OpenFile::Staged { staged, .. } => Some(staged.clone()),
            OpenFile::Object { .. } => None,
        })
    }

    /// Attributes of a file this mount is writing or has just written, from the metadata it
    /// is (or was) uploaded with.
    pub(super) fn written_attr(
        &self,
        ino: Ino,
        size: u64,
        etag: Option<String>,
        headers: &Metadata,
    ) -> Attr {
        let info = ObjectInfo {
            key: String::new(),
            size,
            last_modified: SystemTime::now(),
            etag: String::new(),
            metadata: headers.clone(),
            storage_class: None,
        };
        Attr {
            etag,
            ..file_attr(ino, &info, &self.cfg)
        }
    }

    /// Attributes of a file with a staging copy (also one whose name is gone but that is
    /// still open), without waiting for an upload in progress.
    pub(super) fn staged_attr(&self, ino: Ino) -> Option<Attr> {
        let staged = self
            .staged_of(ino)
            .or_else(|| lock(&self.writing.unlinked).get(&ino).cloned())?;
        let shown = staged.shown();
        Some(self.written_attr(ino, shown.size, None, &shown.headers))
    }

    /// Whether the staging copy of `ino` is one the bucket has never had (listings must add
    /// it themselves).
    pub(super) fn is_only_local(&self, staged: &StagedRef) -> bool {
        staged.shown().only_local
    }

    /// Metadata for a new file: its mode and owner, s3fs-style.
    pub(super) fn new_file_headers(&self, perm: u16, uid: u32, gid: u32) -> Metadata {
        let attr = Attr::created(Ino(0), Kind::File, perm, Caller { uid, gid }, 0);
        meta::attr_headers(&attr, &Metadata::new())
    }

    /// Takes a handle on the staging copy of `ino`, creating it when no handle has one yet:
    /// empty when truncating or new, else a copy of the object. Returns the copy and whether
    /// it was already there (joined).
    pub(super) async fn stage(
        &self,
        ino: Ino,
        path: &str,
        start: Start,
    ) -> Result<(StagedRef, bool), FsError> {
        let truncate = !matches!(start, Start::Existing);
        if let Some(staged) = self.staged_of(ino) {
            let mut s = staged.lock().await;
            // The last handle may have finished (and dropped) this copy while we waited for
            // its lock: then it is in the bucket, and a new copy starts from there.
            if self.is_current(ino, &staged) {
                if truncate {
                    s.truncate(0, &self.store).await?;
                }
                s.handles += 1;
                drop(s);
                return Ok((staged, true));
            }
        }
        let cache = self.writable()?.clone();
        let key = self.key_of(path);
        let mut staged = match start {
            Start::New(headers) => Staged::empty(cache, key, headers)?,
            // O_TRUNC keeps the file's mode, owner and xattrs, as a local file would: from
            // the last HEAD when the mount has one (its own changes of metadata and its
            // uploads forget it), else from a HEAD now; never the mount's defaults for a file
            // that exists.
            Start::Truncated => {
                let known = match self.names.meta.last_head(&key) {
                    Some(info) => Some(info),
                    None => match self.store.head(&key).await {
                        Ok(info) => {
                            self.names.meta.put_head(&info);
                            Some(info)
                        }
                        Err(StoreError::NotFound) => None,
                        Err(e) => return Err(e.into()),
                    },
                };
                let headers = match &known {
                    Some(info) => info.metadata.clone(),
                    None => self.default_file_headers(),
                };
                let mut staged = Staged::empty(cache, key, headers)?;
                staged.set_base(known.as_ref().map(|i| i.etag.as_str()));
                staged
            }
            Start::Existing => match self.store.head(&key).await {
                Ok(info) => {
                    self.names.meta.put_head(&info);
                    Staged::over(cache, &info)?
                }
                Err(StoreError::NotFound) => {
                    // Absent: it did not exist when opened.
                    Staged::empty(cache, key, self.default_file_headers())?
                }
                Err(e) => return Err(e.into()),
            },
        };
        staged.handles = 1;
        lock(&self.writing.progress).push(Arc::downgrade(&staged.record.progress));
        let staged = Arc::new(StagedFile::new(staged));
        // Two opens may race to stage the same file: the first one in wins, the other joins
        // it, unless it was finished and dropped meanwhile (then this one goes in).
        loop {
            let existing = {
                let mut map = lock(&self.writing.staged);
                match map.get(&ino) {
                    Some(existing) => existing.clone(),
                    None => {
                        map.insert(ino, staged.clone());
                        return Ok((staged, false));
                    }
                }
            };
            let mut joined = existing.lock().await;
            if self.is_current(ino, &existing) {
                joined.handles += 1;
                drop(joined);
                return Ok((existing, true));
            }
        }
    }

    /// A new handle on a staging copy.
    pub(super) fn open_staged(&self, ino: Ino, staged: StagedRef) -> u64 {
        let fh = self.new_fh();
        lock(&self.handles.files).insert(fh, Arc::new(OpenFile::Staged { ino, staged }));
        fh
    }

    /// Creates `name` in `parent` with permissions `perm` owned by `uid:gid`, and opens it
    /// for writing.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        perm: u16,
        caller: Caller,
    ) -> Result<(Attr, u64), FsError> {
        self.writable()?;
        let (_, path) = self.child(parent, name)?;
        let ino = lock(&self.names.inodes).remember(parent, Kind::File, &path);
        let headers = self.new_file_headers(perm, caller.uid, caller.gid);
        let (staged, _) = self.stage(ino, &path, Start::New(headers)).await?;
        self.names.meta.forget_miss(parent, name);
        let fh = self.open_staged(ino, staged);
        let attr = self.staged_attr(ino).ok_or(FsError::BadHandle)?;
        self.note_path(&path, Some((Kind::File, attr.clone())));
        Ok((attr, fh))
    }

    /// mknod(2) of a regular file: an empty file, created and closed (so uploaded as a close
    /// would upload it).
    pub async fn create_empty(
        self: &Arc<Self>,
        parent: Ino,
        name: &str,
        perm: u16,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        let (attr, fh) = self.create(parent, name, perm, caller).await?;
        self.release(fh).await?;
        Ok(attr)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let staged = self.staged_of_handle(fh)?.ok_or(FsError::BadHandle)?;
        let mut staged = staged.lock().await;
        staged
            .write(offset, data, &self.store, self.cfg.write)
            .await
    }

    /// Truncates or extends a file to `size` (truncate(2), ftruncate(2), O_TRUNC).
    pub async fn set_size(&self, ino: Ino, size: u64) -> Result<Attr, FsError> {
        self.writable()?;
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let open = self
            .staged_of(ino)
            .or_else(|| lock(&self.writing.unlinked).get(&ino).cloned());
        if let Some(staged) = open {
            // ftruncate(2), or truncate(2) of a file open elsewhere: change the staging copy;
            // its handles upload it. Unless the last handle finished (uploaded and dropped)
            // the copy while this waited for its lock: a change to it would reach no one.
            let mut s = staged.lock().await;
            let unlinked = lock(&self.writing.unlinked)
                .get(&ino)
                .is_some_and(|u| Arc::ptr_eq(u, &staged));
            if self.is_current(ino, &staged) || unlinked {
                s.truncate(size, &self.store).await?;
                drop(s);
                return self.getattr(ino).await;
            }
        }
        // truncate(2) on a path: no handle will flush it, so stage, change, upload now.
        let start = if size == 0 {
            Start::Truncated
        } else {
            Start::Existing
        };
        let (staged, _) = self.stage(ino, &node.path, start).await?;
        staged.lock().await.truncate(size, &self.store).await?;
        self.finish_handle(ino, &staged, true).await?;
        self.getattr(ino).await
    }

    /// close(2): uploads the file's changes, if any, and reports the result. With
    /// `--write-back=async` it only makes sure the staging copy is on disk and the journal
    /// says so (a crash from then on still uploads it); the upload follows in the background
    /// after the last close.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        if self.cfg.write_back == WriteBack::Async {
            if let Some(staged) = self.staged_of_handle(fh).ok().flatten() {
                staged.lock().await.acknowledge().await?;
            }
            return Ok(());
        }
        self.fsync(fh).await
    }

    /// fsync(2): uploads the file's changes, if any, whatever the write-back mode.
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        let file = lock(&self.handles.files).get(&fh).cloned();
        let Some(file) = file else {
            return Ok(());
        };
        let OpenFile::Staged { ino, staged } = file.as_ref() else {
            return Ok(());
        };
        let mut staged = staged.lock().await;
        self.upload_staged(*ino, &mut staged).await
    }

    /// Uploads a staging copy if it changed, and remembers what the bucket now holds.
    pub(super) async fn upload_staged(&self, ino: Ino, staged: &mut Staged) -> Result<(), FsError> {
        let (size, headers) = (staged.size(), staged.headers());
        if let Some(etag) = staged.upload(&self.store, self.cfg.write).await? {
            self.handles.cached_etags.insert(ino, etag.clone());
            self.names.meta.forget_head(&staged.key);
            let attr = self.written_attr(ino, size, Some(etag), &headers);
            if let Some(path) = staged.key.strip_prefix(self.prefix.as_str()) {
                self.note_path(path, Some((Kind::File, attr.clone())));
            }
            self.names.meta.put_attr(attr);
        }
        Ok(())
    }

    /// Forgets a staging copy no handle holds any more (it stays in the map only while it
    /// is still the copy of `ino`).
    fn drop_staged(&self, ino: Ino, staged: &StagedRef) {
        let mut map = lock(&self.writing.staged);
        if map.get(&ino).is_some_and(|s| Arc::ptr_eq(s, staged)) {
            map.remove(&ino);
        }
        drop(map);
        let mut unlinked = lock(&self.writing.unlinked);
        if unlinked.get(&ino).is_some_and(|s| Arc::ptr_eq(s, staged)) {
            unlinked.remove(&ino);
        }
    }

    /// Drops one handle of a staged file; the last one uploads what is still unsaved.
    pub(super) async fn finish_handle(
        &self,
        ino: Ino,
        staged: &StagedRef,
        upload: bool,
    ) -> Result<(), FsError> {
        let mut s = staged.lock().await;
        s.handles = s.handles.saturating_sub(1);
        if s.handles > 0 {
            return Ok(());
        }
        let result = if upload {
            self.upload_staged(ino, &mut s).await
        } else {
            Ok(())
        };
        self.drop_staged(ino, staged);
        result
    }

    /// `--write-back=async`: drops one handle; after the last one, the upload runs in the
    /// background.
    async fn finish_handle_in_background(
        self: &Arc<Self>,
        ino: Ino,
        staged: &StagedRef,
    ) -> Result<(), FsError> {
        {
            let mut s = staged.lock().await;
            s.handles = s.handles.saturating_sub(1);
            if s.handles > 0 {
                return Ok(());
            }
            if !s.is_dirty() {
                self.drop_staged(ino, staged);
                return Ok(());
            }
        }
        self.upload_in_background(ino, staged.clone());
        Ok(())
    }

    /// Uploads a copy no handle holds, in the background (at most `--max-upload-concurrency`
    /// files at once); a failure keeps the bytes in recovery with a log line (no program is
    /// left to tell).
    pub(super) fn upload_in_background(self: &Arc<Self>, ino: Ino, staged: StagedRef) {
        let fs = self.clone();
        tokio::spawn(async move {
            // Programs often set the mode or mtime of a file right after closing it (tar,
            // cp -p, rsync): waiting a moment lets that change ride along with the upload
            // instead of costing a copy of the object afterwards. The bytes are safe on disk
            // and in the journal meanwhile.
            tokio::time::sleep(SETTLE).await;
            let _permit = fs.writing.background_uploads.clone().acquire_owned().await;
            let mut s = staged.lock().await;
            // Failures are logged (with the recovery path) by the upload itself.
            let _ = fs.upload_staged(ino, &mut s).await;
            if s.handles == 0 {
                fs.drop_staged(ino, &staged);
            }
        });
    }

    /// release(2) of a handle on a staging copy.
    pub(super) async fn release_staged(
        self: &Arc<Self>,
        ino: Ino,
        staged: &StagedRef,
    ) -> Result<(), FsError> {
        if self.cfg.write_back == WriteBack::Async {
            self.finish_handle_in_background(ino, staged).await
        } else {
            self.finish_handle(ino, staged, true).await
        }
    }

    /// The name of `ino` is gone while its file may be open (unlink, or a rename over it):
    /// a staging copy keeps serving its handles, unseen by lookups and listings, uploads
    /// nothing, and goes with its last handle. `before` runs first with the copy locked (the
    /// DELETE or the copy that replaces the object); when it fails, nothing changes.
    pub(super) async fn detach_staged<F>(&self, ino: Ino, before: F) -> Result<(), FsError>
    where
        F: std::future::Future<Output = Result<(), FsError>>,
    {
        let Some(staged) = self.staged_of(ino) else {
            return before.await;
        };
        let mut s = staged.lock().await;
        // The bytes still in the old object are fetched first: once it is gone or replaced,
        // the handles could not read them any more.
        if let Err(e) = s.fill_all(self.store.as_ref()).await {
            tracing::warn!(key = %s.key, error = %e, "the unlinked file's unread bytes could not be fetched; reading them through its open handles fails");
        }
        before.await?;
        s.unlink(&self.store);
        drop(s);
        let mut map = lock(&self.writing.staged);
        if map.get(&ino).is_some_and(|s| Arc::ptr_eq(s, &staged)) {
            map.remove(&ino);
            lock(&self.writing.unlinked).insert(ino, staged.clone());
        }
        Ok(())
    }

    /// Whether `ino` has a staging copy (an open file being written).
    pub fn is_being_written(&self, ino: Ino) -> bool {
        self.staged_of(ino).is_some()
    }

    /// Uploads every file still being written (SIGTERM, or an unmount with files open), so
    /// that nothing written is left behind. A failed upload keeps its bytes in `recovery/`
    /// (and is logged). Returns (files uploaded, files failed).
    pub async fn finish_pending_uploads(&self) -> (usize, usize) {
        let pending = self.staged_files();
        let (mut done, mut failed) = (0, 0);
        for (ino, staged) in pending {
            let mut s = staged.lock().await;
            if !s.is_dirty() {
                continue;
            }
            match self.upload_staged(ino, &mut s).await {
                Ok(()) => done += 1,
                Err(_) => failed += 1,
            }
        }
        (done, failed)
    }

    /// Files whose changes are not all in the bucket yet, with how far their upload is.
    pub fn uploads_in_progress(&self) -> Vec<progress::UploadReport> {
        let mut registry = lock(&self.writing.progress);
        registry.retain(|p| p.strong_count() > 0);
        registry
            .iter()
            .filter_map(|p| p.upgrade())
            .filter(|p| p.pending.load(Ordering::Relaxed))
            .map(|p| p.report())
            .collect()
    }

    /// Bytes of files waiting for their upload.
    pub fn pending_bytes(&self) -> u64 {
        let staged: Vec<StagedRef> = lock(&self.writing.staged).values().cloned().collect();
        staged
            .iter()
            .map(|s| s.shown())
            .filter(|s| s.dirty)
            .map(|s| s.size)
            .sum()
    }

    /// Whether anything written is still waiting for its upload.
    pub fn pending_uploads(&self) -> usize {
        lock(&self.writing.staged).len()
    }
}
