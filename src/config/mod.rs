//! Turning command-line input into one `MountConfig` value that is passed down (no globals).

pub mod credentials;
pub mod location;
pub mod options;
pub mod paths;
pub mod providers;
pub mod remotes;

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::MountArgs;
use crate::fs::FsConfig;
use crate::store::s3::{CredentialSource, S3Settings, StaticKeys};
use location::{parse_location, Location};

/// Everything a mount needs, decided once at start-up.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub location: Location,
    pub s3: S3Settings,
    pub fs: FsConfig,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub allow_non_empty: bool,
    pub fuse_threads: usize,
    pub kernel_read_ahead: u64,
    pub cache_dir: PathBuf,
    pub max_cache_size: u64,
    /// Cap of the data cache (`None`: the default, see `block_cache::default_cap`), and
    /// whether there is one.
    pub data_cache_size: Option<u64>,
    pub data_cache: bool,
    /// Share (0..1) of the cache directory's filesystem kept free.
    pub cache_min_free: f64,
    /// Memory for the parts of files being written (`--write-buffer-memory`).
    pub write_buffer_memory: u64,
    pub log_file: Option<PathBuf>,
    pub debug: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Location(#[from] location::LocationError),
    #[error("{0}")]
    Credentials(String),
    #[error("{0}")]
    Invalid(String),
}

fn current_uid_gid() -> (u32, u32) {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

impl MountConfig {
    pub fn from_args(args: &MountArgs) -> Result<MountConfig, ConfigError> {
        // `@NAME[/PATH]`: the named remote fills in what the flags leave open.
        let (resolved, remote) = if args.location.starts_with('@') {
            let (remote, location) =
                remotes::resolve(&args.location).map_err(ConfigError::Invalid)?;
            let mut resolved = args.clone();
            resolved.location = location;
            resolved.endpoint_url = args.endpoint_url.clone().or(remote.endpoint_url.clone());
            resolved.region = args.region.clone().or(remote.region.clone());
            if !args.force_path_style && !args.virtual_hosted_style {
                resolved.force_path_style = remote.path_style == Some(true);
                resolved.virtual_hosted_style = remote.path_style == Some(false);
            }
            (resolved, Some(remote))
        } else {
            (args.clone(), None)
        };
        let args = &resolved;
        let tls = !args.no_tls;
        let location = parse_location(&args.location, args.endpoint_url.as_deref(), tls)?;
        let endpoint = args
            .endpoint_url
            .clone()
            .or_else(|| location.endpoint.clone());
        if let Some(url) = &endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "endpoint '{url}' needs a scheme: write https://{url} (or http://{url} for a server without TLS)"
                )));
            }
            if tls && url.starts_with("http://") && args.endpoint_url.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "endpoint '{url}' is plain HTTP but TLS is on; add --no-tls to allow it"
                )));
            }
        }
        let path_style = if args.force_path_style {
            true
        } else if args.virtual_hosted_style {
            false
        } else {
            // Custom endpoints (MinIO, Garage, Ceph, an IP and port) rarely have wildcard DNS
            // for bucket subdomains; dotted bucket names break TLS with virtual hosting.
            endpoint
                .as_deref()
                .is_some_and(|e| !e.contains("amazonaws.com"))
                || location.bucket.contains('.')
        };
        let remote_keys = remote.and_then(|r| match (r.access_key_id, r.secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => Some(StaticKeys {
                access_key_id,
                secret_access_key,
            }),
            _ => None,
        });
        let credentials = if args.no_sign_request {
            CredentialSource::Anonymous
        } else if let (Some(keys), None, None) =
            (remote_keys, &args.credentials_file, &args.profile)
        {
            CredentialSource::Keys(keys)
        } else if let Some(path) = &args.credentials_file {
            credentials::check_private_file(path).map_err(ConfigError::Credentials)?;
            CredentialSource::File {
                path: path.clone(),
                profile: args.profile.clone(),
            }
        } else {
            CredentialSource::DefaultChain {
                profile: args.profile.clone(),
            }
        };
        if args.read_part_size < 64 * 1024 {
            return Err(ConfigError::Invalid(
                "--read-part-size must be at least 64KiB".to_string(),
            ));
        }
        if args.part_size < crate::fs::write::MIN_PART_SIZE {
            return Err(ConfigError::Invalid(
                "--part-size must be at least 5MiB (the smallest part S3 accepts)".to_string(),
            ));
        }
        let (uid, gid) = current_uid_gid();
        let fs = FsConfig {
            uid: args.uid.unwrap_or(uid),
            gid: args.gid.unwrap_or(gid),
            file_mode: args.file_mode,
            dir_mode: args.dir_mode,
            metadata_ttl: args.metadata_ttl,
            content_ttl: args.content_ttl,
            read_only: args.read_only,
            read_part_size: args.read_part_size,
            max_read_window: args.max_read_window.max(args.read_part_size),
            max_readahead_memory: args.max_readahead_memory,
            small_file_size: args.read_part_size.min(1024 * 1024),
            write: crate::fs::write::WriteTuning {
                part_size: args.part_size,
                // Each part in flight holds one part of memory.
                upload_concurrency: args
                    .max_upload_concurrency
                    .min((args.write_buffer_memory / args.part_size) as usize)
                    .clamp(1, 64),
                buffer_memory: args.write_buffer_memory,
                conflict: args.conflict,
            },
            listing_heads: !args.fast_listing,
            write_back: args.write_back,
            xattrs: args.xattrs,
            max_dir_rename_objects: args.max_dir_rename_objects,
            snapshot_memory: args.dir_snapshot_memory,
            max_inodes: args.max_inodes,
            ..FsConfig::default()
        };
        Ok(MountConfig {
            s3: S3Settings {
                bucket: location.bucket.clone(),
                endpoint,
                region: args.region.clone(),
                path_style,
                ca_bundle: args.ca_bundle.clone(),
                credentials,
                checksums: args.upload_checksums,
                connect_timeout: Duration::from_secs(10),
                max_attempts: 8,
            },
            location,
            fs,
            mountpoint: args.mountpoint.clone(),
            foreground: args.foreground,
            allow_other: args.allow_other,
            allow_root: args.allow_root,
            allow_non_empty: args.allow_non_empty,
            fuse_threads: args.fuse_threads.clamp(1, 64),
            kernel_read_ahead: args.kernel_read_ahead.clamp(128 * 1024, 64 << 20),
            cache_dir: args
                .cache_dir
                .clone()
                .unwrap_or_else(|| paths::cache_dir().join(paths::mount_name(&args.mountpoint))),
            max_cache_size: args.max_cache_size,
            data_cache_size: args.data_cache_size.0,
            data_cache: !args.no_data_cache,
            cache_min_free: args.cache_min_free / 100.0,
            write_buffer_memory: args.write_buffer_memory,
            log_file: args.log_file.clone(),
            debug: args.debug,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(extra: &[&str]) -> MountConfig {
        let mut args = vec!["pailfs", "mount", "s3://bucket", "/mnt/b"];
        args.extend_from_slice(extra);
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        let crate::cli::Command::Mount(mount) = cli.command else {
            panic!("not a mount command")
        };
        MountConfig::from_args(&mount).unwrap()
    }

    #[test]
    fn write_buffer_memory_caps_the_parts_in_flight() {
        assert_eq!(config(&[]).fs.write.upload_concurrency, 4);
        let tight = config(&["--write-buffer-memory", "16MiB", "--part-size", "8MiB"]);
        assert_eq!(tight.fs.write.upload_concurrency, 2);
        let tiny = config(&["--write-buffer-memory", "1MiB"]);
        assert_eq!(tiny.fs.write.upload_concurrency, 1, "never below one part");
    }

    #[test]
    fn the_cache_has_no_byte_cap_unless_asked_only_the_free_space_floor() {
        // A 20 GB video copied in needs 20 GB staged: no default cap may refuse it.
        let defaults = config(&[]);
        assert_eq!(defaults.max_cache_size, u64::MAX);
        assert_eq!(
            (defaults.data_cache, defaults.data_cache_size),
            (true, None)
        );
        let off = config(&["--no-data-cache", "--data-cache-size", "256MiB"]);
        assert_eq!(
            (off.data_cache, off.data_cache_size),
            (false, Some(256 << 20))
        );
        assert!((defaults.cache_min_free - 0.05).abs() < 1e-9);
        assert_eq!(config(&["--max-cache-size", "2G"]).max_cache_size, 2 << 30);
        assert_eq!(
            config(&["--max-cache-size", "none"]).max_cache_size,
            u64::MAX
        );
    }
}
