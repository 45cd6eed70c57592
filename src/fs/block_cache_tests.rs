//! Tests of the data cache on its own, and of readers that use it, on the in-memory store.

use super::*;
use crate::fs::read::{ReadShared, ReadTuning, Reader};
use crate::fs::read_buffers::BufferPool;
use crate::store::instrumented::Instrumented;
use crate::store::memory::MemoryStore;
use crate::store::{ObjectStore, RequestKind};

fn block(seed: u8, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

/// Caches blocks `0..count` of `tag`, each `block(index, len)` (written in the background).
fn insert_blocks(cache: &Arc<BlockCache>, tag: ObjectTag, count: u64, len: usize) {
    for i in 0..count {
        cache.insert(tag, i, block(i as u8, len));
    }
}

fn cache_in(dir: &Path, cap: u64) -> Arc<BlockCache> {
    cache_with(dir, cap, Arc::new(AtomicU64::new(0)), u64::MAX)
}

fn cache_with(dir: &Path, cap: u64, staged: Arc<AtomicU64>, shared_cap: u64) -> Arc<BlockCache> {
    Arc::new(BlockCache::open(dir, "s3://b/ at test", cap, shared_cap, staged, 0.0).unwrap())
}

async fn wait_written(cache: &BlockCache) {
    for _ in 0..1000 {
        if !cache.writing() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("blocks never reached the disk");
}

/// Waits (at most 10 s) until `done` holds; `what` names it when it never does.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

fn stat(cache: &BlockCache, name: &str) -> u64 {
    let summary = cache.summary();
    let field = summary
        .split(' ')
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap();
    field.parse().unwrap()
}

#[tokio::test]
async fn a_block_is_served_to_the_same_version_only_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), 64 << 20);
    let v1 = cache.tag("photo.jpg", "\"etag-1\"");
    let v2 = cache.tag("photo.jpg", "\"etag-2\"");
    assert_ne!(v1, v2);
    assert_eq!(cache.read(v1, 0, 0, 10), None, "empty cache: a miss");
    cache.insert(v1, 0, block(1, BLOCK as usize));
    cache.insert(v1, 1, block(2, 1000));
    wait_written(&cache).await;
    assert_eq!(
        cache.read(v1, 0, 100, 200).unwrap(),
        block(1, BLOCK as usize).slice(100..200)
    );
    assert_eq!(cache.read(v1, 1, 0, 1000).unwrap(), block(2, 1000));
    assert_eq!(
        cache.read(v2, 0, 0, 10),
        None,
        "another ETag: never the old blocks"
    );
    assert_eq!(cache.bytes(), BLOCK + 1000);
    assert_eq!(
        (
            stat(&cache, "data_cache_hits"),
            stat(&cache, "data_cache_misses")
        ),
        (2, 2)
    );
    // A new mount finds them on disk, checks each on its first read, and serves it.
    drop(cache);
    let again = cache_in(dir.path(), 64 << 20);
    assert_eq!(again.bytes(), BLOCK + 1000);
    assert_eq!(
        again.read(v1, 1, 10, 20).unwrap(),
        block(2, 1000).slice(10..20)
    );
}

#[tokio::test]
async fn a_torn_block_is_dropped_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), 64 << 20);
    let tag = cache.tag("db.sqlite", "\"e\"");
    insert_blocks(&cache, tag, 3, 4096);
    wait_written(&cache).await;
    // A crash left: a block with its last bytes missing, one with a changed byte, a stray
    // file, and a group file none of whose slots is vouched for.
    let (group, _) = cache.block_on_disk(tag, 0);
    assert_eq!(
        crate::fs::write::files_below(&dir.path().join("blocks")),
        vec![group.clone()]
    );
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&group)
            .unwrap();
        let at = cache.block_on_disk(tag, 1).1 + 7;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 1], at).unwrap();
        // A torn write: the block's last bytes never reached the disk.
        file.write_all_at(&[0u8; 100], cache.block_on_disk(tag, 2).1 + 4000)
            .unwrap();
    }
    std::fs::write(dir.path().join("blocks/tmp-half-written"), b"xx").unwrap();
    let (empty_group, _) = cache.block_on_disk(cache.tag("other", "\"e\""), 0);
    std::fs::create_dir_all(empty_group.parent().unwrap()).unwrap();
    std::fs::write(&empty_group, vec![0u8; 5000]).unwrap();
    drop(cache);
    let again = cache_in(dir.path(), 64 << 20);
    assert!(!dir.path().join("blocks/tmp-half-written").exists());
    assert!(!empty_group.exists());
    let served: Vec<Option<Bytes>> = (0..3).map(|i| again.read(tag, i, 0, 4096)).collect();
    assert_eq!(
        served,
        vec![Some(block(0, 4096)), None, None],
        "only the intact block is served"
    );
    assert_eq!(stat(&again, "data_cache_torn"), 2);
    assert_eq!(again.bytes(), 4096, "the torn ones are forgotten");
    assert_eq!(again.disk_bytes(), 4096, "and their bytes are off the disk");
}

#[tokio::test]
async fn the_least_recently_used_blocks_go_first_and_the_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let len = 100 * 1024;
    // Room for four blocks.
    let cache = cache_in(dir.path(), 4 * len as u64 + 10);
    let tag = cache.tag("k", "\"e\"");
    for i in 0..4 {
        cache.insert(tag, i, block(i as u8, len));
        wait_written(&cache).await;
    }
    // Block 0 is read again: block 1 is now the oldest.
    assert!(cache.read(tag, 0, 0, 1).is_some());
    cache.insert(tag, 4, block(4, len));
    wait_written(&cache).await;
    assert!(cache.bytes() <= 4 * len as u64 + 10);
    assert!(cache.read(tag, 1, 0, 1).is_none(), "the oldest went");
    assert!(
        cache.read(tag, 0, 0, 1).is_some(),
        "the one used again stayed"
    );
    assert!(cache.read(tag, 4, 0, 1).is_some());
    assert!(stat(&cache, "data_cache_evictions") >= 1);
    assert_eq!(
        cache.disk_bytes(),
        cache.bytes(),
        "what the index counts is what the disk holds"
    );
}

#[tokio::test]
async fn staged_files_take_the_room_of_cached_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let staged = Arc::new(AtomicU64::new(0));
    let len = 100 * 1024;
    let cache = cache_with(dir.path(), u64::MAX, staged.clone(), 10 * len as u64);
    let tag = cache.tag("k", "\"e\"");
    insert_blocks(&cache, tag, 8, len);
    wait_written(&cache).await;
    assert_eq!(cache.bytes(), 8 * len as u64);
    // A file being written wants 6 blocks' worth: the cache makes way.
    assert!(cache.make_room(6 * len as u64));
    assert!(cache.bytes() <= 4 * len as u64);
    // Staged bytes fill the shared cap: no block is cached at all.
    staged.store(10 * len as u64, Ordering::Relaxed);
    cache.insert(tag, 20, block(20, len));
    wait_written(&cache).await;
    assert!(cache.read(tag, 20, 0, 1).is_none());
    assert_eq!(cache.bytes(), 0);
}

const TUNING: ReadTuning = ReadTuning {
    part_size: 2 << 20,
    max_window: 8 << 20,
    small_file_size: 64 * 1024,
};

struct CachedRig {
    _dir: tempfile::TempDir,
    mem: Arc<MemoryStore>,
    store: Arc<Instrumented>,
    blocks: Arc<BlockCache>,
}

impl CachedRig {
    fn new(cap: u64) -> CachedRig {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryStore::new());
        let store = Arc::new(Instrumented::new(mem.clone()));
        let blocks = cache_in(dir.path(), cap);
        CachedRig {
            _dir: dir,
            mem,
            store,
            blocks,
        }
    }

    async fn reader(&self, key: &str) -> Reader {
        let info = self.store.head(key).await.unwrap();
        let shared = ReadShared {
            store: self.store.clone(),
            budget: Arc::new(tokio::sync::Semaphore::new(10_000)),
            pool: Arc::new(BufferPool::new(4 << 20)),
            tuning: TUNING,
            blocks: Some(self.blocks.clone()),
        };
        Reader::new(Arc::new(shared), key.into(), info.etag, info.size)
    }

    fn gets(&self) -> u64 {
        self.store.counters().count(RequestKind::Get)
    }

    /// Puts an object of `size` bytes of pattern `seed` in the bucket; returns its bytes.
    fn put(&self, key: &str, size: usize, seed: u8) -> Vec<u8> {
        let bytes = content(size, seed);
        self.mem.put(key, bytes.clone());
        bytes
    }
}

fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

async fn read_whole(r: &mut Reader, size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < size {
        let chunk = r.read(out.len() as u64, 128 * 1024).await.unwrap();
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test]
async fn a_second_read_of_an_unchanged_object_costs_no_get_and_a_changed_one_is_read_fresh() {
    let rig = CachedRig::new(1 << 30);
    let size = 5 * BLOCK as usize + 12345;
    rig.mem.put("video.mp4", content(size, 1));
    let mut first = rig.reader("video.mp4").await;
    assert_eq!(read_whole(&mut first, size).await, content(size, 1));
    wait_written(&rig.blocks).await;
    let gets = rig.gets();
    assert_eq!(
        rig.blocks.bytes(),
        size as u64,
        "every block, the short last one too"
    );
    let mut second = rig.reader("video.mp4").await;
    assert_eq!(read_whole(&mut second, size).await, content(size, 1));
    assert_eq!(rig.gets(), gets, "no GET: every block came from disk");
    // Changed elsewhere: the new ETag names other blocks.
    rig.mem.put("video.mp4", content(size, 2));
    let mut third = rig.reader("video.mp4").await;
    assert_eq!(read_whole(&mut third, size).await, content(size, 2));
    assert!(rig.gets() > gets);
}

#[tokio::test]
async fn small_files_are_cached_whole_by_their_first_read() {
    let rig = CachedRig::new(1 << 30);
    rig.mem.put("note.txt", content(5000, 3));
    let mut r = rig.reader("note.txt").await;
    assert_eq!(
        &r.read(0, 4096).await.unwrap()[..],
        &content(5000, 3)[..4096]
    );
    wait_written(&rig.blocks).await;
    let gets = rig.gets();
    let mut again = rig.reader("note.txt").await;
    assert_eq!(
        &again.read(0, 8192).await.unwrap()[..],
        &content(5000, 3)[..]
    );
    assert_eq!(rig.gets(), gets);
}

#[tokio::test]
async fn random_reads_fetch_whole_blocks_only_once_the_pattern_is_seen() {
    let rig = CachedRig::new(1 << 30);
    let size = 16 * BLOCK as usize;
    let bytes = rig.put("db", size, 5);
    let mut r = rig.reader("db").await;
    let offsets = [
        9 * BLOCK + 4096,
        3 * BLOCK + 8192,
        12 * BLOCK,
        6 * BLOCK + 100,
    ];
    for (i, off) in offsets.iter().enumerate() {
        let before = rig.store.counters().bytes_read();
        let got = r.read(*off, 4096).await.unwrap();
        assert_eq!(&got[..], &bytes[*off as usize..*off as usize + 4096]);
        let fetched = rig.store.counters().bytes_read() - before;
        if (i as u32) + 1 < super::super::read::RANDOM_AFTER {
            assert_eq!(fetched, 4096, "read {i}: not yet known to be random");
        } else {
            assert_eq!(fetched, BLOCK, "read {i}: the whole block");
        }
    }
    wait_written(&rig.blocks).await;
    // A read near the last one comes from disk.
    let gets = rig.gets();
    let near = 6 * BLOCK + 300_000;
    let got = r.read(near, 4096).await.unwrap();
    assert_eq!(&got[..], &bytes[near as usize..near as usize + 4096]);
    assert_eq!(rig.gets(), gets);
}

#[tokio::test]
async fn reading_more_than_the_cap_leaves_at_most_the_cap_on_disk() {
    let cap = 3 * BLOCK;
    let rig = CachedRig::new(cap);
    let size = 10 * BLOCK as usize;
    rig.mem.put("big", content(size, 9));
    let mut r = rig.reader("big").await;
    let mut off = 0;
    while off < size {
        let chunk = r.read(off as u64, 128 * 1024).await.unwrap();
        off += chunk.len();
        wait_written(&rig.blocks).await;
        assert!(
            rig.blocks.bytes() <= cap + BLOCK,
            "{} held",
            rig.blocks.bytes()
        );
    }
    let on_disk = rig.blocks.disk_bytes();
    assert!(on_disk <= cap + BLOCK, "{on_disk} bytes on disk");
}

#[tokio::test]
async fn a_block_is_served_from_memory_while_written_and_checked_off_the_async_thread() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), 64 << 20);
    let tag = cache.tag("k", "\"e\"");
    cache.insert(tag, 0, block(7, 4096));
    // Whether or not the write is done, the bytes answer at once.
    assert_eq!(
        cache.read_now(tag, 0, 0, 10),
        Found::Hit(block(7, 4096).slice(0..10))
    );
    wait_written(&cache).await;
    drop(cache);
    // A new mount must check the block whole first: that is never done without waiting.
    let again = cache_in(dir.path(), 64 << 20);
    assert_eq!(again.read_now(tag, 0, 0, 10), Found::WouldBlock);
    assert_eq!(
        again.read(tag, 0, 0, 10).unwrap(),
        block(7, 4096).slice(0..10)
    );
    assert_eq!(again.read_now(tag, 1, 0, 10), Found::Miss);
}

/// Reads at random in `r`, one per block of the first `blocks` blocks, in a scattered order.
async fn read_scattered(r: &mut Reader, blocks: u64, bytes: &[u8]) {
    for i in 0..blocks {
        let off = (i * 7 % blocks) * BLOCK + 12_345;
        let got = r.read(off, 4096).await.unwrap();
        assert_eq!(&got[..], &bytes[off as usize..off as usize + 4096]);
    }
}

#[tokio::test]
async fn a_file_read_at_random_comes_in_whole_when_it_fits_a_quarter_of_the_cache() {
    let rig = CachedRig::new(256 << 20);
    let size = 24 * BLOCK as usize;
    let bytes = rig.put("db", size, 4);
    let mut r = rig.reader("db").await;
    read_scattered(&mut r, 10, &bytes).await;
    eventually("the fill's end", || {
        rig.blocks.bytes() >= size as u64 && !rig.blocks.writing()
    })
    .await;
    drop(r);
    let gets = rig.gets();
    let mut again = rig.reader("db").await;
    assert_eq!(read_whole(&mut again, size).await, bytes);
    assert_eq!(rig.gets(), gets, "all of it from local disk");
}

#[tokio::test]
async fn a_file_larger_than_a_quarter_of_the_cache_is_never_brought_in_whole() {
    let rig = CachedRig::new(64 << 20);
    let size = 24 * BLOCK as usize;
    let bytes = rig.put("huge", size, 6);
    let mut r = rig.reader("huge").await;
    read_scattered(&mut r, 12, &bytes).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    wait_written(&rig.blocks).await;
    assert_eq!(
        rig.gets(),
        12,
        "one GET per read, nothing in the background"
    );
    assert!(rig.blocks.bytes() <= 12 * BLOCK);
}

#[tokio::test]
async fn a_run_larger_than_the_cap_keeps_its_last_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let len = 100 * 1024;
    let cache = cache_in(dir.path(), 3 * len as u64);
    let tag = cache.tag("k", "\"e\"");
    let run = (0..8).map(|i| (i, block(i as u8, len))).collect();
    cache.insert_run(tag, run, Source::Stream, || {});
    wait_written(&cache).await;
    let held: Vec<u64> = (0..8)
        .filter(|i| cache.read(tag, *i, 0, 1).is_some())
        .collect();
    assert_eq!(held, vec![5, 6, 7]);
}

#[tokio::test]
async fn a_stream_whose_first_reads_arrive_out_of_order_is_cached_whole_and_not_taken_for_random() {
    let rig = CachedRig::new(1 << 30);
    let size = 32 * BLOCK as usize;
    let bytes = rig.put("video", size, 9);
    let mut r = rig.reader("video").await;
    // The kernel's first read-ahead requests, as seen under load: 1 MiB before 0.
    let mut offsets = vec![BLOCK, 0];
    offsets.extend((2..8).map(|i| i * BLOCK));
    for off in offsets {
        let got = r.read(off, BLOCK as u32).await.unwrap();
        assert!(
            got[..] == bytes[off as usize..(off + BLOCK) as usize],
            "at {off}"
        );
    }
    // Two reads elsewhere are the file's first at random: exactly the bytes asked, not
    // whole blocks (which would mean the first reads were counted as random ones).
    for off in [26 * BLOCK + 4096, 20 * BLOCK + 8192] {
        let before = rig.store.counters().bytes_read();
        let got = r.read(off, 4096).await.unwrap();
        assert_eq!(&got[..], &bytes[off as usize..off as usize + 4096]);
        assert_eq!(rig.store.counters().bytes_read() - before, 4096);
    }
    wait_written(&rig.blocks).await;
    // Every block the stream read is kept, the two that came out of order too.
    let gets = rig.gets();
    let mut again = rig.reader("video").await;
    for i in 0..8 {
        let got = again.read(i * BLOCK, BLOCK as u32).await.unwrap();
        assert!(got[..] == bytes[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize]);
    }
    assert_eq!(rig.gets(), gets, "the first 8 blocks came from disk");
}

#[tokio::test]
async fn parts_read_outside_the_read_ahead_budget_are_cached_too() {
    let rig = CachedRig::new(1 << 30);
    let size = 12 * BLOCK as usize;
    rig.mem.put("f", content(size, 8));
    let info = rig.store.head("f").await.unwrap();
    // A budget of one unit: every part the reader needs goes without a permit.
    let shared = ReadShared {
        store: rig.store.clone(),
        budget: Arc::new(tokio::sync::Semaphore::new(1)),
        pool: Arc::new(BufferPool::new(4 << 20)),
        tuning: TUNING,
        blocks: Some(rig.blocks.clone()),
    };
    let mut r = Reader::new(Arc::new(shared), "f".into(), info.etag, info.size);
    assert_eq!(read_whole(&mut r, size).await, content(size, 8));
    wait_written(&rig.blocks).await;
    assert_eq!(rig.blocks.bytes(), size as u64, "every block kept");
}

#[tokio::test]
async fn the_number_of_blocks_is_bounded_whatever_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(
        dir.path(),
        "s3://b/ at test",
        1 << 30,
        u64::MAX,
        Arc::new(AtomicU64::new(0)),
        0.0,
    )
    .unwrap()
    .with_max_blocks(32);
    let cache = Arc::new(cache);
    // Small files, one block each: far below the byte cap, over the count.
    for i in 0..100 {
        let tag = cache.tag(&format!("thumb-{i}.jpg"), "\"e\"");
        cache.insert(tag, 0, block(i as u8, 2000));
        wait_written(&cache).await;
    }
    let newest = cache.tag("thumb-99.jpg", "\"e\"");
    assert!(cache.read(newest, 0, 0, 1).is_some());
    let count = crate::fs::write::files_below(&dir.path().join("blocks")).len();
    assert!(count <= 33, "{count} blocks kept");
}

#[tokio::test]
async fn blocks_asked_ahead_for_are_checked_and_in_memory_before_the_reader_comes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), 64 << 20);
    let tag = cache.tag("video.mkv", "\"e\"");
    insert_blocks(&cache, tag, 4, BLOCK as usize);
    wait_written(&cache).await;
    drop(cache);
    let again = cache_in(dir.path(), 64 << 20);
    assert_eq!(again.read_now(tag, 2, 0, 10), Found::WouldBlock);
    // A damaged block among them is found out ahead, too.
    let (group, at) = again.block_on_disk(tag, 3);
    let mut bytes = std::fs::read(&group).unwrap();
    bytes[at as usize + 99] ^= 1;
    std::fs::write(&group, bytes).unwrap();
    again.will_need(tag, 1, 3);
    eventually("block 2 checked ahead of its read", || {
        matches!(again.read_now(tag, 2, 0, 10), Found::Hit(_))
    })
    .await;
    assert_eq!(
        again.read_now(tag, 1, 5, 10),
        Found::Hit(block(1, BLOCK as usize).slice(5..10))
    );
    eventually("block 3 found damaged", || {
        stat(&again, "data_cache_torn") == 1
    })
    .await;
    assert_eq!(again.read_now(tag, 3, 0, 10), Found::Miss);
    assert_eq!(
        again.read_now(tag, 0, 0, 10),
        Found::WouldBlock,
        "not asked for"
    );
}

#[tokio::test]
async fn a_re_read_of_a_partly_cached_file_fetches_only_the_missing_blocks() {
    let rig = CachedRig::new(1 << 30);
    let size = 24 * BLOCK as usize;
    let bytes = rig.put("film", size, 8);
    // A first reader that started at block 6 and read to the end.
    let mut first = rig.reader("film").await;
    let mut off = 6 * BLOCK;
    while off < size as u64 {
        off += first.read(off, 128 * 1024).await.unwrap().len() as u64;
    }
    drop(first);
    wait_written(&rig.blocks).await;
    let fetched = rig.store.counters().bytes_read();
    let mut again = rig.reader("film").await;
    assert_eq!(read_whole(&mut again, size).await, bytes);
    // The first 6 blocks from the bucket (the window stops where the cache takes over, give
    // or take the part it was fetching), the rest from the cache.
    let more = rig.store.counters().bytes_read() - fetched;
    assert!(
        more <= 6 * BLOCK + TUNING.part_size,
        "{more} bytes fetched again"
    );
    let hits = stat(&rig.blocks, "data_cache_hits");
    assert!(
        hits >= 16 * 8,
        "{hits} hits: the blocks after the window's last part"
    );
}

#[tokio::test]
async fn bytes_no_record_vouches_for_leave_the_disk_at_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), 64 << 20);
    let tag = cache.tag("film.mkv", "\"e\"");
    insert_blocks(&cache, tag, 2, BLOCK as usize);
    wait_written(&cache).await;
    // A crash after block 1's data but before its record: the record is not there.
    let (group, _) = cache.block_on_disk(tag, 1);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&group)
            .unwrap();
        file.write_all_at(&[0u8; 16], 8 * BLOCK + 16).unwrap();
    }
    drop(cache);
    let again = cache_in(dir.path(), 64 << 20);
    assert_eq!(again.bytes(), BLOCK);
    assert_eq!(again.disk_bytes(), BLOCK, "block 1's bytes are punched out");
    assert_eq!(
        again.read(tag, 0, 0, 10),
        Some(block(0, BLOCK as usize).slice(0..10))
    );
    assert_eq!(again.read(tag, 1, 0, 10), None);
}

#[tokio::test]
async fn blocks_of_a_cache_closed_cleanly_are_trusted_and_after_a_crash_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), 64 << 20);
    let tag = cache.tag("album/cover.jpg", "\"e\"");
    insert_blocks(&cache, tag, 2, 4096);
    // Waits for the blocks on their way itself.
    cache.close().await;
    drop(cache);
    let mark = dir.path().join("blocks").join(CLOSED_CLEANLY);
    assert!(mark.exists());
    let again = cache_in(dir.path(), 64 << 20);
    assert!(
        !mark.exists(),
        "the mark goes as the next mount opens the cache"
    );
    assert_eq!(
        again.read_now(tag, 0, 0, 10),
        Found::Hit(block(0, 4096).slice(0..10)),
        "served without a check first"
    );
    // This mount ends without closing the cache (a crash): the next one checks.
    drop(again);
    let third = cache_in(dir.path(), 64 << 20);
    assert_eq!(third.read_now(tag, 1, 0, 10), Found::WouldBlock);
    assert_eq!(third.read(tag, 1, 0, 10), Some(block(1, 4096).slice(0..10)));
}
