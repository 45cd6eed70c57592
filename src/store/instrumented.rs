//! A wrapper around any `ObjectStore` that counts requests by kind and can inject faults.
//!
//! Production mounts use it for the request counters shown in statistics; tests use it to
//! assert what an operation cost ("`ls -l` sent 1 LIST and 0 HEAD") and to prove error paths.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ByteRange, ListPage, ListRequest, Metadata, ObjectInfo, ObjectStore, RequestKind, StoreError,
    UploadedPart,
};

/// Per-kind request and error counters.
#[derive(Default, Debug)]
pub struct RequestCounters {
    by_kind: [AtomicU64; RequestKind::ALL.len()],
    errors: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl RequestCounters {
    fn slot(&self, kind: RequestKind) -> &AtomicU64 {
        &self.by_kind[kind as usize]
    }
    pub fn count(&self, kind: RequestKind) -> u64 {
        self.slot(kind).load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
    /// One line, e.g. `HEAD=3 LIST=1 GET=10 … errors=0 bytes_read=40960 bytes_written=0`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for kind in RequestKind::ALL {
            out.push_str(&format!("{}={} ", kind.name(), self.count(kind)));
        }
        out.push_str(&format!(
            "errors={} bytes_read={} bytes_written={}",
            self.errors(),
            self.bytes_read(),
            self.bytes_written()
        ));
        out
    }
}

/// A fault to inject: fail the request of `kind` numbered `nth` (1-based, counted from when
/// the fault was armed) with `error`.
struct Fault {
    remaining: u64,
    error: StoreError,
}

pub struct Instrumented {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<RequestCounters>,
    faults: Mutex<HashMap<RequestKind, Fault>>,
    /// Requests begun, and the number from which none reaches the store (`halt_after`).
    begun: AtomicU64,
    halt_at: AtomicU64,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Instrumented {
            inner,
            counters: Arc::new(RequestCounters::default()),
            faults: Mutex::new(HashMap::new()),
            begun: AtomicU64::new(0),
            halt_at: AtomicU64::new(u64::MAX),
        }
    }

    /// From the `n`th next request on (of any kind), requests never answer: the store stops
    /// as if the process sending them was killed there (crash tests).
    pub fn halt_after(&self, n: u64) {
        let now = self.begun.load(Ordering::SeqCst);
        self.halt_at.store(now.saturating_add(n), Ordering::SeqCst);
    }

    pub fn counters(&self) -> Arc<RequestCounters> {
        self.counters.clone()
    }

    /// Makes the `nth` next request of `kind` fail with `error`.
    pub fn fail_nth(&self, kind: RequestKind, nth: u64, error: StoreError) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.insert(
            kind,
            Fault {
                remaining: nth.max(1),
                error,
            },
        );
    }

    async fn begin(&self, kind: RequestKind) -> Result<(), StoreError> {
        if self.begun.fetch_add(1, Ordering::SeqCst) >= self.halt_at.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.counters.slot(kind).fetch_add(1, Ordering::Relaxed);
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fault) = faults.get_mut(&kind) {
            fault.remaining -= 1;
            if fault.remaining == 0 {
                let error = fault.error.clone();
                faults.remove(&kind);
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
        }
        Ok(())
    }

    fn finish<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(&result, Err(e) if *e != StoreError::NotFound) {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[async_trait]
impl ObjectStore for Instrumented {
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.begin(RequestKind::Head).await?;
        self.finish(self.inner.head(key).await)
    }

    async fn list(&self, request: ListRequest) -> Result<ListPage, StoreError> {
        self.begin(RequestKind::List).await?;
        self.finish(self.inner.list(request).await)
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, StoreError> {
        self.begin(RequestKind::Put).await?;
        let len = body.len() as u64;
        let result = self.finish(self.inner.put_object(key, body, metadata).await);
        if result.is_ok() {
            self.counters
                .bytes_written
                .fetch_add(len, Ordering::Relaxed);
        }
        result
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.begin(RequestKind::Delete).await?;
        self.finish(self.inner.delete_object(key).await)
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&Metadata>,
    ) -> Result<String, StoreError> {
        self.begin(RequestKind::Copy).await?;
        self.finish(self.inner.copy_object(from, to, metadata).await)
    }

    async fn create_multipart(&self, key: &str, metadata: &Metadata) -> Result<String, StoreError> {
        self.begin(RequestKind::CreateMultipart).await?;
        self.finish(self.inner.create_multipart(key, metadata).await)
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
        self.begin(RequestKind::PartCopy).await?;
        self.finish(
            self.inner
                .upload_part_copy(key, upload_id, number, source, source_etag, range)
                .await,
        )
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.begin(RequestKind::UploadPart).await?;
        let len = body.len() as u64;
        let result = self.finish(self.inner.upload_part(key, upload_id, number, body).await);
        if result.is_ok() {
            self.counters
                .bytes_written
                .fetch_add(len, Ordering::Relaxed);
        }
        result
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<String, StoreError> {
        self.begin(RequestKind::CompleteMultipart).await?;
        self.finish(self.inner.complete_multipart(key, upload_id, parts).await)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.begin(RequestKind::AbortMultipart).await?;
        self.finish(self.inner.abort_multipart(key, upload_id).await)
    }

    async fn presign(
        &self,
        key: &str,
        method: super::PresignMethod,
        expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        self.inner.presign(key, method, expires).await
    }

    async fn get_range_into(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
        buffer: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        self.begin(RequestKind::Get).await?;
        let result = self.finish(
            self.inner
                .get_range_into(key, range, if_match, buffer)
                .await,
        );
        if let Ok(bytes) = &result {
            self.counters
                .bytes_read
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        result
    }
}
