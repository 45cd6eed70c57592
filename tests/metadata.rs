//! Attributes, symlinks, special files (fifos, sockets, device nodes) and xattrs through the
//! kernel, and compatibility with s3fs: a tree written by either tool reads back identically
//! in the other, and after a remount.

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
    s3fs.unmount();
    // What s3fs reads back from the bucket, not its own stat cache: once in a few hundred
    // runs, the writing mount still showed 0644 just after its chmod to 0640.
    let mut s3fs = S3fs::mount(&b.name);
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

/// What `stat` says of a special file: its type letter (as `ls -l` shows it), mode, owner
/// and device number.
type SpecialSeen = (char, u32, u32, u32, u64);

fn special_seen(path: &Path) -> SpecialSeen {
    use std::os::unix::fs::FileTypeExt;
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let t = m.file_type();
    let letter = if t.is_fifo() {
        'p'
    } else if t.is_socket() {
        's'
    } else if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else {
        '-'
    };
    (letter, m.mode() & 0o7777, m.uid(), m.gid(), m.rdev())
}

/// Makes a node with mknod(2) (what mkfifo, mknod and tar call), owned by `uid`.
fn make_node(path: &Path, kind: libc::mode_t, perm: libc::mode_t, dev: libc::dev_t, uid: u32) {
    let rc = unsafe { libc::mknod(cstr(path).as_ptr(), kind | perm, dev) };
    assert_eq!(rc, 0, "mknod {path:?}: {}", std::io::Error::last_os_error());
    std::os::unix::fs::lchown(path, Some(uid), Some(uid + 1)).unwrap();
}

/// One node of each special type, as `make_special_nodes` makes them.
const SPECIAL_NODES: [(&str, libc::mode_t, u32); 4] = [
    ("pipe", libc::S_IFIFO, 0o640),
    ("agent.sock", libc::S_IFSOCK, 0o600),
    ("null", libc::S_IFCHR, 0o644),
    ("sda1", libc::S_IFBLK, 0o604),
];

fn make_special_nodes(root: &Path) {
    for (i, (name, kind, perm)) in SPECIAL_NODES.iter().enumerate() {
        let dev = if *kind == libc::S_IFCHR || *kind == libc::S_IFBLK {
            libc::makedev(8, i as u32)
        } else {
            0
        };
        make_node(&root.join(name), *kind, *perm, dev, 2000 + i as u32);
    }
}

/// The special nodes of `root`, each as `special_seen` shows it, listed first.
fn special_nodes(root: &Path) -> Vec<(String, SpecialSeen)> {
    let listed: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    SPECIAL_NODES
        .iter()
        .map(|(name, _, _)| {
            assert!(listed.contains(&name.to_string()), "{name} in {listed:?}");
            (name.to_string(), special_seen(&root.join(name)))
        })
        .collect()
}

/// The device numbers dropped, as s3fs keeps none.
fn without_devices(nodes: &[(String, SpecialSeen)]) -> Vec<(String, char, u32, u32)> {
    nodes
        .iter()
        .map(|(n, (t, perm, uid, _, _))| (n.clone(), *t, *perm, *uid))
        .collect()
}

#[test]
fn special_nodes_keep_type_mode_owner_and_device_across_remounts_and_with_s3fs() {
    let b = Bucket::new("special-nodes");
    let m = Mount::new(&b.location(""), &[]);
    make_special_nodes(&m.path);
    let by_pailfs = special_nodes(&m.path);
    assert_eq!(by_pailfs[0].1 .0, 'p');
    assert_eq!(
        by_pailfs[2].1,
        ('c', 0o644, 2002, 2003, libc::makedev(8, 2))
    );
    assert_eq!(
        by_pailfs[3].1,
        ('b', 0o604, 2003, 2004, libc::makedev(8, 3))
    );
    // chmod and a rename keep the type.
    std::fs::set_permissions(m.join("pipe"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::rename(m.join("null"), m.join("null2")).unwrap();
    assert_eq!(special_seen(&m.join("null2")).0, 'c');
    std::fs::rename(m.join("null2"), m.join("null")).unwrap();
    let by_pailfs = special_nodes(&m.path);
    assert_eq!(by_pailfs[0].1 .1, 0o604);
    m.unmount();
    drop(m);
    let again = Mount::new(&b.location(""), &[]);
    assert_eq!(special_nodes(&again.path), by_pailfs, "after a remount");
    again.unmount();
    drop(again);
    let mut s3fs = S3fs::mount(&b.name);
    assert_eq!(
        without_devices(&special_nodes(&s3fs.path)),
        without_devices(&by_pailfs),
        "as s3fs reads them"
    );
    // And the other way: nodes s3fs makes, read by pailfs (with no device number: s3fs keeps
    // none).
    let theirs = s3fs.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    make_special_nodes(&theirs);
    let by_s3fs = special_nodes(&theirs);
    s3fs.unmount();
    let m = Mount::new(&b.location(""), &[]);
    let seen = special_nodes(&m.join("theirs"));
    assert_eq!(without_devices(&seen), without_devices(&by_s3fs));
    // Unlinked, each one is gone from the bucket.
    for (name, _, _) in SPECIAL_NODES {
        std::fs::remove_file(m.join(&format!("theirs/{name}"))).unwrap();
        assert_eq!(b.get(&format!("theirs/{name}")), None, "{name}");
    }
    std::fs::remove_dir(m.join("theirs")).unwrap();
}

#[test]
fn a_fifo_in_the_mount_carries_data_between_two_processes() {
    let b = Bucket::new("fifo");
    let m = Mount::new(&b.location(""), &[]);
    let fifo = m.join("queue");
    let out = Command::new("mkfifo").arg(&fifo).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(special_seen(&fifo).0, 'p');
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    std::fs::write(&fifo, "through the pipe\n").unwrap();
    assert_eq!(reader.join().unwrap(), "through the pipe\n");
    // The bytes went through the kernel's pipe, not the bucket.
    assert_eq!(b.get("queue").as_deref(), Some(&b""[..]));
    let ls = Command::new("ls").arg("-l").arg(&m.path).output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
    assert!(
        ls.lines()
            .any(|l| l.starts_with('p') && l.ends_with(" queue")),
        "{ls}"
    );
    // A read-only mount refuses to make one.
    m.unmount();
    drop(m);
    let ro = Mount::new(&b.location(""), &["--read-only"]);
    let out = Command::new("mkfifo")
        .arg(ro.join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    assert_eq!(special_seen(&ro.join("queue")).0, 'p', "still a fifo");
}

#[test]
fn a_unix_socket_binds_and_connects_inside_the_mount() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let b = Bucket::new("socket");
    let m = Mount::new(&b.location(""), &[]);
    std::fs::create_dir(m.join("run")).unwrap();
    let path = m.join("run/agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut asked = [0u8; 4];
        conn.read_exact(&mut asked).unwrap();
        conn.write_all(b"pong").unwrap();
        asked
    });
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"ping").unwrap();
    let mut answer = [0u8; 4];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"pong");
    assert_eq!(&server.join().unwrap(), b"ping");
    assert_eq!(special_seen(&path).0, 's');
    let mode: u32 = {
        let out = Command::new("stat")
            .args(["-c", "%f"])
            .arg(&path)
            .output()
            .unwrap();
        u32::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 16).unwrap()
    };
    assert_eq!(mode & libc::S_IFMT, libc::S_IFSOCK);
    // A daemon removes its socket when it stops; the folder is then empty again.
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_dir(m.join("run")).unwrap();
    assert_eq!(b.get("run/agent.sock"), None);
}

#[test]
fn tar_extracts_an_archive_holding_a_fifo_and_a_device_node() {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("data.txt"), "data").unwrap();
    make_node(&src.join("fifo"), libc::S_IFIFO, 0o644, 0, 3000);
    make_node(
        &src.join("tty0"),
        libc::S_IFCHR,
        0o620,
        libc::makedev(4, 0),
        3001,
    );
    let archive = local.path().join("tree.tar");
    let out = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(local.path())
        .arg("tree")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let b = Bucket::new("tar-special");
    let m = Mount::new(&b.location(""), &[]);
    let out = Command::new("tar")
        .arg("-xpf")
        .arg(&archive)
        .arg("-C")
        .arg(&m.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for name in ["fifo", "tty0"] {
        assert_eq!(
            special_seen(&m.join(&format!("tree/{name}"))),
            special_seen(&src.join(name)),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(m.join("tree/data.txt")).unwrap(),
        "data"
    );
    m.unmount();
    drop(m);
    let again = Mount::new(&b.location(""), &[]);
    assert_eq!(
        special_seen(&again.join("tree/tty0")),
        special_seen(&src.join("tty0")),
        "after a remount"
    );
}

fn chrono_free_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
