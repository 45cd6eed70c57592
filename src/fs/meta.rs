//! Attributes: how objects map to mode/uid/gid/mtime (s3fs-compatible metadata headers, or
//! the mount's defaults), and the bounded TTL caches of attributes and of misses.

use std::time::{Duration, SystemTime};

use moka::sync::Cache;

use super::inode::Ino;
use super::{Attr, FsConfig, Kind};
use crate::store::ObjectInfo;

/// Attribute cache and negative (miss) cache, both bounded in entries and aged by the TTL.
pub struct MetaCache {
    attrs: Cache<Ino, Attr>,
    misses: Cache<(Ino, String), ()>,
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
        }
    }

    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        self.attrs.get(&ino)
    }

    pub fn forget_attr(&self, ino: Ino) {
        self.attrs.invalidate(&ino);
    }

    pub fn put_attr(&self, attr: Attr) {
        self.attrs.insert(attr.ino, attr);
    }

    pub fn is_miss(&self, parent: Ino, name: &str) -> bool {
        self.misses.contains_key(&(parent, name.to_string()))
    }

    pub fn forget_miss(&self, parent: Ino, name: &str) {
        self.misses.invalidate(&(parent, name.to_string()));
    }

    pub fn put_miss(&self, parent: Ino, name: &str) {
        self.misses.insert((parent, name.to_string()), ());
    }
}

fn meta_number(info: &ObjectInfo, name: &str) -> Option<u64> {
    let text = info.metadata.get(name)?;
    // s3fs writes whole seconds; some tools write fractions.
    let whole = text.split('.').next()?;
    whole.trim().parse().ok()
}

/// Attributes of a file object: metadata headers where present (`x-amz-meta-mode`, `-uid`,
/// `-gid`, `-mtime` as s3fs writes them), the mount's defaults otherwise.
pub fn file_attr(ino: Ino, info: &ObjectInfo, cfg: &FsConfig) -> Attr {
    let mtime = meta_number(info, "mtime")
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(info.last_modified);
    let perm = meta_number(info, "mode")
        .map(|m| (m & 0o7777) as u16)
        .unwrap_or(cfg.file_mode);
    Attr {
        ino,
        kind: Kind::File,
        size: info.size,
        mtime,
        perm,
        uid: meta_number(info, "uid")
            .map(|v| v as u32)
            .unwrap_or(cfg.uid),
        gid: meta_number(info, "gid")
            .map(|v| v as u32)
            .unwrap_or(cfg.gid),
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
            perm: cfg.dir_mode,
            uid: cfg.uid,
            gid: cfg.gid,
            etag: None,
        },
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
            ]),
            &cfg,
        );
        assert_eq!(a.perm, 0o700);
        assert_eq!((a.uid, a.gid), (1234, 99));
        assert_eq!(
            a.mtime,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }
}
