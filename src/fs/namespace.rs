//! Changes to the tree and to attributes: unlink, mkdir, rmdir, rename (files and whole
//! directories), symlinks, and chmod/chown/utimensat stored as s3fs-style metadata.
//!
//! S3 has no rename and no in-place metadata update: both are CopyObject (UploadPartCopy
//! above the single-copy limit), followed by a delete for a rename.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;

use super::error::FsError;
use super::inode::Ino;
use super::meta::{apply_change, attr_headers, dir_attr, file_attr, AttrChange};
use super::write::{complete_or_abort, part_size_for, send_parts, tile, PartSources, PlannedPart};
use super::{lock, Attr, Fs, Kind, OpenFile, Special};
use crate::store::{ByteRange, ListRequest, Metadata, StoreError};

/// Longest symlink target (PATH_MAX).
const SYMLINK_MAX: u64 = 4096;

/// Objects copied at once by a directory rename.
const RENAME_CONCURRENCY: usize = 16;

/// What the caller (the kernel request) is: new objects are owned by it.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Fs {
    /// Removes a file (DeleteObject). A file open for writing loses its name at once, as on
    /// a local disk: its handles keep reading and writing the staged bytes, and its last
    /// close uploads nothing. If the bucket refuses the DELETE, nothing changes.
    pub async fn unlink(&self, parent: Ino, name: &str) -> Result<(), FsError> {
        self.writable()?;
        let (_, path) = self.child(parent, name)?;
        let ino = lock(&self.names.inodes).peek(Kind::File, &path);
        let key = self.key_of(&path);
        self.detach_staged(ino, async { Ok(self.store.delete_object(&key).await?) })
            .await?;
        lock(&self.names.inodes).detach(ino);
        self.note_path(&path, None);
        self.names.meta.forget_attr(ino);
        self.names.meta.forget_head(&key);
        self.names.meta.put_miss(parent, name);
        Ok(())
    }

    /// Creates a directory as a `dir/` marker object (carrying its mode and owner), so that
    /// it survives while empty.
    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &str,
        perm: u16,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let (_, path) = self.child(parent, name)?;
        let ino = lock(&self.names.inodes).peek(Kind::Dir, &path);
        let attr = Attr::created(ino, Kind::Dir, perm, caller, 0);
        let (marker, headers) = (
            self.dir_prefix(&path),
            attr_headers(&attr, &Metadata::new()),
        );
        let etag = self
            .store
            .put_object(&marker, Bytes::new(), &headers)
            .await?;
        self.remember_marker(&marker, &etag, headers);
        let ino = lock(&self.names.inodes).remember(parent, Kind::Dir, &path);
        // A folder made here is empty, and known to be: creating a tree inside it looks
        // nothing up.
        self.names.snapshots.start_empty(ino);
        self.note_path(&path, Some((Kind::Dir, attr.clone())));
        self.names.meta.forget_miss(parent, name);
        self.names.meta.put_attr(attr.clone());
        Ok(attr)
    }

    /// Removes an empty directory (its marker, if it has one).
    pub async fn rmdir(&self, parent: Ino, name: &str) -> Result<(), FsError> {
        self.writable()?;
        let (_, path) = self.child(parent, name)?;
        let prefix = self.dir_prefix(&path);
        let page = self
            .store
            .list(ListRequest {
                prefix: prefix.clone(),
                delimited: true,
                max_keys: 2,
                continuation: None,
            })
            .await?;
        if !page.prefixes.is_empty() || page.objects.iter().any(|o| o.key != prefix) {
            return Err(FsError::NotEmpty);
        }
        self.store.delete_object(&prefix).await?;
        let ino = lock(&self.names.inodes).peek(Kind::Dir, &path);
        self.names.snapshots.forget(ino);
        self.note_path(&path, None);
        self.names.meta.forget_attr(ino);
        self.names.meta.put_miss(parent, name);
        Ok(())
    }

    /// Creates a symbolic link the way s3fs stores one: an object whose content is the target
    /// and whose mode says S_IFLNK, so that either tool reads the other's links.
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        if target.is_empty() || target.len() as u64 > SYMLINK_MAX {
            return Err(FsError::Invalid);
        }
        let content = Bytes::copy_from_slice(target.as_bytes());
        self.create_object_entry(parent, name, Kind::Symlink, 0o777, 0, caller, content)
            .await
    }

    /// Creates a fifo, socket or device node (mknod, mkfifo, bind) the way s3fs stores one:
    /// an empty object whose mode header carries the file type, and, for a device, its
    /// number in one more header that s3fs ignores.
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        special: Special,
        perm: u16,
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let kind = Kind::Special(special);
        let rdev = if kind.is_device() { rdev } else { 0 };
        self.create_object_entry(parent, name, kind, perm, rdev, caller, Bytes::new())
            .await
    }

    /// Puts a new object-backed entry that is not a file being written (a symlink, a special
    /// file) with its attributes as headers, and records its name.
    #[allow(clippy::too_many_arguments)]
    async fn create_object_entry(
        &self,
        parent: Ino,
        name: &str,
        kind: Kind,
        perm: u16,
        rdev: u32,
        caller: Caller,
        content: Bytes,
    ) -> Result<Attr, FsError> {
        let (_, path) = self.child(parent, name)?;
        let ino = lock(&self.names.inodes).peek(kind, &path);
        let mut attr = Attr {
            rdev,
            ..Attr::created(ino, kind, perm, caller, content.len() as u64)
        };
        let headers = attr_headers(&attr, &Metadata::new());
        let etag = self
            .store
            .put_object(&self.key_of(&path), content, &headers)
            .await?;
        attr.etag = Some(etag);
        lock(&self.names.inodes).remember(parent, kind, &path);
        self.note_path(&path, Some((kind, attr.clone())));
        self.names.meta.forget_miss(parent, name);
        self.names.meta.put_attr(attr.clone());
        Ok(attr)
    }

    /// The target of a symbolic link (at most `SYMLINK_MAX` bytes: an object marked as a
    /// symlink but larger is refused, never read whole).
    pub async fn readlink(&self, ino: Ino) -> Result<Bytes, FsError> {
        let attr = self.getattr(ino).await?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        let node = self.node(ino)?;
        if attr.size > SYMLINK_MAX {
            tracing::warn!(
                path = %node.path,
                size = attr.size,
                "an object marked as a symlink holds more than {SYMLINK_MAX} bytes; not read as a link target (EINVAL)"
            );
            return Err(FsError::Invalid);
        }
        let data = self
            .store
            .get_range(
                &self.key_of(&node.path),
                ByteRange::new(0, attr.size),
                attr.etag.as_deref(),
            )
            .await
            .map_err(FsError::from_pinned_read)?;
        Ok(data)
    }

    /// chmod, chown, utimensat: stored as s3fs's metadata headers.
    pub async fn set_attr(&self, ino: Ino, change: AttrChange) -> Result<Attr, FsError> {
        self.writable()?;
        if change.is_empty() {
            return self.getattr(ino).await;
        }
        self.edit_metadata(ino, &|current, headers| {
            let new = apply_change(current, &change, headers);
            *headers = attr_headers(&new, headers);
            Ok(new)
        })
        .await
    }

    /// Changes the user metadata of a file, symlink or directory with `edit` (which gets the
    /// current attributes and headers, and returns the new attributes), by copying the object
    /// onto itself with the new metadata (no data moves). A file being written takes the
    /// change into its coming upload instead; a directory keeps it on its marker (made if
    /// missing).
    pub(super) async fn edit_metadata(
        &self,
        ino: Ino,
        edit: &(dyn Fn(&Attr, &mut Metadata) -> Result<Attr, FsError> + Send + Sync),
    ) -> Result<Attr, FsError> {
        let attr = self.edit_metadata_of(ino, edit).await?;
        if ino != Ino::ROOT {
            let node = self.node(ino)?;
            self.note_path(&node.path, Some((attr.kind, attr.clone())));
        }
        Ok(attr)
    }

    async fn edit_metadata_of(
        &self,
        ino: Ino,
        edit: &(dyn Fn(&Attr, &mut Metadata) -> Result<Attr, FsError> + Send + Sync),
    ) -> Result<Attr, FsError> {
        let node = self.node(ino)?;
        if let Some(staged) = self.staged_of(ino) {
            let mut s = staged.lock().await;
            let current = self.written_attr(ino, s.size(), None, &s.headers());
            let mut headers = s.metadata.clone();
            let new = edit(&current, &mut headers)?;
            let modified = (new.mtime != current.mtime).then_some(new.mtime);
            s.set_metadata(headers, modified)?;
            if !s.is_dirty() {
                // Nothing to upload at close: the bucket's object takes the change now.
                let key = s.key.clone();
                let etag = self
                    .copy_whole(&key, &key, s.size(), Some(&s.headers()))
                    .await?;
                s.retarget(&key, &etag)?;
                self.names.meta.forget_head(&key);
                // Same bytes, new ETag: the kernel's cached pages stay valid.
                self.handles.cached_etags.insert(ino, etag);
            }
            // The attributes cached at the last upload describe the old metadata; once the
            // staging copy is gone, getattr must not serve them.
            self.names.meta.forget_attr(ino);
            return Ok(self.written_attr(ino, s.size(), None, &s.headers()));
        }
        let marker_of_dir = node.kind == Kind::Dir;
        let key = self.object_key(&node);
        if key.is_empty() {
            // The bucket's root has no object to carry metadata.
            return Err(FsError::NotPermitted);
        }
        // A folder's marker this mount wrote or read within --metadata-ttl is known: its
        // attributes change with one PUT (tar sets a folder's mode and mtime after filling it).
        let known_marker = match marker_of_dir && self.names.meta.attr(ino).is_some() {
            true => self.names.meta.last_head(&key),
            false => None,
        };
        let info = match known_marker {
            Some(info) => Some(info),
            None => match self.store.head(&key).await {
                Ok(info) => Some(info),
                Err(StoreError::NotFound) if marker_of_dir => None,
                Err(e) => return Err(e.into()),
            },
        };
        let current = match (&info, marker_of_dir) {
            (_, true) => dir_attr(ino, info.as_ref(), &self.cfg),
            (Some(info), false) => file_attr(ino, info, &self.cfg),
            (None, false) => return Err(FsError::NotFound),
        };
        let mut headers = info
            .as_ref()
            .map(|i| i.metadata.clone())
            .unwrap_or_default();
        let mut new = edit(&current, &mut headers)?;
        let etag = match &info {
            Some(info) if !marker_of_dir => {
                self.copy_whole(&key, &key, info.size, Some(&headers))
                    .await?
            }
            // A marker is empty: writing it anew is the copy (and an implicit directory gets
            // a marker to hold its attributes).
            _ => self.store.put_object(&key, Bytes::new(), &headers).await?,
        };
        if marker_of_dir {
            self.remember_marker(&key, &etag, headers);
        } else {
            new.etag = Some(etag.clone());
            self.handles.cached_etags.insert(ino, etag);
            self.names.meta.forget_head(&key);
        }
        self.names.meta.put_attr(new.clone());
        Ok(new)
    }

    /// What the bucket holds as a folder's marker after this mount wrote it.
    fn remember_marker(&self, key: &str, etag: &str, metadata: Metadata) {
        self.names.meta.put_head(&crate::store::ObjectInfo {
            key: key.to_string(),
            size: 0,
            last_modified: std::time::SystemTime::now(),
            etag: etag.to_string(),
            metadata,
            storage_class: None,
        });
    }

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

#[cfg(test)]
pub(super) fn caller() -> Caller {
    Caller { uid: 0, gid: 0 }
}
