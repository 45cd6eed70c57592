//! Attaching the FUSE session to the mountpoint so that the mount's type is `fuse.pailfs`
//! (what `findmnt -t fuse.pailfs`, `umount -a -t fuse.pailfs` and monitoring filter on).
//!
//! fuser mounts with type `fuse` when it calls mount(2) itself (as root); through fusermount3
//! (everyone else) the subtype is honoured. So as root pailfs opens `/dev/fuse` and calls
//! mount(2) with type `fuse.pailfs`, then hands the descriptor to fuser; when that is not
//! permitted it lets fuser mount as before.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fuser::{Filesystem, MountOption, Session, SessionACL};

/// The mount's type in `/proc/self/mountinfo`.
pub const MOUNT_TYPE: &str = "fuse.pailfs";

/// How the session ends its mount.
pub enum Attached {
    /// Mounted here: unmounted here too.
    Own(PathBuf),
    /// Mounted by fuser (through fusermount3).
    Fuser(fuser::SessionUnmounter),
}

impl Attached {
    /// Unmounts (not lazily: a busy mount fails, and the caller decides).
    pub fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Attached::Own(mountpoint) => {
                let path = CString::new(mountpoint.as_os_str().as_bytes())
                    .map_err(std::io::Error::other)?;
                // SAFETY: a valid NUL-terminated path; umount2 does not keep the pointer.
                if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }
            Attached::Fuser(unmounter) => unmounter.unmount(),
        }
    }
}

/// Mounts `filesystem` on `mountpoint` with `config` (its mount options: the source name,
/// read-only, default_permissions; nosuid, nodev and noatime always).
pub fn attach<FS: Filesystem>(
    filesystem: FS,
    mountpoint: &Path,
    config: fuser::Config,
) -> std::io::Result<(Session<FS>, Attached)> {
    match own_mount(mountpoint, &config)? {
        Some(device) => {
            let acl = config.acl;
            let session = Session::from_fd(filesystem, device, acl, config)?;
            Ok((session, Attached::Own(mountpoint.to_path_buf())))
        }
        None => {
            let mut session = Session::new(filesystem, mountpoint, &config)?;
            let unmounter = session.unmount_callable();
            Ok((session, Attached::Fuser(unmounter)))
        }
    }
}

/// mount(2) of a fresh `/dev/fuse` descriptor; `None` where only fusermount3 may mount.
fn own_mount(mountpoint: &Path, config: &fuser::Config) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let options = &config.mount_options;
    let mut data = format!(
        "fd={},rootmode={:o},user_id=0,group_id=0",
        device.as_raw_fd(),
        std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT
    );
    if options.contains(&MountOption::DefaultPermissions) {
        data.push_str(",default_permissions");
    }
    if matches!(config.acl, SessionACL::All | SessionACL::RootAndOwner) {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if options.contains(&MountOption::RO) {
        flags |= libc::MS_RDONLY;
    }
    let source = options
        .iter()
        .find_map(|o| match o {
            MountOption::FSName(name) => Some(name.as_str()),
            _ => None,
        })
        .unwrap_or("pailfs");
    let c = |s: &[u8]| CString::new(s).map_err(std::io::Error::other);
    let (source, target, kind, data) = (
        c(source.as_bytes())?,
        c(mountpoint.as_os_str().as_bytes())?,
        c(MOUNT_TYPE.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            // Not allowed here after all (a user namespace, a container): fusermount3 may be.
            Some(libc::EPERM) => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(device.into()))
}
