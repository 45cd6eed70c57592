//! The staging journal: a durable record of every staging file saying which object its
//! bytes belong to and how far they are on their way to the bucket, so that a mount started
//! after a crash (SIGKILL, the OOM killer, a power cut) can finish what was promised and hand
//! the rest to the user (`Fs::reconcile`).
//!
//! Each staging file is `staging/NAME.data`, where NAME carries a sequence number and the
//! file's path, so that a person looking into the cache directory sees what each one holds.
//! Its `Record`s go to one append-only log, `staging/journal.log`: a line per change, the
//! last line of an entry wins, and a line without a record says the entry is gone. A change
//! a program is told about is durable: its line is appended and the log fdatasynced (after
//! the directory, when a staging file was created since its last sync), one sync where a
//! record file per change had cost three, and no file created per change. The log is
//! rewritten with only the live entries when it grows long, and at every start.
//!
//! The cache directory is held by one live mount at a time (`CacheLock`, an flock).
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::ranges::RangeSet;
use crate::store::Metadata;

/// Where a staging copy stands on its way to the bucket. The journal records the same
/// states, and reconciling after a crash acts on them:
///
/// | state       | meaning                                               | after a crash            |
/// |-------------|-------------------------------------------------------|--------------------------|
/// | `Clean`     | the bucket holds these bytes                          | staging file deleted     |
/// | `Writing`   | changed; no program was told the change is saved      | moved to `recovery/`     |
/// | `Closed`    | a close was acknowledged (async write-back)           | uploaded                 |
/// | `Uploading` | an acknowledged copy is being uploaded                | uploaded again           |
/// | `Failed`    | an upload failed and the program was told             | (already in `recovery/`) |
/// | `Unlinked`  | the name was removed while the file was open          | deleted, never uploaded  |
///
/// Any multipart upload recorded with the state is aborted after a crash: a new upload
/// starts from the staging file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagedState {
    Clean,
    Writing,
    Closed,
    Uploading,
    Failed,
    Unlinked,
}

impl StagedState {
    /// Whether the bytes differ from the bucket's and must still go up.
    pub fn is_dirty(self) -> bool {
        matches!(
            self,
            StagedState::Writing | StagedState::Closed | StagedState::Uploading
        )
    }

    /// Whether a program was told the bytes are saved (they must reach the bucket).
    pub fn is_acknowledged(self) -> bool {
        matches!(self, StagedState::Closed | StagedState::Uploading)
    }
}

/// The version of the object a staging copy was made against (for the conflict check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// The object did not exist (a new file).
    Absent,
    /// The object had this ETag.
    Etag(String),
    /// Not known (nothing to compare with).
    Unknown,
}

/// The object a staging copy mirrors: bytes of `[0, len)` not in `local` still come from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub key: String,
    pub etag: String,
    /// Bytes at the start of the file that may still come from the object.
    pub len: u64,
    /// Offsets below `len` that the staging file holds (fetched or written).
    pub local: RangeSet,
    /// Offsets below `len` that a program changed.
    pub written: RangeSet,
}

/// What the journal knows of one staging file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The bucket (and endpoint) the key belongs to: a record is only uploaded by a mount of
    /// the same bucket.
    pub location: String,
    /// The object key (absolute in the bucket).
    pub key: String,
    /// The path below the mount root (names the recovery copy).
    pub path: String,
    pub state: StagedState,
    /// A multipart upload started for these bytes and not finished (aborted after a crash).
    pub upload_id: Option<String>,
    pub base: Base,
    /// The metadata headers the object is uploaded with (mtime included).
    pub metadata: Metadata,
    pub size: u64,
    pub source: Option<Source>,
}

/// The folders and the log in the cache directory: `staging/` holds only data files, and
/// `spare/` the emptied ones kept for reuse.
pub const STAGING: &str = "staging";
pub const SPARE: &str = "spare";
pub const LOG: &str = "journal.log";
/// Lines the log may hold before it is rewritten with only the live entries (the rewrite
/// also waits until the log holds four times as many lines as live entries).
const REWRITE_AFTER_LINES: usize = 1024;

/// One line of the log: entry `n`, whose bytes are in `data` (a file name in `staging/`),
/// now has `record`; no record: the entry is gone. Written from borrowed parts
/// (`Line<&str, &Record>`), read into owned ones (`ReadLine`).
#[derive(Serialize, Deserialize)]
struct Line<D, R> {
    n: u64,
    data: D,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    record: Option<R>,
}

type ReadLine = Line<String, Record>;

fn none<R>() -> Option<R> {
    None
}

/// An entry the log holds: its data file's name and its record as last written.
#[derive(Clone)]
struct Live {
    data: String,
    record: Record,
}

/// The log and what it says, for the entries of this mount and those a dead daemon left.
pub struct Journal {
    staging: PathBuf,
    spare: PathBuf,
    log_path: PathBuf,
    /// The next entry number (numbers are never reused: a stale line cannot name a new file).
    next: AtomicU64,
    log: Mutex<Log>,
    /// Staging files created, and how many of them the last directory sync covered.
    created: AtomicU64,
    dir_synced: AtomicU64,
    /// Emptied staging files kept for new entries: renaming one costs far less than
    /// allocating an inode (on ext4 without a journal, each new inode scans past every
    /// inode freed in the last seconds, and staging frees one per file uploaded).
    spares: Mutex<Vec<(PathBuf, std::fs::File)>>,
    spare_names: AtomicU64,
}

/// Emptied staging files kept for reuse, at most.
const SPARES: usize = 64;

struct Log {
    file: Arc<std::fs::File>,
    lines: usize,
    live: BTreeMap<u64, Live>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longest part of a path kept in a staging file name.
const NAME_PART: usize = 120;

impl Journal {
    /// Opens the journal of the cache directory `root` (whose `staging/` and `spare/` exist):
    /// reads what the log (and records of an older pailfs, one `NAME.json` per entry in
    /// `staging/`) says, and rewrites the log with only the live entries.
    pub fn open(root: &Path) -> std::io::Result<Journal> {
        let (staging, spare, log_path) = (root.join(STAGING), root.join(SPARE), root.join(LOG));
        let live = read_live(root)?;
        // Numbers go on past every name seen; old record files go once the log holds them.
        let mut highest_file = None;
        let mut old_records = Vec::new();
        for entry in std::fs::read_dir(&staging)?.filter_map(|e| e.ok()) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let number = name.split('-').next().and_then(|n| n.parse::<u64>().ok());
            highest_file = highest_file.max(number);
            if name.ends_with(".json") || name.ends_with(".tmp") {
                old_records.push(path);
            }
        }
        let next = live
            .keys()
            .next_back()
            .copied()
            .max(highest_file)
            .map_or(0, |n| n + 1);
        let file = rewrite(&log_path, &live)?;
        for path in old_records {
            let _ = std::fs::remove_file(&path);
        }
        for entry in std::fs::read_dir(&spare)?.filter_map(|e| e.ok()) {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Journal {
            staging,
            spare,
            log_path,
            next: AtomicU64::new(next),
            log: Mutex::new(Log {
                file: Arc::new(file),
                lines: live.len(),
                live,
            }),
            created: AtomicU64::new(0),
            dir_synced: AtomicU64::new(0),
            spares: Mutex::new(Vec::new()),
            spare_names: AtomicU64::new(0),
        })
    }

    /// A new entry for `record` with its data file created (empty, nothing else there);
    /// its record is written by its first `update`.
    pub fn create_entry(
        self: &Arc<Self>,
        record: Record,
    ) -> std::io::Result<(JournalEntry, std::fs::File)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut name = super::names::safe_file_name(&record.path);
        if name.len() > NAME_PART {
            name = name[name.len() - NAME_PART..].to_string();
        }
        let data = format!("{n:06}-{name}.data");
        let entry = JournalEntry {
            journal: self.clone(),
            n,
            data: self.staging.join(&data),
            data_name: data,
            record: Mutex::new((record, false)),
        };
        let spare = lock(&self.spares).pop();
        let file = match spare {
            Some((path, file)) if std::fs::rename(&path, &entry.data).is_ok() => file,
            _ => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&entry.data)?,
        };
        self.created.fetch_add(1, Ordering::AcqRel);
        Ok((entry, file))
    }

    /// Disposes of the data file of an entry that is done (its bytes are in the bucket, or
    /// nobody may have them): emptied and kept for a new entry, or deleted.
    pub fn retire(&self, path: &Path, file: &std::fs::File) {
        if lock(&self.spares).len() < SPARES && file.set_len(0).is_ok() {
            if let Ok(file) = file.try_clone() {
                let n = self.spare_names.fetch_add(1, Ordering::Relaxed);
                let spare = self.spare.join(n.to_string());
                if std::fs::rename(path, &spare).is_ok() {
                    lock(&self.spares).push((spare, file));
                    return;
                }
            }
        }
        let _ = std::fs::remove_file(path);
    }

    /// What a daemon that did not finish left: the entries the log holds, and data files
    /// nobody can say anything about (no record, or written by a pailfs without a journal).
    pub fn leftovers(self: &Arc<Self>) -> std::io::Result<Leftovers> {
        let live = lock(&self.log).live.clone();
        let known: std::collections::HashSet<&str> =
            live.values().map(|l| l.data.as_str()).collect();
        let mut unknown: Vec<PathBuf> = std::fs::read_dir(&self.staging)?
            .filter_map(|e| e.ok())
            .filter(|e| !known.contains(e.file_name().to_string_lossy().as_ref()))
            .map(|e| e.path())
            .collect();
        unknown.sort();
        let entries = live
            .into_iter()
            .map(|(n, l)| JournalEntry {
                journal: self.clone(),
                n,
                data: self.staging.join(&l.data),
                data_name: l.data,
                record: Mutex::new((l.record, false)),
            })
            .collect();
        Ok(Leftovers { entries, unknown })
    }

    /// Appends what entry `n` now is (`None`: gone); `durable` returns once the line (and
    /// every staging file created before it) would survive a power cut.
    fn append(
        &self,
        n: u64,
        data: &str,
        record: Option<&Record>,
        durable: bool,
    ) -> std::io::Result<()> {
        let mut text =
            serde_json::to_vec(&Line { n, data, record }).map_err(std::io::Error::other)?;
        text.push(b'\n');
        if durable {
            self.sync_dir()?;
        }
        let file = {
            let mut log = lock(&self.log);
            (&*log.file).write_all(&text)?;
            log.lines += 1;
            match record {
                Some(record) => match log.live.get_mut(&n) {
                    Some(live) => live.record = record.clone(),
                    None => {
                        let data = data.to_string();
                        let record = record.clone();
                        log.live.insert(n, Live { data, record });
                    }
                },
                None => {
                    log.live.remove(&n);
                }
            }
            if log.lines >= REWRITE_AFTER_LINES.max(4 * log.live.len()) {
                // The rewrite is durable: everything appended so far is in it.
                log.file = Arc::new(rewrite(&self.log_path, &log.live)?);
                log.lines = log.live.len();
                return Ok(());
            }
            log.file.clone()
        };
        if durable {
            // Outside the lock: closes that overlap share the disk's flushes.
            file.sync_data()?;
        }
        Ok(())
    }

    /// Makes the names of the staging files created so far durable (a record that survives
    /// a power cut must find its data file).
    fn sync_dir(&self) -> std::io::Result<()> {
        let created = self.created.load(Ordering::Acquire);
        if self.dir_synced.load(Ordering::Acquire) >= created {
            return Ok(());
        }
        std::fs::File::open(&self.staging)?.sync_all()?;
        self.dir_synced.fetch_max(created, Ordering::AcqRel);
        Ok(())
    }
}

/// Writes the log at `path` anew holding `live`, durably, and returns it open for appending.
fn rewrite(path: &Path, live: &BTreeMap<u64, Live>) -> std::io::Result<std::fs::File> {
    let tmp = path.with_extension("log.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for (n, l) in live {
        serde_json::to_writer(
            &mut out,
            &Line {
                n: *n,
                data: l.data.as_str(),
                record: Some(&l.record),
            },
        )
        .map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    drop(file);
    std::fs::OpenOptions::new().append(true).open(path)
}

/// The live entries the log of the cache directory `root` and any older per-entry record
/// files in its `staging/` hold. A line cut short by a crash (or garbage after the last
/// sync) is skipped.
fn read_live(root: &Path) -> std::io::Result<BTreeMap<u64, Live>> {
    let (staging, log_path) = (root.join(STAGING), root.join(LOG));
    let mut live = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&staging)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let n = stem.split('-').next().and_then(|n| n.parse::<u64>().ok());
        let record = std::fs::read(&path)
            .ok()
            .and_then(|text| serde_json::from_slice::<Record>(&text).ok());
        match (n, record) {
            (Some(n), Some(record)) => {
                let data = format!("{stem}.data");
                live.insert(n, Live { data, record });
            }
            _ => {
                tracing::warn!(record = %path.display(), "unreadable staging record; its data file is treated as unknown")
            }
        }
    }
    let text = match std::fs::read(&log_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut skipped = 0;
    for raw in text.split(|b| *b == b'\n') {
        // Zeros stand where a crash left the log's length ahead of its bytes.
        let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
        let raw = &raw[start..];
        if raw.is_empty() {
            continue;
        }
        match serde_json::from_slice::<ReadLine>(raw) {
            Ok(Line {
                n,
                data,
                record: Some(record),
            }) => {
                live.insert(n, Live { data, record });
            }
            Ok(Line {
                n, record: None, ..
            }) => {
                live.remove(&n);
            }
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(skipped, log = %log_path.display(), "lines of the staging journal cut short by a crash were skipped");
    }
    Ok(live)
}

/// The records the journal holds now (for tests and tools: reads only).
pub fn records(root: &Path) -> std::io::Result<Vec<Record>> {
    Ok(read_live(root)?.into_values().map(|l| l.record).collect())
}

/// One staging entry: its data file, and its record as last written.
pub struct JournalEntry {
    journal: Arc<Journal>,
    n: u64,
    pub data: PathBuf,
    data_name: String,
    /// The record as last written, and whether it was removed since (a late update, such
    /// as the end of an abandoned multipart upload, must not bring it back).
    record: Mutex<(Record, bool)>,
}

impl JournalEntry {
    /// The record as last written.
    pub fn record(&self) -> Record {
        lock(&self.record).0.clone()
    }

    /// Changes the record with `edit` and writes it; `durable` also syncs it (for states a
    /// program is told about).
    pub fn update(&self, durable: bool, edit: impl FnOnce(&mut Record)) -> std::io::Result<()> {
        let mut guard = lock(&self.record);
        let (record, removed) = &mut *guard;
        if *removed {
            return Ok(());
        }
        edit(record);
        super::blocking::blocking(|| {
            self.journal
                .append(self.n, &self.data_name, Some(record), durable)
        })
    }

    /// Records the multipart upload now in flight for these bytes. Durable: an id the
    /// journal loses is an upload nobody aborts.
    pub fn note_upload(&self, upload_id: Option<&str>) {
        if let Err(e) = self.update(upload_id.is_some(), |r| {
            r.upload_id = upload_id.map(str::to_string)
        }) {
            tracing::warn!(data = %self.data.display(), error = %e, "could not record the multipart upload in the staging journal");
        }
    }

    /// The multipart upload `upload_id` completed or was aborted: the record forgets it,
    /// unless a newer upload replaced it meanwhile (an abandoned stream is aborted in the
    /// background while the whole-file upload starts).
    pub fn upload_ended(&self, upload_id: &str) {
        let ended = |r: &mut Record| {
            if r.upload_id.as_deref() == Some(upload_id) {
                r.upload_id = None;
            }
        };
        if let Err(e) = self.update(false, ended) {
            tracing::warn!(data = %self.data.display(), error = %e, "could not update the staging journal");
        }
    }

    /// Removes the record (the data file is deleted or moved by its owner).
    pub fn remove_record(&self) {
        let mut guard = lock(&self.record);
        if guard.1 {
            return;
        }
        guard.1 = true;
        if let Err(e) = self.journal.append(self.n, &self.data_name, None, false) {
            tracing::warn!(data = %self.data.display(), error = %e, "could not remove an entry from the staging journal");
        }
    }
}

/// What a cache directory's `staging/` holds at start.
pub struct Leftovers {
    /// Entries with a readable record.
    pub entries: Vec<JournalEntry>,
    /// Data files nobody can say anything about (no record, an unreadable one, or written by
    /// a version of pailfs without a journal).
    pub unknown: Vec<PathBuf>,
}

/// The cache directory is used by this mount alone: an exclusive flock on `lock`, held for
/// the process's life (the kernel drops it when the process dies, however it dies).
pub struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    /// Takes the lock, writing who holds it (`description`: mountpoint and location); a
    /// second live mount on the same directory is refused with the holder's description.
    pub fn acquire(root: &Path, description: &str) -> Result<CacheLock, String> {
        use std::os::fd::AsRawFd;
        let path = root.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim().replace('\n', ", ");
            return Err(format!(
                "the cache directory {} is in use by another pailfs mount ({holder}); \
                 give this mount its own --cache-dir, or unmount the other first",
                root.display()
            ));
        }
        let _ = file.set_len(0);
        let _ = writeln!(file, "pid {}\n{description}", std::process::id());
        Ok(CacheLock { _file: file })
    }
}

/// The time now as `2026-11-25T170503` (UTC), for folder names.
pub fn utc_stamp(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Gregorian, proleptic).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}{:02}{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> Record {
        Record {
            location: "s3://b/".into(),
            key: path.into(),
            path: path.into(),
            state: StagedState::Writing,
            upload_id: None,
            base: Base::Absent,
            metadata: Metadata::new(),
            size: 0,
            source: None,
        }
    }

    #[test]
    fn stamps_are_utc_dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_626_303);
        assert_eq!(utc_stamp(t), "2026-11-25T170503");
        assert_eq!(utc_stamp(std::time::UNIX_EPOCH), "1970-01-01T000000");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "2000-02-29T000000");
    }

    fn log_lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join(LOG))
            .unwrap()
            .lines()
            .count()
    }

    fn open(dir: &Path) -> Arc<Journal> {
        std::fs::create_dir_all(dir.join(STAGING)).unwrap();
        std::fs::create_dir_all(dir.join(SPARE)).unwrap();
        Arc::new(Journal::open(dir).unwrap())
    }

    fn records_in(dir: &Path) -> Vec<Record> {
        records(dir).unwrap()
    }

    #[test]
    fn records_survive_a_restart_and_leftovers_say_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let (entry, mut file) = journal.create_entry(record("photos/half.bin")).unwrap();
        assert!(entry
            .data
            .to_string_lossy()
            .contains("000000-photos_half.bin"));
        file.write_all(b"bytes").unwrap();
        entry
            .update(true, |r| {
                r.state = StagedState::Closed;
                r.upload_id = Some("u-1".into());
            })
            .unwrap();
        let (gone, _) = journal.create_entry(record("gone")).unwrap();
        gone.update(false, |_| {}).unwrap();
        gone.remove_record();
        std::fs::remove_file(&gone.data).unwrap();
        // What an older pailfs left: a record file per entry, one of them unreadable, and
        // a staging file of a pailfs without a journal.
        let mut old = record("old.txt");
        old.state = StagedState::Closed;
        std::fs::write(
            dir.path().join("staging/000005-old.txt.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("staging/000005-old.txt.data"), b"old").unwrap();
        std::fs::write(dir.path().join("staging/4242-3"), b"old format").unwrap();
        std::fs::write(dir.path().join("staging/000009-x.json"), b"{ not json").unwrap();
        drop(journal);

        let journal = open(dir.path());
        let found = journal.leftovers().unwrap();
        let records: Vec<Record> = found.entries.iter().map(|e| e.record()).collect();
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records[0].state, StagedState::Closed);
        assert_eq!(records[0].upload_id.as_deref(), Some("u-1"));
        assert_eq!(found.entries[0].data, entry.data);
        assert_eq!(records[1].path, "old.txt");
        assert_eq!(
            found.entries[1].data,
            dir.path().join("staging/000005-old.txt.data")
        );
        assert_eq!(found.unknown, vec![dir.path().join("staging/4242-3")]);
        // The old record files are in the log now; numbers go on past every name seen.
        assert!(!dir.path().join("staging/000005-old.txt.json").exists());
        assert_eq!(log_lines(dir.path()), 2);
        let (next, _) = journal.create_entry(record("next")).unwrap();
        assert!(next.data.to_string_lossy().contains("004243-next"));
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let (a, _) = journal.create_entry(record("a")).unwrap();
        a.update(true, |r| r.state = StagedState::Closed).unwrap();
        let (b, _) = journal.create_entry(record("b")).unwrap();
        b.update(false, |_| {}).unwrap();
        drop(journal);
        // A torn append, then zeros where the log's length got ahead of its bytes.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        log.write_all(br#"{"n":1,"data":"000001-b.da"#).unwrap();
        log.write_all(&[0; 40]).unwrap();
        drop(log);
        let records = records_in(dir.path());
        let states: Vec<(&str, StagedState)> =
            records.iter().map(|r| (r.path.as_str(), r.state)).collect();
        assert_eq!(
            states,
            vec![("a", StagedState::Closed), ("b", StagedState::Writing)]
        );
    }

    #[test]
    fn the_log_is_rewritten_before_it_grows_long() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let (kept, _) = journal.create_entry(record("kept")).unwrap();
        for i in 0..3 * REWRITE_AFTER_LINES {
            let (e, _) = journal.create_entry(record(&format!("f{i}"))).unwrap();
            e.update(false, |_| {}).unwrap();
            e.update(i % 7 == 0, |r| r.state = StagedState::Closed)
                .unwrap();
            e.remove_record();
            std::fs::remove_file(&e.data).unwrap();
            if i == 10 {
                kept.update(true, |r| r.size = 42).unwrap();
            }
        }
        assert!(log_lines(dir.path()) < REWRITE_AFTER_LINES);
        let records = records_in(dir.path());
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].path.as_str(), records[0].size), ("kept", 42));
    }

    #[test]
    fn a_retired_staging_file_is_emptied_and_serves_the_next_entry() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let (done, mut file) = journal.create_entry(record("done")).unwrap();
        file.write_all(b"uploaded bytes").unwrap();
        journal.retire(&done.data, &file);
        done.remove_record();
        assert!(!done.data.exists());
        let (next, file) = journal.create_entry(record("next")).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0, "starts empty");
        let names = |sub: &str| std::fs::read_dir(dir.path().join(sub)).unwrap().count();
        assert_eq!((names(STAGING), names(SPARE)), (1, 0));
        // A spare left by a mount that ended is not anybody's data: removed at start.
        journal.retire(&next.data, &file);
        drop(journal);
        assert_eq!(names(SPARE), 1);
        let journal = open(dir.path());
        assert_eq!((names(STAGING), names(SPARE)), (0, 0));
        assert!(journal.leftovers().unwrap().unknown.is_empty());
    }

    #[test]
    fn a_removed_record_stays_removed_whatever_updates_come_late() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let (entry, _) = journal.create_entry(record("a")).unwrap();
        entry.note_upload(Some("u-9"));
        entry.remove_record();
        // An abandoned multipart upload's abort ends after the copy went.
        entry.upload_ended("u-9");
        entry.note_upload(Some("u-10"));
        assert!(records_in(dir.path()).is_empty());
        assert_eq!(log_lines(dir.path()), 2);
    }

    #[test]
    fn a_second_lock_on_one_cache_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = CacheLock::acquire(dir.path(), "mountpoint /mnt/a").unwrap();
        let err = CacheLock::acquire(dir.path(), "mountpoint /mnt/b")
            .err()
            .expect("refused");
        assert!(
            err.contains("/mnt/a") && err.contains("--cache-dir"),
            "{err}"
        );
        drop(held);
        assert!(CacheLock::acquire(dir.path(), "mountpoint /mnt/b").is_ok());
    }
}
