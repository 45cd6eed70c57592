//! Tests of the filesystem core on the in-memory store, asserting cost as well as behaviour.

use std::sync::Arc;

use super::page_sample::LISTING_SAMPLE;
use super::write::WriteTuning;
use super::*;
use crate::store::instrumented::Instrumented;
use crate::store::memory::MemoryStore;
use crate::store::RequestKind;
use namespace::caller;

pub(super) struct Rig {
    pub mem: Arc<MemoryStore>,
    pub store: Arc<Instrumented>,
    pub fs: Arc<Fs>,
}

fn rig(prefix: &str) -> Rig {
    rig_with(prefix, FsConfig::default())
}

pub(super) fn rig_with(prefix: &str, cfg: FsConfig) -> Rig {
    rig_on(Arc::new(MemoryStore::new()), prefix, cfg)
}

/// A mount of the bucket `mem` holds.
fn rig_on(mem: Arc<MemoryStore>, prefix: &str, cfg: FsConfig) -> Rig {
    let store = Arc::new(Instrumented::new(mem.clone()));
    let fs = Fs::new(
        store.clone(),
        Some(store.counters()),
        prefix.to_string(),
        FsConfig {
            list_page_size: 100,
            ..cfg
        },
    );
    Rig {
        mem,
        store,
        fs: Arc::new(fs),
    }
}

impl Rig {
    /// Another mount of the same bucket, as after a remount: it knows only what the bucket
    /// holds.
    pub fn remount(&self) -> Rig {
        rig_on(self.mem.clone(), "", FsConfig::default())
    }

    pub fn count(&self, kind: RequestKind) -> u64 {
        self.store.counters().count(kind)
    }

    pub async fn list(&self, ino: Ino, plus: bool) -> Vec<(String, Attr)> {
        let fh = self.fs.opendir(ino).unwrap();
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let batch = self.read_batch(ino, fh, offset, plus).await.unwrap();
            let Some(last) = batch.last() else {
                break;
            };
            offset = last.2;
            out.extend(batch.into_iter().map(|(n, a, _)| (n, a)));
        }
        self.fs.releasedir(fh);
        out
    }

    /// One getdents' worth (at most 64 entries) of the open listing `fh`, from cookie
    /// `offset` on: each entry's name, attributes and next cookie.
    pub async fn read_batch(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        plus: bool,
    ) -> Result<Vec<(String, Attr, u64)>, FsError> {
        let mut batch = Vec::new();
        self.fs
            .readdir(ino, fh, offset, plus, &mut |e: DirSinkEntry<'_>| {
                batch.push((e.name.to_string(), e.attr.clone(), e.offset));
                batch.len() >= 64
            })
            .await?;
        Ok(batch)
    }

    /// A folder `name` of `count` one-byte files `f00000`, `f00001`, ..., looked up.
    pub async fn folder_of_files(&self, name: &str, count: usize) -> Attr {
        for i in 0..count {
            self.mem.put(&format!("{name}/f{i:05}"), "x");
        }
        self.fs.lookup(Ino::ROOT, name).await.unwrap()
    }

    /// The names a listing of `ino` shows, in order ("." and ".." first).
    pub async fn names(&self, ino: Ino, plus: bool) -> Vec<String> {
        self.list(ino, plus)
            .await
            .into_iter()
            .map(|e| e.0)
            .collect()
    }

    pub async fn read_all(&self, ino: Ino) -> Vec<u8> {
        let (fh, _) = self.fs.open(ino, false, false).await.unwrap();
        let mut out = Vec::new();
        loop {
            let chunk = self
                .fs
                .read(fh, out.len() as u64, 128 * 1024)
                .await
                .unwrap();
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.fs.release(fh).await.unwrap();
        out
    }
}

#[tokio::test]
async fn ls_l_of_a_directory_with_metadata_heads_each_file_once() {
    let r = rig("");
    let mut meta = crate::store::Metadata::new();
    meta.insert("mode".into(), "33216".into());
    for i in 0..300 {
        r.mem
            .put_with_metadata(&format!("big/f{i:04}"), vec![1u8; i % 7], meta.clone());
    }
    let dir = r.fs.lookup(Ino::ROOT, "big").await.unwrap();
    let heads = r.count(RequestKind::Head);
    assert_eq!(r.list(dir.ino, true).await.len(), 302);
    assert_eq!(r.count(RequestKind::Head) - heads, 300, "one HEAD per file");
    let heads = r.count(RequestKind::Head);
    assert_eq!(r.list(dir.ino, true).await.len(), 302);
    assert_eq!(
        r.count(RequestKind::Head) - heads,
        0,
        "unchanged objects are not asked again"
    );
    r.mem.put_with_metadata("big/f0007", "changed", meta);
    let entries = r.list(dir.ino, true).await;
    assert_eq!(
        r.count(RequestKind::Head) - heads,
        1,
        "only the changed one"
    );
    let f7 = &entries.iter().find(|e| e.0 == "f0007").unwrap().1;
    assert_eq!((f7.size, f7.perm), (7, 0o700));
}

#[tokio::test]
async fn ls_l_of_a_directory_without_metadata_heads_a_sample_only() {
    let r = rig("");
    let dir = r.folder_of_files("plain", 300).await;
    let heads = r.count(RequestKind::Head);
    let entries = r.list(dir.ino, true).await;
    assert_eq!(entries.len(), 302);
    assert_eq!(
        r.count(RequestKind::Head) - heads,
        3 * LISTING_SAMPLE as u64,
        "a sample per page of 100"
    );
    assert!(entries[2..].iter().all(|e| e.1.perm == 0o644));
}

#[tokio::test]
async fn a_long_listing_is_fetched_and_sampled_ahead_of_its_reader_within_a_bound() {
    let r = rig("");
    let dir = r.folder_of_files("long", 3000).await;
    let (lists, heads) = (r.count(RequestKind::List), r.count(RequestKind::Head));
    let fh = r.fs.opendir(dir.ino).unwrap();
    let first = r.read_batch(dir.ino, fh, 0, true).await.unwrap();
    assert_eq!(first[2].0, "f00000");
    // The reader stops (the kernel takes in what it got); the pages after go on arriving,
    // each sampled as it comes, until the bound.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pages = 1 + dir::PAGES_AHEAD as u64;
    assert_eq!(r.count(RequestKind::List) - lists, pages, "30 pages in all");
    assert_eq!(
        r.count(RequestKind::Head) - heads,
        pages * LISTING_SAMPLE as u64
    );
    r.fs.releasedir(fh);
    // Listed again to its end: every page once, every name in order, and samples only for
    // the pages not sampled before (the memo holds the others).
    let (lists, heads) = (r.count(RequestKind::List), r.count(RequestKind::Head));
    let names = r.names(dir.ino, true).await;
    assert_eq!(names.len(), 3002);
    assert!(names[2..].windows(2).all(|w| w[0] < w[1]));
    assert_eq!(r.count(RequestKind::List) - lists, 30);
    assert_eq!(
        r.count(RequestKind::Head) - heads,
        (30 - pages) * LISTING_SAMPLE as u64
    );
    let heads = r.count(RequestKind::Head);
    assert_eq!(r.names(dir.ino, true).await, names);
    assert_eq!(
        r.count(RequestKind::Head),
        heads,
        "a third listing: no HEAD"
    );
}

#[tokio::test]
async fn a_page_fetched_ahead_that_fails_fails_the_read_and_a_retry_goes_on_from_it() {
    let r = rig("");
    let dir = r.folder_of_files("d", 500).await;
    // The third page is asked for ahead, while the reader is still on the first.
    r.store.fail_nth(
        RequestKind::List,
        3,
        crate::store::StoreError::Unreachable("connection reset".into()),
    );
    let fh = r.fs.opendir(dir.ino).unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    let mut failures = 0;
    loop {
        match r.read_batch(dir.ino, fh, offset, true).await {
            Ok(batch) => {
                let Some(last) = batch.last() else {
                    break;
                };
                offset = last.2;
                names.extend(batch.into_iter().map(|e| e.0));
            }
            // The kernel hands the error to the program; its next getdents asks again from
            // the same place.
            Err(e) => {
                assert!(
                    matches!(e, FsError::Store(crate::store::StoreError::Unreachable(_))),
                    "{e:?}"
                );
                failures += 1;
            }
        }
    }
    r.fs.releasedir(fh);
    assert_eq!(failures, 1);
    let expected: Vec<String> = [".", ".."]
        .into_iter()
        .map(String::from)
        .chain((0..500).map(|i| format!("f{i:05}")))
        .collect();
    assert_eq!(names, expected, "each entry once, in order");
}

#[tokio::test]
async fn ls_l_with_fast_listings_costs_listing_pages_and_no_head() {
    let r = rig_with(
        "",
        FsConfig {
            listing_heads: false,
            ..FsConfig::default()
        },
    );
    for i in 0..1000 {
        r.mem.put(&format!("big/f{i:04}"), vec![1u8; i % 7]);
    }
    let dir = r.fs.lookup(Ino::ROOT, "big").await.unwrap();
    assert_eq!(dir.kind, Kind::Dir);
    let (heads, lists) = (r.count(RequestKind::Head), r.count(RequestKind::List));
    let entries = r.list(dir.ino, true).await;
    assert_eq!(entries.len(), 1002, ". and .. and 1000 files");
    assert_eq!(entries[2].0, "f0000");
    assert_eq!(entries[5].1.size, 3);
    assert_eq!(r.count(RequestKind::Head) - heads, 0, "no HEAD per entry");
    assert_eq!(
        r.count(RequestKind::List) - lists,
        10,
        "1000 keys in pages of 100"
    );
    // Attributes came with the listing, so stat of any entry sends nothing.
    let before = r.count(RequestKind::Head);
    let attr = r.fs.getattr(entries[500].1.ino).await.unwrap();
    assert_eq!(attr.size, entries[500].1.size);
    assert_eq!(r.count(RequestKind::Head), before);
}

#[tokio::test]
async fn lookup_sends_one_head_and_one_single_key_list() {
    let r = rig("");
    for i in 0..500 {
        r.mem.put(&format!("f{i}"), "x");
    }
    let attr = r.fs.lookup(Ino::ROOT, "f42").await.unwrap();
    assert_eq!((attr.kind, attr.size), (Kind::File, 1));
    assert_eq!(r.count(RequestKind::Head), 1);
    assert_eq!(r.count(RequestKind::List), 1);
}

#[tokio::test]
async fn misses_are_cached() {
    let r = rig("");
    for _ in 0..5 {
        let err = r.fs.lookup(Ino::ROOT, "desktop.ini").await.unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
    }
    assert_eq!(
        r.count(RequestKind::Head),
        1,
        "later probes answered from the miss cache"
    );
}

#[tokio::test]
async fn implicit_and_marked_directories_and_the_internal_path() {
    let r = rig("root/");
    r.mem.put("root/implicit/a.txt", "a");
    r.mem.put("root/marked/", "");
    r.mem.put("outside.txt", "no");
    r.mem.put("rootsibling/x", "no");
    let names = r.names(Ino::ROOT, false).await;
    assert_eq!(names, vec![".", "..", "implicit", "marked"]);
    let marked = r.fs.lookup(Ino::ROOT, "marked").await.unwrap();
    assert_eq!(marked.kind, Kind::Dir);
    assert_eq!(
        r.list(marked.ino, false).await.len(),
        2,
        "an empty marked directory"
    );
    assert!(r.fs.lookup(Ino::ROOT, "outside.txt").await.is_err());
    let implicit = r.fs.lookup(Ino::ROOT, "implicit").await.unwrap();
    let a = r.fs.lookup(implicit.ino, "a.txt").await.unwrap();
    assert_eq!(r.read_all(a.ino).await, b"a");
}

#[tokio::test]
async fn file_and_directory_of_one_name_show_the_directory_in_lookup_and_listing() {
    let r = rig("");
    r.mem.put("x", "file");
    r.mem.put("x/inner", "in");
    let listed: Vec<(String, Kind)> = r
        .list(Ino::ROOT, true)
        .await
        .into_iter()
        .map(|(n, a)| (n, a.kind))
        .collect();
    assert_eq!(listed[2..], [("x".to_string(), Kind::Dir)]);
    assert_eq!(r.fs.lookup(Ino::ROOT, "x").await.unwrap().kind, Kind::Dir);
}

#[tokio::test]
async fn inode_numbers_are_stable_and_match_between_readdir_and_lookup() {
    let r = rig("");
    r.mem.put("d/f", "1");
    let d = r.fs.lookup(Ino::ROOT, "d").await.unwrap();
    let listed = r.list(d.ino, false).await;
    let f = r.fs.lookup(d.ino, "f").await.unwrap();
    assert_eq!(listed[2].1.ino, f.ino);
    r.fs.forget(f.ino, 1);
    assert_eq!(r.fs.lookup(d.ino, "f").await.unwrap().ino, f.ino);
}

#[tokio::test]
async fn readdirplus_references_are_returned_for_entries_the_kernel_did_not_take() {
    let r = rig("");
    for i in 0..10 {
        r.mem.put(&format!("f{i}"), "1");
    }
    let base = r.fs.open_inodes();
    let fh = r.fs.opendir(Ino::ROOT).unwrap();
    let mut taken = 0;
    r.fs.readdir(Ino::ROOT, fh, 0, true, &mut |_e: DirSinkEntry<'_>| {
        taken += 1;
        taken > 5 // accept ".", "..", f0..f3; refuse the 6th
    })
    .await
    .unwrap();
    assert_eq!(
        r.fs.open_inodes() - base,
        3,
        "f0, f1, f2 referenced; the refused one not"
    );
}

#[tokio::test]
async fn read_only_refusals_send_nothing() {
    let r = rig("");
    r.mem.put("f", "1");
    let f = r.fs.lookup(Ino::ROOT, "f").await.unwrap();
    let before = r.store.counters().summary();
    assert_eq!(
        r.fs.open(f.ino, true, false).await.unwrap_err().errno(),
        libc::EROFS
    );
    let owner = super::namespace::Caller { uid: 0, gid: 0 };
    let fifo = r.fs.mknod(Ino::ROOT, "p", Special::Fifo, 0o644, 0, owner);
    assert_eq!(fifo.await.unwrap_err().errno(), libc::EROFS);
    assert_eq!(r.store.counters().summary(), before);
}

#[tokio::test]
async fn reopening_an_unchanged_file_keeps_the_page_cache() {
    let r = rig("");
    r.mem.put("f", "one");
    let f = r.fs.lookup(Ino::ROOT, "f").await.unwrap();
    let (h1, keep1) = r.fs.open(f.ino, false, false).await.unwrap();
    let (h2, keep2) = r.fs.open(f.ino, false, false).await.unwrap();
    assert!(!keep1 && keep2);
    r.fs.release(h1).await.unwrap();
    r.fs.release(h2).await.unwrap();
}

#[tokio::test]
async fn store_errors_become_errnos() {
    let r = rig("");
    r.store
        .fail_nth(RequestKind::List, 1, StoreError::AccessDenied("no".into()));
    let err = r.fs.lookup(Ino::ROOT, "x").await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES);
    r.mem.put("f", vec![7u8; 10]);
    let f = r.fs.lookup(Ino::ROOT, "f").await.unwrap();
    let (fh, _) = r.fs.open(f.ino, false, false).await.unwrap();
    r.store.fail_nth(RequestKind::Get, 1, StoreError::Timeout);
    assert_eq!(
        r.fs.read(fh, 0, 10).await.unwrap_err().errno(),
        libc::ETIMEDOUT
    );
    assert_eq!(
        &r.fs.read(fh, 0, 10).await.unwrap()[..],
        &[7u8; 10],
        "a later read retries"
    );
}

// ---- writing ----

pub(super) struct WriteRig {
    pub rig: Rig,
    pub dir: tempfile::TempDir,
    pub cache: Arc<write::CacheDir>,
}

pub(super) fn write_rig(cache_cap: u64) -> WriteRig {
    write_rig_with(cache_cap, FsConfig::default())
}

pub(super) fn write_rig_with(cache_cap: u64, cfg: FsConfig) -> WriteRig {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let store = Arc::new(Instrumented::new(mem.clone()));
    let cache = Arc::new(write::CacheDir::open(dir.path(), cache_cap).unwrap());
    let fs = Fs::new(
        store.clone(),
        Some(store.counters()),
        String::new(),
        FsConfig {
            write: WriteTuning {
                part_size: write::MIN_PART_SIZE,
                upload_concurrency: 2,
                buffer_memory: cfg.write.buffer_memory,
                conflict: cfg.write.conflict,
            },
            ..cfg
        },
    )
    .with_cache(cache.clone());
    WriteRig {
        rig: Rig {
            mem,
            store,
            fs: Arc::new(fs),
        },
        dir,
        cache,
    }
}

pub(super) use super::write::files_below;

/// Waits (at most `limit`) until no file of `fs` waits for its upload.
pub(super) async fn wait_uploaded(fs: &Fs, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while fs.pending_uploads() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "uploads never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn model_bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

impl WriteRig {
    async fn write_all(&self, fh: u64, data: &[u8]) {
        for (i, chunk) in data.chunks(128 * 1024).enumerate() {
            let n = self
                .rig
                .fs
                .write(fh, (i * 128 * 1024) as u64, chunk)
                .await
                .unwrap();
            assert_eq!(n as usize, chunk.len());
        }
    }

    async fn write_all_from(&self, fh: u64, at: usize, data: &[u8]) {
        let n = self.rig.fs.write(fh, at as u64, data).await.unwrap();
        assert_eq!(n as usize, data.len());
    }

    /// Contents of the files kept in `recovery/` (at any depth: `TIME/PATH`).
    pub fn recovered(&self) -> Vec<Vec<u8>> {
        self.recovered_paths()
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    /// The files kept in `recovery/`, as paths below it.
    pub fn recovered_paths(&self) -> Vec<std::path::PathBuf> {
        files_below(&self.dir.path().join("recovery"))
    }
}

#[tokio::test]
async fn a_small_new_file_is_one_put_at_close() {
    let w = write_rig(1 << 30);
    let (attr, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "note.txt", 0o644, caller())
        .await
        .unwrap();
    w.rig.fs.write(fh, 0, b"hello ").await.unwrap();
    w.rig.fs.write(fh, 6, b"world").await.unwrap();
    assert_eq!(
        w.rig.mem.content("note.txt"),
        None,
        "nothing is sent before close"
    );
    assert_eq!(w.rig.fs.getattr(attr.ino).await.unwrap().size, 11);
    w.rig.fs.flush(fh).await.unwrap();
    assert_eq!(
        w.rig.mem.content("note.txt").as_deref(),
        Some(&b"hello world"[..])
    );
    w.rig.fs.release(fh).await.unwrap();
    assert_eq!(w.rig.count(RequestKind::Put), 1);
    assert_eq!(w.rig.count(RequestKind::CreateMultipart), 0);
    assert_eq!(w.rig.fs.pending_uploads(), 0);
    let again = w.rig.fs.lookup(Ino::ROOT, "note.txt").await.unwrap();
    assert_eq!(again.size, 11);
}

#[tokio::test]
async fn an_empty_new_file_is_created_too() {
    let w = write_rig(1 << 30);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "empty", 0o644, caller())
        .await
        .unwrap();
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert_eq!(w.rig.mem.content("empty").as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn a_large_file_goes_up_in_parts_and_byte_exact() {
    let w = write_rig(1 << 30);
    let data = model_bytes(12 * 1024 * 1024 + 3, 7);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "big.bin", 0o644, caller())
        .await
        .unwrap();
    w.write_all(fh, &data).await;
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert!(w.rig.mem.content("big.bin").unwrap() == data);
    assert_eq!(w.rig.count(RequestKind::CreateMultipart), 1);
    assert_eq!(
        w.rig.count(RequestKind::UploadPart),
        3,
        "5 MiB + 5 MiB + 2 MiB"
    );
    assert_eq!(w.rig.count(RequestKind::CompleteMultipart), 1);
    assert_eq!(w.rig.store.counters().bytes_written(), data.len() as u64);
}

#[tokio::test]
async fn appending_keeps_the_old_bytes_and_reads_see_new_ones() {
    let w = write_rig(1 << 30);
    w.rig.mem.put("log.txt", "line 1\n");
    let f = w.rig.fs.lookup(Ino::ROOT, "log.txt").await.unwrap();
    let (fh, _) = w.rig.fs.open(f.ino, true, false).await.unwrap();
    w.rig.fs.write(fh, 7, b"line 2\n").await.unwrap();
    // Another handle opened meanwhile reads the same content.
    let (reader, _) = w.rig.fs.open(f.ino, false, false).await.unwrap();
    assert_eq!(
        &w.rig.fs.read(reader, 0, 100).await.unwrap()[..],
        b"line 1\nline 2\n"
    );
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    w.rig.fs.release(reader).await.unwrap();
    assert_eq!(
        w.rig.mem.content("log.txt").as_deref(),
        Some(&b"line 1\nline 2\n"[..])
    );
}

#[tokio::test]
async fn truncate_of_a_path_uploads_at_once() {
    let w = write_rig(1 << 30);
    w.rig.mem.put("t.txt", "0123456789");
    let f = w.rig.fs.lookup(Ino::ROOT, "t.txt").await.unwrap();
    let attr = w.rig.fs.set_size(f.ino, 4).await.unwrap();
    assert_eq!(attr.size, 4);
    assert_eq!(w.rig.mem.content("t.txt").as_deref(), Some(&b"0123"[..]));
    assert_eq!(w.rig.fs.pending_uploads(), 0);
}

#[tokio::test]
async fn random_writes_and_truncates_match_a_model() {
    let w = write_rig(1 << 30);
    let mut model: Vec<u8> = model_bytes(300_000, 1);
    w.rig.mem.put("m.bin", model.clone());
    let f = w.rig.fs.lookup(Ino::ROOT, "m.bin").await.unwrap();
    let (fh, _) = w.rig.fs.open(f.ino, true, false).await.unwrap();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for step in 0..200 {
        match next(5) {
            0 => {
                let size = next(400_000) as usize;
                w.rig.fs.set_size(f.ino, size as u64).await.unwrap();
                model.resize(size, 0);
            }
            _ => {
                let off = next(350_000) as usize;
                let len = 1 + next(20_000) as usize;
                let data = model_bytes(len, step as u8);
                w.rig.fs.write(fh, off as u64, &data).await.unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
        }
        let got = w.rig.fs.read(fh, 0, u32::MAX).await.unwrap();
        assert!(got == model, "step {step}: content differs from the model");
    }
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert!(w.rig.mem.content("m.bin").unwrap() == model);
    assert_eq!(
        w.rig.fs.pending_uploads(),
        0,
        "the last release ends the staging copy"
    );
    let staging = std::fs::read_dir(w.dir.path().join("staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "and removes its file");
}

#[tokio::test]
async fn a_failed_upload_fails_close_keeps_the_bytes_and_leaves_no_parts() {
    let w = write_rig(1 << 30);
    let data = model_bytes(11 * 1024 * 1024, 9);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "precious.bin", 0o644, caller())
        .await
        .unwrap();
    w.write_all(fh, &data).await;
    w.rig.store.fail_nth(
        RequestKind::UploadPart,
        2,
        StoreError::Unreachable("cable cut".into()),
    );
    let err = w.rig.fs.flush(fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EHOSTUNREACH);
    assert_eq!(w.rig.count(RequestKind::AbortMultipart), 1);
    assert_eq!(w.rig.mem.open_uploads(), 0, "the failed upload was aborted");
    assert_eq!(w.rig.mem.content("precious.bin"), None);
    // A second close of the same file does not pretend to succeed.
    assert!(w.rig.fs.flush(fh).await.is_err());
    w.rig.fs.release(fh).await.unwrap_err();
    let recovered = w.recovered();
    assert_eq!(recovered.len(), 1);
    assert!(recovered[0] == data, "the written bytes are in recovery/");
}

#[tokio::test]
async fn a_sequential_write_streams_parts_from_memory_even_after_an_early_close() {
    let w = write_rig(1 << 30);
    let part = write::MIN_PART_SIZE as usize;
    let data = model_bytes(4 * part + 12_345, 3);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "video.bin", 0o644, caller())
        .await
        .unwrap();
    // dd and others close a first descriptor of the new file before writing: that uploads
    // an empty object, and must not stop the next writes from streaming.
    w.rig.fs.flush(fh).await.unwrap();
    assert_eq!(w.rig.mem.content("video.bin").unwrap().len(), 0);
    w.write_all(fh, &data).await;
    assert!(
        w.rig.count(RequestKind::UploadPart) >= 2,
        "parts the writer moved past went up before close"
    );
    assert!(
        w.cache.write_buffers().allocated() > 0,
        "parts were collected in memory"
    );
    w.rig.fs.flush(fh).await.unwrap();
    assert!(w.rig.mem.content("video.bin").unwrap() == data);
    assert_eq!(w.rig.count(RequestKind::UploadPart), 5);
    assert_eq!(
        w.rig.count(RequestKind::Get),
        0,
        "nothing was read back from the bucket"
    );
    w.rig.fs.release(fh).await.unwrap();
    assert_eq!(
        w.cache.write_buffers().allocated(),
        0,
        "an idle mount keeps no part buffers"
    );
}

#[tokio::test]
async fn parts_streamed_from_memory_are_whole_in_recovery_when_the_upload_fails() {
    let w = write_rig(1 << 30);
    let part = write::MIN_PART_SIZE as usize;
    let data = model_bytes(5 * part + 777, 5);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "log.bin", 0o644, caller())
        .await
        .unwrap();
    w.rig.store.fail_nth(
        RequestKind::CompleteMultipart,
        1,
        StoreError::Unreachable("cable cut".into()),
    );
    w.write_all(fh, &data).await;
    // A read through the handle sees every byte, those still in memory included.
    let back = w
        .rig
        .fs
        .read(fh, (5 * part) as u64 - 10, 100)
        .await
        .unwrap();
    assert!(back[..] == data[5 * part - 10..5 * part + 90]);
    w.write_all_from(fh, 5 * part + 777, b"more").await;
    let mut expected = data.clone();
    expected.extend_from_slice(b"more");
    let err = w.rig.fs.flush(fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EHOSTUNREACH);
    assert_eq!(w.rig.mem.open_uploads(), 0, "the failed upload was aborted");
    w.rig.fs.release(fh).await.unwrap_err();
    let recovered = w.recovered();
    assert_eq!(recovered.len(), 1);
    assert!(recovered[0] == expected, "every byte is in recovery/");
}

#[tokio::test]
async fn a_full_cache_makes_writes_wait_for_other_files_uploads() {
    let w = write_rig(1 << 20);
    let fs = w.rig.fs.clone();
    let (_, a) = fs.create(Ino::ROOT, "a", 0o644, caller()).await.unwrap();
    fs.write(a, 0, &[1u8; 768 << 10]).await.unwrap();
    let (_, b) = fs.create(Ino::ROOT, "b", 0o644, caller()).await.unwrap();
    // "a" holds most of the cache until its upload: "b" waits for it instead of failing.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closer = {
        let (fs, closing) = (fs.clone(), closing.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            closing.store(true, std::sync::atomic::Ordering::SeqCst);
            fs.flush(a).await.unwrap();
            fs.release(a).await.unwrap();
        })
    };
    fs.write(b, 0, &[2u8; 512 << 10]).await.unwrap();
    assert!(
        closing.load(std::sync::atomic::Ordering::SeqCst),
        "the write went through only once \"a\" was being closed"
    );
    closer.await.unwrap();
    fs.flush(b).await.unwrap();
    fs.release(b).await.unwrap();
    assert_eq!(w.rig.mem.content("a").unwrap().len(), 768 << 10);
    assert_eq!(w.rig.mem.content("b").unwrap().len(), 512 << 10);
}

#[tokio::test]
async fn a_full_cache_refuses_writes_with_enospc() {
    let w = write_rig(64 * 1024);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "f", 0o644, caller())
        .await
        .unwrap();
    w.rig.fs.write(fh, 0, &[1u8; 60 * 1024]).await.unwrap();
    let err = w
        .rig
        .fs
        .write(fh, 60 * 1024, &[1u8; 8 * 1024])
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC);
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert_eq!(w.rig.mem.content("f").map(|b| b.len()), Some(60 * 1024));
}

#[tokio::test]
async fn sequential_writes_upload_parts_before_close() {
    let w = write_rig(1 << 30);
    let data = model_bytes(22 * 1024 * 1024, 3);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "stream.bin", 0o644, caller())
        .await
        .unwrap();
    w.write_all(fh, &data).await;
    let early = w.rig.count(RequestKind::UploadPart);
    assert!(early >= 2, "parts went up while writing ({early})");
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert!(w.rig.mem.content("stream.bin").unwrap() == data);
    assert_eq!(w.rig.count(RequestKind::CreateMultipart), 1);
    assert_eq!(
        w.rig.store.counters().bytes_written(),
        data.len() as u64,
        "each byte sent once"
    );
}

#[tokio::test]
async fn writing_back_into_uploaded_parts_falls_back_to_a_whole_upload() {
    let w = write_rig(1 << 30);
    let mut data = model_bytes(22 * 1024 * 1024, 4);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "patched.bin", 0o644, caller())
        .await
        .unwrap();
    w.write_all(fh, &data).await;
    w.rig.fs.write(fh, 100, b"PATCH").await.unwrap();
    data[100..105].copy_from_slice(b"PATCH");
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert!(w.rig.mem.content("patched.bin").unwrap() == data);
    tokio::task::yield_now().await;
    assert!(
        w.rig.count(RequestKind::AbortMultipart) >= 1,
        "the streaming upload was dropped"
    );
    for _ in 0..100 {
        if w.rig.mem.open_uploads() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(w.rig.mem.open_uploads(), 0, "no orphan upload is left");
}

#[tokio::test]
async fn a_part_failing_mid_stream_still_ends_with_the_right_object() {
    let w = write_rig(1 << 30);
    let data = model_bytes(30 * 1024 * 1024, 5);
    w.rig
        .store
        .fail_nth(RequestKind::UploadPart, 2, StoreError::Timeout);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "flaky.bin", 0o644, caller())
        .await
        .unwrap();
    w.write_all(fh, &data).await;
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert!(w.rig.mem.content("flaky.bin").unwrap() == data);
}

#[tokio::test]
async fn a_file_deleted_while_being_written_does_not_come_back_at_close() {
    let w = write_rig(1 << 30);
    let (_, fh) = w
        .rig
        .fs
        .create(Ino::ROOT, "tmp.part", 0o644, caller())
        .await
        .unwrap();
    w.rig.fs.write(fh, 0, b"scratch").await.unwrap();
    w.rig.fs.unlink(Ino::ROOT, "tmp.part").await.unwrap();
    w.rig.fs.flush(fh).await.unwrap();
    w.rig.fs.release(fh).await.unwrap();
    assert_eq!(w.rig.mem.content("tmp.part"), None);
    assert_eq!(w.rig.count(RequestKind::Put), 0, "nothing was uploaded");
    assert!(w.recovered().is_empty(), "a deletion is not a failure");
}

#[tokio::test]
async fn rename_copies_then_deletes_and_the_inode_follows() {
    let w = write_rig(1 << 30);
    w.rig.mem.put("a.txt", "content");
    let a = w.rig.fs.lookup(Ino::ROOT, "a.txt").await.unwrap();
    w.rig
        .fs
        .rename(Ino::ROOT, "a.txt", Ino::ROOT, "b.txt", false)
        .await
        .unwrap();
    assert_eq!(w.rig.mem.content("a.txt"), None);
    assert_eq!(w.rig.mem.content("b.txt").as_deref(), Some(&b"content"[..]));
    assert_eq!(
        (
            w.rig.count(RequestKind::Copy),
            w.rig.count(RequestKind::Delete)
        ),
        (1, 1)
    );
    // The kernel keeps using the old inode number for the moved file.
    assert_eq!(w.rig.fs.getattr(a.ino).await.unwrap().size, 7);
    w.rig.mem.put("c.txt", "other");
    let err = w
        .rig
        .fs
        .rename(Ino::ROOT, "b.txt", Ino::ROOT, "c.txt", true)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EEXIST);
}

/// A model-based test of the write paths together: sequential appends (which stream parts
/// from memory), writes back into them, reads, truncates and closes, in random order, against
/// a Vec. After every step the file reads back as the model; after every close the bucket
/// holds it.
#[tokio::test]
async fn random_appends_writes_truncates_and_closes_match_a_model() {
    let w = write_rig(1 << 30);
    let fs = w.rig.fs.clone();
    let part = write::MIN_PART_SIZE;
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let mut peak_buffers = 0;
    for episode in 0..4u64 {
        let name = format!("model-{episode}");
        let (attr, mut fh) = fs.create(Ino::ROOT, &name, 0o644, caller()).await.unwrap();
        let ino = attr.ino;
        let mut model: Vec<u8> = Vec::new();
        for step in 0..60u64 {
            let seed = (episode * 100 + step) as u8;
            match next(12) {
                // Appends, the common case: from a few bytes to most of a part.
                0..=5 => {
                    let data = model_bytes(1 + next(part * 3 / 4) as usize, seed);
                    let at = model.len() as u64;
                    fs.write(fh, at, &data).await.unwrap();
                    model.extend_from_slice(&data);
                }
                6 => {
                    let at = next(model.len() as u64 + (1 << 20));
                    let data = model_bytes(1 + next(256 << 10) as usize, seed);
                    fs.write(fh, at, &data).await.unwrap();
                    let end = at as usize + data.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[at as usize..end].copy_from_slice(&data);
                }
                7 | 8 => {
                    let at = next(model.len() as u64 + 1);
                    let len = 1 + next(2 << 20) as u32;
                    let got = fs.read(fh, at, len).await.unwrap();
                    let end = (at as usize + len as usize).min(model.len());
                    assert!(
                        got[..] == model[at as usize..end],
                        "episode {episode} step {step}: read at {at}"
                    );
                }
                9 => {
                    let size = next(model.len() as u64 + (1 << 20));
                    fs.set_size(ino, size).await.unwrap();
                    model.resize(size as usize, 0);
                }
                10 => {
                    fs.flush(fh).await.unwrap();
                    let held = w.rig.mem.content(&name).unwrap();
                    assert!(
                        held[..] == model[..],
                        "episode {episode} step {step}: bucket after flush"
                    );
                }
                _ => {
                    fs.release(fh).await.unwrap();
                    let held = w.rig.mem.content(&name).unwrap();
                    assert!(
                        held[..] == model[..],
                        "episode {episode} step {step}: bucket after close"
                    );
                    fh = fs.open(ino, true, false).await.unwrap().0;
                }
            }
            assert_eq!(fs.getattr(ino).await.unwrap().size, model.len() as u64);
            peak_buffers = peak_buffers.max(w.cache.write_buffers().allocated());
        }
        fs.release(fh).await.unwrap();
        assert!(w.rig.mem.content(&name).unwrap()[..] == model[..]);
    }
    assert_eq!(
        w.rig.mem.open_uploads(),
        0,
        "no multipart upload left behind"
    );
    assert!(w.recovered().is_empty());
    assert!(peak_buffers > 0, "appends went through part buffers");
    assert_eq!(w.cache.write_buffers().allocated(), 0, "and gave them back");
    assert!(w.rig.count(RequestKind::UploadPart) > 0);
}

#[tokio::test]
async fn a_truncate_racing_the_last_close_is_never_lost() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("f", "");
    let f = fs.lookup(Ino::ROOT, "f").await.unwrap();
    let (fh, _) = fs.open(f.ino, true, false).await.unwrap();
    w.write_all(fh, b"012345").await;
    // The last close and a truncate(2) of the path both wait for the copy; the close goes
    // first, uploads and drops it, then the truncate gets it.
    let staged = fs.staged_of(f.ino).unwrap();
    let held = staged.lock().await;
    let closing = tokio::spawn({
        let fs = fs.clone();
        async move { fs.release(fh).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let truncating = tokio::spawn({
        let fs = fs.clone();
        async move { fs.set_size(f.ino, 8).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    drop(held);
    closing.await.unwrap().unwrap();
    assert_eq!(truncating.await.unwrap().unwrap().size, 8);
    assert_eq!(
        w.rig.mem.content("f").as_deref(),
        Some(&b"012345\0\0"[..]),
        "the truncate reached the bucket"
    );
}
