//! The written rule for object keys that cannot be names in a tree.
//!
//! A key is split at `/` below the mount's internal path. A segment becomes a name when it is
//! non-empty, not `.` or `..`, at most 255 bytes and free of NUL. Any key with a segment that
//! fails is not shown (nor anything below such a segment), and is logged once: it never
//! crashes the mount and never appears under another name, so it cannot shadow a real entry.
//! When both `x` (an object) and `x/` (a prefix) exist, the directory is shown and the object
//! is hidden (logged once); a lookup of `x` answers the directory too, so listing and lookup
//! agree.

use std::collections::HashSet;
use std::sync::Mutex;

/// Longest name Linux accepts for one path component.
pub const NAME_MAX: usize = 255;

/// Why a segment cannot be a file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadName {
    Empty,
    Dot,
    TooLong,
    Nul,
}

impl BadName {
    pub fn describe(self) -> &'static str {
        match self {
            BadName::Empty => "has an empty path segment ('//' or a leading '/')",
            BadName::Dot => "has a '.' or '..' segment",
            BadName::TooLong => "has a segment longer than 255 bytes",
            BadName::Nul => "contains a NUL byte",
        }
    }
}

pub fn check_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        Err(BadName::Empty)
    } else if name == "." || name == ".." {
        Err(BadName::Dot)
    } else if name.len() > NAME_MAX {
        Err(BadName::TooLong)
    } else if name.contains('\0') {
        Err(BadName::Nul)
    } else {
        Ok(())
    }
}

/// A form of `text` safe as one local file name: ASCII letters, digits, `.` and `-` kept,
/// everything else `_` (used for recovery files, logs and control sockets).
pub fn safe_file_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Logs each odd key once, remembering a bounded number of them.
#[derive(Default)]
pub struct OddKeyLog {
    seen: Mutex<HashSet<String>>,
}

const ODD_KEYS_REMEMBERED: usize = 10_000;

impl OddKeyLog {
    pub fn report(&self, key: &str, why: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= ODD_KEYS_REMEMBERED || !seen.insert(key.to_string()) {
            return;
        }
        tracing::warn!(key, "object key not shown: it {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_file_names_keep_only_plain_characters() {
        assert_eq!(
            safe_file_name("photos/2024/été 1.jpg"),
            "photos_2024__t__1.jpg"
        );
        assert_eq!(safe_file_name("a-b.c"), "a-b.c");
    }

    #[test]
    fn names_that_cannot_be_file_names() {
        assert_eq!(check_name(""), Err(BadName::Empty));
        assert_eq!(check_name("."), Err(BadName::Dot));
        assert_eq!(check_name(".."), Err(BadName::Dot));
        assert_eq!(check_name(&"x".repeat(256)), Err(BadName::TooLong));
        assert_eq!(check_name("a\0b"), Err(BadName::Nul));
        assert!(check_name(&"x".repeat(255)).is_ok());
        assert!(check_name("...").is_ok());
        assert!(check_name("ünïcödé ✓").is_ok());
    }
}
