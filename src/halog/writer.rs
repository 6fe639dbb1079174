//! The rotating `haErrorLog.txt` writer, safe across threads and processes.
//!
//! Every append happens with an exclusive `flock(2)` held on `<dir>/.haErrorLog.lock`, waited for
//! at most [`safe_file::lock::LOCK_WAIT`] (then the append fails with `TimedOut` and the caller drops
//! and counts its records); under it:
//!
//! 1. if `<dir>/haErrorLog.txt` is not the file our descriptor points at (another process rotated
//!    it, or it was removed), open it again through [`safe_file::open`] (no link followed, mode
//!    0600 when created, refused unless a regular file of ours);
//! 2. append the records with one `write(2)` per batch; a record that takes the file to
//!    `max_len` bytes or more ends its batch;
//! 3. when the file reached `max_len`, rename it to
//!    `haErrorLog.<UTC yyyymmddTHHMMSS>.<9-digit nanoseconds>Z.txt` and start a new one.
//!
//! Rotated names sort in time order and are unique: the last rotation stamp is kept in the lock file
//! and every rotation uses `max(now, last + 1ns)`, so two rotations in the same second (or a clock
//! stepping back) still give increasing names. The rename never replaces an existing file
//! (`renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where that is not supported); should the name
//! exist anyway (a link someone planted included: neither call follows links), `_001`, `_002`, ...
//! is appended (these sort after the plain name). It renames only the file our descriptor refers
//! to: when `haErrorLog.txt` is something else by then, it is left alone.
//!
//! `max_len == 0` means no rotation.
//!
//! Retention (`haLogRetain`, [`LogFile::with_retention`]): after a rotation, under the same lock,
//! the oldest rotated files beyond the count kept are deleted ([`prune_rotated`]); 0 keeps every
//! one (and the writer then never deletes anything).

use chrono::{DateTime, Utc};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{LOCK_FILE_NAME, LOG_FILE_NAME};
use crate::safe_file::{self, Access, LockKind, Locker};

/// The log file of one directory, as one process sees it.
pub struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    lock: File,
    locker: Locker,
    max_len: u64,
    /// Open descriptor and the (dev, ino) it refers to.
    file: Option<(File, (u64, u64))>,
    /// What is risky about the directory, to be said once (see [`safe_file::check_dir`]).
    warning: Option<String>,
    /// Rotated files kept (0: all).
    retain: u64,
}

impl LogFile {
    /// Checks that `dir` is a directory p11ha may write in and opens (creating them) the lock
    /// file and the log file there, both checked by [`safe_file::open`]. It takes no lock, so it
    /// never waits. The error is a short reason for the one stderr line.
    pub fn open(dir: &Path, max_len: u64) -> Result<LogFile, String> {
        let warning = safe_file::check_dir(dir).map_err(|e| e.to_string())?;
        let lock = safe_file::open(&dir.join(LOCK_FILE_NAME), Access::ReadWrite)
            .map_err(|e| e.to_string())?;
        let mut log = LogFile {
            dir: dir.to_path_buf(),
            path: dir.join(LOG_FILE_NAME),
            lock,
            locker: Locker::new(LOCK_FILE_NAME),
            max_len,
            file: None,
            warning,
            retain: 0,
        };
        // Without the lock another process may be rotating; `append` checks again under it.
        log.current().map_err(|e| e.to_string())?;
        Ok(log)
    }

    /// Keeps at most `keep` rotated files (0: every one), deleting the oldest after a rotation.
    pub fn with_retention(mut self, keep: u64) -> LogFile {
        self.retain = keep;
        self
    }

    /// What is risky about the directory, if anything (see [`safe_file::check_dir`]).
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the current `haErrorLog.txt`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the records (each one complete line) and rotates as described in the module docs.
    /// Waits for the lock at most [`safe_file::lock::LOCK_WAIT`] (an error of kind `TimedOut`).
    pub fn append(&mut self, records: &[String]) -> io::Result<()> {
        let lock = self.lock.try_clone()?;
        let _guard = self.locker.lock(&lock, LockKind::Exclusive)?;
        let mut size = self.current()?.metadata()?.len();
        let mut buf: Vec<u8> = Vec::with_capacity(records.iter().map(String::len).sum());
        for record in records {
            buf.extend_from_slice(record.as_bytes());
            size += record.len() as u64;
            if self.max_len > 0 && size >= self.max_len {
                self.current()?.write_all(&buf)?;
                buf.clear();
                self.rotate()?;
                size = self.current()?.metadata()?.len();
            }
        }
        if !buf.is_empty() {
            self.current()?.write_all(&buf)?;
        }
        Ok(())
    }

    /// `fdatasync` the current file.
    pub fn sync(&mut self) -> io::Result<()> {
        match &self.file {
            Some((file, _)) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// The descriptor of `haErrorLog.txt` as it is now on disk (call with the lock held): opened
    /// again, and checked again, when the name no longer refers to our file (another process
    /// rotated or removed it, or something else took the name).
    fn current(&mut self) -> io::Result<&mut File> {
        let on_disk = safe_file::id_at(&self.path)?;
        let stale = match (&self.file, on_disk) {
            (Some((_, id)), Some(disk)) => *id != disk,
            _ => true,
        };
        if stale {
            self.file = None;
            let file = safe_file::open(&self.path, Access::Append)?;
            let id = safe_file::id_of(&file)?;
            self.file = Some((file, id));
        }
        Ok(&mut self.file.as_mut().unwrap().0)
    }

    /// Renames the full file to its rotated name (call with the lock held).
    fn rotate(&mut self) -> io::Result<()> {
        // The rename moves whatever the name refers to: only ever our file. (Under the lock no
        // p11ha process changes it; someone else did, so leave it and open afresh.)
        let ours = self.file.as_ref().map(|(_, id)| *id);
        if ours.is_none() || safe_file::id_at(&self.path)? != ours {
            self.file = None;
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let last = self.last_rotation();
        let stamp = now.max(last + 1);
        let base = rotated_name(stamp);
        let mut target = self.dir.join(format!("{base}.txt"));
        let mut n = 0;
        loop {
            match rename_noreplace(&self.path, &target) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 999 => {
                    n += 1;
                    target = self.dir.join(format!("{base}_{n:03}.txt"));
                }
                Err(e) => return Err(e),
            }
        }
        self.file = None;
        self.store_last_rotation(stamp)?;
        if self.retain > 0 {
            prune_rotated(&self.dir, is_rotated_name, self.retain)?;
        }
        Ok(())
    }

    fn last_rotation(&mut self) -> u128 {
        let mut text = String::new();
        let _ = self.lock.seek(SeekFrom::Start(0));
        let _ = (&self.lock).take(64).read_to_string(&mut text);
        text.trim().parse().unwrap_or(0)
    }

    fn store_last_rotation(&mut self, stamp: u128) -> io::Result<()> {
        let text = format!("{stamp}\n");
        self.lock.set_len(0)?;
        self.lock.seek(SeekFrom::Start(0))?;
        self.lock.write_all(text.as_bytes())
    }
}

/// `haErrorLog.20261121T092301.000123456Z` for a stamp in nanoseconds since the epoch (UTC).
pub fn rotated_name(stamp_ns: u128) -> String {
    let secs = (stamp_ns / 1_000_000_000) as i64;
    let nanos = (stamp_ns % 1_000_000_000) as u32;
    let time = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap_or_default();
    format!("haErrorLog.{}.{nanos:09}Z", time.format("%Y%m%dT%H%M%S"))
}

/// The rotated files of a log in `dir`, oldest first: the names `is_rotated` accepts. Rotated
/// names carry their UTC stamp, so name order is time order.
pub fn rotated_files(dir: &Path, is_rotated: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_rotated(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Whether `name` is a rotated `haErrorLog.<stamp>Z[_NNN].txt`.
pub fn is_rotated_name(name: &str) -> bool {
    name.starts_with("haErrorLog.") && name.ends_with(".txt") && name != LOG_FILE_NAME
}

/// Deletes the oldest rotated files of a log beyond the `keep` newest (see [`rotated_files`]);
/// returns the names deleted, oldest first. Only regular files of this process's user with one
/// link are deleted (what is not p11ha's is left alone); a link is removed as a name, never
/// followed.
pub fn prune_rotated(
    dir: &Path,
    is_rotated: impl Fn(&str) -> bool,
    keep: u64,
) -> io::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let names = rotated_files(dir, is_rotated)?;
    let excess = names
        .len()
        .saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
    let mut removed = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for name in names.into_iter().take(excess) {
        let path = dir.join(&name);
        let ours = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.file_type().is_file() && m.uid() == me && m.nlink() == 1);
        if ours && std::fs::remove_file(&path).is_ok() {
            removed.push(name);
        }
    }
    Ok(removed)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Renames `from` to `to`, failing with `AlreadyExists` rather than replacing `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (cfrom, cto) = (cstring(from)?, cstring(to)?);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cfrom.as_ptr(),
                libc::AT_FDCWD,
                cto.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => {}
            _ => return Err(err),
        }
    }
    // No RENAME_NOREPLACE here: link (fails if `to` exists), then unlink.
    // SAFETY: valid NUL-terminated paths.
    if unsafe { libc::link(cfrom.as_ptr(), cto.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::unlink(cfrom.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_in_time_order() {
        let a = rotated_name(1_700_000_000_000_000_000);
        assert_eq!(a, "haErrorLog.20231114T221320.000000000Z");
        let b = rotated_name(1_700_000_000_000_000_001);
        let c = rotated_name(1_700_000_001_000_000_000);
        assert!(a < b && b < c);
        // A collision suffix sorts after the plain name and before the next stamp.
        assert!(format!("{a}.txt") < format!("{a}_001.txt"));
        assert!(format!("{a}_999.txt") < format!("{b}.txt"));
    }

    #[test]
    fn retention_deletes_the_oldest_rotated_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let names = [
            "haErrorLog.20230101T000000.000000000Z.txt",
            "haErrorLog.20230101T000000.000000001Z.txt",
            "haErrorLog.20230102T000000.000000000Z.txt",
        ];
        for n in names.iter().chain(&["haErrorLog.txt", "other.txt"]) {
            std::fs::write(d.join(n), "x").unwrap();
        }
        let removed = prune_rotated(d, is_rotated_name, 1).unwrap();
        assert_eq!(removed, names[..2]);
        assert!(d.join(names[2]).exists());
        assert!(d.join("haErrorLog.txt").exists() && d.join("other.txt").exists());
        assert!(prune_rotated(d, is_rotated_name, 1).unwrap().is_empty());
    }

    #[test]
    fn rename_noreplace_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"a");
        assert!(!a.exists());
    }
}
