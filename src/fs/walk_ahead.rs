//! Listing ahead of a tree walk. `ls -R`, `find`, `du`, `cp -r` and `rsync` read a folder,
//! then open its subfolders one after another in the order it listed them. Each subfolder's
//! first page then costs a whole round trip to the server on the walk's critical path, while
//! the kernel and the walker sit idle, and the walk takes the sum of both.
//!
//! `WalkAhead` sees a walk coming (a subfolder opened after an earlier sibling) and lists the
//! next `AHEAD` siblings' first pages meanwhile; the subfolder's `DirStream` starts from that
//! page when it is opened. It keeps, per listed folder, the names of its subfolders in listing
//! order (bounded), and at most `PENDING` listings in flight; a page nobody takes is dropped
//! (its request aborted) when a newer one needs the room, and one older than
//! `EARLY_PAGE_FRESH` (or `--metadata-ttl`, when shorter) is never served.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::dir::FetchedPage;
use super::inode::Ino;
use crate::store::StoreError;

/// Subfolders listed ahead of the one being opened.
const AHEAD: usize = 2;
/// Listings started ahead and not taken yet, at most.
const PENDING: usize = 2 * AHEAD;
/// Folders whose subfolder order is kept, and the most subfolder names kept per folder.
const ORDERS: usize = 256;
const MOST_SUBDIRS: usize = 100_000;
/// The oldest page asked ahead that a folder starts from (listings show other clients'
/// changes at once; a walk may show them this late).
pub const EARLY_PAGE_FRESH: Duration = Duration::from_secs(5);

/// A first page requested ahead of its folder's opening.
pub struct EarlyPage {
    /// The folder's list prefix.
    prefix: String,
    pub started: Instant,
    pub task: tokio::task::JoinHandle<Result<FetchedPage, StoreError>>,
}

impl Drop for EarlyPage {
    /// A page nobody will read is not waited for.
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    /// Per folder listed to its end: its subfolders' names, in listing order.
    orders: LruCache<Ino, Arc<[Box<str>]>>,
    /// The folder opened last (its parent and its place among the parent's subfolders).
    last: Option<(Ino, usize)>,
    pending: Vec<EarlyPage>,
}

pub struct WalkAhead {
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for WalkAhead {
    fn default() -> Self {
        WalkAhead {
            state: Mutex::new(State {
                orders: LruCache::new(NonZeroUsize::new(ORDERS).unwrap_or(NonZeroUsize::MIN)),
                last: None,
                pending: Vec::new(),
            }),
        }
    }
}

impl WalkAhead {
    /// A listing of `dir` read to its end showed these subfolders, in order (none: fewer
    /// than two, or more than this keeps).
    pub fn listed(&self, dir: Ino, subdirs: Vec<Box<str>>) {
        let mut state = lock(&self.state);
        if subdirs.len() >= 2 {
            state.orders.put(dir, subdirs.into());
        } else {
            state.orders.pop(&dir);
        }
    }

    /// The subfolder `name` of `parent` is being read: the names of the siblings to list
    /// ahead now (none unless an earlier sibling was the last folder read: a walk).
    pub fn opened(&self, parent: Ino, name: &str) -> Vec<Box<str>> {
        let mut state = lock(&self.state);
        let Some(order) = state.orders.get(&parent).cloned() else {
            state.last = None;
            return Vec::new();
        };
        let Some(at) = order.iter().position(|n| &**n == name) else {
            state.last = None;
            return Vec::new();
        };
        let walking = state
            .last
            .is_some_and(|(p, before)| p == parent && before < at);
        state.last = Some((parent, at));
        if !walking {
            return Vec::new();
        }
        order.iter().skip(at + 1).take(AHEAD).cloned().collect()
    }

    /// Requests the first page of the folder listing `prefix` ahead (`list` starts it),
    /// unless it is already on its way.
    pub fn start(
        &self,
        prefix: String,
        list: impl FnOnce() -> tokio::task::JoinHandle<Result<FetchedPage, StoreError>>,
    ) {
        let mut state = lock(&self.state);
        if state.pending.iter().any(|p| p.prefix == prefix) {
            return;
        }
        if state.pending.len() >= PENDING {
            // The walk went elsewhere: the oldest request is abandoned.
            state.pending.remove(0);
        }
        state.pending.push(EarlyPage {
            prefix,
            started: Instant::now(),
            task: list(),
        });
    }

    /// The first page requested ahead for `prefix`, if one was and is at most `fresh` old.
    pub fn take(&self, prefix: &str, fresh: Duration) -> Option<EarlyPage> {
        let mut state = lock(&self.state);
        let at = state.pending.iter().position(|p| p.prefix == prefix)?;
        let page = state.pending.remove(at);
        if page.started.elapsed() > fresh {
            return None;
        }
        Some(page)
    }

    /// Listings started ahead and not taken (for tests).
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        lock(&self.state).pending.len()
    }
}

/// Collects a listing's subfolder names in order, up to `MOST_SUBDIRS` (past it, none: a
/// folder that large keeps no order).
pub struct SubdirOrder {
    names: Option<Vec<Box<str>>>,
    too_many: bool,
}

impl Default for SubdirOrder {
    fn default() -> Self {
        SubdirOrder {
            names: Some(Vec::new()),
            too_many: false,
        }
    }
}

impl SubdirOrder {
    pub fn push(&mut self, name: &str) {
        if self.too_many {
            return;
        }
        let Some(names) = self.names.as_mut() else {
            return;
        };
        if names.len() >= MOST_SUBDIRS {
            *names = Vec::new();
            self.too_many = true;
        } else {
            names.push(name.into());
        }
    }

    /// The names collected, once.
    pub fn take(&mut self) -> Option<Vec<Box<str>>> {
        self.names.take()
    }
}
