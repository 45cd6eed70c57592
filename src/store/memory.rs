//! An in-memory `ObjectStore` with S3 listing semantics, for tests of the filesystem core.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ByteRange, ListPage, ListRequest, Metadata, ObjectInfo, ObjectStore, StoreError, UploadedPart,
};

#[derive(Clone, Debug)]
struct MemObject {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
    metadata: BTreeMap<String, String>,
}

/// A multipart upload in progress: its key, parts by number, and the metadata it will carry.
type Upload = (String, BTreeMap<u32, Bytes>, Metadata);

/// Objects kept in a sorted map, so listings come out in S3's byte-wise key order.
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, MemObject>>,
    versions: std::sync::atomic::AtomicU64,
    /// Multipart uploads in progress: upload id → (key, parts by number).
    uploads: Mutex<std::collections::HashMap<String, Upload>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores an object (a test fixture, or another client changing the bucket).
    pub fn put(&self, key: &str, data: impl Into<Bytes>) {
        self.put_with_metadata(key, data, BTreeMap::new());
    }

    pub fn put_with_metadata(
        &self,
        key: &str,
        data: impl Into<Bytes>,
        metadata: BTreeMap<String, String>,
    ) {
        let version = self
            .versions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let object = MemObject {
            data: data.into(),
            etag: format!("\"v{version}\""),
            last_modified: SystemTime::now(),
            metadata,
        };
        self.lock().insert(key.to_string(), object);
    }

    /// Multipart uploads neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The user metadata of `key`, if it exists.
    pub fn metadata(&self, key: &str) -> Option<Metadata> {
        self.lock().get(key).map(|o| o.metadata.clone())
    }

    /// The content of `key`, if it exists.
    pub fn content(&self, key: &str) -> Option<Bytes> {
        self.lock().get(key).map(|o| o.data.clone())
    }

    pub fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MemObject>> {
        // A panic while holding the lock cannot leave the map half-updated: every update is
        // a single insert or remove, so a poisoned lock is still consistent.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(key: &str, object: &MemObject, with_metadata: bool) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: object.data.len() as u64,
            last_modified: object.last_modified,
            etag: object.etag.clone(),
            metadata: if with_metadata {
                object.metadata.clone()
            } else {
                BTreeMap::new()
            },
            storage_class: None,
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let objects = self.lock();
        let object = objects.get(key).ok_or(StoreError::NotFound)?;
        Ok(Self::info(key, object, true))
    }

    async fn list(&self, request: ListRequest) -> Result<ListPage, StoreError> {
        let objects = self.lock();
        let max_keys = request.max_keys.clamp(1, 1000) as usize;
        let mut page = ListPage::default();
        let mut count = 0usize;
        let mut last_returned: Option<String> = None;
        // Tokens are tagged: "o:KEY" after an object, "p:PREFIX" after a common prefix (an
        // object key may itself end in '/', so the text alone cannot tell them apart).
        let token = request
            .continuation
            .as_deref()
            .map(|t| match t.split_at(2) {
                ("p:", rest) => (true, rest.to_string()),
                (_, rest) => (false, rest.to_string()),
            });
        let start = token
            .as_ref()
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| request.prefix.clone());
        for (key, object) in objects.range(start.clone()..) {
            // The range starts at or after the prefix, so the first key without it ends the run.
            if !key.starts_with(&request.prefix) {
                break;
            }
            if let Some((after_prefix, token)) = &token {
                if key <= token || (*after_prefix && key.starts_with(token.as_str())) {
                    continue;
                }
            }
            let rest = &key[request.prefix.len()..];
            let entry = match rest.find('/') {
                Some(i) if request.delimited => {
                    let common = format!("{}{}", request.prefix, &rest[..=i]);
                    if page.prefixes.last() == Some(&common) {
                        continue;
                    }
                    Err(common)
                }
                _ => Ok(Self::info(key, object, false)),
            };
            if count == max_keys {
                page.next = last_returned;
                return Ok(page);
            }
            count += 1;
            match entry {
                Ok(info) => {
                    last_returned = Some(format!("o:{}", info.key));
                    page.objects.push(info);
                }
                Err(common) => {
                    last_returned = Some(format!("p:{common}"));
                    page.prefixes.push(common);
                }
            }
        }
        Ok(page)
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, StoreError> {
        self.put_with_metadata(key, body, metadata.clone());
        Ok(self
            .lock()
            .get(key)
            .map(|o| o.etag.clone())
            .unwrap_or_default())
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.remove(key);
        Ok(())
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&Metadata>,
    ) -> Result<String, StoreError> {
        let source = self.lock().get(from).cloned().ok_or(StoreError::NotFound)?;
        let metadata = metadata.cloned().unwrap_or(source.metadata);
        self.put_object(to, source.data, &metadata).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source: &str,
        source_etag: Option<&str>,
        range: ByteRange,
    ) -> Result<String, StoreError> {
        let object = self.lock().get(source).cloned();
        let object = object.ok_or(StoreError::NotFound)?;
        if source_etag.is_some_and(|etag| etag != object.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let data = object.data;
        if range.end > data.len() as u64 || range.is_empty() {
            return Err(StoreError::Other(
                "InvalidRange: copy range outside the source".into(),
            ));
        }
        let body = data.slice(range.start as usize..range.end as usize);
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        match uploads.get_mut(upload_id) {
            Some((k, parts, _)) if k == key => {
                parts.insert(number, body);
                Ok(format!("\"copy{number}\""))
            }
            _ => Err(StoreError::NotFound),
        }
    }

    async fn create_multipart(&self, key: &str, metadata: &Metadata) -> Result<String, StoreError> {
        let id = format!(
            "upload-{}",
            self.versions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads.insert(
            id.clone(),
            (key.to_string(), BTreeMap::new(), metadata.clone()),
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        match uploads.get_mut(upload_id) {
            Some((k, parts, _)) if k == key => {
                parts.insert(number, body);
                Ok(format!("\"part{number}\""))
            }
            _ => Err(StoreError::NotFound),
        }
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<String, StoreError> {
        let (k, stored, metadata) = {
            let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            uploads.remove(upload_id).ok_or(StoreError::NotFound)?
        };
        if k != key {
            return Err(StoreError::Other("upload belongs to another key".into()));
        }
        let mut whole = Vec::new();
        for part in parts {
            let data = stored.get(&part.number).ok_or_else(|| {
                StoreError::Other(format!("part {} was never uploaded", part.number))
            })?;
            whole.extend_from_slice(data);
        }
        self.put_object(key, Bytes::from(whole), &metadata).await
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads.remove(upload_id);
        Ok(())
    }

    async fn presign(
        &self,
        key: &str,
        method: super::PresignMethod,
        expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        Ok(format!(
            "memory:///{key}?method={method:?}&expires={}",
            expires.as_secs()
        ))
    }

    async fn get_range_into(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
        _buffer: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        // Slices of the stored bytes: no copy, so the offered buffer is not needed.
        let objects = self.lock();
        let object = objects.get(key).ok_or(StoreError::NotFound)?;
        if let Some(etag) = if_match {
            if etag != object.etag {
                return Err(StoreError::PreconditionFailed);
            }
        }
        let len = object.data.len() as u64;
        let start = range.start.min(len) as usize;
        let end = range.end.min(len) as usize;
        Ok(object.data.slice(start..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(
        store: &MemoryStore,
        prefix: &str,
        max_keys: u32,
    ) -> (Vec<String>, Vec<String>, usize) {
        let mut request = ListRequest {
            prefix: prefix.to_string(),
            delimited: true,
            max_keys,
            continuation: None,
        };
        let (mut objects, mut prefixes, mut pages) = (vec![], vec![], 0);
        loop {
            let page = store.list(request.clone()).await.unwrap();
            pages += 1;
            objects.extend(page.objects.into_iter().map(|o| o.key));
            prefixes.extend(page.prefixes);
            match page.next {
                Some(token) => request.continuation = Some(token),
                None => break,
            }
        }
        (objects, prefixes, pages)
    }

    #[tokio::test]
    async fn listing_groups_common_prefixes_and_pages() {
        let store = MemoryStore::new();
        for key in ["a", "b/1", "b/2", "c/d/e", "d", "e/"] {
            store.put(key, "x");
        }
        let (objects, prefixes, pages) = list_all(&store, "", 2).await;
        assert_eq!(objects, vec!["a", "d"]);
        assert_eq!(prefixes, vec!["b/", "c/", "e/"]);
        assert_eq!(pages, 3);
        let (objects, prefixes, _) = list_all(&store, "b/", 1000).await;
        assert_eq!(objects, vec!["b/1", "b/2"]);
        assert!(prefixes.is_empty());
    }

    #[tokio::test]
    async fn if_match_detects_a_changed_object() {
        let store = MemoryStore::new();
        store.put("k", "one");
        let etag = store.head("k").await.unwrap().etag;
        store.put("k", "two");
        let err = store
            .get_range("k", ByteRange::new(0, 3), Some(&etag))
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::PreconditionFailed);
    }
}
