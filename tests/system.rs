//! At home on Linux: an fstab line through mount(8) and umount, systemd readiness
//! (`Type=notify`), and pre-signed URLs used by a plain HTTP client.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{garage, is_mounted, pailfs, Bucket, KillOnDrop, Mount};

fn credentials_file(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let g = garage();
    let path = dir.join("credentials");
    std::fs::write(
        &path,
        format!(
            "[default]\naws_access_key_id={}\naws_secret_access_key={}\n",
            g.key_id, g.secret
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A temporary directory holding an empty `mnt/` to mount on.
/// A mountpoint in a fresh folder, and its guard: whatever is mounted there when the test
/// ends, however it ends (a failed assertion after a SIGKILL leaves a dead mount), is
/// unmounted lazily before the folder goes.
fn scratch_mountpoint() -> (tempfile::TempDir, std::path::PathBuf, UnmountOnDrop) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let guard = UnmountOnDrop(mnt.clone());
    (dir, mnt, guard)
}

struct UnmountOnDrop(std::path::PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn an_fstab_line_mounts_with_mount_and_unmounts_with_umount() {
    let b = Bucket::new("fstab");
    b.put("docs/readme.txt", "from the bucket");
    let (dir, mnt, _unmount) = scratch_mountpoint();
    let creds = credentials_file(dir.path());
    let log = dir.path().join("pailfs.log");
    // mount.fuse3 starts the program named before '#' (a path here, so nothing needs
    // installing; with the package, the type is written fuse.pailfs and the source plain).
    let line = |options: &str| {
        format!(
            "{}#{} {} fuse _netdev,nofail,endpoint_url={},region=garage,credentials_file={},cache_dir={},log_file={}{options} 0 0\n",
            env!("CARGO_BIN_EXE_pailfs"),
            b.location("docs"),
            mnt.display(),
            garage().endpoint,
            creds.display(),
            dir.path().join("cache").display(),
            log.display(),
        )
    };
    let fstab = dir.path().join("fstab");
    let mount = |fstab: &Path| {
        Command::new("mount")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PAILFS_DIRS", common::pailfs_dirs())
            .arg("--fstab")
            .arg(fstab)
            .arg(&mnt)
            .output()
            .unwrap()
    };
    // An unknown option is named, and nothing is mounted.
    std::fs::write(&fstab, line(",colour=blue")).unwrap();
    let out = mount(&fstab);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "{err}");
    assert!(!is_mounted(&mnt));
    std::fs::write(&fstab, line(",ro")).unwrap();
    let out = mount(&fstab);
    assert!(out.status.success(), "{out:?}");
    assert!(is_mounted(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("readme.txt")).unwrap(),
        "from the bucket"
    );
    assert_eq!(
        std::fs::write(mnt.join("new.txt"), "x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS),
        "ro from the fstab line"
    );
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("unmounted")
    {
        assert!(Instant::now() < deadline, "the daemon did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn type_notify_readiness_reaches_the_service_manager() {
    let b = Bucket::new("notify");
    b.put("f.txt", "data");
    let (dir, mnt, _unmount) = scratch_mountpoint();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = KillOnDrop(
        pailfs()
            .args(["mount", &b.location("")])
            .arg(&mnt)
            .args(["--endpoint-url", &garage().endpoint, "--foreground"])
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).expect("a readiness message");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.contains("READY=1"), "{message}");
    assert!(is_mounted(&mnt), "ready means mounted");
    assert_eq!(std::fs::read_to_string(mnt.join("f.txt")).unwrap(), "data");
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("a stopping message");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&mnt));
}

/// A plain HTTP/1.1 request (no credentials, no SDK): (status, body).
fn http(method: &str, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response[split + 4..].to_vec())
}

fn presign(path: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pailfs"))
        .env("PAILFS_DIRS", common::pailfs_dirs())
        .arg("presign")
        .arg(path)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn presigned_urls_work_without_credentials_and_expire() {
    let b = Bucket::new("presign");
    b.put("share/report.pdf", "the report");
    let m = Mount::new(&b.location(""), &[]);
    let out = presign(&m.join("share/report.pdf"), &["--expires", "3s"]);
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(
        !url.contains(&garage().secret),
        "the secret never appears in a URL"
    );
    assert_eq!(http("GET", &url, b""), (200, b"the report".to_vec()));
    // An upload link for a file that does not exist yet.
    let out = presign(&m.join("share/upload.bin"), &["--method", "put"]);
    assert!(out.status.success(), "{out:?}");
    let put_url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(http("PUT", &put_url, b"uploaded").0, 200);
    assert_eq!(b.get("share/upload.bin").as_deref(), Some(&b"uploaded"[..]));
    // Past its expiry the URL is refused.
    std::thread::sleep(Duration::from_secs(4));
    // (AWS answers 403, Garage 400; either way, no bytes.)
    let (status, _) = http("GET", &url, b"");
    assert!(
        status == 403 || status == 400,
        "expired URL answered {status}"
    );
    // Longer than SigV4 allows: refused with the reason.
    let out = presign(&m.join("share/report.pdf"), &["--expires", "8d"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("7 days"));
    // Outside any mount: said so.
    let out = presign(Path::new("/tmp/not-a-mount/file"), &[]);
    assert!(!out.status.success());
}

fn write_keys(path: &Path, (id, secret): &(String, String)) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        path,
        format!("[default]\naws_access_key_id={id}\naws_secret_access_key={secret}\n"),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn wait_for_log(m: &Mount, text: &str, after: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = m.log_text();
        if log.get(after..).is_some_and(|tail| tail.contains(text)) {
            return;
        }
        assert!(Instant::now() < deadline, "no '{text}' in the log: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_rotated_keys_and_refuses_a_bad_one_loudly() {
    let b = Bucket::new_shared("rotate");
    b.put("a.txt", "A");
    let first = common::extra_key(&b.name, &["--read", "--write"]);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    write_keys(&creds, &first);
    // The environment holds another key: the credentials file must win over it.
    let m = Mount::new(
        &b.location(""),
        &[&format!("--credentials-file={}", creds.display())],
    );
    let pid: i32 = m.status_field("pid").parse().expect("the daemon's pid");
    assert_eq!(std::fs::read_to_string(m.join("a.txt")).unwrap(), "A");
    // Rotate: a new key in the file, SIGHUP, then the old key is deleted.
    let second = common::extra_key(&b.name, &["--read", "--write"]);
    write_keys(&creds, &second);
    let mark = m.log_text().len();
    // SAFETY: signalling the daemon this test started, by its pid.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for_log(&m, "credentials reloaded", mark);
    common::garage_cli(&["key", "delete", "--yes", &first.0]);
    b.put("b.txt", "B");
    assert_eq!(std::fs::read_to_string(m.join("b.txt")).unwrap(), "B");
    std::fs::write(m.join("c.txt"), "C").unwrap();
    assert_eq!(b.get("c.txt").as_deref(), Some(&b"C"[..]));
    // A key the server does not know: refused loudly, the working key stays.
    write_keys(
        &creds,
        &("GK0123456789abcdef01234567".into(), "0".repeat(64)),
    );
    let mark = m.log_text().len();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for_log(&m, "reloading credentials FAILED", mark);
    b.put("d.txt", "D");
    assert_eq!(std::fs::read_to_string(m.join("d.txt")).unwrap(), "D");
}

#[test]
fn named_remotes_keep_keys_private_and_mount_with_at_name() {
    use std::os::unix::fs::PermissionsExt;
    let b = Bucket::new_shared("remotes");
    b.put("team/docs/a.txt", "A");
    let (id, secret) = common::extra_key(&b.name, &["--read"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pailfs/remotes.toml");
    let run = |args: &[&str], stdin: &str| {
        let mut child = pailfs()
            .env("PAILFS_CONFIG", &config)
            .args(["remote"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let location = format!("s3://{}/team", b.name);
    let out = run(
        &[
            "add",
            "office",
            "--location",
            &location,
            "--endpoint-url",
            &garage().endpoint,
            "--provider",
            "garage",
            "--access-key-id",
            &id,
        ],
        &format!("{secret}\n"),
    );
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "written private");
    let listed = run(&["list"], "");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        format!("office\t{location}\n")
    );
    let shown = String::from_utf8_lossy(&run(&["show", "office"], "").stdout).to_string();
    assert!(shown.contains("secret_access_key=(set)") && !shown.contains(&secret));
    // The garage preset filled the region and the addressing style.
    assert!(
        shown.contains("region=garage") && shown.contains("addressing=path-style"),
        "{shown}"
    );
    // Mount @NAME/PATH: its keys (read-only here) are used, not the environment's.
    let config_text = config.display().to_string();
    let m = Mount::new_with_env("@office/docs", &[], &[("PAILFS_CONFIG", &config_text)]);
    assert_eq!(std::fs::read_to_string(m.join("a.txt")).unwrap(), "A");
    // (File's drop ignores close errors, so the upload is asked for with sync_all.)
    let refused = std::fs::File::create(m.join("b.txt")).and_then(|mut f| {
        f.write_all(b"B")?;
        f.sync_all()
    });
    assert_eq!(
        refused.unwrap_err().raw_os_error(),
        Some(libc::EACCES),
        "the remote's read-only key is the one in use"
    );
    drop(m);
    // Readable by others: refused, with the fix.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["list"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(run(&["remove", "office"], "").status.success());
    assert!(String::from_utf8_lossy(&run(&["list"], "").stdout).is_empty());
}

#[test]
fn the_debian_package_puts_files_where_systemd_and_mount_look() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/package-deb.sh"
    ))
    .arg(env!("CARGO_BIN_EXE_pailfs"))
    .arg(dir.path().join("out"))
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .args(["-f", &deb, name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "pailfs");
    assert!(
        field("Depends").starts_with("fuse3, libc6 (>= 2."),
        "{}",
        field("Depends")
    );
    // Installed into a scratch root, not onto this machine.
    let root = dir.path().join("root");
    let out = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for file in [
        "usr/bin/pailfs",
        "lib/systemd/system/pailfs@.service",
        "usr/share/man/man1/pailfs.1.gz",
        "usr/share/man/man1/pailfs-mount.1.gz",
        "usr/share/man/man8/mount.fuse.pailfs.8.gz",
        "usr/share/man/man8/mount.pailfs.8.gz",
        "usr/share/bash-completion/completions/pailfs",
        "usr/share/zsh/vendor-completions/_pailfs",
        "usr/share/fish/vendor_completions.d/pailfs.fish",
        "usr/share/doc/pailfs/mnt-data.mount",
    ] {
        assert!(root.join(file).is_file(), "{file} is installed");
    }
    let helper = root.join("usr/sbin/mount.fuse.pailfs");
    for link in [&helper, &root.join("usr/sbin/mount.pailfs")] {
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new("../bin/pailfs")
        );
    }
    // What an administrator expects of a package: folders 0755, a copyright and a changelog,
    // and a stripped binary whose debug symbols are split out beside the package.
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o7777
    };
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .all(|l| !l.starts_with('d') || l.starts_with("drwxr-xr-x")),
        "every folder in the package is 0755:\n{listing}"
    );
    for file in [
        "usr/share/doc/pailfs/copyright",
        "usr/share/doc/pailfs/changelog.gz",
    ] {
        assert!(root.join(file).is_file(), "{file} is installed");
        assert_eq!(mode(&root.join(file)), 0o644, "{file}");
    }
    let copyright = std::fs::read_to_string(root.join("usr/share/doc/pailfs/copyright")).unwrap();
    assert!(
        copyright.contains("License: Apache-2.0")
            && copyright.contains("/usr/share/common-licenses/Apache-2.0")
    );
    let sections = Command::new("objdump")
        .arg("-h")
        .arg(root.join("usr/bin/pailfs"))
        .output()
        .unwrap();
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(
        !sections.contains(".debug_info") && sections.contains(".gnu_debuglink"),
        "{sections}"
    );
    let packaged = std::fs::metadata(root.join("usr/bin/pailfs"))
        .unwrap()
        .len();
    let built = std::fs::metadata(env!("CARGO_BIN_EXE_pailfs"))
        .unwrap()
        .len();
    assert!(
        packaged * 2 < built,
        "stripped: {packaged} of {built} bytes"
    );
    // lintian (installed by scripts/install-deps.sh) finds no error in the package.
    let lint = Command::new("lintian")
        .arg("--no-tag-display-limit")
        .arg(&deb)
        .output()
        .expect("lintian runs (scripts/install-deps.sh installs it)");
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        !lint.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{lint}"
    );
    let debug = Path::new(&deb).with_extension("debug");
    let debug_sections = Command::new("objdump")
        .arg("-h")
        .arg(&debug)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&debug_sections.stdout).contains(".debug_info"),
        "the symbols are in {}",
        debug.display()
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/pailfs@.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecStart=/usr/bin/pailfs mount"));
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/pailfs-mount.1.gz"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains("endpoint\\-url"));
    // Every pailfs page another page names exists in the package.
    let mut named = Vec::new();
    for section in ["man1", "man8"] {
        for page in std::fs::read_dir(root.join("usr/share/man").join(section)).unwrap() {
            let page = page.unwrap().path();
            let text = Command::new("gzip").arg("-dc").arg(&page).output().unwrap();
            let text = String::from_utf8_lossy(&text.stdout)
                .replace("\\fB", "")
                .replace("\\fI", "")
                .replace("\\fR", "")
                .replace("\\fP", "")
                .replace("\\-", "-");
            for (at, _) in text.match_indices("pailfs") {
                let word: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '(' | ')'))
                    .collect();
                if let Some((name, rest)) = word.split_once('(') {
                    if let Some(number) = rest.strip_suffix(')').filter(|n| n.len() == 1) {
                        named.push((page.clone(), format!("man{number}/{name}.{number}.gz")));
                    }
                }
            }
        }
    }
    assert!(named.len() >= 5, "cross references found: {named:?}");
    for (page, target) in named {
        assert!(
            root.join("usr/share/man").join(&target).is_file(),
            "{} names {target}, which is not in the package",
            page.display()
        );
    }
    // The helper, called the way mount(8) calls it for fuse.pailfs, mounts.
    let b = Bucket::new("deb-helper");
    b.put("x.txt", "via the helper");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let creds = credentials_file(dir.path());
    let out = Command::new(&helper)
        .env("PAILFS_DIRS", common::pailfs_dirs())
        .arg(b.location(""))
        .arg(&mnt)
        .arg("-n")
        .arg("-o")
        .arg(format!(
            "_netdev,endpoint_url={},region=garage,credentials_file={},cache_dir={},log_file={}",
            garage().endpoint,
            creds.display(),
            dir.path().join("cache").display(),
            dir.path().join("log").display()
        ))
        .arg("-t")
        .arg("fuse.pailfs")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let read = std::fs::read_to_string(mnt.join("x.txt"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(read.unwrap(), "via the helper");
}

#[test]
fn a_mount_with_default_directories_keeps_its_files_under_pailfs_dirs() {
    // The suite runs as root, where the defaults are /var/log/pailfs, /var/cache/pailfs and
    // /run/pailfs: with PAILFS_DIRS (which the harness sets) nothing goes there.
    let b = Bucket::new("own-dirs");
    b.put("a.txt", "a");
    let (_dir, mnt, _unmount) = scratch_mountpoint();
    let out = pailfs()
        .arg("mount")
        .arg(b.location(""))
        .arg(&mnt)
        .arg("--endpoint-url")
        .arg(&garage().endpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let read = std::fs::read_to_string(mnt.join("a.txt"));
    let status = pailfs().arg("status").arg(&mnt).output().unwrap();
    let name = pailfs::config::paths::mount_name(&mnt);
    let named = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&name))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Looked at while mounted (the control socket goes with the daemon).
    let places: Vec<_> = [
        ("/var/log/pailfs", "log"),
        ("/var/cache/pailfs", "cache"),
        ("/run/pailfs", "run"),
    ]
    .into_iter()
    .map(|(system, kind)| {
        let ours = named(&common::pailfs_dirs().join(kind));
        (system, kind, named(Path::new(system)), ours)
    })
    .collect();
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    assert_eq!(read.unwrap(), "a");
    assert!(status.status.success(), "{status:?}");
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.starts_with(&format!("s3://{}/ on {}", b.name, mnt.display())),
        "{shown}"
    );
    for (system, kind, there, ours) in places {
        assert!(there.is_empty(), "{system} holds {there:?}");
        assert!(
            !ours.is_empty(),
            "the mount's {kind} file is under PAILFS_DIRS"
        );
    }
}

#[test]
fn the_systemd_unit_comes_back_after_kill_9_with_its_own_command() {
    // What systemd does, without systemd: run the unit's ExecStart, SIGKILL the daemon (the
    // OOM killer, a crash), then run ExecStart again as Restart=on-failure would.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/pailfs@.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    assert!(unit.contains("Restart=on-failure"), "{unit}");
    let b = Bucket::new("unit-restart");
    b.put("f.txt", "still here");
    let (dir, mnt, _unmount) = scratch_mountpoint();
    let args = format!(
        "--endpoint-url {} --region garage --cache-dir {} --log-file {}",
        garage().endpoint,
        dir.path().join("cache").display(),
        dir.path().join("log").display()
    );
    let words: Vec<String> = exec
        .replace("${LOCATION}", &b.location(""))
        .replace("%f", &mnt.to_string_lossy())
        .replace("$PAILFS_ARGS", &args)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(words[0], "/usr/bin/pailfs");
    let start = || KillOnDrop(pailfs().args(&words[1..]).spawn().unwrap());
    // Serving (a dead mount is still listed as mounted, so the file is what tells).
    let served = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match std::fs::read_to_string(mnt.join("f.txt")) {
                Ok(text) => return text,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the unit's command does not serve: {e}\n{}",
                    std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut first = start();
    assert_eq!(served(), "still here");
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(is_mounted(&mnt), "SIGKILL leaves a dead mount behind");
    assert!(std::fs::read_dir(&mnt).is_err(), "and it answers nothing");
    let mut second = start();
    assert_eq!(
        served(),
        "still here",
        "the restarted unit serves the bucket again"
    );
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(
        log.contains("dead"),
        "the restart says it cleared the dead mount: {log}"
    );
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let status = second.0.wait().unwrap();
    assert!(
        status.success(),
        "a clean stop after the restart: {status:?}"
    );
}
