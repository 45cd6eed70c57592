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
use std::time::{Duration, Instant, SystemTime};

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
    entries: Entries,
    bytes: u64,
}

/// Nanoseconds since the epoch (1678 to 2262): half a `SystemTime`.
fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn time(nanos: i64) -> SystemTime {
    let d = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}

/// One name of a snapshot, packed (a big walk keeps hundreds of thousands): the name and the
/// ETag share one allocation, times are 8 bytes, the inode number is not kept (the inode
/// table has it), and the entry is its own key (no second copy of the name in the index).
struct Entry {
    /// The name, then the ETag (its last `etag_len` bytes).
    text: Box<str>,
    /// `u16::MAX` when there is no ETag (a file being written here, a directory).
    etag_len: u16,
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    /// The size; for a device node (always empty), its device number instead.
    size: u64,
    mtime: i64,
    atime: i64,
    ctime: i64,
}

impl Entry {
    fn new(name: &str, kind: Kind, attr: &Attr) -> Entry {
        // An ETag too long to pack (none real is) is dropped: the name is then asked for.
        let etag = attr
            .etag
            .as_deref()
            .filter(|e| e.len() < usize::from(u16::MAX));
        Entry {
            text: match etag {
                Some(etag) => format!("{name}{etag}").into(),
                None => name.into(),
            },
            etag_len: etag.map_or(u16::MAX, |e| e.len() as u16),
            kind,
            perm: attr.perm,
            uid: attr.uid,
            gid: attr.gid,
            size: if kind.is_device() {
                u64::from(attr.rdev)
            } else {
                attr.size
            },
            mtime: nanos(attr.mtime),
            atime: nanos(attr.atime),
            ctime: nanos(attr.ctime),
        }
    }

    fn etag(&self) -> Option<&str> {
        (self.etag_len != u16::MAX).then(|| &self.text[self.text.len() - self.etag_len as usize..])
    }

    fn name(&self) -> &str {
        match self.etag() {
            Some(etag) => &self.text[..self.text.len() - etag.len()],
            None => &self.text,
        }
    }

    fn attr(&self) -> Attr {
        Attr {
            ino: Ino(0),
            kind: self.kind,
            size: if self.kind.is_device() { 0 } else { self.size },
            rdev: if self.kind.is_device() {
                self.size as u32
            } else {
                0
            },
            mtime: time(self.mtime),
            atime: time(self.atime),
            ctime: time(self.ctime),
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            etag: self.etag().map(str::to_string),
        }
    }

    /// What it takes in memory: the entry in the index (with the table's slack and control
    /// byte) and its text (with the allocator's header and rounding).
    fn bytes(&self) -> u64 {
        entry_bytes(self.text.len())
    }
}

fn entry_bytes(text_len: usize) -> u64 {
    (std::mem::size_of::<Entry>() * 8 / 7 + 1 + text_len.div_ceil(16) * 16 + 16) as u64
}

fn name_hash(name: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(name)
}

/// The entries of one snapshot, found by name.
#[derive(Default)]
struct Entries(hashbrown::HashTable<Entry>);

impl Entries {
    fn get(&self, name: &str) -> Option<&Entry> {
        self.0.find(name_hash(name), |e| e.name() == name)
    }

    fn remove(&mut self, name: &str) -> Option<Entry> {
        self.0
            .find_entry(name_hash(name), |e| e.name() == name)
            .ok()
            .map(|found| found.remove().0)
    }

    /// Adds `entry`, replacing one of the same name; returns the replaced one.
    fn put(&mut self, entry: Entry) -> Option<Entry> {
        let replaced = self.remove(entry.name());
        self.0
            .insert_unique(name_hash(entry.name()), entry, |e| name_hash(e.name()));
        replaced
    }
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
    /// When the listing was asked for (a change made here after it may be missing from it).
    pub started: Instant,
    entries: Option<Entries>,
    /// Entries handed out so far (the next in order is the only one taken).
    count: u64,
    bytes: u64,
}

impl Collector {
    pub fn new() -> Collector {
        Collector {
            started: Instant::now(),
            entries: Some(Entries::default()),
            count: 0,
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
        if index != self.count {
            return;
        }
        self.count += 1;
        let entry = Entry::new(name, kind, attr);
        self.bytes += entry.bytes();
        if self.bytes > budget {
            self.entries = None;
            return;
        }
        entries.put(entry);
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
            Some(e) if e.kind != Kind::Dir && e.etag().is_none() => Answer::Unknown,
            Some(e) => Answer::Present(e.kind, e.attr(), snapshot.taken),
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
        self.insert(&mut inner, dir, list, collected.bytes);
    }

    /// Whether `dir` changed through this mount at or after `t`.
    pub fn changed_since(&self, dir: Ino, t: Instant) -> bool {
        lock(&self.inner)
            .changed
            .get(&dir)
            .is_some_and(|at| *at >= t)
    }

    /// `dir` was just created by this mount: empty, and known to be.
    pub fn start_empty(&self, dir: Ino) {
        let mut inner = lock(&self.inner);
        self.insert(&mut inner, dir, Entries::default(), 0);
    }

    fn insert(&self, inner: &mut Inner, dir: Ino, entries: Entries, bytes: u64) {
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
        let before = snapshot.entries.remove(name).map_or(0, |e| e.bytes());
        let after = match entry {
            Some((kind, attr)) => {
                let entry = Entry::new(name, kind, &attr);
                let bytes = entry.bytes();
                snapshot.entries.put(entry);
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
            rdev: 0,
            etag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
        }
    }

    #[test]
    fn a_device_keeps_its_number_and_a_file_its_size() {
        let device = Attr {
            kind: Kind::Special(crate::fs::Special::BlockDevice),
            rdev: 0x801,
            ..attr(0)
        };
        let back = Entry::new("sda1", device.kind, &device).attr();
        assert_eq!((back.kind, back.rdev, back.size), (device.kind, 0x801, 0));
        let file = Entry::new("f", Kind::File, &attr(77)).attr();
        assert_eq!((file.rdev, file.size), (0, 77));
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

    #[test]
    fn a_packed_entry_gives_back_the_attributes_it_was_made_of() {
        let mut a = attr(12345);
        a.mtime = SystemTime::UNIX_EPOCH + Duration::new(1_764_000_000, 123_456_789);
        a.atime = SystemTime::UNIX_EPOCH - Duration::from_secs(86_400);
        a.perm = 0o750;
        a.uid = 1000;
        a.gid = 1001;
        for etag in [a.etag.clone(), None] {
            let a = Attr { etag, ..a.clone() };
            let e = Entry::new("photo.jpg", Kind::File, &a);
            assert_eq!(e.name(), "photo.jpg");
            assert_eq!(e.attr(), a);
        }
        assert!(
            std::mem::size_of::<Entry>() <= 64,
            "{} bytes",
            std::mem::size_of::<Entry>()
        );
    }
}
