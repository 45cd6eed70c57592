//! What the mount knows of names: the inode table the kernel's references point into, the
//! attributes and misses it may answer from memory, the directory snapshots finished listings
//! leave, the listing pages known to carry no metadata, the log of keys that cannot be
//! names, and the listings started ahead of a tree walk. Every lookup, listing and change of the tree reads or updates it.

use std::sync::Mutex;
use std::time::Duration;

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
    /// Listing pages whose sample showed no attribute metadata (plain buckets), for
    /// --metadata-ttl: listing them again sends no HEAD.
    pub plain_listings: moka::sync::Cache<String, ()>,
    pub odd_keys: OddKeyLog,
    /// First pages of subfolders listed ahead of a tree walk.
    pub walk: WalkAhead,
}

impl NameCache {
    pub fn new(cfg: &FsConfig) -> NameCache {
        NameCache {
            inodes: Mutex::new(InodeTable::default()),
            meta: MetaCache::new(cfg.metadata_ttl, cfg.cache_capacity),
            snapshots: Snapshots::new(cfg.metadata_ttl, cfg.snapshot_memory),
            plain_listings: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(cfg.metadata_ttl.max(Duration::from_nanos(1)))
                .build(),
            odd_keys: OddKeyLog::default(),
            walk: WalkAhead::default(),
        }
    }
}
