//! Building the S3 client from `S3Settings`, in the vocabulary of providers' settings pages:
//! endpoint, region, addressing style, TLS trust, credentials, checksums, retries and
//! timeouts. Credentials are resolved once here, so a broken source is reported before
//! anything is mounted.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::store::StoreError;

use super::{S3Store, FALLBACK_REGION};

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

impl S3Store {
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
