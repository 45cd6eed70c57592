//! The bytes of a staging copy: writes, reads and truncation, the ranges still only in the
//! source object and fetched when first needed, and the cache space the copy reserves for
//! what it holds on disk.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::streaming::{streaming_part, Tail};
use super::{io_error, Staged, WriteTuning, FILL_PIECE};
use crate::fs::blocking::blocking;
use crate::fs::error::FsError;
use crate::fs::journal::StagedState;
use crate::store::{ByteRange, ObjectStore, StoreError};

impl Staged {
    /// Bytes the staging file really holds (its holes cost no disk).
    pub(super) fn local_bytes(&self) -> u64 {
        match &self.source {
            Some(src) => src.local.total() + (self.size - src.len),
            None => self.size,
        }
    }

    /// Reserves `more` bytes of cache space before they are written (ENOSPC beyond the cap).
    pub(super) async fn reserve(&mut self, more: u64) -> Result<(), FsError> {
        self.disk
            .cache
            .reserve_or_wait(more, self.disk.reserved)
            .await?;
        self.disk.reserved += more;
        Ok(())
    }

    /// Brings the reservation back to what the file holds.
    pub(super) fn release_unused_reservation(&mut self) {
        let held = self.local_bytes();
        if held < self.disk.reserved {
            self.disk.cache.release(self.disk.reserved - held);
            self.disk.reserved = held;
        }
    }

    /// Brings every byte of the file into the staging file, fetching what still lives only
    /// in the source object (before that object is deleted or replaced).
    pub async fn fill_all(&mut self, store: &dyn ObjectStore) -> Result<(), FsError> {
        self.land().await?;
        self.fill(0, self.size, store).await
    }

    /// Fetches the bytes of `[start, end)` that still live only in the source object.
    pub(super) async fn fill(
        &mut self,
        start: u64,
        end: u64,
        store: &dyn ObjectStore,
    ) -> Result<(), FsError> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        let (key, etag) = (src.key.clone(), src.etag.clone());
        let gaps = src.local.missing(start, end.min(src.len));
        for (gap_start, gap_end) in gaps {
            let mut at = gap_start;
            while at < gap_end {
                let to = gap_end.min(at + FILL_PIECE);
                self.reserve(to - at).await?;
                let data = store
                    .get_range(&key, ByteRange::new(at, to), Some(&etag))
                    .await
                    .map_err(FsError::from_pinned_read)?;
                if data.len() as u64 != to - at {
                    return Err(FsError::Changed);
                }
                blocking(|| self.disk.file.write_all_at(&data, at)).map_err(io_error)?;
                if let Some(src) = &mut self.source {
                    src.local.insert(at, to);
                }
                at = to;
            }
        }
        self.release_unused_reservation();
        Ok(())
    }

    /// Refuses to go on with a copy whose upload failed (the program was told; its bytes are
    /// in recovery).
    pub(super) fn check_not_failed(&self) -> Result<(), FsError> {
        if self.state == StagedState::Failed {
            return Err(FsError::Store(StoreError::Other(
                "an earlier upload of this file failed; its bytes are in recovery".into(),
            )));
        }
        Ok(())
    }

    /// Refuses changes to a copy that can no longer be uploaded.
    pub(super) fn check_writable(&self) -> Result<(), FsError> {
        self.check_not_failed()?;
        if let Some(why) = &self.stream.damaged {
            return Err(FsError::Store(StoreError::Other(why.clone())));
        }
        Ok(())
    }

    /// Writes `data` at `offset`. Sequential writes to a new file go into part buffers from
    /// the second part on, and parts the writer has moved past start uploading (streaming);
    /// everything else goes to the staging file. Whatever streaming does not cover uploads
    /// from the staging file at close.
    pub async fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<u32, FsError> {
        self.check_writable()?;
        let store = &self.tracked(store);
        if !(self.stream.tail.is_some() && offset == self.size) {
            // Not an append to the part in memory: the staging file must hold every byte.
            self.land().await?;
        }
        if self
            .stream
            .upload
            .as_ref()
            .is_some_and(|s| offset < s.sealed_through)
        {
            self.stop_streaming(store, "a write went back into uploaded parts");
        }
        self.reserve(data.len() as u64).await?;
        let (mut at, mut rest) = (offset, data);
        while !rest.is_empty() {
            if let Some(tail) = &mut self.stream.tail {
                if tail.buf.is_full() {
                    self.seal_tail().await;
                    continue;
                }
                let n = tail.buf.push(rest);
                (at, rest) = (at + n as u64, &rest[n..]);
                self.size = self.size.max(at);
                continue;
            }
            // Into the staging file, unless a part buffer takes over an append.
            let mut n = rest.len();
            if self.stream.streamable && self.source.is_none() && at == self.size {
                let (number, start, len) = streaming_part(tuning.part_size, at);
                // The first part stays in the file: most files are small, and go up in one
                // PUT.
                if number > 1 && start == at && len <= tuning.buffer_memory {
                    if let Some(buf) = self.disk.cache.parts.try_take(len as usize) {
                        self.stream.tail = Some(Tail { start: at, buf });
                        continue;
                    }
                }
                // The append stops at the part boundary, where a buffer may take over.
                n = n.min((start + len - at) as usize);
            }
            if let Err(e) = blocking(|| self.disk.file.write_all_at(&rest[..n], at)) {
                self.release_unused_reservation();
                return Err(io_error(e));
            }
            (at, rest) = (at + n as u64, &rest[n..]);
            self.size = self.size.max(at);
        }
        let end = offset + data.len() as u64;
        if let Some(src) = &mut self.source {
            let changed_end = end.min(src.len);
            if offset < changed_end {
                src.local.insert(offset, changed_end);
                src.written.insert(offset, changed_end);
            }
        }
        self.record.progress.pending.store(true, Ordering::Relaxed);
        self.record
            .progress
            .total
            .store(self.size, Ordering::Relaxed);
        self.modified = std::time::SystemTime::now();
        self.release_unused_reservation();
        self.mark_written()?;
        self.advance_stream(store, tuning, false).await;
        Ok(data.len() as u32)
    }

    pub async fn read(
        &mut self,
        offset: u64,
        len: u32,
        store: &dyn ObjectStore,
    ) -> Result<Bytes, FsError> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let n = (self.size - offset).min(len as u64) as usize;
        self.land().await?;
        self.fill(offset, offset + n as u64, store).await?;
        let mut buf = vec![0u8; n];
        blocking(|| self.disk.file.read_exact_at(&mut buf, offset)).map_err(io_error)?;
        Ok(Bytes::from(buf))
    }

    pub async fn truncate(
        &mut self,
        size: u64,
        store: &Arc<dyn ObjectStore>,
    ) -> Result<(), FsError> {
        self.land().await?;
        if self
            .stream
            .upload
            .as_ref()
            .is_some_and(|s| size < s.sealed_through)
        {
            self.stop_streaming(store, "truncated into uploaded parts");
        }
        if size > self.size {
            self.reserve(size - self.size).await?;
        }
        blocking(|| self.disk.file.set_len(size)).map_err(io_error)?;
        if let Some(src) = &mut self.source {
            if size < src.len {
                src.len = size;
                src.local.clip(size);
                src.written.clip(size);
            }
        }
        self.size = size;
        self.modified = std::time::SystemTime::now();
        self.release_unused_reservation();
        self.mark_written()
    }
}
