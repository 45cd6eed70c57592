//! Attributes: how objects map to mode/uid/gid/mtime (s3fs-compatible metadata headers, or
//! the mount's defaults) and back, and the bounded caches of attributes, misses and object
//! metadata.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use moka::sync::Cache;

use super::inode::Ino;
use super::{Attr, FsConfig, Kind, Special};
use crate::store::{Metadata, ObjectInfo};

/// File type bits of `st_mode`, as s3fs stores them in `x-amz-meta-mode`.
pub const S_IFMT: u64 = 0o170000;
pub const S_IFREG: u64 = 0o100000;
pub const S_IFDIR: u64 = 0o040000;
pub const S_IFLNK: u64 = 0o120000;
pub const S_IFIFO: u64 = 0o010000;
pub const S_IFSOCK: u64 = 0o140000;
pub const S_IFCHR: u64 = 0o020000;
pub const S_IFBLK: u64 = 0o060000;

/// The header that keeps a device node's `st_rdev` (decimal, as `stat` shows it). s3fs
/// keeps no device number and ignores it.
pub const RDEV_HEADER: &str = "rdev";

/// The kind of an object whose `st_mode` type bits are `mode & S_IFMT` (anything that is not
/// a directory, a link or a special file is a file, as for objects without a mode).
pub fn object_kind(type_bits: u64) -> Kind {
    match type_bits {
        S_IFLNK => Kind::Symlink,
        S_IFIFO => Kind::Special(Special::Fifo),
        S_IFSOCK => Kind::Special(Special::Socket),
        S_IFCHR => Kind::Special(Special::CharDevice),
        S_IFBLK => Kind::Special(Special::BlockDevice),
        _ => Kind::File,
    }
}

/// The `st_mode` type bits of `kind`.
pub fn type_bits(kind: Kind) -> u64 {
    match kind {
        Kind::File => S_IFREG,
        Kind::Dir => S_IFDIR,
        Kind::Symlink => S_IFLNK,
        Kind::Special(Special::Fifo) => S_IFIFO,
        Kind::Special(Special::Socket) => S_IFSOCK,
        Kind::Special(Special::CharDevice) => S_IFCHR,
        Kind::Special(Special::BlockDevice) => S_IFBLK,
    }
}

/// Attribute cache and negative (miss) cache, both bounded in entries and aged by the TTL,
/// and a memo of HEAD answers that stays valid while the object keeps its ETag and
/// LastModified (so listings need not HEAD an unchanged object again).
pub struct MetaCache {
    /// Attributes, with when the bucket said so (a listing or a HEAD).
    attrs: Cache<Ino, (Attr, std::time::Instant)>,
    misses: Cache<(Ino, String), ()>,
    heads: HeadMemo,
    ttl: Duration,
    /// Hits and misses of the attribute cache, the miss cache and the HEAD memo (for
    /// `pailfs status`).
    stats: [AtomicU64; 5],
}

/// HEAD answers by key, bounded in entries; one is used only while the object keeps the
/// ETag and LastModified it had (a metadata change moves LastModified).
#[derive(Clone)]
pub struct HeadMemo(Cache<String, ObjectInfo>);

impl HeadMemo {
    /// What a HEAD said about the object a listing shows as `listed`, if it is still the same
    /// object.
    pub fn of(&self, listed: &ObjectInfo) -> Option<ObjectInfo> {
        // Listings give LastModified in milliseconds, HEAD in whole seconds.
        let second = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        self.0.get(&listed.key).filter(|h| {
            h.etag == listed.etag && second(h.last_modified) == second(listed.last_modified)
        })
    }

    pub fn put(&self, info: &ObjectInfo) {
        self.0.insert(info.key.clone(), info.clone());
    }
}

/// Which counter of `MetaCache::stats`.
#[derive(Clone, Copy)]
enum Stat {
    AttrHit,
    AttrMiss,
    MissHit,
    HeadHit,
    HeadMiss,
}

impl MetaCache {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        // moka refuses a zero TTL; a 1 ns TTL behaves as "no caching".
        let ttl = ttl.max(Duration::from_nanos(1));
        MetaCache {
            attrs: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            misses: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            heads: HeadMemo(Cache::new(capacity / 4)),
            ttl,
            stats: Default::default(),
        }
    }

    fn count(&self, stat: Stat) {
        self.stats[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `name=value` fields of the cache counters.
    pub fn summary(&self) -> String {
        let get = |s: Stat| self.stats[s as usize].load(Ordering::Relaxed);
        format!(
            "attr_cache_hits={} attr_cache_misses={} miss_cache_hits={} head_memo_hits={} head_memo_misses={}",
            get(Stat::AttrHit),
            get(Stat::AttrMiss),
            get(Stat::MissHit),
            get(Stat::HeadHit),
            get(Stat::HeadMiss)
        )
    }

    /// What a HEAD said about the object a listing shows as `listed`, if it is still the same
    /// object (same ETag and LastModified: a metadata change moves LastModified).
    pub fn head_of(&self, listed: &ObjectInfo) -> Option<ObjectInfo> {
        let found = self.heads.of(listed);
        self.count(if found.is_some() {
            Stat::HeadHit
        } else {
            Stat::HeadMiss
        });
        found
    }

    /// The last HEAD answer for `key`, however old.
    pub fn last_head(&self, key: &str) -> Option<ObjectInfo> {
        self.heads.0.get(key)
    }

    pub fn put_head(&self, info: &ObjectInfo) {
        self.heads.put(info);
    }

    pub fn forget_head(&self, key: &str) {
        self.heads.0.invalidate(key);
    }

    /// The HEAD memo, for work that outlives a request (a listing page sampled ahead).
    pub fn memo(&self) -> HeadMemo {
        self.heads.clone()
    }

    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        // Attributes taken from an older snapshot are as old as it is.
        let found = self
            .attrs
            .get(&ino)
            .filter(|(_, seen)| seen.elapsed() <= self.ttl)
            .map(|(attr, _)| attr);
        self.count(if found.is_some() {
            Stat::AttrHit
        } else {
            Stat::AttrMiss
        });
        found
    }

    /// Attributes learned at most `age` ago (opens want a recent version, not just a
    /// cached one).
    pub fn attr_within(&self, ino: Ino, age: Duration) -> Option<Attr> {
        self.attrs
            .get(&ino)
            .filter(|(_, at)| at.elapsed() <= age)
            .map(|(attr, _)| attr)
    }

    pub fn forget_attr(&self, ino: Ino) {
        self.attrs.invalidate(&ino);
    }

    pub fn put_attr(&self, attr: Attr) {
        self.put_attr_seen(attr, std::time::Instant::now());
    }

    /// Caches attributes the bucket had at `seen` (a snapshot's), keeping that age.
    pub fn put_attr_seen(&self, attr: Attr, seen: std::time::Instant) {
        self.attrs.insert(attr.ino, (attr, seen));
    }

    pub fn is_miss(&self, parent: Ino, name: &str) -> bool {
        let known = self.misses.contains_key(&(parent, name.to_string()));
        if known {
            self.count(Stat::MissHit);
        }
        known
    }

    pub fn forget_miss(&self, parent: Ino, name: &str) {
        self.misses.invalidate(&(parent, name.to_string()));
    }

    pub fn put_miss(&self, parent: Ino, name: &str) {
        self.misses.insert((parent, name.to_string()), ());
    }
}

fn meta_number(info: &ObjectInfo, name: &str) -> Option<u64> {
    header_number(&info.metadata, name)
}

fn header_number(metadata: &Metadata, name: &str) -> Option<u64> {
    let text = metadata.get(name)?;
    // s3fs writes whole seconds; some tools write fractions.
    let whole = text.split('.').next()?;
    whole.trim().parse().ok()
}

/// Whether an object carries attribute metadata (s3fs's or pailfs's headers).
pub fn has_attr_headers(info: &ObjectInfo) -> bool {
    ["mode", "uid", "gid", "mtime"]
        .iter()
        .any(|h| info.metadata.contains_key(*h))
}

/// What an object is, by the type bits of its mode header (s3fs's convention: a symlink's
/// content is its target, a fifo, socket or device node is an empty object); a file when it
/// has none.
pub fn kind_of_object(info: &ObjectInfo) -> Kind {
    meta_number(info, "mode").map_or(Kind::File, |m| object_kind(m & S_IFMT))
}

/// The modification time of an object: its `mtime` header, else LastModified.
/// The `mtime` header of metadata about to be uploaded, if set.
pub fn mtime_header(metadata: &Metadata) -> Option<SystemTime> {
    header_number(metadata, "mtime").map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

pub fn file_mtime(info: &ObjectInfo) -> SystemTime {
    meta_number(info, "mtime")
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(info.last_modified)
}

/// Attributes of a file object: metadata headers where present (`x-amz-meta-mode`, `-uid`,
/// `-gid`, `-mtime` as s3fs writes them), the mount's defaults otherwise.
pub fn file_attr(ino: Ino, info: &ObjectInfo, cfg: &FsConfig) -> Attr {
    let mtime = file_mtime(info);
    let kind = kind_of_object(info);
    let perm = meta_number(info, "mode")
        .map(|m| (m & 0o7777) as u16)
        .unwrap_or(if kind == Kind::Symlink {
            0o777
        } else {
            cfg.file_mode
        });
    let stored_time = |name: &str| {
        meta_number(info, name)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(mtime)
    };
    Attr {
        atime: stored_time("atime"),
        ctime: stored_time("ctime"),
        ino,
        kind,
        size: info.size,
        mtime,
        perm,
        uid: meta_number(info, "uid")
            .map(|v| v as u32)
            .unwrap_or(cfg.uid),
        gid: meta_number(info, "gid")
            .map(|v| v as u32)
            .unwrap_or(cfg.gid),
        rdev: match kind.is_device() {
            true => meta_number(info, RDEV_HEADER).map_or(0, |d| d as u32),
            false => 0,
        },
        etag: Some(info.etag.clone()),
    }
}

/// Attributes of a directory: a marker object's metadata when we have it, defaults otherwise.
pub fn dir_attr(ino: Ino, marker: Option<&ObjectInfo>, cfg: &FsConfig) -> Attr {
    match marker {
        Some(info) => Attr {
            kind: Kind::Dir,
            size: 0,
            perm: meta_number(info, "mode")
                .map(|m| (m & 0o7777) as u16)
                .unwrap_or(cfg.dir_mode),
            etag: None,
            ..file_attr(ino, info, cfg)
        },
        None => Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mtime: cfg.mount_time,
            atime: cfg.mount_time,
            ctime: cfg.mount_time,
            perm: cfg.dir_mode,
            uid: cfg.uid,
            gid: cfg.gid,
            rdev: 0,
            etag: None,
        },
    }
}

/// A change of attributes asked by chmod, chown or utimensat; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrChange {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
}

impl AttrChange {
    pub fn is_empty(&self) -> bool {
        *self == AttrChange::default()
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// The metadata headers that describe `attr` the way s3fs writes them (whole `st_mode` and
/// times in decimal seconds), on top of `base` (other user metadata, such as xattrs, is kept).
pub fn attr_headers(attr: &Attr, base: &Metadata) -> Metadata {
    let mut out = base.clone();
    out.insert(
        "mode".into(),
        (type_bits(attr.kind) | attr.perm as u64 & 0o7777).to_string(),
    );
    if attr.kind.is_device() {
        out.insert(RDEV_HEADER.into(), attr.rdev.to_string());
    }
    out.insert("uid".into(), attr.uid.to_string());
    out.insert("gid".into(), attr.gid.to_string());
    out.insert("mtime".into(), unix_seconds(attr.mtime).to_string());
    out
}

/// `attr` with `change` applied; the `atime` a change carries goes straight to `headers`
/// (pailfs shows atime = mtime, but keeps what s3fs stored or a program set).
pub fn apply_change(attr: &Attr, change: &AttrChange, headers: &mut Metadata) -> Attr {
    if let Some(atime) = change.atime {
        headers.insert("atime".into(), unix_seconds(atime).to_string());
    }
    // A change of attributes is a change of status: ctime moves, as s3fs records it.
    let now = SystemTime::now();
    headers.insert("ctime".into(), unix_seconds(now).to_string());
    Attr {
        perm: change.perm.unwrap_or(attr.perm),
        uid: change.uid.unwrap_or(attr.uid),
        gid: change.gid.unwrap_or(attr.gid),
        mtime: change.mtime.unwrap_or(attr.mtime),
        atime: change.atime.unwrap_or(attr.atime),
        ctime: now,
        ..attr.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn object(metadata: &[(&str, &str)]) -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size: 5,
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            etag: "\"e\"".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            storage_class: None,
        }
    }

    #[test]
    fn defaults_without_metadata_are_never_0000() {
        let cfg = FsConfig::default();
        let a = file_attr(Ino(5), &object(&[]), &cfg);
        assert_eq!(a.perm, 0o644);
        assert_eq!(a.mtime, SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        let d = dir_attr(Ino(6), None, &cfg);
        assert_eq!(d.perm, 0o755);
    }

    #[test]
    fn s3fs_metadata_is_honoured() {
        let cfg = FsConfig::default();
        // s3fs stores the whole st_mode in decimal: 33216 = S_IFREG | 0700.
        let a = file_attr(
            Ino(5),
            &object(&[
                ("mode", "33216"),
                ("uid", "1234"),
                ("gid", "99"),
                ("mtime", "1700000000"),
                ("atime", "1700000100"),
            ]),
            &cfg,
        );
        assert_eq!(
            a.atime,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100)
        );
        assert_eq!(a.ctime, a.mtime, "no ctime header: the mtime");
        assert_eq!(a.perm, 0o700);
        assert_eq!((a.uid, a.gid), (1234, 99));
        assert_eq!(
            a.mtime,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn headers_round_trip_through_s3fs_form() {
        let cfg = FsConfig::default();
        let mut base = Metadata::new();
        base.insert("xattr".into(), "kept".into());
        let attr = Attr {
            ino: Ino(9),
            kind: Kind::Symlink,
            size: 3,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000),
            atime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000),
            ctime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000),
            perm: 0o777,
            uid: 1000,
            gid: 1001,
            rdev: 0,
            etag: None,
        };
        let headers = attr_headers(&attr, &base);
        // s3fs's own value for a symlink: S_IFLNK | 0777 = 41471.
        assert_eq!(headers["mode"], "41471");
        assert_eq!(headers["xattr"], "kept");
        let info = ObjectInfo {
            metadata: headers,
            ..object(&[])
        };
        let back = file_attr(Ino(9), &info, &cfg);
        assert_eq!(back.kind, Kind::Symlink);
        assert_eq!((back.perm, back.uid, back.gid), (0o777, 1000, 1001));
        assert_eq!(back.mtime, attr.mtime);
    }
}
