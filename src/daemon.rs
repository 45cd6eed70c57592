//! The mount lifecycle: daemonizing with a readiness pipe (the command returns 0 only once
//! the mount answers), start-up checks, serving, and a clean unmount on SIGTERM/SIGINT.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use fuser::{MountOption, SessionACL};

use crate::config::MountConfig;
use crate::fs::Fs;
use crate::fuse::FuseAdapter;
use crate::startup;
use crate::store::instrumented::Instrumented;
use crate::store::s3::S3Store;
use crate::store::{ObjectStore, StoreError};

/// Environment variable through which the daemon finds its readiness pipe.
pub const READY_FD_ENV: &str = "PAILFS_READY_FD";
const READY: &[u8] = b"READY\n";

/// Where the daemon logs when no --log-file is given.
pub fn default_log_file(mountpoint: &Path) -> PathBuf {
    crate::config::paths::log_dir().join(format!(
        "{}.log",
        crate::config::paths::mount_name(mountpoint)
    ))
}

/// Parent side: start the daemon (this program again, in the foreground, detached from the
/// terminal) and wait until it reports the mount ready or explains why it is not.
/// Returns the log path and the notes the daemon reported with its readiness.
pub fn spawn_daemon(args: &[String], cfg: &MountConfig) -> Result<(String, Vec<String>), String> {
    let log_path = cfg
        .log_file
        .clone()
        .unwrap_or_else(|| default_log_file(&cfg.mountpoint));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the log directory {}: {e}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open the log file {}: {e}", log_path.display()))?;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid two-element array; O_CLOEXEC keeps both ends out of other children.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned only here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_raw = fds[1];
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let mut command = Command::new(exe);
    command.args(args).arg("--foreground");
    if cfg.log_file.is_none() {
        command.arg(format!("--log-file={}", log_path.display()));
    }
    command
        .env(READY_FD_ENV, write_raw.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid and fcntl.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            libc::fcntl(write_raw, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    drop(write_end);
    let mut message = Vec::new();
    let mut reader = std::fs::File::from(read_end);
    let _ = reader.read_to_end(&mut message);
    if let Some(notes) = message.strip_prefix(READY) {
        let notes = String::from_utf8_lossy(notes)
            .lines()
            .map(str::to_string)
            .collect();
        return Ok((log_path.display().to_string(), notes));
    }
    let status = child.wait().ok();
    let text = String::from_utf8_lossy(&message).trim().to_string();
    if text.is_empty() {
        Err(format!(
            "the daemon exited ({}) before the mount was ready; see {}",
            status.map(|s| s.to_string()).unwrap_or_default(),
            log_path.display()
        ))
    } else {
        Err(text)
    }
}

/// The bucket a cache directory serves, as its journal records name it: a record is uploaded
/// only by a mount of the same bucket at the same endpoint.
fn cache_identity(cfg: &MountConfig) -> String {
    format!(
        "s3://{}/ at {}",
        cfg.location.bucket,
        cfg.s3.endpoint.as_deref().unwrap_or("AWS")
    )
}

/// The data cache in the cache directory (unless `--no-data-cache`). A cache that cannot be
/// opened is logged and left out: reads then all go to the bucket.
fn open_data_cache(
    cfg: &MountConfig,
    staged: Arc<std::sync::atomic::AtomicU64>,
) -> Option<Arc<crate::fs::block_cache::BlockCache>> {
    use crate::fs::block_cache::{default_cap, BlockCache};
    if !cfg.data_cache {
        return None;
    }
    let cap = cfg
        .data_cache_size
        .unwrap_or_else(|| default_cap(&cfg.cache_dir));
    match BlockCache::open(
        &cfg.cache_dir,
        &cache_identity(cfg),
        cap,
        cfg.max_cache_size,
        staged,
        cfg.cache_min_free,
    ) {
        Ok(blocks) => Some(Arc::new(blocks)),
        Err(e) => {
            tracing::warn!(
                "no data cache: cannot use {}: {e} (reads all go to the bucket)",
                cfg.cache_dir.join("blocks").display()
            );
            None
        }
    }
}

/// Reports the outcome of start-up to whoever waits on the readiness pipe.
pub struct Readiness {
    pipe: Option<std::fs::File>,
    daemon: bool,
}

impl Readiness {
    /// Takes the pipe named by `PAILFS_READY_FD`, if this process was started as a daemon.
    pub fn from_env() -> Readiness {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            // SAFETY: fcntl(F_GETFD) only queries whether the descriptor is open.
            .filter(|fd| *fd > 2 && unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0);
        std::env::remove_var(READY_FD_ENV);
        Readiness {
            daemon: fd.is_some(),
            // SAFETY: the parent passed us this descriptor for our exclusive use.
            pipe: fd.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) }),
        }
    }

    /// Whether this process is a daemon started by `pailfs mount` (even after reporting).
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// The mount answers: tells the waiting `pailfs mount` (daemon mode), with `notes` for
    /// it to print (what start-up found), and systemd (`Type=notify`).
    pub fn ready(&mut self, status: &str, notes: &[String]) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(READY);
            for note in notes {
                let _ = writeln!(pipe, "{note}");
            }
        }
        crate::notify::notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn failed(&mut self, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(message.as_bytes());
        }
        crate::notify::notify(&format!("STATUS=failed: {message}"));
    }
}

/// Raises the kernel's read-ahead for this mount. FUSE caps it at the device default of
/// 128 KiB whatever the INIT reply asks, so sequential reads arrive as 128 KiB requests; a
/// larger value lets the kernel send 1 MiB requests, several in flight. Needs root; without
/// it the mount works with the default.
fn set_kernel_read_ahead(cfg: &MountConfig) {
    let Some(device) = startup::mount_device(&cfg.mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    let kib = cfg.kernel_read_ahead / 1024;
    match std::fs::write(&knob, kib.to_string()) {
        Ok(()) => tracing::debug!(%knob, kib, "kernel read-ahead set"),
        Err(e) => {
            tracing::info!(%knob, error = %e, "kernel read-ahead left at its default (needs root)")
        }
    }
}

/// Ends a FUSE connection that programs still hold open after a lazy unmount (root only):
/// their next calls fail, and the session ends.
fn abort_connection(device: Option<&str>) {
    let Some(minor) = device.and_then(|d| d.split(':').nth(1)) else {
        return;
    };
    let knob = format!("/sys/fs/fuse/connections/{minor}/abort");
    match std::fs::write(&knob, "1") {
        Ok(()) => tracing::info!(
            "files were still held open; the FUSE connection was aborted after their uploads"
        ),
        Err(e) => tracing::debug!(%knob, error = %e, "could not abort the FUSE connection"),
    }
}

/// `--write-back=async`: a status line every 10 s while uploads are pending, so an operator
/// knows when the data is really in the bucket.
async fn log_pending_uploads(fs: Arc<Fs>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    let mut was_pending = false;
    loop {
        tick.tick().await;
        let files = fs.pending_uploads();
        if files > 0 {
            tracing::info!(
                files,
                bytes = fs.pending_bytes(),
                "write-back: uploads pending"
            );
        } else if was_pending {
            tracing::info!("write-back: every upload finished");
        }
        was_pending = files > 0;
    }
}

/// SIGHUP: reads the credentials again (keys rotate without a remount). The new ones pass
/// the start-up check before they replace the old; a failure is logged loudly and the mount
/// keeps the credentials it had.
async fn reload_credentials(s3: &S3Store, cfg: &MountConfig) {
    tracing::info!("SIGHUP: reloading credentials");
    crate::notify::notify("RELOADING=1");
    let checked = async {
        let reconnected = S3Store::connect(&cfg.s3).await?;
        startup::check_bucket(&reconnected.with_attempts(2), &cfg.location.prefix).await?;
        Ok::<_, StoreError>(reconnected)
    };
    match checked.await {
        Ok(reconnected) => {
            s3.adopt(&reconnected);
            tracing::info!("credentials reloaded; the new ones can list the bucket")
        }
        Err(e) => {
            let region = cfg.s3.region.as_deref().unwrap_or("?");
            tracing::error!(
                error = %startup::explain(&e, cfg, region),
                "reloading credentials FAILED; the mount keeps using the previous ones (if those were revoked, requests now fail with EACCES)"
            );
        }
    }
    crate::notify::notify("READY=1");
}

/// Uploads what files still open for writing hold, before the daemon goes away.
async fn finish_uploads(fs: &Fs, why: &str) {
    let pending = fs.pending_uploads();
    if pending == 0 {
        return;
    }
    tracing::info!(
        files = pending,
        why,
        "finishing uploads of files still open for writing"
    );
    let (done, failed) = fs.finish_pending_uploads().await;
    if failed > 0 {
        tracing::error!(
            uploaded = done,
            failed,
            why,
            "some files could not be uploaded before exit; their bytes are in the recovery directory (see the upload errors above)"
        );
    } else {
        tracing::info!(uploaded = done, why, "pending uploads finished");
    }
}

/// Daemon side (or `--foreground`): check, connect, mount, serve until unmounted or signalled.
pub fn run_mount(cfg: MountConfig, readiness: &mut Readiness) -> Result<(), String> {
    let cleared = startup::check_mountpoint(&cfg.mountpoint, cfg.allow_non_empty)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pailfs-worker")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    tracing::info!(location = %cfg.location.describe(cfg.s3.endpoint.as_deref()), "reading location");
    let s3 = runtime
        .block_on(S3Store::connect(&cfg.s3))
        .map_err(|e| startup::explain(&e, &cfg, cfg.s3.region.as_deref().unwrap_or("?")))?;
    let region = s3.region().to_string();
    // The start-up check fails fast (two attempts): a wrong endpoint is reported in seconds,
    // while requests of the running mount ride out throttling and short outages.
    let non_empty = runtime
        .block_on(startup::check_bucket(
            &s3.with_attempts(2),
            &cfg.location.prefix,
        ))
        .map_err(|e| startup::explain(&e, &cfg, &region))?;
    let s3 = Arc::new(s3);
    let instrumented = Arc::new(Instrumented::new(s3.clone()));
    let store: Arc<dyn ObjectStore> = instrumented.clone();
    if !non_empty && !cfg.location.prefix.is_empty() {
        tracing::warn!(
            prefix = %cfg.location.prefix,
            "nothing exists under the internal path yet; the mount starts empty"
        );
    }
    let mut fs = Fs::new(
        store,
        Some(instrumented.counters()),
        cfg.location.prefix.clone(),
        cfg.fs.clone(),
    );
    let lock_description = format!(
        "mountpoint {}\nlocation {}",
        cfg.mountpoint.display(),
        cache_identity(&cfg)
    );
    let mut _cache_lock = None;
    // Kept to close it cleanly at the end (see `BlockCache::close`).
    let mut data_cache = None;
    if !cfg.fs.read_only {
        let cannot_use = |e: &dyn std::fmt::Display| {
            format!(
                "cannot use the cache directory {}: {e}; choose another with --cache-dir (or mount --read-only)",
                cfg.cache_dir.display()
            )
        };
        std::fs::create_dir_all(&cfg.cache_dir).map_err(|e| cannot_use(&e))?;
        // One live mount per cache directory: two would reconcile (and upload) each other's
        // files being written.
        _cache_lock = Some(crate::fs::journal::CacheLock::acquire(
            &cfg.cache_dir,
            &lock_description,
        )?);
        let mut cache = crate::fs::write::CacheDir::open(&cfg.cache_dir, cfg.max_cache_size)
            .map(|c| {
                c.with_min_free_ratio(cfg.cache_min_free)
                    .with_write_buffers(cfg.write_buffer_memory, cfg.fs.write.upload_concurrency)
                    .for_mount(&cache_identity(&cfg), &cfg.location.prefix)
            })
            .map_err(|e| cannot_use(&e))?;
        if let Some(blocks) = open_data_cache(&cfg, cache.staged_counter()) {
            cache = cache.with_blocks(blocks.clone());
            data_cache = Some(blocks.clone());
            fs = fs.with_blocks(blocks);
        }
        fs = fs.with_cache(Arc::new(cache));
    } else if cfg.data_cache {
        // A read-only mount keeps a data cache too, when its directory is free to use.
        let locked = std::fs::create_dir_all(&cfg.cache_dir)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                crate::fs::journal::CacheLock::acquire(&cfg.cache_dir, &lock_description)
            });
        match locked {
            Ok(lock) => {
                _cache_lock = Some(lock);
                let nothing_staged = Arc::new(std::sync::atomic::AtomicU64::new(0));
                if let Some(blocks) = open_data_cache(&cfg, nothing_staged) {
                    data_cache = Some(blocks.clone());
                    fs = fs.with_blocks(blocks);
                }
            }
            Err(e) => tracing::warn!(
                "no data cache for this read-only mount: cannot use {}: {e}",
                cfg.cache_dir.display()
            ),
        }
    }
    let fs = Arc::new(fs);
    // What a daemon that did not finish left: acknowledged files upload (in the background),
    // unsaved ones go to recovery/, and the start-up output names them.
    let reconciled = runtime.block_on(fs.reconcile()).map_err(|e| {
        format!(
            "reconciling the cache directory {}: {e}",
            cfg.cache_dir.display()
        )
    })?;
    let notes: Vec<String> = cleared.into_iter().chain(reconciled.lines()).collect();
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    let kernel = adapter.kernel();
    let mut options = vec![
        MountOption::FSName(format!(
            "s3://{}/{}",
            cfg.location.bucket, cfg.location.prefix
        )),
        MountOption::Subtype("pailfs".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if cfg.fs.read_only {
        options.push(MountOption::RO);
    }
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if cfg.allow_other {
        SessionACL::All
    } else if cfg.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(cfg.fuse_threads);
    fuse_config.clone_fd = true;
    let (session, mut unmounter) = crate::kernel_mount::attach(adapter, &cfg.mountpoint, fuse_config).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => " (is /dev/fuse accessible, and for --allow-other is user_allow_other set in /etc/fuse.conf?)",
            Some(libc::ENOENT) => " (is the fuse3 package installed? it provides fusermount3)",
            Some(libc::EBUSY) => " (the mountpoint is busy)",
            _ => "",
        };
        format!("mounting on {} failed: {e}{hint}", cfg.mountpoint.display())
    })?;
    let _ = kernel.set(session.notifier());
    if cfg.fs.max_inodes > 0 {
        crate::fuse::keep_names_within_budget(fs.clone(), session.notifier())
            .map_err(|e| format!("cannot start the name-budget thread: {e}"))?;
    }
    set_kernel_read_ahead(&cfg);
    let device = startup::mount_device(&cfg.mountpoint);
    let _control = crate::control::serve(
        crate::control::MountInfo {
            mountpoint: cfg.mountpoint.clone(),
            location: format!("s3://{}/{}", cfg.location.bucket, cfg.location.prefix),
            started: std::time::Instant::now(),
        },
        fs.clone(),
        runtime.handle().clone(),
    )
    .map_err(
        |e| tracing::warn!(error = %e, "no control socket: pailfs status will not see this mount"),
    )
    .ok();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("pailfs-fuse".into())
        .spawn(move || {
            let _ = ended_tx.send(session.run());
        })
        .map_err(|e| format!("cannot start the FUSE thread: {e}"))?;
    tracing::info!(
        mountpoint = %cfg.mountpoint.display(),
        location = %format!("s3://{}/{}", cfg.location.bucket, cfg.location.prefix),
        read_only = cfg.fs.read_only,
        "mounted"
    );
    readiness.ready(
        &format!(
            "mounted s3://{}/{} on {}",
            cfg.location.bucket,
            cfg.location.prefix,
            cfg.mountpoint.display()
        ),
        &notes,
    );
    if !readiness.is_daemon() {
        for note in &notes {
            eprintln!("pailfs: {note}");
        }
        eprintln!(
            "pailfs: mounted s3://{}/{} on {}; press Ctrl-C (or run fusermount3 -u {}) to unmount",
            cfg.location.bucket,
            cfg.location.prefix,
            cfg.mountpoint.display(),
            cfg.mountpoint.display()
        );
    }
    let mountpoint = cfg.mountpoint.clone();
    let fs_for_signal = fs.clone();
    let reload_cfg = cfg.clone();
    if cfg.fs.write_back == crate::fs::WriteBack::Async {
        runtime.spawn(log_pending_uploads(fs.clone()));
    }
    let outcome = runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
        let mut ended = ended_rx;
        let signalled = loop {
            tokio::select! {
                _ = term.recv() => break Some("SIGTERM"),
                _ = int.recv() => break Some("SIGINT"),
                _ = hup.recv() => reload_credentials(&s3, &reload_cfg).await,
                result = &mut ended => {
                    if let Ok(Err(e)) = result {
                        tracing::error!(error = %e, "the FUSE session ended with an error");
                    }
                    break None;
                }
            }
        };
        if let Some(sig) = signalled {
            crate::notify::notify("STOPPING=1\nSTATUS=finishing uploads, then unmounting");
            finish_uploads(&fs_for_signal, sig).await;
            tracing::info!(signal = sig, "unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount failed (busy?); detaching lazily");
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&mountpoint)
                    .status();
            }
            // A lazy detach leaves the session up while programs hold files open; their data
            // is already uploaded, so after a grace period the connection is aborted (or,
            // without fusectl, ends with this process closing /dev/fuse).
            let grace = std::time::Duration::from_secs(2);
            if tokio::time::timeout(grace, &mut ended).await.is_err() {
                abort_connection(device.as_deref());
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ended).await;
            }
        }
        Ok::<(), String>(())
    });
    // An unmount with files still open for writing (lazy, or the kernel gave up on them):
    // their last bytes go up now, or to recovery/.
    runtime.block_on(finish_uploads(&fs, "unmount"));
    if let Some(blocks) = data_cache {
        runtime.block_on(blocks.close());
    }
    if let Some(summary) = fs.request_summary() {
        tracing::info!(requests = %summary, "unmounted");
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    outcome
}
