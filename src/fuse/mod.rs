//! The FUSE adapter: decodes kernel requests, runs each as a tokio task on the filesystem
//! core, replies, and turns `FsError`s into errnos. A panic in one request answers that
//! request with EIO (the dropped reply does so) and is logged; the mount stays up. This file
//! holds the request handlers; `adapter` how they run, `convert` the type conversions,
//! `name_budget` the thread that keeps the kernel's names within `--max-inodes`.

mod adapter;
mod convert;
mod name_budget;

pub use adapter::FuseAdapter;
pub use name_budget::keep_names_within_budget;

use convert::*;

use std::ffi::OsStr;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::error::FsError;
use crate::fs::inode::Ino;
use crate::fs::meta::AttrChange;
use crate::fs::xattr::SetMode;
use crate::fs::DirSinkEntry;

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_MAX_PAGES,
            // O_TRUNC arrives with the open instead of as a separate truncate, so the object
            // in the bucket is not emptied before the new content is uploaded.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ] {
            // A kernel without one of these simply runs without it.
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match utf8_name(name, Naming::Existing) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // Answered from memory on this thread when it can be: a walk of a listed folder
        // (du, find) costs no hand-off to the async workers per entry.
        #[cfg(debug_assertions)]
        let probing = std::env::var("PAILFS_DEBUG_PANIC_ON_LOOKUP").is_ok_and(|n| n == name);
        #[cfg(not(debug_assertions))]
        let probing = false;
        if !probing {
            if let Some(answer) = self.fs.lookup_cached(Ino(parent.0), &name) {
                answer_entry(reply, "lookup", &self.ttl, answer);
                return;
            }
        }
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.serve("lookup", parent.0, async move {
            #[cfg(debug_assertions)]
            panic_probe(&name);
            answer_entry(reply, "lookup", &ttl, fs.lookup(Ino(parent.0), &name).await)
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(answer) = self.fs.getattr_cached(Ino(ino.0)) {
            answer_attr(reply, "getattr", &self.ttl, answer);
            return;
        }
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.serve("getattr", ino.0, async move {
            answer_attr(reply, "getattr", &ttl, fs.getattr(Ino(ino.0)).await)
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        let change = AttrChange {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            mtime: time_of(mtime),
            atime: time_of(atime),
        };
        let _ = fh;
        self.serve("setattr", ino.0, async move {
            let ino = Ino(ino.0);
            let result = async {
                if let Some(size) = size {
                    fs.set_size(ino, size).await?;
                }
                fs.set_attr(ino, change).await
            }
            .await;
            answer_attr(reply, "setattr", &ttl, result)
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = match utf8_name(name, Naming::New) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (perm, caller) = (requested_perm(mode, umask), caller(req));
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.serve("mknod", parent.0, async move {
            let parent = Ino(parent.0);
            let result = match special_of(mode) {
                Some(special) => fs.mknod(parent, &name, special, perm, rdev, caller).await,
                // mknod of a regular file: an empty file, as create would make it.
                None if matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG) => {
                    fs.create_empty(parent, &name, perm, caller).await
                }
                None => Err(FsError::Invalid),
            };
            answer_entry(reply, "mknod", &ttl, result)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (perm, caller) = (requested_perm(mode, umask), caller(req));
        let name = match utf8_name(name, Naming::New) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.serve("mkdir", parent.0, async move {
            answer_entry(
                reply,
                "mkdir",
                &ttl,
                fs.mkdir(Ino(parent.0), &name, perm, caller).await,
            )
        });
    }
    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match utf8_name(name, Naming::Existing) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let fs = self.fs.clone();
        self.serve("unlink", parent.0, async move {
            answer_empty(reply, "unlink", fs.unlink(Ino(parent.0), &name).await)
        });
    }
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match utf8_name(name, Naming::Existing) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let fs = self.fs.clone();
        self.serve("rmdir", parent.0, async move {
            answer_empty(reply, "rmdir", fs.rmdir(Ino(parent.0), &name).await)
        });
    }
    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (
            utf8_name(name, Naming::New),
            utf8_name(target.as_os_str(), Naming::New),
        ) {
            (Ok(name), Ok(target)) => (name, target),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let (fs, ttl, caller) = (self.fs.clone(), self.ttl, caller(req));
        self.serve("symlink", parent.0, async move {
            answer_entry(
                reply,
                "symlink",
                &ttl,
                fs.symlink(Ino(parent.0), &name, &target, caller).await,
            )
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.serve("readlink", ino.0, async move {
            match fs.readlink(Ino(ino.0)).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = match (
            utf8_name(name, Naming::Existing),
            utf8_name(new_name, Naming::New),
        ) {
            (Ok(name), Ok(new_name)) => (name, new_name),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            // S3 has no atomic swap.
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let fs = self.fs.clone();
        self.serve("rename", parent.0, async move {
            answer_empty(
                reply,
                "rename",
                fs.rename(
                    Ino(parent.0),
                    &name,
                    Ino(new_parent.0),
                    &new_name,
                    no_replace,
                )
                .await,
            )
        });
    }
    fn link(&self, _r: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        // Objects cannot share content: EPERM is what link(2) says for such filesystems.
        reply.error(errno("link", &self.fs.refuse_link()));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = write && flags.0 & libc::O_TRUNC != 0;
        let (fs, kernel) = (self.fs.clone(), self.kernel.clone());
        self.serve("open", ino.0, async move {
            match fs.open(Ino(ino.0), write, truncate).await {
                Ok((fh, keep_cache)) => {
                    let flags = if keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        // Another version (or one not known to match): the kernel drops its
                        // pages by itself, and its attributes (the size reads stop at) on
                        // this notice; recent kernels (6.18) also ask for them again after
                        // such an open, older ones may not. Attributes only (offset -1): no
                        // page lock is taken.
                        if let Some(kernel) = kernel.get() {
                            let _ = kernel.inval_inode(ino, -1, 0);
                        }
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.serve_now("read", ino.0, async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (fs, payloads) = (self.fs.clone(), self.write_payloads.clone());
        let mut payload = payloads.take(data.len());
        payload.extend_from_slice(data);
        let data = payload.freeze();
        self.serve("write", ino.0, async move {
            let written = fs.write(fh.0, offset, &data).await;
            payloads.give(data);
            match written {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.serve("flush", ino.0, async move {
            answer_empty(reply, "flush", fs.flush(fh.0).await)
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.serve("release", ino.0, async move {
            // close(2) already returned with flush's result; a failure here is logged (and
            // its bytes kept in recovery) by the upload itself.
            answer_empty(reply, "release", fs.release(fh.0).await)
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.serve("fsync", ino.0, async move {
            answer_empty(reply, "fsync", fs.fsync(fh.0).await)
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(Ino(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.serve("readdir", ino.0, async move {
            let mut reply = reply;
            let mut sink = |e: DirSinkEntry<'_>| {
                reply.add(INodeNo(e.ino.0), e.offset, kind_of(e.attr), e.name)
            };
            match fs.readdir(Ino(ino.0), fh.0, offset, false, &mut sink).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("readdir", &e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.serve("readdirplus", ino.0, async move {
            let mut reply = reply;
            let mut sink = |e: DirSinkEntry<'_>| {
                reply.add(
                    INodeNo(e.ino.0),
                    e.offset,
                    e.name,
                    &ttl,
                    &file_attr(e.attr),
                    GEN,
                )
            };
            match fs.readdir(Ino(ino.0), fh.0, offset, true, &mut sink).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("readdirplus", &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = match utf8_name(name, Naming::New) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mode = match flags {
            libc::XATTR_CREATE => SetMode::Create,
            libc::XATTR_REPLACE => SetMode::Replace,
            _ => SetMode::Any,
        };
        let (fs, value) = (self.fs.clone(), value.to_vec());
        self.serve("setxattr", ino.0, async move {
            answer_empty(
                reply,
                "setxattr",
                fs.setxattr(Ino(ino.0), &name, &value, mode).await,
            )
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match utf8_name(name, Naming::ExistingAttr) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let fs = self.fs.clone();
        self.serve("getxattr", ino.0, async move {
            match fs.getxattr(Ino(ino.0), &name).await {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(errno("getxattr", &e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fs = self.fs.clone();
        self.serve("listxattr", ino.0, async move {
            match fs.listxattr(Ino(ino.0)).await {
                Ok(names) => {
                    let mut list = Vec::new();
                    for name in names {
                        list.extend_from_slice(name.as_bytes());
                        list.push(0);
                    }
                    reply_xattr(reply, size, &list)
                }
                Err(e) => reply.error(errno("listxattr", &e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match utf8_name(name, Naming::ExistingAttr) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let fs = self.fs.clone();
        self.serve("removexattr", ino.0, async move {
            answer_empty(
                reply,
                "removexattr",
                fs.removexattr(Ino(ino.0), &name).await,
            )
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        answer_empty(
            reply,
            "access",
            self.fs.check_access(mask.contains(AccessFlags::W_OK)),
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match utf8_name(name, Naming::New) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        let (perm, caller) = (requested_perm(mode, umask), caller(req));
        self.serve("create", parent.0, async move {
            match fs.create(Ino(parent.0), &name, perm, caller).await {
                Ok((a, fh)) => reply.created(
                    &ttl,
                    &file_attr(&a),
                    GEN,
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }
}
