//! Changes to the tree and to attributes: unlink, mkdir, rmdir, symlinks, special files, and
//! chmod/chown/utimensat stored as s3fs-style metadata (renames are in `rename.rs`).
//!
//! S3 has no in-place metadata update: a change of attributes is a CopyObject of the object
//! onto itself (UploadPartCopy above the single-copy limit).

use bytes::Bytes;

use super::error::FsError;
use super::inode::Ino;
use super::meta::{apply_change, attr_headers, dir_attr, file_attr, AttrChange};
use super::{lock, Attr, Fs, Kind, Special};
use crate::store::{ByteRange, ListRequest, Metadata, StoreError};

/// Longest symlink target (PATH_MAX).
const SYMLINK_MAX: u64 = 4096;

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
}

#[cfg(test)]
pub(super) fn caller() -> Caller {
    Caller { uid: 0, gid: 0 }
}
