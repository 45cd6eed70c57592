//! Renames: a file is copied (CopyObject, metadata kept; UploadPartCopy above the single-copy
//! limit) then deleted; a directory moves every object below it the same way, several at
//! once, so that a rename stopped halfway leaves each object at its old or its new place. Open
//! readers and files being written follow their object to its new key.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::StreamExt;

use super::error::FsError;
use super::inode::Ino;
use super::write::{complete_or_abort, part_size_for, send_parts, tile, PartSources, PlannedPart};
use super::{lock, Fs, Kind, OpenFile};
use crate::store::{ListRequest, Metadata, StoreError};

/// Objects copied at once by a directory rename.
const RENAME_CONCURRENCY: usize = 16;

impl Fs {
    /// Copies one object (CopyObject up to the single-copy limit, UploadPartCopy parts above
    /// it), keeping its metadata or replacing it with `metadata`. Returns the new ETag.
    pub(super) async fn copy_whole(
        &self,
        from: &str,
        to: &str,
        size: u64,
        metadata: Option<&Metadata>,
    ) -> Result<String, FsError> {
        if size <= self.cfg.copy_limit {
            return Ok(self.store.copy_object(from, to, metadata).await?);
        }
        let metadata = match metadata {
            Some(m) => m.clone(),
            None => self.store.head(from).await?.metadata,
        };
        let part = part_size_for(size, self.cfg.copy_part_size);
        let plan = tile(0, size, part, PlannedPart::Copy);
        let upload_id = self.store.create_multipart(to, &metadata).await?;
        let parts = send_parts(
            &self.store,
            to,
            &upload_id,
            plan,
            1,
            PartSources {
                object: Some((from, None)),
                file: None,
            },
            self.cfg.write.upload_concurrency,
        )
        .await;
        Ok(complete_or_abort(&self.store, to, &upload_id, parts).await?)
    }

    /// Points open readers of `ino` (or of keys below a renamed directory) at the new key.
    async fn move_readers(&self, moved: &std::collections::HashMap<String, (String, String)>) {
        let readers: Vec<_> = lock(&self.handles.files)
            .values()
            .filter(|f| matches!(f.as_ref(), OpenFile::Object { .. }))
            .cloned()
            .collect();
        for file in readers {
            if let OpenFile::Object { reader, .. } = file.as_ref() {
                let mut reader = reader.lock().await;
                if let Some((key, etag)) = moved.get(reader.key()) {
                    reader.moved(key.clone(), etag.clone());
                }
            }
        }
    }

    /// Renames a file (CopyObject, metadata kept, then DeleteObject) or a directory (every
    /// object below it, the same way). With `no_replace`, an existing target is an error.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        no_replace: bool,
    ) -> Result<(), FsError> {
        self.writable()?;
        let (_, from) = self.child(parent, name)?;
        let (_, to) = self.child(new_parent, new_name)?;
        let (ino, is_dir) = {
            let inodes = lock(&self.names.inodes);
            let file = inodes.peek(Kind::File, &from);
            let dir = inodes.peek(Kind::Dir, &from);
            if inodes.get(file).is_none() && inodes.get(dir).is_some() {
                (dir, true)
            } else {
                (file, false)
            }
        };
        // The kernel keeps using the same numbers: the renamed node, and under a directory,
        // every node below it.
        let moved_below = if is_dir {
            self.rename_dir(ino, &from, &to, no_replace).await?;
            let mut inodes = lock(&self.names.inodes);
            inodes.move_to(ino, new_parent, &to);
            inodes.move_tree(&from, &to)
        } else {
            self.rename_file(ino, &from, &to, no_replace).await?;
            lock(&self.names.inodes).move_to(ino, new_parent, &to);
            Vec::new()
        };
        // Copies may carry new ETags: attributes are asked again, and snapshots of moved
        // folders go (their entries name the old objects).
        for moved in &moved_below {
            self.names.meta.forget_attr(*moved);
            self.names.snapshots.forget(*moved);
        }
        self.names.meta.forget_attr(ino);
        self.names.meta.put_miss(parent, name);
        self.names.meta.forget_miss(new_parent, new_name);
        self.note_path(&from, None);
        if is_dir {
            self.names.snapshots.forget(ino);
        }
        match self.getattr(ino).await {
            Ok(attr) => self.note_path(&to, Some((attr.kind, attr))),
            Err(_) => self.names.snapshots.forget(new_parent),
        }
        Ok(())
    }

    async fn rename_file(
        &self,
        ino: Ino,
        from: &str,
        to: &str,
        no_replace: bool,
    ) -> Result<(), FsError> {
        let (from_key, to_key) = (self.key_of(from), self.key_of(to));
        if no_replace {
            match self.store.head(&to_key).await {
                Ok(_) => return Err(FsError::Exists),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // A file being written goes up first, so that the copy has its latest bytes.
        let staged = self.staged_of(ino);
        let mut held = match &staged {
            Some(staged) => {
                let mut s = staged.lock().await;
                self.upload_staged(ino, &mut s).await?;
                Some(s)
            }
            None => None,
        };
        let size = match &held {
            Some(s) => s.size(),
            None => self.getattr(ino).await?.size,
        };
        // A file open elsewhere under the target name keeps its bytes: it is detached before
        // the copy replaces its object.
        let replaced = lock(&self.names.inodes).peek(Kind::File, to);
        let copied = if replaced != ino {
            let copy = async { self.copy_whole(&from_key, &to_key, size, None).await };
            let mut etag = None;
            self.detach_staged(replaced, async {
                etag = Some(copy.await?);
                Ok(())
            })
            .await?;
            etag
        } else {
            None
        };
        let etag = match copied {
            Some(etag) => etag,
            None => self.copy_whole(&from_key, &to_key, size, None).await?,
        };
        if let Some(s) = held.as_mut() {
            s.retarget(&to_key, &etag)?;
        }
        drop(held);
        self.store.delete_object(&from_key).await?;
        self.names.meta.forget_head(&from_key);
        let moved = std::collections::HashMap::from([(from_key, (to_key, etag))]);
        self.move_readers(&moved).await;
        Ok(())
    }

    /// Moves every object below `from` to `to`, each one copied then deleted, several at
    /// once. If it stops halfway, every object is still at its old or its new place (never
    /// neither) and the log says how to finish.
    async fn rename_dir(
        &self,
        dir_ino: Ino,
        from: &str,
        to: &str,
        no_replace: bool,
    ) -> Result<(), FsError> {
        let (from_prefix, to_prefix) = (self.dir_prefix(from), self.dir_prefix(to));
        if to_prefix.starts_with(&from_prefix) {
            return Err(FsError::Invalid);
        }
        let target = self
            .store
            .list(ListRequest {
                prefix: to_prefix.clone(),
                delimited: true,
                max_keys: 2,
                continuation: None,
            })
            .await?;
        if !target.prefixes.is_empty() || target.objects.iter().any(|o| o.key != to_prefix) {
            return Err(FsError::NotEmpty);
        }
        if no_replace && !target.objects.is_empty() {
            return Err(FsError::Exists);
        }
        match self.store.head(&self.key_of(to)).await {
            Ok(_) => return Err(FsError::NotDir),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let objects = self.objects_below(&from_prefix, from).await?;
        if objects.is_empty() && lock(&self.writing.staged).is_empty() {
            return Err(FsError::NotFound);
        }
        // Files being written below go up first; they upload to their new keys afterwards.
        let staged = self.staged_files();
        let mut moving_staged = Vec::new();
        for (ino, staged) in staged {
            let mut s = staged.lock().await;
            if s.key.starts_with(&from_prefix) {
                self.upload_staged(ino, &mut s).await?;
                drop(s);
                moving_staged.push(staged);
            }
        }
        // Listed again after those uploads, so a file created just now moves too.
        let objects = if moving_staged.is_empty() {
            objects
        } else {
            self.objects_below(&from_prefix, from).await?
        };
        let total = objects.len();
        let stop = AtomicBool::new(false);
        let done = AtomicUsize::new(0);
        let moves = futures::stream::iter(objects)
            .map(|(key, size)| {
                let new_key = format!("{to_prefix}{}", &key[from_prefix.len()..]);
                let (stop, done) = (&stop, &done);
                async move {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    let moved = async {
                        let etag = self.copy_whole(&key, &new_key, size, None).await?;
                        self.store.delete_object(&key).await?;
                        Ok::<_, FsError>(etag)
                    }
                    .await;
                    match moved {
                        Ok(etag) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            Some(Ok((key, (new_key, etag))))
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            Some(Err((key, e)))
                        }
                    }
                }
            })
            .buffer_unordered(RENAME_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut moved = std::collections::HashMap::new();
        let mut failure = None;
        for result in moves.into_iter().flatten() {
            match result {
                Ok((key, target)) => {
                    moved.insert(key, target);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        for key in moved.keys() {
            self.names.meta.forget_head(key);
        }
        self.move_readers(&moved).await;
        if let Some((key, error)) = failure {
            let done = done.load(Ordering::Relaxed);
            tracing::error!(
                from = %from_prefix,
                to = %to_prefix,
                moved = done,
                left = total - done,
                failed_key = %key,
                %error,
                "directory rename stopped halfway: every object is either still below the old \
                 name or already below the new one, none is lost. To finish, move what is left \
                 (e.g. `cp -a OLD/. NEW/ && rm -r OLD` inside the mount)"
            );
            return Err(error);
        }
        for staged in moving_staged {
            let mut s = staged.lock().await;
            if let Some((key, etag)) = moved.get(&s.key) {
                s.retarget(key, etag)?;
            }
        }
        tracing::debug!(from = %from_prefix, to = %to_prefix, objects = total, ino = dir_ino.0, "directory renamed");
        Ok(())
    }

    /// Every object below `prefix` (key, size), refusing with EXDEV above the rename limit.
    async fn objects_below(&self, prefix: &str, path: &str) -> Result<Vec<(String, u64)>, FsError> {
        let mut objects = Vec::new();
        let mut continuation = None;
        loop {
            let page = self
                .store
                .list(ListRequest {
                    prefix: prefix.to_string(),
                    delimited: false,
                    max_keys: 1000,
                    continuation,
                })
                .await?;
            objects.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            let limit = self.cfg.max_dir_rename_objects;
            if objects.len() as u64 > limit {
                tracing::warn!(
                    directory = path,
                    limit,
                    "directory rename refused: it holds more objects than --max-dir-rename-objects \
                     ({limit}); answered EXDEV, so `mv` copies and deletes file by file instead. \
                     Raise the limit to let pailfs move it with server-side copies."
                );
                return Err(FsError::CrossDevice);
            }
            match page.next {
                Some(token) => continuation = Some(token),
                None => return Ok(objects),
            }
        }
    }
}
