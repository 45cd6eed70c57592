//! `FuseAdapter`: the filesystem handed to fuser, and how it runs each request (a tokio task
//! in a tracing span; a panic answers that request with EIO and leaves the mount up).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use tracing::Instrument;

use crate::fs::read_buffers::BufferPool;
use crate::fs::Fs;

/// Write payloads kept for reuse: enough for the writes in flight at once (each is at most
/// 1 MiB).
const WRITE_PAYLOADS_POOLED: u64 = 8 << 20;

pub struct FuseAdapter {
    pub(super) fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    pub(super) ttl: Duration,
    /// Notifications to the kernel, once the session exists.
    pub(super) kernel: Arc<OnceLock<fuser::Notifier>>,
    /// Write payloads are copied out of fuser's buffer into these, reused: a fresh 1 MiB
    /// allocation per write page-faults (and zeroes) its memory every time.
    pub(super) write_payloads: Arc<BufferPool>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> Self {
        // The kernel keeps names and attributes as long as pailfs trusts them itself: a tree
        // walk after a listing (find, du, a file manager) then stats from the kernel's cache,
        // page after page, however big the folder. Opens are fresher (--content-ttl); when
        // one finds another version, `open` drops the kernel's attributes of that inode.
        let ttl = fs.config().metadata_ttl;
        FuseAdapter {
            fs,
            rt,
            ttl,
            kernel: Arc::new(OnceLock::new()),
            write_payloads: Arc::new(BufferPool::new(WRITE_PAYLOADS_POOLED)),
        }
    }

    /// Where the session's notifier goes once the session exists.
    pub fn kernel(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.kernel.clone()
    }

    /// Runs one request as a task. The reply lives inside `work`: if the work panics, the
    /// reply is dropped while unwinding and fuser answers EIO.
    pub(super) fn serve<F>(&self, op: &'static str, ino: u64, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::debug_span!("fuse", op, ino);
        self.rt.spawn(
            async move {
                if let Err(panic) = AssertUnwindSafe(work).catch_unwind().await {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_string());
                    tracing::error!(
                        op,
                        ino,
                        "bug: request panicked ({what}); answered EIO, mount stays up"
                    );
                }
            }
            .instrument(span),
        );
    }
}
