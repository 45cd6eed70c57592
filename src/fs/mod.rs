//! Filesystem semantics over an `ObjectStore`, with no FUSE types: plain inode numbers,
//! handles, offsets and names in; attributes, bytes and `FsError`s out.

pub mod block_cache;
mod block_file;
pub(crate) mod blocking;
mod cache_fill;
pub mod dir;
pub mod error;
mod handles;
pub mod inode;
pub mod journal;
mod listing;
pub mod meta;
mod name_cache;
pub mod names;
pub mod namespace;
mod page_sample;
pub mod progress;
pub mod ranges;
pub mod read;
pub mod read_buffers;
mod recover;
mod rename;
pub mod snapshot;
mod staging;
mod types;
mod walk_ahead;
pub mod write;
pub mod write_buffers;
pub mod xattr;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::store::instrumented::RequestCounters;
use crate::store::{ListRequest, ObjectStore, StoreError};
use block_cache::BlockCache;
use error::FsError;
use handles::Handles;
use inode::{child_path, Ino};
use meta::{dir_attr, file_attr};
use name_cache::NameCache;
use names::check_name;
use read::{ReadShared, ReadTuning, Reader, BUDGET_UNIT};
use staging::{StagedRef, Start};
use write::CacheDir;

pub use types::{Attr, DirSinkEntry, FsConfig, Kind, Special, StatFs, WriteBack};

/// An open file: a reader of the object in the bucket, or a handle on the staging copy of a
/// file being written (which every handle of that inode then reads, so they see one content).
/// The handle holds the copy itself, so that it keeps its bytes when the name goes.
enum OpenFile {
    Object {
        ino: Ino,
        reader: Box<tokio::sync::Mutex<Reader>>,
    },
    Staged {
        ino: Ino,
        staged: StagedRef,
    },
}

impl OpenFile {
    fn ino(&self) -> Ino {
        match self {
            OpenFile::Object { ino, .. } | OpenFile::Staged { ino, .. } => *ino,
        }
    }
}

/// The filesystem: the composition of what the mount knows of names, its open handles, its
/// files being written and its readers' shared state, over one store.
pub struct Fs {
    store: Arc<dyn ObjectStore>,
    counters: Option<Arc<RequestCounters>>,
    prefix: String,
    cfg: FsConfig,
    names: NameCache,
    handles: Handles,
    writing: staging::Staging,
    /// What every reader shares: the read-ahead budget and buffers, the data cache.
    reading: Arc<ReadShared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a few map operations that leave the map consistent even
    // if a panic interrupts between them, so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fs {
    /// `prefix` is the internal path: empty or ending in `/`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        counters: Option<Arc<RequestCounters>>,
        prefix: String,
        cfg: FsConfig,
    ) -> Fs {
        let units = (cfg.max_readahead_memory / BUDGET_UNIT).max(1) as usize;
        let pooled = cfg.max_readahead_memory;
        let uploads_at_once = cfg.write.upload_concurrency.max(1);
        let reading = Arc::new(ReadShared {
            store: store.clone(),
            budget: Arc::new(Semaphore::new(units)),
            pool: Arc::new(read_buffers::BufferPool::new(pooled)),
            tuning: ReadTuning {
                part_size: cfg.read_part_size,
                max_window: cfg.max_read_window,
                small_file_size: cfg.small_file_size,
            },
            blocks: None,
        });
        Fs {
            store,
            counters,
            prefix,
            names: NameCache::new(&cfg),
            handles: Handles::new(cfg.cache_capacity),
            writing: staging::Staging::new(uploads_at_once),
            cfg,
            reading,
        }
    }

    /// Enables writing, staging changes in `cache`.
    pub fn with_cache(mut self, cache: Arc<CacheDir>) -> Fs {
        self.writing.cache = Some(cache);
        self
    }

    /// Keeps what reads fetch in `blocks`, and serves reads from it.
    pub fn with_blocks(mut self, blocks: Arc<BlockCache>) -> Fs {
        self.reading = Arc::new(ReadShared {
            blocks: Some(blocks),
            ..(*self.reading).clone()
        });
        self
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// Store requests (when counted) and reads served, as `name=value` fields.
    pub fn request_summary(&self) -> Option<String> {
        self.counters.as_ref().map(|c| {
            format!(
                "{} {} {} fuse_reads={} fuse_read_bytes={} files_being_written={} cache_bytes={} kernel_names={}",
                c.summary(),
                self.names.meta.summary(),
                self.reading.blocks.as_ref().map_or(String::new(), |b| b.summary()),
                self.handles.reads_served.load(Ordering::Relaxed),
                self.handles.bytes_served.load(Ordering::Relaxed),
                self.pending_uploads(),
                self.writing.cache.as_ref().map_or(0, |c| c.used()),
                self.open_inodes()
            )
        })
    }

    fn node(&self, ino: Ino) -> Result<inode::Node, FsError> {
        lock(&self.names.inodes)
            .get(ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    fn key_of(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }

    fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, path)
        }
    }

    /// Tells the snapshot of `path`'s directory (if one is kept) what `path` is now, after a
    /// change made through this mount: `None` when it is gone.
    fn note_path(&self, path: &str, entry: Option<(Kind, Attr)>) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = lock(&self.names.inodes).peek(Kind::Dir, dir);
        self.names.snapshots.note(dir, name, entry);
    }

    fn new_fh(&self) -> u64 {
        self.handles.new_fh()
    }

    /// Looks `name` up in `parent`, taking a kernel reference on the result.
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        if let Some(answer) = self.lookup_cached(parent, name) {
            return answer;
        }
        let (_, path) = self.child(parent, name)?;
        let key = self.key_of(&path);
        let dir_prefix = format!("{key}/");
        // One HEAD for a file and one single-key LIST for a directory, side by side: never a
        // listing of the whole parent.
        let (head, list) = tokio::join!(
            self.store.head(&key),
            self.store.list(ListRequest {
                prefix: dir_prefix.clone(),
                delimited: true,
                max_keys: 1,
                continuation: None,
            })
        );
        let list = list?;
        let is_dir = !list.objects.is_empty() || !list.prefixes.is_empty();
        let attr = if is_dir {
            if head.is_ok() {
                self.names.odd_keys.report(
                    &key,
                    "is both an object and a directory prefix; the directory is shown",
                );
            }
            let marker = list.objects.iter().find(|o| o.key == dir_prefix);
            let ino = lock(&self.names.inodes).peek(Kind::Dir, &path);
            let attr = match marker {
                Some(marker) => self.marker_attr(ino, marker).await?,
                None => dir_attr(ino, None, &self.cfg),
            };
            lock(&self.names.inodes).remember(parent, Kind::Dir, &path);
            attr
        } else {
            match head {
                Ok(info) => {
                    self.names.meta.put_head(&info);
                    let ino = lock(&self.names.inodes).remember(parent, Kind::File, &path);
                    file_attr(ino, &info, &self.cfg)
                }
                Err(StoreError::NotFound) => {
                    self.names.meta.put_miss(parent, name);
                    return Err(FsError::NotFound);
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.names.meta.put_attr(attr.clone());
        Ok(attr)
    }

    /// Answers a lookup from memory when it can, without waiting on anything (so the FUSE
    /// adapter can reply on its own thread): a file being written, a fresh snapshot of the
    /// parent, a cached miss. `None` when the bucket must be asked (the lookup takes no
    /// kernel reference then).
    pub fn lookup_cached(&self, parent: Ino, name: &str) -> Option<Result<Attr, FsError>> {
        // A name no key can have cannot exist: not found, rather than invalid.
        let path = match self.child(parent, name) {
            Ok((_, path)) => path,
            Err(FsError::Invalid) => return Some(Err(FsError::NotFound)),
            Err(e) => return Some(Err(e)),
        };
        if self.names.meta.is_miss(parent, name) {
            return Some(Err(FsError::NotFound));
        }
        let staged_ino = lock(&self.names.inodes).peek(Kind::File, &path);
        if let Some(attr) = self.staged_attr(staged_ino) {
            lock(&self.names.inodes).remember(parent, Kind::File, &path);
            return Some(Ok(attr));
        }
        // A fresh listing of the parent answers without a request, hits and misses alike.
        match self.names.snapshots.lookup(parent, name) {
            snapshot::Answer::Present(kind, attr, seen) => {
                let ino = lock(&self.names.inodes).remember(parent, kind, &path);
                Some(Ok(self.snapshot_answer(ino, attr, seen)))
            }
            snapshot::Answer::Absent => Some(Err(FsError::NotFound)),
            snapshot::Answer::Unknown => None,
        }
    }

    /// Answers a getattr from memory when it can (see `lookup_cached`).
    pub fn getattr_cached(&self, ino: Ino) -> Option<Result<Attr, FsError>> {
        if let Some(attr) = self.staged_attr(ino) {
            return Some(Ok(attr));
        }
        if let Some(attr) = self.names.meta.attr(ino) {
            return Some(Ok(attr));
        }
        if ino == Ino::ROOT {
            return Some(Ok(dir_attr(ino, None, &self.cfg)));
        }
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(e) => return Some(Err(e)),
        };
        self.snapshot_attr(ino, &node, None).map(Ok)
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        lock(&self.names.inodes).forget(ino, n);
    }

    pub async fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        if let Some(answer) = self.getattr_cached(ino) {
            return answer;
        }
        let node = self.node(ino)?;
        let attr = match node.kind {
            Kind::Dir => {
                let marker = match self.store.head(&self.dir_prefix(&node.path)).await {
                    Ok(info) => Some(info),
                    Err(StoreError::NotFound) => None,
                    Err(e) => return Err(e.into()),
                };
                dir_attr(ino, marker.as_ref(), &self.cfg)
            }
            _ => return self.head_file(ino, &node.path).await,
        };
        self.names.meta.put_attr(attr.clone());
        Ok(attr)
    }

    /// The attributes of `node` from the snapshot of its folder (taken at most `within` ago,
    /// when given), cached with their age.
    fn snapshot_attr(
        &self,
        ino: Ino,
        node: &inode::Node,
        within: Option<Duration>,
    ) -> Option<Attr> {
        if ino == Ino::ROOT {
            return None;
        }
        match self.names.snapshots.lookup(node.parent, node.name()) {
            snapshot::Answer::Present(kind, attr, seen)
                if kind.slot() == node.kind && within.is_none_or(|w| seen.elapsed() <= w) =>
            {
                Some(self.snapshot_answer(ino, attr, seen))
            }
            _ => None,
        }
    }

    /// A snapshot's attributes as those of `ino`, cached with the snapshot's age.
    fn snapshot_answer(&self, ino: Ino, attr: Attr, seen: std::time::Instant) -> Attr {
        let attr = Attr { ino, ..attr };
        self.names.meta.put_attr_seen(attr.clone(), seen);
        attr
    }

    /// The attributes of the file at `path` as the bucket has them now (one HEAD).
    async fn head_file(&self, ino: Ino, path: &str) -> Result<Attr, FsError> {
        let info = self.store.head(&self.key_of(path)).await?;
        self.names.meta.put_head(&info);
        let attr = file_attr(ino, &info, &self.cfg);
        self.names.meta.put_attr(attr.clone());
        Ok(attr)
    }

    /// Opens a file; returns the handle and whether the kernel may keep the pages it cached
    /// at an earlier open (the object has not changed since).
    pub async fn open(
        &self,
        ino: Ino,
        write: bool,
        truncate: bool,
    ) -> Result<(u64, bool), FsError> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if write || self.staged_of(ino).is_some() {
            if write {
                self.writable()?;
            }
            let start = if truncate {
                Start::Truncated
            } else {
                Start::Existing
            };
            let (staged, joined) = self.stage(ino, &node.path, start).await?;
            // Pages the kernel cached stay valid only while they came from the version this
            // copy was made against (another handle's copy: its own writes went through them).
            let keep_cache = joined || {
                let base = staged.lock().await.base_etag().map(str::to_string);
                match base {
                    Some(base) => {
                        let same =
                            self.handles.cached_etags.get(&ino).as_deref() == Some(base.as_str());
                        self.handles.cached_etags.insert(ino, base);
                        same
                    }
                    None => false,
                }
            };
            return Ok((self.open_staged(ino, staged), keep_cache));
        }
        // Close-to-open: what a new handle reads is the version the bucket had at most
        // --content-ttl ago, however long names and attributes are trusted otherwise.
        let recent = self
            .names
            .meta
            .attr_within(ino, self.cfg.content_ttl)
            .or_else(|| self.snapshot_attr(ino, &node, Some(self.cfg.content_ttl)));
        let attr = match recent {
            Some(attr) => attr,
            None => self.head_file(ino, &node.path).await?,
        };
        // The kernel keeps the pages it cached only while they are of that same version.
        let keep_cache = self.handles.cached_etags.get(&ino).as_deref()
            == Some(attr.etag.as_deref().unwrap_or(""));
        let etag = attr.etag.clone().unwrap_or_default();
        self.handles.cached_etags.insert(ino, etag.clone());
        let mut reader = Reader::new(
            self.reading.clone(),
            self.key_of(&node.path),
            etag,
            attr.size,
        );
        // Moving to a newer version is safe only while the kernel holds no page of this one.
        reader.may_repin = !keep_cache;
        let fh = self.new_fh();
        lock(&self.handles.files).insert(
            fh,
            Arc::new(OpenFile::Object {
                ino,
                reader: Box::new(tokio::sync::Mutex::new(reader)),
            }),
        );
        Ok((fh, keep_cache))
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let file = lock(&self.handles.files)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let data = match file.as_ref() {
            OpenFile::Object { reader, .. } => reader.lock().await.read(offset, len).await?,
            OpenFile::Staged { staged, .. } => {
                // Its bytes are read from the staging file, which can block on the disk: not
                // on the FUSE thread that started this read (see `serve_now`), but in a task.
                tokio::task::yield_now().await;
                let mut staged = staged.lock().await;
                staged.read(offset, len, self.store.as_ref()).await?
            }
        };
        self.handles.served(data.len());
        Ok(data)
    }

    fn writable(&self) -> Result<&Arc<CacheDir>, FsError> {
        match &self.writing.cache {
            Some(cache) if !self.cfg.read_only => Ok(cache),
            _ => Err(FsError::ReadOnly),
        }
    }

    /// The key of the object behind a node: a directory's is its `dir/` marker.
    fn object_key(&self, node: &inode::Node) -> String {
        match node.kind {
            Kind::Dir => self.dir_prefix(&node.path),
            _ => self.key_of(&node.path),
        }
    }

    pub async fn release(self: &Arc<Self>, fh: u64) -> Result<(), FsError> {
        let (file, readers_left) = {
            let mut files = lock(&self.handles.files);
            let file = files.remove(&fh);
            let readers = files
                .values()
                .filter(|f| matches!(f.as_ref(), OpenFile::Object { .. }))
                .count();
            (file, readers)
        };
        match file.as_deref() {
            Some(OpenFile::Staged { ino, staged }) => self.release_staged(*ino, staged).await,
            Some(OpenFile::Object { .. }) => {
                if readers_left == 0 {
                    // Pooled read-ahead buffers only pay off while something streams.
                    self.reading.pool.clear();
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A checked child name of a directory: (directory node, child path).
    fn child(&self, parent: Ino, name: &str) -> Result<(inode::Node, String), FsError> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if name.len() > names::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if check_name(name).is_err() {
            return Err(FsError::Invalid);
        }
        let path = child_path(&dir.path, name);
        Ok((dir, path))
    }

    /// Refuses a hard link: `EPERM` (the filesystem has none), `EROFS` when read-only.
    pub fn refuse_link(&self) -> FsError {
        match self.writable() {
            Ok(_) => FsError::NotPermitted,
            Err(e) => e,
        }
    }

    /// access(2): writing needs a writable mount; permission bits are left to the kernel's
    /// `default_permissions` when the mount asks for it.
    pub fn check_access(&self, write: bool) -> Result<(), FsError> {
        if write {
            self.writable().map(|_| ())
        } else {
            Ok(())
        }
    }

    /// A pre-signed URL for the file at `path` (relative to the mount root).
    pub async fn presign(
        &self,
        path: &str,
        method: crate::store::PresignMethod,
        expires: Duration,
    ) -> Result<String, FsError> {
        if expires > crate::store::PRESIGN_MAX || expires.is_zero() {
            return Err(FsError::Invalid);
        }
        if method == crate::store::PresignMethod::Put && self.cfg.read_only {
            // A read-only mount hands out no way to write, not even one that bypasses it.
            return Err(FsError::ReadOnly);
        }
        let path = path.trim_matches('/');
        if path.split('/').any(|segment| check_name(segment).is_err()) {
            return Err(FsError::Invalid);
        }
        Ok(self
            .store
            .presign(&self.key_of(path), method, expires)
            .await?)
    }

    pub fn statfs(&self) -> StatFs {
        // A bucket has no fixed capacity: report a large, stable free space so that programs
        // that check before copying (file managers) go ahead.
        const PIB_IN_4K_BLOCKS: u64 = (1 << 50) / 4096;
        StatFs {
            blocks: PIB_IN_4K_BLOCKS,
            bfree: PIB_IN_4K_BLOCKS,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize: 4096,
            namelen: names::NAME_MAX as u32,
        }
    }

    /// Up to `max` names the kernel should forget because the inode table is over
    /// `--max-inodes`: the oldest files first, never a directory (a shell may stand in it)
    /// nor a file open or being written (its handles would see it as deleted). Each is
    /// (parent, inode, name), for a FUSE delete notice; the table shrinks as the kernel
    /// answers with FORGET.
    pub fn names_to_forget(&self, max: usize) -> Vec<(Ino, Ino, String)> {
        let budget = self.cfg.max_inodes;
        let over = lock(&self.names.inodes).len().saturating_sub(budget);
        if budget == 0 || over == 0 {
            return Vec::new();
        }
        let open: std::collections::HashSet<Ino> = lock(&self.handles.files)
            .values()
            .map(|f| f.ino())
            .chain(lock(&self.writing.staged).keys().copied())
            .chain(lock(&self.writing.unlinked).keys().copied())
            .collect();
        lock(&self.names.inodes).oldest_files(over.min(max), &|ino| open.contains(&ino))
    }

    /// Files kept in the cache directory's `recovery/` (see `CacheDir::recovered_files`).
    pub fn recovered_files(&self, limit: usize) -> (Vec<(String, u64)>, usize) {
        self.writing
            .cache
            .as_ref()
            .map_or((Vec::new(), 0), |c| c.recovered_files(limit))
    }

    pub fn open_inodes(&self) -> usize {
        lock(&self.names.inodes).len()
    }
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
