//! The budget of names the kernel holds (`--max-inodes`), kept by a thread of its own.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::INodeNo;

use crate::fs::Fs;

/// Keeps the names the kernel holds within `--max-inodes`: every quarter second, the oldest
/// files past the budget get an entry-invalidation notice (the kernel drops the name if
/// nothing uses it, FUSE inodes without a name are dropped at once, and the kernel answers
/// with FORGET, which shrinks the inode table). Not the delete notice: that one tells inotify
/// watchers (file managers) the file was deleted. A thread of its own: a notice waits for
/// the folder's lock, which a listing in progress holds.
pub fn keep_names_within_budget(fs: Arc<Fs>, kernel: fuser::Notifier) -> std::io::Result<()> {
    const BATCH: usize = 100_000;
    std::thread::Builder::new()
        .name("pailfs-names".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            for (parent, _, name) in fs.names_to_forget(BATCH) {
                match kernel.inval_entry(INodeNo(parent.0), OsStr::new(&name)) {
                    Ok(()) => {}
                    // Gone from the kernel's cache already, or busy (a mountpoint, a
                    // folder with names in use): the next round tries others.
                    Err(e) if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::EBUSY | libc::ENOTEMPTY | libc::ENOTDIR)
                    ) => {}
                    Err(e) => {
                        // The session ended (unmounted): nothing left to keep small.
                        tracing::debug!(error = %e, "name budget: the kernel refused a notice; stopping");
                        return;
                    }
                }
            }
        })
        .map(|_| ())
}
