//! The one place where SDK errors are classified into `StoreError` (status codes, S3 error
//! codes, the region a refusal names), and where a refusal is told which permission it needed.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::store::StoreError;

/// Pulls `<Region>…</Region>` out of an S3 error body (AWS names the right region there).
pub(super) fn region_in_body(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Region>")? + "<Region>".len();
    let end = text[start..].find("</Region>")? + start;
    let region = text[start..end].trim();
    (!region.is_empty()).then(|| region.to_string())
}

/// The messages of an error and its sources, innermost last, without repeats: short enough
/// for a person ("dispatch failure: … tcp connect error: Connection refused (os error 111)").
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
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
pub(super) fn classify<E>(err: SdkError<E, HttpResponse>) -> StoreError
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

/// Names the permission a refused request needed, so the log says what to grant.
pub(super) fn needs(error: StoreError, permission: &str) -> StoreError {
    match error {
        StoreError::AccessDenied(text) => {
            StoreError::AccessDenied(format!("{text} (the access key needs {permission})"))
        }
        other => other,
    }
}
