//! Uploading a staging copy: the conflict check, the upload itself (the streaming upload's
//! end, a whole-file upload, or an upload over the object it mirrors, copying unchanged runs
//! server-side), and what follows: `Clean`, or `Failed` with the bytes in `recovery/`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::parts::{plan_parts, send_parts, upload_file, PartSources, PlannedPart};
use super::{complete_or_abort, part_size_for, ConflictPolicy, Staged, WriteTuning, MAX_PARTS};
use crate::fs::error::FsError;
use crate::fs::journal::{Base, Source};
use crate::fs::ranges::RangeSet;
use crate::store::{ObjectStore, StoreError};

impl Staged {
    /// Checks that the bucket still holds the version this copy was made against. A file the
    /// program created is checked only under `--conflict=fail` (it costs a HEAD per new file).
    async fn check_conflict(
        &self,
        store: &Arc<dyn ObjectStore>,
        policy: ConflictPolicy,
    ) -> Result<(), StoreError> {
        let expected = match &self.base {
            Base::Unknown => return Ok(()),
            Base::Absent if policy == ConflictPolicy::Warn => return Ok(()),
            Base::Absent => None,
            Base::Etag(etag) => Some(etag.as_str()),
        };
        let now = match store.head(&self.key).await {
            Ok(info) => Some(info.etag),
            Err(StoreError::NotFound) => None,
            // The upload will meet the same trouble and report it.
            Err(_) => return Ok(()),
        };
        if now.as_deref() == expected {
            return Ok(());
        }
        let describe = |e: Option<&str>| e.unwrap_or("absent").to_string();
        match policy {
            ConflictPolicy::Warn => {
                tracing::warn!(
                    key = %self.key,
                    opened_at = %describe(expected),
                    now = %describe(now.as_deref()),
                    "conflict: the object changed in the bucket since this file was opened here; this close replaces that version (last close wins; --conflict=fail refuses instead)"
                );
                Ok(())
            }
            ConflictPolicy::Fail => {
                tracing::error!(
                    key = %self.key,
                    opened_at = %describe(expected),
                    now = %describe(now.as_deref()),
                    "conflict: the object changed in the bucket since this file was opened here; upload refused (--conflict=fail)"
                );
                Err(StoreError::PreconditionFailed)
            }
        }
    }

    /// Uploads the staging copy if it changed. On failure, keeps the bytes in `recovery/`.
    pub async fn upload(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<Option<String>, FsError> {
        let store = &self.tracked(store);
        if self.stream.upload.is_none() {
            self.record.progress.restart();
        }
        self.record
            .progress
            .total
            .store(self.size, Ordering::Relaxed);
        self.check_not_failed()?;
        if !self.state.is_dirty() {
            tracing::debug!(key = %self.key, state = ?self.state, "nothing to upload");
            return Ok(None);
        }
        tracing::debug!(key = %self.key, size = self.size, streaming = self.stream.upload.is_some(), "uploading");
        self.begin_upload();
        let over_source = self.source.as_ref().is_some_and(|s| s.len > 0);
        let result = match self.check_conflict(store, tuning.conflict).await {
            Err(e) => {
                self.stop_streaming(store, "conflict");
                Err(e)
            }
            Ok(()) => match self.finish_streaming(store, tuning).await {
                Some(streamed) => streamed,
                // No streaming upload (or it stopped): the file goes up from the staging file.
                None => match self.land().await {
                    Err(e) => Err(StoreError::Other(e.to_string())),
                    Ok(()) if over_source => self.upload_over_source(store, tuning).await,
                    Ok(()) => {
                        let headers = self.headers();
                        upload_file(
                            store,
                            &self.key,
                            (&self.disk.file, &self.disk.cache.uploads),
                            self.size,
                            &headers,
                            tuning,
                        )
                        .await
                    }
                },
            },
        };
        // Whatever happened, the next change starts from a known state: no streaming, except
        // into a file that is empty in the bucket (programs that create a file often close a
        // first descriptor of it before writing through another, as dd does).
        self.stream.streamable = false;
        match result {
            Ok(etag) => {
                self.uploaded(&etag);
                Ok(Some(etag))
            }
            Err(e) => {
                self.upload_failed(&e, store.as_ref()).await;
                Err(FsError::Store(e))
            }
        }
    }

    /// After an upload the bucket holds exactly this file: it becomes the new source, so
    /// a later change uploads only what differs from it.
    pub(super) fn take_uploaded_as_source(&mut self, etag: &str) {
        let mut local = match self.source.take() {
            Some(src) => {
                let mut local = src.local;
                local.insert(src.len, self.size);
                local
            }
            None => {
                let mut all = RangeSet::default();
                all.insert(0, self.size);
                all
            }
        };
        local.clip(self.size);
        self.source = (self.size > 0).then(|| Source {
            key: self.key.clone(),
            etag: etag.to_string(),
            len: self.size,
            local,
            written: RangeSet::default(),
        });
    }

    /// Uploads a file that mirrors an object: unchanged runs are copied server-side, the
    /// rest (filled from the object where a part needs it) is uploaded.
    async fn upload_over_source(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        tuning: WriteTuning,
    ) -> Result<String, StoreError> {
        let as_store = |e: FsError| match e {
            FsError::Changed => StoreError::PreconditionFailed,
            FsError::Store(e) => e,
            other => StoreError::Other(other.to_string()),
        };
        let part = part_size_for(self.size, tuning.part_size);
        let plan = match &self.source {
            Some(src) if self.size > part => plan_parts(self.size, part, src.len, &src.written),
            _ => Vec::new(),
        };
        let headers = self.headers();
        if plan.len() < 2 || plan.len() as u64 > MAX_PARTS {
            // Small, or too fragmented for 10,000 parts: the whole file goes up.
            self.fill(0, self.size, store.as_ref())
                .await
                .map_err(as_store)?;
            return upload_file(
                store,
                &self.key,
                (&self.disk.file, &self.disk.cache.uploads),
                self.size,
                &headers,
                tuning,
            )
            .await;
        }
        for planned in &plan {
            if let PlannedPart::Upload(start, end) = *planned {
                self.fill(start, end, store.as_ref())
                    .await
                    .map_err(as_store)?;
            }
        }
        let Some(src) = &self.source else {
            return Err(StoreError::Other("the source object vanished".into()));
        };
        let (source_key, source_etag) = (src.key.as_str(), src.etag.as_str());
        let key = self.key.as_str();
        let upload_id = store.create_multipart(key, &headers).await?;
        let upload = upload_id.as_str();
        let parts = send_parts(
            store,
            key,
            upload,
            plan,
            1,
            PartSources {
                object: Some((source_key, Some(source_etag))),
                file: Some((&self.disk.file, &self.disk.cache.uploads)),
            },
            tuning.parts_at_once(part),
        )
        .await;
        complete_or_abort(store, key, upload, parts).await
    }

    /// Moves the bytes to `recovery/TIME/PATH` (the journal record goes: a failed copy is
    /// the user's now, not the mount's).
    pub(super) fn keep_for_recovery(&mut self) -> String {
        let stamp = crate::fs::journal::utc_stamp(std::time::SystemTime::now());
        let target = self
            .disk
            .cache
            .recovery_place(&stamp, &self.disk.cache.path_of(&self.key));
        match std::fs::rename(&self.disk.path, &target) {
            Ok(()) => {
                self.record.journal.remove_record();
                self.disk.path = target.clone();
                target.display().to_string()
            }
            Err(e) => {
                tracing::error!(error = %e, "could not move the staging file to recovery; it stays at its staging path");
                self.disk.path.display().to_string()
            }
        }
    }
}
