//! Named remotes: `pailfs remote add NAME …` keeps a location, endpoint, region, addressing
//! style and keys in one TOML file, written 0600 and refused when other users can read it;
//! `pailfs mount @NAME[/PATH] DIR` mounts from it.
//!
//! The file: `$PAILFS_CONFIG`, else `/etc/pailfs/remotes.toml` for root, else
//! `$XDG_CONFIG_HOME/pailfs/remotes.toml` or `~/.config/pailfs/remotes.toml`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::credentials::check_private_file;

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Remote {
    /// `s3://BUCKET[/PATH]` (or any location form `pailfs mount` reads).
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

// The secret never reaches a log line, an error or a panic message.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("location", &self.location)
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "(set)"),
            )
            .finish()
    }
}

impl Remote {
    /// What `pailfs remote show` prints: everything but the secret.
    pub fn describe(&self, name: &str) -> String {
        let mut text = format!("name={name}\nlocation={}\n", self.location);
        let mut line = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                text.push_str(&format!("{key}={value}\n"));
            }
        };
        line("endpoint_url", self.endpoint_url.clone());
        line("region", self.region.clone());
        line(
            "addressing",
            self.path_style
                .map(|p| if p { "path-style" } else { "virtual-hosted" }.to_string()),
        );
        line("access_key_id", self.access_key_id.clone());
        line(
            "secret_access_key",
            self.secret_access_key.as_ref().map(|_| "(set)".to_string()),
        );
        text
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RemotesFile {
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

pub fn remotes_path() -> PathBuf {
    if let Some(path) = std::env::var_os("PAILFS_CONFIG") {
        return PathBuf::from(path);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/etc/pailfs/remotes.toml");
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".config")
        });
    base.join("pailfs/remotes.toml")
}

/// A remote name: letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a remote name: use letters, digits, '-', '_' or '.' (at most 64)"
        ))
    }
}

pub fn load() -> Result<RemotesFile, String> {
    let path = remotes_path();
    if !path.exists() {
        return Ok(RemotesFile::default());
    }
    check_private_file(&path)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()))
}

/// Writes the file 0600 (through a temporary file, so a crash never leaves half of it).
pub fn save(file: &RemotesFile) -> Result<(), String> {
    let path = remotes_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = toml::to_string(file).map_err(|e| format!("cannot write the remotes: {e}"))?;
    let temporary = path.with_extension("toml.new");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// `@NAME[/PATH]` → the remote and its location with PATH appended.
pub fn resolve(spec: &str) -> Result<(Remote, String), String> {
    let spec = spec.strip_prefix('@').unwrap_or(spec);
    let (name, sub) = spec.split_once('/').unwrap_or((spec, ""));
    let file = load()?;
    let remote = file.remotes.get(name).cloned().ok_or_else(|| {
        format!(
            "no remote named '{name}' in {} (see 'pailfs remote list'; add one with 'pailfs remote add {name} --location s3://BUCKET')",
            remotes_path().display()
        )
    })?;
    let sub = sub.trim_matches('/');
    let location = if sub.is_empty() {
        remote.location.clone()
    } else {
        format!("{}/{sub}", remote.location.trim_end_matches('/'))
    };
    Ok((remote, location))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_show() {
        let remote = Remote {
            location: "s3://b".into(),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("very-secret-value".into()),
            ..Remote::default()
        };
        assert!(!format!("{remote:?}").contains("very-secret-value"));
        let shown = remote.describe("x");
        assert!(!shown.contains("very-secret-value"));
        assert!(shown.contains("secret_access_key=(set)"));
        assert!(check_name("my-minio_1").is_ok());
        assert!(check_name("a/b").is_err());
    }
}
