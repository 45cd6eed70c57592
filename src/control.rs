//! The control socket of a running mount: a Unix socket, mode 0600. A client sends one
//! request line and reads the answer to the end: `status` gives the mount's status in
//! `name=value` lines (`pailfs status`), `presign<TAB>SECS<TAB>get|put<TAB>PATH` a pre-signed
//! URL (`url=…` or `error=…`; `pailfs presign`). The daemon signs: it has the credentials.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::paths::{mount_name, socket_dir};
use crate::fs::Fs;
use crate::store::PresignMethod;

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

/// Files in the cache directory's `recovery/` the report names (the rest are counted).
const RECOVERED_SHOWN: usize = 50;

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
    let (recovered, all) = fs.recovered_files(RECOVERED_SHOWN);
    for (path, size) in recovered {
        text.push_str(&format!("recovered={size}/{path}\n"));
    }
    if all > RECOVERED_SHOWN {
        text.push_str(&format!("recovered_not_shown={}\n", all - RECOVERED_SHOWN));
    }
    for upload in fs.uploads_in_progress() {
        text.push_str(&format!(
            "upload={}/{}/{}/{}\n",
            upload.done,
            upload.total,
            upload.elapsed.as_millis(),
            upload.key
        ));
    }
    text
}

/// Answers one request line.
fn answer(request: &str, info: &MountInfo, fs: &Fs, rt: &tokio::runtime::Handle) -> String {
    let fields: Vec<&str> = request.trim_end_matches(['\r', '\n']).split('\t').collect();
    match fields[..] {
        ["presign", secs, method, path] => {
            let method = match method {
                "put" => PresignMethod::Put,
                _ => PresignMethod::Get,
            };
            let Ok(secs) = secs.parse::<u64>() else {
                return "error=the expiry is not a number of seconds\n".into();
            };
            match rt.block_on(fs.presign(path, method, Duration::from_secs(secs))) {
                Ok(url) => format!("url={url}\n"),
                Err(e) => format!("error={e}\n"),
            }
        }
        _ => status_text(info, fs),
    }
}

pub fn serve(
    info: MountInfo,
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
) -> std::io::Result<ControlSocket> {
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
                        // A client that sends nothing gets the status.
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut request = String::new();
                        let _ = std::io::BufRead::read_line(
                            &mut std::io::BufReader::new(&s),
                            &mut request,
                        );
                        let _ = s.write_all(answer(&request, &info, &fs, &rt).as_bytes());
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                }
            }
        })?;
    Ok(ControlSocket { path })
}

/// Reads the status of the mount on `mountpoint`.
pub fn query(mountpoint: &Path) -> Result<String, String> {
    request(mountpoint, "status")
}

/// Reads the status of the mount on `mountpoint` from the control socket at `socket` (a
/// process whose `PAILFS_DIRS` differs from the mount's).
pub fn query_socket(socket: &Path, mountpoint: &Path) -> Result<String, String> {
    request_at(socket, mountpoint, "status")
}

/// Sends one request to the mount on `mountpoint` and returns its answer.
fn request(mountpoint: &Path, line: &str) -> Result<String, String> {
    request_at(&socket_path(mountpoint), mountpoint, line)
}

fn request_at(path: &Path, mountpoint: &Path, line: &str) -> Result<String, String> {
    let stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "no pailfs mount answers for {} ({}: {e})",
            mountpoint.display(),
            path.display()
        )
    })?;
    exchange(stream, line).map_err(|e| format!("talking to {}: {e}", path.display()))
}

/// Sends one request line on a connected control socket and reads the whole answer.
fn exchange(mut stream: UnixStream, line: &str) -> std::io::Result<String> {
    use std::io::Read;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// A pre-signed URL for `file`, a path inside a running mount (found by walking up to the
/// directory whose mount answers on a control socket).
pub fn presign(file: &Path, method: PresignMethod, expires: Duration) -> Result<String, String> {
    let absolute = std::path::absolute(file).map_err(|e| format!("{}: {e}", file.display()))?;
    // Symlinks in the directories above (e.g. /mnt -> /media) are resolved; the file itself
    // may not exist yet (an upload URL).
    let (dir, name) = match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => return Err(format!("{} is not a file path", file.display())),
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let target = dir.join(name);
    let mountpoint = target
        .ancestors()
        .skip(1)
        .find(|a| UnixStream::connect(socket_path(a)).is_ok())
        .ok_or_else(|| format!("{} is not inside a running pailfs mount", file.display()))?;
    let relative = target
        .strip_prefix(mountpoint)
        .ok()
        .and_then(|p| p.to_str())
        .ok_or_else(|| format!("{} is not a UTF-8 path inside the mount", file.display()))?;
    let method_name = match method {
        PresignMethod::Get => "get",
        PresignMethod::Put => "put",
    };
    let answer = request(
        mountpoint,
        &format!("presign\t{}\t{method_name}\t{relative}", expires.as_secs()),
    )?;
    match (answer.strip_prefix("url="), answer.strip_prefix("error=")) {
        (Some(url), _) => Ok(url.trim_end().to_string()),
        (_, Some(error)) => Err(error.trim_end().to_string()),
        _ => Err(format!("unexpected answer from the mount: {answer}")),
    }
}

/// Mountpoints of every mount with a live control socket.
pub fn live_mounts() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(socket_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        match UnixStream::connect(entry.path()) {
            Ok(stream) => {
                if let Ok(text) = exchange(stream, "status") {
                    out.push(text);
                }
            }
            // Left by a daemon that died (nobody listens): it can go.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(entry.path());
            }
            Err(_) => {}
        }
    }
    out
}
