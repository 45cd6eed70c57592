//! Inode numbers and the table the kernel's references point into.
//!
//! An inode number is derived from a hash of (kind, path), so the same path keeps its number
//! for the whole mount even after the kernel forgets it; collisions are resolved by probing.
//! Entries live while the kernel holds a lookup reference (plus the root, always).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// A fast, seeded-once hash: inode numbers must come out the same for a path on every run
/// (programs such as tar and rsync compare them), and these maps hold an entry per name the
/// kernel knows (a million in a big walk), so SipHash's cost shows.
type FixedState = foldhash::fast::FixedState;

use super::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

/// What an inode stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Kernel references (lookups and readdirplus entries not yet forgotten).
    lookups: u32,
    pub parent: Ino,
    /// Path below the mount root, without leading or trailing `/`; empty for the root. (A
    /// boxed str: the table holds one node per name the kernel knows, a million in a big walk.)
    pub path: Box<str>,
}

impl Node {
    /// The name in its parent directory.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

pub struct InodeTable {
    nodes: HashMap<Ino, Node, FixedState>,
    /// The inode of each (kind, path), hashed by them: the path itself lives once, in the
    /// node (this index is a number per name, not a second copy of every path).
    by_path: hashbrown::HashTable<Ino>,
    /// Inodes in the order they were first remembered (entries of forgotten ones are dropped
    /// lazily): the order in which names are handed back when the table is over budget.
    order: VecDeque<Ino>,
}

fn path_hash(kind: Kind, path: &str) -> u64 {
    FixedState::default().hash_one((kind, path))
}

fn hashed_ino(kind: Kind, path: &str, attempt: u64) -> Ino {
    let h = FixedState::with_seed(0x7061_696c_6673).hash_one((kind, path, attempt));
    // Keep clear of 0 (invalid) and 1 (root), and of the top bit (some tools treat inode
    // numbers as signed).
    Ino((h >> 1).max(2))
}

impl Default for InodeTable {
    fn default() -> Self {
        let mut table = InodeTable {
            nodes: HashMap::default(),
            by_path: hashbrown::HashTable::new(),
            order: VecDeque::new(),
        };
        table.nodes.insert(
            Ino::ROOT,
            Node {
                kind: Kind::Dir,
                path: "".into(),
                parent: Ino::ROOT,
                lookups: 1,
            },
        );
        table.map(Ino::ROOT);
        table
    }
}

impl InodeTable {
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The inode remembered for (kind, path), if any.
    fn find(&self, kind: Kind, path: &str) -> Option<Ino> {
        self.find_hashed(path_hash(kind, path), kind, path)
    }

    fn find_hashed(&self, hash: u64, kind: Kind, path: &str) -> Option<Ino> {
        let nodes = &self.nodes;
        self.by_path
            .find(hash, |ino| {
                nodes
                    .get(ino)
                    .is_some_and(|n| n.kind == kind && &*n.path == path)
            })
            .copied()
    }

    /// Indexes `ino` under its node's current (kind, path).
    fn map(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get(&ino) {
            self.map_hashed(path_hash(node.kind, &node.path), ino);
        }
    }

    /// `map` with the hash of the node's (kind, path) already known.
    fn map_hashed(&mut self, hash: u64, ino: Ino) {
        let nodes = &self.nodes;
        self.by_path.insert_unique(hash, ino, |i| {
            nodes.get(i).map_or(0, |n| path_hash(n.kind, &n.path))
        });
    }

    /// The number `path` has (or would get), without taking a reference.
    pub fn peek(&self, kind: Kind, path: &str) -> Ino {
        let kind = kind.slot();
        if let Some(ino) = self.find(kind, path) {
            return ino;
        }
        self.free_ino(kind, path)
    }

    fn free_ino(&self, kind: Kind, path: &str) -> Ino {
        let mut attempt = 0;
        loop {
            let ino = hashed_ino(kind, path, attempt);
            match self.nodes.get(&ino) {
                Some(node) if node.kind != kind || &*node.path != path => attempt += 1,
                _ => return ino,
            }
        }
    }

    /// Takes one kernel reference on `path` (a lookup, or an entry of readdirplus).
    pub fn remember(&mut self, parent: Ino, kind: Kind, path: &str) -> Ino {
        let kind = kind.slot();
        let hash = path_hash(kind, path);
        if let Some(ino) = self.find_hashed(hash, kind, path) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.lookups = node.lookups.saturating_add(1);
                return ino;
            }
        }
        let ino = self.free_ino(kind, path);
        self.nodes.insert(
            ino,
            Node {
                kind,
                path: path.into(),
                parent,
                lookups: 1,
            },
        );
        self.map_hashed(hash, ino);
        self.order.push_back(ino);
        // Entries of forgotten inodes are dropped once they are a fifth of the line.
        if self.order.len() > self.nodes.len() + self.nodes.len() / 4 + 1024 {
            let nodes = &self.nodes;
            self.order.retain(|i| nodes.contains_key(i));
            self.order
                .shrink_to(self.order.len() + self.order.len() / 4);
        }
        ino
    }

    /// Up to `n` of the oldest remembered files (not directories, not detached, not
    /// `in_use`), as (parent, inode, name). They stay in the table (and go to the back of
    /// the line) until the kernel forgets them.
    pub fn oldest_files(
        &mut self,
        n: usize,
        in_use: &dyn Fn(Ino) -> bool,
    ) -> Vec<(Ino, Ino, String)> {
        let mut out = Vec::new();
        for _ in 0..self.order.len() {
            if out.len() >= n {
                break;
            }
            let Some(ino) = self.order.pop_front() else {
                break;
            };
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            let eligible = node.kind != Kind::Dir && !node.path.starts_with('\0') && !in_use(ino);
            if eligible {
                out.push((node.parent, ino, node.name().to_string()));
            }
            self.order.push_back(ino);
        }
        out
    }

    /// Drops `n` kernel references; the entry goes when none are left.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == Ino::ROOT {
            return;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node
                    .lookups
                    .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            // The path index is found by hash and matched by number: it needs no node.
            if let Some(node) = self.nodes.remove(&ino) {
                self.unmap(ino, node.kind, &node.path);
                self.shrink_when_mostly_empty();
            }
        }
    }

    /// After a big walk is forgotten (the kernel drops its cache), gives the tables' memory
    /// back instead of keeping room for a million names forever.
    fn shrink_when_mostly_empty(&mut self) {
        let capacity = self.nodes.capacity();
        if capacity > 4096 && self.nodes.len() * 8 < capacity {
            self.nodes.shrink_to_fit();
            let nodes = &self.nodes;
            self.by_path
                .shrink_to_fit(|i| nodes.get(i).map_or(0, |n| path_hash(n.kind, &n.path)));
        }
    }

    /// Removes the path mapping of `(kind, path)` only while it still names `ino`: after a
    /// rename over a looked-up target, the path belongs to the renamed inode, and forgetting
    /// the replaced one must not take it away.
    fn unmap(&mut self, ino: Ino, kind: Kind, path: &str) {
        if let Ok(entry) = self
            .by_path
            .find_entry(path_hash(kind, path), |i| *i == ino)
        {
            entry.remove();
        }
    }

    /// The name of `ino` is gone (unlinked, or replaced by a rename) while the kernel may
    /// still hold it open: the number stays valid for those handles, but no path leads to it
    /// any more, and a new file of the same name gets another number (the kernel would
    /// otherwise share one inode, and its page cache, between the two files).
    pub fn detach(&mut self, ino: Ino) {
        if ino == Ino::ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        let (kind, path) = (node.kind, std::mem::take(&mut node.path));
        // A path no key can have (NUL is refused in names): never matched by a lookup, and
        // not indexed.
        node.path = format!("\0detached/{}", ino.0).into();
        self.unmap(ino, kind, &path);
    }

    /// Moves every remembered inode below directory `from` to the same place below `to`
    /// (a directory rename), keeping their numbers. Returns the numbers moved.
    pub fn move_tree(&mut self, from: &str, to: &str) -> Vec<Ino> {
        let below = format!("{from}/");
        let moved: Vec<(Ino, String)> = self
            .nodes
            .iter()
            .filter_map(|(ino, n)| {
                let rest = n.path.strip_prefix(&below)?;
                Some((*ino, format!("{to}/{rest}")))
            })
            .collect();
        for (ino, path) in &moved {
            if let Some(parent) = self.nodes.get(ino).map(|n| n.parent) {
                self.move_to(*ino, parent, path);
            }
        }
        moved.into_iter().map(|(ino, _)| ino).collect()
    }

    /// Gives `ino` a new place (rename): the kernel keeps using the same number.
    pub fn move_to(&mut self, ino: Ino, parent: Ino, path: &str) {
        let Some((kind, old)) = self.nodes.get(&ino).map(|n| (n.kind, n.path.to_string())) else {
            return;
        };
        if old == path {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.parent = parent;
            }
            return;
        }
        self.unmap(ino, kind, &old);
        // A node the target path had (renamed over) is detached: it keeps its number for the
        // handles open on it, but the path is the renamed node's now.
        if let Some(replaced) = self.find(kind, path) {
            self.detach(replaced);
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.path = path.into();
            node.parent = parent;
        }
        self.map(ino);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Joins a directory path and a name.
pub fn child_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_across_forget() {
        let mut t = InodeTable::default();
        let a = t.remember(Ino::ROOT, Kind::File, "a");
        assert_eq!(t.remember(Ino::ROOT, Kind::File, "a"), a);
        t.forget(a, 2);
        assert!(t.get(a).is_none());
        assert_eq!(t.remember(Ino::ROOT, Kind::File, "a"), a);
        let d = t.remember(Ino::ROOT, Kind::Dir, "a");
        assert_ne!(
            a, d,
            "a file and a directory of one name are different inodes"
        );
        t.forget(Ino::ROOT, 100);
        assert!(t.get(Ino::ROOT).is_some(), "the root is never forgotten");
    }

    #[test]
    fn a_path_keeps_its_inode_when_an_older_inode_of_it_is_forgotten() {
        // An editor's atomic save: "doc" was looked up, "doc.tmp" is renamed over it, then the
        // kernel forgets the replaced "doc".
        let mut t = InodeTable::default();
        let old = t.remember(Ino::ROOT, Kind::File, "doc");
        let tmp = t.remember(Ino::ROOT, Kind::File, "doc.tmp");
        t.move_to(tmp, Ino::ROOT, "doc");
        assert_eq!(t.peek(Kind::File, "doc"), tmp);
        t.forget(old, 1);
        assert_eq!(
            t.peek(Kind::File, "doc"),
            tmp,
            "the path still leads to the renamed file"
        );
        assert_eq!(
            t.remember(Ino::ROOT, Kind::File, "doc"),
            tmp,
            "one path, one inode"
        );
        assert!(t.get(old).is_none());
    }

    #[test]
    fn a_detached_inode_stays_valid_and_its_name_gets_a_new_number() {
        let mut t = InodeTable::default();
        let open = t.remember(Ino::ROOT, Kind::File, "scratch");
        t.detach(open);
        assert!(t.get(open).is_some(), "still open in the kernel");
        let new = t.remember(Ino::ROOT, Kind::File, "scratch");
        assert_ne!(new, open, "a new file of that name is another inode");
        t.forget(open, 1);
        assert_eq!(t.peek(Kind::File, "scratch"), new);
    }

    #[test]
    fn the_path_index_survives_growth_renames_and_forgets() {
        let mut t = InodeTable::default();
        let inos: Vec<Ino> = (0..20_000)
            .map(|i| t.remember(Ino::ROOT, Kind::File, &format!("d/f{i}")))
            .collect();
        for (i, ino) in inos.iter().enumerate().step_by(3) {
            t.move_to(*ino, Ino::ROOT, &format!("e/g{i}"));
        }
        for ino in inos.iter().skip(1).step_by(3) {
            t.forget(*ino, 1);
        }
        for (i, ino) in inos.iter().enumerate() {
            match i % 3 {
                0 => {
                    assert_eq!(t.peek(Kind::File, &format!("e/g{i}")), *ino);
                    assert_ne!(t.peek(Kind::File, &format!("d/f{i}")), *ino);
                }
                1 => assert!(t.get(*ino).is_none()),
                _ => assert_eq!(t.peek(Kind::File, &format!("d/f{i}")), *ino),
            }
        }
        let forgotten = (0..20_000).filter(|i| i % 3 == 1).count();
        assert_eq!(
            t.len(),
            1 + 20_000 - forgotten,
            "the root and every name not forgotten"
        );
    }

    #[test]
    fn a_forgotten_walk_gives_its_room_back() {
        let mut t = InodeTable::default();
        let inos: Vec<Ino> = (0..100_000)
            .map(|i| t.remember(Ino::ROOT, Kind::File, &format!("big/f{i}")))
            .collect();
        let grown = t.nodes.capacity();
        for ino in &inos[..99_000] {
            t.forget(*ino, 1);
        }
        assert!(
            t.nodes.capacity() * 8 < grown,
            "{} of {grown} slots kept",
            t.nodes.capacity()
        );
        for (i, ino) in inos.iter().enumerate().skip(99_000) {
            assert_eq!(t.peek(Kind::File, &format!("big/f{i}")), *ino);
        }
    }

    #[test]
    fn the_oldest_files_are_offered_first_never_folders_or_files_in_use() {
        let mut t = InodeTable::default();
        let dir = t.remember(Ino::ROOT, Kind::Dir, "d");
        let files: Vec<Ino> = (0..5)
            .map(|i| t.remember(dir, Kind::File, &format!("d/f{i}")))
            .collect();
        let busy = files[0];
        let offered = t.oldest_files(2, &|ino| ino == busy);
        assert_eq!(
            offered,
            vec![
                (dir, files[1], "f1".to_string()),
                (dir, files[2], "f2".to_string())
            ]
        );
        // Offered names wait at the back until the kernel forgets them.
        t.forget(files[1], 1);
        let next = t.oldest_files(10, &|ino| ino == busy);
        let inos: Vec<Ino> = next.iter().map(|(_, ino, _)| *ino).collect();
        assert_eq!(inos, vec![files[3], files[4], files[2]]);
    }
}
