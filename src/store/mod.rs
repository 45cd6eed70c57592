//! The object-store boundary: the only door to the bucket.
//!
//! `ObjectStore` is the trait every layer above talks to; it speaks in plain keys, byte ranges
//! and listing pages. `s3` implements it over aws-sdk-s3, `memory` in process for tests, and
//! `instrumented` wraps any store to count requests by kind and to inject faults.

pub mod instrumented;
pub mod layered;
pub mod memory;
pub mod s3;

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// What a HEAD (or a listing entry) tells us about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    pub etag: String,
    /// User metadata (`x-amz-meta-*`) with the prefix removed and names lower-cased.
    /// Listings never carry it, so it is empty for listed objects.
    pub metadata: Metadata,
    /// The storage class, when the server names one (HEAD omits it for STANDARD).
    pub storage_class: Option<String>,
}

/// User metadata: `x-amz-meta-*` names (prefix removed, lower case) and their values.
pub type Metadata = BTreeMap<String, String>;

/// One ListObjectsV2 request.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    pub prefix: String,
    /// Group keys by `/` below `prefix` into common prefixes.
    pub delimited: bool,
    pub max_keys: u32,
    pub continuation: Option<String>,
}

/// One page of a listing, in the store's (byte-wise key) order.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes, each ending in `/`.
    pub prefixes: Vec<String>,
    /// Token for the next page, `None` when this was the last one.
    pub next: Option<String>,
}

/// A half-open byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn new(start: u64, end: u64) -> Self {
        debug_assert!(start <= end);
        ByteRange { start, end }
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Request kinds, for counting and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    Head,
    List,
    Get,
    Put,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    AbortMultipart,
    Delete,
    Copy,
    PartCopy,
}

impl RequestKind {
    pub const ALL: [RequestKind; 11] = [
        RequestKind::Head,
        RequestKind::List,
        RequestKind::Get,
        RequestKind::Put,
        RequestKind::CreateMultipart,
        RequestKind::UploadPart,
        RequestKind::CompleteMultipart,
        RequestKind::AbortMultipart,
        RequestKind::Delete,
        RequestKind::Copy,
        RequestKind::PartCopy,
    ];
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Head => "HEAD",
            RequestKind::List => "LIST",
            RequestKind::Get => "GET",
            RequestKind::Put => "PUT",
            RequestKind::CreateMultipart => "MPU_CREATE",
            RequestKind::UploadPart => "MPU_PART",
            RequestKind::CompleteMultipart => "MPU_COMPLETE",
            RequestKind::AbortMultipart => "MPU_ABORT",
            RequestKind::Delete => "DELETE",
            RequestKind::Copy => "COPY",
            RequestKind::PartCopy => "MPU_PART_COPY",
        }
    }
}

/// What a pre-signed URL allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PresignMethod {
    Get,
    Put,
}

/// The longest validity SigV4 allows a pre-signed URL: 7 days.
pub const PRESIGN_MAX: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// One uploaded part of a multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedPart {
    pub number: u32,
    pub etag: String,
}

/// Everything that can go wrong talking to the store, classified so that each layer above can
/// decide what it means (an errno, a start-up message, a retry).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("the object changed (its ETag no longer matches)")]
    PreconditionFailed,
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("the access key is not known to the server")]
    InvalidAccessKey,
    #[error("the request signature does not match: the secret key is wrong")]
    SignatureMismatch,
    #[error("wrong region{}", match .expected { Some(r) => format!(": the bucket lives in region '{r}'"), None => String::new() })]
    WrongRegion { expected: Option<String> },
    #[error("the clock of this machine differs too much from the server's")]
    ClockSkew,
    #[error("endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("TLS failure: {0}")]
    Tls(String),
    #[error("request timed out")]
    Timeout,
    #[error("the server asks to slow down (throttled)")]
    Throttled,
    #[error("the bucket's quota is reached: {0}")]
    QuotaExceeded(String),
    #[error("no credentials: {0}")]
    NoCredentials(String),
    #[error("{0}")]
    Other(String),
}

/// The only door to the bucket. Keys are full object keys (the mount's prefix included).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError>;
    async fn list(&self, request: ListRequest) -> Result<ListPage, StoreError>;
    /// Reads `range` of `key` into `buffer` (empty; stores that can fill it in place do, so
    /// callers can reuse buffers). With `if_match`, fails with `PreconditionFailed` when the
    /// object's ETag is no longer that one (so one open file never mixes two versions).
    async fn get_range_into(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
        buffer: bytes::BytesMut,
    ) -> Result<Bytes, StoreError>;

    /// Stores `body` as `key` in one request, with `metadata`; returns the new ETag.
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, StoreError>;

    /// Starts a multipart upload of `key` that will carry `metadata`; returns its upload id.
    async fn create_multipart(&self, key: &str, metadata: &Metadata) -> Result<String, StoreError>;

    /// Makes `range` of the object `source` part `number` of an upload (UploadPartCopy: the
    /// bytes never leave the server); returns the part's ETag. With `source_etag`, fails with
    /// `PreconditionFailed` when the source is no longer that version.
    #[allow(clippy::too_many_arguments)]
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source: &str,
        source_etag: Option<&str>,
        range: ByteRange,
    ) -> Result<String, StoreError>;

    /// Uploads part `number` (1-based) of an upload; returns the part's ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError>;

    /// Completes an upload from its parts, in order; returns the object's ETag.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<String, StoreError>;

    /// Abandons an upload so that its parts are not kept (nor billed).
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;

    /// Removes `key` (succeeds when it did not exist).
    async fn delete_object(&self, key: &str) -> Result<(), StoreError>;

    /// Copies `from` to `to` inside the bucket (up to 5 GiB), keeping the user metadata, or
    /// replacing it with `metadata` when given (`from == to` then updates metadata in place).
    /// Returns the new object's ETag.
    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&Metadata>,
    ) -> Result<String, StoreError>;

    /// A pre-signed URL that lets anyone holding it `method` the object `key` until `expires`
    /// from now, without credentials.
    async fn presign(
        &self,
        key: &str,
        method: PresignMethod,
        expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        let _ = (key, method, expires);
        Err(StoreError::Other("this store cannot sign URLs".into()))
    }

    /// `get_range_into` with a fresh buffer.
    async fn get_range(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<Bytes, StoreError> {
        self.get_range_into(key, range, if_match, bytes::BytesMut::new())
            .await
    }
}
