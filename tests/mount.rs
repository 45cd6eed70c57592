//! Integration tests: pailfs mounted through the kernel's FUSE, talking to a real Garage.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{extra_key, garage, is_mounted, pailfs, pattern, Bucket, KillOnDrop, Mount};

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn errno_of(result: std::io::Result<impl Sized>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn browse_stat_and_read_a_tree() {
    let b = Bucket::new("browse");
    b.put("top.txt", "top level\n");
    b.put("docs/readme.md", "# readme\n");
    b.put("docs/deep/a/b/c.txt", "deep");
    b.put("empty-dir/", "");
    b.put("zero.bin", "");
    let m = Mount::new(&b.location(""), &[]);
    assert_eq!(
        names(&m.path),
        set(&["docs", "empty-dir", "top.txt", "zero.bin"])
    );
    assert_eq!(names(&m.join("docs")), set(&["deep", "readme.md"]));
    assert!(names(&m.join("empty-dir")).is_empty());
    assert_eq!(
        std::fs::read_to_string(m.join("docs/deep/a/b/c.txt")).unwrap(),
        "deep"
    );
    assert_eq!(std::fs::read(m.join("zero.bin")).unwrap(), b"");
    let meta = std::fs::metadata(m.join("top.txt")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 10);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    // SAFETY: getuid cannot fail.
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
    let age = std::time::SystemTime::now()
        .duration_since(meta.modified().unwrap())
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(300),
        "mtime is LastModified, not 1970"
    );
    let dmeta = std::fs::metadata(m.join("docs")).unwrap();
    assert!(dmeta.is_dir());
    assert_eq!(dmeta.permissions().mode() & 0o7777, 0o755);
    // `find` walks everything; inode numbers stay the same during the mount.
    let out = Command::new("find")
        .arg(&m.path)
        .arg("-type")
        .arg("f")
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(found, 4);
    let ino = std::fs::metadata(m.join("docs/readme.md")).unwrap().ino();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        std::fs::metadata(m.join("docs/readme.md")).unwrap().ino(),
        ino
    );
    assert_eq!(errno_of(std::fs::metadata(m.join("nope"))), libc::ENOENT);
    // statfs answers with room to copy into.
    let out = Command::new("df").arg(&m.path).output().unwrap();
    assert!(out.status.success());
}

#[test]
fn sequential_and_random_reads_are_byte_exact() {
    let b = Bucket::new("reads");
    let big = pattern(40 * 1024 * 1024 + 12345, 1);
    b.put("big.bin", big.clone());
    let m = Mount::new(&b.location(""), &[]);
    let mut got = Vec::new();
    std::fs::File::open(m.join("big.bin"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got == big, "sequential read differs");
    let before = m.requests();
    // Random 4 KiB reads, with O_DIRECT-like freshness from a second handle.
    let f = std::fs::File::open(m.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    for (i, off) in [31_000_000u64, 7, 12_345_678, 40 * 1024 * 1024]
        .iter()
        .enumerate()
    {
        f.read_exact_at(&mut buf, *off).unwrap();
        assert_eq!(
            &buf[..],
            &big[*off as usize..*off as usize + 4096],
            "read {i}"
        );
    }
    let mut f = f;
    f.seek(SeekFrom::Start(big.len() as u64 - 10)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(&tail[..], &big[big.len() - 10..]);
    // The first full read left the pages cached, so rereads cost little.
    let after = m.requests();
    assert!(after.get - before.get <= 6, "{before:?} -> {after:?}");
}

#[test]
fn a_reader_opened_before_a_write_only_handle_sees_its_writes() {
    // As on a local disk: `tail -f` of a log another program appends to, a viewer of a file
    // an editor saves. (Writing past the page cache, as a direct-IO write-only handle would,
    // broke this: see the eighth session's note on issue 13.)
    let b = Bucket::new("coherent");
    let old = pattern(3 << 20, 1);
    b.put("f.bin", old.clone());
    let m = Mount::new(&b.location(""), &[]);
    let reader = std::fs::File::open(m.join("f.bin")).unwrap();
    let mut page = vec![0u8; 4096];
    reader.read_exact_at(&mut page, 8192).unwrap();
    assert_eq!(&page[..], &old[8192..8192 + 4096]);
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("f.bin"))
        .unwrap();
    // One page the reader has read, one it has not.
    for at in [8192u64, 2 << 20] {
        writer.write_all_at(&[b'X'; 4096], at).unwrap();
        reader.read_exact_at(&mut page, at).unwrap();
        assert!(page.iter().all(|&c| c == b'X'), "at {at}, writer open");
    }
    drop(writer);
    reader.read_exact_at(&mut page, 8192).unwrap();
    assert!(page.iter().all(|&c| c == b'X'), "writer closed");
    let mut new = old;
    new[8192..8192 + 4096].fill(b'X');
    new[2 << 20..(2 << 20) + 4096].fill(b'X');
    assert!(std::fs::read(m.join("f.bin")).unwrap() == new, "a new open");
    m.unmount();
    assert!(b.get("f.bin").unwrap() == new, "in the bucket");
}

/// Lines `ls -l DIR` prints (a "total" line, then one per entry).
fn ls_l_lines(dir: &Path) -> usize {
    let out = Command::new("ls").arg("-l").arg(dir).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn ls_l_of_plain_objects_costs_a_sample_of_heads_and_small_files_cost_one_get() {
    let b = Bucket::new("costs");
    let keys: Vec<String> = (0..300).map(|i| format!("many/f{i:03}.txt")).collect();
    b.put_many(keys, &pattern(4096, 2));
    // A TTL longer than the test: on a loaded machine the 50 reads can outlast the default
    // 1 s, and the kernel's look-ups of expired names would cost HEADs this test does not
    // count.
    let m = Mount::new(
        &b.location(""),
        &["--metadata-ttl", "5min", "--content-ttl", "5min"],
    );
    let before = m.requests();
    assert_eq!(ls_l_lines(&m.join("many")), 301);
    let after_ls = m.requests();
    assert!(
        after_ls.head - before.head <= 1 + 8,
        "the lookup of 'many' and a sample of 8 showing no metadata: {before:?} -> {after_ls:?}"
    );
    assert!(
        after_ls.list - before.list <= 2,
        "{before:?} -> {after_ls:?}"
    );
    for i in 0..50 {
        let data = std::fs::read(m.join(&format!("many/f{i:03}.txt"))).unwrap();
        assert_eq!(data.len(), 4096);
    }
    let after_cat = m.requests();
    assert_eq!(after_cat.get - after_ls.get, 50, "one GET per small file");
    assert_eq!(
        after_cat.head, after_ls.head,
        "no HEAD: attributes came with the listing"
    );
}

#[test]
fn fast_listing_costs_no_head() {
    let b = Bucket::new("fast-listing");
    let keys: Vec<String> = (0..300).map(|i| format!("many/f{i:03}.txt")).collect();
    b.put_many(keys, &pattern(16, 2));
    let m = Mount::new(&b.location(""), &["--fast-listing"]);
    let before = m.requests();
    assert_eq!(ls_l_lines(&m.join("many")), 301);
    let after = m.requests();
    assert_eq!(
        after.head,
        before.head + 1,
        "one HEAD for the lookup of 'many' only"
    );
    for i in 0..20 {
        let data = std::fs::read(m.join(&format!("many/f{i:03}.txt"))).unwrap();
        assert_eq!(data.len(), 16);
    }
    assert_eq!(
        m.requests().head,
        after.head,
        "no HEAD: attributes came with the listing"
    );
}

#[test]
fn a_large_directory_lists_completely_in_pages() {
    let b = Bucket::new("large-dir");
    let keys: Vec<String> = (0..2500).map(|i| format!("d/{i:05}")).collect();
    b.put_many(keys, b"x");
    let m = Mount::new(&b.location(""), &[]);
    let before = m.requests();
    let listed = names(&m.join("d"));
    assert_eq!(listed.len(), 2500);
    assert!(listed.contains("00000") && listed.contains("02499"));
    let after = m.requests();
    assert_eq!(after.list - before.list, 1 + 3, "lookup + 3 pages of 1000");
}

#[test]
fn the_internal_path_is_the_mount_root() {
    let b = Bucket::new("prefix");
    b.put("team/a/report.txt", "inside");
    b.put("team/a/sub/x", "x");
    b.put("team/ab/not-me", "sibling prefix");
    b.put("outside.txt", "outside");
    let m = Mount::new(&b.location("team/a"), &[]);
    assert_eq!(names(&m.path), set(&["report.txt", "sub"]));
    assert_eq!(
        std::fs::read_to_string(m.join("report.txt")).unwrap(),
        "inside"
    );
    assert_eq!(
        errno_of(std::fs::metadata(m.join("outside.txt"))),
        libc::ENOENT
    );
}

#[test]
fn keys_that_cannot_be_names_follow_the_rule() {
    let b = Bucket::new("odd-keys");
    b.put("ok.txt", "ok");
    b.put("a//b", "empty segment");
    b.put(&format!("long/{}", "n".repeat(300)), "too long");
    b.put("x", "file x");
    b.put("x/inner.txt", "inner");
    b.put("dir/./dot", "dot segment");
    let m = Mount::new(&b.location(""), &[]);
    let root = names(&m.path);
    assert!(root.contains("ok.txt") && root.contains("x"), "{root:?}");
    assert!(
        std::fs::metadata(m.join("x")).unwrap().is_dir(),
        "the directory wins over file x"
    );
    assert_eq!(
        std::fs::read_to_string(m.join("x/inner.txt")).unwrap(),
        "inner"
    );
    // 'a//b': the prefix 'a/' lists a segment with an empty name, which is skipped.
    if root.contains("a") {
        assert!(names(&m.join("a")).is_empty());
    }
    assert!(
        names(&m.join("long")).is_empty(),
        "a 300-byte name is not shown"
    );
    if root.contains("dir") {
        assert!(
            names(&m.join("dir")).is_empty(),
            "'.' segments are not shown"
        );
    }
    let log = m.log_text();
    assert!(
        log.contains("object key not shown"),
        "odd keys are logged: {log}"
    );
}

#[test]
fn round_trips_at_part_boundaries_and_appends_upload_only_new_bytes() {
    let b = Bucket::new("boundaries");
    let mib = 1usize << 20;
    b.put("big.log", pattern(30 * mib, 4));
    let m = Mount::new(&b.location(""), &[]);
    for (i, size) in [0, 1, 8 * mib - 1, 8 * mib, 8 * mib + 1, 17 * mib + 3]
        .into_iter()
        .enumerate()
    {
        let data = pattern(size, i as u64);
        let name = format!("size-{size}");
        std::fs::write(m.join(&name), &data).unwrap();
        assert!(b.get(&name).unwrap() == data, "{size} bytes in the bucket");
        assert!(
            std::fs::read(m.join(&name)).unwrap() == data,
            "{size} bytes read back"
        );
    }
    // Appending 1 MiB to a 30 MiB object: the old bytes are copied inside the server.
    let before = m.requests();
    let tail = pattern(mib, 99);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("big.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, &tail).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let after = m.requests();
    let mut expect = pattern(30 * mib, 4);
    expect.extend_from_slice(&tail);
    assert!(
        b.get("big.log").unwrap() == expect,
        "appended object differs"
    );
    assert_eq!(
        after.bytes_written - before.bytes_written,
        mib as u64,
        "only the new MiB was uploaded: {before:?} -> {after:?}"
    );
    assert!(after.part_copy > before.part_copy);
    assert_eq!(
        after.bytes_read, before.bytes_read,
        "nothing was downloaded"
    );
}

#[test]
fn a_big_file_uploads_while_it_is_written_even_after_an_early_close() {
    let b = Bucket::new("streaming");
    let m = Mount::new(&b.location(""), &[]);
    let data = pattern(48 << 20, 7);
    // As dd does: the new file's first descriptor is closed before any write (which uploads
    // an empty object); the writes come through a duplicate.
    let first = std::fs::File::create(m.join("movie.mkv")).unwrap();
    let mut f = first.try_clone().unwrap();
    drop(first);
    let before = m.counter_in_process("MPU_PART");
    std::io::Write::write_all(&mut f, &data).unwrap();
    let during = m.counter_in_process("MPU_PART");
    assert!(
        during - before >= 3,
        "8 MiB parts went up while the file was still being written: {before} -> {during}"
    );
    f.sync_all().unwrap();
    drop(f);
    assert!(
        b.get("movie.mkv").unwrap() == data,
        "the bucket holds the file"
    );
    assert!(std::fs::read(m.join("movie.mkv")).unwrap() == data);
    assert!(m.recovered().is_empty());
}

#[test]
fn files_written_through_the_mount_land_in_the_bucket() {
    let b = Bucket::new("writes");
    b.put("existing.log", "line 1\n");
    b.put("overwrite.txt", "old content that is longer");
    let m = Mount::new(&b.location(""), &[]);
    // cp of a multi-part file, byte-exact, readable back through the mount and from S3.
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("video.bin");
    let data = pattern(21 * 1024 * 1024 + 77, 11);
    std::fs::write(&src, &data).unwrap();
    let out = Command::new("cp")
        .arg(&src)
        .arg(m.join("video.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(b.get("video.bin").unwrap() == data, "bucket copy differs");
    assert!(
        std::fs::read(m.join("video.bin")).unwrap() == data,
        "read-back differs"
    );
    // Small files, zero-byte files, overwrite (O_TRUNC), append, truncate.
    std::fs::write(m.join("small.txt"), "hello").unwrap();
    assert_eq!(b.get("small.txt").as_deref(), Some(&b"hello"[..]));
    std::fs::File::create(m.join("zero")).unwrap();
    assert_eq!(b.get("zero").as_deref(), Some(&b""[..]));
    std::fs::write(m.join("overwrite.txt"), "new").unwrap();
    assert_eq!(b.get("overwrite.txt").as_deref(), Some(&b"new"[..]));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("existing.log"))
            .unwrap();
        f.write_all(b"line 2\n").unwrap();
        f.sync_all().unwrap();
        assert_eq!(
            b.get("existing.log").as_deref(),
            Some(&b"line 1\nline 2\n"[..]),
            "fsync uploaded"
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("small.txt"))
        .unwrap()
        .set_len(2)
        .unwrap();
    assert_eq!(b.get("small.txt").as_deref(), Some(&b"he"[..]));
    // A random write in the middle of an existing object.
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("video.bin"))
            .unwrap();
        f.write_all_at(b"PATCH", 10_000_000).unwrap();
    }
    let mut patched = data.clone();
    patched[10_000_000..10_000_005].copy_from_slice(b"PATCH");
    assert!(b.get("video.bin").unwrap() == patched);
    assert_eq!(
        std::fs::metadata(m.join("video.bin")).unwrap().len(),
        data.len() as u64
    );
    // Nothing is left staged once files are released (the kernel sends RELEASE after close
    // returns, so give it a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let staged = std::fs::read_dir(m.cache.join("staging")).unwrap().count();
        if staged == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{staged} staging files left after release"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_refused_upload_fails_close_and_keeps_the_bytes() {
    let b = Bucket::new_shared("refused-upload");
    b.put("readme.txt", "read me");
    let (id, secret) = extra_key(&b.name, &["--read"]);
    let creds = [
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ];
    let m = Mount::new_with_env(&b.location(""), &[], &creds);
    let data = pattern(300_000, 5);
    let result = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(m.join("report.bin"))?;
        f.write_all(&data)?;
        f.sync_all()
    })();
    let err = result.expect_err("the upload must fail: the key may only read");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    assert_eq!(b.get("report.bin"), None);
    let recovered = m.recovered();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    // Other tests' processes closing copies of the descriptor can flush (and fail) early, so
    // recovery holds what was written before the error: all of it, or a prefix.
    let kept = std::fs::read(&recovered[0]).unwrap();
    assert!(data.starts_with(&kept), "recovery holds the written bytes");
    // `pailfs status --json` names the kept file (the program's descriptor is closed by now,
    // so a child process is harmless here).
    let out = pailfs()
        .args(["status", "--json"])
        .arg(&m.path)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let listed = status["recovered"][0]["path"].as_str().unwrap_or_default();
    assert!(
        listed.ends_with("report.bin") && recovered[0].ends_with(listed),
        "{status}"
    );
    let log = m.log_text();
    assert!(
        log.contains("upload failed") && log.contains("report.bin"),
        "{log}"
    );
    assert!(
        log.contains("needs s3:PutObject"),
        "names the missing permission: {log}"
    );
    // Deleting is refused the same way, naming its permission.
    assert_eq!(
        std::fs::remove_file(m.join("readme.txt"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
    assert!(m.log_text().contains("needs s3:DeleteObject"));
    assert_eq!(b.get("readme.txt").as_deref(), Some(&b"read me"[..]));
}

#[test]
fn a_full_bucket_quota_fails_close_with_edquot_and_keeps_the_bytes() {
    let b = Bucket::new_shared("quota");
    common::garage_cli(&["bucket", "set-quotas", "--max-size", "1MiB", &b.name]);
    let m = Mount::new(&b.location(""), &[]);
    let data = pattern(3 << 20, 8);
    let mut f = std::fs::File::create(m.join("too-big.bin")).unwrap();
    std::io::Write::write_all(&mut f, &data).unwrap();
    let err = f.sync_all().expect_err("the bucket cannot take 3 MiB");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    drop(f);
    assert_eq!(b.get("too-big.bin"), None);
    let recovered = m.recovered();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(std::fs::read(&recovered[0]).unwrap() == data);
    let log = m.log_text();
    assert!(log.contains("quota"), "the log says why: {log}");
}

#[test]
fn read_only_mount_refuses_changes_without_sending_anything() {
    let b = Bucket::new("read-only");
    b.put("f.txt", "data");
    let m = Mount::new(&b.location(""), &["--read-only"]);
    assert_eq!(std::fs::read_to_string(m.join("f.txt")).unwrap(), "data");
    // The kernel looks a name up before it asks to create it; those lookups are reads.
    assert_eq!(errno_of(std::fs::metadata(m.join("new.txt"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::metadata(m.join("newdir"))), libc::ENOENT);
    let before = m.requests();
    assert_eq!(
        errno_of(std::fs::write(m.join("new.txt"), "x")),
        libc::EROFS
    );
    assert_eq!(errno_of(std::fs::create_dir(m.join("newdir"))), libc::EROFS);
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .append(true)
                .open(m.join("f.txt"))
        ),
        libc::EROFS
    );
    assert_eq!(errno_of(std::fs::remove_file(m.join("f.txt"))), libc::EROFS);
    let after = m.requests();
    assert_eq!(before, after, "refusals sent no request");
}

#[test]
fn an_object_changed_while_open_fails_with_eio() {
    let b = Bucket::new("changed");
    b.put("v.bin", pattern(16 * 1024 * 1024, 3));
    let m = Mount::new(&b.location(""), &[]);
    let f = std::fs::File::open(m.join("v.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    b.put("v.bin", pattern(16 * 1024 * 1024, 4));
    let err = f.read_exact_at(&mut buf, 12 * 1024 * 1024).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // A new open sees the new version whole.
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = std::fs::read(m.join("v.bin")).unwrap();
    assert!(fresh == pattern(16 * 1024 * 1024, 4));
}

#[test]
fn changes_made_elsewhere_appear_after_the_metadata_ttl() {
    let b = Bucket::new("visibility");
    b.put("old.txt", "old");
    let m = Mount::new(&b.location(""), &["--metadata-ttl", "1s"]);
    assert_eq!(names(&m.path), set(&["old.txt"]));
    assert_eq!(errno_of(std::fs::metadata(m.join("new.txt"))), libc::ENOENT);
    b.put("new.txt", "new");
    b.delete("old.txt");
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(names(&m.path), set(&["new.txt"]));
    assert_eq!(std::fs::read_to_string(m.join("new.txt")).unwrap(), "new");
    assert_eq!(errno_of(std::fs::metadata(m.join("old.txt"))), libc::ENOENT);
}

#[test]
fn an_open_reads_a_new_version_whole_while_names_are_still_trusted() {
    // The kernel keeps attributes for --metadata-ttl (1 min), but an open finds a version
    // changed elsewhere within --content-ttl and must not be cut at (or padded to) the size
    // the kernel remembers.
    let b = Bucket::new("reopen");
    b.put("note.txt", "short");
    let m = Mount::new(&b.location(""), &[]);
    assert_eq!(std::fs::metadata(m.join("note.txt")).unwrap().len(), 5);
    assert_eq!(
        std::fs::read_to_string(m.join("note.txt")).unwrap(),
        "short"
    );
    for text in ["a much longer text than before", "tiny"] {
        b.put("note.txt", text);
        std::thread::sleep(Duration::from_millis(1300));
        assert_eq!(std::fs::read_to_string(m.join("note.txt")).unwrap(), text);
        assert_eq!(
            std::fs::metadata(m.join("note.txt")).unwrap().len(),
            text.len() as u64,
            "stat after the open shows what the open found"
        );
    }
}

fn mount_error(location: &str, extra: &[&str]) -> String {
    let (m, out) = Mount::try_new(location, extra);
    assert!(!out.status.success(), "mount of {location} should fail");
    assert!(!is_mounted(&m.path));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn start_up_failures_say_what_is_wrong() {
    let b = Bucket::new("startup");
    let e = mount_error("s3://no-such-bucket-here", &[]);
    assert!(e.contains("does not exist"), "{e}");
    let e = mount_error(&b.location(""), &["--region", "us-west-2"]);
    assert!(
        e.contains("wrong region") && e.contains("--region garage"),
        "{e}"
    );
    let e = mount_error("s3://Bad_Bucket", &[]);
    assert!(e.contains("invalid bucket name"), "{e}");
    let (m, out) = {
        let dir = tempfile::tempdir().unwrap();
        let out = pailfs()
            .args(["mount", "s3://files.example.org/backups/x"])
            .arg(dir.path())
            .output()
            .unwrap();
        (dir, out)
    };
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("ambiguous") && e.contains("bucket 'backups'"),
        "{e}"
    );
    drop(m);
    let e = mount_error(&b.location(""), &["--endpoint-url", "http://127.0.0.1:1"]);
    assert!(e.contains("cannot reach http://127.0.0.1:1"), "{e}");
    let tls = garage().endpoint.replace("http://", "https://");
    let e = mount_error(&b.location(""), &["--endpoint-url", &tls]);
    assert!(e.contains("TLS failure"), "{e}");
    let out = pailfs()
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        )
        .args([
            "mount",
            &b.location(""),
            "/tmp",
            "--allow-non-empty",
            "--endpoint-url",
            &garage().endpoint,
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("secret key does not belong"), "{e}");
}

#[test]
fn mountpoint_problems_are_refused_clearly() {
    let b = Bucket::new("mountpoint");
    b.put("f", "1");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let run = |mp: &Path, extra: &[&str]| {
        let out = pailfs()
            .args(["mount", &b.location("")])
            .arg(mp)
            .args(["--endpoint-url", &garage().endpoint])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, e) = run(&missing, &[]);
    assert!(
        !ok && e.contains("does not exist") && e.contains("mkdir -p"),
        "{e}"
    );
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let (ok, e) = run(dir.path(), &[]);
    assert!(!ok && e.contains("not empty"), "{e}");
    let m = Mount::new(&b.location(""), &[]);
    let (ok, e) = run(&m.path, &[]);
    assert!(!ok && e.contains("already in use"), "{e}");
}

#[test]
fn o_options_carry_every_flag_and_unknown_ones_are_named() {
    let b = Bucket::new("o-options");
    b.put("f.txt", "data");
    let ttl = "-ometadata_ttl=2s,ro,_netdev,file_mode=600".to_string();
    let m = Mount::new(&b.location(""), &[&ttl]);
    assert_eq!(
        std::fs::metadata(m.join("f.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(errno_of(std::fs::write(m.join("x"), "x")), libc::EROFS);
    drop(m);
    let e = mount_error(&b.location(""), &["-o", "ro,colour=blue"]);
    assert!(e.contains("unknown option") && e.contains("colour"), "{e}");
}

#[test]
fn credentials_file_must_be_private_and_secrets_stay_out_of_logs_and_ps() {
    let b = Bucket::new("creds");
    b.put("f.txt", "data");
    let g = garage();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            g.key_id, g.secret
        ),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mount = |extra: &[&str]| {
        pailfs()
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .args(["mount", &b.location("")])
            .arg(&mp)
            .args(["--endpoint-url", &g.endpoint, "--debug"])
            .arg(format!("--credentials-file={}", creds.display()))
            .arg(format!("--log-file={}", dir.path().join("log").display()))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = mount(&[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = mount(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(mp.join("f.txt")).unwrap(), "data");
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("pailfs mount"), "the daemon shows in ps");
    assert!(
        !ps.contains(&g.secret),
        "the secret is not in the process list"
    );
    let _ = Command::new("fusermount3").arg("-u").arg(&mp).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_mounted(&mp) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains(&g.secret), "the secret is not in the log");
}

#[test]
fn sigterm_finishes_uploads_then_unmounts_a_foreground_mount_cleanly() {
    let b = Bucket::new("sigterm");
    b.put("f.txt", "data");
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        pailfs()
            .args(["mount", &b.location("")])
            .arg(dir.path())
            .args(["--endpoint-url", &garage().endpoint, "--foreground"])
            .arg("--cache-dir")
            .arg(cache.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_mounted(dir.path()) {
        assert!(Instant::now() < deadline, "foreground mount never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f.txt")).unwrap(),
        "data"
    );
    // A program is in the middle of writing a file when the service is stopped.
    let data = pattern(21 << 20, 8);
    let mut open = std::fs::File::create(dir.path().join("copying.bin")).unwrap();
    std::io::Write::write_all(&mut open, &data).unwrap();
    // `pailfs status` shows it with a progress bar until it is in the bucket. (Asked through
    // the library, not a child process: a fork would close a copy of the open descriptor,
    // which flushes the file.)
    let status = pailfs::status::render(&common::query_status(dir.path()).unwrap());
    assert!(
        status.contains("uploading  [") && status.contains("copying.bin"),
        "{status}"
    );
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!is_mounted(dir.path()));
    assert_eq!(
        b.get("copying.bin").map(|d| d.len()),
        Some(data.len()),
        "the file written so far is in the bucket"
    );
    assert!(b.get("copying.bin").unwrap() == data);
    drop(open);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("unmounting"), "{err}");
}

#[test]
fn async_write_back_uploads_after_close_and_unmount_waits_for_it() {
    let b = Bucket::new("async-write");
    let m = Mount::new(&b.location(""), &["--write-back", "async"]);
    let big = pattern(21 << 20, 3);
    std::fs::write(m.join("big.bin"), &big).unwrap();
    for i in 0..20 {
        std::fs::write(m.join(&format!("small-{i}.txt")), format!("file {i}")).unwrap();
    }
    let log = m.log.clone();
    m.unmount();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("unmounted")
    {
        assert!(Instant::now() < deadline, "daemon did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.get("big.bin").unwrap() == big, "the big file is complete");
    for i in 0..20 {
        assert_eq!(
            b.get(&format!("small-{i}.txt")).as_deref(),
            Some(format!("file {i}").as_bytes())
        );
    }
}

#[test]
fn unmount_ends_the_daemon() {
    let b = Bucket::new("unmount");
    let m = Mount::new(&b.location(""), &[]);
    // The mount is typed fuse.pailfs (as s3fs's is fuse.s3fs), with the location as source.
    let listed = Command::new("findmnt")
        .args([
            "-n",
            "-o",
            "FSTYPE,SOURCE",
            "-t",
            "fuse.pailfs",
            "--mountpoint",
        ])
        .arg(&m.path)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        vec!["fuse.pailfs", &format!("s3://{}/", b.name)],
        "{listed}"
    );
    let log = m.log.clone();
    m.unmount();
    assert!(!is_mounted(&m.path));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("unmounted") {
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not finish: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_panic_in_one_request_answers_eio_and_the_mount_stays_up() {
    let b = Bucket::new("panic");
    b.put("fine.txt", "still here");
    let m = Mount::new_with_env(
        &b.location(""),
        &[],
        &[("PAILFS_DEBUG_PANIC_ON_LOOKUP", "boom")],
    );
    assert_eq!(errno_of(std::fs::metadata(m.join("boom"))), libc::EIO);
    assert_eq!(
        std::fs::read_to_string(m.join("fine.txt")).unwrap(),
        "still here"
    );
    assert_eq!(names(&m.path), set(&["fine.txt"]));
    assert!(
        m.log_text().contains("request panicked"),
        "{}",
        m.log_text()
    );
}

#[test]
fn a_read_only_key_mounts_and_reads_and_a_key_without_rights_is_told_why() {
    let b = Bucket::new_shared("least-privilege");
    b.put("doc.txt", "readable");
    let (id, secret) = extra_key(&b.name, &["--read"]);
    let creds = [
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ];
    let m = Mount::new_with_env(&b.location(""), &[], &creds);
    assert_eq!(
        std::fs::read_to_string(m.join("doc.txt")).unwrap(),
        "readable"
    );
    drop(m);
    let (id, secret) = extra_key(&b.name, &[]);
    let creds = [
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ];
    let (m, out) = Mount::try_new_with_env(&b.location(""), &[], &creds);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !is_mounted(&m.path));
    assert!(
        e.contains("access denied") && e.contains("s3:ListBucket"),
        "{e}"
    );
}

#[test]
fn tls_with_a_private_ca_needs_the_ca_bundle() {
    let b = Bucket::new("tls");
    b.put("secret-plans.txt", "over TLS");
    let tls = common::TlsFront::start();
    let e = mount_error(&b.location(""), &["--endpoint-url", &tls.endpoint]);
    assert!(
        e.contains("TLS failure") && e.contains("--ca-bundle"),
        "{e}"
    );
    let ca = format!("--ca-bundle={}", tls.ca.display());
    let m = Mount::new(&b.location(""), &["--endpoint-url", &tls.endpoint, &ca]);
    assert_eq!(
        std::fs::read_to_string(m.join("secret-plans.txt")).unwrap(),
        "over TLS"
    );
    drop(m);
    let ca_env = tls.ca.display().to_string();
    let m = Mount::new_with_env(
        &b.location(""),
        &["--endpoint-url", &tls.endpoint],
        &[("AWS_CA_BUNDLE", &ca_env)],
    );
    assert_eq!(
        std::fs::read_to_string(m.join("secret-plans.txt")).unwrap(),
        "over TLS"
    );
    let e = mount_error(
        &b.location(""),
        &[
            "--endpoint-url",
            &tls.endpoint,
            "--ca-bundle=/nonexistent.pem",
        ],
    );
    assert!(
        e.contains("cannot read the CA bundle /nonexistent.pem"),
        "{e}"
    );
}

#[test]
fn random_operations_match_a_local_file() {
    use std::io::{Seek, SeekFrom, Write};
    let b = Bucket::new("model");
    let m = Mount::new(&b.location(""), &[]);
    let local_dir = tempfile::tempdir().unwrap();
    let local = local_dir.path().join("model.bin");
    let remote = m.join("model.bin");
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap()
    };
    let (mut lf, mut rf) = (open(&local), open(&remote));
    for step in 0..150u32 {
        match next(10) {
            0 => {
                let size = next(3 * 1024 * 1024);
                lf.set_len(size).unwrap();
                rf.set_len(size).unwrap();
            }
            1 => {
                // close (upload) and reopen
                drop((lf, rf));
                assert!(
                    b.get("model.bin").unwrap() == std::fs::read(&local).unwrap(),
                    "step {step}: bucket differs after close"
                );
                lf = open(&local);
                rf = open(&remote);
            }
            2 | 3 => {
                let off = next(3 * 1024 * 1024);
                let len = 1 + next(64 * 1024) as usize;
                let mut a = vec![0u8; len];
                let mut r = vec![0u8; len];
                let na = lf.read_at(&mut a, off).unwrap();
                let nr = rf.read_at(&mut r, off).unwrap();
                assert_eq!(na, nr, "step {step}: read length at {off}");
                assert!(a[..na] == r[..nr], "step {step}: read content at {off}");
            }
            _ => {
                let off = next(3 * 1024 * 1024);
                let data = pattern(1 + next(256 * 1024) as usize, step as u64);
                lf.seek(SeekFrom::Start(off)).unwrap();
                lf.write_all(&data).unwrap();
                rf.seek(SeekFrom::Start(off)).unwrap();
                rf.write_all(&data).unwrap();
            }
        }
        assert_eq!(
            lf.metadata().unwrap().len(),
            rf.metadata().unwrap().len(),
            "step {step}: size"
        );
    }
    rf.sync_all().unwrap();
    drop((lf, rf));
    assert!(
        b.get("model.bin").unwrap() == std::fs::read(&local).unwrap(),
        "final bucket content differs"
    );
}

#[test]
fn close_against_a_stopped_server_fails_and_keeps_the_bytes() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let own = tempfile::tempdir().unwrap();
    let gdir = own.path().join("garage");
    common::run_ok(
        Command::new(repo.join("scripts/garage.sh"))
            .arg("start")
            .arg(&gdir)
            .arg("--watch-pid")
            .arg(std::process::id().to_string()),
    );
    let env = std::fs::read_to_string(gdir.join("env")).unwrap();
    let get = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap()
            .to_string()
    };
    let garage_bin = std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".local/share/pailfs-tools/garage-2.5.0/bin/garage");
    let cli = |args: &[&str]| {
        common::run_ok(
            Command::new(&garage_bin)
                .arg("-c")
                .arg(gdir.join("garage.toml"))
                .args(args),
        );
    };
    cli(&["bucket", "create", "doomed"]);
    cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        "doomed",
        "--key",
        "pailfs-test",
    ]);
    let (endpoint, id, secret) = (
        get("PAILFS_S3_ENDPOINT"),
        get("AWS_ACCESS_KEY_ID"),
        get("AWS_SECRET_ACCESS_KEY"),
    );
    let m = Mount::new_with_env(
        "s3://doomed/",
        &["--endpoint-url", &endpoint],
        &[
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ],
    );
    let data = pattern(12 * 1024 * 1024, 21);
    // Created while the server is up (the kernel looks the name up first). Note that starting
    // any process closes a copy of this descriptor, which flushes (uploads) the file: so the
    // bytes are written only after the server is gone.
    let mut f = std::fs::File::create(m.join("thesis.pdf")).unwrap();
    common::run_ok(
        Command::new(repo.join("scripts/garage.sh"))
            .arg("stop")
            .arg(&gdir),
    );
    // Processes other tests start meanwhile also close copies of this descriptor, so the
    // failing upload (and its error) may come at any write as well as at fsync.
    let written = {
        use std::io::Write;
        f.write_all(&data)
    };
    let synced = f.sync_all();
    let err = written
        .err()
        .or(synced.err())
        .expect("the server is gone: a write or fsync must fail");
    assert!(
        [libc::EHOSTUNREACH, libc::EIO, libc::ETIMEDOUT].contains(&err.raw_os_error().unwrap_or(0)),
        "{err}"
    );
    drop(f);
    let recovered = m.recovered();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let kept = std::fs::read(&recovered[0]).unwrap();
    assert!(
        data.starts_with(&kept),
        "recovery holds what was written before the error ({} of {} bytes)",
        kept.len(),
        data.len()
    );
    assert!(m.log_text().contains("thesis.pdf"), "the log names the key");
}

#[test]
fn new_folder_delete_move_and_atomic_save_work() {
    let b = Bucket::new("namespace");
    b.put("docs/a.txt", "A");
    b.put("docs/b.txt", "B");
    b.put("keep/x", "x");
    let m = Mount::new(&b.location(""), &[]);
    // New folder: a marker keeps it while empty; rmdir removes it.
    std::fs::create_dir(m.join("empty")).unwrap();
    assert_eq!(b.get("empty/").as_deref(), Some(&b""[..]));
    assert!(std::fs::metadata(m.join("empty")).unwrap().is_dir());
    assert_eq!(errno_of(std::fs::create_dir(m.join("empty"))), libc::EEXIST);
    assert_eq!(
        errno_of(std::fs::remove_dir(m.join("keep"))),
        libc::ENOTEMPTY
    );
    std::fs::remove_dir(m.join("empty")).unwrap();
    assert_eq!(b.get("empty/"), None);
    assert_eq!(errno_of(std::fs::metadata(m.join("empty"))), libc::ENOENT);
    // Delete.
    std::fs::remove_file(m.join("docs/b.txt")).unwrap();
    assert_eq!(b.get("docs/b.txt"), None);
    assert_eq!(names(&m.join("docs")), set(&["a.txt"]));
    // Move a file across directories; move over an existing file replaces it.
    std::fs::rename(m.join("docs/a.txt"), m.join("keep/a-moved.txt")).unwrap();
    assert_eq!(b.get("docs/a.txt"), None);
    assert_eq!(b.get("keep/a-moved.txt").as_deref(), Some(&b"A"[..]));
    assert_eq!(
        std::fs::read_to_string(m.join("keep/a-moved.txt")).unwrap(),
        "A"
    );
    std::fs::rename(m.join("keep/a-moved.txt"), m.join("keep/x")).unwrap();
    assert_eq!(b.get("keep/x").as_deref(), Some(&b"A"[..]));
    // An editor's atomic save: write a temporary file, rename it over the original.
    std::fs::write(m.join("keep/.x.swp"), "edited").unwrap();
    std::fs::rename(m.join("keep/.x.swp"), m.join("keep/x")).unwrap();
    assert_eq!(b.get("keep/x").as_deref(), Some(&b"edited"[..]));
    assert_eq!(std::fs::read_to_string(m.join("keep/x")).unwrap(), "edited");
    assert_eq!(names(&m.join("keep")), set(&["x"]));
    // mv -n: no replacing (RENAME_NOREPLACE through renameat2).
    std::fs::write(m.join("keep/y"), "y").unwrap();
    let out = Command::new("mv")
        .args(["--no-clobber"])
        .arg(m.join("keep/y"))
        .arg(m.join("keep/x"))
        .output()
        .unwrap();
    assert!(out.status.success() || !out.stderr.is_empty());
    assert_eq!(
        b.get("keep/x").as_deref(),
        Some(&b"edited"[..]),
        "not replaced"
    );
    // A folder rename moves the whole tree, even one never looked into.
    std::fs::create_dir(m.join("d1")).unwrap();
    std::fs::create_dir(m.join("d1/inner")).unwrap();
    std::fs::write(m.join("d1/inner/deep.txt"), "deep").unwrap();
    b.put("d1/other.txt", "from elsewhere");
    std::fs::rename(m.join("d1"), m.join("d2")).unwrap();
    assert_eq!(errno_of(std::fs::metadata(m.join("d1"))), libc::ENOENT);
    assert_eq!(
        std::fs::read_to_string(m.join("d2/inner/deep.txt")).unwrap(),
        "deep"
    );
    assert_eq!(
        b.get("d2/other.txt").as_deref(),
        Some(&b"from elsewhere"[..])
    );
    assert_eq!(b.get("d1/other.txt"), None);
    assert_eq!(
        b.get("d2/inner/").as_deref(),
        Some(&b""[..]),
        "markers move too"
    );
    // Onto a non-empty folder: refused, nothing moved.
    std::fs::create_dir(m.join("d3")).unwrap();
    assert_eq!(
        errno_of(std::fs::rename(m.join("d3"), m.join("d2"))),
        libc::ENOTEMPTY
    );
    // What S3 cannot hold: a clear errno.
    assert_eq!(
        errno_of(std::fs::hard_link(
            m.join("d2/other.txt"),
            m.join("d2/hard")
        )),
        libc::EPERM
    );
    // A fifo S3 holds as s3fs does (tests/metadata.rs has the rest).
    let fifo = std::ffi::CString::new(m.join("d2/fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert_eq!(b.get("d2/fifo").as_deref(), Some(&b""[..]));
}
