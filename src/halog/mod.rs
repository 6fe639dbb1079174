//! The HA event log `haErrorLog.txt` (seed 003): one method per HALOG message, and the rotating,
//! multi-process-safe writer behind them.
//!
//! INTERFACE CONTRACT (used by ha/mgmt/ffi): `HaLog` and the methods below. `group` is the HA group
//! serial printed in the prefix; `member` a member token serial; `rv` a CK_RV printed as
//! `0x00000030 : CKR_DEVICE_ERROR`.
//!
//! # Records
//!
//! Every record is one line: the seed's prefix `Wed Oct  4 16:29:21 2017 : [17469] HA group:
//! 11234840370164 ` (local time in ctime layout, process id, group serial) followed by the text of
//! one [`Event`]. The message catalogue is [`Event`] and its `Display` impl, and nothing else.
//! Text that comes from outside (serials, labels, error strings, configuration messages) goes through
//! [`Clean`], which escapes every control character (`\n` becomes `\x0a`), so one event can never
//! produce two lines or forge another record. Only serials, codes and messages are ever logged: no
//! PIN and no key material reaches this module.
//!
//! # Writing
//!
//! See [`writer`]: records are appended to `<haLogPath>/haErrorLog.txt` under an exclusive lock on
//! `<haLogPath>/.haErrorLog.lock`, one `write(2)` per batch on an `O_APPEND` descriptor; a record
//! that takes the file to `max_len` bytes or more is completed and the file is then renamed to
//! `haErrorLog.<UTC yyyymmddTHHMMSS>.<nanoseconds>Z.txt`. The files are opened and the lock is
//! taken through [`crate::safe_file`]: no link followed, no other user's file reused, the lock
//! waited for at most [`crate::safe_file::lock::LOCK_WAIT`]. Records that could not be written (the
//! lock held too long by another process, a refused file) are dropped and counted, and the next
//! batch written starts with `... HA log: N records dropped (<why>)`. A warning about the
//! directory (writable by others) is the first record.
//!
//! By default ([`HaLog::open`]) the caller's thread only formats the line and puts it on a bounded
//! in-memory queue ([`QUEUE_CAPACITY`] records); one background writer thread per log (started on the
//! first record) does the disk work. A full queue never blocks the caller: the record is counted as
//! dropped and the writer later writes one line `... HA log: N records dropped (queue full)`.
//! [`HaLog::open_sync`] writes on the caller's thread instead, for applications that forbid thread
//! creation (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`).
//!
//! Files: `event` the message catalogue and the record layout; `queue` the sink, the queue and
//! its writer thread; [`writer`] the file, its lock and rotation; [`syslog`] the copy to syslog
//! (which the audit trail uses too, so the HA log imports nothing above it).

mod event;
mod queue;
pub mod syslog;
pub mod writer;

pub use event::{format_line, prefix, Clean, Event};

use crate::config::LogSettings;
use crate::diag::diag;
use chrono::Local;
use crossbeam_channel::TrySendError;
use cryptoki_sys::CK_RV;
use parking_lot::Mutex;
use queue::{drain_sync, start_writer, Inner, Msg, Queue, Sink};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use writer::LogFile;

/// Name of the log file inside `haLogPath`.
pub const LOG_FILE_NAME: &str = "haErrorLog.txt";
/// Name of the lock file inside `haLogPath` that serializes writers of all processes.
pub const LOCK_FILE_NAME: &str = ".haErrorLog.lock";
/// Default `logLen` (bytes) when the configuration does not set one.
pub const DEFAULT_MAX_LEN: u64 = crate::config::DEFAULT_LOG_LEN;
/// Records the in-memory queue holds before new records are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// How long [`HaLog::flush`] waits for the writer thread at most.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Handle to the HA log; cheap to clone; a disabled log accepts every call and writes nothing.
#[derive(Clone, Default)]
pub struct HaLog {
    inner: Option<Arc<Inner>>,
}

impl HaLog {
    pub fn disabled() -> HaLog {
        HaLog { inner: None }
    }

    /// Opens the log per settings; a missing, unwritable or refused directory or file (see
    /// [`crate::safe_file`]) prints one line on stderr and returns a disabled log. Never waits
    /// for the lock. Records are written by a background thread (see the module docs).
    pub fn open(settings: &LogSettings) -> HaLog {
        Self::open_mode(settings, false)
    }

    /// Like [`HaLog::open`], but every record is written on the caller's thread: for applications
    /// that do not allow the library to create threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`).
    pub fn open_sync(settings: &LogSettings) -> HaLog {
        Self::open_mode(settings, true)
    }

    fn open_mode(settings: &LogSettings, sync: bool) -> HaLog {
        let Some(dir) = settings.path.as_deref() else {
            return HaLog::disabled();
        };
        if !settings.enabled {
            return HaLog::disabled();
        }
        let file =
            match LogFile::open(dir, settings.max_len).map(|f| f.with_retention(settings.retain)) {
                Ok(file) => file,
                Err(reason) => {
                    diag!(Error, "HA log disabled: {}: {reason}", dir.display());
                    return HaLog::disabled();
                }
            };
        let warning = file
            .warning()
            .filter(|w| crate::safe_file::is_new(w))
            .map(|w| format!("HA log directory {w}"));
        let sink = Arc::new(Mutex::new(Sink {
            file,
            to_stdout: settings.to_stdout,
            syslog: settings.to_syslog.then(|| settings.syslog_socket.clone()),
            error_reported: false,
            lost: 0,
            lost_why: String::new(),
        }));
        let queue = (!sync).then(|| {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
            Queue {
                tx,
                rx,
                dropped: Arc::new(AtomicU64::new(0)),
                started: AtomicBool::new(false),
                thread: Mutex::new(None),
                no_thread: AtomicBool::new(false),
            }
        });
        let log = HaLog {
            inner: Some(Arc::new(Inner { sink, queue })),
        };
        if let Some(w) = warning {
            diag!(Warn, "{w}");
            log.event("", Event::UnsafeDirectory { message: &w });
        }
        log
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Waits until every record accepted so far is on disk (C_Finalize calls this). Bounded by
    /// [`FLUSH_TIMEOUT`].
    pub fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        match &inner.queue {
            Some(q)
                if q.started.load(Ordering::Acquire) && !q.no_thread.load(Ordering::Acquire) =>
            {
                let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
                if q.tx.send_timeout(Msg::Flush(ack_tx), FLUSH_TIMEOUT).is_ok() {
                    let _ = ack_rx.recv_timeout(FLUSH_TIMEOUT);
                }
            }
            _ => {
                let mut sink = inner.sink.lock();
                if let Some(q) = &inner.queue {
                    drain_sync(q, &mut sink);
                }
                sink.sync();
            }
        }
    }

    /// Records that were dropped because the queue was full and not yet reported in the file.
    pub fn dropped_pending(&self) -> u64 {
        self.inner
            .as_ref()
            .and_then(|i| i.queue.as_ref())
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed))
    }

    /// Logs `event` for HA group `group` (the typed methods below all end here).
    pub fn event(&self, group: &str, event: Event<'_>) {
        let Some(inner) = &self.inner else { return };
        let line = format_line(&Local::now(), std::process::id(), group, &event);
        let Some(q) = &inner.queue else {
            inner.sink.lock().write(&[line]);
            return;
        };
        if !q.started.load(Ordering::Acquire) {
            start_writer(inner, q);
        }
        if q.no_thread.load(Ordering::Acquire) {
            let mut sink = inner.sink.lock();
            drain_sync(q, &mut sink);
            sink.write(&[line]);
            return;
        }
        match q.tx.try_send(Msg::Record(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                q.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn configured_as_password(&self, group: &str) {
        self.event(group, Event::ConfiguredAsPassword)
    }
    pub fn configured_as_ped(&self, group: &str) {
        self.event(group, Event::ConfiguredAsPed)
    }
    pub fn drop_member(&self, group: &str, member: &str) {
        self.event(group, Event::DropMember { member })
    }
    pub fn drop_unrecoverable(&self, group: &str, member: &str) {
        self.event(group, Event::DropUnrecoverable { member })
    }
    pub fn login_failed(&self, group: &str, member: &str, rv: CK_RV) {
        self.event(group, Event::LoginFailed { member, rv })
    }
    /// Not a seed message: the application's C_Login refused by `member`, the member that
    /// judged it (see [`Event::LoginRefused`]).
    pub fn login_refused(&self, group: &str, member: &str, rv: CK_RV) {
        self.event(group, Event::LoginRefused { member, rv })
    }
    pub fn member_deactivated(&self, group: &str, member: &str) {
        self.event(group, Event::MemberDeactivated { member })
    }
    pub fn member_now_activated(&self, group: &str, attempt: u64, member: &str) {
        self.event(group, Event::MemberNowActivated { attempt, member })
    }
    pub fn member_revoked(&self, group: &str, member: &str) {
        self.event(group, Event::MemberRevoked { member })
    }
    pub fn members_offline(&self, group: &str) {
        self.event(group, Event::MembersOffline)
    }
    pub fn mgmt_thread_start(&self, group: &str) {
        self.event(group, Event::MgmtThreadStart)
    }
    pub fn mgmt_thread_terminate(&self, group: &str) {
        self.event(group, Event::MgmtThreadTerminate)
    }
    pub fn new_member(&self, group: &str, member: &str) {
        self.event(group, Event::NewMember { member })
    }
    pub fn recovered(&self, group: &str, attempt: u64, member: &str) {
        self.event(group, Event::Recovered { attempt, member })
    }
    pub fn reintroducing(&self, group: &str, attempt: u64, count: u64, member: &str) {
        self.event(
            group,
            Event::Reintroducing {
                attempt,
                count,
                member,
            },
        )
    }
    pub fn recovery_failed(&self, group: &str, attempt: u64, member: &str, rv: CK_RV) {
        self.event(
            group,
            Event::RecoveryFailed {
                attempt,
                member,
                rv,
            },
        )
    }
    pub fn recovery_exhausted(&self, group: &str, member: &str) {
        self.event(group, Event::RecoveryExhausted { member })
    }
    pub fn renable_member(&self, group: &str, member: &str) {
        self.event(group, Event::RenableMember { member })
    }
    pub fn unrecoverable(&self, group: &str, attempt: u64, member: &str, rv: CK_RV) {
        self.event(
            group,
            Event::Unrecoverable {
                attempt,
                member,
                rv,
            },
        )
    }
    pub fn member_not_activated(&self, group: &str, member: &str) {
        self.event(group, Event::MemberNotActivated { member })
    }
    pub fn recovery_not_activated(&self, group: &str, member: &str) {
        self.event(group, Event::RecoveryNotActivated { member })
    }
    pub fn recovery_now_activated(&self, group: &str, member: &str) {
        self.event(group, Event::RecoveryNowActivated { member })
    }
    /// Not a seed message: objects a reintroduction could not copy, with the first reason.
    pub fn not_copied(&self, group: &str, attempt: u64, count: u64, member: &str, reason: &str) {
        self.event(
            group,
            Event::NotCopied {
                attempt,
                count,
                member,
                reason,
            },
        )
    }
    /// Not a seed message: a member refused the carrier a key needed (key generation refused).
    pub fn carrier_refused(&self, group: &str, member: &str, carrier: &str) {
        self.event(group, Event::CarrierRefused { member, carrier })
    }
    /// Not a seed message: `member` left the group's configuration.
    pub fn member_removed(&self, group: &str, member: &str) {
        self.event(group, Event::MemberRemoved { member })
    }
    /// Not a seed message: a configuration error (already formatted with file:line: key).
    pub fn config_error(&self, group: &str, message: &str) {
        self.event(group, Event::ConfigError { message })
    }
    /// Not a seed message: see [`Event::MultipartNotReplayed`].
    pub fn multipart_not_replayed(&self, group: &str, member: &str, why: &str) {
        self.event(group, Event::MultipartNotReplayed { member, why })
    }
}
