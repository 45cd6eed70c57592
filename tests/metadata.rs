//! Attributes, symlinks and xattrs through the kernel, and compatibility with s3fs: a tree
//! written by either tool reads back identically in the other, and after a remount.

mod common;

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Bucket, Mount, S3fs};

/// What `stat`, `readlink` and `getfattr` say about one path.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    target: Option<String>,
    color: Option<String>,
}

fn cstr(path: &Path) -> CString {
    CString::new(path.to_str().unwrap()).unwrap()
}

fn get_xattr(path: &Path, name: &str) -> Option<String> {
    let mut buf = vec![0u8; 256];
    let name = CString::new(name).unwrap();
    let n = unsafe {
        libc::lgetxattr(
            cstr(path).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).to_string())
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    let name = CString::new(name).unwrap();
    let rc = unsafe {
        libc::setxattr(
            cstr(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn seen(root: &Path, rel: &str) -> Seen {
    let path = root.join(rel);
    let m = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let kind = if m.file_type().is_symlink() {
        "symlink"
    } else if m.is_dir() {
        "dir"
    } else {
        "file"
    };
    Seen {
        kind,
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        size: if m.is_dir() { 0 } else { m.len() },
        target: std::fs::read_link(&path)
            .ok()
            .map(|t| t.display().to_string()),
        color: if kind == "file" {
            get_xattr(&path, "user.color")
        } else {
            None
        },
    }
}

/// Builds the same small tree with plain system calls and commands, whatever mounts it.
fn build_tree(root: &Path) {
    std::fs::write(root.join("f"), "hello").unwrap();
    std::fs::set_permissions(root.join("f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(root.join("f"), Some(1234), Some(99)).unwrap();
    let out = Command::new("touch")
        .args(["-m", "-d", "2020-01-02 03:04:05 UTC"])
        .arg(root.join("f"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    set_xattr(&root.join("f"), "user.color", "blue");
    std::os::unix::fs::symlink("f", root.join("link")).unwrap();
    std::os::unix::fs::symlink("../elsewhere/x", root.join("dangling")).unwrap();
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::set_permissions(root.join("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(root.join("d/secret"), "s").unwrap();
    std::fs::set_permissions(
        root.join("d/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

const NAMES: [&str; 5] = ["f", "link", "dangling", "d", "d/secret"];

/// Everything about the tree, listed first (so `ls -l`'s path, readdirplus, is what answers).
fn snapshot(root: &Path) -> Vec<(String, Seen)> {
    let listed: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    for name in ["f", "link", "d"] {
        assert!(listed.contains(&name.to_string()), "{name} in {listed:?}");
    }
    NAMES
        .iter()
        .map(|n| (n.to_string(), seen(root, n)))
        .collect()
}

#[test]
fn a_tree_written_by_s3fs_reads_back_identically() {
    let b = Bucket::new("from-s3fs");
    let mut s3fs = S3fs::mount(&b.name);
    build_tree(&s3fs.path);
    let by_s3fs = snapshot(&s3fs.path);
    s3fs.unmount();
    assert_eq!(by_s3fs[0].1.perm, 0o640, "s3fs did what was asked");
    // An object written by a plain S3 client: no metadata at all.
    b.put("plain.txt", "no metadata");
    let m = Mount::new(&b.location(""), &["--xattrs"]);
    assert_eq!(snapshot(&m.path), by_s3fs);
    let plain = seen(&m.path, "plain.txt");
    assert_eq!(
        (plain.kind, plain.perm, plain.uid),
        ("file", 0o644, unsafe { libc::getuid() })
    );
    let age = chrono_free_now() - plain.mtime;
    assert!(
        (0..300).contains(&age),
        "LastModified is the mtime: {age}s old"
    );
    assert_eq!(std::fs::read_to_string(m.join("link")).unwrap(), "hello");
}

#[test]
fn a_tree_written_by_pailfs_reads_back_identically_in_s3fs_and_after_a_remount() {
    let b = Bucket::new("from-pailfs");
    let m = Mount::new(&b.location(""), &["--xattrs"]);
    build_tree(&m.path);
    let by_pailfs = snapshot(&m.path);
    assert_eq!(by_pailfs[0].1.perm, 0o640);
    assert_eq!(by_pailfs[0].1.uid, 1234);
    assert_eq!(by_pailfs[0].1.color.as_deref(), Some("blue"));
    assert_eq!(by_pailfs[1].1.target.as_deref(), Some("f"));
    // Read-only attributes that say where the file lives.
    assert_eq!(get_xattr(&m.join("f"), "user.s3.key").as_deref(), Some("f"));
    assert!(get_xattr(&m.join("f"), "user.s3.etag").is_some());
    m.unmount();
    drop(m);
    let again = Mount::new(&b.location(""), &["--xattrs"]);
    assert_eq!(snapshot(&again.path), by_pailfs, "after a remount");
    again.unmount();
    drop(again);
    let s3fs = S3fs::mount(&b.name);
    assert_eq!(snapshot(&s3fs.path), by_pailfs, "as s3fs reads it");
}

#[test]
fn touch_chmod_and_renames_keep_content_and_metadata() {
    let b = Bucket::new("touch-chmod");
    b.put("docs/report.txt", "report");
    let m = Mount::new(&b.location(""), &[]);
    let f = m.join("docs/report.txt");
    // chmod on an implicit directory gives it a marker carrying the mode.
    std::fs::set_permissions(m.join("docs"), std::fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(b.get("docs/").as_deref(), Some(&b""[..]));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
    let out = Command::new("touch").arg(&f).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let now = chrono_free_now();
    assert!((now - std::fs::metadata(&f).unwrap().mtime()).abs() <= 2);
    std::fs::rename(m.join("docs"), m.join("papers")).unwrap();
    let moved = m.join("papers/report.txt");
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), "report");
    assert_eq!(std::fs::metadata(&moved).unwrap().mode() & 0o7777, 0o400);
    assert_eq!(
        std::fs::metadata(m.join("papers")).unwrap().mode() & 0o7777,
        0o750
    );
    // Xattrs are off by default: the kernel is told once, then stops asking.
    assert_eq!(get_xattr(&moved, "user.anything"), None);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
}

fn chrono_free_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
