//! Upload progress of one file being written: bytes the bucket has received (uploaded or
//! copied server-side) out of the file's size, for `pailfs status`. `Tracked` is a store
//! layer that counts what goes through it, so the upload code needs no extra plumbing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::layered::{Answer, Call, Layered, StoreLayer};
use crate::store::{RequestKind, StoreError};

#[derive(Default)]
pub struct UploadProgress {
    /// The object key (follows renames).
    pub key: Mutex<String>,
    /// The file's size: what the bucket must receive.
    pub total: AtomicU64,
    /// Changes not yet in the bucket.
    pub pending: std::sync::atomic::AtomicBool,
    done: AtomicU64,
    started: Mutex<Option<Instant>>,
}

/// What `pailfs status` shows of one file being uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    pub key: String,
    pub done: u64,
    pub total: u64,
    pub elapsed: Duration,
}

impl UploadProgress {
    pub fn new(key: &str) -> UploadProgress {
        UploadProgress {
            key: Mutex::new(key.to_string()),
            ..UploadProgress::default()
        }
    }

    pub fn report(&self) -> UploadReport {
        let (done, elapsed) = self.snapshot();
        UploadReport {
            key: self.key.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            done,
            total: self.total.load(Ordering::Relaxed),
            elapsed,
        }
    }

    fn add(&self, bytes: u64) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        started.get_or_insert_with(Instant::now);
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A new upload of the whole file starts from zero.
    pub fn restart(&self) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.done.store(0, Ordering::Relaxed);
    }

    /// (bytes received by the bucket, time since the first of them).
    pub fn snapshot(&self) -> (u64, Duration) {
        let started = *self.started.lock().unwrap_or_else(|e| e.into_inner());
        (
            self.done.load(Ordering::Relaxed),
            started.map_or(Duration::ZERO, |s| s.elapsed()),
        )
    }
}

/// A layer that credits `progress` with every part and object the bucket received or copied,
/// and keeps each multipart upload begun in the file's journal record until it completes or
/// is aborted (so that one a crash leaves open is aborted at the next start).
pub struct UploadTracking {
    pub progress: Arc<UploadProgress>,
    pub journal: Arc<super::journal::JournalEntry>,
}

/// The store a file's upload goes through: see `UploadTracking`.
pub type Tracked = Layered<UploadTracking>;

impl StoreLayer for UploadTracking {
    fn after(&self, call: &Call<'_>, answer: Result<Answer<'_>, &StoreError>) {
        let Ok(answer) = answer else {
            return;
        };
        match (call.kind, answer) {
            (RequestKind::CreateMultipart, Answer::UploadStarted(id)) => {
                self.journal.note_upload(Some(id))
            }
            (RequestKind::Put | RequestKind::UploadPart | RequestKind::PartCopy, _) => {
                self.progress.add(call.sent)
            }
            (RequestKind::CompleteMultipart | RequestKind::AbortMultipart, _) => {
                if let Some(id) = call.upload_id {
                    self.journal.upload_ended(id);
                }
            }
            _ => {}
        }
    }
}
