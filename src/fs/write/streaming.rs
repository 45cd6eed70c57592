//! Streaming: a new file written from start to end uploads while it is written. From the
//! second part on, appended bytes collect in a pooled buffer (`Tail`); a full part lands in
//! the staging file (O_DIRECT) beside the program's next writes, and once the writer has
//! moved past it, uploads from memory as the next part of a `StreamingUpload`. Part sizes
//! grow (`streaming_part`) so that any file up to 5 TiB fits in 10,000 parts. Anything else
//! (a write back into sent parts, a truncate, a failed part) stops streaming, and the file
//! uploads from the staging file at close.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::{
    complete_or_abort, read_piece, Staged, UploadPermit, WriteTuning, MAX_PARTS, MIN_PART_SIZE,
};
use crate::fs::error::FsError;
use crate::fs::write_buffers::{self, PartBuf};
use crate::store::{ObjectStore, StoreError, UploadedPart};

/// A multipart upload that runs while a new file is written sequentially: every part that
/// the writer has moved past goes up in the background.
/// How the bytes of a file written from start to end travel while it is written: the part
/// being appended, complete parts in memory, their writes into the staging file, and the
/// streaming upload they go into. Not where the file stands (that is its `StagedState`).
pub(super) struct StreamPath {
    /// Started empty (new file or O_TRUNC) and written only sequentially so far: parts may
    /// stream while it is written.
    pub(super) streamable: bool,
    pub(super) upload: Option<StreamingUpload>,
    /// Appended bytes of the current part, not yet in the staging file.
    pub(super) tail: Option<Tail>,
    /// Complete parts in memory that the streaming upload has not started yet, in order.
    pub(super) sealed: VecDeque<(u64, Bytes)>,
    /// Writes of parts into the staging file, still running.
    pub(super) landing: VecDeque<JoinHandle<std::io::Result<()>>>,
    pub(super) landing_files: Option<Arc<LandingFiles>>,
    /// Why bytes are missing from the staging file (a part could not be written to it): this
    /// copy can no longer be uploaded whole.
    pub(super) damaged: Option<String>,
}

impl StreamPath {
    pub(super) fn new() -> StreamPath {
        StreamPath {
            streamable: true,
            upload: None,
            tail: None,
            sealed: VecDeque::new(),
            landing: VecDeque::new(),
            landing_files: None,
            damaged: None,
        }
    }
}

pub(super) struct StreamingUpload {
    id: String,
    /// Size of the first parts (`streaming_part` grows it).
    base: u64,
    done: Vec<UploadedPart>,
    /// Parts uploading, with their lengths.
    in_flight: VecDeque<(u64, JoinHandle<Result<UploadedPart, StoreError>>)>,
    /// Bytes below this offset belong to parts already started; they must not change.
    pub(super) sealed_through: u64,
}

impl StreamingUpload {
    /// Starts uploading `body` as part `number`, holding `permit` (its share of the mount's
    /// upload budget) until it is done.
    fn start_part(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        number: u32,
        body: Bytes,
        permit: UploadPermit,
    ) {
        let (store, key, id) = (store.clone(), key.to_string(), self.id.clone());
        let len = body.len() as u64;
        let task = tokio::spawn(async move {
            let _permit = permit;
            let etag = store.upload_part(&key, &id, number, body).await?;
            Ok(UploadedPart { number, etag })
        });
        self.in_flight.push_back((len, task));
    }

    /// Waits until a part of `next` bytes may start: fewer than `most` parts in flight, and
    /// their bytes within `memory` (one part may always run). A failed part fails this.
    async fn make_room(&mut self, most: usize, memory: u64, next: u64) -> Result<(), StoreError> {
        loop {
            let held: u64 = self.in_flight.iter().map(|(len, _)| len).sum();
            let full = self.in_flight.len() >= most.max(1) || held + next > memory;
            if !full {
                return Ok(());
            }
            let Some((_, handle)) = self.in_flight.pop_front() else {
                return Ok(());
            };
            self.done.push(joined(handle.await)?);
        }
    }

    /// Stops the upload: cancels parts in flight and asks the store to drop what it has.
    fn abandon(self, store: &Arc<dyn ObjectStore>, key: &str, why: &str) {
        tracing::debug!(
            key,
            why,
            "streaming upload abandoned; the whole file uploads at close"
        );
        for (_, handle) in &self.in_flight {
            handle.abort();
        }
        let (store, key, id) = (store.clone(), key.to_string(), self.id);
        tokio::spawn(async move {
            if let Err(e) = store.abort_multipart(&key, &id).await {
                tracing::warn!(key, error = %e, "could not abort an abandoned multipart upload");
            }
        });
    }
}

/// A part task's outcome, a panic or cancellation included.
fn joined<T>(
    outcome: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, StoreError> {
    outcome.map_err(|e| StoreError::Other(format!("a part task failed: {e}")))?
}

/// The bytes a program appended to a new file from a part boundary on, held in memory until
/// the part is complete: it then uploads from memory and lands in the staging file.
pub(super) struct Tail {
    pub(super) start: u64,
    pub(super) buf: PartBuf,
}

/// The staging file as seen by part landings that run beside the program's next writes.
pub(super) struct LandingFiles {
    file: std::fs::File,
    /// The same file opened with O_DIRECT, where the filesystem allows it.
    direct: Option<std::fs::File>,
}

/// Largest part S3 accepts.
const MAX_PART_SIZE: u64 = 5 << 30;
/// Largest object S3 stores.
const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// Parts of one size before a streaming upload doubles it.
const PARTS_PER_TIER: u64 = 1000;

/// The part of a streaming upload that holds `offset`: (part number, start, length). The
/// final size is unknown while a program writes, so parts grow: 1,000 parts of `base`, then
/// 1,000 of twice that, and so on (at most 5 GiB each). With 8 MiB parts, files up to 7.8 GiB
/// use 8 MiB parts, and 10,000 parts reach past 5 TiB, the largest object S3 stores.
pub fn streaming_part(base: u64, offset: u64) -> (u32, u64, u64) {
    let base = base.max(MIN_PART_SIZE);
    let (mut tier_start, mut first_number) = (0u64, 1u64);
    for tier in 0.. {
        let mut len = (base << tier.min(20)).min(MAX_PART_SIZE);
        let last_tier = first_number + PARTS_PER_TIER > MAX_PARTS || len == MAX_PART_SIZE;
        if last_tier {
            // The last parts are large enough to reach S3's largest object.
            let needed =
                MAX_OBJECT_SIZE.saturating_sub(tier_start) / (MAX_PARTS + 1 - first_number);
            len = len.max(needed.next_multiple_of(1 << 20)).min(MAX_PART_SIZE);
        }
        let tier_end = tier_start + PARTS_PER_TIER * len;
        if offset < tier_end || last_tier {
            let index = (offset - tier_start) / len;
            return (
                (first_number + index).min(u32::MAX as u64) as u32,
                tier_start + index * len,
                len,
            );
        }
        tier_start = tier_end;
        first_number += PARTS_PER_TIER;
    }
    unreachable!("the last tier returns")
}

impl Staged {
    /// The full part in memory goes to the staging file and waits for its upload.
    pub(super) async fn seal_tail(&mut self) {
        if let Some(tail) = self.stream.tail.take() {
            let bytes = tail.buf.freeze();
            self.start_landing(tail.start, bytes.clone()).await;
            if self.stream.streamable {
                self.stream.sealed.push_back((tail.start, bytes));
            }
        }
    }

    /// Starts writing `bytes` at `offset` of the staging file, beside the program's next
    /// writes. At most a few landings run at once, which also bounds the memory they hold.
    async fn start_landing(&mut self, offset: u64, bytes: Bytes) {
        while self.stream.landing.len() > 2 {
            if let Some(handle) = self.stream.landing.pop_front() {
                self.note_landing(handle.await);
            }
        }
        let files = match &self.stream.landing_files {
            Some(files) => files.clone(),
            None => match self.disk.file.try_clone() {
                Ok(file) => {
                    let files = Arc::new(LandingFiles {
                        file,
                        direct: write_buffers::open_direct(&self.disk.path),
                    });
                    self.stream.landing_files = Some(files.clone());
                    files
                }
                Err(e) => {
                    self.note_landing(Ok(Err(e)));
                    return;
                }
            },
        };
        self.stream
            .landing
            .push_back(tokio::task::spawn_blocking(move || {
                write_buffers::land(&files.file, files.direct.as_ref(), offset, &bytes)
            }));
    }

    /// Records a landing's failure: the bytes it held are not in the staging file.
    fn note_landing(&mut self, outcome: Result<std::io::Result<()>, tokio::task::JoinError>) {
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(key = %self.key, staging = %self.disk.path.display(), %error, "a part could not be written to the staging file; this file can no longer be saved whole");
        self.stream.damaged.get_or_insert_with(|| {
            format!("a part could not be written to the staging file: {error}")
        });
    }

    /// Brings every byte into the staging file: the part in memory, and the landings still
    /// running. Fails when a landing failed.
    pub(super) async fn land(&mut self) -> Result<(), FsError> {
        if let Some(tail) = self.stream.tail.take() {
            if !tail.buf.is_empty() {
                self.start_landing(tail.start, tail.buf.freeze()).await;
            }
        }
        while let Some(handle) = self.stream.landing.pop_front() {
            self.note_landing(handle.await);
        }
        match &self.stream.damaged {
            Some(why) => Err(FsError::Store(StoreError::Other(why.clone()))),
            None => Ok(()),
        }
    }

    /// Ends streaming (the whole file uploads from the staging file at close).
    pub(super) fn stop_streaming(&mut self, store: &Arc<dyn ObjectStore>, why: &str) {
        if let Some(stream) = self.stream.upload.take() {
            stream.abandon(store, &self.key, why);
        }
        self.stream.streamable = false;
        self.stream.sealed.clear();
    }

    /// Starts every part of a sequentially written new file that the writer has moved past
    /// (with `to_end`, every part: the file is complete), from memory where a sealed part
    /// holds it, else from the staging file. Waits while too many parts are in flight. Never
    /// fails the write: a failed part stops streaming.
    pub(super) async fn advance_stream(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
        to_end: bool,
    ) {
        if !self.stream.streamable || !self.state.is_dirty() || self.stream.damaged.is_some() {
            self.stream.sealed.clear();
            return;
        }
        if self.stream.upload.is_none() {
            // Once the writer is past the first part, the file needs a multipart upload
            // anyway; smaller files go up in one PUT at close.
            let (_, second, _) = streaming_part(tuning.part_size, tuning.part_size);
            if to_end || self.size <= second {
                return;
            }
            match store.create_multipart(&self.key, &self.headers()).await {
                Ok(id) => {
                    self.stream.upload = Some(StreamingUpload {
                        id,
                        base: tuning.part_size,
                        done: Vec::new(),
                        in_flight: VecDeque::new(),
                        sealed_through: 0,
                    })
                }
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "no streaming upload; the file uploads at close");
                    self.stop_streaming(store, "could not start");
                    return;
                }
            }
        }
        let Some(mut stream) = self.stream.upload.take() else {
            return;
        };
        loop {
            let (number, start, len) = streaming_part(stream.base, stream.sealed_through);
            let end = (start + len).min(self.size);
            let past = if to_end {
                start < self.size
            } else {
                end < self.size
            };
            // Without `to_end`, part 10,000 waits for close: it must take the rest of the file.
            if !past || start != stream.sealed_through || (!to_end && number as u64 >= MAX_PARTS) {
                break;
            }
            if let Err(e) = stream
                .make_room(tuning.upload_concurrency, tuning.buffer_memory, end - start)
                .await
            {
                self.stream.upload = Some(stream);
                self.stop_streaming(store, &format!("a part failed: {e}"));
                return;
            }
            // Other files' parts count too: the budget is the mount's.
            let permit = self.disk.cache.uploads().admit(end - start).await;
            let body = match self.stream.sealed.front() {
                Some((at, bytes)) if *at == start && bytes.len() as u64 == end - start => {
                    self.stream.sealed.pop_front().map(|(_, b)| Ok(b))
                }
                _ => None,
            }
            .unwrap_or_else(|| read_piece(&self.disk.file, start, end - start));
            match body {
                Ok(body) => stream.start_part(store, &self.key, number, body, permit),
                Err(e) => {
                    self.stream.upload = Some(stream);
                    self.stop_streaming(store, &format!("reading the staging file: {e}"));
                    return;
                }
            }
            stream.sealed_through = end;
        }
        self.stream
            .sealed
            .retain(|(at, _)| *at >= stream.sealed_through);
        self.stream.upload = Some(stream);
    }

    /// Finishes a streaming upload: starts the parts left (the one in memory last), waits for
    /// them and for the staging file to hold every byte, completes. `None` when there is no
    /// streaming upload (none began, or one stopped earlier): the caller then uploads the
    /// whole file from the staging file. A failure while finishing (a part, landing the
    /// staging file, more than 10,000 parts) aborts the upload and comes back as `Some(Err)`,
    /// with every byte in the staging file for the recovery copy.
    pub(super) async fn finish_streaming(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Option<Result<String, StoreError>> {
        self.stream.upload.as_ref()?;
        self.seal_tail().await;
        self.advance_stream(store, tuning, true).await;
        let mut stream = self.stream.upload.take()?;
        let mut failure = None;
        while let Some((_, handle)) = stream.in_flight.pop_front() {
            match joined(handle.await) {
                Ok(done) => stream.done.push(done),
                Err(e) => failure = Some(e),
            }
        }
        // The recovery copy must be whole if anything fails from here on.
        if let Err(e) = self.land().await {
            failure.get_or_insert(StoreError::Other(e.to_string()));
        }
        if failure.is_none() && stream.sealed_through < self.size {
            failure = Some(StoreError::Other(format!(
                "{} bytes do not fit in the 10,000 parts of a multipart upload (S3 objects \
                 hold at most 5 TiB)",
                self.size
            )));
        }
        let parts = match failure {
            Some(e) => Err(e),
            None => Ok(stream.done),
        };
        Some(complete_or_abort(store, &self.key, &stream.id, parts).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_parts_tile_the_file_and_grow_to_reach_five_tib() {
        for base in [MIN_PART_SIZE, 8 << 20, 100 << 20, 1 << 30] {
            let mut offset = 0;
            let mut last_len = 0;
            for expected in 1..=MAX_PARTS as u32 {
                let (number, start, len) = streaming_part(base, offset);
                assert_eq!((number, start), (expected, offset), "base {base}");
                assert!(len >= last_len && (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&len));
                assert_eq!(len % write_buffers::DIRECT_ALIGN as u64, 0);
                // Any offset inside the part maps to it.
                assert_eq!(streaming_part(base, offset + len - 1).0, number);
                (offset, last_len) = (offset + len, len);
            }
            assert!(
                offset >= MAX_OBJECT_SIZE,
                "base {base}: 10,000 parts reach {offset}"
            );
        }
        let eight = 8 << 20;
        assert_eq!(streaming_part(eight, 0), (1, 0, eight));
        assert_eq!(
            streaming_part(eight, 1000 * eight),
            (1001, 1000 * eight, 2 * eight)
        );
    }
}
