//! Directories through the kernel against Garage, with the daemon's request counters: a tree
//! walk after a listing costs the listing, and creating a tree costs a PUT per file.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Bucket, Mount, Requests};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn delta(before: Requests, after: Requests) -> Requests {
    Requests {
        head: after.head - before.head,
        list: after.list - before.list,
        get: after.get - before.get,
        part_copy: after.part_copy - before.part_copy,
        put: after.put - before.put,
        copy: after.copy - before.copy,
        bytes_read: after.bytes_read - before.bytes_read,
        bytes_written: after.bytes_written - before.bytes_written,
    }
}

#[test]
fn du_and_find_of_a_large_folder_cost_its_listing() {
    let b = Bucket::new("du-walk");
    let keys: Vec<String> = (0..10_000).map(|i| format!("big/f{i:05}")).collect();
    b.put_many(keys, &[7u8; 100]);
    let m = Mount::new(&b.location(""), &[]);
    let before = m.requests();
    let du = run(Command::new("du")
        .arg("-s")
        .arg("--apparent-size")
        .arg("-B1")
        .arg(m.join("big")));
    let size: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert!(size >= 10_000 * 100, "{du}");
    let after_du = m.requests();
    let cost = delta(before, after_du);
    // 10 pages of 1,000, each with a sample of 8 HEADs (the objects carry no metadata),
    // and the lookups of "big" in the unlisted root (by du and the kernel, a HEAD and a LIST
    // each): not a request per entry.
    assert!(cost.list <= 10 + 4, "{cost:?}");
    assert!(cost.head <= 10 * 8 + 4, "{cost:?}");
    // find after it, within --metadata-ttl: answered from the snapshot.
    let out = Command::new("find")
        .arg(m.join("big"))
        .args(["-type", "f", "-size", "-2k"])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        found.lines().count(),
        10_000,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cost = delta(after_du, m.requests());
    assert!(
        cost.head == 0 && cost.list <= 10 + 1,
        "find lists again, at listing cost, and stats nothing: {cost:?}"
    );
}

#[test]
fn names_past_max_inodes_are_handed_back_except_open_files() {
    let b = Bucket::new("names");
    let keys: Vec<String> = (0..3_000).map(|i| format!("big/f{i:04}")).collect();
    b.put_many(keys, b"12345");
    let m = Mount::new(&b.location(""), &["--max-inodes", "500"]);
    // The oldest name the kernel learns, open all along: never handed back.
    let mut first = std::fs::File::open(m.join("big/f0000")).unwrap();
    let mut walked = 0;
    for entry in std::fs::read_dir(m.join("big")).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.metadata().unwrap().len(), 5);
        walked += 1;
    }
    assert_eq!(walked, 3_000);
    let names = || -> u64 { m.status_field("kernel_names").parse().unwrap() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while names() > 600 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        names() <= 600,
        "the kernel was asked to forget the oldest files: {} names held",
        names()
    );
    // The open file is intact, still linked, and reads; every name still answers.
    let mut text = String::new();
    std::io::Read::read_to_string(&mut first, &mut text).unwrap();
    assert_eq!(text, "12345");
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&first.metadata().unwrap()),
        1
    );
    for i in (0..3_000).step_by(97) {
        assert_eq!(
            std::fs::read(m.join(&format!("big/f{i:04}"))).unwrap(),
            b"12345"
        );
    }
}

fn mtime_of(m: &Mount, rel: &str) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(m.join(rel)).unwrap().mtime()
}

/// A source tree like a small project: folders of small files (dated 2001).
fn make_tree(root: &Path) -> usize {
    let mut files = 0;
    for d in 0..5 {
        let dir = root.join(format!("tree/mod{d}/sub"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..12 {
            let file = dir.join(format!("file{f}.rs"));
            std::fs::write(&file, format!("// {d} {f}\n")).unwrap();
            run(Command::new("touch").arg("-d").arg("@978307200").arg(&file));
            files += 1;
        }
    }
    files
}

fn untar_into(m: &Mount, extra_wait: bool) -> (usize, Requests) {
    let src = tempfile::tempdir().unwrap();
    let files = make_tree(src.path());
    let tarball = src.path().join("tree.tar");
    run(Command::new("tar")
        .arg("cf")
        .arg(&tarball)
        .arg("-C")
        .arg(src.path())
        .arg("tree"));
    let before = m.requests();
    run(Command::new("tar")
        .arg("xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&m.path));
    if extra_wait {
        let deadline = Instant::now() + Duration::from_secs(30);
        while m.requests().put - before.put < files as u64 + 11 {
            assert!(Instant::now() < deadline, "async uploads did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    (files, delta(before, m.requests()))
}

/// A PUT per file and per folder marker, and one per folder for each attribute change tar
/// makes once it filled it (mode and mtime; owner too when run as root); no per-file
/// look-ups, and no copies (a file's mtime, set before its upload, goes up with it).
fn assert_costs_a_put_per_file_and_folder(files: usize, cost: Requests) {
    let folders = 1 + 5 + 5;
    assert!(
        cost.put >= (files + folders) as u64 && cost.put <= (files + 4 * folders) as u64,
        "{cost:?}"
    );
    // Only the top folder's name is looked up in the (unlisted) mount root, by tar and the
    // kernel: a HEAD and a LIST each time, never per file.
    assert!(cost.head + cost.list <= 6, "no per-file lookups: {cost:?}");
    assert_eq!(cost.copy, 0, "{cost:?}");
}

#[test]
fn tar_x_of_a_tree_costs_a_put_per_file_and_folder() {
    let b = Bucket::new("tar-x");
    let m = Mount::new(&b.location(""), &[]);
    let (files, cost) = untar_into(&m, false);
    assert_costs_a_put_per_file_and_folder(files, cost);
    assert_eq!(
        b.get("tree/mod3/sub/file7.rs").as_deref(),
        Some(&b"// 3 7\n"[..])
    );
    assert_eq!(mtime_of(&m, "tree/mod3/sub/file7.rs"), 978_307_200);
}

#[test]
fn tar_x_with_async_write_back_costs_about_one_request_per_file() {
    let b = Bucket::new("tar-x-async");
    let m = Mount::new(&b.location(""), &["--write-back=async"]);
    let (files, cost) = untar_into(&m, true);
    assert_costs_a_put_per_file_and_folder(files, cost);
    assert_eq!(
        mtime_of(&m, "tree/mod1/sub/file3.rs"),
        978_307_200,
        "tar's mtime was kept"
    );
}

#[test]
fn a_tree_walk_sees_every_folder_and_lists_each_once() {
    let b = Bucket::new("walk-ahead");
    let mut keys = Vec::new();
    for d in 0..30 {
        for f in 0..(d % 4 + 1) {
            keys.push(format!("tree/d{d:02}/f{f}"));
        }
    }
    b.put_many(keys.clone(), b"x");
    let m = Mount::new(&b.location(""), &[]);
    let tree = m.join("tree");
    // Known first (a walk starts from a listed folder), then walked twice: `find` lists ahead
    // of itself, and a change made through the mount between the two walks shows.
    run(Command::new("ls").arg(&tree));
    let before = m.requests();
    let found = run(Command::new("find").arg(&tree).args(["-type", "f"]));
    let cost = delta(before, m.requests());
    let mut seen: Vec<String> = found
        .lines()
        .map(|l| {
            l.strip_prefix(&format!("{}/", m.path.display()))
                .unwrap_or(l)
                .to_string()
        })
        .collect();
    seen.sort();
    keys.sort();
    assert_eq!(seen, keys);
    assert_eq!(
        cost.list, 31,
        "one LIST per folder (and tree/), none twice: {cost:?}"
    );
    std::fs::remove_file(tree.join("d07/f0")).unwrap();
    std::fs::write(tree.join("d08/new"), "y").unwrap();
    let ls = run(Command::new("ls").arg("-R").arg(&tree));
    assert!(ls.contains("new"), "{ls}");
    let d07 = ls.split("/d07:").nth(1).unwrap_or("");
    let d07 = d07.split("\n\n").next().unwrap_or("");
    assert!(!d07.contains("f0"), "{d07}");
}
