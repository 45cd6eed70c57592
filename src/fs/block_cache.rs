//! The data cache: aligned blocks of objects read from the bucket, kept on local disk in
//! `--cache-dir/blocks/` so re-reads and random reads cost no request. A block belongs to one
//! version of one object (its name hashes the location, key and ETag), so a changed object is
//! never served from old blocks. Each block has a checksum record (see `block_file`); after a
//! mount that did not close the cache cleanly, a block is checked the first time it is read,
//! so a block torn by a crash or a full disk is dropped, never served. The cache is bounded by
//! its own cap and,
//! with the files being written, by `--max-cache-size` and the `--cache-min-free` floor;
//! blocks are evicted least recently used, staged bytes never.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use foldhash::quality::FixedState;

use super::block_file::{
    holds_data, parse_name, read_exact_now, read_slot, stored_slots, will_need, BlockWriter,
    GroupId,
};
use super::read_buffers::BufferPool;
use super::write::filesystem_space;

/// Size of a block: objects are cached in aligned pieces of this many bytes (the last piece
/// of an object is shorter).
pub const BLOCK: u64 = 1 << 20;
/// Blocks on their way to disk at once (their bytes are held in memory until written);
/// beyond this, new blocks from outside the read-ahead budget are not cached.
pub const PENDING_LIMIT: u64 = 16 << 20;
/// Group files kept open (a random read over a 2 GiB region finds its file open).
const OPEN_FILES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(256) {
    Some(n) => n,
    None => panic!("OPEN_FILES is not zero"),
};
/// Most blocks indexed at once, whatever their size: the index takes about 100 bytes a block
/// in memory, so a cache of many small files stays within about 20 MiB of the daemon's memory.
const MAX_BLOCKS: usize = 200_000;
/// Bytes of read buffers kept for reuse.
const READ_BUFFERS: u64 = 16 << 20;
/// Reads at least this long use (and give back) pooled buffers.
const POOLED_READ: usize = 64 << 10;
/// Share of the cap freed by one eviction pass, so that eviction does not run per block.
const EVICT_SLACK: u64 = 16;
/// Left in the cache's folder by a mount that closed it cleanly (every block written whole and
/// on disk): the next mount then trusts the blocks without checking them, and removes it
/// first thing, so that a crash of that mount leaves no such file.
const CLOSED_CLEANLY: &str = "closed-cleanly";
/// Longest a clean close waits for blocks still on their way to disk.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The whole blocks within `data`, fetched at `start` from an object of `object_size` bytes,
/// as (index, bytes): a block ends at a multiple of `BLOCK` or at the end of the object.
pub fn whole_blocks(start: u64, data: &Bytes, object_size: u64) -> Vec<(u64, Bytes)> {
    let end = start + data.len() as u64;
    let mut blocks = Vec::new();
    let mut index = start.div_ceil(BLOCK);
    while index * BLOCK < end {
        let block_end = ((index + 1) * BLOCK).min(object_size);
        if block_end > end {
            break;
        }
        let from = (index * BLOCK - start) as usize;
        blocks.push((index, data.slice(from..(block_end - start) as usize)));
        index += 1;
    }
    blocks
}

/// Where blocks to cache come from, which decides how they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A sequential reader's read-ahead part: bounded by the read-ahead budget, and written
    /// past the page cache (a stream read once should not push out what programs use).
    Stream,
    /// The whole object coming in for a file read at random: bounded by the fill's own
    /// buffers, and kept in the page cache too, where the next random reads find it.
    Fill,
    /// A read's own fetch (random blocks, a small file): kept in the page cache; not cached
    /// at all when too many blocks already wait for the disk.
    Read,
}

/// What a read of a block found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Hit(Bytes),
    Miss,
    /// In the cache, but not in memory: reading it would wait for the disk.
    WouldBlock,
}

/// One version of one object, as the cache names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectTag(pub(super) u128);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct BlockId {
    pub(super) tag: ObjectTag,
    pub(super) index: u32,
}

#[derive(Clone)]
enum State {
    /// Being written to disk: served from these bytes meanwhile.
    Writing(Bytes),
    /// On disk, not yet checked by this mount.
    Stored,
    /// On disk and checked.
    Verified,
}

struct Entry {
    len: u32,
    state: State,
    /// When it was last used, in the index's ticks.
    used: u64,
    /// When it was indexed, in the index's ticks: a read from the disk counts only if the
    /// block is still this one when the read is done (it may have been evicted, its slot
    /// cleared, and written again meanwhile).
    since: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<BlockId, Entry>,
    /// Bytes of the blocks in `entries` (being written included).
    bytes: u64,
    tick: u64,
}

/// Counters of `pailfs status`.
#[derive(Clone, Copy)]
enum Stat {
    Hits,
    Misses,
    Evictions,
    Torn,
}

/// The block cache of one mount.
pub struct BlockCache {
    dir: PathBuf,
    /// The bucket the blocks come from: part of every block's name.
    location: String,
    index: Mutex<Index>,
    /// Most bytes of blocks.
    cap: u64,
    /// Most bytes of blocks and staged files together (`--max-cache-size`).
    shared_cap: u64,
    /// Bytes staged by files being written (the cache directory's count).
    staged: Arc<AtomicU64>,
    /// Share of the filesystem kept free (`--cache-min-free`).
    min_free_ratio: f64,
    pending: AtomicU64,
    /// Most blocks indexed (`MAX_BLOCKS`).
    max_blocks: usize,
    /// Group files kept open for reads (a random read then costs one `pread`).
    open_files: Mutex<lru::LruCache<GroupId, Arc<std::fs::File>>>,
    /// Buffers of reads from block files, handed back after the reply (`recycle`): a fresh
    /// megabyte per read would cost more in page faults than the read itself.
    buffers: BufferPool,
    /// Woken whenever blocks reach the disk.
    written: tokio::sync::Notify,
    /// Held while blocks are written or their slots cleared: one writer at a time, so that a
    /// burst of blocks (a whole object coming in) does not take every core from the reads,
    /// and so that a slot is never cleared after it was written again.
    writer: Mutex<BlockWriter>,
    /// Blocks out of the index whose slots are still to be cleared (by whoever holds the
    /// writer next: an eviction never waits for a write in progress).
    doomed: Mutex<Vec<BlockId>>,
    stats: [AtomicU64; 4],
}

/// The default cap: 10 GiB or a tenth of the cache's filesystem, whichever is smaller.
pub fn default_cap(dir: &Path) -> u64 {
    let tenth = filesystem_space(dir).map_or(u64::MAX, |(_, total)| total / 10);
    tenth.min(10 << 30)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlockCache {
    /// Opens (creating) `cache_dir/blocks`, and indexes the blocks an earlier mount left:
    /// their age is their file's; files that cannot be blocks are removed.
    pub fn open(
        cache_dir: &Path,
        location: &str,
        cap: u64,
        shared_cap: u64,
        staged: Arc<AtomicU64>,
        min_free_ratio: f64,
    ) -> std::io::Result<BlockCache> {
        let dir = cache_dir.join("blocks");
        std::fs::create_dir_all(&dir)?;
        let cache = BlockCache {
            dir,
            location: location.to_string(),
            index: Mutex::new(Index::default()),
            cap,
            shared_cap,
            staged,
            min_free_ratio,
            pending: AtomicU64::new(0),
            max_blocks: MAX_BLOCKS,
            writer: Mutex::new(BlockWriter::new()),
            doomed: Mutex::new(Vec::new()),
            written: tokio::sync::Notify::new(),
            buffers: BufferPool::new(READ_BUFFERS),
            open_files: Mutex::new(lru::LruCache::new(OPEN_FILES)),
            stats: Default::default(),
        };
        cache.load()?;
        Ok(cache)
    }

    fn load(&self) -> std::io::Result<()> {
        // Blocks a mount closed cleanly are whole; any other may have been torn by a crash
        // and is checked when first read. The mark goes (for good) before anything is
        // written again.
        let marked = self.dir.join(CLOSED_CLEANLY);
        let trusted = match std::fs::remove_file(&marked) {
            Ok(()) => std::fs::File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .is_ok(),
            Err(_) => false,
        };
        let loaded = match trusted {
            true => State::Verified,
            false => State::Stored,
        };
        let mut found = Vec::new();
        for sub in std::fs::read_dir(&self.dir)? {
            let sub = sub?.path();
            if !sub.is_dir() {
                // A temporary file left by an older version (blocks live in subfolders).
                let _ = std::fs::remove_file(&sub);
                continue;
            }
            for file in std::fs::read_dir(&sub)? {
                let path = file?.path();
                let group = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_name);
                let slots = group.and_then(|group| {
                    let file = std::fs::File::open(&path).ok()?;
                    let age = file.metadata().ok()?.modified().ok()?;
                    let slots = stored_slots(&file).ok()?;
                    // Bytes a torn write may have left in a slot no record vouches for.
                    let stale: Vec<BlockId> = group
                        .blocks()
                        .filter(|id| slots.iter().all(|(slot, _)| *slot != id.slot()))
                        .filter(|id| holds_data(&file, id.offset()))
                        .collect();
                    Some((group, age, slots, stale))
                });
                match slots {
                    Some((group, age, slots, stale)) if !slots.is_empty() => {
                        for (slot, len) in slots {
                            if let Some(id) = group.blocks().find(|id| id.slot() == slot) {
                                found.push((age, id, len));
                            }
                        }
                        for id in stale {
                            let _ = lock(&self.writer).clear(&path, id);
                        }
                    }
                    // Not a group file (one of an older version's block files), or none of
                    // its slots vouched for.
                    _ => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        found.sort_by_key(|(age, _, _)| *age);
        let mut index = lock(&self.index);
        for (_, id, len) in found {
            index.tick += 1;
            let used = index.tick;
            index.bytes += u64::from(len);
            index.entries.insert(
                id,
                Entry {
                    len,
                    state: loaded.clone(),
                    used,
                    since: used,
                },
            );
        }
        drop(index);
        self.make_room(0);
        Ok(())
    }

    /// The tag of version `etag` of `key`.
    pub fn tag(&self, key: &str, etag: &str) -> ObjectTag {
        let hash = |seed: u64| FixedState::with_seed(seed).hash_one((&self.location, key, etag));
        ObjectTag((u128::from(hash(0x7061_696c)) << 64) | u128::from(hash(0x6673_626c)))
    }

    fn path(&self, group: GroupId) -> PathBuf {
        let name = group.name();
        self.dir.join(&name[..2]).join(name)
    }

    /// Whether block `id` is still the one indexed at tick `since`.
    fn still(&self, id: BlockId, since: u64) -> bool {
        lock(&self.index)
            .entries
            .get(&id)
            .is_some_and(|e| e.since == since)
    }

    fn count(&self, stat: Stat) {
        self.stats[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether every block `first..=last` of `tag` is on disk (a look at the index only, so a
    /// read the cache cannot serve costs no file access); a miss is counted.
    pub fn holds(&self, tag: ObjectTag, first: u64, last: u64) -> bool {
        let held = self.present(tag, first, last);
        if !held {
            self.count(Stat::Misses);
        }
        held
    }

    /// Whether every block `first..=last` of `tag` is on disk or on its way there.
    pub fn present(&self, tag: ObjectTag, first: u64, last: u64) -> bool {
        let idx = lock(&self.index);
        (first..=last).all(|index| {
            u32::try_from(index)
                .is_ok_and(|index| idx.entries.contains_key(&BlockId { tag, index }))
        })
    }

    /// Whether a whole object of `size` bytes may be brought in ahead of its reads: at most a
    /// quarter of what the cache may hold, so one file never flushes the rest.
    pub fn may_fill(&self, size: u64) -> bool {
        size <= self.cap.min(self.shared_cap) / 4
    }

    /// Bytes `[from, to)` of block `index` of `tag`, if the cache holds that block (may block
    /// on the disk).
    pub fn read(&self, tag: ObjectTag, index: u64, from: usize, to: usize) -> Option<Bytes> {
        match self.read_block(tag, index, from, to, false) {
            Found::Hit(data) => Some(data),
            Found::Miss | Found::WouldBlock => None,
        }
    }

    /// Like `read`, but without waiting for the disk: `WouldBlock` when the bytes are not in
    /// memory (the kernel's page cache, or a block still being written), so the caller can
    /// answer from its async thread when they are and go to a blocking thread when not.
    pub fn read_now(&self, tag: ObjectTag, index: u64, from: usize, to: usize) -> Found {
        self.read_block(tag, index, from, to, true)
    }

    fn read_block(&self, tag: ObjectTag, index: u64, from: usize, to: usize, now: bool) -> Found {
        let Ok(index) = u32::try_from(index) else {
            return Found::Miss;
        };
        let id = BlockId { tag, index };
        let (verified, since) = {
            let mut idx = lock(&self.index);
            idx.tick += 1;
            let tick = idx.tick;
            match idx.entries.get_mut(&id) {
                Some(Entry {
                    state: State::Writing(data),
                    used,
                    ..
                }) if to <= data.len() => {
                    // Still on its way to disk: the bytes are in memory.
                    *used = tick;
                    let data = data.slice(from..to);
                    drop(idx);
                    self.count(Stat::Hits);
                    return Found::Hit(data);
                }
                Some(e) if !matches!(e.state, State::Writing(_)) => {
                    e.used = tick;
                    // A version's blocks have fixed lengths: one shorter than a read of
                    // that version needs is damaged, whatever its record says.
                    let verified = matches!(e.state, State::Verified) && to <= e.len as usize;
                    (verified, e.since)
                }
                _ => {
                    drop(idx);
                    self.count(Stat::Misses);
                    return Found::Miss;
                }
            }
        };
        let found = match (verified, now) {
            (true, _) => self.read_verified(id, since, from, to, now),
            // The first read of a block checks all of it: a job for a blocking thread.
            (false, true) => return Found::WouldBlock,
            (false, false) => self
                .read_checked(id, since, from, to)
                .map_or(Found::Miss, Found::Hit),
        };
        match &found {
            Found::Hit(_) => self.count(Stat::Hits),
            Found::Miss => self.count(Stat::Misses),
            Found::WouldBlock => {}
        }
        found
    }

    /// The open file of `group` (opened under the lock, so that `close` after a removal
    /// leaves no descriptor of the removed file behind).
    fn open_file(&self, group: GroupId) -> std::io::Result<Arc<std::fs::File>> {
        let mut open = lock(&self.open_files);
        if let Some(file) = open.get(&group) {
            return Ok(file.clone());
        }
        let file = Arc::new(std::fs::File::open(self.path(group))?);
        open.put(group, file.clone());
        Ok(file)
    }

    fn read_verified(&self, id: BlockId, since: u64, from: usize, to: usize, now: bool) -> Found {
        let mut buf = self.read_buffer(to - from);
        let at = id.offset() + from as u64;
        let read = self.open_file(id.group()).and_then(|f| match now {
            true => read_exact_now(&f, &mut buf, at),
            false => f.read_exact_at(&mut buf, at),
        });
        match read {
            Ok(()) if self.still(id, since) => Found::Hit(buf.freeze()),
            // Evicted while being read: its slot may have been cleared under the read.
            Ok(()) => Found::Miss,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Found::WouldBlock,
            Err(e) => {
                // Removed by hand, or the disk failed: a miss, and the block is forgotten.
                tracing::debug!(error = %e, "a cached block could not be read; reading from the bucket");
                if self.still(id, since) {
                    self.forget(id);
                }
                Found::Miss
            }
        }
    }

    /// Brings blocks `first..=last` of `tag` (those on disk) into memory in the background,
    /// checking those this mount has not read yet: a reader streaming through them then
    /// finds them there, checked.
    pub fn will_need(self: &Arc<Self>, tag: ObjectTag, first: u64, last: u64) {
        let ids: Vec<(BlockId, bool, u64, u32)> = {
            let idx = lock(&self.index);
            (first..=last)
                .filter_map(|index| u32::try_from(index).ok())
                .map(|index| BlockId { tag, index })
                .filter_map(|id| {
                    let e = idx.entries.get(&id)?;
                    match e.state {
                        State::Writing(_) => None,
                        State::Stored => Some((id, false, e.since, e.len)),
                        State::Verified => Some((id, true, e.since, e.len)),
                    }
                })
                .collect()
        };
        if ids.is_empty() {
            return;
        }
        let cache = self.clone();
        tokio::task::spawn_blocking(move || {
            for (id, verified, since, len) in ids {
                match verified {
                    true => {
                        if let Ok(file) = cache.open_file(id.group()) {
                            will_need(&file, id.offset(), u64::from(len));
                        }
                    }
                    false => {
                        if let Some(data) = cache.verify(id, since) {
                            cache.recycle(data);
                        }
                    }
                }
            }
        });
    }

    /// The first read of a block by this mount checks it whole against its record.
    fn read_checked(&self, id: BlockId, since: u64, from: usize, to: usize) -> Option<Bytes> {
        let data = self.verify(id, since)?;
        if to > data.len() {
            self.drop_torn(id);
            return None;
        }
        Some(data.slice(from..to))
    }

    /// Reads block `id` whole and checks it against its record: its data, now `Verified`, or
    /// `None` (and the block dropped) when it is torn.
    fn verify(&self, id: BlockId, since: u64) -> Option<Bytes> {
        let data = self
            .open_file(id.group())
            .ok()
            .and_then(|file| read_slot(&file, id, |len| self.read_buffer(len)));
        let mut idx = lock(&self.index);
        let entry = idx.entries.get_mut(&id).filter(|e| e.since == since);
        match (data, entry) {
            (Some(data), Some(entry)) => {
                entry.state = State::Verified;
                Some(data)
            }
            (None, Some(_)) => {
                drop(idx);
                self.drop_torn(id);
                None
            }
            // Evicted while being read: neither its data nor its damage counts.
            (data, None) => {
                drop(idx);
                if let Some(data) = data {
                    self.recycle(data);
                }
                None
            }
        }
    }

    /// A buffer of `len` bytes to read a block file into. Small reads (random 4 KiB ones)
    /// take fresh memory: the allocator serves those without page faults, and the pool keeps
    /// only buffers worth keeping.
    fn read_buffer(&self, len: usize) -> BytesMut {
        let mut buf = match len < POOLED_READ {
            true => BytesMut::zeroed(len),
            false => self.buffers.take(len),
        };
        buf.resize(len, 0);
        buf
    }

    /// Takes back the buffer of a read's bytes once nothing else refers to them.
    pub fn recycle(&self, data: Bytes) {
        if data.len() >= POOLED_READ {
            self.buffers.give(data);
        }
    }

    fn drop_torn(&self, id: BlockId) {
        tracing::warn!(path = %self.path(id.group()).display(), block = id.slot(), "a cached block is torn or damaged (a crash or a full disk while it was written); it is dropped and read from the bucket again");
        self.count(Stat::Torn);
        self.forget(id);
        self.dispose(vec![id]);
    }

    fn forget(&self, id: BlockId) {
        let mut idx = lock(&self.index);
        if let Some(e) = idx.entries.remove(&id) {
            idx.bytes -= u64::from(e.len);
        }
    }

    /// Caches `data` as block `index` of `tag`, written in the background (see `insert_run`).
    pub fn insert(self: &Arc<Self>, tag: ObjectTag, index: u64, data: Bytes) {
        self.insert_run(tag, vec![(index, data)], Source::Read, || {});
    }

    /// Caches `blocks` (index, bytes) of `tag`, written by one background job that calls
    /// `written` once it holds none of their bytes any more (the caller can then reuse the
    /// buffer they were sliced from). A block already there is skipped; nothing is cached when
    /// no room can be made (staged files fill the shared cap, or the disk nears its floor), or
    /// when too many blocks wait to be written, unless the caller's own memory budget bounds
    /// them (`budgeted`: read-ahead parts).
    pub fn insert_run(
        self: &Arc<Self>,
        tag: ObjectTag,
        blocks: Vec<(u64, Bytes)>,
        source: Source,
        written: impl FnOnce() + Send + 'static,
    ) {
        let budgeted = !matches!(source, Source::Read);
        let direct = matches!(source, Source::Stream);
        let mut wanted = Vec::with_capacity(blocks.len());
        let mut total = 0u64;
        // Staging may have grown since the last look: the blocks give way first. Then a run
        // larger than the cache keeps its last blocks only (a reader moving on wants those
        // soonest); what it replaces is evicted below.
        self.make_room(0);
        let room = self.limit(0);
        let mut blocks = blocks;
        let run_bytes: u64 = blocks.iter().map(|(_, d)| d.len() as u64).sum();
        if run_bytes > room {
            let mut keep = 0u64;
            let from = blocks
                .iter()
                .rposition(|(_, d)| {
                    keep += d.len() as u64;
                    keep > room
                })
                .map_or(0, |i| i + 1);
            blocks.drain(..from);
        }
        {
            let mut idx = lock(&self.index);
            for (index, data) in blocks {
                let (Ok(index), Ok(len)) = (u32::try_from(index), u32::try_from(data.len())) else {
                    continue;
                };
                let id = BlockId { tag, index };
                if data.is_empty() || u64::from(len) > BLOCK || idx.entries.contains_key(&id) {
                    continue;
                }
                idx.tick += 1;
                let used = idx.tick;
                idx.bytes += u64::from(len);
                idx.entries.insert(
                    id,
                    Entry {
                        len,
                        state: State::Writing(data.clone()),
                        used,
                        since: used,
                    },
                );
                total += u64::from(len);
                wanted.push((id, data));
            }
        }
        let busy = !budgeted && self.pending.load(Ordering::Relaxed) + total > PENDING_LIMIT;
        if wanted.is_empty() || busy || !self.make_room(0) || !self.floor_allows(total) {
            if !wanted.is_empty() {
                tracing::trace!(
                    blocks = wanted.len(),
                    busy,
                    "blocks not cached: too many wait for the disk, or no room"
                );
            }
            for (id, _) in wanted {
                self.forget(id);
            }
            written();
            return;
        }
        self.pending.fetch_add(total, Ordering::Relaxed);
        let cache = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = lock(&cache.writer);
            for (id, data) in wanted {
                let result = writer.write(&cache.path(id.group()), id, &data, direct);
                drop(data);
                let mut idx = lock(&cache.index);
                match result {
                    Ok(()) => {
                        if let Some(e) = idx.entries.get_mut(&id) {
                            e.state = State::Verified;
                        }
                    }
                    Err(e) => {
                        if let Some(entry) = idx.entries.remove(&id) {
                            idx.bytes -= u64::from(entry.len);
                        }
                        drop(idx);
                        tracing::debug!(error = %e, "a block could not be cached (the read itself is unaffected)");
                    }
                }
            }
            drop(writer);
            cache.clear_doomed();
            cache.pending.fetch_sub(total, Ordering::Relaxed);
            cache.written.notify_waiters();
            written();
        });
    }

    /// Whether the cache's filesystem keeps its free floor after `more` bytes.
    fn floor_allows(&self, more: u64) -> bool {
        if self.min_free_ratio <= 0.0 {
            return true;
        }
        match filesystem_space(&self.dir) {
            Some((free, total)) => {
                free.saturating_sub(more) >= (total as f64 * self.min_free_ratio) as u64
            }
            None => true,
        }
    }

    /// Evicts least recently used blocks until the blocks fit their cap and, with the staged
    /// files and `more` bytes to stage, the shared cap; false if that cannot be done (staged
    /// bytes alone fill it).
    pub fn make_room(&self, more: u64) -> bool {
        let limit = self.limit(more);
        let (bytes, count) = {
            let idx = lock(&self.index);
            (idx.bytes, idx.entries.len())
        };
        if bytes <= limit && count <= self.max_blocks {
            return true;
        }
        // Down to a little below the limits, so the next blocks do not evict one by one.
        let held = self.evict_to(
            limit.saturating_sub(limit / EVICT_SLACK),
            self.max_blocks - self.max_blocks / EVICT_SLACK as usize,
        );
        held <= limit
    }

    /// The most bytes of blocks allowed with `more` bytes about to be staged.
    fn limit(&self, more: u64) -> u64 {
        let staged = self.staged.load(Ordering::Relaxed).saturating_add(more);
        self.cap.min(self.shared_cap.saturating_sub(staged))
    }

    /// Waits until at most `limit` bytes of blocks are on their way to disk (a reader whose
    /// parts outrun the disk waits here rather than holding ever more memory).
    pub async fn wait_pending_below(&self, limit: u64) {
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.pending.load(Ordering::Relaxed) <= limit {
                return;
            }
            written.await;
        }
    }

    /// Evicts at least `bytes` of blocks (the disk nears its free floor).
    pub fn shrink_by(&self, bytes: u64) {
        let held = self.bytes();
        self.evict_to(held.saturating_sub(bytes), self.max_blocks);
    }

    /// Evicts least recently used blocks (not those being written) until at most `target`
    /// bytes and `most_blocks` blocks are held; returns the bytes then held.
    fn evict_to(&self, target: u64, most_blocks: usize) -> u64 {
        let mut idx = lock(&self.index);
        let mut by_age: Vec<(u64, BlockId, u32)> = idx
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e.state, State::Writing(_)))
            .map(|(id, e)| (e.used, *id, e.len))
            .collect();
        by_age.sort_unstable_by_key(|(used, _, _)| *used);
        let mut doomed = Vec::new();
        for (_, id, len) in by_age {
            if idx.bytes <= target && idx.entries.len() <= most_blocks {
                break;
            }
            idx.entries.remove(&id);
            idx.bytes -= u64::from(len);
            doomed.push(id);
        }
        let held = idx.bytes;
        drop(idx);
        for _ in &doomed {
            self.count(Stat::Evictions);
        }
        self.dispose(doomed);
        held
    }

    /// Clears the slots of `ids` (out of the index already), now or, while a write is in
    /// progress, by that writer once it is done.
    fn dispose(&self, ids: Vec<BlockId>) {
        lock(&self.doomed).extend(ids);
        self.clear_doomed();
    }

    /// Clears the slots of the doomed blocks if the writer is free. Whoever drops the writer
    /// calls this again, so no doomed block is left behind by a race with it.
    fn clear_doomed(&self) {
        loop {
            let mut writer = match self.writer.try_lock() {
                Ok(writer) => writer,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            let ids = std::mem::take(&mut *lock(&self.doomed));
            for id in ids {
                self.clear_slot(&mut writer, id);
            }
            drop(writer);
            if lock(&self.doomed).is_empty() {
                return;
            }
        }
    }

    /// Clears the slot of block `id`, or removes its group's file when no block of the group
    /// is left; nothing when the block was cached again since (its slot holds it again).
    fn clear_slot(&self, writer: &mut BlockWriter, id: BlockId) {
        let group = id.group();
        let (present, group_held) = {
            let idx = lock(&self.index);
            let held = |b: &BlockId| idx.entries.contains_key(b);
            (held(&id), group.blocks().any(|b| held(&b)))
        };
        if present {
            return;
        }
        let path = self.path(group);
        let result = match group_held {
            true => writer.clear(&path, id),
            false => {
                let removed = writer.remove(&path, group);
                // After the removal: a descriptor opened before it is dropped here, and any
                // later open finds the file gone or new.
                self.close_group(group);
                removed
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, path = %path.display(), "a cached block's slot could not be cleared");
        }
    }

    fn close_group(&self, group: GroupId) {
        let mut open = lock(&self.open_files);
        open.pop(&group);
    }

    /// The same cache, indexing at most `n` blocks (tests of the count limit).
    #[cfg(test)]
    pub fn with_max_blocks(mut self, n: usize) -> BlockCache {
        self.max_blocks = n;
        self
    }

    /// Whether blocks are still on their way to disk.
    pub fn writing(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }

    /// Closes the cache at unmount: once every block on its way is written and the
    /// filesystem has them on disk, marks the cache closed cleanly, so that the next mount
    /// serves its blocks without checking each one first. Without the mark (a crash, blocks
    /// still being written after `CLOSE_WAIT`, a failure here), the next mount checks them.
    pub async fn close(&self) {
        let written = tokio::time::timeout(CLOSE_WAIT, self.wait_pending_below(0))
            .await
            .is_ok();
        if !written {
            tracing::info!("blocks were still being written at unmount; the next mount checks the cache's blocks as it reads them");
            return;
        }
        let dir = self.dir.clone();
        let marked = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            let folder = std::fs::File::open(&dir)?;
            // SAFETY: syncfs on a descriptor `folder` keeps open; no memory is passed.
            if unsafe { libc::syncfs(folder.as_raw_fd()) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::fs::File::create(dir.join(CLOSED_CLEANLY))?.sync_all()?;
            folder.sync_all()
        })
        .await;
        if let Ok(Err(e)) = marked {
            tracing::debug!(error = %e, "the data cache could not be marked closed cleanly; the next mount checks its blocks as it reads them");
        }
    }

    /// Bytes of blocks held.
    pub fn bytes(&self) -> u64 {
        lock(&self.index).bytes
    }

    /// `name=value` fields for `pailfs status`.
    pub fn summary(&self) -> String {
        let get = |s: Stat| self.stats[s as usize].load(Ordering::Relaxed);
        format!(
            "data_cache_bytes={} data_cache_cap_bytes={} data_cache_hits={} data_cache_misses={} data_cache_evictions={} data_cache_torn={}",
            self.bytes(),
            self.cap.min(self.shared_cap),
            get(Stat::Hits),
            get(Stat::Misses),
            get(Stat::Evictions),
            get(Stat::Torn)
        )
    }
}

#[cfg(test)]
impl BlockCache {
    /// The group file holding block `index` of `tag`, and where the block's data starts in it.
    pub(super) fn block_on_disk(&self, tag: ObjectTag, index: u32) -> (PathBuf, u64) {
        let id = BlockId { tag, index };
        (self.path(id.group()), id.offset())
    }

    /// Bytes the group files take on disk, their pages of records left out.
    pub(super) fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        super::write::files_below(&self.dir)
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| (m.blocks() * 512).saturating_sub(super::block_file::RECORDS_PAGE))
            .sum()
    }
}

#[cfg(test)]
#[path = "block_cache_tests.rs"]
mod tests;
