//! Test harness: one Garage server per test binary (started with scripts/garage.sh on
//! 127.0.0.1 in a temporary directory, stopped when the test process ends), a fresh bucket per
//! test, and pailfs mounts through the kernel that are unmounted even when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;

pub struct Garage {
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pub dir: PathBuf,
}

static GARAGE: OnceLock<Garage> = OnceLock::new();

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn garage() -> &'static Garage {
    GARAGE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pailfs-test-garage-{}", std::process::id()));
        run_ok(
            Command::new(repo().join("scripts/garage.sh"))
                .arg("start")
                .arg(&dir)
                .arg("--watch-pid")
                .arg(std::process::id().to_string()),
        );
        let env = std::fs::read_to_string(dir.join("env")).expect("Garage env file");
        let get = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} missing from Garage env"))
                .to_string()
        };
        Garage {
            endpoint: get("PAILFS_S3_ENDPOINT"),
            key_id: get("AWS_ACCESS_KEY_ID"),
            secret: get("AWS_SECRET_ACCESS_KEY"),
            dir,
        }
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A bucket of its own for one test, with an SDK client for fixtures.
pub struct Bucket {
    pub name: String,
    pub client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

impl Bucket {
    pub fn new(label: &str) -> Bucket {
        let b = Bucket::new_unnamed(label);
        b.rt.block_on(b.client.create_bucket().bucket(&b.name).send())
            .expect("create bucket");
        b
    }

    fn new_unnamed(label: &str) -> Bucket {
        let g = garage();
        let rt = runtime();
        let creds = aws_sdk_s3::config::Credentials::new(&g.key_id, &g.secret, None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("garage"))
            .endpoint_url(&g.endpoint)
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        let clean: String = label
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!(
            "t{}-{}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::Relaxed),
            clean
        );
        Bucket { name, client, rt }
    }

    /// A bucket created with the Garage CLI (a global name, which other keys can be granted
    /// rights on; buckets created through S3 are visible to their creating key only).
    pub fn new_shared(label: &str) -> Bucket {
        let b = Bucket::new_unnamed(label);
        garage_cli(&["bucket", "create", &b.name]);
        garage_cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &b.name,
            "--key",
            "pailfs-test",
        ]);
        b
    }

    pub fn put(&self, key: &str, data: impl Into<Vec<u8>>) {
        let body = ByteStream::from(data.into());
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .body(body)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// Puts many small objects with some concurrency.
    pub fn put_many(&self, keys: Vec<String>, data: &[u8]) {
        use futures::StreamExt;
        let data = data.to_vec();
        self.rt.block_on(async {
            futures::stream::iter(keys)
                .map(|key| {
                    let body = ByteStream::from(data.clone());
                    let client = self.client.clone();
                    let bucket = self.name.clone();
                    async move {
                        client
                            .put_object()
                            .bucket(bucket)
                            .key(&key)
                            .body(body)
                            .send()
                            .await
                            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        });
    }

    /// The object's content, or `None` when it does not exist.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .rt
            .block_on(self.client.get_object().bucket(&self.name).key(key).send())
            .ok()?;
        let bytes = self.rt.block_on(out.body.collect()).ok()?;
        Some(bytes.into_bytes().to_vec())
    }

    /// Multipart uploads the bucket holds open (ListMultipartUploads): (key, upload id).
    pub fn open_uploads(&self) -> Vec<(String, String)> {
        let out = self
            .rt
            .block_on(
                self.client
                    .list_multipart_uploads()
                    .bucket(&self.name)
                    .send(),
            )
            .expect("list multipart uploads");
        out.uploads()
            .iter()
            .map(|u| {
                (
                    u.key().unwrap_or_default().to_string(),
                    u.upload_id().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn delete(&self, key: &str) {
        self.rt
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.name)
                    .key(key)
                    .send(),
            )
            .expect("delete");
    }

    pub fn location(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.name, prefix)
    }
}

pub use pailfs::fs::write::files_below;

/// Runs a command that must succeed; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Random but reproducible bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Where every pailfs this test binary starts keeps its logs, caches and control sockets
/// (`PAILFS_DIRS`): inside Garage's temporary directory, removed with it, so the suite leaves
/// nothing in /var/log/pailfs, /var/cache/pailfs or /run/pailfs.
pub fn pailfs_dirs() -> PathBuf {
    garage().dir.join("pailfs-dirs")
}

/// The control socket of the mount on `mountpoint` started by this harness.
pub fn control_socket(mountpoint: &Path) -> PathBuf {
    pailfs_dirs().join("run").join(format!(
        "{}.sock",
        pailfs::config::paths::mount_name(mountpoint)
    ))
}

/// The status of a mount started by this harness, asked in this process (no fork).
pub fn query_status(mountpoint: &Path) -> Result<String, String> {
    pailfs::control::query_socket(&control_socket(mountpoint), mountpoint)
}

pub fn pailfs() -> Command {
    let g = garage();
    // PAILFS_TEST_BINARY runs the mount tests against another build (an installed package,
    // an older commit).
    let binary = std::env::var_os("PAILFS_TEST_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_pailfs").into());
    let mut c = Command::new(binary);
    c.env_clear()
        .env("PAILFS_DIRS", pailfs_dirs())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_ACCESS_KEY_ID", &g.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret)
        .env("AWS_REGION", "garage")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// A pailfs mount on a temporary directory; unmounted on drop, even after a failed assertion.
pub struct Mount {
    pub path: PathBuf,
    pub log: PathBuf,
    pub cache: PathBuf,
    dir: tempfile::TempDir,
}

pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
        })
        .unwrap_or(false)
}

impl Mount {
    /// Mounts `location` in daemon mode (the command returns once the mount is ready).
    pub fn new(location: &str, extra: &[&str]) -> Mount {
        Mount::new_with_env(location, extra, &[])
    }

    pub fn new_with_env(location: &str, extra: &[&str], envs: &[(&str, &str)]) -> Mount {
        let (mount, out) = Mount::try_new_with_env(location, extra, envs);
        assert!(
            out.status.success(),
            "mount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&mount.log).unwrap_or_default()
        );
        assert!(
            is_mounted(&mount.path),
            "the command returned before the mount was ready"
        );
        mount
    }

    pub fn try_new(location: &str, extra: &[&str]) -> (Mount, Output) {
        Mount::try_new_with_env(location, extra, &[])
    }

    /// Like `try_new`, with extra environment for the pailfs process.
    pub fn try_new_with_env(
        location: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> (Mount, Output) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir");
        let log = dir.path().join("pailfs.log");
        let mut command = pailfs();
        command.arg("mount").arg(location).arg(&path);
        if !extra.iter().any(|a| a.starts_with("--endpoint-url")) {
            command.arg("--endpoint-url").arg(&garage().endpoint);
        }
        let cache = dir.path().join("cache");
        if !extra.iter().any(|a| a.starts_with("--cache-dir")) {
            command.arg(format!("--cache-dir={}", cache.display()));
        }
        let out = command
            .envs(envs.iter().copied())
            .arg(format!("--log-file={}", log.display()))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run pailfs");
        (
            Mount {
                path,
                log,
                cache,
                dir,
            },
            out,
        )
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The `name=value` report of this mount's control socket (what `pailfs status` renders),
    /// asked in this process: a child process would fork, and a fork closes a copy of every
    /// open descriptor, which flushes (uploads) open files.
    fn status(&self) -> String {
        query_status(&self.path).expect("status from the daemon")
    }

    /// The daemon's request counters.
    pub fn requests(&self) -> Requests {
        let text = self.status();
        let get = |name: &str| counter(&text, name);
        Requests {
            head: get("HEAD"),
            list: get("LIST"),
            get: get("GET"),
            part_copy: get("MPU_PART_COPY"),
            put: get("PUT"),
            copy: get("COPY"),
            bytes_read: get("bytes_read"),
            bytes_written: get("bytes_written"),
        }
    }

    /// One counter of the daemon.
    pub fn counter_in_process(&self, name: &str) -> u64 {
        counter(&self.status(), name)
    }

    /// One field of the daemon's report.
    pub fn status_field(&self, name: &str) -> String {
        let text = self.status();
        status_value(&text, name).unwrap_or_else(|| panic!("{name} missing in '{text}'"))
    }

    /// Files kept in the cache directory's recovery/ after failed uploads.
    /// (At any depth: `recovery/TIME/PATH`.)
    pub fn recovered(&self) -> Vec<PathBuf> {
        files_below(&self.cache.join("recovery"))
    }

    /// The daemon's process id, from the lock it holds on its cache directory.
    pub fn daemon_pid(&self) -> i32 {
        let lock = std::fs::read_to_string(self.cache.join("lock")).expect("cache lock file");
        lock.lines()
            .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in the cache lock: {lock}"))
    }

    /// Kills the daemon with SIGKILL (no cleanup of any kind runs) and waits for it to be
    /// gone. The dead mount stays until `unmount`.
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid();
        // SAFETY: kill(2) on the daemon this test started; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.split(' ').nth(2) == Some("Z") {
                break;
            }
            assert!(Instant::now() < deadline, "the daemon survived SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn unmount(&self) {
        if is_mounted(&self.path) {
            let status = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&self.path)
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.path) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
        let _ = &self.dir;
    }
}

/// The value of a `name=value` line of `pailfs status`.
/// The number `name=N` in a status answer.
fn counter(text: &str, name: &str) -> u64 {
    status_value(text, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in '{text}'"))
}

fn status_value(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requests {
    pub head: u64,
    pub list: u64,
    pub get: u64,
    pub part_copy: u64,
    pub put: u64,
    pub copy: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// Runs the Garage CLI against the test server.
pub fn garage_cli(args: &[&str]) -> String {
    let g = garage();
    let bin = std::env::var("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".local/share/pailfs-tools/garage-2.5.0/bin/garage");
    let out = run_ok(
        Command::new(bin)
            .arg("-c")
            .arg(g.dir.join("garage.toml"))
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

static KEYS: AtomicUsize = AtomicUsize::new(0);

/// A second access key, granted `allow` (e.g. `["--read"]`) on `bucket`, or nothing if empty.
pub fn extra_key(bucket: &str, allow: &[&str]) -> (String, String) {
    let n = KEYS.fetch_add(1, Ordering::Relaxed);
    let id = format!(
        "GK{:024x}",
        (std::process::id() as u128) << 32 | n as u128 | 0xabc0_0000_0000
    );
    let secret = format!("{:064x}", 0x5ec7_e700_u128 + n as u128);
    let name = format!("extra-{}-{n}", std::process::id());
    garage_cli(&["key", "import", "--yes", "-n", &name, &id, &secret]);
    if !allow.is_empty() {
        let mut args = vec!["bucket", "allow"];
        args.extend_from_slice(allow);
        args.extend_from_slice(&[bucket, "--key", &name]);
        garage_cli(&args);
    }
    (id, secret)
}

/// Garage behind a TLS front (stunnel) whose certificate is signed by a CA made for the test.
pub struct TlsFront {
    pub endpoint: String,
    pub ca: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    pub fn start() -> TlsFront {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = d.join("ca.pem");
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=pailfs test CA",
                ])
                .arg("-keyout")
                .arg(d.join("ca.key"))
                .arg("-out")
                .arg(&ca),
        );
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .arg("-keyout")
                .arg(d.join("srv.key"))
                .arg("-out")
                .arg(d.join("srv.csr")),
        );
        std::fs::write(
            d.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(d.join("srv.csr"))
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(d.join("ca.key"))
                .arg("-out")
                .arg(d.join("srv.pem"))
                .arg("-extfile")
                .arg(d.join("ext")),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let upstream = garage().endpoint.trim_start_matches("http://").to_string();
        std::fs::write(
            d.join("stunnel.conf"),
            format!(
                "foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{port}\nconnect = {upstream}\ncert = {}\nkey = {}\n",
                d.join("srv.pem").display(),
                d.join("srv.key").display()
            ),
        )
        .expect("stunnel.conf");
        let child = Command::new("stunnel")
            .arg(d.join("stunnel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel (package stunnel4)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "stunnel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsFront {
            endpoint: format!("https://127.0.0.1:{port}"),
            ca,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// s3fs (the Debian package) mounted on a test bucket, for compatibility tests: what one tool
/// writes, the other must read. Unmounted (and its process ended) on drop.
pub struct S3fs {
    pub path: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl S3fs {
    pub fn mount(bucket: &str) -> S3fs {
        let g = garage();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, format!("{}:{}\n", g.key_id, g.secret)).expect("passwd");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let child = Command::new("s3fs")
            .arg(bucket)
            .arg(&path)
            .arg("-f")
            .arg("-o")
            .arg(format!(
                "url={},use_path_request_style,endpoint=garage,passwd_file={},use_xattr",
                g.endpoint,
                passwd.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3fs is installed by scripts/install-deps.sh");
        let mut s3fs = S3fs {
            path,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&s3fs.path) {
            if let Ok(Some(status)) = s3fs.child.try_wait() {
                panic!("s3fs exited: {status}");
            }
            assert!(Instant::now() < deadline, "s3fs did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        s3fs
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Unmounts and waits for s3fs to finish its uploads and exit.
    pub fn unmount(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A child process ended even when the test fails halfway. (A FUSE daemon's mount outlives
/// a kill, dead: the test unmounts it, see `scratch_mountpoint` in tests/system.rs.)
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
