//! The data cache through real mounts: re-reads after a remount come from local disk, an
//! object changed elsewhere is read fresh, the cap holds on disk, and a daemon killed while
//! blocks were being written leaves nothing that could be served wrong.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{files_below, pattern, Bucket, Mount};

/// Bytes the data cache takes on disk under `cache` (its group files are sparse: what
/// counts is what the filesystem allocated).
fn cached_bytes(cache: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files_below(&cache.join("blocks"))
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.blocks() * 512))
        .sum()
}

/// Unmounts and waits for the daemon to be gone, so its cache directory `cache` is free
/// again.
fn unmount_and_wait(m: &Mount, cache: &Path) {
    let lock = std::fs::read_to_string(cache.join("lock")).unwrap();
    let pid: i32 = lock
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
        .unwrap();
    m.unmount();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split(' ').nth(2) == Some("Z") {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the daemon has no block on its way to disk (the status stops changing).
fn cache_settled(m: &Mount) {
    let mut last = u64::MAX;
    for _ in 0..200 {
        let now = m.counter_in_process("data_cache_bytes");
        if now == last {
            return;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_re_read_after_a_remount_comes_from_the_data_cache() {
    let b = Bucket::new("reread");
    let data = pattern(40 << 20, 3);
    b.put("video.mp4", data.clone());
    let first = Mount::new(&b.location(""), &[]);
    assert!(std::fs::read(first.join("video.mp4")).unwrap() == data);
    cache_settled(&first);
    // Every block, those of reads the kernel sent out of order or far ahead too (they are
    // served on their own, and were once left out of the cache).
    let held = first.counter_in_process("data_cache_bytes");
    assert_eq!(held, 40 << 20, "bytes cached");
    let cache = first.cache.clone();
    unmount_and_wait(&first, &cache);
    // A clean unmount marks the cache so: the next mount trusts its blocks without a check.
    assert!(cache.join("blocks/closed-cleanly").exists());
    let again = Mount::new(
        &b.location(""),
        &[&format!("--cache-dir={}", cache.display())],
    );
    let before = again.requests();
    assert!(std::fs::read(again.join("video.mp4")).unwrap() == data);
    let after = again.requests();
    // The target: at most 5 GETs for the re-read (0 when every block was kept).
    assert!(
        after.get - before.get <= 5,
        "{} GETs: the blocks came from local disk",
        after.get - before.get
    );
    assert!(after.bytes_read - before.bytes_read <= 5 << 20);
    assert!(again.counter_in_process("data_cache_hits") >= 35);
    // A small file, listed: no GET either (the listing's ETag names its cached block).
    b.put("notes/today.txt", "remember the milk");
    assert_eq!(
        std::fs::read_to_string(again.join("notes/today.txt")).unwrap(),
        "remember the milk"
    );
    cache_settled(&again);
    unmount_and_wait(&again, &cache);
    let third = Mount::new(
        &b.location(""),
        &[&format!("--cache-dir={}", cache.display())],
    );
    std::fs::read_dir(third.join("notes"))
        .unwrap()
        .for_each(drop);
    let before = third.requests();
    assert_eq!(
        std::fs::read_to_string(third.join("notes/today.txt")).unwrap(),
        "remember the milk"
    );
    assert_eq!(third.requests().get, before.get);
}

#[test]
fn an_object_changed_elsewhere_is_read_fresh_on_the_next_open() {
    let b = Bucket::new("changed");
    b.put("doc.txt", pattern(3 << 20, 1));
    let m = Mount::new(&b.location(""), &[]);
    assert!(std::fs::read(m.join("doc.txt")).unwrap() == pattern(3 << 20, 1));
    cache_settled(&m);
    // Same size, other bytes, written by another client.
    b.put("doc.txt", pattern(3 << 20, 2));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        std::fs::read(m.join("doc.txt")).unwrap() == pattern(3 << 20, 2),
        "the new version, not the cached blocks of the old one"
    );
}

#[test]
fn the_cap_holds_on_disk_and_no_data_cache_keeps_nothing() {
    let b = Bucket::new("capped");
    let data = pattern(24 << 20, 5);
    b.put("big.bin", data.clone());
    // Its own cap, and the cap shared with staging.
    for flag in ["--data-cache-size=6MiB", "--max-cache-size=6MiB"] {
        let m = Mount::new(&b.location(""), &[flag]);
        assert!(std::fs::read(m.join("big.bin")).unwrap() == data);
        cache_settled(&m);
        let held = cached_bytes(&m.cache);
        assert!(
            held > 0 && held <= (7 << 20) + 100,
            "{flag}: {held} bytes cached"
        );
        assert!(m.counter_in_process("data_cache_evictions") > 0);
    }
    let m = Mount::new(&b.location(""), &["--no-data-cache"]);
    assert!(std::fs::read(m.join("big.bin")).unwrap() == data);
    assert_eq!(cached_bytes(&m.cache), 0);
}

#[test]
fn a_daemon_killed_while_caching_leaves_no_block_that_could_be_served_wrong() {
    let b = Bucket::new("kill-cache");
    let data = pattern(64 << 20, 9);
    b.put("big.bin", data.clone());
    let m = Mount::new(&b.location(""), &[]);
    assert!(std::fs::read(m.join("big.bin")).unwrap() == data);
    // Killed at once: blocks are still on their way to disk.
    m.kill_daemon();
    m.unmount();
    assert!(
        !m.cache.join("blocks/closed-cleanly").exists(),
        "a killed daemon leaves no mark: the next mount checks every block it reads"
    );
    // Damage a block the way a power cut could, too: a byte of the first block of a group
    // file whose record vouches for it (the records follow the file's 8 slots of 1 MiB; a
    // record ends with its marker).
    let records = 8 << 20;
    let vouched = files_below(&m.cache.join("blocks"))
        .into_iter()
        .map(|f| (std::fs::read(&f).unwrap(), f))
        .find(|(bytes, _)| bytes.get(records + 8..records + 12) == Some(b"PFG1"));
    if let Some((mut bytes, group)) = vouched {
        bytes[1000] ^= 0xff;
        std::fs::write(&group, bytes).unwrap();
    }
    let again = Mount::new(
        &b.location(""),
        &[&format!("--cache-dir={}", m.cache.display())],
    );
    assert!(
        std::fs::read(again.join("big.bin")).unwrap() == data,
        "whatever the crash left, every byte read is the object's"
    );
    assert!(again.counter_in_process("data_cache_torn") >= 1);
}
