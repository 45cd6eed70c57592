//! Multipart uploads of a staging file: which parts a file goes up in (copied server-side
//! where an object already holds the bytes, uploaded from the staging file elsewhere), and
//! the part runner that sends them within the mount's upload budget.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{UploadBudget, WriteTuning};
use crate::fs::blocking::blocking;
use crate::fs::ranges::RangeSet;
use crate::store::{ByteRange, Metadata, ObjectStore, StoreError, UploadedPart};

/// Largest number of parts S3 accepts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// Smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Largest part copied server-side in one UploadPartCopy (S3 allows 5 GiB).
const COPY_PART: u64 = 512 << 20;

/// One part of a multipart upload over a source object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannedPart {
    /// `[start, end)` unchanged: UploadPartCopy from the source.
    Copy(u64, u64),
    /// `[start, end)` read from the staging file (filled where needed).
    Upload(u64, u64),
}

/// Parts for uploading a file of `size` bytes whose first `source_len` bytes mirror an object,
/// except the `written` ones: unchanged runs of at least the minimum part size (or ending the
/// file) are copied, everything else is uploaded in parts of `part` bytes.
pub fn plan_parts(size: u64, part: u64, source_len: u64, written: &RangeSet) -> Vec<PlannedPart> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        if pos < source_len && !written.overlaps(pos, pos + 1) {
            let run_end = written.next_start(pos).unwrap_or(u64::MAX).min(source_len);
            if run_end - pos >= MIN_PART_SIZE || run_end == size {
                let end = run_end.min(pos + COPY_PART.max(part));
                out.push(PlannedPart::Copy(pos, end));
                pos = end;
                continue;
            }
        }
        let end = (pos + part).min(size);
        out.push(PlannedPart::Upload(pos, end));
        pos = end;
    }
    out
}

/// Part size for an object of `size` bytes: at least `part_size`, large enough that the object
/// fits in 10,000 parts (so a 5 TiB object still uploads).
pub fn part_size_for(size: u64, part_size: u64) -> u64 {
    part_size.max(MIN_PART_SIZE).max(size.div_ceil(MAX_PARTS))
}

impl WriteTuning {
    /// Parts of `part` bytes uploaded at once: within the part count and the memory cap
    /// (one at least), as parts grow for huge files.
    pub fn parts_at_once(&self, part: u64) -> usize {
        self.upload_concurrency
            .min((self.buffer_memory / part.max(1)) as usize)
            .max(1)
    }
}

/// Uploads the whole staging file: one PUT up to a part, a multipart upload above.
pub(super) async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    (file, budget): (&std::fs::File, &UploadBudget),
    size: u64,
    metadata: &Metadata,
    tuning: WriteTuning,
) -> Result<String, StoreError> {
    let part = part_size_for(size, tuning.part_size);
    if size <= part {
        let _permit = budget.admit(size).await;
        return store
            .put_object(key, read_piece(file, 0, size)?, metadata)
            .await;
    }
    let upload_id = store.create_multipart(key, metadata).await?;
    let parts = send_parts(
        store,
        key,
        &upload_id,
        tile(0, size, part, PlannedPart::Upload),
        1,
        PartSources::file(file, budget),
        tuning.parts_at_once(part),
    )
    .await;
    complete_or_abort(store, key, &upload_id, parts).await
}

/// Completes an upload from `parts`; when they or the completion failed, aborts it first so
/// that no parts stay behind (and billed), and passes the failure on.
pub async fn complete_or_abort(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    upload_id: &str,
    parts: Result<Vec<UploadedPart>, StoreError>,
) -> Result<String, StoreError> {
    let result = match parts {
        Ok(parts) => store.complete_multipart(key, upload_id, &parts).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        if let Err(abort) = store.abort_multipart(key, upload_id).await {
            tracing::warn!(key, error = %abort, "could not abort the failed multipart upload; the bucket may keep its parts until a lifecycle rule removes them");
        }
    }
    result
}

/// `[from, to)` cut into parts of `part` bytes (the last may be shorter), each made by
/// `as_part` (`PlannedPart::Upload` or `PlannedPart::Copy`).
pub fn tile(
    from: u64,
    to: u64,
    part: u64,
    as_part: fn(u64, u64) -> PlannedPart,
) -> Vec<PlannedPart> {
    (from..to)
        .step_by(part as usize)
        .map(|start| as_part(start, to.min(start + part)))
        .collect()
}

/// Where the bytes of planned parts come from.
#[derive(Clone, Copy)]
pub struct PartSources<'a> {
    /// For `Copy` parts: the object copied from, and the ETag it must still have.
    pub object: Option<(&'a str, Option<&'a str>)>,
    /// For `Upload` parts: the staging file, and the mount-wide budget each part read from it
    /// waits for.
    pub file: Option<(&'a std::fs::File, &'a UploadBudget)>,
}

impl<'a> PartSources<'a> {
    pub fn file(file: &'a std::fs::File, budget: &'a UploadBudget) -> Self {
        PartSources {
            object: None,
            file: Some((file, budget)),
        }
    }
}

/// Sends `plan` as parts `first`, `first + 1`, … of an upload: copies inside the server,
/// uploads read from the staging file when they start (so `concurrency`, the most at once,
/// also bounds the memory held).
pub async fn send_parts(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    upload_id: &str,
    plan: Vec<PlannedPart>,
    first: u32,
    from: PartSources<'_>,
    concurrency: usize,
) -> Result<Vec<UploadedPart>, StoreError> {
    let missing =
        |what: &str| StoreError::Other(format!("a planned part has no {what} to come from"));
    futures::stream::iter(plan)
        .enumerate()
        .map(|(i, planned)| async move {
            let number = first + i as u32;
            let etag = match planned {
                PlannedPart::Copy(start, end) => {
                    let (source, etag) = from.object.ok_or_else(|| missing("object"))?;
                    store
                        .upload_part_copy(
                            key,
                            upload_id,
                            number,
                            source,
                            etag,
                            ByteRange::new(start, end),
                        )
                        .await?
                }
                PlannedPart::Upload(start, end) => {
                    let (file, budget) = from.file.ok_or_else(|| missing("file"))?;
                    let _permit = budget.admit(end - start).await;
                    let body = read_piece(file, start, end - start)?;
                    store.upload_part(key, upload_id, number, body).await?
                }
            };
            Ok(UploadedPart { number, etag })
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub(super) fn read_piece(file: &std::fs::File, offset: u64, len: u64) -> Result<Bytes, StoreError> {
    let mut buf = vec![0u8; len as usize];
    blocking(|| file.read_exact_at(&mut buf, offset))
        .map_err(|e| StoreError::Other(format!("reading the staging file: {e}")))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_copies_the_old_bytes_and_uploads_only_the_new_ones() {
        let mib = 1u64 << 20;
        let plan = plan_parts(101 * mib, 8 * mib, 100 * mib, &RangeSet::default());
        assert_eq!(
            plan,
            vec![
                PlannedPart::Copy(0, 100 * mib),
                PlannedPart::Upload(100 * mib, 101 * mib)
            ]
        );
        // A 4 KiB patch in the middle: one uploaded part around it, copies on both sides.
        let mut written = RangeSet::default();
        written.insert(50 * mib, 50 * mib + 4096);
        let plan = plan_parts(100 * mib, 8 * mib, 100 * mib, &written);
        assert_eq!(
            plan,
            vec![
                PlannedPart::Copy(0, 50 * mib),
                PlannedPart::Upload(50 * mib, 58 * mib),
                PlannedPart::Copy(58 * mib, 100 * mib)
            ]
        );
        // Every non-last part is at least the minimum, and the parts tile the file.
        let mut written = RangeSet::default();
        for i in 0..30 {
            written.insert(i * 7 * mib + 3, i * 7 * mib + 9);
        }
        let plan = plan_parts(230 * mib, 8 * mib, 200 * mib, &written);
        let mut at = 0;
        for (i, p) in plan.iter().enumerate() {
            let (PlannedPart::Copy(a, b) | PlannedPart::Upload(a, b)) = *p;
            assert_eq!(a, at);
            assert!(b - a >= MIN_PART_SIZE || i == plan.len() - 1, "{p:?}");
            if let PlannedPart::Copy(..) = p {
                assert!(!written.overlaps(a, b) && b <= 200 * mib);
            }
            at = b;
        }
        assert_eq!(at, 230 * mib);
    }

    #[test]
    fn part_size_keeps_huge_objects_within_ten_thousand_parts() {
        assert_eq!(part_size_for(1 << 30, 8 << 20), 8 << 20);
        let five_tib = 5u64 << 40;
        let p = part_size_for(five_tib, 8 << 20);
        assert!(five_tib.div_ceil(p) <= 10_000);
        assert_eq!(part_size_for(100, 1 << 20), MIN_PART_SIZE);
    }
}
