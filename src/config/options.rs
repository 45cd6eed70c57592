//! `-o name=value,flag` option lists (fstab style) turned into ordinary flags, plus the value
//! parsers shared by flags and options (sizes, modes, durations).

use std::time::Duration;

/// fstab/mount options that concern `mount(8)` or systemd, not pailfs: accepted and ignored.
const IGNORED: &[&str] = &[
    "_netdev", "auto", "noauto", "nofail", "user", "users", "nouser", "defaults", "dev", "nodev",
    "suid", "nosuid", "exec", "noexec", "rw", "async", "atime", "noatime", "relatime", "subtype",
    "fsname",
];

/// What `pailfs` was asked to do when run as a mount helper.
#[derive(Debug, PartialEq, Eq)]
pub enum HelperArgs {
    /// Not a helper call: the arguments as given.
    Plain(Vec<String>),
    /// A helper call, rewritten as `pailfs mount SOURCE DIR -o …`.
    Mount(Vec<String>),
    /// `mount -f` (fake): do everything but the mount, i.e. nothing.
    Fake,
}

/// Recognises the two ways mount(8) starts a FUSE filesystem and rewrites them into
/// `pailfs mount …`: as `mount.fuse.pailfs SOURCE DIR [-sfnv] [-o OPTS] [-t TYPE]` (a
/// helper named after the type), or, through `mount.fuse3`, as `pailfs SOURCE DIR -o OPTS`.
pub fn mount_helper_args(args: Vec<String>) -> HelperArgs {
    let program = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    let as_helper = program.starts_with("mount.");
    let location_first = args
        .get(1)
        .is_some_and(|a| !a.starts_with('-') && (a.contains("://") || a.starts_with('@')));
    if !as_helper && !location_first {
        return HelperArgs::Plain(args);
    }
    let mut out = vec!["pailfs".to_string(), "mount".to_string()];
    let mut rest = args.into_iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            // mount(8)'s own switches: sloppy, no mtab, verbose.
            "-s" | "-n" | "-v" if as_helper => {}
            "-f" if as_helper => return HelperArgs::Fake,
            "-t" if as_helper => {
                rest.next();
            }
            _ => out.push(arg),
        }
    }
    HelperArgs::Mount(out)
}

/// Rewrites every `-o LIST` / `-oLIST` in `args` into `--name[=value]` flags. `flag_takes_value`
/// says, for a long flag name, whether it exists and whether it takes a value.
pub fn expand_o_options(
    args: Vec<String>,
    flag_takes_value: impl Fn(&str) -> Option<bool>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut unknown = Vec::new();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let list = if arg == "-o" || arg == "--options" {
            match iter.next() {
                Some(list) => list,
                None => {
                    return Err("-o needs a list of options, e.g. -o ro,region=eu-west-1".into())
                }
            }
        } else if let Some(list) = arg
            .strip_prefix("-o")
            .filter(|l| !l.is_empty() && !arg.starts_with("--"))
        {
            list.to_string()
        } else {
            out.push(arg);
            continue;
        };
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (item, None),
            };
            if IGNORED.contains(&name)
                || name.starts_with("x-systemd.")
                || name.starts_with("comment")
            {
                continue;
            }
            let flag = match name {
                "ro" => "read-only".to_string(),
                "nonempty" => "allow-non-empty".to_string(),
                other => other.replace('_', "-"),
            };
            match flag_takes_value(&flag) {
                None => unknown.push(name.to_string()),
                Some(true) => match value {
                    Some(v) => out.push(format!("--{flag}={v}")),
                    None => return Err(format!("option '{name}' needs a value: -o {name}=VALUE")),
                },
                Some(false) => match value {
                    None | Some("true") | Some("yes") | Some("1") => out.push(format!("--{flag}")),
                    Some("false") | Some("no") | Some("0") => {}
                    Some(v) => {
                        return Err(format!(
                            "option '{name}' is a switch and takes no value (got '{v}')"
                        ))
                    }
                },
            }
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "unknown option{} in -o: {} (see 'pailfs mount --help'; every --flag works as -o flag or -o flag=value)",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", ")
        ));
    }
    Ok(out)
}

/// Parses a byte size: `1048576`, `64K`, `8MiB`, `1G`, `2GB` (binary multiples throughout).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 65536, 512K, 8MiB, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("'{text}' has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a cap on staged bytes: a size, or `none` for no cap of its own (the free-space floor
/// of `--cache-min-free` still holds).
pub fn parse_cache_size(text: &str) -> Result<u64, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(u64::MAX);
    }
    parse_size(text)
}

/// `--data-cache-size`: a size, or `auto` (`None`: the default cap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataCacheSize(pub Option<u64>);

pub fn parse_data_cache_size(text: &str) -> Result<DataCacheSize, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(DataCacheSize(None));
    }
    parse_size(text).map(|n| DataCacheSize(Some(n)))
}

/// Parses an octal permission mode such as `644` or `0755`.
pub fn parse_mode(text: &str) -> Result<u16, String> {
    let mode = u16::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("'{text}' is not an octal mode (examples: 644, 0755)"))?;
    if mode > 0o7777 {
        return Err(format!("'{text}' is larger than 07777"));
    }
    Ok(mode)
}

/// Parses a duration: plain seconds (`1`, `0.5`) or with a unit (`500ms`, `2s`, `5m`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (examples: 1, 0.5, 500ms, 10s, 5m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_helper_forms_become_pailfs_mount() {
        let expect = HelperArgs::Mount(strings(&[
            "pailfs",
            "mount",
            "s3://b/p",
            "/mnt/d",
            "-o",
            "ro,_netdev",
        ]));
        assert_eq!(
            mount_helper_args(strings(&[
                "/sbin/mount.fuse.pailfs",
                "s3://b/p",
                "/mnt/d",
                "-n",
                "-o",
                "ro,_netdev",
                "-t",
                "fuse.pailfs",
            ])),
            expect
        );
        assert_eq!(
            mount_helper_args(strings(&[
                "pailfs",
                "s3://b/p",
                "/mnt/d",
                "-o",
                "ro,_netdev"
            ])),
            expect
        );
        assert_eq!(
            mount_helper_args(strings(&["mount.pailfs", "s3://b", "/m", "-f"])),
            HelperArgs::Fake
        );
        let plain = strings(&["pailfs", "status"]);
        assert_eq!(mount_helper_args(plain.clone()), HelperArgs::Plain(plain));
    }

    fn known(flag: &str) -> Option<bool> {
        match flag {
            "region" | "endpoint-url" | "uid" => Some(true),
            "read-only" | "force-path-style" | "allow-non-empty" => Some(false),
            _ => None,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn o_lists_become_flags() {
        let out = expand_o_options(
            strings(&[
                "mount",
                "s3://b",
                "/mnt",
                "-o",
                "ro,region=eu-west-1,_netdev",
                "-oforce_path_style,nonempty",
            ]),
            known,
        )
        .unwrap();
        assert_eq!(
            out,
            strings(&[
                "mount",
                "s3://b",
                "/mnt",
                "--read-only",
                "--region=eu-west-1",
                "--force-path-style",
                "--allow-non-empty"
            ])
        );
    }

    #[test]
    fn unknown_and_malformed_options_are_named() {
        let err = expand_o_options(strings(&["-o", "ro,colour=blue,shiny"]), known).unwrap_err();
        assert!(err.contains("colour, shiny"), "{err}");
        let err = expand_o_options(strings(&["-o", "region"]), known).unwrap_err();
        assert!(err.contains("needs a value"), "{err}");
    }

    #[test]
    fn sizes_modes_durations() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(parse_size("8 parsecs").is_err());
        assert_eq!(parse_mode("0755").unwrap(), 0o755);
        assert!(parse_mode("999").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_cache_size("none").unwrap(), u64::MAX);
        assert_eq!(parse_cache_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("-1").is_err());
    }
}
