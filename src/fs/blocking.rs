//! Local file I/O (staging files, journal records) off the async workers: a slow disk must
//! not stall the requests other tasks serve.

/// Runs `f`, which blocks on the local disk, so that the async worker it is called from
/// hands its other tasks to the rest of the runtime meanwhile (`block_in_place`). On a
/// single-threaded runtime (unit tests) there is no other worker, and it just runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A multi-threaded runtime of two workers, as the daemon runs, for tests of what behaves
/// differently there: `blocking` hands work off, and a request started on a FUSE thread goes
/// on as a task of a worker.
#[cfg(test)]
pub(crate) fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime")
}
