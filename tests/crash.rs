//! Crash safety and POSIX lifetimes of open files, through the kernel against Garage: the
//! daemon is killed with SIGKILL mid-upload and mid-write, a new mount on the same cache
//! directory reconciles; programs unlink and rename files they hold open.
//!
//! The tests of this file run one at a time: a fork anywhere in the test process closes a
//! copy of every open descriptor, which flushes (uploads) the files the tests hold open, and
//! these tests depend on exactly when their files are flushed.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{files_below, pattern, Bucket, Mount};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mounts `location` on a new mountpoint over the cache directory `cache` (a remount after a
/// crash); returns the mount and what `pailfs mount` printed.
fn remount(location: &str, cache: &std::path::Path, extra: &[&str]) -> (Mount, String) {
    let mut args = vec![format!("--cache-dir={}", cache.display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (m, out) = Mount::try_new(location, &args);
    let printed = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "remount failed: {printed}\n{}",
        m.log_text()
    );
    (m, printed)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkill_during_async_uploads_loses_no_acknowledged_file() {
    let _serial = serial();
    let b = Bucket::new("kill-async");
    let m = Mount::new(&b.location(""), &["--write-back=async"]);
    let mut files = Vec::new();
    for i in 0..19 {
        files.push((
            format!("small-{i:02}.txt"),
            pattern(50_000 + i * 1000, i as u64),
        ));
    }
    files.push(("big.bin".to_string(), pattern(64 << 20, 99)));
    for (name, data) in &files {
        // cp: write, close; the close returned, so the file was acknowledged.
        std::fs::write(m.join(name), data).unwrap();
    }
    m.kill_daemon();
    m.unmount();
    let (_m2, printed) = remount(&b.location(""), &m.cache, &[]);
    assert!(
        printed.contains("uploading") && printed.contains("acknowledged"),
        "the start-up output says what it uploads: {printed}"
    );
    for (name, data) in &files {
        wait_for(name, || b.get(name).as_deref() == Some(&data[..]));
    }
    assert!(b.open_uploads().is_empty(), "{:?}", b.open_uploads());
    let recovered = files_below(&m.cache.join("recovery"));
    assert!(recovered.is_empty(), "nothing was lost: {recovered:?}");
    // Once uploaded, the staging directory is empty again.
    wait_for("an empty staging directory", || {
        std::fs::read_dir(m.cache.join("staging"))
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    });
}

#[test]
fn sigkill_during_a_sync_write_keeps_the_bytes_in_recovery_under_their_path() {
    let _serial = serial();
    let b = Bucket::new("kill-sync");
    let m = Mount::new(&b.location(""), &[]);
    std::fs::create_dir(m.join("photos")).unwrap();
    let data = pattern(40 << 20, 7);
    let mut f = std::fs::File::create(m.join("photos/half.bin")).unwrap();
    f.write_all(&data).unwrap();
    // Still open, never closed: the daemon dies with 40 MiB written.
    m.kill_daemon();
    drop(f);
    m.unmount();
    let (m2, printed) = remount(&b.location(""), &m.cache, &[]);
    assert!(
        printed.contains("photos/half.bin") && printed.contains("recovery"),
        "the start-up output names the file and where its bytes are: {printed}"
    );
    let recovered = files_below(&m.cache.join("recovery"));
    let kept = recovered
        .iter()
        .find(|p| p.ends_with("photos/half.bin"))
        .unwrap_or_else(|| panic!("recovery/TIME/photos/half.bin in {recovered:?}"));
    let bytes = std::fs::read(kept).unwrap();
    assert!(!bytes.is_empty() && bytes.len() <= data.len());
    // What reached the staging file is exact; a part still in the daemon's memory when it
    // died is zeros (its writes were never acknowledged by a close or fsync).
    assert!(bytes.iter().zip(&data).all(|(k, d)| k == d || *k == 0));
    assert!(bytes[..8 << 20] == data[..8 << 20]);
    assert!(
        m2.log_text().contains("photos/half.bin"),
        "the log names it too"
    );
    assert_eq!(
        b.get("photos/half.bin"),
        None,
        "nothing half-written reached the bucket"
    );
    assert!(
        b.open_uploads().is_empty(),
        "the streaming upload was aborted: {:?}",
        b.open_uploads()
    );
}

#[test]
fn a_mount_after_a_killed_daemon_clears_its_dead_mount_and_serves() {
    let _serial = serial();
    let b = Bucket::new("restart");
    b.put("kept.txt", "still here");
    let m = Mount::new(&b.location(""), &[]);
    m.kill_daemon();
    let dead = std::fs::metadata(&m.path).unwrap_err().raw_os_error();
    assert!(
        matches!(dead, Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "a dead mount: {dead:?}"
    );
    // What a service manager's restart does: the same command, on the same mountpoint.
    let out = common::pailfs()
        .arg("mount")
        .arg(b.location(""))
        .arg(&m.path)
        .arg("--endpoint-url")
        .arg(&common::garage().endpoint)
        .arg(format!("--cache-dir={}", m.cache.display()))
        .arg(format!("--log-file={}", m.log.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("cleared the dead mount"), "{said}");
    assert_eq!(
        std::fs::read_to_string(m.join("kept.txt")).unwrap(),
        "still here"
    );
}

#[test]
fn a_second_mount_on_a_busy_cache_directory_is_refused_naming_the_first() {
    let _serial = serial();
    let b = Bucket::new("busy-cache");
    let m = Mount::new(&b.location(""), &[]);
    let (_other, out) = Mount::try_new(
        &b.location(""),
        &[&format!("--cache-dir={}", m.cache.display())],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("in use by another pailfs mount")
            && said.contains(&m.path.display().to_string()),
        "{said}"
    );
}

#[test]
fn an_unlinked_open_file_keeps_working_and_never_reaches_the_bucket() {
    let _serial = serial();
    let b = Bucket::new("unlink-open");
    let m = Mount::new(&b.location(""), &[]);
    let path = m.join("scratch.tmp");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.write_all(b"first half, ").unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        std::fs::metadata(&path).is_err(),
        "the name is gone at once"
    );
    let listed: Vec<_> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.is_empty(), "not listed: {listed:?}");
    f.write_all(b"second half").unwrap();
    assert_eq!(f.metadata().unwrap().len(), 23, "fstat still answers");
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "first half, second half");
    f.sync_all().unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.get("scratch.tmp"), None, "never uploaded");
    assert!(std::fs::read_dir(&m.path).unwrap().next().is_none());
    // A new file of that name is a file of its own.
    std::fs::write(&path, "new").unwrap();
    assert_eq!(b.get("scratch.tmp").as_deref(), Some(&b"new"[..]));
}

#[test]
fn an_unlink_the_bucket_refuses_fails_and_keeps_the_data() {
    let _serial = serial();
    let b = Bucket::new_shared("unlink-refused");
    b.put("kept.txt", "old");
    let (id, secret) = common::extra_key(&b.name, &["--read"]);
    let creds = [
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ];
    let m = Mount::new_with_env(&b.location(""), &[], &creds);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("kept.txt"))
        .unwrap();
    f.write_all(b"changed").unwrap();
    let err = std::fs::remove_file(m.join("kept.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let mut back = vec![0u8; 7];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"changed", "nothing was discarded");
    // The key may not write either: the close fails, and the bytes are kept in recovery.
    assert!(f.sync_all().is_err());
    drop(f);
    assert_eq!(b.get("kept.txt").as_deref(), Some(&b"old"[..]));
    let kept = m.recovered();
    assert!(
        kept.iter()
            .any(|p| p.ends_with("kept.txt") && std::fs::read(p).unwrap() == b"changed"),
        "{kept:?}"
    );
}

#[test]
fn renames_while_open_upload_to_the_new_name_and_spare_the_replaced_file() {
    let _serial = serial();
    let b = Bucket::new("rename-open");
    let old_doc = pattern(3 << 20, 4);
    b.put("doc", old_doc.clone());
    let m = Mount::new(&b.location(""), &[]);
    // rename of a file open for writing: its close uploads to the new name only.
    let mut draft = std::fs::File::create(m.join("draft")).unwrap();
    draft.write_all(b"first ").unwrap();
    std::fs::rename(m.join("draft"), m.join("final")).unwrap();
    draft.write_all(b"second").unwrap();
    drop(draft);
    assert_eq!(b.get("final").as_deref(), Some(&b"first second"[..]));
    assert_eq!(b.get("draft"), None);
    // A rename over a file open elsewhere (an atomic save while an editor holds it).
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("doc"))
        .unwrap();
    held.write_all_at(b"EDIT", 0).unwrap();
    std::fs::write(m.join("doc.tmp"), "saved elsewhere").unwrap();
    std::fs::rename(m.join("doc.tmp"), m.join("doc")).unwrap();
    let mut expected = old_doc.clone();
    expected[..4].copy_from_slice(b"EDIT");
    let mut back = vec![0u8; expected.len()];
    held.read_exact_at(&mut back, 0).unwrap();
    assert!(
        back == expected,
        "the replaced file's handle keeps its bytes"
    );
    drop(held);
    assert_eq!(b.get("doc").as_deref(), Some(&b"saved elsewhere"[..]));
    assert_eq!(std::fs::read(m.join("doc")).unwrap(), b"saved elsewhere");
}

#[test]
fn a_read_write_open_sees_a_same_size_change_made_elsewhere() {
    let _serial = serial();
    let b = Bucket::new("rdwr-fresh");
    b.put("same.txt", "AAAA");
    let m = Mount::new(&b.location(""), &["--metadata-ttl", "1s"]);
    assert_eq!(std::fs::read(m.join("same.txt")).unwrap(), b"AAAA");
    b.put("same.txt", "BBBB");
    std::thread::sleep(Duration::from_millis(1300));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("same.txt"))
        .unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(
        back, "BBBB",
        "not the old version from the kernel's page cache"
    );
}
