//! `FuseAdapter`: the filesystem handed to fuser, and how it runs each request (a tokio task
//! in a tracing span; a panic answers that request with EIO and leaves the mount up).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::task::Context;
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
        self.rt.spawn(guarded(op, ino, work));
    }

    /// Like `serve`, but starts `work` on this FUSE thread and hands it to a task only if it
    /// has to wait: a read whose bytes are in memory (a read-ahead part, the page cache of a
    /// cached block) is answered without waking a worker thread, which cost about as much as
    /// the rest of such a read. `work` must not block: it may only wait by awaiting.
    pub(super) fn serve_now<F>(&self, op: &'static str, ino: u64, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        start_here(&self.rt, guarded(op, ino, work));
    }
}

/// Polls `work` once on this thread; if it has to wait, it goes on as a task of `rt`.
fn start_here(rt: &tokio::runtime::Handle, work: impl Future<Output = ()> + Send + 'static) {
    let mut task = Box::pin(work);
    // Inside the runtime's context, so that what `work` spawns goes to the runtime.
    let _runtime = rt.enter();
    let mut first = Context::from_waker(futures::task::noop_waker_ref());
    if task.as_mut().poll(&mut first).is_pending() {
        // The task's first poll registers its own waker wherever this one was left.
        rt.spawn(task);
    }
}

/// `work` in a tracing span, a panic in it logged (its reply, dropped while unwinding, answers
/// EIO).
fn guarded<F>(op: &'static str, ino: u64, work: F) -> impl Future<Output = ()> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    let span = tracing::debug_span!("fuse", op, ino);
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
    .instrument(span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::blocking::two_worker_runtime;

    #[test]
    fn work_that_need_not_wait_is_done_on_the_calling_thread() {
        let rt = two_worker_runtime();
        let (tx, rx) = std::sync::mpsc::channel();
        start_here(rt.handle(), async move {
            // What it spawns runs on the runtime.
            let spawned = tokio::spawn(async { 7 });
            let _ = tx.send((std::thread::current().id(), spawned));
        });
        let (thread, spawned) = rx.try_recv().expect("done before start_here returned");
        assert_eq!(thread, std::thread::current().id());
        assert_eq!(rt.block_on(spawned).unwrap(), 7);
    }

    #[test]
    fn work_that_waits_goes_on_as_a_task_and_finishes() {
        let rt = two_worker_runtime();
        let (go, wait) = tokio::sync::oneshot::channel::<u32>();
        let (tx, rx) = std::sync::mpsc::channel();
        start_here(rt.handle(), async move {
            let n = wait.await.unwrap_or(0);
            let _ = tx.send((std::thread::current().id(), n));
        });
        assert!(rx.try_recv().is_err(), "waiting, not done");
        go.send(5).unwrap();
        let (thread, n) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the task was woken");
        assert_eq!(n, 5);
        assert_ne!(thread, std::thread::current().id(), "finished on a worker");
    }

    #[test]
    fn a_panic_in_work_started_here_stays_in_it() {
        let rt = two_worker_runtime();
        start_here(rt.handle(), guarded("read", 1, async { panic!("boom") }));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        start_here(
            rt.handle(),
            guarded("read", 1, async move {
                let _ = wait.await;
                panic!("boom after waiting");
            }),
        );
        let _ = go.send(());
        // The runtime is still there to run the next request.
        assert_eq!(
            rt.block_on(async { tokio::spawn(async { 1 }).await.unwrap() }),
            1
        );
    }
}
