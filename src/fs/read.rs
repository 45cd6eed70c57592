//! Reading one open file: from the data cache when it holds the blocks, otherwise small files
//! in one GET, sequential reads from a growing window of concurrent ranged GETs
//! (`PrefetchWindow`), random reads fetching only what was asked (whole cache blocks once a
//! file is seen to be read at random). What is fetched lands in the data cache. Every GET
//! carries the ETag the file was opened at, so content never mixes two versions.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::block_cache::{
    whole_blocks, BlockCache, Found, ObjectTag, Source, BLOCK, PENDING_LIMIT,
};
use super::cache_fill::CacheFill;
use super::error::FsError;
use super::read_buffers::BufferPool;
use crate::store::{ByteRange, ObjectStore, StoreError};

/// Read-ahead memory is accounted in units of this many bytes.
pub const BUDGET_UNIT: u64 = 64 * 1024;
/// The first read-ahead request of a sequential run.
const INITIAL_WINDOW: u64 = 1024 * 1024;
/// How far apart the kernel's concurrent read-ahead requests can arrive out of order; parts
/// this far behind the reader are kept for late arrivals.
const REORDER_SLACK: u64 = 4 * 1024 * 1024;
/// A read at least this long is the kernel's read-ahead at work (a program reading at random
/// gets a few pages per miss).
const READ_AHEAD_SIZED: u64 = 128 * 1024;
/// Reads out of sequence after which a file counts as read at random: its misses then fetch
/// whole cache blocks, so that nearby reads come from disk.
pub(super) const RANDOM_AFTER: u32 = 3;
/// Misses at random after which a file small enough for the data cache (see
/// `BlockCache::may_fill`) is brought in whole, in the background.
pub(super) const FILL_AFTER: u32 = 4;
/// Misses at random after which the piece fetched around each doubles.
const RANDOM_GROWTH_EVERY: u32 = 16;
/// The most fetched around one miss at random.
const RANDOM_CHUNK_MAX: u64 = 8 << 20;
/// Blocks of the data cache a reader streaming through them asks the kernel to bring into
/// memory ahead of it (blocks written with `O_DIRECT` are on disk only).
const CACHE_AHEAD_BLOCKS: u64 = 16;

#[derive(Clone, Copy, Debug)]
pub struct ReadTuning {
    pub part_size: u64,
    pub max_window: u64,
    /// Objects up to this size are fetched whole by the first read.
    pub small_file_size: u64,
}

enum PartState {
    Pending(JoinHandle<Result<Bytes, StoreError>>),
    Ready(Bytes),
}

/// One ranged GET of the window, in flight or done, holding its share of the memory budget.
struct Part {
    range: ByteRange,
    state: PartState,
    /// Shared with the data cache's write of the part's blocks: the budget is given back once
    /// neither the window nor that write holds the bytes.
    _permit: Option<Arc<OwnedSemaphorePermit>>,
    /// Handed to the data cache already.
    cached: bool,
}

impl Drop for Part {
    fn drop(&mut self) {
        if let PartState::Pending(handle) = &self.state {
            handle.abort();
        }
    }
}

impl Part {
    /// Hands a finished part's buffer back for reuse.
    fn recycle(mut self, pool: &BufferPool) {
        if let PartState::Ready(data) =
            std::mem::replace(&mut self.state, PartState::Ready(Bytes::new()))
        {
            pool.give(data);
        }
    }

    async fn bytes(&mut self) -> Result<Bytes, FsError> {
        if let PartState::Pending(handle) = &mut self.state {
            let data = match handle.await {
                Ok(result) => result?,
                Err(join) => {
                    return Err(FsError::Store(StoreError::Other(format!(
                        "read-ahead task failed: {join}"
                    ))))
                }
            };
            self.state = PartState::Ready(data);
        }
        match &self.state {
            PartState::Ready(data) => Ok(data.clone()),
            PartState::Pending(_) => Err(FsError::Invalid),
        }
    }
}

/// The parts fetched ahead of a sequential reader, in order, contiguous.
#[derive(Default)]
struct PrefetchWindow {
    parts: VecDeque<Part>,
    /// End of the last part scheduled.
    next_fetch: u64,
    /// Current target of bytes ahead of the reader; doubles on each sequential read.
    target: u64,
}

impl PrefetchWindow {
    fn start(&self) -> Option<u64> {
        self.parts.front().map(|p| p.range.start)
    }

    fn covers(&self, offset: u64) -> bool {
        self.start().is_some_and(|s| s <= offset) && offset < self.next_fetch
    }

    fn reset(&mut self, offset: u64, pool: &BufferPool) {
        for part in self.parts.drain(..) {
            part.recycle(pool);
        }
        self.next_fetch = offset;
        self.target = 0;
    }
}

/// What every reader of a mount shares: the store, the read-ahead memory budget and its
/// buffers, the data cache, and the tuning.
#[derive(Clone)]
pub struct ReadShared {
    pub store: Arc<dyn ObjectStore>,
    pub budget: Arc<Semaphore>,
    pub pool: Arc<BufferPool>,
    pub tuning: ReadTuning,
    pub blocks: Option<Arc<BlockCache>>,
}

pub struct Reader {
    shared: Arc<ReadShared>,
    key: String,
    etag: String,
    /// The data cache's name for this version of the object.
    tag: Option<ObjectTag>,
    size: u64,
    window: PrefetchWindow,
    last_end: Option<u64>,
    /// Reads out of sequence so far (see `RANDOM_AFTER`).
    random_reads: u32,
    /// The end of a lone read away from the streaming window, served on its own (see
    /// `read_range`), until the next read shows whether the reader moved there.
    stray_end: Option<u64>,
    /// The first block of the data cache not yet asked ahead for (`CACHE_AHEAD_BLOCKS`).
    cache_ahead: u64,
    /// The bytes of the last read the data cache served: by the next read the reply is sent,
    /// so the buffer can go back to the cache for reuse.
    last_cached: Option<Bytes>,
    /// The whole object coming into the data cache, once it is read at random enough.
    fill: Option<CacheFill>,
    /// A read succeeded: from then on the handle is pinned to its version for good.
    served: bool,
    /// Whether a handle that has read nothing yet may move to the current version when its
    /// own was replaced (not when the kernel kept pages of the old one for it).
    pub may_repin: bool,
}

impl Reader {
    /// The object was renamed (copied, so maybe with a new ETag): read it at its new key.
    pub fn moved(&mut self, key: String, etag: String) {
        self.key = key;
        self.etag = etag;
        self.retag();
    }

    fn retag(&mut self) {
        self.fill = None;
        self.tag = self
            .shared
            .blocks
            .as_ref()
            .map(|b| b.tag(&self.key, &self.etag));
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn new(shared: Arc<ReadShared>, key: String, etag: String, size: u64) -> Self {
        let mut reader = Reader {
            shared,
            key,
            etag,
            tag: None,
            size,
            window: PrefetchWindow::default(),
            last_end: None,
            random_reads: 0,
            stray_end: None,
            cache_ahead: 0,
            last_cached: None,
            fill: None,
            served: false,
            may_repin: true,
        };
        reader.retag();
        reader
    }

    fn spawn_get(&self, range: ByteRange) -> JoinHandle<Result<Bytes, StoreError>> {
        let store = self.shared.store.clone();
        let key = self.key.clone();
        let etag = self.etag.clone();
        let buffer = self.shared.pool.take(range.len() as usize);
        tracing::trace!(key = %self.key, start = range.start, end = range.end, "GET for the read-ahead window");
        tokio::spawn(async move { store.get_range_into(&key, range, Some(&etag), buffer).await })
    }

    /// A read served by a GET of its own, outside the window (a small file whole, or a read
    /// away from the stream). The whole blocks it holds go to the data cache all the same:
    /// the kernel's first read-ahead requests can arrive out of order (1 MiB before 0), and a
    /// re-read would otherwise fetch those blocks again.
    async fn fetch_alone(&self, want: ByteRange) -> Result<Bytes, FsError> {
        tracing::trace!(key = %self.key, start = want.start, end = want.end, "GET for one read");
        let data = self
            .shared
            .store
            .get_range(&self.key, want, Some(&self.etag))
            .await?;
        self.offer(want.start, &data, None, false);
        Ok(data)
    }

    fn permit_for(&self, len: u64) -> Option<OwnedSemaphorePermit> {
        let units = len.div_ceil(BUDGET_UNIT).min(u32::MAX as u64) as u32;
        self.shared
            .budget
            .clone()
            .try_acquire_many_owned(units)
            .ok()
    }

    /// `want` from the data cache, if it holds every block of it: from memory at once when it
    /// can (a block being written, the kernel's page cache), else on a blocking thread.
    async fn cached(&self, want: ByteRange) -> Option<Bytes> {
        let (blocks, tag) = self.cache().map(|(blocks, tag)| (blocks.clone(), tag))?;
        let (first, last) = (want.start / BLOCK, (want.end - 1) / BLOCK);
        if !blocks.holds(tag, first, last) {
            return None;
        }
        let piece = move |index: u64| {
            let start = want.start.max(index * BLOCK) - index * BLOCK;
            let end = want.end.min((index + 1) * BLOCK) - index * BLOCK;
            (start as usize, end as usize)
        };
        let mut pieces = Vec::new();
        for index in first..=last {
            let (from, to) = piece(index);
            match blocks.read_now(tag, index, from, to) {
                Found::Hit(data) => pieces.push(data),
                Found::Miss => return None,
                Found::WouldBlock => break,
            }
        }
        let done = pieces.len() as u64;
        if first + done > last {
            return Some(join(pieces, want.len()));
        }
        let rest = tokio::task::spawn_blocking(move || {
            for index in first + done..=last {
                let (from, to) = piece(index);
                pieces.push(blocks.read(tag, index, from, to)?);
            }
            Some(join(pieces, want.len()))
        });
        rest.await.ok().flatten()
    }

    /// The data cache and its name for this version of the object, when the mount has one.
    fn cache(&self) -> Option<(&Arc<BlockCache>, ObjectTag)> {
        Some((self.shared.blocks.as_ref()?, self.tag?))
    }

    /// Whether the data cache holds every block of `range` (or has them on their way).
    fn cache_holds(&self, range: ByteRange) -> bool {
        self.cache().is_some_and(|(blocks, tag)| {
            blocks.present(tag, range.start / BLOCK, (range.end - 1) / BLOCK)
        })
    }

    /// A reader streaming through cached blocks, now at `end`: the next blocks are brought
    /// into memory ahead of it, half a stretch at a time.
    fn read_cache_ahead(&mut self, end: u64) {
        let Some((blocks, tag)) = self.cache() else {
            return;
        };
        let next = end.div_ceil(BLOCK);
        if next + CACHE_AHEAD_BLOCKS / 2 < self.cache_ahead || next * BLOCK >= self.size {
            return;
        }
        let first = next.max(self.cache_ahead);
        let last = (next + CACHE_AHEAD_BLOCKS).min((self.size - 1) / BLOCK);
        blocks.will_need(tag, first, last);
        self.cache_ahead = last + 1;
    }

    /// Hands the data cache the whole blocks within `data`, fetched at `start` (a block ends
    /// at a multiple of `BLOCK` or at the end of the object). The buffer goes back to the
    /// pool once they are written (or straight away when the window is done with it first).
    /// With `permit` (a window part's share of the read-ahead budget), the write holds that
    /// share until it is done: a cache that writes slower than the bucket sends makes the
    /// window read ahead less, and never makes it drop blocks.
    fn offer(
        &self,
        start: u64,
        data: &Bytes,
        permit: Option<Arc<OwnedSemaphorePermit>>,
        window_part: bool,
    ) {
        let Some((blocks, tag)) = self.cache() else {
            return;
        };
        let run = whole_blocks(start, data, self.size);
        if run.is_empty() {
            return;
        }
        let (pool, whole) = (self.shared.pool.clone(), data.clone());
        // Window parts are always kept: their memory is bounded by the read-ahead budget, or
        // by the wait in `read_range` for a part outside it.
        let source = match permit.is_some() || window_part {
            true => Source::Stream,
            false => Source::Read,
        };
        blocks.insert_run(tag, run, source, move || {
            pool.give(whole);
            drop(permit);
        });
    }

    /// Hands the data cache a part fetched whole that no read took bytes from (the kernel's
    /// reads can skip past a part): its blocks are the object's all the same.
    fn offer_part(&self, part: &mut Part) {
        if let (false, PartState::Ready(data)) = (part.cached, &part.state) {
            if data.len() as u64 == part.range.len() {
                part.cached = true;
                self.offer(part.range.start, &data.clone(), part._permit.clone(), true);
            }
        }
    }

    /// Empties the window to start again at `offset`, keeping what it fetched in the cache.
    fn reset_window(&mut self, offset: u64) {
        let mut parts = std::mem::take(&mut self.window.parts);
        for part in parts.iter_mut() {
            self.offer_part(part);
        }
        self.window.parts = parts;
        self.window.reset(offset, &self.shared.pool);
    }

    /// Starts bringing the whole object into the data cache once it has missed at random
    /// `FILL_AFTER` times, if it is small enough for the cache.
    fn maybe_fill(&mut self) {
        let Some((blocks, tag)) = self.cache() else {
            return;
        };
        if self.fill.is_none() && self.random_reads >= FILL_AFTER && blocks.may_fill(self.size) {
            self.fill = CacheFill::start(&self.shared, tag, &self.key, &self.etag, self.size);
        }
    }

    /// A read at random, once the file is known to be read so: the whole blocks around it in
    /// one GET, kept in the data cache, so that nearby reads come from disk.
    async fn fetch_blocks(&self, want: ByteRange) -> Result<Bytes, FsError> {
        // The more misses at random a file has, the more around each is fetched (up to
        // RANDOM_CHUNK_MAX, and a sixteenth of the file): a file read all over soon lives on
        // local disk, while a few reads of a huge file fetch little.
        // While the whole object is coming in, a miss fetches one block: soonest answered,
        // least in the way of the fill.
        let grown = (self.random_reads - RANDOM_AFTER) / RANDOM_GROWTH_EVERY;
        let chunk = match self.fill {
            Some(_) => BLOCK,
            None => (BLOCK
                << grown.min(RANDOM_CHUNK_MAX.trailing_zeros() - BLOCK.trailing_zeros()))
            .min((self.size / 16 / BLOCK * BLOCK).max(BLOCK)),
        };
        let start = want.start / chunk * chunk;
        let end = self
            .size
            .min((start + chunk).max(want.end.div_ceil(BLOCK) * BLOCK));
        let buffer = self.shared.pool.take((end - start) as usize);
        let data = self
            .shared
            .store
            .get_range_into(
                &self.key,
                ByteRange::new(start, end),
                Some(&self.etag),
                buffer,
            )
            .await?;
        if data.len() as u64 != end - start {
            return Err(FsError::Changed);
        }
        self.offer(start, &data, None, false);
        let from = (want.start - start) as usize;
        Ok(data.slice(from..from + want.len() as usize))
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the object).
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Bytes, FsError> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = self.size.min(offset + len as u64);
        // The window's own parts answer first: they are in memory, while their blocks in the
        // cache would cost a copy back out of the page cache.
        let in_window = self.window.covers(offset) && end <= self.window.next_fetch;
        if let (Some(done), Some(blocks)) = (self.last_cached.take(), &self.shared.blocks) {
            blocks.recycle(done);
        }
        let cached = match in_window {
            true => None,
            false => self.cached(ByteRange::new(offset, end)).await,
        };
        if let Some(data) = cached {
            if !self.window.parts.is_empty() && offset >= self.window.next_fetch {
                // Past the window's end, into cached blocks: its parts are done with.
                self.reset_window(end);
            }
            self.last_cached = Some(data.clone());
            if self.last_end.is_none_or(|e| e == offset) {
                self.read_cache_ahead(end);
            }
            self.served = true;
            self.last_end = Some(self.last_end.map_or(end, |e| e.max(end)));
            return Ok(data);
        }
        let mut result = self.read_range(ByteRange::new(offset, end)).await;
        if matches!(result, Err(FsError::Store(StoreError::PreconditionFailed)))
            && !self.served
            && self.may_repin
        {
            // Opened from cached attributes (within --metadata-ttl) of a version replaced
            // since: nothing was read yet, so the handle takes the current version instead.
            self.window.reset(0, &self.shared.pool);
            if let Ok(info) = self.shared.store.head(&self.key).await {
                tracing::debug!(key = %self.key, "the object changed since its attributes were cached; reading the current version");
                self.etag = info.etag;
                self.size = info.size;
                self.retag();
                let end = self.size.min(offset + len as u64);
                result = if offset >= self.size {
                    Ok(Bytes::new())
                } else {
                    self.read_range(ByteRange::new(offset, end)).await
                };
            }
        }
        self.served |= result.is_ok();
        if let Err(FsError::Store(StoreError::PreconditionFailed)) = result {
            tracing::error!(key = %self.key, "object changed in the bucket while open; failing the read instead of mixing versions");
            self.window.reset(0, &self.shared.pool);
            return Err(FsError::Changed);
        }
        if result.is_err() {
            self.window.reset(0, &self.shared.pool);
        }
        result
    }

    async fn read_range(&mut self, want: ByteRange) -> Result<Bytes, FsError> {
        let tuning = self.shared.tuning;
        if self.size <= tuning.small_file_size {
            if self.window.parts.is_empty() {
                let whole = ByteRange::new(0, self.size);
                // Cached whole: a re-read after a remount costs no GET.
                let data = self.fetch_alone(whole).await?;
                self.window.parts.push_back(Part {
                    range: whole,
                    state: PartState::Ready(data),
                    _permit: None,
                    cached: true,
                });
                self.window.next_fetch = self.size;
            }
            return self.serve_from_window(want).await;
        }
        let in_window = self.window.covers(want.start);
        let streaming = !self.window.parts.is_empty();
        // The kernel keeps several read-ahead requests in flight and they can arrive in any
        // order, so "sequential" tolerates a read landing a little ahead of or behind the window.
        let just_ahead = streaming
            && want.start >= self.window.next_fetch
            && want.start - self.window.next_fetch <= REORDER_SLACK;
        let just_behind = self
            .window
            .start()
            .is_some_and(|s| want.start < s && s - want.start <= REORDER_SLACK);
        // A first read near the start, read-ahead sized, counts as one too: the kernel's first
        // read-ahead requests can arrive out of order (1 MiB before 0).
        let sequential_start = self.last_end == Some(want.start)
            || self.stray_end == Some(want.start)
            || (self.last_end.is_none()
                && want.start < REORDER_SLACK
                && (want.start == 0 || want.len() >= READ_AHEAD_SIZED));
        let after_stray = self.stray_end.take().is_some();
        if !(in_window || just_ahead) {
            if just_behind {
                // Served on its own; the window keeps running.
                return self.fetch_alone(want).await;
            }
            if streaming && !sequential_start && !after_stray {
                // One read far from a streaming window (the kernel's read-ahead sends one now
                // and then) is served on its own, and the window keeps running: dropping it
                // would restart the stream from a small window, and the blocks it held would
                // be fetched again. A reader that really moved shows it with its next read.
                self.stray_end = Some(want.end);
                return self.fetch_alone(want).await;
            }
            if !sequential_start {
                // Random access: fetch only what was asked (whole blocks once the file is seen
                // to be read at random, with a data cache to keep them); drop the window.
                self.reset_window(want.end);
                self.last_end = Some(want.end);
                self.random_reads = self.random_reads.saturating_add(1);
                if self.tag.is_some() && self.random_reads >= RANDOM_AFTER {
                    self.maybe_fill();
                    return self.fetch_blocks(want).await;
                }
                return self.fetch_alone(want).await;
            }
            // With a data cache, the window starts at a block boundary, so that every part it
            // fetches is made of whole blocks.
            let start = match self.tag {
                Some(_) => want.start / BLOCK * BLOCK,
                None => want.start,
            };
            // A reader streaming on after blocks the data cache served keeps its window's
            // width rather than starting again from 1 MiB.
            let width = self.window.target;
            self.reset_window(start);
            self.window.target = width / 2;
        }
        // Sequential: drop what is behind, grow the window, keep it filled.
        while self
            .window
            .parts
            .front()
            .is_some_and(|p| p.range.end + REORDER_SLACK <= want.start)
        {
            if let Some(mut part) = self.window.parts.pop_front() {
                self.offer_part(&mut part);
                part.recycle(&self.shared.pool);
            }
        }
        self.window.target = if self.window.target == 0 {
            INITIAL_WINDOW.max(want.len())
        } else {
            (self.window.target * 2).min(tuning.max_window)
        };
        while self.window.next_fetch < self.size
            && (self.window.next_fetch < want.end
                || self.window.next_fetch - want.start < self.window.target)
        {
            let mut part_len = tuning.part_size.min(self.window.target);
            if self.tag.is_some() {
                part_len = part_len.div_ceil(BLOCK) * BLOCK;
            }
            let range = ByteRange::new(
                self.window.next_fetch,
                self.size.min(self.window.next_fetch + part_len),
            );
            let needed = range.start < want.end;
            if !needed && self.cache_holds(range) {
                // What comes next is in the data cache: the reads there are served from it
                // (see `read`), and the window stops here instead of fetching it again.
                break;
            }
            let permit = self.permit_for(range.len());
            if permit.is_none() && !needed {
                // The global read-ahead budget is spent: read ahead less.
                break;
            }
            if let (None, Some(blocks)) = (&permit, &self.shared.blocks) {
                // A part outside the budget is still cached whole: if the disk lags that far
                // behind, the reader waits for it instead of holding more memory.
                blocks.wait_pending_below(4 * PENDING_LIMIT).await;
            }
            let handle = self.spawn_get(range);
            self.window.parts.push_back(Part {
                range,
                state: PartState::Pending(handle),
                _permit: permit.map(Arc::new),
                cached: false,
            });
            self.window.next_fetch = range.end;
        }
        self.last_end = Some(self.last_end.map_or(want.end, |e| e.max(want.end)));
        self.serve_from_window(want).await
    }

    async fn serve_from_window(&mut self, want: ByteRange) -> Result<Bytes, FsError> {
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut fetched = Vec::new();
        for part in self.window.parts.iter_mut() {
            if part.range.end <= want.start || part.range.start >= want.end {
                continue;
            }
            let data = part.bytes().await?;
            if !part.cached && data.len() as u64 == part.range.len() {
                part.cached = true;
                fetched.push((part.range.start, data.clone(), part._permit.clone()));
            }
            let from = (want.start.max(part.range.start) - part.range.start) as usize;
            let to = (want.end.min(part.range.end) - part.range.start) as usize;
            if to > data.len() {
                // The object is shorter than when it was opened (and the server ignored
                // If-Match): treat it as changed.
                return Err(FsError::Changed);
            }
            pieces.push(data.slice(from..to));
        }
        for (start, data, permit) in fetched {
            self.offer(start, &data, permit, true);
        }
        Ok(join(pieces, want.len()))
    }
}

/// Consecutive pieces as one buffer (without a copy when there is one piece).
fn join(mut pieces: Vec<Bytes>, len: u64) -> Bytes {
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(len as usize);
            for p in pieces {
                joined.extend_from_slice(&p);
            }
            joined.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instrumented::Instrumented;
    use crate::store::memory::MemoryStore;
    use crate::store::RequestKind;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn reader(
        size: usize,
        tuning: ReadTuning,
        budget: usize,
    ) -> (Reader, Arc<Instrumented>, Vec<u8>, Arc<MemoryStore>) {
        let mem = Arc::new(MemoryStore::new());
        let bytes = data(size);
        mem.put("obj", bytes.clone());
        let store = Arc::new(Instrumented::new(mem.clone()));
        let r = open(&store, tuning, budget, None).await;
        (r, store, bytes, mem)
    }

    /// A reader of `obj` as the store has it now.
    async fn open(
        store: &Arc<Instrumented>,
        tuning: ReadTuning,
        budget: usize,
        blocks: Option<Arc<BlockCache>>,
    ) -> Reader {
        let info = store.head("obj").await.unwrap();
        let shared = ReadShared {
            store: store.clone(),
            budget: Arc::new(Semaphore::new(budget)),
            pool: Arc::new(BufferPool::new(4 << 20)),
            tuning,
            blocks,
        };
        Reader::new(Arc::new(shared), "obj".into(), info.etag, info.size)
    }

    const TUNING: ReadTuning = ReadTuning {
        part_size: 256 * 1024,
        max_window: 1024 * 1024,
        small_file_size: 64 * 1024,
    };

    #[tokio::test]
    async fn small_file_is_one_get() {
        let (mut r, store, bytes, _) = reader(5000, TUNING, 1000).await;
        let mut got = Vec::new();
        for off in (0..5000).step_by(1000) {
            got.extend_from_slice(&r.read(off, 1000).await.unwrap());
        }
        assert_eq!(got, bytes);
        assert_eq!(store.counters().count(RequestKind::Get), 1);
    }

    #[tokio::test]
    async fn sequential_read_returns_every_byte_with_large_requests() {
        let size = 3 * 1024 * 1024 + 17;
        let (mut r, store, bytes, _) = reader(size, TUNING, 1000).await;
        let mut got = Vec::new();
        let mut off = 0u64;
        loop {
            let chunk = r.read(off, 128 * 1024).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            off += chunk.len() as u64;
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), bytes.len());
        assert!(got == bytes);
        let gets = store.counters().count(RequestKind::Get);
        // 128 KiB reads, parts of up to 256 KiB: about size / part_size requests.
        assert!(
            gets <= (size as u64).div_ceil(256 * 1024) + 2,
            "{gets} GETs"
        );
        assert_eq!(
            store.counters().bytes_read(),
            size as u64,
            "nothing fetched twice"
        );
    }

    #[tokio::test]
    async fn reads_arriving_out_of_order_still_stream() {
        let size = 6 * 1024 * 1024;
        let (mut r, store, bytes, _) = reader(size, TUNING, 1000).await;
        let chunk = 128 * 1024u64;
        // The kernel's read-ahead: requests in groups of four, each group shuffled.
        let mut offsets: Vec<u64> = (0..(size as u64 / chunk)).map(|i| i * chunk).collect();
        for group in offsets.chunks_mut(4) {
            group.swap(0, 2);
            group.swap(1, 3);
        }
        offsets.swap(0, 2); // the very first request is in order: [0, 384K, 256K, 128K, …]
        for off in offsets {
            let got = r.read(off, chunk as u32).await.unwrap();
            assert_eq!(
                &got[..],
                &bytes[off as usize..(off + chunk) as usize],
                "at {off}"
            );
        }
        let fetched = store.counters().bytes_read();
        assert!(
            fetched <= size as u64 + 4 * chunk,
            "fetched {fetched} for {size}"
        );
    }

    #[tokio::test]
    async fn a_lone_read_far_ahead_of_a_stream_leaves_its_window_running() {
        let size = 12 * 1024 * 1024;
        let (mut r, store, bytes, _) = reader(size, TUNING, 1000).await;
        let chunk = 128 * 1024u64;
        // Beyond REORDER_SLACK from the window.
        let stray = 10 * 1024 * 1024 + 4096;
        for off in (0..size as u64).step_by(chunk as usize) {
            let got = r.read(off, chunk as u32).await.unwrap();
            assert_eq!(&got[..], &bytes[off as usize..(off + chunk) as usize]);
            if off == 1024 * 1024 {
                let ahead = (r.window.start(), r.window.next_fetch);
                let got = r.read(stray, 4096).await.unwrap();
                assert_eq!(&got[..], &bytes[stray as usize..stray as usize + 4096]);
                assert_eq!((r.window.start(), r.window.next_fetch), ahead);
            }
        }
        let fetched = store.counters().bytes_read();
        assert_eq!(fetched, size as u64 + 4096, "only the stray read twice");
    }

    #[tokio::test]
    async fn a_reader_that_moves_after_streaming_streams_from_there() {
        let size = 12 * 1024 * 1024;
        let (mut r, store, bytes, _) = reader(size, TUNING, 1000).await;
        let chunk = 128 * 1024u64;
        for off in (0..1024 * 1024).step_by(chunk as usize) {
            r.read(off, chunk as u32).await.unwrap();
        }
        let before = store.counters().count(RequestKind::Get);
        for off in (10 * 1024 * 1024..size as u64).step_by(chunk as usize) {
            let got = r.read(off, chunk as u32).await.unwrap();
            assert_eq!(&got[..], &bytes[off as usize..(off + chunk) as usize]);
        }
        // The first read there is served on its own, then a window streams the rest (parts
        // of 256 KiB, not a GET per read); the first window's parts were still being fetched.
        let gets = store.counters().count(RequestKind::Get) - before;
        assert!(gets <= 1 + 8 + 4, "{gets} GETs");
        let fetched = store.counters().bytes_read();
        assert!(
            fetched <= 2 * 1024 * 1024 + 2 * 1024 * 1024,
            "{fetched} bytes"
        );
    }

    #[tokio::test]
    async fn random_reads_fetch_only_what_is_asked() {
        let size = 8 * 1024 * 1024;
        let (mut r, store, bytes, _) = reader(size, TUNING, 1000).await;
        for off in [5_000_000u64, 1_000_000, 7_000_000, 300_000] {
            let got = r.read(off, 4096).await.unwrap();
            assert_eq!(&got[..], &bytes[off as usize..off as usize + 4096]);
        }
        assert_eq!(store.counters().count(RequestKind::Get), 4);
        assert_eq!(store.counters().bytes_read(), 4 * 4096);
    }

    #[tokio::test]
    async fn a_changed_object_fails_with_eio_not_mixed_content() {
        let size = 2 * 1024 * 1024;
        let (mut r, _, _, mem) = reader(size, TUNING, 1000).await;
        r.read(0, 4096).await.unwrap();
        mem.put("obj", vec![0u8; size]);
        r.window.reset(0, &r.shared.pool.clone());
        let err = r.read(4096, 4096).await.unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(matches!(err, FsError::Changed));
    }

    #[tokio::test]
    async fn read_ahead_respects_the_memory_budget() {
        let size = 4 * 1024 * 1024;
        // Budget of 4 units (256 KiB): the window can hold at most one part ahead.
        let (mut r, _, bytes, _) = reader(size, TUNING, 4).await;
        let mut off = 0u64;
        while off < size as u64 {
            let chunk = r.read(off, 128 * 1024).await.unwrap();
            assert_eq!(&chunk[..], &bytes[off as usize..off as usize + chunk.len()]);
            let held: u64 = r
                .window
                .parts
                .iter()
                .filter(|p| p._permit.is_some())
                .map(|p| p.range.len())
                .sum();
            assert!(held <= 4 * BUDGET_UNIT, "{held} bytes held under budget");
            off += chunk.len() as u64;
        }
    }
}
