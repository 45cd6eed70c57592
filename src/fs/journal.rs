//! The staging journal: a durable record beside every staging file saying which object its
//! bytes belong to and how far they are on their way to the bucket, so that a mount started
//! after a crash (SIGKILL, the OOM killer, a power cut) can finish what was promised and hand
//! the rest to the user (`Fs::reconcile`).
//!
//! A staging entry is two files in `staging/`: `NAME.data` (the bytes) and `NAME.json` (the
//! `Record`), where NAME carries a sequence number and the file's path, so that a person
//! looking into the cache directory sees what each one holds. A record is replaced whole
//! (written beside, then renamed over); a durable write also fsyncs it and the directory.
//!
//! The cache directory is held by one live mount at a time (`CacheLock`, an flock).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The two files of one staging entry, and its record as last written.
pub struct JournalEntry {
    pub data: PathBuf,
    record_path: PathBuf,
    /// The record as last written, and whether it was removed since (a late update, such
    /// as the end of an abandoned multipart upload, must not bring it back).
    record: Mutex<(Record, bool)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longest part of a path kept in a staging file name.
const NAME_PART: usize = 120;

impl JournalEntry {
    /// A new entry in `staging`, numbered `n`, for `path`; no file is created yet.
    pub fn new(staging: &Path, n: u64, record: Record) -> JournalEntry {
        let mut name = super::names::safe_file_name(&record.path);
        if name.len() > NAME_PART {
            name = name[name.len() - NAME_PART..].to_string();
        }
        let stem = format!("{n:06}-{name}");
        JournalEntry {
            data: staging.join(format!("{stem}.data")),
            record_path: staging.join(format!("{stem}.json")),
            record: Mutex::new((record, false)),
        }
    }

    /// An entry found on disk (reconcile): its record and data file.
    fn found(record_path: PathBuf, record: Record) -> JournalEntry {
        JournalEntry {
            data: record_path.with_extension("data"),
            record_path,
            record: Mutex::new((record, false)),
        }
    }

    /// The record as last written.
    pub fn record(&self) -> Record {
        lock(&self.record).0.clone()
    }

    /// Changes the record with `edit` and writes it; `durable` also fsyncs it (for states a
    /// program is told about).
    pub fn update(&self, durable: bool, edit: impl FnOnce(&mut Record)) -> std::io::Result<()> {
        let mut guard = lock(&self.record);
        let (record, removed) = &mut *guard;
        if *removed {
            return Ok(());
        }
        edit(record);
        super::blocking::blocking(|| write_record(&self.record_path, record, durable))
    }

    /// Records the multipart upload now in flight for these bytes. Durable: an id the
    /// journal loses is an upload nobody aborts.
    pub fn note_upload(&self, upload_id: Option<&str>) {
        if let Err(e) = self.update(upload_id.is_some(), |r| {
            r.upload_id = upload_id.map(str::to_string)
        }) {
            tracing::warn!(record = %self.record_path.display(), error = %e, "could not record the multipart upload in the staging journal");
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
            tracing::warn!(record = %self.record_path.display(), error = %e, "could not update the staging journal");
        }
    }

    /// Deletes the record (the data file is deleted or moved by its owner).
    pub fn remove_record(&self) {
        lock(&self.record).1 = true;
        let _ = std::fs::remove_file(&self.record_path);
    }
}

fn write_record(path: &Path, record: &Record, durable: bool) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&text)?;
    if durable {
        file.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// What a cache directory's `staging/` holds at start.
pub struct Leftovers {
    /// Entries with a readable record.
    pub entries: Vec<JournalEntry>,
    /// Data files nobody can say anything about (no record, an unreadable one, or written by
    /// a version of pailfs without a journal).
    pub unknown: Vec<PathBuf>,
}

/// Reads every staging entry left in `staging` (by a daemon that did not finish).
pub fn leftovers(staging: &Path) -> std::io::Result<Leftovers> {
    let mut entries = Vec::new();
    let mut unknown = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(staging)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let ext = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_string()
    };
    for path in files.iter().filter(|p| ext(p) == "json") {
        let parsed = std::fs::read(path)
            .ok()
            .and_then(|text| serde_json::from_slice::<Record>(&text).ok());
        match parsed {
            Some(record) => entries.push(JournalEntry::found(path.clone(), record)),
            None => {
                tracing::warn!(record = %path.display(), "unreadable staging record; its data file is treated as unknown");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    for path in files {
        match ext(&path).as_str() {
            "json" => {}
            "tmp" => {
                let _ = std::fs::remove_file(&path);
            }
            "data" if path.with_extension("json").exists() => {}
            // No record, or a staging file of a pailfs without a journal (`PID-N`).
            _ => unknown.push(path),
        }
    }
    Ok(Leftovers { entries, unknown })
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

    #[test]
    fn records_round_trip_and_leftovers_say_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let entry = JournalEntry::new(dir.path(), 7, record("photos/half.bin"));
        assert!(entry
            .data
            .to_string_lossy()
            .contains("000007-photos_half.bin"));
        std::fs::write(&entry.data, b"bytes").unwrap();
        entry
            .update(true, |r| {
                r.state = StagedState::Closed;
                r.upload_id = Some("u-1".into());
            })
            .unwrap();
        std::fs::write(dir.path().join("4242-3"), b"old format").unwrap();
        std::fs::write(dir.path().join("000009-x.json"), b"{ not json").unwrap();
        let found = leftovers(dir.path()).unwrap();
        assert_eq!(found.entries.len(), 1);
        let back = found.entries[0].record();
        assert_eq!(back.state, StagedState::Closed);
        assert_eq!(back.upload_id.as_deref(), Some("u-1"));
        assert_eq!(found.entries[0].data, entry.data);
        assert_eq!(found.unknown, vec![dir.path().join("4242-3")]);
    }

    #[test]
    fn a_removed_record_stays_removed_whatever_updates_come_late() {
        let dir = tempfile::tempdir().unwrap();
        let entry = JournalEntry::new(dir.path(), 1, record("a"));
        entry.note_upload(Some("u-9"));
        entry.remove_record();
        // An abandoned multipart upload's abort ends after the copy went.
        entry.upload_ended("u-9");
        entry.note_upload(Some("u-10"));
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
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
