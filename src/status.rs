//! What `pailfs status` prints: the `name=value` report a mount's control socket gives,
//! rendered for people (labelled, aligned, in human units, uploads as progress bars) or as
//! one JSON object for scripts (`--json`).

/// One upload in progress, from an `upload=DONE/TOTAL/MILLIS/KEY` line.
struct Upload {
    done: u64,
    total: u64,
    millis: u64,
    key: String,
}

/// A mount's report, split into its fields (in order), its uploads, and the files kept in
/// `recovery/` (from `recovered=SIZE/PATH` lines).
struct Report {
    fields: Vec<(String, String)>,
    uploads: Vec<Upload>,
    recovered: Vec<(u64, String)>,
}

impl Report {
    fn parse(text: &str) -> Report {
        let mut report = Report {
            fields: Vec::new(),
            uploads: Vec::new(),
            recovered: Vec::new(),
        };
        for line in text.lines() {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            if name == "upload" {
                if let Some(upload) = parse_upload(value) {
                    report.uploads.push(upload);
                }
            } else if name == "recovered" {
                if let Some((size, path)) = value.split_once('/') {
                    report
                        .recovered
                        .push((size.parse().unwrap_or(0), path.to_string()));
                }
            } else {
                report.fields.push((name.to_string(), value.to_string()));
            }
        }
        report
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.text(name)?.parse().ok()
    }
}

fn parse_upload(value: &str) -> Option<Upload> {
    let mut parts = value.splitn(4, '/');
    Some(Upload {
        done: parts.next()?.parse().ok()?,
        total: parts.next()?.parse().ok()?,
        millis: parts.next()?.parse().ok()?,
        key: parts.next()?.to_string(),
    })
}

/// Bytes in binary units, one decimal from KiB on.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A label, then the (field, what to call it) pairs shown on its line.
type Line = (&'static str, &'static [(&'static str, &'static str)]);

/// The report's sections: a label, then (field, what to call it) pairs. Fields not named
/// here are printed under "other", so a newer daemon's fields are never hidden.
const LINES: [Line; 6] = [
    (
        "requests",
        &[
            ("HEAD", "HEAD"),
            ("LIST", "LIST"),
            ("GET", "GET"),
            ("PUT", "PUT"),
            ("COPY", "COPY"),
            ("DELETE", "DELETE"),
            ("MPU_CREATE", "multipart starts"),
            ("MPU_PART", "parts"),
            ("MPU_PART_COPY", "part copies"),
            ("MPU_COMPLETE", "completions"),
            ("MPU_ABORT", "aborts"),
            ("errors", "errors"),
        ],
    ),
    (
        "transfer",
        &[
            ("bytes_read", "read from the bucket"),
            ("bytes_written", "written to it"),
        ],
    ),
    (
        "programs",
        &[
            ("fuse_reads", "reads"),
            ("fuse_read_bytes", "read"),
            ("files_being_written", "files not yet in the bucket"),
        ],
    ),
    (
        "caches",
        &[
            ("attr_cache_hits", "attribute hits"),
            ("attr_cache_misses", "attribute misses"),
            ("miss_cache_hits", "known-missing hits"),
            ("head_memo_hits", "HEAD memo hits"),
            ("head_memo_misses", "HEAD memo misses"),
            ("cache_bytes", "staging"),
        ],
    ),
    (
        "data cache",
        &[
            ("data_cache_bytes", "held"),
            ("data_cache_cap_bytes", "cap"),
            ("data_cache_hits", "block hits"),
            ("data_cache_misses", "block misses"),
            ("data_cache_evictions", "evictions"),
            ("data_cache_torn", "damaged blocks dropped"),
        ],
    ),
    ("kernel", &[("kernel_names", "names held")]),
];

fn is_bytes(name: &str) -> bool {
    name.ends_with("bytes") || name.starts_with("bytes_")
}

/// The report for people.
pub fn render(text: &str) -> String {
    let report = Report::parse(text);
    let mut out = String::new();
    let location = report.text("location").unwrap_or("?");
    let mountpoint = report.text("mountpoint").unwrap_or("?");
    out.push_str(&format!("{location} on {mountpoint}"));
    let mut about = Vec::new();
    if let Some(pid) = report.number("pid") {
        about.push(format!("pid {pid}"));
    }
    if let Some(up) = report.number("uptime_secs") {
        about.push(format!("up {}", human_duration(up)));
    }
    if !about.is_empty() {
        out.push_str(&format!(" ({})", about.join(", ")));
    }
    out.push('\n');
    let shown_above = [
        "location",
        "mountpoint",
        "pid",
        "uptime_secs",
        "recovered_not_shown",
    ];
    let mut named: Vec<&str> = shown_above.to_vec();
    for (label, fields) in LINES {
        let mut parts = Vec::new();
        for (field, called) in fields {
            named.push(field);
            let Some(value) = report.number(field) else {
                continue;
            };
            if is_bytes(field) {
                parts.push(format!("{called} {}", human_bytes(value)));
            } else {
                parts.push(format!("{called} {value}"));
            }
        }
        if label == "caches" {
            if let (Some(hits), Some(misses)) = (
                report.number("attr_cache_hits"),
                report.number("attr_cache_misses"),
            ) {
                if hits + misses > 0 {
                    parts.insert(
                        0,
                        format!(
                            "attribute hit rate {:.0}%",
                            100.0 * hits as f64 / (hits + misses) as f64
                        ),
                    );
                }
            }
        }
        if !parts.is_empty() {
            out.push_str(&format!("  {label:<10} {}\n", parts.join(", ")));
        }
    }
    let others: Vec<String> = report
        .fields
        .iter()
        .filter(|(n, _)| !named.contains(&n.as_str()))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if !others.is_empty() {
        out.push_str(&format!("  {:<10} {}\n", "other", others.join(", ")));
    }
    for upload in &report.uploads {
        out.push_str(&format!("  {:<10} {}\n", "uploading", progress_bar(upload)));
    }
    if !report.recovered.is_empty() {
        let more = report.number("recovered_not_shown").unwrap_or(0);
        out.push_str(&format!(
            "  {:<10} {} file(s) kept in the cache directory's recovery/ (copy them out, then delete them):\n",
            "recovered",
            report.recovered.len() as u64 + more
        ));
        for (size, path) in &report.recovered {
            out.push_str(&format!("  {:<10}   {path} ({})\n", "", human_bytes(*size)));
        }
    }
    out
}

/// The report for scripts: every field (numbers as numbers) and `uploads`, one JSON object.
pub fn json(text: &str) -> String {
    let report = Report::parse(text);
    let mut object = serde_json::Map::new();
    for (name, value) in &report.fields {
        let value = match value.parse::<u64>() {
            Ok(n) => serde_json::Value::from(n),
            Err(_) => serde_json::Value::from(value.as_str()),
        };
        object.insert(name.clone(), value);
    }
    let uploads: Vec<serde_json::Value> = report
        .uploads
        .iter()
        .map(|u| {
            serde_json::json!({
                "path": u.key,
                "done_bytes": u.done,
                "total_bytes": u.total,
                "elapsed_ms": u.millis,
            })
        })
        .collect();
    object.insert("uploads".into(), serde_json::Value::from(uploads));
    let recovered: Vec<serde_json::Value> = report
        .recovered
        .iter()
        .map(|(size, path)| serde_json::json!({ "path": path, "bytes": size }))
        .collect();
    object.insert("recovered".into(), serde_json::Value::from(recovered));
    serde_json::Value::Object(object).to_string()
}

fn progress_bar(upload: &Upload) -> String {
    const WIDTH: usize = 30;
    let share = if upload.total == 0 {
        1.0
    } else {
        (upload.done as f64 / upload.total as f64).min(1.0)
    };
    let filled = (share * WIDTH as f64).round() as usize;
    let rate = if upload.millis == 0 {
        0
    } else {
        (upload.done as f64 / (upload.millis as f64 / 1000.0)) as u64
    };
    format!(
        "[{}{}] {:>3.0}% {} of {} at {}/s {}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        share * 100.0,
        human_bytes(upload.done),
        human_bytes(upload.total),
        human_bytes(rate),
        upload.key
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "mountpoint=/m\nlocation=s3://b/p\nuptime_secs=3725\npid=42\nHEAD=10\nLIST=3\nGET=0\nerrors=0\nbytes_read=1572864\nattr_cache_hits=3\nattr_cache_misses=1\nkernel_names=1000\nnew_field=x\nupload=52428800/104857600/2000/videos/a b.mp4\nrecovered=2048/2026-11-25T170503/photos/half.bin\n";

    #[test]
    fn people_get_labelled_lines_in_human_units() {
        let shown = render(REPORT);
        assert!(
            shown.starts_with("s3://b/p on /m (pid 42, up 1h 02m)\n"),
            "{shown}"
        );
        assert!(
            shown.contains("  requests   HEAD 10, LIST 3, GET 0, errors 0\n"),
            "{shown}"
        );
        assert!(
            shown.contains("  transfer   read from the bucket 1.5 MiB\n"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "  caches     attribute hit rate 75%, attribute hits 3, attribute misses 1\n"
            ),
            "{shown}"
        );
        assert!(shown.contains("  kernel     names held 1000\n"), "{shown}");
        assert!(shown.contains("  other      new_field=x\n"), "{shown}");
        assert!(
            shown.contains("  recovered  1 file(s) kept in the cache directory's recovery/")
                && shown.contains("2026-11-25T170503/photos/half.bin (2.0 KiB)\n"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "  uploading  [###############...............]  50% 50.0 MiB of 100.0 MiB at 25.0 MiB/s videos/a b.mp4\n"
            ),
            "{shown}"
        );
    }

    #[test]
    fn scripts_get_one_json_object() {
        let value: serde_json::Value = serde_json::from_str(&json(REPORT)).unwrap();
        assert_eq!(value["LIST"], 3);
        assert_eq!(value["location"], "s3://b/p");
        assert_eq!(value["uploads"][0]["path"], "videos/a b.mp4");
        assert_eq!(value["uploads"][0]["done_bytes"], 52_428_800);
        assert_eq!(
            value["recovered"][0]["path"],
            "2026-11-25T170503/photos/half.bin"
        );
    }

    #[test]
    fn units_read_as_people_expect() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3600 * 49), "2d 01h");
    }
}
