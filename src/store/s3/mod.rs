//! `ObjectStore` over aws-sdk-s3: the requests, each with the permission it needs named when
//! refused. How the client is built (endpoint, region, addressing style, TLS trust,
//! credentials, checksums, retries, timeouts) is in `connect`; how SDK errors become
//! `StoreError`s, in the one place that reads status codes, is in `errors`.

mod connect;
mod errors;

pub use connect::{ChecksumPolicy, CredentialSource, S3Settings, StaticKeys};
use errors::{classify, needs};

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_smithy_types::retry::RetryConfig;
use bytes::Bytes;

use super::{
    ByteRange, ListPage, ListRequest, Metadata, ObjectInfo, ObjectStore, StoreError, UploadedPart,
};

pub struct S3Store {
    /// Replaced as a whole when credentials are reloaded (SIGHUP); requests take a clone.
    client: std::sync::RwLock<Client>,
    bucket: String,
    region: String,
}

/// Region used when nothing (flag, environment, profile) names one.
const FALLBACK_REGION: &str = "us-east-1";

impl S3Store {
    /// `x-amz-copy-source` for a key of this bucket.
    fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, percent_encode_key(key))
    }

    fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes `fresh`'s client (new credentials) for every request from now on.
    pub fn adopt(&self, fresh: &S3Store) {
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = fresh.client();
    }

    /// The same store, making at most `attempts` attempts per request.
    pub fn with_attempts(&self, attempts: u32) -> S3Store {
        let config = self
            .client()
            .config()
            .to_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(attempts))
            .build();
        S3Store {
            client: std::sync::RwLock::new(Client::from_conf(config)),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Percent-encodes a key for `x-amz-copy-source`: everything but unreserved characters and `/`.
fn percent_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let out = self
            .client()
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:GetObject"))?;
        let metadata = out
            .metadata()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified: to_system_time(out.last_modified()),
            etag: out.e_tag().unwrap_or_default().to_string(),
            metadata,
            storage_class: out.storage_class().map(|c| c.as_str().to_string()),
        })
    }

    async fn list(&self, request: ListRequest) -> Result<ListPage, StoreError> {
        let mut call = self
            .client()
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&request.prefix)
            .max_keys(request.max_keys.clamp(1, 1000) as i32);
        if request.delimited {
            call = call.delimiter("/");
        }
        if let Some(token) = &request.continuation {
            call = call.continuation_token(token);
        }
        let out = call
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:ListBucket"))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_system_time(o.last_modified()),
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    metadata: Default::default(),
                    storage_class: o.storage_class().map(|c| c.as_str().to_string()),
                })
            })
            .collect();
        let prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect();
        let next = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            prefixes,
            next,
        })
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, StoreError> {
        let out = self
            .client()
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(metadata_or_none(metadata))
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:PutObject"))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.client()
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:DeleteObject"))?;
        Ok(())
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&Metadata>,
    ) -> Result<String, StoreError> {
        let mut call = self
            .client()
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(self.copy_source(from));
        if let Some(metadata) = metadata {
            call = call
                .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
                .set_metadata(metadata_or_none(metadata));
        }
        let out = call
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:GetObject on the source and s3:PutObject"))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
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
        let out = self
            .client()
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .copy_source(self.copy_source(source))
            .set_copy_source_if_match(source_etag.map(str::to_string))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:GetObject on the source and s3:PutObject"))?;
        Ok(out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
    }

    async fn create_multipart(&self, key: &str, metadata: &Metadata) -> Result<String, StoreError> {
        let out = self
            .client()
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(metadata_or_none(metadata))
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:PutObject"))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("the server returned no upload id".into()))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let out = self
            .client()
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:PutObject"))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<String, StoreError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number as i32)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let out = self
            .client()
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:PutObject"))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.client()
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:AbortMultipartUpload"))?;
        Ok(())
    }

    async fn presign(
        &self,
        key: &str,
        method: super::PresignMethod,
        expires: Duration,
    ) -> Result<String, StoreError> {
        use aws_sdk_s3::presigning::PresigningConfig;
        let config = PresigningConfig::expires_in(expires)
            .map_err(|e| StoreError::Other(format!("cannot sign for that long: {e}")))?;
        let request = match method {
            super::PresignMethod::Get => self
                .client()
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(classify)?,
            super::PresignMethod::Put => self
                .client()
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(classify)?,
        };
        Ok(request.uri().to_string())
    }

    async fn get_range_into(
        &self,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
        mut buffer: bytes::BytesMut,
    ) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let mut call = self
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(etag) = if_match {
            call = call.if_match(etag);
        }
        let out = call
            .send()
            .await
            .map_err(|e| needs(classify(e), "s3:GetObject"))?;
        // A server that ignores Range answers 200 with the whole object: from offset 0 its
        // first bytes are still the range; from elsewhere they are not.
        if out.content_range().is_none() && range.start > 0 {
            return Err(StoreError::Other(
                "the server ignored the Range header of a ranged GET (answered the whole object)"
                    .into(),
            ));
        }
        // Stream into one buffer of the final size: collecting chunks and then joining them
        // would hold every part twice and copy it once more. Never more than asked, whatever
        // the server sends.
        let mut body = out.body;
        let want = range.len() as usize;
        buffer.clear();
        buffer.reserve(want);
        while buffer.len() < want {
            let Some(chunk) = body
                .try_next()
                .await
                .map_err(|e| StoreError::Unreachable(format!("reading the response body: {e}")))?
            else {
                break;
            };
            let room = want - buffer.len();
            buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok(buffer.freeze())
    }
}

/// The SDK's form of user metadata; `None` when there is none, so no empty header is sent.
fn metadata_or_none(metadata: &Metadata) -> Option<std::collections::HashMap<String, String>> {
    if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::errors::region_in_body;

    #[test]
    fn copy_source_keys_are_percent_encoded() {
        assert_eq!(
            super::percent_encode_key("a b/ü+c.txt"),
            "a%20b/%C3%BC%2Bc.txt"
        );
    }

    #[test]
    fn region_is_read_from_an_error_body() {
        let body =
            b"<Error><Code>AuthorizationHeaderMalformed</Code><Region>eu-west-3</Region></Error>";
        assert_eq!(region_in_body(body).as_deref(), Some("eu-west-3"));
        assert_eq!(region_in_body(b"<Error></Error>"), None);
    }
}
