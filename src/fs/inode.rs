//! Inode numbers and the table the kernel's references point into.
//!
//! An inode number is derived from a hash of (kind, path), so the same path keeps its number
//! for the whole mount even after the kernel forgets it; collisions are resolved by probing.
//! Entries live while the kernel holds a lookup reference (plus the root, always).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

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
    /// Path below the mount root, without leading or trailing `/`; empty for the root.
    pub path: String,
    pub parent: Ino,
    lookups: u64,
}

impl Node {
    /// The name in its parent directory.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

pub struct InodeTable {
    nodes: HashMap<Ino, Node>,
    by_path: HashMap<(Kind, String), Ino>,
}

fn hashed_ino(kind: Kind, path: &str, attempt: u64) -> Ino {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (kind, path, attempt).hash(&mut h);
    // Keep clear of 0 (invalid) and 1 (root), and of the top bit (some tools treat inode
    // numbers as signed).
    Ino((h.finish() >> 1).max(2))
}

impl Default for InodeTable {
    fn default() -> Self {
        let mut table = InodeTable {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
        };
        table.nodes.insert(
            Ino::ROOT,
            Node {
                kind: Kind::Dir,
                path: String::new(),
                parent: Ino::ROOT,
                lookups: 1,
            },
        );
        table.by_path.insert((Kind::Dir, String::new()), Ino::ROOT);
        table
    }
}

impl InodeTable {
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The number `path` has (or would get), without taking a reference.
    pub fn peek(&self, kind: Kind, path: &str) -> Ino {
        let kind = kind.slot();
        if let Some(ino) = self.by_path.get(&(kind, path.to_string())) {
            return *ino;
        }
        self.free_ino(kind, path)
    }

    fn free_ino(&self, kind: Kind, path: &str) -> Ino {
        let mut attempt = 0;
        loop {
            let ino = hashed_ino(kind, path, attempt);
            match self.nodes.get(&ino) {
                Some(node) if node.kind != kind || node.path != path => attempt += 1,
                _ => return ino,
            }
        }
    }

    /// Takes one kernel reference on `path` (a lookup, or an entry of readdirplus).
    pub fn remember(&mut self, parent: Ino, kind: Kind, path: &str) -> Ino {
        let kind = kind.slot();
        if let Some(ino) = self.by_path.get(&(kind, path.to_string())).copied() {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.lookups += 1;
                return ino;
            }
        }
        let ino = self.free_ino(kind, path);
        self.nodes.insert(
            ino,
            Node {
                kind,
                path: path.to_string(),
                parent,
                lookups: 1,
            },
        );
        self.by_path.insert((kind, path.to_string()), ino);
        ino
    }

    /// Drops `n` kernel references; the entry goes when none are left.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == Ino::ROOT {
            return;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = self.nodes.remove(&ino) {
                self.unmap(ino, node.kind, &node.path);
            }
        }
    }

    /// Removes the path mapping of `(kind, path)` only while it still names `ino`: after a
    /// rename over a looked-up target, the path belongs to the renamed inode, and forgetting
    /// the replaced one must not take it away.
    fn unmap(&mut self, ino: Ino, kind: Kind, path: &str) {
        let slot = (kind, path.to_string());
        if self.by_path.get(&slot) == Some(&ino) {
            self.by_path.remove(&slot);
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
        // A path no key can have (NUL is refused in names): never matched by a lookup.
        node.path = format!("\0detached/{}", ino.0);
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
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        let old = (
            node.kind,
            std::mem::replace(&mut node.path, path.to_string()),
        );
        node.parent = parent;
        let kind = node.kind;
        self.unmap(ino, old.0, &old.1);
        // A node the target path had (renamed over) is detached: it keeps its number for the
        // handles open on it, but the path is the renamed node's now.
        if let Some(replaced) = self.by_path.insert((kind, path.to_string()), ino) {
            if replaced != ino {
                self.detach(replaced);
                self.by_path.insert((kind, path.to_string()), ino);
            }
        }
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
}
