//! The copy of the logs to syslog (`haLogToSyslog`): one datagram per record to the local syslog
//! socket, `/dev/log` unless `haSyslogSocket` names another one. journald and rsyslog both listen
//! there, so this reaches either. The audit trail uses it too; it lives here,
//! with the HA log, so the HA log imports nothing above it.
//!
//! p11ha does not call syslog(3): that would share (and, through `openlog`, change) the host
//! application's own syslog identity and connection, and it cannot be pointed at another socket
//! (a container's, a test's). Each datagram is what glibc's syslog(3) sends to a local socket,
//! `<PRI>Mmm dd hh:mm:ss IDENT[PID]: TEXT`, with `IDENT` `p11ha-audit` (facility `LOG_AUTHPRIV`,
//! where hosts keep security records, level info) or `p11ha-halog` (`LOG_USER`, notice).
//!
//! A send waits at most [`SEND_WAIT`] for a daemon that is behind (a local datagram socket
//! holds only a few messages: 10 by default, `net.unix.max_dgram_qlen`), so a burst reaches a
//! daemon that keeps up. One that does not answer in time, or is gone, must not hold up the
//! writers (they write the files, and run on the caller's thread when the application forbids
//! threads): nothing is sent for [`PAUSE`] after a failure. A record that is not sent is not
//! retried — the files are the record of what happened — and the first failure of each process
//! and log is said once on stderr, with the socket's path.

use crate::diag::diag;
use chrono::Local;
use parking_lot::Mutex;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest wait for room on the socket, per record.
pub const SEND_WAIT: Duration = Duration::from_millis(250);
/// How long nothing is sent after a failed send.
pub const PAUSE: Duration = Duration::from_secs(5);

/// Which log a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The audit trail.
    Audit,
    /// `haErrorLog.txt`.
    HaLog,
}

impl Source {
    fn priority(self) -> i32 {
        match self {
            Source::Audit => libc::LOG_AUTHPRIV | libc::LOG_INFO,
            Source::HaLog => libc::LOG_USER | libc::LOG_NOTICE,
        }
    }

    pub fn ident(self) -> &'static str {
        match self {
            Source::Audit => "p11ha-audit",
            Source::HaLog => "p11ha-halog",
        }
    }

    fn failure_said(self) -> &'static AtomicBool {
        static AUDIT: AtomicBool = AtomicBool::new(false);
        static HALOG: AtomicBool = AtomicBool::new(false);
        match self {
            Source::Audit => &AUDIT,
            Source::HaLog => &HALOG,
        }
    }
}

/// The datagram for one record (its trailing newline dropped).
pub fn datagram(source: Source, line: &str) -> String {
    format!(
        "<{}>{} {}[{}]: {}",
        source.priority(),
        Local::now().format("%b %e %H:%M:%S"),
        source.ident(),
        std::process::id(),
        line.trim_end_matches('\n')
    )
}

/// One unbound socket per process, shared by every log and thread (`sendto` on a datagram
/// socket needs no lock).
fn socket() -> Option<&'static UnixDatagram> {
    static SOCKET: OnceLock<Option<UnixDatagram>> = OnceLock::new();
    SOCKET
        .get_or_init(|| {
            let s = UnixDatagram::unbound().ok()?;
            s.set_write_timeout(Some(SEND_WAIT)).ok()?;
            Some(s)
        })
        .as_ref()
}

/// Until when nothing is sent, after a failure.
static PAUSED_UNTIL: Mutex<Option<Instant>> = Mutex::new(None);

/// Sends each of `lines` to the syslog socket at `path` (`haSyslogSocket`, by default
/// [`crate::config::DEFAULT_SYSLOG_SOCKET`]).
pub fn send(source: Source, path: &Path, lines: &[String]) {
    if lines.is_empty() || PAUSED_UNTIL.lock().is_some_and(|t| Instant::now() < t) {
        return;
    }
    for line in lines {
        let sent = match socket() {
            Some(s) => s.send_to(datagram(source, line).as_bytes(), path).map(drop),
            None => Err(std::io::Error::other("no socket could be created")),
        };
        if let Err(e) = sent {
            *PAUSED_UNTIL.lock() = Some(Instant::now() + PAUSE);
            if !source.failure_said().swap(true, Ordering::Relaxed) {
                diag!(
                    Warn,
                    "haLogToSyslog: {} records not sent to {}: {e} (said once per process; \
                     nothing is sent for {} s after a failure)",
                    source.ident(),
                    path.display(),
                    PAUSE.as_secs()
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_the_socket_named_with_priority_and_ident() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(
            Source::Audit,
            &path,
            &["first record\n".into(), "second".into()],
        );
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        for _ in 0..2 {
            let n = rx.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        // LOG_AUTHPRIV (10 << 3) | LOG_INFO (6) = 86.
        assert!(got[0].starts_with("<86>"), "{got:?}");
        assert!(got[0].ends_with("]: first record"), "{got:?}");
        assert!(got[0].contains(&format!(" p11ha-audit[{}]", std::process::id())));
        assert!(got[1].ends_with("]: second"), "{got:?}");
    }
}
