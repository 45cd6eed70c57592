//! Checks on credential files: like ssh, refuse secrets that other users can read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Fails when `path` is missing, not a file, or readable/writable by group or others.
pub fn check_private_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "the credentials file {} is not a regular file",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the credentials file {} is accessible by other users (mode {:04o}); refusing to use it. Fix with: chmod 600 {}",
            path.display(),
            mode,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_readable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "[default]\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private_file(&path).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_private_file(&path).is_ok());
        assert!(check_private_file(&dir.path().join("missing")).is_err());
    }
}
