//! Directory listings streamed page by page: one ListObjectsV2 page in memory at a time (and
//! the next one on its way), objects and common prefixes merged in key order, names checked
//! against the written rule, and a file hidden when a directory of the same name exists (even
//! across page boundaries).

use std::sync::Arc;

use super::error::FsError;
use super::names::{check_name, OddKeyLog};
use super::snapshot::Collector;
use super::walk_ahead::{EarlyPage, SubdirOrder};
use super::Kind;
use crate::store::{ListPage, ListRequest, ObjectInfo, ObjectStore, StoreError};

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct ListedEntry {
    pub name: String,
    pub kind: Kind,
    /// For files: what the listing (or a HEAD) said: size, LastModified, ETag, metadata.
    /// For directories: their marker object, when a HEAD found one.
    /// Shared: an entry is handed out (cloned) once per readdir reply it goes into.
    pub object: Option<Arc<ObjectInfo>>,
    /// `object` already is the best the HEAD memo knows (the page was completed with HEADs):
    /// no need to ask the memo again.
    pub completed: bool,
}

impl ListedEntry {
    /// The bytes of this entry's key below its folder, in the store's key order (a folder's
    /// is its name and `/`), without building the key: a page sorts and compares a thousand.
    fn key_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        let slash = (self.kind == Kind::Dir).then_some(b'/');
        self.name.bytes().chain(slash)
    }

    fn key_order(&self, other: &ListedEntry) -> std::cmp::Ordering {
        self.key_bytes().cmp(other.key_bytes())
    }
}

/// The request for the page after the one being handed out, sent as soon as its token is
/// known: the server works on it while the kernel takes in this one (a listing's pages
/// otherwise wait on each other's processing, and a million-entry folder takes twice as long).
/// Dropped with its stream (a rewind, a closed directory): the request is abandoned.
struct NextPage {
    /// The continuation token it was asked with (`None`: the first page, asked ahead by
    /// `WalkAhead`).
    token: Option<String>,
    task: tokio::task::JoinHandle<Result<ListPage, StoreError>>,
}

impl Drop for NextPage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An open directory: a cursor over the listing, holding at most one page of entries (and
/// the request for the next).
pub struct DirStream {
    list_prefix: String,
    page_size: u32,
    token: Option<String>,
    exhausted: bool,
    /// Entries of the current page; `entries[0]` has index `base`.
    entries: Vec<ListedEntry>,
    base: u64,
    /// Files at the end of a page that a later page might show as directories too.
    held: Vec<ListedEntry>,
    /// Directory marker object of this directory, if the listing showed one.
    pub marker: Option<ObjectInfo>,
    /// A page was fetched and not yet handed out by `take_new_page`.
    new_page: bool,
    /// The entries handed out so far, in order, to become the directory's snapshot once the
    /// listing ends (taken then; none after a rewind restarts it).
    pub collector: Option<Collector>,
    next_page: Option<NextPage>,
    /// The subfolders' names in listing order (for `WalkAhead`).
    subdirs: SubdirOrder,
}

impl DirStream {
    pub fn new(list_prefix: String, page_size: u32) -> Self {
        DirStream {
            list_prefix,
            page_size,
            token: None,
            exhausted: false,
            entries: Vec::new(),
            base: 0,
            held: Vec::new(),
            marker: None,
            new_page: false,
            collector: Some(Collector::new()),
            next_page: None,
            subdirs: SubdirOrder::default(),
        }
    }

    /// Whether nothing was fetched yet.
    pub fn untouched(&self) -> bool {
        self.base == 0 && self.entries.is_empty() && self.token.is_none() && !self.exhausted
    }

    /// Starts from a first page requested ahead: the listing is as old as that request.
    pub fn start_from(&mut self, page: EarlyPage) {
        if let Some(collector) = self.collector.as_mut() {
            collector.started = page.started;
        }
        self.next_page = Some(NextPage {
            token: None,
            task: page.task,
        });
    }

    /// The subfolders' names in listing order, once, when the listing is read to its end
    /// (`None` before, or once taken; empty when there were too many to keep).
    pub fn take_subdirs(&mut self) -> Option<Vec<Box<str>>> {
        if self.exhausted {
            self.subdirs.take()
        } else {
            None
        }
    }

    /// How many entries the listing has, once it has been read to its end.
    pub fn listed_count(&self) -> Option<u64> {
        self.exhausted
            .then_some(self.base + self.entries.len() as u64)
    }

    /// The prefix this directory lists (its key prefix, ending in `/` unless the root).
    pub fn list_prefix(&self) -> &str {
        &self.list_prefix
    }

    /// The entries of a page just fetched, once, so the caller can complete them (with
    /// HEAD answers) before they are handed out; with the prefix they were listed under.
    pub fn take_new_page(&mut self) -> Option<(&str, &mut [ListedEntry])> {
        if std::mem::take(&mut self.new_page) {
            Some((&self.list_prefix, &mut self.entries))
        } else {
            None
        }
    }

    fn rewind(&mut self) {
        *self = DirStream::new(std::mem::take(&mut self.list_prefix), self.page_size);
    }

    /// The entry at `index` (0-based), fetching pages as needed; `None` past the end.
    pub async fn entry_at(
        &mut self,
        index: u64,
        store: &Arc<dyn ObjectStore>,
        odd: &OddKeyLog,
    ) -> Result<Option<ListedEntry>, FsError> {
        if index < self.base {
            // seekdir/rewinddir back into an earlier page: list again from the start.
            self.rewind();
        }
        loop {
            let end = self.base + self.entries.len() as u64;
            if index < end {
                return Ok(Some(self.entries[(index - self.base) as usize].clone()));
            }
            if self.exhausted {
                return Ok(None);
            }
            self.base = end;
            self.entries.clear();
            self.fetch_page(store, odd).await?;
        }
    }

    fn request(&self, continuation: Option<String>) -> ListRequest {
        ListRequest {
            prefix: self.list_prefix.clone(),
            delimited: true,
            max_keys: self.page_size,
            continuation,
        }
    }

    async fn fetch_page(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        odd: &OddKeyLog,
    ) -> Result<(), FsError> {
        let token = self.token.take();
        let page = match self.next_page.take() {
            Some(mut next) if next.token == token => match (&mut next.task).await {
                Ok(page) => page?,
                // Aborted or panicked: ask again, here.
                Err(_) => store.list(self.request(token)).await?,
            },
            _ => store.list(self.request(token)).await?,
        };
        if let Some(token) = &page.next {
            let (store, request) = (store.clone(), self.request(Some(token.clone())));
            self.next_page = Some(NextPage {
                token: Some(token.clone()),
                task: tokio::spawn(async move { store.list(request).await }),
            });
        }
        let mut items = std::mem::take(&mut self.held);
        // The last key of the page, below the folder (one allocation, not one per entry).
        let last_key: String = {
            let folder = self.list_prefix.as_str();
            let objects = page
                .objects
                .iter()
                .filter_map(|o| o.key.strip_prefix(folder));
            let prefixes = page.prefixes.iter().filter_map(|p| p.strip_prefix(folder));
            objects
                .chain(prefixes)
                .max()
                .unwrap_or_default()
                .to_string()
        };
        for object in page.objects {
            let Some(rel) = object.key.strip_prefix(&self.list_prefix) else {
                continue;
            };
            if rel.is_empty() {
                self.marker = Some(object);
                continue;
            }
            if let Err(bad) = check_name(rel) {
                odd.report(&object.key, bad.describe());
                continue;
            }
            if rel.contains('/') {
                odd.report(&object.key, "was listed below its directory by the server");
                continue;
            }
            items.push(ListedEntry {
                name: rel.to_string(),
                kind: Kind::File,
                object: Some(Arc::new(object)),
                completed: false,
            });
        }
        for prefix in page.prefixes {
            let Some(rel) = prefix.strip_prefix(&self.list_prefix) else {
                continue;
            };
            let name = rel.strip_suffix('/').unwrap_or(rel);
            if let Err(bad) = check_name(name) {
                odd.report(&prefix, bad.describe());
                continue;
            }
            items.push(ListedEntry {
                name: name.to_string(),
                kind: Kind::Dir,
                object: None,
                completed: false,
            });
        }
        items.sort_by(ListedEntry::key_order);
        // A directory and a file of one name: the directory wins (see names.rs).
        let dirs: std::collections::HashSet<String> = items
            .iter()
            .filter(|e| e.kind == Kind::Dir)
            .map(|e| e.name.clone())
            .collect();
        if !dirs.is_empty() {
            items.retain(|e| {
                let shadowed = e.kind == Kind::File && dirs.contains(&e.name);
                if shadowed {
                    odd.report(
                        &format!("{}{}", self.list_prefix, e.name),
                        "is both an object and a directory prefix; the directory is shown",
                    );
                }
                !shadowed
            });
        }
        for dir in items.iter().filter(|e| e.kind == Kind::Dir) {
            self.subdirs.push(&dir.name);
        }
        self.token = page.next;
        self.exhausted = self.token.is_none();
        if !self.exhausted {
            // `x/` sorts after `x`, so a later page can still reveal a directory named like a
            // file of this page, but only if `x/` sorts after everything this page showed.
            let (held, ready): (Vec<_>, Vec<_>) = items.into_iter().partition(|e| {
                let as_dir = e.name.bytes().chain(Some(b'/'));
                e.kind == Kind::File && as_dir.cmp(last_key.bytes()).is_gt()
            });
            self.held = held;
            items = ready;
        }
        self.entries = items;
        self.new_page = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    async fn names(store: &Arc<dyn ObjectStore>, prefix: &str, page: u32) -> Vec<(String, Kind)> {
        let odd = OddKeyLog::default();
        let mut stream = DirStream::new(prefix.to_string(), page);
        let mut out = vec![];
        let mut i = 0;
        while let Some(e) = stream.entry_at(i, store, &odd).await.unwrap() {
            out.push((e.name, e.kind));
            i += 1;
        }
        out
    }

    #[tokio::test]
    async fn odd_keys_are_skipped_and_directories_win() {
        let store = MemoryStore::new();
        for key in [
            "p/a",
            "p/x",
            "p/x/inner",
            "p//empty",
            "p/./dot",
            "p/../up",
            "p/ok/",
            "p/",
        ] {
            store.put(key, "1");
        }
        store.put(&format!("p/{}", "n".repeat(300)), "1");
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        for page in [1, 2, 1000] {
            let got = names(&store, "p/", page).await;
            assert_eq!(
                got,
                vec![
                    ("a".to_string(), Kind::File),
                    ("ok".to_string(), Kind::Dir),
                    ("x".to_string(), Kind::Dir),
                ],
                "page size {page}"
            );
        }
    }

    #[tokio::test]
    async fn a_huge_directory_streams_with_one_page_in_memory() {
        let store = MemoryStore::new();
        for i in 0..100_000 {
            store.put(&format!("h/{i:06}"), "");
        }
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let odd = OddKeyLog::default();
        let mut stream = DirStream::new("h/".into(), 1000);
        let mut i = 0;
        let mut most_buffered = 0;
        while let Some(e) = stream.entry_at(i, &store, &odd).await.unwrap() {
            assert_eq!(e.name, format!("{i:06}"));
            most_buffered = most_buffered.max(stream.entries.len() + stream.held.len());
            i += 1;
        }
        assert_eq!(i, 100_000);
        // One page, plus files held back from the previous page's end (at most a page): the
        // bound does not grow with the directory.
        assert!(
            most_buffered <= 2 * 1000,
            "{most_buffered} entries held at once"
        );
        assert!(
            most_buffered >= 1000,
            "pages were really used: {most_buffered}"
        );
    }

    #[tokio::test]
    async fn rewinding_lists_again() {
        let store = MemoryStore::new();
        for i in 0..10 {
            store.put(&format!("d/f{i}"), "1");
        }
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let odd = OddKeyLog::default();
        let mut stream = DirStream::new("d/".into(), 3);
        let e7 = stream.entry_at(7, &store, &odd).await.unwrap().unwrap();
        assert_eq!(e7.name, "f7");
        let e1 = stream.entry_at(1, &store, &odd).await.unwrap().unwrap();
        assert_eq!(e1.name, "f1");
        assert!(stream.entry_at(10, &store, &odd).await.unwrap().is_none());
    }
}
