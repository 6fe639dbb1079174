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
//! waited for at most [`crate::safe_file::LOCK_WAIT`]. Records that could not be written (the
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

pub mod writer;

use crate::config::LogSettings;
use crate::diag::diag;
use crate::rv::rv_code;
use chrono::{DateTime, Local, TimeZone};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use cryptoki_sys::CK_RV;
use parking_lot::Mutex;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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

/// Text from outside the log module, shown with every control character escaped as `\xNN`
/// (`\u{NNNN}` for the Unicode line/paragraph separators), so it cannot break a line.
pub struct Clean<'a>(pub &'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let escape = c.is_control() || c == '\u{2028}' || c == '\u{2029}';
            if escape {
                f.write_str(&s[start..i])?;
                if (c as u32) < 0x100 {
                    write!(f, "\\x{:02x}", c as u32)?;
                } else {
                    write!(f, "\\u{{{:04x}}}", c as u32)?;
                }
                start = i + c.len_utf8();
            }
        }
        f.write_str(&s[start..])
    }
}

/// `CK_RV` as the seed prints it: `0x00000030 : CKR_DEVICE_ERROR`.
struct Code(CK_RV);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rv_code(self.0))
    }
}

/// One HA log message: the catalogue of seed 003 (one variant per message ID) plus p11ha's own
/// `ConfigError`. `Display` writes the text that follows the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// HALOG_CONFIGURED_AS_PASSWORD
    ConfiguredAsPassword,
    /// HALOG_CONFIGURED_AS_PED
    ConfiguredAsPed,
    /// HALOG_DROPMEMBER
    DropMember { member: &'a str },
    /// HALOG_DROPUNRECOVERABLE
    DropUnrecoverable { member: &'a str },
    /// HALOG_LOGINFAILED
    LoginFailed { member: &'a str, rv: CK_RV },
    /// HALOG_MEMBER_DEACTIVATED
    MemberDeactivated { member: &'a str },
    /// HALOG_MEMBER_NOW_ACTIVATED
    MemberNowActivated { attempt: u64, member: &'a str },
    /// HALOG_MEMBER_REVOKED
    MemberRevoked { member: &'a str },
    /// HALOG_MEMBERS_OFFLINE
    MembersOffline,
    /// HALOG_MGMT_THREAD_START
    MgmtThreadStart,
    /// HALOG_MGMT_THREAD_TERMINATE
    MgmtThreadTerminate,
    /// HALOG_NEWMEMBER
    NewMember { member: &'a str },
    /// HALOG_RECOVERED
    Recovered { attempt: u64, member: &'a str },
    /// HALOG_RECOVERY_ATTEMPT_#_REINTRODUCING
    Reintroducing {
        attempt: u64,
        count: u64,
        member: &'a str,
    },
    /// HALOG_RECOVERYFAILED
    RecoveryFailed {
        attempt: u64,
        member: &'a str,
        rv: CK_RV,
    },
    /// HALOG_RECOVERYFAILED, second message (auto-recovery attempts exhausted)
    RecoveryExhausted { member: &'a str },
    /// HALOG_RENABLEMEMBER (deprecated)
    RenableMember { member: &'a str },
    /// HALOG_UNRECOVERABLE (deprecated)
    Unrecoverable {
        attempt: u64,
        member: &'a str,
        rv: CK_RV,
    },
    /// No ID: member not activated at C_Initialize.
    MemberNotActivated { member: &'a str },
    /// No ID: recovery failed (member still not activated).
    RecoveryNotActivated { member: &'a str },
    /// No ID: recovery succeeded (member now activated).
    RecoveryNowActivated { member: &'a str },
    /// p11ha's own: a member left the group's configuration (seed 003: the log shows
    /// "add-member and delete-member events"; it gives a text for the first only).
    MemberRemoved { member: &'a str },
    /// p11ha's own: a configuration error.
    ConfigError { message: &'a str },
    /// p11ha's own: the log or journal directory lets other users interfere (see
    /// [`crate::safe_file::check_dir`]).
    UnsafeDirectory { message: &'a str },
    /// p11ha's own: a multi-part operation of a failed member could not be replayed on another.
    MultipartNotReplayed { member: &'a str, why: &'a str },
    /// p11ha's own: objects a reintroduction could not copy to the member (synchronized groups).
    NotCopied {
        attempt: u64,
        count: u64,
        member: &'a str,
        reason: &'a str,
    },
    /// p11ha's own: a key could not be replicated because a member (or its transport) refused
    /// every mechanism it could travel by (synchronized groups).
    CarrierRefused { member: &'a str, carrier: &'a str },
    /// p11ha's own: the group's audit trail file could not be written (`path`); its records
    /// are held in memory until it can.
    AuditWriteFailed { path: &'a str, why: &'a str },
    /// p11ha's own: the audit trail file is written again after [`Event::AuditWriteFailed`].
    AuditWriteResumed {
        path: &'a str,
        written: u64,
        lost: u64,
    },
    /// p11ha's own: audit records this process could not write before it ended.
    AuditRecordsLost {
        path: &'a str,
        count: u64,
        why: &'a str,
    },
}

impl Event<'_> {
    /// The seed's message ID (`"No ID"` for the three development messages, `"P11HA_CONFIG_ERROR"`
    /// for ours).
    pub fn id(&self) -> &'static str {
        match self {
            Event::ConfiguredAsPassword => "HALOG_CONFIGURED_AS_PASSWORD",
            Event::ConfiguredAsPed => "HALOG_CONFIGURED_AS_PED",
            Event::DropMember { .. } => "HALOG_DROPMEMBER",
            Event::DropUnrecoverable { .. } => "HALOG_DROPUNRECOVERABLE",
            Event::LoginFailed { .. } => "HALOG_LOGINFAILED",
            Event::MemberDeactivated { .. } => "HALOG_MEMBER_DEACTIVATED",
            Event::MemberNowActivated { .. } => "HALOG_MEMBER_NOW_ACTIVATED",
            Event::MemberRevoked { .. } => "HALOG_MEMBER_REVOKED",
            Event::MembersOffline => "HALOG_MEMBERS_OFFLINE",
            Event::MgmtThreadStart => "HALOG_MGMT_THREAD_START",
            Event::MgmtThreadTerminate => "HALOG_MGMT_THREAD_TERMINATE",
            Event::NewMember { .. } => "HALOG_NEWMEMBER",
            Event::Recovered { .. } => "HALOG_RECOVERED",
            Event::Reintroducing { .. } => "HALOG_RECOVERY_ATTEMPT_#_REINTRODUCING",
            Event::RecoveryFailed { .. } | Event::RecoveryExhausted { .. } => {
                "HALOG_RECOVERYFAILED"
            }
            Event::RenableMember { .. } => "HALOG_RENABLEMEMBER",
            Event::Unrecoverable { .. } => "HALOG_UNRECOVERABLE",
            Event::MemberNotActivated { .. }
            | Event::RecoveryNotActivated { .. }
            | Event::RecoveryNowActivated { .. } => "No ID",
            Event::MemberRemoved { .. } => "P11HA_MEMBER_REMOVED",
            Event::ConfigError { .. } => "P11HA_CONFIG_ERROR",
            Event::UnsafeDirectory { .. } => "P11HA_UNSAFE_DIRECTORY",
            Event::MultipartNotReplayed { .. } => "P11HA_MULTIPART_NOT_REPLAYED",
            Event::NotCopied { .. } => "P11HA_NOT_COPIED",
            Event::CarrierRefused { .. } => "P11HA_CARRIER_REFUSED",
            Event::AuditWriteFailed { .. } => "P11HA_AUDIT_WRITE_FAILED",
            Event::AuditWriteResumed { .. } => "P11HA_AUDIT_WRITE_RESUMED",
            Event::AuditRecordsLost { .. } => "P11HA_AUDIT_RECORDS_LOST",
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Event::ConfiguredAsPassword => {
                write!(f, "configured as a \"PASSWORD Based\" virtual device")
            }
            Event::ConfiguredAsPed => write!(f, "configured as a \"PED Based\" virtual device"),
            Event::DropMember { member } => write!(f, "has dropped member: {}", Clean(member)),
            Event::DropUnrecoverable { member } => write!(
                f,
                "unable to reach member: {}. Manual Recover or Auto Recovery will be able to \
                 recover this member",
                Clean(member)
            ),
            Event::LoginFailed { member, rv } => write!(
                f,
                "can not login to member: {}, autorecovery will be disabled. Code: {}",
                Clean(member),
                Code(rv)
            ),
            Event::MemberDeactivated { member } => {
                write!(f, "member: {} deactivated", Clean(member))
            }
            Event::MemberNowActivated { attempt, member } => write!(
                f,
                "recovery attempt {attempt} member {} is now activated and will be reintroduce \
                 back into the HA group.",
                Clean(member)
            ),
            Event::MemberRevoked { member } => write!(f, "member: {} revoked", Clean(member)),
            Event::MembersOffline => write!(f, "all members gone offline."),
            Event::MgmtThreadStart => write!(f, "management thread started"),
            Event::MgmtThreadTerminate => write!(f, "management thread terminated"),
            Event::NewMember { member } => {
                write!(f, "detected new member member: {}", Clean(member))
            }
            Event::Recovered { attempt, member } => write!(
                f,
                "recovery attempt {attempt} succeeded for member: {}",
                Clean(member)
            ),
            Event::Reintroducing {
                attempt,
                count,
                member,
            } => write!(
                f,
                "recovery attempt {attempt} reintroducing {count} token objects to recovered \
                 token {}",
                Clean(member)
            ),
            Event::RecoveryFailed {
                attempt,
                member,
                rv,
            } => write!(
                f,
                "recovery attempt {attempt} failed for member: {}. Code: {}.",
                Clean(member),
                Code(rv)
            ),
            Event::RecoveryExhausted { member } => write!(
                f,
                "exceeded maximum number of autorecovery attempts for member: {}. Autorecovery \
                 will be disabled",
                Clean(member)
            ),
            Event::RenableMember { member } => write!(
                f,
                "Re-enable auto recovery process for member: {}",
                Clean(member)
            ),
            Event::Unrecoverable {
                attempt,
                member,
                rv,
            } => write!(
                f,
                "recovery attempt {attempt} failed for member: {}. Manual Recover or Auto \
                 Recovery will not be able to recover this member. Code: {}",
                Clean(member),
                Code(rv)
            ),
            Event::MemberNotActivated { member } => write!(
                f,
                "member {} is not activated and is excluded from the HA group",
                Clean(member)
            ),
            Event::RecoveryNotActivated { member } => write!(
                f,
                "recovery attempt {} is not activated and cannot be reintroduced back into the \
                 HA group",
                Clean(member)
            ),
            Event::RecoveryNowActivated { member } => write!(
                f,
                "recovery attempt {} is now activated and will be reintroduce back into the HA \
                 group.",
                Clean(member)
            ),
            Event::MemberRemoved { member } => write!(
                f,
                "removed member: {} (no longer in the configuration)",
                Clean(member)
            ),
            Event::ConfigError { message } => {
                write!(f, "configuration error: {}", Clean(message))
            }
            Event::UnsafeDirectory { message } => write!(f, "warning: {}", Clean(message)),
            Event::MultipartNotReplayed { member, why } => write!(
                f,
                "multi-part operation of failed member: {} not replayed ({}); the application gets CKR_DEVICE_ERROR",
                Clean(member),
                Clean(why)
            ),
            Event::NotCopied {
                attempt,
                count,
                member,
                reason,
            } => write!(
                f,
                "recovery attempt {attempt} could not copy {count} token objects to recovered \
                 token {}. First: {}",
                Clean(member),
                Clean(reason)
            ),
            Event::CarrierRefused { member, carrier } => write!(
                f,
                "member: {} refused {}, the only mechanism a private key travels by: key \
                 generation refused (see p11ha synchronize -check)",
                Clean(member),
                Clean(carrier)
            ),
            Event::AuditWriteFailed { path, why } => write!(
                f,
                "audit trail write failed: {}: {}; its records are held in memory and written \
                 when the file can be written again",
                Clean(path),
                Clean(why)
            ),
            Event::AuditWriteResumed {
                path,
                written,
                lost,
            } => write!(
                f,
                "audit trail written again: {}: {written} records written, {lost} lost while \
                 it could not be (recorded as AUDIT_RECORDS_LOST)",
                Clean(path)
            ),
            Event::AuditRecordsLost { path, count, why } => write!(
                f,
                "audit trail: {count} records could not be written to {}: {}",
                Clean(path),
                Clean(why)
            ),
        }
    }
}

/// The seed prefix: `Wed Oct  4 16:29:21 2017 : [17469] HA group: 11234840370164 ` (ctime layout,
/// day of month space-padded to two columns, trailing space included). A record about no group
/// (`group` empty: a configuration error, a warning about the log directory) reads
/// `Wed Oct  4 16:29:21 2017 : [17469] HA configuration error: ...` instead of showing an empty
/// group serial.
pub fn prefix<Tz: TimeZone>(time: &DateTime<Tz>, pid: u32, group: &str) -> String
where
    Tz::Offset: fmt::Display,
{
    let time = time.format("%a %b %e %H:%M:%S %Y");
    if group.is_empty() {
        return format!("{time} : [{pid}] HA ");
    }
    format!("{time} : [{pid}] HA group: {} ", Clean(group))
}

/// One complete record: prefix, event text and the terminating `\n`.
pub fn format_line<Tz: TimeZone>(
    time: &DateTime<Tz>,
    pid: u32,
    group: &str,
    event: &Event<'_>,
) -> String
where
    Tz::Offset: fmt::Display,
{
    let mut line = prefix(time, pid, group);
    use fmt::Write as _;
    let _ = writeln!(line, "{event}");
    line
}

/// The line the writer adds after records were dropped: `why` is `queue full`, or why they
/// could not be written (the lock held by another process for too long, a refused file).
fn dropped_line(count: u64, why: &str) -> String {
    format!(
        "{} : [{}] HA log: {count} records dropped ({})\n",
        Local::now().format("%a %b %e %H:%M:%S %Y"),
        std::process::id(),
        Clean(why)
    )
}

enum Msg {
    Record(String),
    Flush(Sender<()>),
}

/// Writes lines to the file (and stdout when configured); shared by the writer thread and the
/// synchronous path.
struct Sink {
    file: LogFile,
    to_stdout: bool,
    /// `haLogToSyslog`: the syslog socket every line is also sent to.
    syslog: Option<std::path::PathBuf>,
    /// A write error was reported on stderr already (report the first one only).
    error_reported: bool,
    /// Records that could not be written since the last write that succeeded, and why: the next
    /// write that succeeds starts with one line saying so.
    lost: u64,
    lost_why: String,
}

impl Sink {
    fn write(&mut self, batch: &[String]) {
        if batch.is_empty() {
            return;
        }
        let result = if self.lost > 0 {
            let mut all = Vec::with_capacity(batch.len() + 1);
            all.push(dropped_line(self.lost, &self.lost_why));
            all.extend_from_slice(batch);
            self.file.append(&all)
        } else {
            self.file.append(batch)
        };
        match result {
            Ok(()) => self.lost = 0,
            Err(e) => {
                self.lost += batch.len() as u64;
                self.lost_why = e.to_string();
                if !self.error_reported {
                    self.error_reported = true;
                    diag!(
                        Error,
                        "HA log write failed: {}: {e}; records are dropped and counted",
                        self.file.dir().display()
                    );
                }
            }
        }
        if let Some(socket) = &self.syslog {
            crate::audit::syslog::send(crate::audit::syslog::Source::HaLog, socket, batch);
        }
        if self.to_stdout {
            let mut all = String::with_capacity(batch.iter().map(String::len).sum());
            batch.iter().for_each(|l| all.push_str(l));
            let _ = std::io::stdout().lock().write_all(all.as_bytes());
        }
    }

    fn sync(&mut self) {
        let _ = self.file.sync();
        if self.to_stdout {
            let _ = std::io::stdout().lock().flush();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // The file never got the count: say it where it can still be seen.
        if self.lost > 0 {
            diag!(
                Warn,
                "HA log {}: {} records dropped ({})",
                self.file.dir().display(),
                self.lost,
                self.lost_why
            );
        }
    }
}

struct Inner {
    sink: Arc<Mutex<Sink>>,
    /// `None` = synchronous mode.
    queue: Option<Queue>,
}

struct Queue {
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    dropped: Arc<AtomicU64>,
    started: AtomicBool,
    /// The background thread, started with the first record.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The thread could not be started: write synchronously.
    no_thread: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: disconnect the queue (the writer drains what is left, then its
        // `recv` fails) and wait for the writer.
        if let Some(q) = self.queue.as_mut() {
            if let Some(handle) = q.thread.lock().take() {
                q.tx = crossbeam_channel::bounded(0).0;
                let _ = handle.join();
            }
        }
    }
}

fn writer_thread(rx: Receiver<Msg>, sink: Arc<Mutex<Sink>>, dropped: Arc<AtomicU64>) {
    let mut batch: Vec<String> = Vec::new();
    let mut acks: Vec<Sender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Take everything queued so far (bounded, so a flood cannot starve flush waiters).
        while let Some(msg) = next {
            match msg {
                Msg::Record(line) => batch.push(line),
                Msg::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() < 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(dropped_line(lost, "queue full"));
        }
        let mut sink = sink.lock();
        sink.write(&batch);
        batch.clear();
        if !acks.is_empty() {
            sink.sync();
            drop(sink);
            acks.drain(..).for_each(|ack| {
                let _ = ack.send(());
            });
        }
    }
}

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

/// Writes what is queued on the caller's thread (no writer thread could be started).
fn drain_sync(q: &Queue, sink: &mut Sink) {
    let mut batch = Vec::new();
    while let Ok(msg) = q.rx.try_recv() {
        if let Msg::Record(line) = msg {
            batch.push(line);
        }
    }
    let lost = q.dropped.swap(0, Ordering::Relaxed);
    if lost > 0 {
        batch.push(dropped_line(lost, "queue full"));
    }
    sink.write(&batch);
}

fn start_writer(inner: &Inner, q: &Queue) {
    let mut thread = q.thread.lock();
    if q.started.load(Ordering::Acquire) {
        return;
    }
    let rx = q.rx.clone();
    let sink = inner.sink.clone();
    let dropped = q.dropped.clone();
    match std::thread::Builder::new()
        .name("p11ha-halog".into())
        .spawn(move || writer_thread(rx, sink, dropped))
    {
        Ok(handle) => *thread = Some(handle),
        Err(_) => q.no_thread.store(true, Ordering::Release),
    }
    q.started.store(true, Ordering::Release);
}
