//! Extended attributes (opt-in with `--xattrs`): `user.*` names stored the way s3fs stores
//! them (one `x-amz-meta-xattr` header holding a percent-encoded JSON object of base64
//! values), and read-only virtual attributes describing the object.
//!
//! Off by default because every `ls -l` asks two xattrs per entry; with ENOSYS the kernel
//! stops asking for the rest of the mount.

use std::collections::BTreeMap;

use base64::Engine;

use super::error::FsError;
use super::inode::Ino;
use super::{Fs, Kind};
use crate::store::{Metadata, StoreError};

/// The metadata header that holds the xattrs (`x-amz-meta-xattr`).
const HEADER: &str = "xattr";
/// S3's limit on user metadata: names and values of all `x-amz-meta-*` headers together.
const METADATA_BUDGET: usize = 2048;

/// Read-only attributes every file has, computed from the object.
const VIRTUAL: [&str; 4] = [
    "user.s3.etag",
    "user.s3.key",
    "user.s3.storage_class",
    "user.s3.url",
];

/// The object behind an inode, as the xattr calls see it.
struct Described {
    kind: Kind,
    headers: Metadata,
    key: String,
    etag: Option<String>,
    storage_class: Option<String>,
}

/// How setxattr treats an existing (or missing) attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetMode {
    Any,
    /// XATTR_CREATE: fail with EEXIST when it exists.
    Create,
    /// XATTR_REPLACE: fail with ENODATA when it does not.
    Replace,
}

/// The xattrs stored in `metadata`. Unreadable values are skipped, not fatal: the header may
/// have been written by another tool.
pub fn decode(metadata: &Metadata) -> BTreeMap<String, Vec<u8>> {
    let Some(raw) = metadata.get(HEADER) else {
        return BTreeMap::new();
    };
    let json = percent_decode(raw);
    let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(&json) else {
        tracing::debug!("an x-amz-meta-xattr header is not a JSON object; ignored");
        return BTreeMap::new();
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    map.into_iter()
        .filter_map(|(name, value)| Some((name, b64.decode(value).ok()?)))
        .collect()
}

/// Writes `xattrs` into `metadata` (removing the header when there are none).
pub fn encode(xattrs: &BTreeMap<String, Vec<u8>>, metadata: &mut Metadata) {
    if xattrs.is_empty() {
        metadata.remove(HEADER);
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let map: BTreeMap<&String, String> = xattrs.iter().map(|(k, v)| (k, b64.encode(v))).collect();
    let json = serde_json::to_string(&map).unwrap_or_default();
    metadata.insert(HEADER.into(), percent_encode(&json));
}

/// Header values must be plain ASCII: everything but unreserved characters is escaped.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn metadata_size(metadata: &Metadata) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}

impl Fs {
    fn xattrs_enabled(&self) -> Result<(), FsError> {
        if self.cfg.xattrs {
            Ok(())
        } else {
            Err(FsError::XattrsOff)
        }
    }

    /// What the xattr calls need to know about `ino`: a HEAD, or the staging copy's state.
    async fn described(&self, ino: Ino) -> Result<Described, FsError> {
        let node = self.node(ino)?;
        if let Some(staged) = self.staged_of(ino) {
            let s = staged.lock().await;
            return Ok(Described {
                kind: Kind::File,
                headers: s.headers(),
                key: s.key.clone(),
                etag: None,
                storage_class: None,
            });
        }
        let key = self.object_key(&node);
        let mut described = Described {
            kind: node.kind,
            headers: Metadata::new(),
            key,
            etag: None,
            storage_class: None,
        };
        if described.key.is_empty() {
            return Ok(described);
        }
        match self.store.head(&described.key).await {
            Ok(info) => {
                self.names.meta.put_head(&info);
                described.headers = info.metadata;
                described.etag = Some(info.etag);
                described.storage_class = info.storage_class;
                Ok(described)
            }
            // An implicit directory: no marker, no metadata.
            Err(StoreError::NotFound) if node.kind == Kind::Dir => Ok(described),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn getxattr(&self, ino: Ino, name: &str) -> Result<Vec<u8>, FsError> {
        self.xattrs_enabled()?;
        if !name.starts_with("user.") {
            return Err(FsError::NoAttribute);
        }
        let d = self.described(ino).await?;
        let is_file = d.kind != Kind::Dir;
        let virtual_value = match name {
            "user.s3.key" if is_file => Some(d.key.clone()),
            "user.s3.etag" if is_file => d.etag.clone(),
            // HEAD names no class for STANDARD objects.
            "user.s3.storage_class" if is_file => {
                Some(d.storage_class.clone().unwrap_or_else(|| "STANDARD".into()))
            }
            _ => None,
        };
        if let Some(value) = virtual_value {
            return Ok(value.into_bytes());
        }
        if name == "user.s3.url" && is_file {
            // The same URL `pailfs presign` gives: a download link valid for 24 hours.
            let day = std::time::Duration::from_secs(24 * 3600);
            let url = self
                .store
                .presign(&d.key, crate::store::PresignMethod::Get, day)
                .await?;
            return Ok(url.into_bytes());
        }
        decode(&d.headers).remove(name).ok_or(FsError::NoAttribute)
    }

    pub async fn listxattr(&self, ino: Ino) -> Result<Vec<String>, FsError> {
        self.xattrs_enabled()?;
        let d = self.described(ino).await?;
        let mut names: Vec<String> = decode(&d.headers).into_keys().collect();
        if d.kind != Kind::Dir {
            names.extend(VIRTUAL.iter().map(|s| s.to_string()));
        }
        Ok(names)
    }

    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &str,
        value: &[u8],
        mode: SetMode,
    ) -> Result<(), FsError> {
        self.xattrs_enabled()?;
        self.writable()?;
        if VIRTUAL.contains(&name) {
            return Err(FsError::NotPermitted);
        }
        if !name.starts_with("user.") {
            return Err(FsError::NotSupported);
        }
        let (name, value) = (name.to_string(), value.to_vec());
        self.edit_metadata(ino, &move |current, headers| {
            let mut xattrs = decode(headers);
            match (mode, xattrs.contains_key(&name)) {
                (SetMode::Create, true) => return Err(FsError::Exists),
                (SetMode::Replace, false) => return Err(FsError::NoAttribute),
                _ => {}
            }
            xattrs.insert(name.clone(), value.clone());
            encode(&xattrs, headers);
            let size = metadata_size(headers);
            if size > METADATA_BUDGET {
                tracing::warn!(
                    name,
                    size,
                    budget = METADATA_BUDGET,
                    "extended attribute refused (E2BIG): S3 keeps at most 2 KiB of user metadata per object, and the xattrs are stored there"
                );
                return Err(FsError::TooBig);
            }
            Ok(current.clone())
        })
        .await
        .map(|_| ())
    }

    pub async fn removexattr(&self, ino: Ino, name: &str) -> Result<(), FsError> {
        self.xattrs_enabled()?;
        self.writable()?;
        if VIRTUAL.contains(&name) {
            return Err(FsError::NotPermitted);
        }
        let name = name.to_string();
        self.edit_metadata(ino, &move |current, headers| {
            let mut xattrs = decode(headers);
            if xattrs.remove(&name).is_none() {
                return Err(FsError::NoAttribute);
            }
            encode(&xattrs, headers);
            Ok(current.clone())
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_round_trip_through_one_ascii_header() {
        let mut xattrs = BTreeMap::new();
        xattrs.insert("user.note".to_string(), "héllo, wörld".as_bytes().to_vec());
        xattrs.insert("user.bin".to_string(), vec![0, 255, 10]);
        let mut metadata = Metadata::new();
        encode(&xattrs, &mut metadata);
        assert!(metadata[HEADER].is_ascii());
        assert!(!metadata[HEADER].contains('"'));
        assert_eq!(decode(&metadata), xattrs);
        encode(&BTreeMap::new(), &mut metadata);
        assert!(!metadata.contains_key(HEADER));
    }

    #[test]
    fn a_foreign_header_is_ignored_not_fatal() {
        let mut metadata = Metadata::new();
        metadata.insert(HEADER.into(), "not json".into());
        assert!(decode(&metadata).is_empty());
    }
}
