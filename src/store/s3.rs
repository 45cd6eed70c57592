//! `ObjectStore` over aws-sdk-s3: endpoint, region, addressing style, TLS trust, credentials,
//! checksums, retries and timeouts; and the one place where SDK errors are classified.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

use super::{
    ByteRange, ListPage, ListRequest, Metadata, ObjectInfo, ObjectStore, StoreError, UploadedPart,
};

/// Where credentials come from.
#[derive(Clone, Debug)]
pub enum CredentialSource {
    /// The AWS default chain: environment, shared profiles (optionally a named one), SSO,
    /// web identity, container and instance metadata.
    DefaultChain { profile: Option<String> },
    /// A shared-credentials file given by the user (already checked for safe permissions).
    File {
        path: PathBuf,
        profile: Option<String>,
    },
    /// Unsigned requests, for public buckets.
    Anonymous,
    /// Keys of a named remote (`pailfs remote add`); Debug never shows the secret.
    Keys(StaticKeys),
}

#[derive(Clone)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKeys({}, secret hidden)", self.access_key_id)
    }
}

/// When to compute and validate flexible checksums. Several S3-compatible services reject the
/// CRC headers recent SDKs send by default, so `WhenRequired` is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChecksumPolicy {
    WhenRequired,
    WhenSupported,
}

/// Connection settings, in the vocabulary of providers' settings pages.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    /// A full URL (`http://host:port` or `https://host`), or `None` for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    /// PEM file with extra trusted certificate authorities.
    pub ca_bundle: Option<PathBuf>,
    pub credentials: CredentialSource,
    pub checksums: ChecksumPolicy,
    pub connect_timeout: Duration,
    pub max_attempts: u32,
}

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

    /// Builds the client and resolves credentials once, so that a missing or broken credential
    /// source is reported before anything is mounted.
    pub async fn connect(settings: &S3Settings) -> Result<S3Store, StoreError> {
        let http_client = build_http_client(settings)?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            // Throttling (503 SlowDown) and transient network errors are retried with
            // exponential backoff and jitter; the backoff cap bounds the wait in time
            // (8 attempts: at most ~1 min of waiting before the error reaches the program).
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(15)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        loader = match &settings.credentials {
            CredentialSource::Anonymous => loader.no_credentials(),
            CredentialSource::Keys(keys) => {
                loader.credentials_provider(aws_credential_types::Credentials::new(
                    &keys.access_key_id,
                    &keys.secret_access_key,
                    None,
                    None,
                    "pailfs-remote",
                ))
            }
            CredentialSource::DefaultChain { profile } => match profile {
                Some(p) => loader.profile_name(p.clone()),
                None => loader,
            },
            CredentialSource::File { path, profile } => {
                let files = aws_runtime::env_config::file::EnvConfigFiles::builder()
                    .with_file(
                        aws_runtime::env_config::file::EnvConfigFileKind::Credentials,
                        path,
                    )
                    .build();
                // The file given is the one source: keys in the environment must not win over it.
                let mut provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_files(files.clone());
                if let Some(p) = profile {
                    provider = provider.profile_name(p.clone());
                }
                let loader = loader
                    .profile_files(files)
                    .credentials_provider(provider.build());
                match profile {
                    Some(p) => loader.profile_name(p.clone()),
                    None => loader,
                }
            }
        };
        let shared = loader.load().await;
        let region = shared
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| FALLBACK_REGION.to_string());

        if let Some(provider) = shared.credentials_provider() {
            if let Err(e) = provider.provide_credentials().await {
                // The chain's own Display lists each source it tried, one per line.
                return Err(StoreError::NoCredentials(e.to_string()));
            }
        }

        let (request_checksums, response_checksums) = match settings.checksums {
            ChecksumPolicy::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
            ChecksumPolicy::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
        };
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .region(aws_config::Region::new(region.clone()))
            .force_path_style(settings.path_style)
            .request_checksum_calculation(request_checksums)
            .response_checksum_validation(response_checksums)
            .build();
        Ok(S3Store {
            client: std::sync::RwLock::new(Client::from_conf(config)),
            bucket: settings.bucket.clone(),
            region,
        })
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }
}

fn build_http_client(
    settings: &S3Settings,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, StoreError> {
    let mut trust = tls::TrustStore::default();
    let bundle = settings
        .ca_bundle
        .clone()
        .or_else(|| std::env::var_os("AWS_CA_BUNDLE").map(PathBuf::from));
    if let Some(path) = bundle {
        let pem = std::fs::read(&path).map_err(|e| {
            StoreError::Tls(format!(
                "cannot read the CA bundle {}: {e}; give a readable PEM file with --ca-bundle (or AWS_CA_BUNDLE)",
                path.display()
            ))
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(StoreError::Tls(format!(
                "the CA bundle {} holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)",
                path.display()
            )));
        }
        trust = trust.with_pem_certificate(pem);
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| StoreError::Tls(DisplayErrorContext(&e).to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .pool_idle_timeout(Duration::from_secs(60))
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
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

/// Pulls `<Region>…</Region>` out of an S3 error body (AWS names the right region there).
fn region_in_body(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Region>")? + "<Region>".len();
    let end = text[start..].find("</Region>")? + start;
    let region = text[start..end].trim();
    (!region.is_empty()).then(|| region.to_string())
}

/// The messages of an error and its sources, innermost last, without repeats: short enough
/// for a person ("dispatch failure: … tcp connect error: Connection refused (os error 111)").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// Maps any SDK error onto `StoreError`: the one place that reads status codes and S3 codes.
fn classify<E>(err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let status = raw.status().as_u16();
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("").to_string();
            let header_region = raw.headers().get("x-amz-bucket-region").map(str::to_string);
            let body_region = raw.body().bytes().and_then(region_in_body);
            match code {
                "NoSuchBucket" => StoreError::NoSuchBucket,
                "NoSuchKey" | "NotFound" => StoreError::NotFound,
                "PreconditionFailed" => StoreError::PreconditionFailed,
                "InvalidAccessKeyId" => StoreError::InvalidAccessKey,
                "SignatureDoesNotMatch" => StoreError::SignatureMismatch,
                "RequestTimeTooSkewed" => StoreError::ClockSkew,
                "SlowDown" | "ServiceUnavailable" | "Throttling" => StoreError::Throttled,
                "AuthorizationHeaderMalformed"
                | "PermanentRedirect"
                | "IllegalLocationConstraintException" => StoreError::WrongRegion {
                    expected: header_region.or(body_region),
                },
                // Garage answers a bad signature or an unknown key with a 403 whose message
                // says which; AWS and MinIO use the dedicated codes above.
                _ if status == 403 && message.contains("Invalid signature") => {
                    StoreError::SignatureMismatch
                }
                _ if status == 403 && message.contains("No such key") => {
                    StoreError::InvalidAccessKey
                }
                // Ceph answers QuotaExceeded, MinIO XMinioAdminBucketQuotaExceeded; Garage a
                // 403 whose message names the quota.
                _ if code.contains("QuotaExceeded")
                    || (status == 403 && message.to_ascii_lowercase().contains("quota")) =>
                {
                    StoreError::QuotaExceeded(if message.is_empty() {
                        code.to_string()
                    } else {
                        message
                    })
                }
                "AccessDenied" | "AllAccessDisabled" => StoreError::AccessDenied(message),
                _ => match status {
                    301 | 307 => StoreError::WrongRegion {
                        expected: header_region.or(body_region),
                    },
                    404 => StoreError::NotFound,
                    412 => StoreError::PreconditionFailed,
                    403 => StoreError::AccessDenied(if message.is_empty() {
                        format!("HTTP 403 {code}")
                    } else {
                        message
                    }),
                    503 => StoreError::Throttled,
                    _ => StoreError::Other(format!(
                        "HTTP {status} {code} {message}{}",
                        header_region
                            .or(body_region)
                            .map(|r| format!(" (region {r})"))
                            .unwrap_or_default()
                    )),
                },
            }
        }
        SdkError::TimeoutError(_) => StoreError::Timeout,
        SdkError::DispatchFailure(failure) => {
            let detail = error_chain(&err);
            let lower = detail.to_ascii_lowercase();
            if failure.is_timeout() {
                StoreError::Timeout
            } else if lower.contains("certificate")
                || lower.contains("tls")
                || lower.contains("handshake")
                || lower.contains("invalidcontenttype")
                || lower.contains("corrupt message")
            {
                StoreError::Tls(detail)
            } else {
                StoreError::Unreachable(detail)
            }
        }
        SdkError::ConstructionFailure(_) => {
            let detail = DisplayErrorContext(&err).to_string();
            if detail.to_ascii_lowercase().contains("credential") {
                StoreError::NoCredentials(detail)
            } else {
                StoreError::Other(detail)
            }
        }
        _ => StoreError::Other(DisplayErrorContext(&err).to_string()),
    }
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

/// Names the permission a refused request needed, so the log says what to grant.
fn needs(error: StoreError, permission: &str) -> StoreError {
    match error {
        StoreError::AccessDenied(text) => {
            StoreError::AccessDenied(format!("{text} (the access key needs {permission})"))
        }
        other => other,
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
    use super::region_in_body;

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
