//! The files p11ha writes (the HA log, its lock file, the journals) in directories that other
//! users may share: never through a link, never into another user's file, never an unbounded
//! wait for a lock. Every writer opens, checks and locks through here, so the rules live in one
//! place.
//!
//! - **Files** are opened with `O_NOFOLLOW` (a symbolic link as the last component fails, dangling
//!   or not: `ELOOP`, or `EACCES` with `O_CREAT` in a sticky directory; so `O_CREAT` never
//!   creates a link's target), `O_NONBLOCK` (a FIFO
//!   or device never blocks the open) and `O_CLOEXEC`; created with mode 0600. The descriptor is
//!   then checked with `fstat`: a regular file, owned by the effective user, with exactly one
//!   link (a second name could be a planted hard link to a file p11ha must not write). A file
//!   that fails is closed untouched: no write, no truncation.
//! - **Directories** are checked before use. Writable by every user without the sticky bit is
//!   refused: any user can rename, remove or replace p11ha's files there between any check and
//!   any write. Writable by others with the sticky bit, writable by the group, or owned by a user
//!   who is neither this process's user nor root gives a warning ([`is_new`] makes it once per
//!   directory and process).
//! - **Locks** (`flock`) are tried with `LOCK_NB` and polled until [`LOCK_WAIT`](lock::LOCK_WAIT); after a wait ran
//!   out, the next attempts on that lock file wait [`STUCK_WAIT`](lock::STUCK_WAIT) only, until one succeeds. So a
//!   holder that never lets go costs one bounded wait per lock file, not one per record.
//!
//! Files and directories are checked here, locks in `lock`; the tests of files and directories
//! are in `tests`.

pub(crate) mod lock;

pub use lock::{LockKind, Locker};

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::Mutex;

/// How a file is opened. Every mode creates the file (mode 0600) when it does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Append,
    ReadAppend,
    ReadWrite,
}

/// Opens (creating it, mode 0600) the file at `path` without following a link, and checks that
/// it is a regular file of ours with one link. Every error names the file (its last component)
/// and says what to do.
pub fn open(path: &Path, access: Access) -> io::Result<File> {
    let name = file_name(path);
    let c = cstring(path)?;
    let flags = libc::O_CREAT
        | libc::O_NOFOLLOW
        | libc::O_NONBLOCK
        | libc::O_CLOEXEC
        | libc::O_NOCTTY
        | match access {
            Access::Append => libc::O_WRONLY | libc::O_APPEND,
            Access::ReadAppend => libc::O_RDWR | libc::O_APPEND,
            Access::ReadWrite => libc::O_RDWR,
        };
    // SAFETY: valid NUL-terminated path; the mode argument is read because of O_CREAT.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(open_error(path, &name, io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just opened and own from here on.
    let file = unsafe { File::from_raw_fd(fd) };
    check(&file, &name)?;
    // O_NONBLOCK only kept a FIFO from blocking the open; clear it for the regular file.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Checks an open descriptor: a regular file owned by the effective user, with one link.
/// `name` is the file's name for the message.
pub fn check(file: &File, name: &str) -> io::Result<()> {
    let m = file.metadata()?;
    if !m.file_type().is_file() {
        return Err(not_regular(name, &m));
    }
    if m.uid() != euid() {
        return Err(not_ours(name, m.uid()));
    }
    if m.nlink() != 1 {
        return Err(refused(format!(
            "{name} has {} hard links: refused, another name could be a link planted to a file \
             p11ha must not write; remove it (p11ha then creates its own)",
            m.nlink()
        )));
    }
    Ok(())
}

/// `(dev, ino)` of what `path` names itself (a link is not followed); `None` when nothing is
/// there.
pub fn id_at(path: &Path) -> io::Result<Option<(u64, u64)>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `(dev, ino)` of an open file.
pub fn id_of(file: &File) -> io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Checks the directory p11ha is to write in (see the module docs). `Err` is the reason it
/// cannot or must not be used; `Ok(Some(warning))` what is risky about it, starting with the
/// directory's name (give it when [`is_new`]).
pub fn check_dir(dir: &Path) -> io::Result<Option<String>> {
    let m = std::fs::metadata(dir).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENOENT) => "directory does not exist".to_string(),
            Some(libc::ENOTDIR) => "a component of the path is not a directory".to_string(),
            Some(libc::EACCES) => format!(
                "permission denied: a parent directory cannot be searched by {}",
                user(euid())
            ),
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), why)
    })?;
    if !m.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let mode = m.mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !sticky {
        return Err(refused(format!(
            "the directory is writable by every user (mode {:04o}) and has no sticky bit: any \
             user could rename, remove or replace p11ha's files there: refused; use a directory \
             only {} can write to (mode 0700 or 0750)",
            mode & 0o7777,
            user(euid())
        )));
    }
    let mut risks = Vec::new();
    if mode & 0o002 != 0 {
        risks.push(format!(
            "it is writable by every user (mode {:04o}; sticky bit set, so they cannot rename or \
             remove p11ha's files, but they can create the names p11ha uses before it does, \
             which stops the log or journal)",
            mode & 0o7777
        ));
    }
    // World-writable says it all already.
    if mode & 0o020 != 0 && mode & 0o002 == 0 {
        let can = if sticky {
            "can create the names p11ha uses before it does (sticky bit set)"
        } else {
            "can rename, remove or replace p11ha's files (no sticky bit)"
        };
        risks.push(format!(
            "it is writable by group {} (mode {:04o}): its members {can}",
            group(m.gid()),
            mode & 0o7777
        ));
    }
    let me = euid();
    if m.uid() != me && m.uid() != 0 {
        risks.push(format!(
            "it is owned by {}, who can rename, remove or replace p11ha's files",
            user(m.uid())
        ));
    }
    if risks.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{}: {}; give it a directory owned by {} with mode 0700 or 0750",
        dir.display(),
        risks.join("; "),
        user(me)
    )))
}

/// Whether this process has not given `warning` yet (and now counts it as given): the HA log and
/// a journal in the same directory warn once between them, and a C_Initialize after C_Finalize
/// does not repeat it.
pub fn is_new(warning: &str) -> bool {
    static GIVEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    if given.iter().any(|w| w == warning) {
        return false;
    }
    given.push(warning.to_owned());
    true
}

/// The error of a failed `open` of `path`, in words. What is at the name decides first: for a
/// link the errno is `ELOOP`, or `EACCES` with `O_CREAT` in a sticky directory; for a FIFO
/// without a reader `ENXIO`; for another user's file in a sticky directory `EACCES` under
/// `fs.protected_regular`. Otherwise the reason comes from the errno.
fn open_error(path: &Path, name: &str, e: io::Error) -> io::Error {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let ft = m.file_type();
        if ft.is_symlink() {
            return refused(format!(
                "{name} is a symbolic link (owned by {}): refused, p11ha never writes through a \
                 link; remove it, and keep the directory writable only by {}",
                user(m.uid()),
                user(euid())
            ));
        }
        if !ft.is_file() {
            return not_regular(name, &m);
        }
        if m.uid() != euid() {
            return not_ours(name, m.uid());
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    io::Error::new(
        e.kind(),
        format!("cannot open or create {name}: {}", create_reason(dir, &e)),
    )
}

/// Why a file cannot be created in `dir` (an existing directory), from the errno.
pub fn create_reason(dir: &Path, e: &io::Error) -> String {
    let special = special_fs(dir);
    match e.raw_os_error() {
        Some(libc::ENOENT) => match special {
            Some(fs) => format!(
                "{} is on a {fs} file system, where files cannot be created (ENOENT)",
                dir.display()
            ),
            None => format!(
                "{} vanished, or its file system does not let files be created in it (ENOENT)",
                dir.display()
            ),
        },
        Some(libc::EACCES) | Some(libc::EPERM) => {
            let what = match std::fs::metadata(dir) {
                Ok(m) => format!(
                    "{} is owned by {}, mode {:04o}, and this process runs as {}",
                    dir.display(),
                    user(m.uid()),
                    m.mode() & 0o7777,
                    user(euid())
                ),
                Err(_) => format!("this process runs as {}", user(euid())),
            };
            match special {
                Some(fs) => format!("permission denied: {what} (a {fs} file system)"),
                None => format!("permission denied: {what}"),
            }
        }
        Some(libc::EROFS) => format!("{} is on a read-only file system", dir.display()),
        Some(libc::ENOSPC) => "no space left on the device".into(),
        Some(libc::EDQUOT) => "disk quota exceeded".into(),
        _ => e.to_string(),
    }
}

/// The kernel's pseudo file systems nobody keeps logs on, by `statfs` magic.
fn special_fs(dir: &Path) -> Option<&'static str> {
    let c = cstring(dir).ok()?;
    // SAFETY: statfs fills the zeroed struct; valid NUL-terminated path.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    match s.f_type {
        libc::PROC_SUPER_MAGIC => Some("proc"),
        libc::SYSFS_MAGIC => Some("sysfs"),
        libc::CGROUP_SUPER_MAGIC | libc::CGROUP2_SUPER_MAGIC => Some("cgroup"),
        libc::DEBUGFS_MAGIC => Some("debugfs"),
        libc::SECURITYFS_MAGIC => Some("securityfs"),
        _ => None,
    }
}

fn not_regular(name: &str, m: &std::fs::Metadata) -> io::Error {
    refused(format!(
        "{name} is {}, not a regular file (owned by {}): refused; remove it (p11ha then creates \
         its own)",
        kind(&m.file_type()),
        user(m.uid())
    ))
}

fn not_ours(name: &str, owner: u32) -> io::Error {
    refused(format!(
        "{name} is owned by {}, not by this process's user {}: refused, p11ha writes only files \
         of its own; remove it (p11ha then creates its own), or run the application as its owner",
        user(owner),
        user(euid())
    ))
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `uid 1001 (alice)`, or `uid 1001` without a passwd entry.
pub fn user(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 1024];
    // SAFETY: getpwuid_r writes into `pw` and `buf` (length given) and sets `out`.
    let name = unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
        (rc == 0 && !out.is_null() && !pw.pw_name.is_null())
            .then(|| CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
    };
    match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// `gid 4 (adm)`, or `gid 4` without a group entry.
fn group(gid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: getgrgid_r writes into `gr` and `buf` (length given) and sets `out`.
    let name = unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out);
        (rc == 0 && !out.is_null() && !gr.gr_name.is_null())
            .then(|| CStr::from_ptr(gr.gr_name).to_string_lossy().into_owned())
    };
    match name {
        Some(n) => format!("gid {gid} ({n})"),
        None => format!("gid {gid}"),
    }
}

#[cfg(test)]
mod tests;
