//! Writing: every change to a file lands in a staging file in the cache directory first; the
//! object is uploaded from it when the program flushes, fsyncs or closes (PutObject for small
//! files, a multipart upload read back part by part otherwise), and those calls succeed only
//! once the bucket holds the new object. When the upload fails, the multipart upload is
//! aborted and the staging file moves to `recovery/` with a log line naming it and the key.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::error::FsError;
use crate::store::{ByteRange, ObjectStore, StoreError, UploadedPart};

/// Largest number of parts S3 accepts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct WriteTuning {
    pub part_size: u64,
    pub upload_concurrency: usize,
}

/// The cache directory: `staging/` for files being written, `recovery/` for the bytes of
/// uploads that failed. Space used by staging files is capped.
pub struct CacheDir {
    staging: PathBuf,
    recovery: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    next: AtomicU64,
}

fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

impl CacheDir {
    pub fn open(root: &Path, max_bytes: u64) -> std::io::Result<CacheDir> {
        let staging = root.join("staging");
        let recovery = root.join("recovery");
        private_dir(root)?;
        private_dir(&staging)?;
        private_dir(&recovery)?;
        Ok(CacheDir {
            staging,
            recovery,
            max_bytes,
            used: AtomicU64::new(0),
            next: AtomicU64::new(0),
        })
    }

    pub fn recovery_dir(&self) -> &Path {
        &self.recovery
    }

    /// Accounts `more` bytes of staging space, or refuses with ENOSPC when over the cap.
    fn reserve(&self, more: u64) -> Result<(), FsError> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + more > self.max_bytes {
                tracing::warn!(
                    used,
                    wanted = more,
                    cap = self.max_bytes,
                    "cache directory full (--max-cache-size); refusing the write with ENOSPC"
                );
                return Err(FsError::NoSpace);
            }
            match self
                .used
                .compare_exchange(used, used + more, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// One file being written: its staging copy and what is known about it.
pub struct Staged {
    cache: Arc<CacheDir>,
    pub key: String,
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    reserved: u64,
    /// Bytes differ from what the bucket holds.
    dirty: bool,
    /// An upload failed and the program was told; the bytes are in recovery.
    failed: bool,
    pub handles: usize,
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.cache.release(self.reserved);
        if !self.failed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_error(e: std::io::Error) -> FsError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        FsError::NoSpace
    } else {
        FsError::Store(StoreError::Other(format!("staging file: {e}")))
    }
}

impl Staged {
    /// An empty staging file (a new file, or one opened with O_TRUNC).
    pub fn empty(cache: Arc<CacheDir>, key: String) -> Result<Staged, FsError> {
        let n = cache.next.fetch_add(1, Ordering::Relaxed);
        let path = cache.staging.join(format!("{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error)?;
        Ok(Staged {
            cache,
            key,
            path,
            file,
            size: 0,
            reserved: 0,
            dirty: true,
            failed: false,
            handles: 0,
        })
    }

    /// A staging copy of the object as it is in the bucket (for appends and in-place edits).
    pub async fn load(
        cache: Arc<CacheDir>,
        key: String,
        store: &dyn ObjectStore,
        size: u64,
        etag: &str,
        piece: u64,
    ) -> Result<Staged, FsError> {
        let mut staged = Staged::empty(cache, key)?;
        staged.grow_to(size)?;
        let mut offset = 0;
        while offset < size {
            let end = size.min(offset + piece);
            let data = store
                .get_range(&staged.key, ByteRange::new(offset, end), Some(etag))
                .await
                .map_err(|e| match e {
                    StoreError::PreconditionFailed => FsError::Changed,
                    other => FsError::Store(other),
                })?;
            staged.file.write_all_at(&data, offset).map_err(io_error)?;
            offset = end;
        }
        staged.size = size;
        staged.dirty = false;
        Ok(staged)
    }

    fn grow_to(&mut self, size: u64) -> Result<(), FsError> {
        if size > self.reserved {
            self.cache.reserve(size - self.reserved)?;
            self.reserved = size;
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        if self.failed {
            return Err(FsError::Store(StoreError::Other(
                "an earlier upload of this file failed; its bytes are in recovery".into(),
            )));
        }
        let end = offset + data.len() as u64;
        self.grow_to(end)?;
        self.file.write_all_at(data, offset).map_err(io_error)?;
        self.size = self.size.max(end);
        self.dirty = true;
        Ok(data.len() as u32)
    }

    pub fn read(&self, offset: u64, len: u32) -> Result<Bytes, FsError> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let n = (self.size - offset).min(len as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io_error)?;
        Ok(Bytes::from(buf))
    }

    pub fn truncate(&mut self, size: u64) -> Result<(), FsError> {
        self.grow_to(size)?;
        self.file.set_len(size).map_err(io_error)?;
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    /// Uploads the staging copy if it changed. On failure, keeps the bytes in `recovery/`.
    pub async fn upload(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<Option<String>, FsError> {
        if !self.dirty {
            return Ok(None);
        }
        if self.failed {
            return Err(FsError::Store(StoreError::Other(
                "an earlier upload of this file failed; its bytes are in recovery".into(),
            )));
        }
        match upload_file(store, &self.key, &self.file, self.size, tuning).await {
            Ok(etag) => {
                self.dirty = false;
                Ok(Some(etag))
            }
            Err(e) => {
                self.failed = true;
                let kept = self.keep_for_recovery();
                tracing::error!(
                    key = %self.key,
                    error = %e,
                    recovery = %kept,
                    "upload failed: the program was told (close/fsync error); the written bytes are kept"
                );
                Err(FsError::Store(e))
            }
        }
    }

    fn keep_for_recovery(&mut self) -> String {
        let name: String = self
            .key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let target = self.cache.recovery.join(format!("{stamp}-{name}"));
        match std::fs::rename(&self.path, &target) {
            Ok(()) => {
                self.path = target.clone();
                target.display().to_string()
            }
            Err(e) => {
                tracing::error!(error = %e, "could not move the staging file to recovery; it stays at its staging path");
                self.path.display().to_string()
            }
        }
    }
}

/// Part size for an object of `size` bytes: at least `part_size`, large enough that the object
/// fits in 10,000 parts (so a 5 TiB object still uploads).
pub fn part_size_for(size: u64, part_size: u64) -> u64 {
    part_size.max(MIN_PART_SIZE).max(size.div_ceil(MAX_PARTS))
}

async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    file: &std::fs::File,
    size: u64,
    tuning: WriteTuning,
) -> Result<String, StoreError> {
    let read_piece = |offset: u64, len: u64| -> Result<Bytes, StoreError> {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| StoreError::Other(format!("reading the staging file: {e}")))?;
        Ok(Bytes::from(buf))
    };
    let part = part_size_for(size, tuning.part_size);
    if size <= part {
        return store.put_object(key, read_piece(0, size)?).await;
    }
    let upload_id = store.create_multipart(key).await?;
    let count = size.div_ceil(part);
    // Parts are read when their upload starts, so at most `upload_concurrency` parts are in
    // memory at once.
    let results: Vec<Result<UploadedPart, StoreError>> = futures::stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            let upload_id = upload_id.clone();
            let key = key.to_string();
            let start = i * part;
            let body = read_piece(start, part.min(size - start));
            async move {
                let number = i as u32 + 1;
                let etag = store.upload_part(&key, &upload_id, number, body?).await?;
                Ok(UploadedPart { number, etag })
            }
        })
        .buffered(tuning.upload_concurrency.max(1))
        .collect()
        .await;
    let parts: Result<Vec<UploadedPart>, StoreError> = results.into_iter().collect();
    let finished = match parts {
        Ok(parts) => store.complete_multipart(key, &upload_id, &parts).await,
        Err(e) => Err(e),
    };
    if finished.is_err() {
        if let Err(abort) = store.abort_multipart(key, &upload_id).await {
            tracing::warn!(key, error = %abort, "could not abort the failed multipart upload; the bucket may keep its parts until a lifecycle rule removes them");
        }
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_keeps_huge_objects_within_ten_thousand_parts() {
        assert_eq!(part_size_for(1 << 30, 8 << 20), 8 << 20);
        let five_tib = 5u64 << 40;
        let p = part_size_for(five_tib, 8 << 20);
        assert!(five_tib.div_ceil(p) <= 10_000);
        assert_eq!(part_size_for(100, 1 << 20), MIN_PART_SIZE);
    }
}
