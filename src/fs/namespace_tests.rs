//! Tests of namespace and metadata changes on the in-memory store.

use super::meta::AttrChange;
use super::namespace::{caller, Caller};
use super::tests::{write_rig, write_rig_with};
use super::*;
use crate::store::{Metadata, RequestKind};
use std::time::SystemTime;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn chmod_chown_and_touch_are_stored_as_s3fs_headers_without_moving_data() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("doc.txt", "content");
    let a = fs.lookup(Ino::ROOT, "doc.txt").await.unwrap();
    assert_eq!(a.perm, 0o644, "no metadata: the mount's default");
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let changed = fs
        .set_attr(
            a.ino,
            AttrChange {
                perm: Some(0o600),
                uid: Some(1234),
                gid: Some(99),
                mtime: Some(when),
                ..AttrChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((changed.perm, changed.uid, changed.gid), (0o600, 1234, 99));
    let meta = w.rig.mem.metadata("doc.txt").unwrap();
    assert_eq!(
        meta["mode"],
        (0o100600).to_string(),
        "whole st_mode, decimal"
    );
    assert_eq!(meta["uid"], "1234");
    assert_eq!(meta["mtime"], "1500000000");
    assert_eq!(
        w.rig.mem.content("doc.txt").as_deref(),
        Some(&b"content"[..])
    );
    assert_eq!(w.rig.count(RequestKind::Copy), 1, "one copy onto itself");
    assert_eq!(w.rig.count(RequestKind::Put), 0, "no data uploaded");
    // What a fresh mount (or s3fs) reads back.
    let fresh = write_rig(1 << 30);
    fresh
        .rig
        .mem
        .put_with_metadata("doc.txt", "content", meta.clone());
    let back = fresh.rig.fs.lookup(Ino::ROOT, "doc.txt").await.unwrap();
    assert_eq!((back.perm, back.uid, back.gid), (0o600, 1234, 99));
    assert_eq!(secs(back.mtime), 1_500_000_000);
}

#[tokio::test]
async fn new_files_and_directories_carry_mode_and_owner() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let who = namespace::Caller { uid: 42, gid: 43 };
    let (_, fh) = fs.create(Ino::ROOT, "f", 0o640, who).await.unwrap();
    fs.write(fh, 0, b"x").await.unwrap();
    fs.release(fh).await.unwrap();
    let meta = w.rig.mem.metadata("f").unwrap();
    assert_eq!(meta["mode"], (0o100640).to_string());
    assert_eq!((meta["uid"].as_str(), meta["gid"].as_str()), ("42", "43"));
    let d = fs.mkdir(Ino::ROOT, "d", 0o700, who).await.unwrap();
    assert_eq!(d.perm, 0o700);
    let meta = w.rig.mem.metadata("d/").unwrap();
    assert_eq!(meta["mode"], (0o040700).to_string());
    // A rewrite keeps mode and owner, as a local file would.
    let f = fs.lookup(Ino::ROOT, "f").await.unwrap();
    let (fh, _) = fs.open(f.ino, true, true).await.unwrap();
    fs.write(fh, 0, b"new").await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        w.rig.mem.metadata("f").unwrap()["mode"],
        (0o100640).to_string()
    );
    assert_eq!(w.rig.mem.content("f").as_deref(), Some(&b"new"[..]));
}

#[tokio::test]
async fn chmod_of_a_file_being_written_goes_up_with_it() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let (a, fh) = fs.create(Ino::ROOT, "s.sh", 0o644, caller()).await.unwrap();
    fs.write(fh, 0, b"#!/bin/sh\n").await.unwrap();
    let changed = fs
        .set_attr(
            a.ino,
            AttrChange {
                perm: Some(0o755),
                ..AttrChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.perm, 0o755);
    assert_eq!(w.rig.count(RequestKind::Copy), 0, "nothing to copy yet");
    fs.release(fh).await.unwrap();
    assert_eq!(
        w.rig.mem.metadata("s.sh").unwrap()["mode"],
        (0o100755).to_string()
    );
}

#[tokio::test]
async fn symlinks_are_stored_and_read_the_s3fs_way() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let link = fs
        .symlink(Ino::ROOT, "latest", "releases/v2.tar", caller())
        .await
        .unwrap();
    assert_eq!(link.kind, Kind::Symlink);
    assert_eq!(
        w.rig.mem.content("latest").as_deref(),
        Some(&b"releases/v2.tar"[..])
    );
    assert_eq!(w.rig.mem.metadata("latest").unwrap()["mode"], "41471");
    assert_eq!(
        &fs.readlink(link.ino).await.unwrap()[..],
        b"releases/v2.tar"
    );
    // A link made by s3fs, seen by a fresh mount: in the listing and on lookup.
    let fresh = write_rig(1 << 30);
    let meta = w.rig.mem.metadata("latest").unwrap();
    fresh.rig.mem.put_with_metadata("ln", "target", meta);
    fresh.rig.mem.put("plain", "data");
    let listed = fresh.rig.list(Ino::ROOT, true).await;
    let kind = |n: &str| listed.iter().find(|e| e.0 == n).unwrap().1.kind;
    assert_eq!((kind("ln"), kind("plain")), (Kind::Symlink, Kind::File));
    let ln = fresh.rig.fs.lookup(Ino::ROOT, "ln").await.unwrap();
    assert_eq!(&fresh.rig.fs.readlink(ln.ino).await.unwrap()[..], b"target");
    let plain = fresh.rig.fs.lookup(Ino::ROOT, "plain").await.unwrap();
    assert_eq!(
        fresh.rig.fs.readlink(plain.ino).await.unwrap_err().errno(),
        libc::EINVAL
    );
}

#[tokio::test]
async fn a_directory_rename_moves_every_object_and_keeps_inodes() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    for key in ["src/", "src/a", "src/sub/b", "src/sub/c/d", "srcx"] {
        w.rig.mem.put(key, key.to_string());
    }
    let src = fs.lookup(Ino::ROOT, "src").await.unwrap();
    let sub = fs.lookup(src.ino, "sub").await.unwrap();
    let b = fs.lookup(sub.ino, "b").await.unwrap();
    fs.rename(Ino::ROOT, "src", Ino::ROOT, "dst", false)
        .await
        .unwrap();
    for key in ["dst/", "dst/a", "dst/sub/b", "dst/sub/c/d"] {
        let old = key.replacen("dst", "src", 1);
        assert_eq!(
            w.rig.mem.content(key).as_deref(),
            Some(old.as_bytes()),
            "{key} moved"
        );
        assert_eq!(w.rig.mem.content(&old), None, "{old} removed");
    }
    assert_eq!(w.rig.mem.content("srcx").as_deref(), Some(&b"srcx"[..]));
    // The kernel's inode numbers stay valid below the new name.
    assert_eq!(fs.getattr(b.ino).await.unwrap().size, 9);
    assert_eq!(w.rig.read_all(b.ino).await, b"src/sub/b");
    let again = fs.lookup(Ino::ROOT, "dst").await.unwrap();
    assert_eq!(again.ino, src.ino);
}

#[tokio::test]
async fn an_interrupted_directory_rename_loses_nothing() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let keys: Vec<String> = (0..40).map(|i| format!("big/f{i:02}")).collect();
    for key in &keys {
        w.rig.mem.put(key, key.clone());
    }
    fs.lookup(Ino::ROOT, "big").await.unwrap();
    w.rig.store.fail_nth(
        RequestKind::Copy,
        17,
        crate::store::StoreError::Unreachable("test".into()),
    );
    let err = fs
        .rename(Ino::ROOT, "big", Ino::ROOT, "moved", false)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EHOSTUNREACH);
    let mut at_one_place = 0;
    for key in &keys {
        let new = key.replacen("big", "moved", 1);
        let (old_there, new_there) = (
            w.rig.mem.content(key).is_some(),
            w.rig.mem.content(&new).is_some(),
        );
        assert!(old_there || new_there, "{key} is somewhere");
        if old_there != new_there {
            at_one_place += 1;
        }
    }
    assert_eq!(at_one_place, keys.len(), "no object is in both places");
}

#[tokio::test]
async fn a_directory_above_the_rename_limit_answers_exdev() {
    let w = write_rig_with(
        1 << 30,
        FsConfig {
            max_dir_rename_objects: 5,
            ..FsConfig::default()
        },
    );
    for i in 0..6 {
        w.rig.mem.put(&format!("d/{i}"), "x");
    }
    w.rig.fs.lookup(Ino::ROOT, "d").await.unwrap();
    let err = w
        .rig
        .fs
        .rename(Ino::ROOT, "d", Ino::ROOT, "e", false)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EXDEV);
    assert_eq!(w.rig.count(RequestKind::Copy), 0, "nothing was moved");
}

#[tokio::test]
async fn renaming_onto_a_non_empty_directory_is_refused() {
    let w = write_rig(1 << 30);
    w.rig.mem.put("a/x", "1");
    w.rig.mem.put("b/y", "2");
    w.rig.fs.lookup(Ino::ROOT, "a").await.unwrap();
    let err = w
        .rig
        .fs
        .rename(Ino::ROOT, "a", Ino::ROOT, "b", false)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOTEMPTY);
}

#[tokio::test]
async fn objects_above_the_copy_limit_are_copied_in_parts() {
    let w = write_rig_with(
        1 << 30,
        FsConfig {
            copy_limit: 6 << 20,
            copy_part_size: 5 << 20,
            ..FsConfig::default()
        },
    );
    let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut meta = crate::store::Metadata::new();
    meta.insert("mode".into(), (0o100600).to_string());
    w.rig.mem.put_with_metadata("huge.bin", data.clone(), meta);
    w.rig.fs.lookup(Ino::ROOT, "huge.bin").await.unwrap();
    w.rig
        .fs
        .rename(Ino::ROOT, "huge.bin", Ino::ROOT, "moved.bin", false)
        .await
        .unwrap();
    assert_eq!(w.rig.count(RequestKind::Copy), 0);
    assert_eq!(w.rig.count(RequestKind::PartCopy), 3, "5 + 5 + 2 MiB");
    assert_eq!(w.rig.mem.content("moved.bin").as_deref(), Some(&data[..]));
    assert_eq!(
        w.rig.mem.metadata("moved.bin").unwrap()["mode"],
        (0o100600).to_string(),
        "metadata kept"
    );
    assert_eq!(w.rig.mem.open_uploads(), 0);
}

#[tokio::test]
async fn xattrs_are_stored_in_metadata_within_the_budget() {
    let w = write_rig_with(
        1 << 30,
        FsConfig {
            xattrs: true,
            ..FsConfig::default()
        },
    );
    let fs = &w.rig.fs;
    w.rig.mem.put("f", "data");
    let f = fs.lookup(Ino::ROOT, "f").await.unwrap();
    use xattr::SetMode;
    fs.setxattr(f.ino, "user.origin", b"camera 1", SetMode::Any)
        .await
        .unwrap();
    assert_eq!(
        fs.getxattr(f.ino, "user.origin").await.unwrap(),
        b"camera 1"
    );
    assert_eq!(
        fs.setxattr(f.ino, "user.origin", b"x", SetMode::Create)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    let names = fs.listxattr(f.ino).await.unwrap();
    assert!(names.contains(&"user.origin".to_string()));
    assert!(names.contains(&"user.s3.etag".to_string()));
    assert_eq!(fs.getxattr(f.ino, "user.s3.key").await.unwrap(), b"f");
    let url = fs.getxattr(f.ino, "user.s3.url").await.unwrap();
    assert_eq!(url, b"memory:///f?method=Get&expires=86400");
    assert_eq!(
        fs.getxattr(f.ino, "user.s3.storage_class").await.unwrap(),
        b"STANDARD"
    );
    assert_eq!(
        fs.getxattr(f.ino, "security.selinux")
            .await
            .unwrap_err()
            .errno(),
        libc::ENODATA
    );
    assert_eq!(
        fs.setxattr(f.ino, "user.big", &[7u8; 3000], SetMode::Any)
            .await
            .unwrap_err()
            .errno(),
        libc::E2BIG
    );
    assert_eq!(
        fs.setxattr(f.ino, "user.s3.etag", b"x", SetMode::Any)
            .await
            .unwrap_err()
            .errno(),
        libc::EPERM
    );
    fs.removexattr(f.ino, "user.origin").await.unwrap();
    assert_eq!(
        fs.getxattr(f.ino, "user.origin").await.unwrap_err().errno(),
        libc::ENODATA
    );
    assert_eq!(w.rig.mem.content("f").as_deref(), Some(&b"data"[..]));
}

#[tokio::test]
async fn xattrs_are_off_unless_asked_for() {
    let w = write_rig(1 << 30);
    w.rig.mem.put("f", "data");
    let f = w.rig.fs.lookup(Ino::ROOT, "f").await.unwrap();
    let heads = w.rig.count(RequestKind::Head);
    let err = w.rig.fs.getxattr(f.ino, "user.x").await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOSYS);
    assert_eq!(w.rig.count(RequestKind::Head), heads, "no request sent");
}

#[tokio::test]
async fn appending_to_an_empty_object_streams_like_a_new_file() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("empty.log", Vec::new());
    let f = fs.lookup(Ino::ROOT, "empty.log").await.unwrap();
    let (fh, _) = fs.open(f.ino, true, false).await.unwrap();
    let data: Vec<u8> = (0..(16u32 << 20) + 5).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        fs.write(fh, (i as u64) << 20, chunk).await.unwrap();
    }
    assert!(
        w.rig.count(RequestKind::UploadPart) >= 2,
        "parts went up before close"
    );
    fs.release(fh).await.unwrap();
    assert_eq!(w.rig.mem.content("empty.log").as_deref(), Some(&data[..]));
}

#[tokio::test]
async fn appending_to_a_large_object_uploads_only_the_new_bytes() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let old: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 253) as u8).collect();
    w.rig.mem.put("log.bin", old.clone());
    let f = fs.lookup(Ino::ROOT, "log.bin").await.unwrap();
    let counters = w.rig.store.counters();
    let (read_before, written_before) = (counters.bytes_read(), counters.bytes_written());
    let (fh, _) = fs.open(f.ino, true, false).await.unwrap();
    let tail = vec![7u8; 1 << 20];
    fs.write(fh, old.len() as u64, &tail).await.unwrap();
    fs.release(fh).await.unwrap();
    let mut expect = old.clone();
    expect.extend_from_slice(&tail);
    assert_eq!(w.rig.mem.content("log.bin").as_deref(), Some(&expect[..]));
    assert_eq!(
        counters.bytes_written() - written_before,
        1 << 20,
        "only the appended MiB went up"
    );
    assert_eq!(
        counters.bytes_read() - read_before,
        0,
        "nothing was downloaded"
    );
    assert_eq!(
        w.rig.count(RequestKind::PartCopy),
        1,
        "40 MiB copied server-side"
    );
    assert_eq!(w.rig.mem.open_uploads(), 0);
}

#[tokio::test]
async fn a_patch_in_the_middle_fetches_and_uploads_one_part_around_it() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let old: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 241) as u8).collect();
    w.rig.mem.put("db.bin", old.clone());
    let f = fs.lookup(Ino::ROOT, "db.bin").await.unwrap();
    let counters = w.rig.store.counters();
    let (read_before, written_before) = (counters.bytes_read(), counters.bytes_written());
    let (fh, _) = fs.open(f.ino, true, false).await.unwrap();
    // A reader through the same handle sees old bytes (fetched lazily) and the patch.
    let at = 20u64 << 20;
    assert_eq!(
        &fs.read(fh, at, 4096).await.unwrap()[..],
        &old[at as usize..at as usize + 4096]
    );
    fs.write(fh, at + 100, b"PATCH").await.unwrap();
    assert_eq!(
        &fs.read(fh, at + 98, 9).await.unwrap()[..],
        &[
            old[at as usize + 98],
            old[at as usize + 99],
            b'P',
            b'A',
            b'T',
            b'C',
            b'H',
            old[at as usize + 105],
            old[at as usize + 106]
        ]
    );
    fs.release(fh).await.unwrap();
    let mut expect = old.clone();
    expect[at as usize + 100..at as usize + 105].copy_from_slice(b"PATCH");
    assert_eq!(w.rig.mem.content("db.bin").as_deref(), Some(&expect[..]));
    let part = write::MIN_PART_SIZE;
    assert!(counters.bytes_written() - written_before <= part);
    // The part around the patch starts where the patch does, plus the 4 KiB read before.
    assert!(
        counters.bytes_read() - read_before <= part + 4096,
        "read {}",
        counters.bytes_read() - read_before
    );
}

#[tokio::test]
async fn an_object_changed_under_a_lazy_copy_fails_the_upload_and_keeps_the_changes() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("shared.bin", vec![1u8; 12 << 20]);
    let f = fs.lookup(Ino::ROOT, "shared.bin").await.unwrap();
    let (fh, _) = fs.open(f.ino, true, false).await.unwrap();
    fs.write(fh, 12 << 20, b"mine").await.unwrap();
    // Another client replaces the object before the close.
    w.rig.mem.put("shared.bin", vec![2u8; 12 << 20]);
    let err = fs.flush(fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(
        w.rig.mem.content("shared.bin").unwrap()[0],
        2,
        "the other client's version stands"
    );
    assert_eq!(w.rig.mem.open_uploads(), 0);
    let kept = w.recovered();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].ends_with(b"mine"),
        "the written bytes are in recovery"
    );
    let _ = fs.release(fh).await;
}

async fn edit_after_someone_else(policy: write::ConflictPolicy) -> (WriteRigResult, Vec<Vec<u8>>) {
    let mut cfg = FsConfig::default();
    cfg.write.conflict = policy;
    let w = write_rig_with(1 << 30, cfg);
    let fs = &w.rig.fs;
    w.rig.mem.put("notes.txt", "original");
    let f = fs.lookup(Ino::ROOT, "notes.txt").await.unwrap();
    let (fh, _) = fs.open(f.ino, true, true).await.unwrap();
    fs.write(fh, 0, b"mine").await.unwrap();
    w.rig.mem.put("notes.txt", "theirs");
    let result = fs.flush(fh).await.map_err(|e| e.errno());
    let _ = fs.release(fh).await;
    let content = w.rig.mem.content("notes.txt").unwrap().to_vec();
    ((result, content), w.recovered())
}

type WriteRigResult = (Result<(), i32>, Vec<u8>);

#[tokio::test]
async fn a_conflicting_close_wins_with_a_warning_by_default() {
    let ((result, content), recovered) = edit_after_someone_else(write::ConflictPolicy::Warn).await;
    assert_eq!(result, Ok(()));
    assert_eq!(content, b"mine");
    assert!(recovered.is_empty());
}

#[tokio::test]
async fn a_conflicting_close_fails_with_conflict_fail() {
    let ((result, content), recovered) = edit_after_someone_else(write::ConflictPolicy::Fail).await;
    assert_eq!(result, Err(libc::EIO));
    assert_eq!(content, b"theirs", "the other version stands");
    assert_eq!(recovered, vec![b"mine".to_vec()], "our bytes are kept");
}

#[tokio::test]
async fn async_write_back_returns_at_close_and_uploads_after() {
    let w = write_rig_with(
        1 << 30,
        FsConfig {
            write_back: WriteBack::Async,
            ..FsConfig::default()
        },
    );
    let fs = &w.rig.fs;
    let (_, fh) = fs
        .create(Ino::ROOT, "later.txt", 0o644, caller())
        .await
        .unwrap();
    fs.write(fh, 0, b"soon").await.unwrap();
    fs.flush(fh).await.unwrap();
    assert_eq!(
        w.rig.count(RequestKind::Put),
        0,
        "close did not wait for the upload"
    );
    fs.release(fh).await.unwrap();
    for _ in 0..200 {
        if fs.pending_uploads() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fs.pending_uploads(), 0);
    assert_eq!(
        w.rig.mem.content("later.txt").as_deref(),
        Some(&b"soon"[..])
    );
    // fsync still means "in the bucket".
    let (_, fh) = fs
        .create(Ino::ROOT, "now.txt", 0o644, caller())
        .await
        .unwrap();
    fs.write(fh, 0, b"durable").await.unwrap();
    fs.fsync(fh).await.unwrap();
    assert_eq!(
        w.rig.mem.content("now.txt").as_deref(),
        Some(&b"durable"[..])
    );
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn files_being_written_show_in_listings_once() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("a", "1");
    w.rig.mem.put("z", "2");
    let (_, fh) = fs
        .create(Ino::ROOT, "m.part", 0o644, caller())
        .await
        .unwrap();
    fs.write(fh, 0, b"half").await.unwrap();
    let names = |l: Vec<(String, Attr)>| l.into_iter().map(|e| e.0).collect::<Vec<_>>();
    let listed = w.rig.list(Ino::ROOT, true).await;
    assert_eq!(names(listed.clone()), vec![".", "..", "a", "z", "m.part"]);
    assert_eq!(listed[4].1.size, 4);
    fs.release(fh).await.unwrap();
    assert_eq!(
        w.rig.names(Ino::ROOT, true).await,
        vec![".", "..", "a", "m.part", "z"],
        "uploaded: listed by the bucket, once"
    );
}

#[tokio::test]
async fn status_shows_files_whose_changes_are_not_in_the_bucket_yet() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let (_, fh) = fs
        .create(Ino::ROOT, "copying.iso", 0o644, caller())
        .await
        .unwrap();
    let chunk = vec![1u8; 1 << 20];
    for i in 0..12u64 {
        fs.write(fh, i << 20, &chunk).await.unwrap();
    }
    // Streamed parts finish in the background.
    for _ in 0..200 {
        if fs.uploads_in_progress().first().is_some_and(|r| r.done > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reports = fs.uploads_in_progress();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].key, "copying.iso");
    assert_eq!(reports[0].total, 12 << 20);
    assert!(
        reports[0].done > 0,
        "streamed parts count: {:?}",
        reports[0]
    );
    fs.release(fh).await.unwrap();
    assert!(fs.uploads_in_progress().is_empty(), "all in the bucket");
}

#[tokio::test]
async fn touch_while_open_is_what_stat_shows_after_the_close() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let (a, fh) = fs.create(Ino::ROOT, "t", 0o644, caller()).await.unwrap();
    fs.write(fh, 0, b"x").await.unwrap();
    fs.flush(fh).await.unwrap();
    // As GNU touch does: futimens on an open, already uploaded file.
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_934_245);
    fs.set_attr(
        a.ino,
        AttrChange {
            mtime: Some(when),
            ..AttrChange::default()
        },
    )
    .await
    .unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fs.getattr(a.ino).await.unwrap().mtime, when);
    assert_eq!(w.rig.mem.metadata("t").unwrap()["mtime"], "1577934245");
}

/// Each special type with the device number mknod is given.
const SPECIALS: [(&str, Special, u32); 4] = [
    ("pipe", Special::Fifo, 0),
    ("agent.sock", Special::Socket, 0),
    // makedev(1, 3) and makedev(8, 1), as stat shows them.
    ("null", Special::CharDevice, 0x103),
    ("sda1", Special::BlockDevice, 0x801),
];

#[tokio::test]
async fn special_files_are_empty_objects_with_their_type_in_the_mode_header() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    let owner = Caller {
        uid: 1000,
        gid: 100,
    };
    for (name, special, _) in SPECIALS {
        let before = w.rig.count(RequestKind::Put);
        let a = fs
            .mknod(Ino::ROOT, name, special, 0o640, 0x103, owner)
            .await
            .unwrap();
        assert_eq!(w.rig.count(RequestKind::Put), before + 1, "{name}: one PUT");
        assert_eq!(a.kind, Kind::Special(special));
        assert_eq!((a.perm, a.uid, a.gid, a.size), (0o640, 1000, 100, 0));
        assert_eq!(a.rdev, if a.kind.is_device() { 0x103 } else { 0 });
        assert_eq!(w.rig.mem.content(name).as_deref(), Some(&b""[..]));
        let headers = w.rig.mem.metadata(name).unwrap();
        let mode: u32 = headers["mode"].parse().unwrap();
        assert_eq!(
            mode & libc::S_IFMT,
            match special {
                Special::Fifo => libc::S_IFIFO,
                Special::Socket => libc::S_IFSOCK,
                Special::CharDevice => libc::S_IFCHR,
                Special::BlockDevice => libc::S_IFBLK,
            },
            "{name}: s3fs's whole st_mode"
        );
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(headers["uid"], "1000");
        assert_eq!(
            headers.contains_key(meta::RDEV_HEADER),
            a.kind.is_device(),
            "{name}: only devices keep a number"
        );
        // The name answers at once, with its type.
        let found = fs.lookup(Ino::ROOT, name).await.unwrap();
        assert_eq!((found.ino, found.kind), (a.ino, a.kind));
    }
}

#[tokio::test]
async fn special_files_keep_type_owner_and_device_through_changes_and_remounts() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    for (name, special, rdev) in SPECIALS {
        fs.mknod(Ino::ROOT, name, special, 0o600, rdev, caller())
            .await
            .unwrap();
    }
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for (name, _, _) in SPECIALS {
        let a = fs.lookup(Ino::ROOT, name).await.unwrap();
        fs.set_attr(
            a.ino,
            AttrChange {
                perm: Some(0o664),
                uid: Some(42),
                gid: Some(43),
                mtime: Some(when),
                ..AttrChange::default()
            },
        )
        .await
        .unwrap();
        fs.rename(Ino::ROOT, name, Ino::ROOT, &format!("moved-{name}"), false)
            .await
            .unwrap();
    }
    // A new mount sees each one as it was left, by lookup and in a listing.
    let again = w.rig.remount();
    let listed = again.list(Ino::ROOT, true).await;
    for (name, special, rdev) in SPECIALS {
        let moved = format!("moved-{name}");
        let a = again.fs.lookup(Ino::ROOT, &moved).await.unwrap();
        let in_listing = &listed.iter().find(|e| e.0 == moved).unwrap().1;
        for a in [&a, in_listing] {
            assert_eq!(a.kind, Kind::Special(special), "{moved}");
            assert_eq!((a.perm, a.uid, a.gid), (0o664, 42, 43), "{moved}");
            assert_eq!(secs(a.mtime), 1_600_000_000);
            assert_eq!(a.rdev, rdev, "{moved}: device number");
        }
        assert_eq!(w.rig.mem.content(name), None, "{name}: renamed away");
        fs.unlink(Ino::ROOT, &moved).await.unwrap();
        assert_eq!(w.rig.mem.content(&moved), None);
        assert_eq!(
            fs.lookup(Ino::ROOT, &moved).await.unwrap_err().errno(),
            libc::ENOENT
        );
    }
}

#[tokio::test]
async fn a_plain_page_still_shows_the_type_of_its_special_files() {
    let w = write_rig(1 << 30);
    // A bucket written by plain S3 clients (no metadata) with one fifo and one s3fs-made
    // device (mode, no device number) far past the page's sample.
    for i in 0..40 {
        w.rig.mem.put(&format!("f{i:02}"), "data");
    }
    w.rig.mem.put("f99-empty", "");
    let mut fifo = Metadata::new();
    fifo.insert("mode".into(), (libc::S_IFIFO | 0o644).to_string());
    w.rig.mem.put_with_metadata("zz-fifo", "", fifo);
    let mut dev = Metadata::new();
    dev.insert("mode".into(), (libc::S_IFCHR | 0o600).to_string());
    w.rig.mem.put_with_metadata("zz-null", "", dev);
    let listed = w.rig.list(Ino::ROOT, true).await;
    let kind = |n: &str| listed.iter().find(|e| e.0 == n).unwrap().1.kind;
    assert_eq!(kind("zz-fifo"), Kind::Special(Special::Fifo));
    assert_eq!(kind("zz-null"), Kind::Special(Special::CharDevice));
    assert_eq!(kind("f99-empty"), Kind::File);
    assert_eq!(kind("f00"), Kind::File);
    // The sample, then only the three empty objects: the plain files keep listing cost.
    assert_eq!(
        w.rig.count(RequestKind::Head),
        page_sample::LISTING_SAMPLE as u64 + 3
    );
}

#[tokio::test]
async fn a_read_only_mount_refuses_special_files_without_a_request() {
    let r = super::tests::rig_with(
        "",
        FsConfig {
            read_only: true,
            ..FsConfig::default()
        },
    );
    let before = r.store.counters().summary();
    let err =
        r.fs.mknod(Ino::ROOT, "p", Special::Fifo, 0o644, 0, caller())
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
    assert_eq!(r.store.counters().summary(), before);
}

#[tokio::test]
async fn mknod_of_a_regular_file_uploads_an_empty_file() {
    let w = write_rig(1 << 30);
    let a = w
        .rig
        .fs
        .create_empty(Ino::ROOT, "empty", 0o600, caller())
        .await
        .unwrap();
    assert_eq!((a.kind, a.size, a.perm), (Kind::File, 0, 0o600));
    assert_eq!(w.rig.mem.content("empty").as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn o_trunc_after_a_chmod_keeps_the_new_mode() {
    let w = write_rig(1 << 30);
    let fs = &w.rig.fs;
    w.rig.mem.put("f", "0123456789");
    let f = fs.lookup(Ino::ROOT, "f").await.unwrap();
    fs.set_attr(
        f.ino,
        AttrChange {
            perm: Some(0o600),
            ..AttrChange::default()
        },
    )
    .await
    .unwrap();
    // The chmod made the mount forget its last HEAD: the truncating open must not fall back
    // to the mount's default mode.
    let (fh, _) = fs.open(f.ino, true, true).await.unwrap();
    fs.write(fh, 0, b"new").await.unwrap();
    fs.release(fh).await.unwrap();
    let headers = w.rig.mem.metadata("f").unwrap();
    assert_eq!(headers["mode"], (0o100600).to_string());
    assert_eq!(w.rig.mem.content("f").as_deref(), Some(&b"new"[..]));
}
