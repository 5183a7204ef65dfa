//! Container logs as `kubectl logs` reads them, from the files the runtime writes: one file per
//! container run, `<data dir>/pods/<pod uid>/logs/<container>_<attempt>.log`.
//!
//! CRI runtimes (containerd) write the CRI log format, one record per line:
//! `<RFC 3339 time> <stdout|stderr> <P|F> <text>`, where `P` marks a partial line continued by the
//! next record. The process runtime writes the program's output as it is. Both are read here: a
//! line that is not a CRI record is taken as plain output (without a timestamp).

use std::path::{Path, PathBuf};

/// Which part of a log to give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The previous run of the container instead of the current one.
    pub previous: bool,
    /// Only the last lines.
    pub tail_lines: Option<usize>,
    /// Prefix each line with its time (RFC 3339, as the runtime recorded it).
    pub timestamps: bool,
    /// At most this many bytes (from the start of what is selected).
    pub limit_bytes: Option<usize>,
    /// Only lines recorded at or after this time (RFC 3339 UTC to the second,
    /// `YYYY-MM-DDTHH:MM:SS`; see [`since_seconds`]). Lines without a recorded time (the process
    /// runtime's) are kept.
    pub since: Option<String>,
}

/// The `since` bound of `sinceSeconds=n`: `n` seconds before `now`, as RFC 3339 UTC to the second.
pub fn since_seconds(now: std::time::SystemTime, n: u64) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(n);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether a record's `time` is before `since` (compared to the second; times not in UTC are
/// kept).
fn before(time: &str, since: &str) -> bool {
    time.ends_with('Z') && time.get(..19).is_some_and(|t| t < since)
}

/// The log files of `container` under a pod's log directory, oldest run first.
pub fn runs(log_dir: &Path, container: &str) -> Vec<(u32, PathBuf)> {
    let prefix = format!("{container}_");
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let attempt = name
                .strip_prefix(&prefix)?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((attempt, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The file to read for `options` (the latest run, or the one before it).
pub fn select(log_dir: &Path, container: &str, options: &LogOptions) -> Option<PathBuf> {
    let mut runs = runs(log_dir, container);
    if options.previous {
        runs.pop()?;
    }
    runs.pop().map(|(_, p)| p)
}

/// One CRI record: (time, text, whether the line ends here); `None` if `line` is not one.
fn cri_record(line: &str) -> Option<(&str, &str, bool)> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("");
    let looks_like_time =
        time.len() >= 20 && time.as_bytes().get(4) == Some(&b'-') && time.contains('T');
    if !looks_like_time || !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    match tag {
        "F" => Some((time, text, true)),
        "P" => Some((time, text, false)),
        // Tags may carry more flags after a colon; the first says partial or full.
        t if t.starts_with("F:") => Some((time, text, true)),
        t if t.starts_with("P:") => Some((time, text, false)),
        _ => None,
    }
}

/// Where a trailing run of partial CRI records (`P`) starts in `bytes` (whole lines), or
/// `bytes.len()` when the last line is not one: a chunk cut there renders no line in two.
pub fn before_partial_run(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    while end > 0 {
        let start = bytes[..end - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let line = String::from_utf8_lossy(&bytes[start..end - 1]);
        match cri_record(&line) {
            Some((_, _, false)) => end = start,
            _ => return end,
        }
    }
    0
}

/// Turns a log file's bytes into the lines `kubectl logs` shows (each ending in `\n`), applying
/// `options` (except `previous`, see [`select`]).
pub fn render(raw: &[u8], options: &LogOptions) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut lines: Vec<String> = Vec::new();
    let mut partial: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        let complete = line.ends_with('\n');
        let line = line.strip_suffix('\n').unwrap_or(line);
        match cri_record(line) {
            Some((time, chunk, full)) => {
                let (t, mut acc) = partial
                    .take()
                    .unwrap_or_else(|| (time.to_owned(), String::new()));
                acc.push_str(chunk);
                if full {
                    if options.since.as_deref().is_some_and(|s| before(&t, s)) {
                        continue;
                    }
                    lines.push(stamp(options, Some(&t), &acc));
                } else {
                    partial = Some((t, acc));
                }
            }
            // A plain line; an unfinished last one is shown as it is so far.
            None if complete || !line.is_empty() => lines.push(stamp(options, None, line)),
            None => {}
        }
    }
    if let Some((t, acc)) = partial {
        lines.push(stamp(options, Some(&t), &acc));
    }
    if let Some(n) = options.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = lines.concat().into_bytes();
    if let Some(limit) = options.limit_bytes {
        out.truncate(limit);
    }
    out
}

fn stamp(options: &LogOptions, time: Option<&str>, text: &str) -> String {
    match (options.timestamps, time) {
        (true, Some(t)) => format!("{t} {text}\n"),
        _ => format!("{text}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_cut_before_a_run_of_partial_records() {
        let full = b"2026-11-23T10:00:00Z stdout F one\n";
        let part = b"2026-11-23T10:00:01Z stdout P tw\n2026-11-23T10:00:01Z stdout P o-\n";
        let mut bytes = full.to_vec();
        assert_eq!(before_partial_run(&bytes), bytes.len());
        bytes.extend_from_slice(part);
        assert_eq!(before_partial_run(&bytes), full.len());
        assert_eq!(before_partial_run(part), 0);
        assert_eq!(before_partial_run(b"plain\n"), 6);
        assert_eq!(before_partial_run(b""), 0);
    }

    #[test]
    fn since_drops_older_records() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(since_seconds(at, 0), "2026-11-18T11:06:40");
        assert_eq!(since_seconds(at, 86_400 * 366), "2025-11-17T11:06:40");
        let raw =
            b"2026-11-18T11:06:39.9Z stdout F old\n2026-11-18T11:06:40.1Z stdout F new\nplain\n";
        let options = LogOptions {
            since: Some(since_seconds(at, 0)),
            ..LogOptions::default()
        };
        assert_eq!(
            String::from_utf8(render(raw, &options)).unwrap(),
            "new\nplain\n"
        );
    }

    #[test]
    fn cri_records_and_plain_lines() {
        let raw = b"2026-11-23T10:00:00.000000001Z stdout F hello\n2026-11-23T10:00:01.5Z stderr P par\n2026-11-23T10:00:01.6Z stderr F tial\nplain line\n";
        assert_eq!(
            String::from_utf8(render(raw, &LogOptions::default())).unwrap(),
            "hello\npartial\nplain line\n"
        );
        let stamped = LogOptions {
            timestamps: true,
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        assert_eq!(
            String::from_utf8(render(raw, &stamped)).unwrap(),
            "2026-11-23T10:00:01.5Z partial\nplain line\n"
        );
        let limited = LogOptions {
            limit_bytes: Some(3),
            ..LogOptions::default()
        };
        assert_eq!(render(raw, &limited), b"hel");
        assert_eq!(
            render(b"no newline yet", &LogOptions::default()),
            b"no newline yet\n"
        );
    }

    #[test]
    fn runs_are_found_by_attempt() {
        let dir = std::env::temp_dir().join(format!("kubeedge-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "main_0.log",
            "main_10.log",
            "main_2.log",
            "other_5.log",
            "main_x.log",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let attempts: Vec<u32> = runs(&dir, "main").into_iter().map(|(a, _)| a).collect();
        assert_eq!(attempts, [0, 2, 10]);
        let current = select(&dir, "main", &LogOptions::default()).unwrap();
        assert!(current.ends_with("main_10.log"));
        let previous = LogOptions {
            previous: true,
            ..LogOptions::default()
        };
        assert!(
            select(&dir, "main", &previous)
                .unwrap()
                .ends_with("main_2.log")
        );
        assert!(select(&dir, "absent", &LogOptions::default()).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
