//! Directory snapshots on the in-memory store, with request counts: a walk after a listing,
//! creating trees, and freshness.

use std::time::Duration;

use super::namespace::caller;
use super::tests::{rig_with, write_rig_with};
use super::*;
use crate::store::RequestKind;

fn fresh_for(ttl: Duration) -> FsConfig {
    FsConfig {
        metadata_ttl: ttl,
        ..FsConfig::default()
    }
}

/// Requests of any kind sent so far.
fn requests(store: &crate::store::instrumented::Instrumented) -> u64 {
    RequestKind::ALL
        .into_iter()
        .map(|k| store.counters().count(k))
        .sum()
}

#[tokio::test]
async fn a_walk_after_a_listing_sends_no_request_per_entry() {
    let r = rig_with("", fresh_for(Duration::from_secs(60)));
    for i in 0..300 {
        r.mem.put(&format!("big/f{i:04}"), vec![1u8; i % 9]);
    }
    r.mem.put("big/sub/inner", "x");
    let dir = r.fs.lookup(Ino::ROOT, "big").await.unwrap();
    // `du`/`find`: read the directory (without readdirplus), then stat every entry.
    let listed = r.list(dir.ino, false).await;
    assert_eq!(listed.len(), 2 + 301);
    let before = requests(&r.store);
    for (name, _) in listed.iter().skip(2) {
        let attr = r.fs.lookup(dir.ino, name).await.unwrap();
        r.fs.getattr(attr.ino).await.unwrap();
        if name == "f0007" {
            assert_eq!(attr.size, 7);
        }
    }
    assert_eq!(
        r.fs.lookup(dir.ino, "not-there").await.unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        requests(&r.store) - before,
        0,
        "the listing answered every stat"
    );
}

#[tokio::test]
async fn creating_a_tree_costs_one_put_per_file_and_folder() {
    let w = write_rig_with(1 << 30, fresh_for(Duration::from_secs(60)));
    let fs = &w.rig.fs;
    let before = requests(&w.rig.store);
    // tar x: each new name is looked up first, then created, written and closed.
    let src = fs.mkdir(Ino::ROOT, "src", 0o755, caller());
    let src = src.await.unwrap();
    for d in 0..3 {
        let name = format!("mod{d}");
        assert!(fs.lookup(src.ino, &name).await.is_err());
        let dir = fs.mkdir(src.ino, &name, 0o755, caller()).await.unwrap();
        for f in 0..10 {
            let file = format!("f{f}.rs");
            assert_eq!(
                fs.lookup(dir.ino, &file).await.unwrap_err().errno(),
                libc::ENOENT
            );
            let (_, fh) = fs.create(dir.ino, &file, 0o644, caller()).await.unwrap();
            fs.write(fh, 0, b"fn main() {}\n").await.unwrap();
            fs.flush(fh).await.unwrap();
            fs.release(fh).await.unwrap();
            // The kernel may look the name up again: still no request.
            assert_eq!(fs.lookup(dir.ino, &file).await.unwrap().size, 13);
        }
    }
    let sent = requests(&w.rig.store) - before;
    let puts = w.rig.count(RequestKind::Put);
    assert_eq!(puts, 1 + 3 + 30, "a marker per folder, a PUT per file");
    assert_eq!(sent, puts, "and nothing else");
    assert!(w.rig.mem.content("src/mod2/f9.rs").is_some());
}

#[tokio::test]
async fn creating_in_a_listed_folder_looks_nothing_up() {
    let w = write_rig_with(1 << 30, fresh_for(Duration::from_secs(60)));
    let fs = &w.rig.fs;
    w.rig.mem.put("docs/existing.txt", "old");
    let docs = fs.lookup(Ino::ROOT, "docs").await.unwrap();
    w.rig.list(docs.ino, true).await;
    let before = requests(&w.rig.store);
    for i in 0..5 {
        let name = format!("new-{i}.txt");
        assert!(fs.lookup(docs.ino, &name).await.is_err());
        let (_, fh) = fs.create(docs.ino, &name, 0o644, caller()).await.unwrap();
        fs.write(fh, 0, b"hi").await.unwrap();
        fs.release(fh).await.unwrap();
    }
    fs.unlink(docs.ino, "existing.txt").await.unwrap();
    assert_eq!(
        fs.lookup(docs.ino, "existing.txt")
            .await
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    fs.rename(docs.ino, "new-0.txt", docs.ino, "renamed.txt", false)
        .await
        .unwrap();
    assert!(fs.lookup(docs.ino, "new-0.txt").await.is_err());
    assert_eq!(fs.lookup(docs.ino, "renamed.txt").await.unwrap().size, 2);
    let sent = requests(&w.rig.store) - before;
    // 5 PUTs, 1 DELETE, and the rename's copy, delete and one HEAD of the result.
    assert_eq!(sent, 5 + 1 + 3, "no lookups: {sent} requests");
}

#[tokio::test]
async fn snapshots_expire_and_then_see_changes_made_behind_the_mounts_back() {
    let r = rig_with("", fresh_for(Duration::from_millis(150)));
    r.mem.put("d/a", "1");
    let dir = r.fs.lookup(Ino::ROOT, "d").await.unwrap();
    r.list(dir.ino, false).await;
    r.mem.put("d/b", "22");
    r.mem.remove("d/a");
    // Within the freshness promise, the listing's view holds.
    assert!(r.fs.lookup(dir.ino, "b").await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.fs.lookup(dir.ino, "b").await.unwrap().size, 2);
    assert!(r.fs.lookup(dir.ino, "a").await.is_err());
    // A new listing is a new snapshot at once.
    r.mem.put("d/c", "333");
    let names = r.names(dir.ino, false).await;
    assert!(names.contains(&"c".to_string()));
    let heads = r.count(RequestKind::Head);
    assert_eq!(r.fs.lookup(dir.ino, "c").await.unwrap().size, 3);
    assert_eq!(r.count(RequestKind::Head), heads);
}

#[tokio::test]
async fn a_directory_larger_than_the_snapshot_budget_is_not_kept() {
    let r = rig_with(
        "",
        FsConfig {
            snapshot_memory: 16 << 10,
            ..fresh_for(Duration::from_secs(60))
        },
    );
    let dir = r.folder_of_files("huge", 500).await;
    r.list(dir.ino, false).await;
    let lists = r.count(RequestKind::List);
    assert!(
        r.fs.lookup(dir.ino, "missing").await.is_err(),
        "answered by the store"
    );
    assert!(
        r.count(RequestKind::List) > lists,
        "no snapshot to answer from"
    );
}

#[tokio::test]
async fn a_long_freshness_never_mixes_two_versions_of_a_file() {
    let r = rig_with("", fresh_for(Duration::from_secs(60)));
    r.mem.put("f", "AAAA");
    let ino = r.fs.lookup(Ino::ROOT, "f").await.unwrap().ino;
    assert_eq!(r.rig_read(ino).await, (b"AAAA".to_vec(), false));
    // Changed elsewhere, well within --metadata-ttl: an open more than --content-ttl
    // later asks the bucket, has the kernel drop the old pages and reads the new version.
    r.mem.put("f", "BBBBBB");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        r.fs.getattr(ino).await.unwrap().size,
        4,
        "attributes are trusted for --metadata-ttl"
    );
    assert_eq!(r.rig_read(ino).await, (b"BBBBBB".to_vec(), false));
    assert_eq!(
        r.rig_read(ino).await,
        (b"BBBBBB".to_vec(), true),
        "unchanged: pages kept"
    );
    // A first open from cached attributes of a replaced version reads the current one whole.
    r.mem.put("g", "old");
    let g = r.fs.lookup(Ino::ROOT, "g").await.unwrap().ino;
    r.mem.put("g", "newer!");
    assert_eq!(r.rig_read(g).await, (b"newer!".to_vec(), false));
}

impl super::tests::Rig {
    /// Opens `ino` for reading, reads it whole: (content, whether the kernel may keep pages).
    async fn rig_read(&self, ino: Ino) -> (Vec<u8>, bool) {
        let (fh, keep) = self.fs.open(ino, false, false).await.unwrap();
        let data = self.fs.read(fh, 0, 1 << 20).await.unwrap().to_vec();
        self.fs.release(fh).await.unwrap();
        (data, keep)
    }
}

#[tokio::test]
async fn a_tree_walk_lists_the_next_folders_ahead_and_each_folder_once() {
    let w = write_rig_with(1 << 30, fresh_for(Duration::from_secs(60)));
    let r = &w.rig;
    for d in 0..6 {
        for f in 0..3 {
            r.mem.put(&format!("tree/d{d}/f{f}"), "x");
        }
    }
    let tree = r.fs.lookup(Ino::ROOT, "tree").await.unwrap();
    r.list(tree.ino, true).await;
    let lists = || r.store.counters().count(RequestKind::List);
    let before = lists();
    let mut seen = Vec::new();
    for d in 0..6 {
        let dir = r.fs.lookup(tree.ino, &format!("d{d}")).await.unwrap();
        if d == 2 {
            // Its first page was asked for while d1 was read; a file made here since must
            // not be missing from the listing that page would give.
            tokio::task::yield_now().await;
            let (_, fh) = r.fs.create(dir.ino, "new", 0o644, caller()).await.unwrap();
            r.fs.release(fh).await.unwrap();
        }
        seen.push(r.names(dir.ino, true).await.len() - 2);
        // The walk was seen at d1: from then on the next two folders are on their way.
        tokio::task::yield_now().await;
        if d == 1 {
            assert_eq!(lists() - before, 4, "d0, d1, then d2 and d3 ahead");
        }
    }
    assert_eq!(seen, vec![3, 3, 4, 3, 3, 3]);
    // d2 again (its page came before the change), every other folder once.
    assert_eq!(lists() - before, 7);
    assert_eq!(
        r.fs.names.walk.pending(),
        0,
        "every page asked ahead was used"
    );
}

#[tokio::test]
async fn folders_opened_out_of_order_are_not_listed_ahead() {
    let r = rig_with("", fresh_for(Duration::from_secs(60)));
    for d in 0..5 {
        r.mem.put(&format!("tree/d{d}/f"), "x");
    }
    let tree = r.fs.lookup(Ino::ROOT, "tree").await.unwrap();
    r.list(tree.ino, true).await;
    let before = r.store.counters().count(RequestKind::List);
    for d in [3, 1, 0] {
        let dir = r.fs.lookup(tree.ino, &format!("d{d}")).await.unwrap();
        r.list(dir.ino, true).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(r.store.counters().count(RequestKind::List) - before, 3);
    assert_eq!(r.fs.names.walk.pending(), 0);
}
