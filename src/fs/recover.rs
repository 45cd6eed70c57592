//! Reconciling at start: what a daemon that did not finish (SIGKILL, the OOM killer, a power
//! cut, SIGTERM past systemd's stop timeout) left in the cache directory's `staging/`. Its
//! journal says, for each staging file, what to do:
//!
//! - a file whose close was acknowledged is uploaded (in the background, with its progress in
//!   `pailfs status`; the conflict policy applies against the version it was opened over);
//! - a file never closed is moved to `recovery/TIME/PATH` and named in the start-up output;
//! - a copy the bucket already holds, or one unlinked while open, is deleted;
//! - any multipart upload the journal recorded is aborted first.
//!
//! Nothing is deleted that the bucket does not have, or that the user did not delete.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::FsError;
use super::journal::{self, JournalEntry, StagedState};
use super::staging::StagedFile;
use super::write::Staged;
use super::{lock, Fs, Kind};
use crate::store::StoreError;

/// An unsaved file moved to `recovery/`.
#[derive(Debug)]
pub struct Recovered {
    /// What it was: its path below the mount root (or its key, for another bucket's file).
    pub what: String,
    pub place: PathBuf,
    pub size: u64,
    /// It was an edit of an object the bucket still holds, staged lazily: the copy has zeros
    /// where the edit neither wrote nor read.
    pub partial: bool,
}

/// What reconciling found and did, for the start-up output and the log.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Acknowledged files now uploading: (path below the mount root, size).
    pub uploading: Vec<(String, u64)>,
    /// Unsaved files moved to `recovery/`.
    pub recovered: Vec<Recovered>,
    /// Multipart uploads aborted.
    pub aborted: usize,
}

impl Reconciled {
    /// One line per finding, for a person reading the start-up output.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (path, size) in &self.uploading {
            out.push(format!(
                "uploading {path} ({size} bytes): its close was acknowledged before the last mount stopped"
            ));
        }
        for r in &self.recovered {
            out.push(format!(
                "{} ({} bytes) was still being written when the last mount stopped; its bytes are in {}{}",
                r.what,
                r.size,
                r.place.display(),
                if r.partial {
                    " (an edit of an object the bucket still holds: bytes the edit did not touch are zeros there)"
                } else {
                    ""
                }
            ));
        }
        if self.aborted > 0 {
            out.push(format!(
                "aborted {} unfinished multipart upload(s) of the last mount",
                self.aborted
            ));
        }
        out
    }
}

impl Fs {
    /// Settles what a dead daemon left in the cache directory (see the module doc). Runs
    /// before the mount answers; uploads of acknowledged files go on in the background.
    pub async fn reconcile(self: &Arc<Self>) -> Result<Reconciled, FsError> {
        let Ok(cache) = self.writable() else {
            return Ok(Reconciled::default());
        };
        let cache = cache.clone();
        let left = cache
            .journal
            .leftovers()
            .map_err(|e| FsError::Store(StoreError::Other(format!("reading staging: {e}"))))?;
        let stamp = journal::utc_stamp(std::time::SystemTime::now());
        let mut done = Reconciled::default();
        for entry in left.entries {
            let record = entry.record();
            if let Some(id) = &record.upload_id {
                match self.store.abort_multipart(&record.key, id).await {
                    Ok(()) | Err(StoreError::NotFound) => done.aborted += 1,
                    Err(e) => {
                        tracing::warn!(key = %record.key, upload_id = %id, error = %e, "could not abort a multipart upload the last mount left; a lifecycle rule for incomplete uploads removes its parts")
                    }
                }
                let _ = entry.update(true, |r| r.upload_id = None);
            }
            if !entry.data.exists() {
                // Nothing to upload or recover: its bytes went with a finished upload (or an
                // unlink), and only the record outlived them.
                tracing::warn!(key = %record.key, "a staging record without its data file; removed");
                entry.remove_record();
                continue;
            }
            let here =
                record.location == cache.location() && record.key.starts_with(self.prefix.as_str());
            match record.state {
                StagedState::Clean | StagedState::Unlinked => remove_entry(&entry),
                StagedState::Closed | StagedState::Uploading if here => {
                    let size = self.adopt(entry, &cache)?;
                    done.uploading.push((record.path.clone(), size));
                }
                _ => {
                    let size = std::fs::metadata(&entry.data).map_or(0, |m| m.len());
                    if size == 0 && record.base == journal::Base::Absent {
                        // A new file nothing was written to holds nothing to recover.
                        remove_entry(&entry);
                        continue;
                    }
                    let place = cache.recovery_place(&stamp, &record.path);
                    if let Err(e) = std::fs::rename(&entry.data, &place) {
                        tracing::error!(staging = %entry.data.display(), error = %e, "could not move an unsaved staging file to recovery; it stays where it is");
                        continue;
                    }
                    entry.remove_record();
                    let what = if here {
                        record.path.clone()
                    } else {
                        format!("{} (of {})", record.key, record.location)
                    };
                    done.recovered.push(Recovered {
                        what,
                        place,
                        size,
                        partial: record.source.is_some(),
                    });
                }
            }
        }
        for path in left.unknown {
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().to_string());
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let place = cache.recovery_place(&stamp, &format!("unknown/{name}"));
            if std::fs::rename(&path, &place).is_ok() {
                done.recovered.push(Recovered {
                    what: format!("a staging file without a record ({name})"),
                    place,
                    size,
                    partial: false,
                });
            }
        }
        for line in done.lines() {
            tracing::warn!("{line}");
        }
        Ok(done)
    }

    /// Takes an acknowledged copy over as a file being written with no handle, and uploads
    /// it in the background. Returns its size.
    fn adopt(
        self: &Arc<Self>,
        entry: JournalEntry,
        cache: &Arc<super::write::CacheDir>,
    ) -> Result<u64, FsError> {
        let path = cache.path_of(&entry.record().key);
        let staged = Staged::from_record(cache.clone(), entry)?;
        let size = staged.size();
        lock(&self.writing.progress).push(Arc::downgrade(&staged.record.progress));
        let ino = lock(&self.names.inodes).peek(Kind::File, &path);
        let staged = Arc::new(StagedFile::new(staged));
        lock(&self.writing.staged).insert(ino, staged.clone());
        self.upload_in_background(ino, staged);
        Ok(size)
    }
}

fn remove_entry(entry: &JournalEntry) {
    let _ = std::fs::remove_file(&entry.data);
    entry.remove_record();
}
