//! The values the filesystem and its callers exchange: what kind a name is, what `stat`
//! shows of it, a readdir entry, `statfs`'s answer, and the mount's configuration.

use std::time::{Duration, SystemTime};

use super::inode::Ino;
use super::namespace::Caller;
use super::write::WriteTuning;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    /// An object whose metadata says S_IFLNK (s3fs's convention); its content is the target.
    Symlink,
    /// An empty object whose metadata gives another file type (s3fs's convention too): the
    /// kernel serves its opens (a fifo's pipe, a device's driver), pailfs only its name and
    /// attributes.
    Special(Special),
}

/// The file types that are only a name and attributes on S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Special {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The inode slot: symlinks and special files are objects like a file, and a listing
    /// cannot tell them apart, so all share one number per path.
    pub fn slot(self) -> Kind {
        match self {
            Kind::Dir => Kind::Dir,
            _ => Kind::File,
        }
    }

    /// Whether `st_rdev` means something for this kind (a device number).
    pub fn is_device(self) -> bool {
        matches!(
            self,
            Kind::Special(Special::CharDevice | Special::BlockDevice)
        )
    }
}

/// What `stat` shows for one inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// s3fs's `x-amz-meta-atime` / `-ctime` when stored, the mtime otherwise.
    pub atime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// The device number of a device node (`st_rdev`), 0 for every other kind.
    pub rdev: u32,
    /// ETag of the object the attributes came from (files only).
    pub etag: Option<String>,
}

impl Attr {
    /// The attributes of an entry created now by `owner`, before the bucket has it (no ETag).
    pub fn created(ino: Ino, kind: Kind, perm: u16, owner: Caller, size: u64) -> Attr {
        let now = SystemTime::now();
        Attr {
            ino,
            kind,
            size,
            mtime: now,
            atime: now,
            ctime: now,
            perm,
            uid: owner.uid,
            gid: owner.gid,
            rdev: 0,
            etag: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub metadata_ttl: Duration,
    /// How old the version a file is opened at may be (`--content-ttl`): a change made
    /// elsewhere shows to the next open within it, however long names are trusted. The
    /// kernel's attribute timeout is never longer either, so its idea of a size follows.
    pub content_ttl: Duration,
    pub read_only: bool,
    pub read_part_size: u64,
    pub max_read_window: u64,
    pub max_readahead_memory: u64,
    pub small_file_size: u64,
    /// Entries in each of the attribute and miss caches.
    pub cache_capacity: u64,
    pub list_page_size: u32,
    pub mount_time: SystemTime,
    pub write: WriteTuning,
    /// Complete listings with a HEAD per new or changed file (in parallel), so that modes,
    /// owners, mtimes and symlinks stored as metadata show in `ls -l`.
    pub listing_heads: bool,
    /// When uploads happen: at close (sync) or after it, in the background (async).
    pub write_back: WriteBack,
    /// Serve `user.*` extended attributes (stored in s3fs's `x-amz-meta-xattr`).
    pub xattrs: bool,
    /// Largest directory (in objects) a rename moves; above it, EXDEV.
    pub max_dir_rename_objects: u64,
    /// Largest object copied with one CopyObject; above it, UploadPartCopy parts.
    pub copy_limit: u64,
    /// Memory for directory snapshots, all directories together (`--dir-snapshot-memory`).
    pub snapshot_memory: u64,
    /// Names the kernel may hold before the oldest files are handed back (`--max-inodes`;
    /// 0: no limit).
    pub max_inodes: usize,
    pub copy_part_size: u64,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(1),
            content_ttl: Duration::from_secs(1),
            read_only: false,
            read_part_size: 8 << 20,
            max_read_window: 64 << 20,
            max_readahead_memory: 80 << 20,
            small_file_size: 1 << 20,
            cache_capacity: 100_000,
            list_page_size: 1000,
            mount_time: SystemTime::now(),
            write: WriteTuning {
                part_size: 8 << 20,
                upload_concurrency: 4,
                buffer_memory: 64 << 20,
                conflict: super::write::ConflictPolicy::Warn,
            },
            listing_heads: true,
            write_back: WriteBack::Sync,
            xattrs: false,
            max_dir_rename_objects: 10_000,
            copy_limit: 5 << 30,
            snapshot_memory: 32 << 20,
            max_inodes: 1_000_000,
            copy_part_size: 512 << 20,
        }
    }
}

/// One entry handed to a readdir sink. `offset` is the cookie of the entry after it.
pub struct DirSinkEntry<'a> {
    pub ino: Ino,
    pub offset: u64,
    pub name: &'a str,
    pub attr: &'a Attr,
}

/// Answers of `statfs`.
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// When written files are uploaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteBack {
    /// close() and fsync() return once the bucket has the file.
    #[default]
    Sync,
    /// close() returns once the file is staged on local disk; the upload follows in the
    /// background; fsync() still waits for it; unmount and SIGTERM finish pending uploads.
    Async,
}
