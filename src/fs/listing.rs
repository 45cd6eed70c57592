//! Listing directories for the kernel: open directories streamed page by page, each page
//! completed with HEADs where the bucket keeps attribute metadata (a sample first), the
//! attributes each entry shows, the files being written that the bucket does not list yet,
//! and the snapshot a listing read to its end leaves behind.

use std::sync::Arc;

use super::dir::{self, DirStream, ListedEntry, NewPage};
use super::error::FsError;
use super::inode::{child_path, Ino};
use super::meta::{self, dir_attr, file_attr};
use super::page_sample;
use super::{lock, Attr, DirSinkEntry, Fs, Kind};
use crate::store::{ObjectInfo, StoreError};

impl Fs {
    pub fn opendir(&self, ino: Ino) -> Result<u64, FsError> {
        let node = self.node(ino)?;
        if node.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let fh = self.new_fh();
        let stream = DirStream::new(
            self.dir_prefix(&node.path),
            self.cfg.list_page_size,
            self.page_fetch(),
            self.names.pages_ahead.clone(),
        );
        lock(&self.handles.dirs).insert(fh, Arc::new(tokio::sync::Mutex::new(stream)));
        Ok(fh)
    }

    /// How open directories fetch their pages: with the sample of HEADs that completing a
    /// page needs, taken as each page arrives, unless listings show what they list only.
    fn page_fetch(&self) -> dir::PageFetch {
        if self.cfg.listing_heads {
            page_sample::list_and_sample(self.store.clone(), self.names.meta.memo())
        } else {
            dir::list_only(self.store.clone())
        }
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles.dirs).remove(&fh);
    }

    fn listed_attr(&self, ino: Ino, entry: &ListedEntry) -> Attr {
        let cached = self.names.meta.attr(ino);
        let attr = match (entry.kind, &entry.object, cached) {
            // Keep attributes from a HEAD (with metadata) while they describe the same object.
            (kind, Some(obj), Some(cached))
                if kind != Kind::Dir && cached.etag.as_deref() == Some(obj.etag.as_str()) =>
            {
                return cached
            }
            (Kind::Dir, None, Some(cached)) if cached.kind == Kind::Dir => return cached,
            (Kind::Dir, marker, _) => dir_attr(ino, marker.as_deref(), &self.cfg),
            (_, Some(obj), _) if entry.completed => file_attr(ino, obj, &self.cfg),
            (_, Some(obj), _) => match self.names.meta.head_of(obj) {
                Some(head) => file_attr(ino, &head, &self.cfg),
                None => file_attr(ino, obj, &self.cfg),
            },
            (_, None, _) => dir_attr(ino, None, &self.cfg),
        };
        // Not put in the attribute cache: the snapshot being collected holds these, and the
        // kernel does too (for as long as pailfs would trust them); a million-entry listing
        // would only churn the cache.
        attr
    }

    /// Attributes of a directory whose marker a listing showed: the marker's metadata needs
    /// a HEAD (listings carry none), unless the memo has it for this very marker.
    pub(super) async fn marker_attr(&self, ino: Ino, listed: &ObjectInfo) -> Result<Attr, FsError> {
        let head = match self.names.meta.head_of(listed) {
            Some(head) => head,
            None => match self.store.head(&listed.key).await {
                Ok(head) => {
                    self.names.meta.put_head(&head);
                    head
                }
                Err(StoreError::NotFound) => return Ok(dir_attr(ino, None, &self.cfg)),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(dir_attr(ino, Some(&head), &self.cfg))
    }

    /// Streams entries from cookie `offset` into `sink` until it reports full (returns true) or
    /// the directory ends. With `plus`, every entry the sink accepts takes a kernel reference.
    pub async fn readdir(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        plus: bool,
        sink: &mut (dyn FnMut(DirSinkEntry<'_>) -> bool + Send),
    ) -> Result<(), FsError> {
        let node = self.node(ino)?;
        let stream = lock(&self.handles.dirs)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut stream = stream.lock().await;
        if offset == 0 && stream.untouched() {
            self.walk_ahead(ino, &node, &mut stream);
        }
        let mut cookie = offset;
        // Cookies 0 and 1 are "." and ".."; entry i of the listing has cookie i + 2.
        while cookie < 2 {
            let (target, name) = if cookie == 0 {
                (ino, ".")
            } else {
                (node.parent, "..")
            };
            // ".." of a directory whose parent vanished still answers, with this directory's
            // attributes, rather than failing the whole listing.
            let attr = match self.getattr(target).await {
                Ok(a) => a,
                Err(_) => self.getattr(ino).await?,
            };
            if sink(DirSinkEntry {
                ino: target,
                offset: cookie + 1,
                name,
                attr: &attr,
            }) {
                return Ok(());
            }
            cookie += 1;
        }
        while let Some(entry) = self.next_entry(&mut stream, cookie - 2).await? {
            let path = child_path(&node.path, &entry.name);
            let ino_child = if plus {
                lock(&self.names.inodes).remember(ino, entry.kind, &path)
            } else {
                lock(&self.names.inodes).peek(entry.kind, &path)
            };
            let attr = self.listed_attr(ino_child, &entry);
            if let Some(collector) = stream.collector.as_mut() {
                let budget = self.names.snapshots.budget();
                collector.add(cookie - 2, &entry.name, entry.kind, &attr, budget);
            }
            let full = sink(DirSinkEntry {
                ino: ino_child,
                offset: cookie + 1,
                name: &entry.name,
                attr: &attr,
            });
            if full {
                if plus {
                    self.forget(ino_child, 1);
                }
                return Ok(());
            }
            cookie += 1;
        }
        // The listing ended: what it showed is the directory's snapshot from now on.
        if let Some(collected) = stream.collector.take() {
            self.names.snapshots.commit(ino, collected);
        }
        if let Some(subdirs) = stream.take_subdirs() {
            self.names.walk.listed(ino, subdirs);
        }
        if let Some(head) = stream
            .marker
            .as_ref()
            .and_then(|m| self.names.meta.head_of(m))
        {
            if ino != Ino::ROOT {
                self.names
                    .meta
                    .put_attr(dir_attr(ino, Some(&head), &self.cfg));
            }
        }
        // Then the files of this directory being written that the bucket does not have yet
        // (a copy in progress, an async upload not done): they exist for programs already.
        let listed = stream.listed_count().unwrap_or(cookie - 2);
        let unlisted = self.unlisted_files(&node.path).await;
        for (i, (child, name)) in unlisted.iter().enumerate() {
            let entry_cookie = 2 + listed + i as u64;
            if entry_cookie < cookie {
                continue;
            }
            let Some(attr) = self.staged_attr(*child) else {
                continue;
            };
            if plus {
                lock(&self.names.inodes).remember(ino, Kind::File, &child_path(&node.path, name));
            }
            let full = sink(DirSinkEntry {
                ino: *child,
                offset: entry_cookie + 1,
                name,
                attr: &attr,
            });
            if full {
                if plus {
                    self.forget(*child, 1);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// A folder is about to be read from its start: it starts from a first page listed
    /// ahead, if a walk asked for one recently enough (and nothing changed in the folder
    /// through this mount since), and when it is part of a walk, its next siblings' first
    /// pages are asked for now.
    fn walk_ahead(&self, ino: Ino, node: &super::inode::Node, stream: &mut DirStream) {
        if let Some(page) = self.names.walk.take(
            stream.list_prefix(),
            self.cfg
                .metadata_ttl
                .min(super::walk_ahead::EARLY_PAGE_FRESH),
        ) {
            // A page older than a change made through this mount is dropped (and abandoned).
            if !self.names.snapshots.changed_since(ino, page.started) {
                stream.start_from(page);
            }
        }
        if ino == Ino::ROOT {
            return;
        }
        let Some(parent) = lock(&self.names.inodes).get(node.parent).cloned() else {
            return;
        };
        for sibling in self.names.walk.opened(node.parent, node.name()) {
            let request = crate::store::ListRequest {
                prefix: self.dir_prefix(&child_path(&parent.path, &sibling)),
                delimited: true,
                max_keys: self.cfg.list_page_size,
                continuation: None,
            };
            let fetch = self.page_fetch();
            self.names
                .walk
                .start(request.prefix.clone(), || tokio::spawn(fetch(request)));
        }
    }

    /// Files directly in `dir` whose staging copy the bucket has never had, by name.
    async fn unlisted_files(&self, dir: &str) -> Vec<(Ino, String)> {
        let staged = self.staged_files();
        let mut out = Vec::new();
        for (ino, staged) in staged {
            let Some(node) = lock(&self.names.inodes).get(ino).cloned() else {
                continue;
            };
            let parent = node.path.rsplit_once('/').map_or("", |(p, _)| p);
            if parent != dir || !self.is_only_local(&staged) {
                continue;
            }
            out.push((ino, node.name().to_string()));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// Entry `index` of a listing; a page just fetched is first completed with HEADs.
    async fn next_entry(
        &self,
        stream: &mut DirStream,
        index: u64,
    ) -> Result<Option<ListedEntry>, FsError> {
        let entry = stream.entry_at(index, &self.names.odd_keys).await?;
        match stream.take_new_page() {
            Some(NewPage {
                prefix,
                entries,
                sample: Some(mut sample),
            }) => {
                // A sample that failed to run tells nothing: every file is asked for.
                let metadata = (&mut sample.0).await.unwrap_or(true);
                self.complete_with_heads(prefix, entries, metadata).await;
                stream.entry_at(index, &self.names.odd_keys).await
            }
            _ => Ok(entry),
        }
    }

    /// Replaces what a listing says about files by what a HEAD says (metadata included),
    /// sending HEADs only for objects new or changed since the last one, several at a time.
    /// Only where the page's sample (`page_sample`, taken as the page arrived) or what the
    /// memo knows of the page carries attribute metadata: on a page of a bucket written by
    /// plain S3 clients, only the empty objects are asked for (the sample did), and listing
    /// it costs the listing alone.
    async fn complete_with_heads(
        &self,
        prefix: &str,
        page: &mut [dir::ListedEntry],
        sampled_metadata: bool,
    ) {
        // What the memo knows of each file, asked once per entry (a million-entry walk
        // feels every extra look-up).
        let memo: Vec<Option<ObjectInfo>> = page
            .iter()
            .map(|e| e.object.as_ref().and_then(|o| self.names.meta.head_of(o)))
            .collect();
        // Empty objects are left out: a fifo's or a device node's metadata says nothing about
        // the rest of a page.
        let metadata = sampled_metadata
            || memo
                .iter()
                .flatten()
                .any(|h| h.size > 0 && meta::has_attr_headers(h));
        let mut headed = Vec::new();
        if metadata {
            // Files: only objects new or changed since their last HEAD. Directories: their
            // marker, if any (a listing shows only the common prefix).
            let wanted: Vec<(usize, String)> = page
                .iter()
                .zip(&memo)
                .enumerate()
                .filter_map(|(i, (e, known))| match (&e.object, e.kind, known) {
                    (Some(o), _, None) => Some((i, o.key.clone())),
                    (None, Kind::Dir, _) => Some((i, format!("{}{}/", prefix, e.name))),
                    _ => None,
                })
                .collect();
            headed = self.head_entries(page, wanted).await;
        }
        for (i, known) in memo.into_iter().enumerate() {
            if let Some(head) = known {
                headed.push((i, head));
            }
        }
        for (i, head) in headed {
            let entry = &mut page[i];
            if entry.kind == Kind::Dir {
                continue;
            }
            entry.kind = meta::kind_of_object(&head);
            entry.object = Some(Arc::new(head));
        }
        for entry in page.iter_mut() {
            entry.completed = true;
        }
    }

    /// HEADs `wanted` (entry index, key) of a listing page; returns the answers for files
    /// (directories get their marker's).
    async fn head_entries(
        &self,
        page: &mut [dir::ListedEntry],
        wanted: Vec<(usize, String)>,
    ) -> Vec<(usize, ObjectInfo)> {
        let memo = self.names.meta.memo();
        let mut files = Vec::new();
        for (i, info) in page_sample::head_all(&self.store, &memo, wanted).await {
            if page[i].kind == Kind::Dir {
                page[i].object = Some(Arc::new(info));
            } else {
                files.push((i, info));
            }
        }
        files
    }
}
