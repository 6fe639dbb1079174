//! The names of a stream's files (`haAudit.<serial>.txt`, its rotated files, its state file)
//! and the stream's files found in a directory, in order.

use crate::halog::writer::rotated_files;
use chrono::{DateTime, Utc};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `haAudit.<serial>`: the stem of every file of the stream.
pub fn base_name(serial: &str) -> String {
    let safe: String = serial
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("haAudit.{safe}")
}

pub fn current_name(serial: &str) -> String {
    format!("{}.txt", base_name(serial))
}

pub(super) fn state_name(serial: &str) -> String {
    format!(".{}.state", base_name(serial))
}

/// Whether `name` is a rotated file of the stream `base` (`<base>.<stamp>Z[_NNN].txt`).
pub fn is_rotated(base: &str, name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix(".txt"))
    else {
        return false;
    };
    let (stamp, suffix) = match rest.split_once('_') {
        Some((s, n)) => (s, Some(n)),
        None => (rest, None),
    };
    let b = stamp.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() == 26
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..25)
        && b[25] == b'Z'
        && suffix.is_none_or(|n| n.len() == 3 && n.bytes().all(|c| c.is_ascii_digit()))
}

/// The stream's files in `dir`, in order: the rotated ones, oldest first, then the current one
/// (when it exists).
pub fn stream_files(dir: &Path, serial: &str) -> io::Result<Vec<PathBuf>> {
    let base = base_name(serial);
    let mut files: Vec<PathBuf> = rotated_files(dir, |n| is_rotated(&base, n))?
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    let current = dir.join(current_name(serial));
    if current.exists() {
        files.push(current);
    }
    Ok(files)
}

pub(super) fn stamp_text(stamp_ns: u128) -> String {
    let secs = (stamp_ns / 1_000_000_000) as i64;
    let nanos = (stamp_ns % 1_000_000_000) as u32;
    let time = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap_or_default();
    format!("{}.{nanos:09}Z", time.format("%Y%m%dT%H%M%S"))
}

pub(super) fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
