//! Directory listings streamed page by page: one ListObjectsV2 page handed out at a time (and
//! a few next ones fetched ahead, `PagesAhead`), objects and common prefixes merged in key
//! order, names checked against the written rule, and a file hidden when a directory of the
//! same name exists (even across page boundaries).

use std::sync::Arc;

use super::error::FsError;
use super::names::{check_name, OddKeyLog};
use super::snapshot::Collector;
use super::walk_ahead::{EarlyPage, SubdirOrder};
use super::Kind;
use crate::store::{ListPage, ListRequest, ObjectInfo, ObjectStore, StoreError};

/// A listing page as fetched, and the work started on it on arrival.
pub struct FetchedPage {
    pub page: ListPage,
    /// Whether a sample of the page's objects carries attribute metadata, when a sample is
    /// taken (see `page_sample`); it runs beside the requests for the pages after this one.
    pub sample: Option<PageSample>,
}

/// The sample of one page, in flight or done (abandoned when dropped).
pub struct PageSample(pub tokio::task::JoinHandle<bool>);

impl Drop for PageSample {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a stream fetches a page: the LIST, and the work done on the page as soon as it
/// arrives, while the kernel still takes in the page before it.
pub type PageFetch = Arc<
    dyn Fn(ListRequest) -> futures::future::BoxFuture<'static, Result<FetchedPage, StoreError>>
        + Send
        + Sync,
>;

/// A fetch that only lists.
pub fn list_only(store: Arc<dyn ObjectStore>) -> PageFetch {
    Arc::new(move |request| {
        let store = store.clone();
        Box::pin(async move {
            Ok(FetchedPage {
                page: store.list(request).await?,
                sample: None,
            })
        })
    })
}

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

/// Pages fetched ahead of a listing's reader: at most this many wait to be handed out.
pub(super) const PAGES_AHEAD: usize = 8;
/// Pages fetched ahead across all the open directories of a mount (about 20 MB at 1,000
/// entries a page): past it, a listing only gets the next page when its reader needs it.
pub(super) const MOUNT_PAGES_AHEAD: usize = 64;

/// How many pages are held ahead across the open directories that share it, and the most
/// there may be. A reader waiting for its next page is always served, whatever the count:
/// a program reading one folder while it holds another open can never be stalled by it.
#[derive(Clone)]
pub struct PagesHeld {
    count: Arc<std::sync::atomic::AtomicUsize>,
    most: usize,
}

impl PagesHeld {
    pub fn new(most: usize) -> PagesHeld {
        PagesHeld {
            count: Arc::default(),
            most,
        }
    }

    fn full(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::Relaxed) >= self.most
    }

    /// Counts one page until the returned guard is dropped.
    fn hold(&self) -> HeldPage {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeldPage(self.count.clone())
    }

    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One page counted in `PagesHeld`, from its arrival until its reader takes it (or its
/// stream is dropped).
struct HeldPage(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for HeldPage {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The pages after the one being handed out, each requested as soon as the one before it
/// arrives, while the kernel takes in earlier ones. The kernel asks for thousands of entries
/// at once and then spends tens of milliseconds taking them in: with only the next page on
/// its way meanwhile, a million-entry folder took the listing's time plus the kernel's,
/// instead of the longer of the two. Dropped with its stream (a rewind, a closed directory):
/// the requests stop.
struct PagesAhead {
    /// Each page with the continuation token it was asked with.
    pages: tokio::sync::mpsc::Receiver<(Option<String>, Result<FetchedPage, StoreError>, HeldPage)>,
    task: tokio::task::JoinHandle<()>,
}

impl PagesAhead {
    fn start(fetch: PageFetch, mut request: ListRequest, held: PagesHeld) -> PagesAhead {
        // The task holds one page more while it waits for room.
        let (sender, pages) = tokio::sync::mpsc::channel(PAGES_AHEAD - 1);
        let task = tokio::spawn(async move {
            loop {
                // Past the mount's budget, only a page the reader is waiting for (none
                // waiting here) is fetched; the budget is looked at again shortly.
                while held.full() && sender.capacity() < sender.max_capacity() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                let result = fetch(request.clone()).await;
                let next = result.as_ref().ok().and_then(|f| f.page.next.clone());
                let token = std::mem::replace(&mut request.continuation, next);
                let page = (token, result, held.hold());
                if sender.send(page).await.is_err() || request.continuation.is_none() {
                    break;
                }
            }
        });
        PagesAhead { pages, task }
    }

    /// The page asked with `token`, if it is the next one this fetched (`None` once the
    /// requests stopped: the reader asks itself).
    async fn next(&mut self, token: Option<&str>) -> Option<Result<FetchedPage, StoreError>> {
        match self.pages.recv().await {
            Some((asked, result, _held)) if asked.as_deref() == token => Some(result),
            _ => None,
        }
    }
}

impl Drop for PagesAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An open directory: a cursor over the listing, holding one page of entries (and at most
/// `PAGES_AHEAD` next ones fetched ahead).
pub struct DirStream {
    list_prefix: String,
    page_size: u32,
    fetch: PageFetch,
    /// The mount's count of pages fetched ahead, which this stream's count in.
    budget: PagesHeld,
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
    /// The current page's sample (`FetchedPage::sample`), until handed out.
    sample: Option<PageSample>,
    /// The entries handed out so far, in order, to become the directory's snapshot once the
    /// listing ends (taken then; none after a rewind restarts it).
    pub collector: Option<Collector>,
    /// The first page, when `WalkAhead` asked for it before the directory was opened.
    first_page: Option<EarlyPage>,
    ahead: Option<PagesAhead>,
    /// The subfolders' names in listing order (for `WalkAhead`).
    subdirs: SubdirOrder,
}

impl DirStream {
    /// A stream whose pages ahead count in `budget`.
    pub fn new(list_prefix: String, page_size: u32, fetch: PageFetch, budget: PagesHeld) -> Self {
        DirStream {
            list_prefix,
            page_size,
            fetch,
            budget,
            token: None,
            exhausted: false,
            entries: Vec::new(),
            base: 0,
            held: Vec::new(),
            marker: None,
            new_page: false,
            sample: None,
            collector: Some(Collector::new()),
            first_page: None,
            ahead: None,
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
        self.first_page = Some(page);
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
    /// HEAD answers) before they are handed out; with the prefix they were listed under and
    /// what the page's sample said, if one was taken.
    pub fn take_new_page(&mut self) -> Option<NewPage<'_>> {
        if std::mem::take(&mut self.new_page) {
            Some(NewPage {
                prefix: &self.list_prefix,
                entries: &mut self.entries,
                sample: self.sample.take(),
            })
        } else {
            None
        }
    }

    fn rewind(&mut self) {
        *self = DirStream::new(
            std::mem::take(&mut self.list_prefix),
            self.page_size,
            self.fetch.clone(),
            self.budget.clone(),
        );
    }

    /// The entry at `index` (0-based), fetching pages as needed; `None` past the end.
    pub async fn entry_at(
        &mut self,
        index: u64,
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
            self.fetch_page(odd).await?;
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

    async fn fetch_page(&mut self, odd: &OddKeyLog) -> Result<(), FsError> {
        // Kept until the page is in: after a failure, the same page is asked for again.
        let token = self.token.as_deref();
        let early = match (token, self.first_page.take()) {
            // Aborted or panicked: asked again below.
            (None, Some(mut first)) => (&mut first.task).await.ok(),
            _ => None,
        };
        let fetched = match (early, self.ahead.as_mut()) {
            (Some(fetched), _) => Some(fetched),
            (None, Some(ahead)) => ahead.next(token).await,
            (None, None) => None,
        };
        let fetched = match fetched {
            Some(fetched) => fetched,
            None => {
                self.ahead = None;
                (self.fetch)(self.request(self.token.clone())).await
            }
        };
        let FetchedPage { page, sample } = fetched.inspect_err(|_| self.ahead = None)?;
        self.sample = sample;
        if let (Some(next), None) = (&page.next, &self.ahead) {
            self.ahead = Some(PagesAhead::start(
                self.fetch.clone(),
                self.request(Some(next.clone())),
                self.budget.clone(),
            ));
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

/// A page just fetched (`DirStream::take_new_page`).
pub struct NewPage<'a> {
    pub prefix: &'a str,
    pub entries: &'a mut [ListedEntry],
    pub sample: Option<PageSample>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    async fn names(store: &Arc<dyn ObjectStore>, prefix: &str, page: u32) -> Vec<(String, Kind)> {
        let odd = OddKeyLog::default();
        let mut stream = DirStream::new(
            prefix.to_string(),
            page,
            list_only(store.clone()),
            PagesHeld::new(MOUNT_PAGES_AHEAD),
        );
        let mut out = vec![];
        let mut i = 0;
        while let Some(e) = stream.entry_at(i, &odd).await.unwrap() {
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
    async fn a_huge_directory_is_handed_out_one_page_at_a_time() {
        let store = MemoryStore::new();
        for i in 0..100_000 {
            store.put(&format!("h/{i:06}"), "");
        }
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let odd = OddKeyLog::default();
        let held = PagesHeld::new(MOUNT_PAGES_AHEAD);
        let mut stream = DirStream::new("h/".into(), 1000, list_only(store), held);
        let mut i = 0;
        let mut most_buffered = 0;
        while let Some(e) = stream.entry_at(i, &odd).await.unwrap() {
            assert_eq!(e.name, format!("{i:06}"));
            most_buffered = most_buffered.max(stream.entries.len() + stream.held.len());
            i += 1;
        }
        assert_eq!(i, 100_000);
        // One page, plus files held back from the previous page's end (at most a page): the
        // bound does not grow with the directory. (The pages fetched ahead are bounded too:
        // `a_long_listing_is_fetched_and_sampled_ahead_of_its_reader_within_a_bound`.)
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
    async fn pages_ahead_stay_within_the_mount_budget_and_never_stall_another_reader() {
        let store = MemoryStore::new();
        for d in ["a", "b", "c"] {
            for i in 0..200 {
                store.put(&format!("{d}/f{i:03}"), "1");
            }
        }
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let odd = OddKeyLog::default();
        let held = PagesHeld::new(5);
        let open =
            |d: &str| DirStream::new(format!("{d}/"), 10, list_only(store.clone()), held.clone());
        // Two folders read a little and left open: their pages ahead fill the budget.
        let (mut a, mut b) = (open("a"), open("b"));
        assert!(a.entry_at(0, &odd).await.unwrap().is_some());
        assert!(b.entry_at(0, &odd).await.unwrap().is_some());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // At most the budget, and a page past it for each reader that was waiting.
        assert!(held.count() <= 5 + 2, "{} pages held", held.count());
        // A third folder is read to its end meanwhile, every entry in order.
        let mut c = open("c");
        let mut i = 0;
        while let Some(e) = c.entry_at(i, &odd).await.unwrap() {
            assert_eq!(e.name, format!("f{i:03}"));
            i += 1;
        }
        assert_eq!(i, 200);
        // Closing the folders gives their pages back.
        drop((a, b, c));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(held.count(), 0);
    }

    #[tokio::test]
    async fn rewinding_lists_again() {
        let store = MemoryStore::new();
        for i in 0..10 {
            store.put(&format!("d/f{i}"), "1");
        }
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let odd = OddKeyLog::default();
        let held = PagesHeld::new(MOUNT_PAGES_AHEAD);
        let mut stream = DirStream::new("d/".into(), 3, list_only(store), held);
        let e7 = stream.entry_at(7, &odd).await.unwrap().unwrap();
        assert_eq!(e7.name, "f7");
        let e1 = stream.entry_at(1, &odd).await.unwrap().unwrap();
        assert_eq!(e1.name, "f1");
        assert!(stream.entry_at(10, &odd).await.unwrap().is_none());
    }
}
