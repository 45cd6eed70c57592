//! Command-line definitions (clap). Every `mount` flag also works as `-o name=value`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::options::{
    parse_cache_size, parse_data_cache_size, parse_duration, parse_mode, parse_size,
};
use crate::store::s3::ChecksumPolicy;

#[derive(Parser, Debug)]
#[command(
    name = "pailfs",
    version,
    about = "Mount an S3-compatible bucket (or an internal path inside it) as a local folder"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount a bucket: pailfs mount s3://BUCKET[/PATH] MOUNTPOINT [flags] [-o opt,opt=val]
    Mount(Box<MountArgs>),
    /// Show what running mounts are doing (all of them, or the one on MOUNTPOINT)
    Status {
        /// Mountpoint of one mount
        mountpoint: Option<PathBuf>,
        /// One JSON object per mount (an array without MOUNTPOINT), for scripts
        #[arg(long)]
        json: bool,
    },
    /// Named remotes: pailfs remote add|list|show|remove; mount one with @NAME[/PATH]
    Remote {
        #[command(subcommand)]
        action: RemoteAction,
    },
    /// Write the man page and shell completions (used by packaging)
    #[command(hide = true)]
    Generate {
        /// Directory for pailfs.1
        #[arg(long)]
        man: Option<PathBuf>,
        /// Directory for completions: pailfs.bash, _pailfs (zsh), pailfs.fish
        #[arg(long)]
        completions: Option<PathBuf>,
    },
    /// Print a pre-signed URL for a file inside a running mount (no credentials needed to use it)
    Presign {
        /// A file inside a pailfs mount (for --method put, it may not exist yet)
        path: PathBuf,
        /// How long the URL works: seconds, or with a unit (90m, 12h, 7d); at most 7 days
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        expires: Duration,
        /// get: download the file; put: upload to it
        #[arg(long, value_enum, default_value = "get")]
        method: crate::store::PresignMethod,
    },
}

#[derive(Subcommand, Debug)]
pub enum RemoteAction {
    /// Add or replace a remote; the secret key is read from stdin (or asked, without echo),
    /// never from the command line
    Add {
        name: String,
        /// s3://BUCKET[/PATH] (any form pailfs mount reads)
        #[arg(long)]
        location: String,
        #[arg(long)]
        endpoint_url: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// Path-style addressing (https://host/bucket/key)
        #[arg(long)]
        force_path_style: bool,
        /// Virtual-hosted addressing (https://bucket.host/key)
        #[arg(long, conflicts_with = "force_path_style")]
        virtual_hosted_style: bool,
        /// Access key id; the secret key is then read from stdin
        #[arg(long)]
        access_key_id: Option<String>,
        /// Fill endpoint, region and addressing from a preset: aws, minio, garage, ceph,
        /// backblaze, scaleway, wasabi, clevercloud, oracle, hcp, vng (explicit flags win)
        #[arg(long)]
        provider: Option<String>,
        /// Object Storage namespace (Oracle's endpoint contains it)
        #[arg(long)]
        namespace: Option<String>,
    },
    /// One line per remote: name and location
    List,
    /// A remote's settings (the secret key shows as "(set)")
    Show { name: String },
    /// Forget a remote (mounts already running keep going)
    Remove { name: String },
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// s3://BUCKET[/PATH], s3://HOST[:PORT]/BUCKET[/PATH] or https://HOST[:PORT]/BUCKET[/PATH]
    pub location: String,
    /// Existing empty directory to mount on
    pub mountpoint: PathBuf,

    /// Custom endpoint, e.g. http://127.0.0.1:9000 or https://s3.fr-par.scw.cloud
    #[arg(long, help_heading = "Connection")]
    pub endpoint_url: Option<String>,
    /// Region to sign requests for (default: AWS_REGION / profile, else us-east-1)
    #[arg(long, help_heading = "Connection")]
    pub region: Option<String>,
    /// Path-style addressing (https://host/bucket/key); the default for custom endpoints
    #[arg(long, help_heading = "Connection")]
    pub force_path_style: bool,
    /// Virtual-hosted addressing (https://bucket.host/key); the default for AWS
    #[arg(long, conflicts_with = "force_path_style", help_heading = "Connection")]
    pub virtual_hosted_style: bool,
    /// Use plain HTTP for an endpoint written inside the location (s3://HOST:PORT/...)
    #[arg(long, help_heading = "Connection")]
    pub no_tls: bool,
    /// PEM file of extra certificate authorities to trust (also: AWS_CA_BUNDLE)
    #[arg(long, help_heading = "Connection")]
    pub ca_bundle: Option<PathBuf>,
    /// When to send request checksums; several S3-compatible servers reject them
    #[arg(
        long,
        value_enum,
        default_value = "when-required",
        help_heading = "Connection"
    )]
    pub upload_checksums: ChecksumPolicy,

    /// Named profile from the AWS shared config/credentials files (incl. SSO profiles)
    #[arg(long, help_heading = "Credentials")]
    pub profile: Option<String>,
    /// Shared-credentials file to read keys from (must be private: chmod 600)
    #[arg(long, help_heading = "Credentials")]
    pub credentials_file: Option<PathBuf>,
    /// Send unsigned requests, for public buckets
    #[arg(long, help_heading = "Credentials")]
    pub no_sign_request: bool,

    /// Refuse every change with EROFS, without sending anything
    #[arg(long, help_heading = "Mount")]
    pub read_only: bool,
    /// Stay attached to the terminal instead of daemonizing
    #[arg(long, short = 'f', help_heading = "Mount")]
    pub foreground: bool,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root)
    #[arg(long, help_heading = "Mount")]
    pub allow_other: bool,
    /// Let root access the mount
    #[arg(long, conflicts_with = "allow_other", help_heading = "Mount")]
    pub allow_root: bool,
    /// Mount even if the mountpoint is not empty (its content is hidden while mounted)
    #[arg(long, help_heading = "Mount")]
    pub allow_non_empty: bool,
    /// Owner shown for objects without metadata (default: the mounting user)
    #[arg(long, help_heading = "Mount")]
    pub uid: Option<u32>,
    /// Group shown for objects without metadata (default: the mounting user's group)
    #[arg(long, help_heading = "Mount")]
    pub gid: Option<u32>,
    /// Permissions shown for files without metadata (octal)
    #[arg(long, value_parser = parse_mode, default_value = "644", help_heading = "Mount")]
    pub file_mode: u16,
    /// Permissions shown for directories without metadata (octal)
    #[arg(long, value_parser = parse_mode, default_value = "755", help_heading = "Mount")]
    pub dir_mode: u16,
    /// How long metadata, misses and directory snapshots are trusted (also the kernel's
    /// entry/attr timeout): a change made by another client shows within it
    #[arg(long, value_parser = parse_duration, default_value = "1min", help_heading = "Mount")]
    pub metadata_ttl: Duration,
    /// How old the version of a file an open reads may be: a change made by another client
    /// shows to the next open within it (a HEAD when the attributes are older)
    #[arg(long, value_parser = parse_duration, default_value = "1s", help_heading = "Mount")]
    pub content_ttl: Duration,
    /// Memory for directory snapshots (complete listings that answer lookups), all
    /// directories together; a larger directory is not kept
    #[arg(long, value_parser = parse_size, default_value = "32MiB", help_heading = "Mount")]
    pub dir_snapshot_memory: u64,
    /// Names (files and folders) the kernel may hold at once; past it, pailfs asks the kernel
    /// to forget the oldest files no program has open (each costs the daemon about 130 bytes).
    /// 0: no limit
    #[arg(long, default_value_t = 1_000_000, help_heading = "Mount")]
    pub max_inodes: usize,
    /// List directories with LIST alone, without a HEAD per new or changed file: faster on
    /// huge directories, but modes, owners, mtimes and symlinks stored as metadata show only
    /// once a file is looked up (stat)
    #[arg(long, help_heading = "Mount")]
    pub fast_listing: bool,
    /// Serve extended attributes: user.* stored in object metadata (as s3fs's use_xattr),
    /// and read-only user.s3.etag, user.s3.key, user.s3.storage_class
    #[arg(long, help_heading = "Mount")]
    pub xattrs: bool,
    /// Largest directory (in objects) a rename moves with server-side copies; above it the
    /// rename answers EXDEV and `mv` copies file by file
    #[arg(long, default_value_t = 10_000, help_heading = "Mount")]
    pub max_dir_rename_objects: u64,
    /// FUSE worker threads reading requests from the kernel
    #[arg(long, default_value_t = 2, help_heading = "Mount")]
    pub fuse_threads: usize,

    /// Size of one ranged GET when reading ahead
    #[arg(long, value_parser = parse_size, default_value = "8MiB", help_heading = "Reading")]
    pub read_part_size: u64,
    /// Largest read-ahead window of one open file
    #[arg(long, value_parser = parse_size, default_value = "64MiB", help_heading = "Reading")]
    pub max_read_window: u64,
    /// Kernel read-ahead of the mount (sizes the read requests the kernel sends; root only)
    #[arg(long, value_parser = parse_size, default_value = "4MiB", help_heading = "Reading")]
    pub kernel_read_ahead: u64,
    /// Memory for read-ahead across all open files
    #[arg(long, value_parser = parse_size, default_value = "80MiB", help_heading = "Reading")]
    pub max_readahead_memory: u64,

    /// Most bytes of the data cache (blocks of what was read, kept in --cache-dir/blocks/ and
    /// reused by every later read of the same object version, across remounts), or `auto`:
    /// 10GiB or a tenth of the cache directory's filesystem, whichever is smaller. Files being
    /// written take precedence within --max-cache-size: cached blocks make room for them
    #[arg(long, value_parser = parse_data_cache_size, default_value = "auto", help_heading = "Reading")]
    pub data_cache_size: crate::config::options::DataCacheSize,
    /// Keeps nothing that was read on local disk (every read not in the kernel's page cache
    /// goes to the bucket)
    #[arg(long, help_heading = "Reading")]
    pub no_data_cache: bool,

    /// Where files being written are staged, and failed uploads kept (recovery/)
    /// [default: $XDG_CACHE_HOME/pailfs/MOUNT, or /var/cache/pailfs/MOUNT for root]
    #[arg(long, help_heading = "Writing")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes staged in the cache directory at once, or `none`. A file being written needs
    /// its whole size there (its bytes stay until the bucket has it); beyond the cap, writes wait
    /// for other files' uploads, then fail with ENOSPC
    #[arg(long, value_parser = parse_cache_size, default_value = "none", help_heading = "Writing")]
    pub max_cache_size: u64,
    /// Share of the cache directory's filesystem (in percent) kept free; writes that would
    /// eat into it fail with ENOSPC
    #[arg(long, default_value_t = 5.0, help_heading = "Writing")]
    pub cache_min_free: f64,
    /// Part size of multipart uploads (at least 5MiB; grows so an object fits 10,000 parts)
    #[arg(long, value_parser = parse_size, default_value = "8MiB", help_heading = "Writing")]
    pub part_size: u64,
    /// When a file changed in the bucket since it was opened here: warn (and replace it,
    /// last close wins) or fail the close (EIO; the bytes go to recovery)
    #[arg(long, value_enum, default_value = "warn", help_heading = "Writing")]
    pub conflict: crate::fs::write::ConflictPolicy,
    /// When uploads happen: `sync` (close and fsync return once the bucket has the file) or
    /// `async` (close returns once the file is staged on local disk; uploads follow in the
    /// background; fsync still waits; unmount and SIGTERM finish them)
    #[arg(long, value_enum, default_value = "sync", help_heading = "Writing")]
    pub write_back: crate::fs::WriteBack,
    /// Memory for parts being uploaded (caps the parts in flight: at least one)
    #[arg(long, value_parser = parse_size, default_value = "64MiB", help_heading = "Writing")]
    pub write_buffer_memory: u64,
    /// Parts uploaded at once
    #[arg(long, default_value_t = 4, help_heading = "Writing")]
    pub max_upload_concurrency: usize,

    /// Log file of the daemon (default: ~/.local/state/pailfs/, or /var/log/pailfs/ for root)
    #[arg(long, help_heading = "Logging")]
    pub log_file: Option<PathBuf>,
    /// Verbose logs (or set PAILFS_LOG, e.g. PAILFS_LOG=pailfs=trace)
    #[arg(long, help_heading = "Logging")]
    pub debug: bool,
}

/// Whether `long` names a flag of `pailfs mount`, and whether it takes a value.
pub fn mount_flag_takes_value(long: &str) -> Option<bool> {
    use clap::CommandFactory;
    let command = Cli::command();
    let mount = command.find_subcommand("mount")?;
    let arg = mount.get_arguments().find(|a| a.get_long() == Some(long))?;
    Some(arg.get_action().takes_values())
}
