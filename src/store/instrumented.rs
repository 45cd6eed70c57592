//! A layer over any `ObjectStore` that counts requests by kind and can inject faults.
//!
//! Production mounts use it for the request counters shown in statistics; tests use it to
//! assert what an operation cost ("`ls -l` sent 1 LIST and 0 HEAD") and to prove error paths.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::layered::{Answer, Call, Layered, StoreLayer};
use super::{ObjectStore, RequestKind, StoreError};

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

/// Counting and fault injection, as a layer over any store (see `Instrumented`).
pub struct Instrumentation {
    counters: Arc<RequestCounters>,
    faults: Mutex<HashMap<RequestKind, Fault>>,
    /// Requests begun, and the number from which none reaches the store (`halt_after`).
    begun: AtomicU64,
    halt_at: AtomicU64,
}

/// A store that counts the requests it passes on, and fails or holds the ones it is told to.
pub type Instrumented = Layered<Instrumentation>;

impl Layered<Instrumentation> {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Layered::over(
            inner,
            Instrumentation {
                counters: Arc::new(RequestCounters::default()),
                faults: Mutex::new(HashMap::new()),
                begun: AtomicU64::new(0),
                halt_at: AtomicU64::new(u64::MAX),
            },
        )
    }
}

impl Instrumentation {
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
}

#[async_trait]
impl StoreLayer for Instrumentation {
    async fn before(&self, call: &Call<'_>) -> Result<(), StoreError> {
        if self.begun.fetch_add(1, Ordering::SeqCst) >= self.halt_at.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.counters
            .slot(call.kind)
            .fetch_add(1, Ordering::Relaxed);
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fault) = faults.get_mut(&call.kind) {
            fault.remaining -= 1;
            if fault.remaining == 0 {
                let error = fault.error.clone();
                faults.remove(&call.kind);
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
        }
        Ok(())
    }

    fn after(&self, call: &Call<'_>, answer: Result<Answer<'_>, &StoreError>) {
        match answer {
            Err(StoreError::NotFound) => {}
            Err(_) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Answer::Received(bytes)) => {
                self.counters.bytes_read.fetch_add(bytes, Ordering::Relaxed);
            }
            Ok(_) if matches!(call.kind, RequestKind::Put | RequestKind::UploadPart) => {
                self.counters
                    .bytes_written
                    .fetch_add(call.sent, Ordering::Relaxed);
            }
            Ok(_) => {}
        }
    }
}
