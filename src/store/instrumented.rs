//! A wrapper around any `ObjectStore` that counts requests by kind and can inject faults.
//!
//! Production mounts use it for the request counters shown in statistics; tests use it to
//! assert what an operation cost ("`ls -l` sent 1 LIST and 0 HEAD") and to prove error paths.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteRange, ListPage, ListRequest, ObjectInfo, ObjectStore, RequestKind, StoreError};

/// Per-kind request and error counters.
#[derive(Default, Debug)]
pub struct RequestCounters {
    head: AtomicU64,
    list: AtomicU64,
    get: AtomicU64,
    errors: AtomicU64,
    bytes_read: AtomicU64,
}

impl RequestCounters {
    fn slot(&self, kind: RequestKind) -> &AtomicU64 {
        match kind {
            RequestKind::Head => &self.head,
            RequestKind::List => &self.list,
            RequestKind::Get => &self.get,
        }
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
    /// One line, e.g. `HEAD=3 LIST=1 GET=10 errors=0 bytes_read=40960`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for kind in RequestKind::ALL {
            out.push_str(&format!("{}={} ", kind.name(), self.count(kind)));
        }
        out.push_str(&format!(
            "errors={} bytes_read={}",
            self.errors(),
            self.bytes_read()
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
}

impl Instrumented {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Instrumented {
            inner,
            counters: Arc::new(RequestCounters::default()),
            faults: Mutex::new(HashMap::new()),
        }
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

    fn begin(&self, kind: RequestKind) -> Result<(), StoreError> {
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
        self.begin(RequestKind::Head)?;
        self.finish(self.inner.head(key).await)
    }

    async fn list(&self, request: ListRequest) -> Result<ListPage, StoreError> {
        self.begin(RequestKind::List)?;
        self.finish(self.inner.list(request).await)
    }

    async fn get_range_into(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
        buffer: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        self.begin(RequestKind::Get)?;
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
