//! The copy of the logs to syslog (`haLogToSyslog`): journald reads syslog(3), so this reaches
//! both. p11ha never calls `openlog` (that would change the host application's own syslog
//! identity); the facility goes with each message and the text says where it comes from.

use std::ffi::CString;

/// Which log a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The audit trail: `LOG_AUTHPRIV`, where hosts keep security records.
    Audit,
    /// `haErrorLog.txt`: `LOG_USER`.
    HaLog,
}

/// Sends one record (its trailing newline dropped) to syslog, at level info (audit) or notice
/// (HA log). A record never holds a NUL (both logs escape control characters).
pub fn send(source: Source, line: &str) {
    let (priority, tag) = match source {
        Source::Audit => (libc::LOG_AUTHPRIV | libc::LOG_INFO, "p11ha-audit"),
        Source::HaLog => (libc::LOG_USER | libc::LOG_NOTICE, "p11ha-halog"),
    };
    let Ok(msg) = CString::new(format!("{tag}: {}", line.trim_end_matches('\n'))) else {
        return;
    };
    // SAFETY: a constant "%s" format with one NUL-terminated string argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
}
