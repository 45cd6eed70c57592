//! Crash tests on the in-memory store: the store stops answering from a chosen request on
//! (as if the daemon were killed there), the filesystem is abandoned without any cleanup
//! (no destructor runs, as with SIGKILL), and a new one on the same cache directory
//! reconciles. And the POSIX lifetimes of open files: unlink and rename while open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::journal::StagedState;
use super::namespace::caller;
use super::tests::{files_below, wait_uploaded, write_rig, write_rig_with};
use super::write::WriteTuning;
use super::*;
use crate::store::instrumented::Instrumented;
use crate::store::memory::MemoryStore;
use crate::store::RequestKind;

/// A filesystem over `mem` with its cache in `dir`, as a mount of bucket "mem" would be.
fn mount_on(
    dir: &std::path::Path,
    mem: &Arc<MemoryStore>,
    write_back: WriteBack,
) -> (Arc<Instrumented>, Arc<Fs>) {
    let store = Arc::new(Instrumented::new(mem.clone()));
    let cache = write::CacheDir::open(dir, u64::MAX)
        .unwrap()
        .for_mount("s3://mem/", "");
    let fs = Fs::new(
        store.clone(),
        Some(store.counters()),
        String::new(),
        FsConfig {
            write_back,
            write: WriteTuning {
                part_size: write::MIN_PART_SIZE,
                upload_concurrency: 2,
                buffer_memory: 64 << 20,
                conflict: write::ConflictPolicy::Warn,
            },
            ..FsConfig::default()
        },
    )
    .with_cache(Arc::new(cache));
    (store, Arc::new(fs))
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Files under `dir/recovery`, by the path they were kept for (`TIME/PATH` → `PATH`).
fn recovered(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    let root = dir.join("recovery");
    files_below(&root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().to_string();
            let path = rel
                .split_once('/')
                .map_or(rel.clone(), |(_, rest)| rest.to_string());
            (path, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// One step of a scenario, abandoned when the store stopped answering under it.
async fn step<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(400), f)
        .await
        .ok()
}

/// What a scenario's programs were told: files whose close returned (acknowledged), and
/// files whose close never did.
#[derive(Default)]
struct Told {
    saved: BTreeMap<String, Vec<u8>>,
    unsaved: BTreeMap<String, Vec<u8>>,
}

/// Writes files (small, streamed, an append to an existing object) until the store halts;
/// returns what the programs were told.
async fn scenario(fs: &Arc<Fs>, mem: &MemoryStore, seed: u64) -> Told {
    let part = write::MIN_PART_SIZE as usize;
    let mut told = Told::default();
    let sizes = [
        1000 + seed as usize % 5000,
        2 * part + 4321,
        0,
        3 * part + seed as usize % 1000,
        77_777,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let name = format!("f{i}.bin");
        let data = bytes(size, seed * 10 + i as u64);
        let Some(Ok((_, fh))) = step(fs.create(Ino::ROOT, &name, 0o644, caller())).await else {
            return told;
        };
        told.unsaved.insert(name.clone(), data.clone());
        for (n, chunk) in data.chunks(256 << 10).enumerate() {
            match step(fs.write(fh, (n * (256 << 10)) as u64, chunk)).await {
                Some(Ok(_)) => {}
                _ => return told,
            }
        }
        match step(fs.flush(fh)).await {
            Some(Ok(())) => {
                told.unsaved.remove(&name);
                told.saved.insert(name, data);
            }
            _ => return told,
        }
        if step(fs.release(fh)).await.is_none() {
            return told;
        }
    }
    // An append to an existing object, staged lazily (its old bytes are not downloaded).
    let old = mem.content("old.bin").unwrap().to_vec();
    let Some(Ok(attr)) = step(fs.lookup(Ino::ROOT, "old.bin")).await else {
        return told;
    };
    let Some(Ok((fh, _))) = step(fs.open(attr.ino, true, false)).await else {
        return told;
    };
    let tail = bytes(3000, seed);
    let mut whole = old.clone();
    whole.extend_from_slice(&tail);
    match step(fs.write(fh, old.len() as u64, &tail)).await {
        Some(Ok(_)) => {}
        _ => return told,
    }
    if let Some(Ok(())) = step(fs.flush(fh)).await {
        told.saved.insert("old.bin".into(), whole);
    }
    let _ = step(fs.release(fh)).await;
    told
}

/// Runs a scenario on a daemon whose store halts after `halt` requests, kills the daemon
/// (its runtime stops: none of its tasks runs again, and no destructor of its state), then
/// mounts again on the same cache directory and checks what reconciling did.
fn crash_and_reconcile(seed: u64, halt: u64, write_back: WriteBack) {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let old = bytes(2 * write::MIN_PART_SIZE as usize + 99, 1000 + seed);
    mem.put("old.bin", old.clone());
    let daemon = super::blocking::two_worker_runtime();
    let told = daemon.block_on(async {
        let (store, fs) = mount_on(dir.path(), &mem, write_back);
        store.halt_after(halt);
        let told = scenario(&fs, &mem, seed).await;
        // Let background uploads run into the halt (or not start yet).
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::mem::forget(fs);
        std::mem::forget(store);
        told
    });
    daemon.shutdown_background();
    super::blocking::two_worker_runtime()
        .block_on(reconcile_and_check(dir, mem, told, seed, halt, write_back));
}

async fn reconcile_and_check(
    dir: tempfile::TempDir,
    mem: Arc<MemoryStore>,
    told: Told,
    seed: u64,
    halt: u64,
    write_back: WriteBack,
) {
    let (_, fs) = mount_on(dir.path(), &mem, WriteBack::Sync);
    let report = fs.reconcile().await.unwrap();
    wait_uploaded(&fs, Duration::from_secs(20)).await;
    let context = format!("seed {seed}, halt after {halt}, {write_back:?}: {report:?}");
    for (name, data) in &told.saved {
        let got = mem.content(name);
        assert!(
            got.as_deref() == Some(&data[..]),
            "{context}: acknowledged {name} is not byte-exact in the bucket ({:?} of {} bytes)",
            got.map(|g| g.len()),
            data.len()
        );
    }
    let kept = recovered(dir.path());
    for (name, data) in &told.unsaved {
        if mem.content(name).as_deref() == Some(&data[..]) {
            continue; // the upload finished; only the answer was lost
        }
        if data.is_empty() {
            continue; // nothing written, nothing to keep
        }
        let copy = kept.get(name).unwrap_or_else(|| {
            panic!(
                "{context}: unsaved {name} is neither uploaded nor in recovery ({:?})",
                kept.keys()
            )
        });
        assert!(copy.len() <= data.len(), "{context}: {name}");
        // Parts still in the daemon's memory at the kill are zeros: never other bytes.
        assert!(
            copy.iter().zip(data).all(|(c, d)| c == d || *c == 0),
            "{context}: {name} holds bytes that were never written"
        );
        assert!(
            report.recovered.iter().any(|r| &r.what == name),
            "{context}: the start-up report names {name}"
        );
    }
    assert_eq!(
        mem.open_uploads(),
        0,
        "{context}: a multipart upload stayed open"
    );
    // The last upload's copy goes a moment after it leaves the map of files being written.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let staging: Vec<_> = std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if staging.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: staging keeps {staging:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_crash_at_any_request_loses_no_acknowledged_file_async() {
    for (seed, halt) in [
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 3),
        (5, 5),
        (6, 8),
        (7, 13),
        (8, 21),
    ] {
        crash_and_reconcile(seed, halt, WriteBack::Async);
    }
    crash_and_reconcile(9, u64::MAX, WriteBack::Async);
}

#[test]
fn a_crash_at_any_request_loses_no_acknowledged_file_sync() {
    for (seed, halt) in [
        (11, 0),
        (12, 2),
        (13, 4),
        (14, 6),
        (15, 9),
        (16, 14),
        (17, 19),
    ] {
        crash_and_reconcile(seed, halt, WriteBack::Sync);
    }
}

#[tokio::test]
async fn the_journal_records_each_state_a_program_was_told() {
    let w = write_rig_with(
        1 << 30,
        FsConfig {
            write_back: WriteBack::Async,
            ..FsConfig::default()
        },
    );
    let fs = &w.rig.fs;
    let records = || journal::records(w.dir.path()).unwrap();
    let (_, fh) = fs
        .create(Ino::ROOT, "a.txt", 0o600, caller())
        .await
        .unwrap();
    let r = records();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].state, r[0].path.as_str()),
        (StagedState::Writing, "a.txt")
    );
    fs.write(fh, 0, b"hello").await.unwrap();
    fs.flush(fh).await.unwrap();
    let r = records();
    assert_eq!(r[0].state, StagedState::Closed, "an acknowledged close");
    assert_eq!(r[0].metadata.get("mode").map(String::as_str), Some("33152"));
    // A rename of the file is in the record once it returns; later changes go there too.
    fs.rename(Ino::ROOT, "a.txt", Ino::ROOT, "b.txt", false)
        .await
        .unwrap();
    let r = records();
    assert_eq!((r[0].key.as_str(), r[0].path.as_str()), ("b.txt", "b.txt"));
    assert_eq!(
        r[0].state,
        StagedState::Clean,
        "the rename uploaded it first"
    );
    fs.write(fh, 5, b" again").await.unwrap();
    assert_eq!(records()[0].state, StagedState::Writing);
    fs.flush(fh).await.unwrap();
    let r = records();
    assert_eq!(
        (r[0].key.as_str(), r[0].state),
        ("b.txt", StagedState::Closed)
    );
    fs.release(fh).await.unwrap();
    wait_uploaded(fs, Duration::from_secs(10)).await;
    assert_eq!(
        w.rig.mem.content("b.txt").as_deref(),
        Some(&b"hello again"[..])
    );
    assert!(
        records().is_empty(),
        "an uploaded, closed file leaves no record"
    );
}

#[tokio::test]
async fn an_unlinked_open_file_keeps_its_bytes_and_is_never_uploaded() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let (attr, fh) = fs
        .create(Ino::ROOT, "scratch", 0o600, caller())
        .await
        .unwrap();
    fs.write(fh, 0, b"temporary ").await.unwrap();
    fs.unlink(Ino::ROOT, "scratch").await.unwrap();
    assert!(w
        .rig
        .list(Ino::ROOT, true)
        .await
        .iter()
        .all(|(n, _)| n != "scratch"));
    assert_eq!(
        fs.lookup(Ino::ROOT, "scratch").await.unwrap_err().errno(),
        libc::ENOENT
    );
    // The handle goes on: writes, reads, fstat.
    fs.write(fh, 10, b"bytes").await.unwrap();
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"temporary bytes");
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 15);
    // A new file of the same name is another file, with another inode.
    let (again, fh2) = fs
        .create(Ino::ROOT, "scratch", 0o600, caller())
        .await
        .unwrap();
    assert_ne!(again.ino, attr.ino);
    fs.write(fh2, 0, b"new").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    fs.release(fh2).await.unwrap();
    assert_eq!(w.rig.mem.content("scratch").as_deref(), Some(&b"new"[..]));
    let puts = w.rig.count(RequestKind::Put);
    assert_eq!(puts, 1, "only the new file went up");
    let staging = std::fs::read_dir(w.dir.path().join("staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "the unlinked copy went with its last handle");
}

#[tokio::test]
async fn an_unlink_the_bucket_refuses_fails_and_discards_nothing() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("keep.txt", "old");
    let ino = fs.lookup(Ino::ROOT, "keep.txt").await.unwrap().ino;
    let (fh, _) = fs.open(ino, true, true).await.unwrap();
    fs.write(fh, 0, b"new content").await.unwrap();
    w.rig.store.fail_nth(
        RequestKind::Delete,
        1,
        crate::store::StoreError::AccessDenied("needs s3:DeleteObject".into()),
    );
    let err = fs.unlink(Ino::ROOT, "keep.txt").await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES);
    fs.release(fh).await.unwrap();
    assert_eq!(
        w.rig.mem.content("keep.txt").as_deref(),
        Some(&b"new content"[..])
    );
}

#[tokio::test]
async fn a_file_renamed_while_open_uploads_to_its_new_name_only() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let (_, fh) = fs
        .create(Ino::ROOT, "draft", 0o644, caller())
        .await
        .unwrap();
    fs.write(fh, 0, b"first ").await.unwrap();
    fs.rename(Ino::ROOT, "draft", Ino::ROOT, "final", false)
        .await
        .unwrap();
    fs.write(fh, 6, b"second").await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        w.rig.mem.content("final").as_deref(),
        Some(&b"first second"[..])
    );
    assert_eq!(w.rig.mem.content("draft"), None);
}

#[tokio::test]
async fn a_file_renamed_over_an_open_one_leaves_its_handles_their_bytes() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let old = bytes(3 << 20, 5);
    w.rig.mem.put("doc", old.clone());
    let doc = fs.lookup(Ino::ROOT, "doc").await.unwrap().ino;
    // An editor has "doc" open for writing (lazily staged: nothing read yet).
    let (held, _) = fs.open(doc, true, false).await.unwrap();
    fs.write(held, 0, b"EDIT").await.unwrap();
    // Another program saves atomically: writes "doc.tmp", renames it over "doc".
    let (_, fh) = fs
        .create(Ino::ROOT, "doc.tmp", 0o644, caller())
        .await
        .unwrap();
    fs.write(fh, 0, b"saved elsewhere").await.unwrap();
    fs.release(fh).await.unwrap();
    fs.rename(Ino::ROOT, "doc.tmp", Ino::ROOT, "doc", false)
        .await
        .unwrap();
    // The editor's handle still reads its own file, old bytes included.
    let mut expected = old.clone();
    expected[..4].copy_from_slice(b"EDIT");
    let got = fs.read(held, 0, 4 << 20).await.unwrap();
    assert!(
        got[..] == expected[..],
        "the replaced file's handle keeps its bytes"
    );
    fs.release(held).await.unwrap();
    assert_eq!(
        w.rig.mem.content("doc").as_deref(),
        Some(&b"saved elsewhere"[..]),
        "the replaced file's close uploads nothing"
    );
    let now = fs.lookup(Ino::ROOT, "doc").await.unwrap();
    assert_ne!(now.ino, doc, "the path leads to the renamed file");
}

#[tokio::test]
async fn a_write_open_drops_cached_pages_of_a_version_changed_elsewhere() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("same-size", "AAAA");
    let ino = fs.lookup(Ino::ROOT, "same-size").await.unwrap().ino;
    assert_eq!(w.rig.read_all(ino).await, b"AAAA");
    let (fh, keep) = fs.open(ino, true, false).await.unwrap();
    assert!(keep, "unchanged: the kernel keeps its pages");
    fs.release(fh).await.unwrap();
    w.rig.mem.put("same-size", "BBBB");
    let (fh, keep) = fs.open(ino, true, false).await.unwrap();
    assert!(
        !keep,
        "changed elsewhere: the kernel must drop the old pages"
    );
    assert_eq!(&fs.read(fh, 0, 10).await.unwrap()[..], b"BBBB");
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_huge_symlink_object_is_refused_without_reading_it() {
    let w = write_rig(1 << 30);
    let mut meta = crate::store::Metadata::new();
    meta.insert("mode".into(), (libc::S_IFLNK | 0o777).to_string());
    w.rig
        .mem
        .put_with_metadata("link", vec![b'x'; 1 << 20], meta);
    let attr = w.rig.fs.lookup(Ino::ROOT, "link").await.unwrap();
    let gets = w.rig.count(RequestKind::Get);
    let err = w.rig.fs.readlink(attr.ino).await.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert_eq!(w.rig.count(RequestKind::Get), gets, "nothing was read");
}

#[tokio::test]
async fn a_read_only_mount_signs_no_uploads() {
    let mem = Arc::new(MemoryStore::new());
    let fs = Fs::new(
        mem,
        None,
        String::new(),
        FsConfig {
            read_only: true,
            ..FsConfig::default()
        },
    );
    let ttl = Duration::from_secs(60);
    let err = fs
        .presign("a.txt", crate::store::PresignMethod::Put, ttl)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
    assert!(fs
        .presign("a.txt", crate::store::PresignMethod::Get, ttl)
        .await
        .is_ok());
}

#[tokio::test]
async fn stat_answers_from_the_staged_copy_while_its_upload_runs() {
    let w = write_rig(1 << 30);
    let fs = w.rig.fs.clone();
    let (attr, fh) = fs
        .create(Ino::ROOT, "slow.bin", 0o644, caller())
        .await
        .unwrap();
    fs.write(fh, 0, &[7u8; 300_000]).await.unwrap();
    // The upload at close hangs (the store stopped answering) while holding the copy.
    w.rig.store.halt_after(0);
    let closing = tokio::spawn({
        let fs = fs.clone();
        async move { fs.flush(fh).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stat = tokio::time::timeout(Duration::from_millis(500), fs.getattr(attr.ino))
        .await
        .expect("stat does not wait for the upload")
        .unwrap();
    assert_eq!(stat.size, 300_000);
    let looked = tokio::time::timeout(Duration::from_millis(500), fs.lookup(Ino::ROOT, "slow.bin"))
        .await
        .expect("lookup does not wait for the upload")
        .unwrap();
    assert_eq!(looked.ino, attr.ino);
    assert!(!closing.is_finished());
    closing.abort();
}

#[tokio::test]
async fn the_upload_budget_is_shared_by_every_file_of_the_mount() {
    let budget = write::UploadBudget::new(2, 16 << 20);
    let first = budget.admit(1 << 20).await;
    let _second = budget.admit(1 << 20).await;
    let wait = Duration::from_millis(100);
    assert!(
        tokio::time::timeout(wait, budget.admit(1 << 20))
            .await
            .is_err(),
        "a third part waits, whichever file it belongs to"
    );
    drop(first);
    let third = tokio::time::timeout(wait, budget.admit(1 << 20))
        .await
        .expect("admitted once a part is done");
    drop(third);
    // Bytes count too: a part as large as the whole budget waits for all of it.
    let held = budget.admit(1 << 20).await;
    assert!(tokio::time::timeout(wait, budget.admit(64 << 20))
        .await
        .is_err());
    drop(held);
    drop(_second);
    assert!(tokio::time::timeout(wait, budget.admit(64 << 20))
        .await
        .is_ok());
}
