//! Provider presets for `pailfs remote add --provider NAME`: how each common service spells
//! its endpoint, which region it expects, and which addressing style works there.

/// One provider's conventions.
#[derive(Clone, Copy, Debug)]
pub struct Provider {
    pub name: &'static str,
    /// Endpoint with `{region}` (or `{namespace}`) to fill in; `None`: the SDK's (AWS) or the
    /// user's own server (`needs_endpoint`).
    pub endpoint: Option<&'static str>,
    /// Region used when none is given; `None`: it must be given.
    pub default_region: Option<&'static str>,
    pub path_style: bool,
    /// Self-hosted: the endpoint URL must be given.
    pub needs_endpoint: bool,
}

pub const PROVIDERS: &[Provider] = &[
    Provider {
        name: "aws",
        endpoint: None,
        default_region: Some("us-east-1"),
        path_style: false,
        needs_endpoint: false,
    },
    Provider {
        name: "minio",
        endpoint: None,
        default_region: Some("us-east-1"),
        path_style: true,
        needs_endpoint: true,
    },
    Provider {
        name: "garage",
        endpoint: None,
        default_region: Some("garage"),
        path_style: true,
        needs_endpoint: true,
    },
    Provider {
        name: "ceph",
        endpoint: None,
        default_region: Some("default"),
        path_style: true,
        needs_endpoint: true,
    },
    Provider {
        name: "backblaze",
        endpoint: Some("https://s3.{region}.backblazeb2.com"),
        default_region: None,
        path_style: false,
        needs_endpoint: false,
    },
    Provider {
        name: "scaleway",
        endpoint: Some("https://s3.{region}.scw.cloud"),
        default_region: Some("fr-par"),
        path_style: false,
        needs_endpoint: false,
    },
    Provider {
        name: "wasabi",
        endpoint: Some("https://s3.{region}.wasabisys.com"),
        default_region: Some("us-east-1"),
        path_style: false,
        needs_endpoint: false,
    },
    Provider {
        name: "clevercloud",
        endpoint: Some("https://cellar-c2.services.clever-cloud.com"),
        default_region: Some("us-east-1"),
        path_style: true,
        needs_endpoint: false,
    },
    Provider {
        name: "oracle",
        endpoint: Some("https://{namespace}.compat.objectstorage.{region}.oraclecloud.com"),
        default_region: None,
        path_style: true,
        needs_endpoint: false,
    },
    Provider {
        name: "hcp",
        endpoint: None,
        default_region: Some("us-east-1"),
        path_style: true,
        needs_endpoint: true,
    },
    Provider {
        name: "vng",
        endpoint: Some("https://{region}.vstorage.vngcloud.vn"),
        default_region: Some("han02"),
        path_style: true,
        needs_endpoint: false,
    },
];

/// What a preset fills in: (endpoint, region, path style).
pub type Filled = (Option<String>, Option<String>, bool);

/// Applies preset `name` to what the user gave; explicit values win. Says what is missing.
pub fn apply(
    name: &str,
    endpoint: Option<String>,
    region: Option<String>,
    namespace: Option<&str>,
) -> Result<Filled, String> {
    let known: Vec<&str> = PROVIDERS.iter().map(|p| p.name).collect();
    let p = PROVIDERS
        .iter()
        .find(|p| p.name == name.to_ascii_lowercase())
        .ok_or_else(|| format!("unknown provider '{name}'; known: {}", known.join(", ")))?;
    let region = region.or(p.default_region.map(str::to_string));
    if endpoint.is_none() && p.needs_endpoint {
        return Err(format!(
            "provider '{}' is self-hosted: give --endpoint-url (e.g. https://s3.example.net:9000)",
            p.name
        ));
    }
    let endpoint = match (endpoint, p.endpoint) {
        (Some(e), _) => Some(e),
        (None, None) => None,
        (None, Some(pattern)) => {
            let mut url = pattern.to_string();
            if url.contains("{region}") {
                let region = region.as_deref().ok_or_else(|| {
                    format!(
                        "provider '{}' needs --region (it is part of the endpoint)",
                        p.name
                    )
                })?;
                url = url.replace("{region}", region);
            }
            if url.contains("{namespace}") {
                let namespace = namespace.ok_or_else(|| {
                    format!(
                        "provider '{}' needs --namespace (your Object Storage namespace)",
                        p.name
                    )
                })?;
                url = url.replace("{namespace}", namespace);
            }
            Some(url)
        }
    };
    Ok((endpoint, region, p.path_style))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_fill_endpoint_region_and_style() {
        let (e, r, path) = apply("scaleway", None, None, None).unwrap();
        assert_eq!(e.as_deref(), Some("https://s3.fr-par.scw.cloud"));
        assert_eq!((r.as_deref(), path), (Some("fr-par"), false));
        let (e, _, _) = apply("backblaze", None, Some("eu-central-003".into()), None).unwrap();
        assert_eq!(
            e.as_deref(),
            Some("https://s3.eu-central-003.backblazeb2.com")
        );
        assert!(apply("backblaze", None, None, None)
            .unwrap_err()
            .contains("--region"));
        let (e, _, path) =
            apply("oracle", None, Some("eu-frankfurt-1".into()), Some("axyz")).unwrap();
        assert_eq!(
            e.as_deref(),
            Some("https://axyz.compat.objectstorage.eu-frankfurt-1.oraclecloud.com")
        );
        assert!(path);
        assert!(apply("minio", None, None, None)
            .unwrap_err()
            .contains("--endpoint-url"));
        let (e, r, path) = apply("aws", None, None, None).unwrap();
        assert_eq!((e, r.as_deref(), path), (None, Some("us-east-1"), false));
        assert!(apply("nope", None, None, None)
            .unwrap_err()
            .contains("known: aws"));
        assert_eq!(PROVIDERS.len(), 11);
    }
}
