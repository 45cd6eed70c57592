//! Checks done before mounting, each failure with a message that says what is wrong and how
//! to fix it: the mountpoint, then one ListObjectsV2 under the internal path (the least a
//! read-only key is granted: s3:ListBucket).

use std::path::Path;

use crate::config::MountConfig;
use crate::store::{ListRequest, ObjectStore, StoreError};

/// Refuses a missing, non-directory, already mounted, dead or (by default) non-empty
/// mountpoint; clears a dead mount a pailfs daemon left, and returns a note saying so.
pub fn check_mountpoint(path: &Path, allow_non_empty: bool) -> Result<Option<String>, String> {
    let shown = path.display();
    // A FUSE mount whose daemon is gone answers ENOTCONN, or ECONNABORTED once the kernel
    // aborted the connection.
    let dead =
        |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED));
    let clear_and_check = || -> Result<Option<String>, String> {
        let cleared = clear_dead_pailfs_mount(path)?;
        check_mountpoint(path, allow_non_empty)?;
        Ok(Some(cleared))
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if dead(&e) => return clear_and_check(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "mountpoint {shown} does not exist; create it with: mkdir -p {shown}"
            ))
        }
        Err(e) => return Err(format!("cannot use mountpoint {shown}: {e}")),
    };
    if !meta.is_dir() {
        return Err(format!("mountpoint {shown} is not a directory"));
    }
    if let Some(source) = mounted_source(path) {
        // The kernel answers `stat` of a mount's root from its cache (for --metadata-ttl with
        // pailfs), even once the daemon is dead; opening the folder always asks the daemon.
        if let Err(e) = std::fs::read_dir(path) {
            if dead(&e) {
                return clear_and_check();
            }
        }
        return Err(format!(
            "mountpoint {shown} is already in use (mounted from {source}); unmount it first with: fusermount3 -u {shown}"
        ));
    }
    let mut entries =
        std::fs::read_dir(path).map_err(|e| format!("cannot read mountpoint {shown}: {e}"))?;
    if !allow_non_empty && entries.next().is_some() {
        return Err(format!(
            "mountpoint {shown} is not empty; choose an empty directory, or pass --allow-non-empty (-o nonempty) to hide its content while mounted"
        ));
    }
    Ok(None)
}

/// A dead FUSE mount on `path` (its daemon killed, or crashed) is cleared when a pailfs daemon
/// left it (a restart after a crash just works); one of another filesystem is refused.
fn clear_dead_pailfs_mount(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let source = mounted_source(path).unwrap_or_default();
    if !source.starts_with("s3://") || !source.contains("(fuse") {
        return Err(format!(
            "mountpoint {shown} is a dead FUSE mount of another filesystem ({source}); clear it with: fusermount3 -u {shown}"
        ));
    }
    let cleared = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status()
        .map_err(|e| format!("mountpoint {shown} is a dead pailfs mount, and fusermount3 could not run to clear it: {e}"))?;
    if !cleared.success() {
        return Err(format!(
            "mountpoint {shown} is a dead pailfs mount and clearing it failed; clear it with: fusermount3 -u {shown}"
        ));
    }
    let note = format!(
        "cleared the dead mount {source} a previous pailfs daemon left on {shown} (it was killed or crashed)"
    );
    tracing::warn!("{note}");
    Ok(note)
}

/// The fields of /proc/self/mountinfo's line for the mount on `path` (the topmost one when
/// several are stacked), read without touching the mount itself, which may be our own and not
/// serving yet.
fn mountinfo_fields(path: &Path) -> Option<Vec<String>> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let target = canonical.to_str()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<String> = line.split(' ').map(str::to_string).collect();
        (unescape_mountinfo(fields.get(4)?) == target).then_some(fields)
    })
}

/// The `MAJOR:MINOR` device of the mount on `path`.
pub fn mount_device(path: &Path) -> Option<String> {
    mountinfo_fields(path)?.get(2).cloned()
}

/// What is mounted on `path`: "SOURCE (TYPE)".
pub fn mounted_source(path: &Path) -> Option<String> {
    let fields = mountinfo_fields(path)?;
    let dash = fields.iter().position(|f| f == "-")?;
    let field = |i: usize| fields.get(i).map(String::as_str).unwrap_or("?");
    Some(format!("{} ({})", field(dash + 2), field(dash + 1)))
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Explains a store error met at start-up.
pub fn explain(err: &StoreError, cfg: &MountConfig, signing_region: &str) -> String {
    let bucket = &cfg.location.bucket;
    let endpoint = cfg
        .s3
        .endpoint
        .clone()
        .unwrap_or_else(|| "the AWS S3 endpoint".to_string());
    let location = format!("s3://{bucket}/{}", cfg.location.prefix);
    match err {
        StoreError::NoSuchBucket => format!(
            "bucket '{bucket}' does not exist at {endpoint}. Check the bucket name, and that the endpoint (and region) are those of the provider where the bucket was created."
        ),
        StoreError::AccessDenied(detail) => format!(
            "access denied listing {location} at {endpoint}: the key needs s3:ListBucket on the bucket (and s3:GetObject to read files). Server said: {detail}"
        ),
        StoreError::InvalidAccessKey => format!(
            "the access key is not known to {endpoint}: check AWS_ACCESS_KEY_ID, --profile or --credentials-file (and that the key belongs to this provider)."
        ),
        StoreError::SignatureMismatch => format!(
            "{endpoint} rejected the request signature: the secret key does not belong to the access key. Check AWS_SECRET_ACCESS_KEY, --profile or --credentials-file."
        ),
        StoreError::WrongRegion { expected: Some(region) } => format!(
            "wrong region: requests were signed for '{signing_region}' but bucket '{bucket}' is in '{region}'. Add --region {region}."
        ),
        StoreError::WrongRegion { expected: None } => format!(
            "wrong region: {endpoint} refused requests signed for '{signing_region}'. Pass the bucket's region with --region (the provider's settings page shows it)."
        ),
        StoreError::ClockSkew => "this machine's clock differs too much from the server's, so signatures are refused. Set the clock right (e.g. timedatectl set-ntp true) and retry.".to_string(),
        StoreError::Unreachable(detail) => format!(
            "cannot reach {endpoint}: {detail}. Check the URL, the port and the scheme (http/https), and that the server is running and reachable from here."
        ),
        StoreError::Tls(detail) => format!(
            "TLS failure talking to {endpoint}: {detail}. If the server uses a private certificate authority pass --ca-bundle FILE (or set AWS_CA_BUNDLE); if it speaks plain HTTP use an http:// endpoint."
        ),
        StoreError::Timeout => format!(
            "{endpoint} did not answer in time. Check the address and any firewall in between."
        ),
        StoreError::Throttled => format!("{endpoint} asks to slow down (throttled); retry later."),
        StoreError::NoCredentials(detail) => format!(
            "no usable credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, name a profile with --profile, give --credentials-file FILE, or pass --no-sign-request for a public bucket. ({detail})"
        ),
        StoreError::NotFound
        | StoreError::PreconditionFailed
        | StoreError::QuotaExceeded(_)
        | StoreError::Other(_) => format!(
            "listing {location} at {endpoint} failed: {err}"
        ),
    }
}

/// One ListObjectsV2 of at most one key under the internal path.
pub async fn check_bucket(store: &dyn ObjectStore, prefix: &str) -> Result<bool, StoreError> {
    let page = store
        .list(ListRequest {
            prefix: prefix.to_string(),
            delimited: true,
            max_keys: 1,
            continuation: None,
        })
        .await?;
    Ok(!page.objects.is_empty() || !page.prefixes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_error_at_start_up_says_what_to_do() {
        let args = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "pailfs",
            "mount",
            "s3://photos/2024",
            "/mnt/p",
            "--endpoint-url",
            "https://s3.example.net",
        ])
        .unwrap();
        let crate::cli::Command::Mount(mount) = args.command else {
            panic!("not a mount command")
        };
        let cfg = MountConfig::from_args(&mount).unwrap();
        let cases = [
            (StoreError::NoSuchBucket, "bucket 'photos' does not exist"),
            (StoreError::AccessDenied("nope".into()), "s3:ListBucket"),
            (StoreError::InvalidAccessKey, "AWS_ACCESS_KEY_ID"),
            (StoreError::SignatureMismatch, "AWS_SECRET_ACCESS_KEY"),
            (
                StoreError::WrongRegion {
                    expected: Some("eu-west-3".into()),
                },
                "--region eu-west-3",
            ),
            (StoreError::WrongRegion { expected: None }, "--region"),
            (StoreError::ClockSkew, "timedatectl set-ntp true"),
            (StoreError::Unreachable("refused".into()), "is running"),
            (StoreError::Tls("bad cert".into()), "--ca-bundle"),
            (StoreError::Timeout, "firewall"),
            (
                StoreError::NoCredentials("none".into()),
                "--no-sign-request",
            ),
        ];
        for (error, hint) in cases {
            let text = explain(&error, &cfg, "us-east-1");
            assert!(text.contains(hint), "{error:?}: {text}");
            assert!(
                text.contains("https://s3.example.net") || !text.contains("endpoint"),
                "{text}"
            );
        }
    }

    #[test]
    fn mountpoint_problems_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(check_mountpoint(&missing, false)
            .unwrap_err()
            .contains("mkdir -p"));
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(check_mountpoint(&file, false)
            .unwrap_err()
            .contains("not a directory"));
        let full = dir.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), "x").unwrap();
        assert!(check_mountpoint(&full, false)
            .unwrap_err()
            .contains("not empty"));
        assert!(check_mountpoint(&full, true).is_ok());
        assert!(check_mountpoint(Path::new("/proc"), true)
            .unwrap_err()
            .contains("already in use"));
    }
}
