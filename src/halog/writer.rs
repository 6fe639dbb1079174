//! The rotating `haErrorLog.txt` writer, safe across threads and processes.
//!
//! Every append happens with an exclusive `flock(2)` held on `<dir>/.haErrorLog.lock`; under it:
//!
//! 1. if `<dir>/haErrorLog.txt` is not the file our descriptor points at (another process rotated
//!    it, or it was removed), open it again (`O_APPEND | O_CREAT`, mode 0600);
//! 2. append the records with one `write(2)` per batch; a record that takes the file to
//!    `max_len` bytes or more ends its batch;
//! 3. when the file reached `max_len`, rename it to
//!    `haErrorLog.<UTC yyyymmddTHHMMSS>.<9-digit nanoseconds>Z.txt` and start a new one.
//!
//! Rotated names sort in time order and are unique: the last rotation stamp is kept in the lock file
//! and every rotation uses `max(now, last + 1ns)`, so two rotations in the same second (or a clock
//! stepping back) still give increasing names. The rename never replaces an existing file
//! (`renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where that is not supported); should the name
//! exist anyway, `_001`, `_002`, ... is appended (these sort after the plain name).
//!
//! `max_len == 0` means no rotation.

use chrono::{DateTime, Utc};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{LOCK_FILE_NAME, LOG_FILE_NAME};

/// The log file of one directory, as one process sees it.
pub struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    lock: File,
    max_len: u64,
    /// Open descriptor and the (dev, ino) it refers to.
    file: Option<(File, (u64, u64))>,
}

/// Exclusive `flock` on the lock file, released on drop.
struct Locked<'a>(&'a File);

impl<'a> Locked<'a> {
    fn new(file: &'a File) -> io::Result<Self> {
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Locked(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn open_mode_0600(path: &Path, append: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    if append {
        options.append(true);
    } else {
        options.read(true).write(true);
    }
    options.create(true).mode(0o600).open(path)
}

fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "directory does not exist".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

impl LogFile {
    /// Checks that `dir` is an existing directory where the lock file and the log file can be
    /// opened for writing. The error is a short reason for the one stderr line.
    pub fn open(dir: &Path, max_len: u64) -> Result<LogFile, String> {
        let meta = std::fs::metadata(dir).map_err(|e| reason(&e))?;
        if !meta.is_dir() {
            return Err("not a directory".into());
        }
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = open_mode_0600(&lock_path, false)
            .map_err(|e| format!("{LOCK_FILE_NAME}: {}", reason(&e)))?;
        let mut log = LogFile {
            dir: dir.to_path_buf(),
            path: dir.join(LOG_FILE_NAME),
            lock,
            max_len,
            file: None,
        };
        {
            let lock = log.lock.try_clone().map_err(|e| e.to_string())?;
            let _guard = Locked::new(&lock).map_err(|e| format!("{LOCK_FILE_NAME}: {e}"))?;
            log.current()
                .map_err(|e| format!("{LOG_FILE_NAME}: {}", reason(&e)))?;
        }
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the current `haErrorLog.txt`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the records (each one complete line) and rotates as described in the module docs.
    pub fn append(&mut self, records: &[String]) -> io::Result<()> {
        let lock = self.lock.try_clone()?;
        let _guard = Locked::new(&lock)?;
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

    /// The descriptor of `haErrorLog.txt` as it is now on disk (call with the lock held).
    fn current(&mut self) -> io::Result<&mut File> {
        let on_disk = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.dev(), m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let stale = match (&self.file, on_disk) {
            (Some((_, id)), Some(disk)) => *id != disk,
            _ => true,
        };
        if stale {
            let file = open_mode_0600(&self.path, true)?;
            let m = file.metadata()?;
            self.file = Some((file, (m.dev(), m.ino())));
        }
        Ok(&mut self.file.as_mut().unwrap().0)
    }

    /// Renames the full file to its rotated name (call with the lock held).
    fn rotate(&mut self) -> io::Result<()> {
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
        self.store_last_rotation(stamp)
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
