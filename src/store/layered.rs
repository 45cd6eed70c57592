//! The one way to layer behaviour over an `ObjectStore`: a `StoreLayer` sees each request
//! before it is sent (and may answer it instead, with an injected fault, or hold it) and after
//! the bucket answered, and `Layered` makes any layer a store, delegating every request in
//! one place. Counting and fault injection (`instrumented.rs`) and a file's upload progress
//! (`fs/progress.rs`) are layers; a new concern is one more, not one more copy of every method.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{
    ByteRange, ListPage, ListRequest, Metadata, ObjectInfo, ObjectStore, PresignMethod,
    RequestKind, StoreError, UploadedPart,
};

/// One request, as a layer sees it.
pub struct Call<'a> {
    pub kind: RequestKind,
    pub key: &'a str,
    /// The multipart upload it belongs to.
    pub upload_id: Option<&'a str>,
    /// Bytes it sends to the bucket (a body) or has the bucket copy (a part copy).
    pub sent: u64,
}

impl<'a> Call<'a> {
    fn new(kind: RequestKind, key: &'a str) -> Call<'a> {
        Call {
            kind,
            key,
            upload_id: None,
            sent: 0,
        }
    }

    fn upload(mut self, upload_id: &'a str) -> Call<'a> {
        self.upload_id = Some(upload_id);
        self
    }

    fn sending(mut self, bytes: u64) -> Call<'a> {
        self.sent = bytes;
        self
    }
}

/// What a request answered, as a layer sees it (never the payload itself).
pub enum Answer<'a> {
    Done,
    /// A multipart upload began, with this id.
    UploadStarted(&'a str),
    /// This many bytes came back.
    Received(u64),
}

#[async_trait]
pub trait StoreLayer: Send + Sync + 'static {
    /// Before `call` is sent. An error answers the request instead of the bucket.
    async fn before(&self, _call: &Call<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    /// After the bucket answered `call`.
    fn after(&self, _call: &Call<'_>, _answer: Result<Answer<'_>, &StoreError>) {}
}

/// A store that sends every request through `layer` to `inner`. It dereferences to the layer,
/// so the layer's own methods (counters, faults) are called on the store.
pub struct Layered<L> {
    inner: Arc<dyn ObjectStore>,
    layer: L,
}

impl<L> Layered<L> {
    pub fn over(inner: Arc<dyn ObjectStore>, layer: L) -> Layered<L> {
        Layered { inner, layer }
    }
}

impl<L> Deref for Layered<L> {
    type Target = L;

    fn deref(&self) -> &L {
        &self.layer
    }
}

impl<L: StoreLayer> Layered<L> {
    async fn run<T>(
        &self,
        call: Call<'_>,
        request: impl Future<Output = Result<T, StoreError>>,
        answer: fn(&T) -> Answer<'_>,
    ) -> Result<T, StoreError> {
        self.layer.before(&call).await?;
        let result = request.await;
        match &result {
            Ok(value) => self.layer.after(&call, Ok(answer(value))),
            Err(e) => self.layer.after(&call, Err(e)),
        }
        result
    }
}

fn done<T>(_: &T) -> Answer<'_> {
    Answer::Done
}

#[async_trait]
impl<L: StoreLayer> ObjectStore for Layered<L> {
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let call = Call::new(RequestKind::Head, key);
        self.run(call, self.inner.head(key), done).await
    }

    async fn list(&self, request: ListRequest) -> Result<ListPage, StoreError> {
        let prefix = request.prefix.clone();
        let call = Call::new(RequestKind::List, &prefix);
        self.run(call, self.inner.list(request), done).await
    }

    async fn get_range_into(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
        buffer: BytesMut,
    ) -> Result<Bytes, StoreError> {
        let call = Call::new(RequestKind::Get, key);
        let request = self.inner.get_range_into(key, range, if_match, buffer);
        self.run(call, request, |bytes| Answer::Received(bytes.len() as u64))
            .await
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, StoreError> {
        let call = Call::new(RequestKind::Put, key).sending(body.len() as u64);
        self.run(call, self.inner.put_object(key, body, metadata), done)
            .await
    }

    async fn create_multipart(&self, key: &str, metadata: &Metadata) -> Result<String, StoreError> {
        let call = Call::new(RequestKind::CreateMultipart, key);
        let request = self.inner.create_multipart(key, metadata);
        self.run(call, request, |id| Answer::UploadStarted(id))
            .await
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
        let call = Call::new(RequestKind::PartCopy, key)
            .upload(upload_id)
            .sending(range.len());
        let request =
            self.inner
                .upload_part_copy(key, upload_id, number, source, source_etag, range);
        self.run(call, request, done).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let call = Call::new(RequestKind::UploadPart, key)
            .upload(upload_id)
            .sending(body.len() as u64);
        let request = self.inner.upload_part(key, upload_id, number, body);
        self.run(call, request, done).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<String, StoreError> {
        let call = Call::new(RequestKind::CompleteMultipart, key).upload(upload_id);
        let request = self.inner.complete_multipart(key, upload_id, parts);
        self.run(call, request, done).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let call = Call::new(RequestKind::AbortMultipart, key).upload(upload_id);
        let request = self.inner.abort_multipart(key, upload_id);
        self.run(call, request, done).await
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let call = Call::new(RequestKind::Delete, key);
        self.run(call, self.inner.delete_object(key), done).await
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&Metadata>,
    ) -> Result<String, StoreError> {
        let call = Call::new(RequestKind::Copy, to);
        self.run(call, self.inner.copy_object(from, to, metadata), done)
            .await
    }

    /// Signing is local: no request, so layers do not see it.
    async fn presign(
        &self,
        key: &str,
        method: PresignMethod,
        expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        self.inner.presign(key, method, expires).await
    }
}
