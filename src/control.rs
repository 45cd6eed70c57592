//! The control socket of a running mount: a Unix socket, mode 0600, that answers each
//! connection with the mount's status in `name=value` lines (`pailfs status` reads it).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::paths::{mount_name, socket_dir};
use crate::fs::Fs;

pub fn socket_path(mountpoint: &Path) -> PathBuf {
    socket_dir().join(format!("{}.sock", mount_name(mountpoint)))
}

/// What the socket reports besides the filesystem's counters.
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub location: String,
    pub started: Instant,
}

/// Serves the socket until the returned guard is dropped (the socket file goes with it).
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn status_text(info: &MountInfo, fs: &Fs) -> String {
    let mut text = format!(
        "mountpoint={}\nlocation={}\nuptime_secs={}\npid={}\n",
        info.mountpoint.display(),
        info.location,
        info.started.elapsed().as_secs(),
        std::process::id()
    );
    if let Some(summary) = fs.request_summary() {
        for field in summary.split_whitespace() {
            text.push_str(field);
            text.push('\n');
        }
    }
    text
}

pub fn serve(info: MountInfo, fs: Arc<Fs>) -> std::io::Result<ControlSocket> {
    let path = socket_path(&info.mountpoint);
    let dir = socket_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    // A socket left by a daemon that died: nobody answers it, so it can go.
    if UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("pailfs-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(mut s) => {
                        let _ = s.write_all(status_text(&info, &fs).as_bytes());
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                }
            }
        })?;
    Ok(ControlSocket { path })
}

/// Reads the status of the mount on `mountpoint`.
pub fn query(mountpoint: &Path) -> Result<String, String> {
    use std::io::Read;
    let path = socket_path(mountpoint);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no pailfs mount answers for {} ({}: {e})",
            mountpoint.display(),
            path.display()
        )
    })?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text)
}

/// Mountpoints of every mount with a live control socket.
pub fn live_mounts() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(socket_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if let Ok(mut s) = UnixStream::connect(entry.path()) {
            use std::io::Read;
            let mut text = String::new();
            if s.read_to_string(&mut text).is_ok() {
                out.push(text);
            }
        }
    }
    out
}
