//! What the mount knows of names: the inode table the kernel's references point into, the
//! attributes and misses it may answer from memory, the directory snapshots finished listings
//! leave, the listing pages known to carry no metadata, the log of keys that cannot be
//! names, and the listings started ahead of a tree walk. Every lookup, listing and change of the tree reads or updates it.

use std::sync::Mutex;

use super::dir::{PagesHeld, MOUNT_PAGES_AHEAD};
use super::inode::InodeTable;
use super::meta::MetaCache;
use super::names::OddKeyLog;
use super::snapshot::Snapshots;
use super::walk_ahead::WalkAhead;
use super::FsConfig;

pub(super) struct NameCache {
    pub inodes: Mutex<InodeTable>,
    pub meta: MetaCache,
    pub snapshots: Snapshots,
    pub odd_keys: OddKeyLog,
    /// First pages of subfolders listed ahead of a tree walk.
    pub walk: WalkAhead,
    /// Listing pages fetched ahead, across the open directories.
    pub pages_ahead: PagesHeld,
}

impl NameCache {
    pub fn new(cfg: &FsConfig) -> NameCache {
        NameCache {
            inodes: Mutex::new(InodeTable::default()),
            meta: MetaCache::new(cfg.metadata_ttl, cfg.cache_capacity),
            snapshots: Snapshots::new(cfg.metadata_ttl, cfg.snapshot_memory),
            odd_keys: OddKeyLog::default(),
            walk: WalkAhead::default(),
            pages_ahead: PagesHeld::new(MOUNT_PAGES_AHEAD),
        }
    }
}
