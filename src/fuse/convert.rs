//! Conversions between fuser's types and the filesystem's: errors to errnos (through the one
//! table in `fs::error`), attributes, file types, the caller, times, and the one rule for names
//! that are not UTF-8.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileType, Generation, INodeNo, ReplyAttr, ReplyEmpty, ReplyEntry, ReplyXattr,
    Request, TimeOrNow,
};

use crate::fs::error::FsError;
use crate::fs::namespace::Caller;
use crate::fs::{Attr, Kind, Special};

/// Inode generation: numbers are never reused for another object within a mount.
pub(super) const GEN: Generation = Generation(0);

/// Debug builds only: a lookup of the name in `PAILFS_DEBUG_PANIC_ON_LOOKUP` panics, so tests
/// can prove that a bug in one request answers EIO and leaves the mount up.
#[cfg(debug_assertions)]
pub(super) fn panic_probe(name: &str) {
    if std::env::var("PAILFS_DEBUG_PANIC_ON_LOOKUP").is_ok_and(|n| n == name) {
        panic!("debug panic probe: lookup of {name}");
    }
}

pub(super) fn errno(op: &str, e: &FsError) -> Errno {
    if !e.is_expected() {
        tracing::warn!(op, error = %e, errno = e.errno(), "request failed");
    }
    Errno::from_i32(e.errno())
}

/// Answers a request whose success carries nothing.
pub(super) fn answer_empty(reply: ReplyEmpty, op: &str, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

/// Answers a request that creates or finds a name (lookup, mkdir, symlink).
pub(super) fn answer_entry(
    reply: ReplyEntry,
    op: &str,
    ttl: &Duration,
    result: Result<Attr, FsError>,
) {
    match result {
        Ok(a) => reply.entry(ttl, &file_attr(&a), GEN),
        Err(e) => reply.error(errno(op, &e)),
    }
}

/// Answers a request that returns attributes (getattr, setattr).
pub(super) fn answer_attr(
    reply: ReplyAttr,
    op: &str,
    ttl: &Duration,
    result: Result<Attr, FsError>,
) {
    match result {
        Ok(a) => reply.attr(ttl, &file_attr(&a)),
        Err(e) => reply.error(errno(op, &e)),
    }
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    let nlink = if a.kind == Kind::Dir { 2 } else { 1 };
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: SystemTime::UNIX_EPOCH,
        kind: kind_of(a),
        perm: a.perm,
        nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 1 << 20,
        flags: 0,
    }
}

pub(super) fn kind_of(a: &Attr) -> FileType {
    match a.kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Special(Special::Fifo) => FileType::NamedPipe,
        Kind::Special(Special::Socket) => FileType::Socket,
        Kind::Special(Special::CharDevice) => FileType::CharDevice,
        Kind::Special(Special::BlockDevice) => FileType::BlockDevice,
    }
}

/// The special file type `mode` asks mknod for; `None` for a regular file or a type mknod
/// does not make.
pub(super) fn special_of(mode: u32) -> Option<Special> {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => Some(Special::Fifo),
        libc::S_IFSOCK => Some(Special::Socket),
        libc::S_IFCHR => Some(Special::CharDevice),
        libc::S_IFBLK => Some(Special::BlockDevice),
        _ => None,
    }
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// What a request does with a name it is given. S3 keys are UTF-8, so a name that is not can
/// be in no bucket: looked for, it is not there (`ENOENT`, `ENODATA` for an extended
/// attribute); to be made, it cannot be (`EINVAL`).
#[derive(Clone, Copy)]
pub(super) enum Naming {
    Existing,
    ExistingAttr,
    New,
}

/// The name as UTF-8, or the errno `naming` gives a name that is not.
pub(super) fn utf8_name(name: &OsStr, naming: Naming) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(match naming {
        Naming::Existing => Errno::ENOENT,
        Naming::ExistingAttr => Errno::ENODATA,
        Naming::New => Errno::EINVAL,
    })
}

/// Permission bits a create or mkdir asks for, after the caller's umask.
pub(super) fn requested_perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

pub(super) fn time_of(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

/// Answers a getxattr/listxattr with the size protocol: a size of 0 asks how big the value
/// is; a smaller buffer than the value is ERANGE.
pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(FsError::Range.errno()));
    } else {
        reply.data(value);
    }
}
