//! Reading a location into bucket, internal path and (optionally) endpoint.
//!
//! Accepted forms:
//! - `s3://BUCKET[/INTERNAL/PATH]`
//! - `s3://HOST[:PORT]/BUCKET[/INTERNAL/PATH]` (the form some tools print)
//! - `http(s)://HOST[:PORT]/BUCKET[/INTERNAL/PATH]` (endpoint form, scheme explicit)
//!
//! The rule for `s3://FIRST/REST` (bucket names may contain dots, so a dot alone proves
//! nothing), applied in this order:
//! 1. `FIRST` has a `:PORT`, is an IP address or `localhost` → FIRST is the endpoint.
//! 2. `FIRST` equals the host of `--endpoint-url` → FIRST is the endpoint.
//! 3. `--endpoint-url` is given → FIRST is the bucket.
//! 4. `FIRST` ends with a known provider domain (amazonaws.com, backblazeb2.com, …) → endpoint.
//! 5. `FIRST` has no dot, or nothing follows it → FIRST is the bucket.
//! 6. Otherwise the location is ambiguous and refused, showing both readings.

use std::net::IpAddr;

/// A parsed location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// The internal path, empty or ending in `/` (e.g. `photos/2024/`).
    pub prefix: String,
    /// Endpoint URL found in the location itself, if any.
    pub endpoint: Option<String>,
    /// Which rule decided, for the "read as" line printed at mount time.
    pub rule: &'static str,
}

impl Location {
    /// How the location was read, with the endpoint in effect (`None`: AWS's default).
    pub fn describe(&self, endpoint: Option<&str>) -> String {
        format!(
            "bucket '{}', internal path '{}', endpoint {} ({})",
            self.bucket,
            if self.prefix.is_empty() {
                "/"
            } else {
                &self.prefix
            },
            endpoint.unwrap_or("AWS S3 (default)"),
            self.rule
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("'{0}' is not a location: write s3://BUCKET[/PATH], s3://HOST[:PORT]/BUCKET[/PATH] or https://HOST[:PORT]/BUCKET[/PATH]")]
    NotALocation(String),
    #[error("'{input}' names no bucket: write it as s3://BUCKET[/PATH]")]
    NoBucket { input: String },
    #[error("'{input}' is ambiguous: it reads either as\n  (a) bucket '{first}', internal path '{rest}' on the default endpoint, or\n  (b) endpoint https://{first}, bucket '{second}'\nSay which: for (a) add --endpoint-url URL (or use it without the s3:// host form); for (b) write https://{first}/{rest} or add the port (s3://{first}:443/{rest})")]
    Ambiguous {
        input: String,
        first: String,
        second: String,
        rest: String,
    },
    #[error("invalid bucket name '{name}': {reason} (S3 bucket names are 3-63 characters of lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit)")]
    InvalidBucket { name: String, reason: String },
    #[error("invalid internal path '{0}': it must not contain empty segments ('//'), '.' or '..'")]
    InvalidPrefix(String),
}

/// Domains of providers whose endpoints appear as the host part of `s3://HOST/BUCKET`.
const PROVIDER_DOMAINS: &[&str] = &[
    "amazonaws.com",
    "amazonaws.com.cn",
    "backblazeb2.com",
    "scw.cloud",
    "wasabisys.com",
    "clever-cloud.com",
    "cellar.services.clever-cloud.com",
    "oraclecloud.com",
    "digitaloceanspaces.com",
    "cloud.ovh.net",
    "io.cloud.ovh.net",
    "vngcloud.vn",
    "linodeobjects.com",
    "r2.cloudflarestorage.com",
    "storage.googleapis.com",
];

fn is_provider_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    PROVIDER_DOMAINS
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

fn host_of_url(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    Some(
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority),
    )
}

/// Checks S3's bucket naming rules.
pub fn validate_bucket(name: &str) -> Result<(), LocationError> {
    let fail = |reason: &str| {
        Err(LocationError::InvalidBucket {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.len() < 3 || name.len() > 63 {
        return fail(&format!("it is {} characters long", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return fail(&format!("the character {c:?} is not allowed"));
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return fail("it must start and end with a letter or digit");
    }
    if name.contains("..") {
        return fail("it contains two adjacent dots");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return fail("it is formatted as an IP address");
    }
    Ok(())
}

fn normalize_prefix(path: &str) -> Result<String, LocationError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(LocationError::InvalidPrefix(path.to_string()));
    }
    Ok(format!("{trimmed}/"))
}

fn looks_like_endpoint_host(first: &str) -> bool {
    if first.contains(':') || first.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = first.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok()
}

/// Parses `input`. `endpoint_flag` is `--endpoint-url` when given; `tls` decides the scheme
/// of an endpoint written without one (`s3://HOST:PORT/...`).
pub fn parse_location(
    input: &str,
    endpoint_flag: Option<&str>,
    tls: bool,
) -> Result<Location, LocationError> {
    let (scheme, rest) = input
        .split_once("://")
        .ok_or_else(|| LocationError::NotALocation(input.to_string()))?;
    let scheme = scheme.to_ascii_lowercase();
    let (first, tail) = match rest.split_once('/') {
        Some((f, t)) => (f, t),
        None => (rest, ""),
    };
    if first.is_empty() {
        return Err(LocationError::NoBucket {
            input: input.to_string(),
        });
    }
    let endpoint_form = |rule: &'static str, scheme: &str| -> Result<Location, LocationError> {
        let (bucket, path) = tail.split_once('/').unwrap_or((tail, ""));
        if bucket.is_empty() {
            return Err(LocationError::NoBucket {
                input: input.to_string(),
            });
        }
        validate_bucket(bucket)?;
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: normalize_prefix(path)?,
            endpoint: Some(format!("{scheme}://{first}")),
            rule,
        })
    };
    let bucket_form = |rule: &'static str| -> Result<Location, LocationError> {
        validate_bucket(first)?;
        Ok(Location {
            bucket: first.to_string(),
            prefix: normalize_prefix(tail)?,
            endpoint: None,
            rule,
        })
    };
    let default_scheme = if tls { "https" } else { "http" };
    match scheme.as_str() {
        "http" | "https" => endpoint_form("URL form: the host is the endpoint", &scheme),
        "s3" => {
            if looks_like_endpoint_host(first) {
                return endpoint_form(
                    "the first part has a port or is an address, so it is the endpoint",
                    default_scheme,
                );
            }
            if let Some(flag) = endpoint_flag {
                if host_of_url(flag).is_some_and(|h| h.eq_ignore_ascii_case(first)) {
                    return endpoint_form(
                        "the first part is the --endpoint-url host",
                        default_scheme,
                    );
                }
                return bucket_form("--endpoint-url given, so the first part is the bucket");
            }
            if is_provider_host(first) && !tail.is_empty() {
                return endpoint_form(
                    "the first part is a known provider endpoint",
                    default_scheme,
                );
            }
            if !first.contains('.') || tail.trim_matches('/').is_empty() {
                return bucket_form("the first part is the bucket");
            }
            let (second, _) = tail.split_once('/').unwrap_or((tail, ""));
            Err(LocationError::Ambiguous {
                input: input.to_string(),
                first: first.to_string(),
                second: second.to_string(),
                rest: tail.to_string(),
            })
        }
        _ => Err(LocationError::NotALocation(input.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<Location, LocationError> {
        parse_location(input, None, true)
    }

    #[test]
    fn bucket_form_with_and_without_internal_path() {
        let l = parse("s3://my-bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
        assert_eq!(l.endpoint, None);
        let l = parse("s3://my-bucket/photos/2024/").unwrap();
        assert_eq!(l.prefix, "photos/2024/");
        let l = parse("s3://my.dotted.bucket").unwrap();
        assert_eq!(l.bucket, "my.dotted.bucket");
    }

    #[test]
    fn endpoint_forms() {
        let l = parse("s3://localhost:9000/media/in").unwrap();
        assert_eq!(l.endpoint.as_deref(), Some("https://localhost:9000"));
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("media", "in/"));
        let l = parse_location("s3://127.0.0.1:3900/bk1", None, false).unwrap();
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        let l = parse("s3://s3.fr-par.scw.cloud/mybucket").unwrap();
        assert_eq!(l.endpoint.as_deref(), Some("https://s3.fr-par.scw.cloud"));
        assert_eq!(l.bucket, "mybucket");
        let l = parse("https://han02.vstorage.vngcloud.vn/data/x").unwrap();
        assert_eq!(l.bucket, "data");
        let l = parse("http://10.0.0.5:7480/ceph-bucket").unwrap();
        assert_eq!(l.endpoint.as_deref(), Some("http://10.0.0.5:7480"));
    }

    #[test]
    fn endpoint_flag_decides_between_readings() {
        let l = parse_location("s3://my.bucket/a/b", Some("https://minio.lan:9000"), true).unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("my.bucket", "a/b/")
        );
        let l = parse_location("s3://minio.lan/bkt/a", Some("https://minio.lan"), true).unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bkt", "a/"));
    }

    #[test]
    fn dotted_first_part_with_a_path_is_ambiguous() {
        let err = parse("s3://files.example.org/backups/2024").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LocationError::Ambiguous { .. }));
        assert!(text.contains("bucket 'files.example.org'"), "{text}");
        assert!(
            text.contains("endpoint https://files.example.org, bucket 'backups'"),
            "{text}"
        );
    }

    #[test]
    fn bad_input_is_refused_with_reasons() {
        assert!(matches!(
            parse("my-bucket"),
            Err(LocationError::NotALocation(_))
        ));
        assert!(matches!(
            parse("s3://"),
            Err(LocationError::NoBucket { .. })
        ));
        assert!(matches!(
            parse("s3://localhost:9000/"),
            Err(LocationError::NoBucket { .. })
        ));
        assert!(matches!(
            parse("s3://192.168.1.1"),
            Err(LocationError::NoBucket { .. })
        ));
        for bad in [
            "s3://ab",
            "s3://My_Bucket",
            "s3://-abc",
            "s3://a..b",
            "s3://localhost:9000/192.168.1.1",
        ] {
            assert!(
                matches!(parse(bad), Err(LocationError::InvalidBucket { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("s3://bucket/a//b"),
            Err(LocationError::InvalidPrefix(_))
        ));
        assert!(matches!(
            parse("s3://bucket/a/../b"),
            Err(LocationError::InvalidPrefix(_))
        ));
    }
}
