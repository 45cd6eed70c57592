//! Upload progress of one file being written: bytes the bucket has received (uploaded or
//! copied server-side) out of the file's size, for `pailfs status`. `Tracked` is a store
//! wrapper that counts what goes through it, so the upload code needs no extra plumbing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::store::{
    ByteRange, ListPage, ListRequest, Metadata, ObjectInfo, ObjectStore, StoreError, UploadedPart,
};

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

/// A store that credits `progress` with every part and object it uploads or copies, and
/// keeps each multipart upload it starts in the file's journal record until it completes or
/// is aborted (so that one a crash leaves open is aborted at the next start).
pub struct Tracked {
    pub inner: Arc<dyn ObjectStore>,
    pub progress: Arc<UploadProgress>,
    pub journal: Arc<super::journal::JournalEntry>,
}

impl Tracked {
    fn credit<T>(&self, result: Result<T, StoreError>, bytes: u64) -> Result<T, StoreError> {
        if result.is_ok() {
            self.progress.add(bytes);
        }
        result
    }
}

#[async_trait]
impl ObjectStore for Tracked {
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.inner.head(key).await
    }
    async fn list(&self, request: ListRequest) -> Result<ListPage, StoreError> {
        self.inner.list(request).await
    }
    async fn get_range_into(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
        buffer: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        self.inner
            .get_range_into(key, range, if_match, buffer)
            .await
    }
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, StoreError> {
        let len = body.len() as u64;
        let result = self.inner.put_object(key, body, metadata).await;
        self.credit(result, len)
    }
    async fn create_multipart(&self, key: &str, metadata: &Metadata) -> Result<String, StoreError> {
        let id = self.inner.create_multipart(key, metadata).await?;
        self.journal.note_upload(Some(&id));
        Ok(id)
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source: &str,
        source_etag: Option<&str>,
        range: ByteRange,
    ) -> Result<String, StoreError> {
        let result = self
            .inner
            .upload_part_copy(key, upload_id, number, source, source_etag, range)
            .await;
        self.credit(result, range.len())
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let len = body.len() as u64;
        let result = self.inner.upload_part(key, upload_id, number, body).await;
        self.credit(result, len)
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<String, StoreError> {
        let result = self.inner.complete_multipart(key, upload_id, parts).await;
        if result.is_ok() {
            self.journal.upload_ended(upload_id);
        }
        result
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let result = self.inner.abort_multipart(key, upload_id).await;
        if result.is_ok() {
            self.journal.upload_ended(upload_id);
        }
        result
    }
    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete_object(key).await
    }
    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&Metadata>,
    ) -> Result<String, StoreError> {
        self.inner.copy_object(from, to, metadata).await
    }
}
