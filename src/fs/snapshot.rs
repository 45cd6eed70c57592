//! Directory snapshots: a listing read to its end is a snapshot of the directory. While it
//! is fresh (`--metadata-ttl` from the end of the listing), lookups and `stat`s of names in
//! that directory are answered from it, hits and misses alike, with no request: `du`, `find`,
//! `rsync` and file managers read a directory and then stat every entry, and that walk costs
//! nothing beyond the listing. Changes made through this mount update the snapshots; a
//! directory this mount creates starts as a complete, empty snapshot, so creating a tree
//! (`tar x`, `cp -r`) looks nothing up.
//!
//! Memory is bounded: all snapshots together stay within a byte budget (least recently used
//! directories go first), and a directory larger than the budget allows is not kept at all
//! (its walk falls back to the attribute cache and the kernel's, page by page).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::inode::Ino;
use super::{Attr, Kind};

/// What a snapshot says about a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name exists, with these attributes (its inode number is the caller's to set), as
    /// the bucket had them at the given time.
    Present(Kind, Attr, Instant),
    /// The directory was listed completely, recently, and the name was not in it.
    Absent,
    /// No fresh snapshot of the directory.
    Unknown,
}

struct Snapshot {
    /// When the listing ended (or the directory was created here).
    taken: Instant,
    entries: HashMap<Box<str>, (Kind, Attr)>,
    bytes: u64,
}

/// Bytes one entry costs, roughly: the name, the attributes, the ETag and the map's share.
fn entry_bytes(name: &str, attr: &Attr) -> u64 {
    (name.len()
        + std::mem::size_of::<(Box<str>, Kind, Attr)>()
        + attr.etag.as_ref().map_or(0, String::len)
        + 32) as u64
}

struct Inner {
    dirs: LruCache<Ino, Snapshot>,
    bytes: u64,
    /// When each directory last changed through this mount (a listing that started before
    /// a change may miss it, and is not kept as a snapshot).
    changed: HashMap<Ino, Instant>,
}

pub struct Snapshots {
    inner: Mutex<Inner>,
    ttl: Duration,
    budget: u64,
}

/// A listing being collected into a snapshot as its entries are handed out in order.
pub struct Collector {
    started: Instant,
    entries: Option<Vec<(Box<str>, Kind, Attr)>>,
    bytes: u64,
}

impl Collector {
    pub fn new() -> Collector {
        Collector {
            started: Instant::now(),
            entries: Some(Vec::new()),
            bytes: 0,
        }
    }

    /// Entry `index` of the listing was handed out (each index may come more than once when
    /// a reader's buffer fills; only the next one in order counts). A directory past
    /// `budget` bytes stops being collected.
    pub fn add(&mut self, index: u64, name: &str, kind: Kind, attr: &Attr, budget: u64) {
        let Some(entries) = &mut self.entries else {
            return;
        };
        if index != entries.len() as u64 {
            return;
        }
        self.bytes += entry_bytes(name, attr);
        if self.bytes > budget {
            self.entries = None;
            return;
        }
        entries.push((name.into(), kind, attr.clone()));
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Snapshots {
    /// Snapshots fresh for `ttl`, all together within `budget` bytes.
    pub fn new(ttl: Duration, budget: u64) -> Snapshots {
        Snapshots {
            inner: Mutex::new(Inner {
                dirs: LruCache::unbounded(),
                bytes: 0,
                changed: HashMap::new(),
            }),
            ttl,
            budget,
        }
    }

    /// The largest snapshot kept (a directory above it is not collected).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// What the snapshot of `dir` says about `name`.
    pub fn lookup(&self, dir: Ino, name: &str) -> Answer {
        let mut inner = lock(&self.inner);
        let Some(snapshot) = inner.dirs.get(&dir) else {
            return Answer::Unknown;
        };
        if snapshot.taken.elapsed() > self.ttl {
            if let Some(gone) = inner.dirs.pop(&dir) {
                inner.bytes -= gone.bytes;
            }
            return Answer::Unknown;
        }
        match snapshot.entries.get(name) {
            // A file whose version is not known (being written here) is asked for: reads
            // pin the ETag they are opened at.
            Some((kind, attr)) if *kind != Kind::Dir && attr.etag.is_none() => Answer::Unknown,
            Some((kind, attr)) => Answer::Present(*kind, attr.clone(), snapshot.taken),
            None => Answer::Absent,
        }
    }

    /// A complete listing of `dir` ends: it becomes the directory's snapshot, unless the
    /// directory changed through this mount since the listing started.
    pub fn commit(&self, dir: Ino, collected: Collector) {
        let Some(list) = collected.entries else {
            return;
        };
        let mut inner = lock(&self.inner);
        if inner
            .changed
            .get(&dir)
            .is_some_and(|at| *at >= collected.started)
        {
            return;
        }
        let entries = list
            .into_iter()
            .map(|(name, kind, attr)| (name, (kind, attr)))
            .collect();
        self.insert(&mut inner, dir, entries, collected.bytes);
    }

    /// `dir` was just created by this mount: empty, and known to be.
    pub fn start_empty(&self, dir: Ino) {
        let mut inner = lock(&self.inner);
        self.insert(&mut inner, dir, HashMap::new(), 0);
    }

    fn insert(
        &self,
        inner: &mut Inner,
        dir: Ino,
        entries: HashMap<Box<str>, (Kind, Attr)>,
        bytes: u64,
    ) {
        if let Some(old) = inner.dirs.pop(&dir) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        inner.dirs.put(
            dir,
            Snapshot {
                taken: Instant::now(),
                entries,
                bytes,
            },
        );
        while inner.bytes > self.budget {
            match inner.dirs.pop_lru() {
                Some((_, gone)) => inner.bytes -= gone.bytes,
                None => break,
            }
        }
    }

    /// `name` in `dir` changed through this mount: now `entry`, or gone (`None`).
    pub fn note(&self, dir: Ino, name: &str, entry: Option<(Kind, Attr)>) {
        let mut inner = lock(&self.inner);
        self.mark_changed(&mut inner, dir);
        let Some(snapshot) = inner.dirs.peek_mut(&dir) else {
            return;
        };
        let before = match snapshot.entries.remove(name) {
            Some((_, attr)) => entry_bytes(name, &attr),
            None => 0,
        };
        let after = match entry {
            Some((kind, attr)) => {
                let bytes = entry_bytes(name, &attr);
                snapshot.entries.insert(name.into(), (kind, attr));
                bytes
            }
            None => 0,
        };
        snapshot.bytes = snapshot.bytes + after - before;
        inner.bytes = inner.bytes + after - before;
    }

    /// Forgets the snapshot of `dir` (removed, or its entries' objects were all copied).
    pub fn forget(&self, dir: Ino) {
        let mut inner = lock(&self.inner);
        self.mark_changed(&mut inner, dir);
        if let Some(gone) = inner.dirs.pop(&dir) {
            inner.bytes -= gone.bytes;
        }
    }

    fn mark_changed(&self, inner: &mut Inner, dir: Ino) {
        let now = Instant::now();
        if inner.changed.len() > 10_000 {
            // Only changes younger than any listing still running matter.
            let horizon = Duration::from_secs(600).max(self.ttl);
            inner
                .changed
                .retain(|_, at| now.duration_since(*at) < horizon);
        }
        inner.changed.insert(dir, now);
    }

    /// (directories kept, bytes they take), for `pailfs status`.
    pub fn usage(&self) -> (usize, u64) {
        let inner = lock(&self.inner);
        (inner.dirs.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(size: u64) -> Attr {
        let t = std::time::SystemTime::UNIX_EPOCH;
        Attr {
            ino: Ino(0),
            kind: Kind::File,
            size,
            mtime: t,
            atime: t,
            ctime: t,
            perm: 0o644,
            uid: 0,
            gid: 0,
            etag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
        }
    }

    fn listed(names: &[&str]) -> Collector {
        let mut c = Collector::new();
        for (i, name) in names.iter().enumerate() {
            c.add(i as u64, name, Kind::File, &attr(i as u64), u64::MAX);
        }
        c
    }

    #[test]
    fn a_complete_listing_answers_hits_and_misses_until_it_expires() {
        let s = Snapshots::new(Duration::from_millis(50), 1 << 20);
        let dir = Ino(7);
        assert_eq!(s.lookup(dir, "a"), Answer::Unknown);
        s.commit(dir, listed(&["a", "b"]));
        assert!(matches!(s.lookup(dir, "b"), Answer::Present(Kind::File, a, _) if a.size == 1));
        assert_eq!(s.lookup(dir, "zzz"), Answer::Absent);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.lookup(dir, "a"), Answer::Unknown, "expired");
        assert_eq!(s.usage(), (0, 0));
    }

    #[test]
    fn changes_through_the_mount_update_it_and_a_listing_racing_a_change_is_not_kept() {
        let s = Snapshots::new(Duration::from_secs(60), 1 << 20);
        let dir = Ino(7);
        let racing = listed(&["old"]);
        s.note(dir, "new", Some((Kind::File, attr(3))));
        s.commit(dir, racing);
        assert_eq!(
            s.lookup(dir, "new"),
            Answer::Unknown,
            "the racing listing was dropped"
        );
        s.commit(dir, listed(&["old", "new"]));
        s.note(dir, "old", None);
        assert_eq!(s.lookup(dir, "old"), Answer::Absent);
        s.start_empty(Ino(9));
        assert_eq!(s.lookup(Ino(9), "anything"), Answer::Absent);
        s.note(Ino(9), "x", Some((Kind::Dir, attr(0))));
        assert!(matches!(
            s.lookup(Ino(9), "x"),
            Answer::Present(Kind::Dir, _, _)
        ));
    }

    #[test]
    fn the_budget_holds_at_a_million_entries() {
        let budget = 16 << 20;
        let s = Snapshots::new(Duration::from_secs(60), budget);
        // A million-entry directory is not collected past the budget...
        let mut c = Collector::new();
        let a = attr(1);
        for i in 0..1_000_000u64 {
            c.add(i, &format!("file-{i:07}"), Kind::File, &a, budget);
        }
        assert!(c.entries.is_none(), "collection stopped at the budget");
        s.commit(Ino(2), c);
        assert_eq!(s.usage(), (0, 0));
        // ...and many directories evict the least recently used ones.
        for d in 0..2_000u64 {
            let names: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            s.commit(Ino(100 + d), listed(&names));
            assert!(s.usage().1 <= budget);
        }
        let (dirs, bytes) = s.usage();
        assert!(
            dirs > 10 && dirs < 2_000 && bytes <= budget,
            "{dirs} dirs, {bytes} bytes"
        );
        assert_eq!(
            s.lookup(Ino(100), "f1"),
            Answer::Unknown,
            "the oldest went first"
        );
        assert!(matches!(s.lookup(Ino(2099), "f1"), Answer::Present(..)));
    }
}
