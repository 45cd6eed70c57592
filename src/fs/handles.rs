//! Open handles: files (a reader of the bucket's object, or a handle on a staging copy) and
//! directories (a listing stream), the numbers the kernel knows them by, the version of each
//! file whose pages the kernel caches, and what reads served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::dir::DirStream;
use super::inode::Ino;
use super::OpenFile;

pub(super) struct Handles {
    pub files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    pub dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    pub next_fh: AtomicU64,
    /// ETag whose content the kernel page cache holds, per file: lets a reopen keep the cache.
    pub cached_etags: moka::sync::Cache<Ino, String>,
    pub reads_served: AtomicU64,
    pub bytes_served: AtomicU64,
}

impl Handles {
    pub fn new(capacity: u64) -> Handles {
        Handles {
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cached_etags: moka::sync::Cache::new(capacity),
            reads_served: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
        }
    }

    /// A handle number never given before.
    pub fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a read served to a program.
    pub fn served(&self, bytes: usize) {
        self.reads_served.fetch_add(1, Ordering::Relaxed);
        self.bytes_served.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}
