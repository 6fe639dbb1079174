//! The HA groups' audit trail (issue 15; the full description is docs/AUDIT.md): one record per
//! event on one line, numbered without gaps per group on this host, chained with SHA-256 and
//! sealed with HMAC-SHA256 under an audit key that only the members hold. `haErrorLog.txt`
//! ([`crate::halog`]) is separate and unchanged.
//!
//! - [`event`]: what is recorded (opcodes, fields; identities and attribute *types* only);
//! - [`record`]: the line layout, written and read back;
//! - [`chain`]: the hash chain and which records get a MAC of their own;
//! - [`seal`]: the audit key and the MACs computed by members;
//! - [`stream`]: the files, the lock and state shared by every process, rotation, retention,
//!   clear;
//! - [`verify`]: reading the files back: `show`, `verify`; [`follow`]: reading them live;
//! - [`crate::halog::syslog`]: the optional copy to syslog/journald (it serves both logs, so it
//!   lives with the HA log, which the audit trail builds on);
//! - `hooks`: where the HA core hands events over (one line each in the core).
//!
//! The application's thread only takes the time and its thread id and puts the record on a
//! bounded queue ([`QUEUE_CAPACITY`]); one writer thread per group numbers, formats, chains,
//! seals and writes. A full queue never blocks the application: the record is counted, and the
//! next record written is `AUDIT_RECORDS_LOST count=N`, which `verify` reports. A file that
//! cannot be written (a full file system, the directory gone) holds the records in memory, to
//! be written when it can again, and the group's HA log says so with the file's path; what a
//! process could still not write when it ended is counted in the stream's state for the next
//! writer to record (docs/AUDIT.md, "When a record cannot be written"). When the application
//! forbids threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`) the caller's thread writes.

pub mod chain;
pub mod event;
pub mod follow;
mod hooks;
pub mod names;
pub mod record;
pub mod seal;
pub mod stream;
pub mod verify;

pub use event::{Event, ObjectId, Op};
pub use hooks::{
    config_refused, config_reread, finalizing, member_added, member_dropped, member_recovered,
    member_removed, reintroduced, session_closing, session_opened,
};

use crate::config::HaConfig;
use crate::diag::diag;
use crate::halog::{syslog, Event as HaEvent, HaLog};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use record::Raw;
use seal::{Pool, Sealer};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use stream::Stream;

/// Records the queue holds before new ones are counted as lost.
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// Longest wait of [`Audit::flush`] (C_Finalize).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the records to be sealed before a login ends (C_Logout, the group's last
/// C_CloseSession, C_Finalize): after it, the members no longer compute MACs for this process.
pub const SEAL_WAIT: Duration = Duration::from_secs(2);
/// How often the writer tries again to take a lock another process holds.
const RETRY: Duration = Duration::from_millis(100);
/// Most records one write takes from the queue.
const BATCH: usize = 1024;
/// How long the writer waits for more records after the first of a batch: each write costs the
/// stream lock, the state file and a member session for the MACs, so records that come in a
/// burst share one. A flush ends the wait at once.
const GATHER: Duration = Duration::from_millis(5);

/// The correlation id of an application session: 32 bits of a keyed mix of the process id and
/// the session handle, so two sessions (of this process, or of another one) almost never share
/// one, and the handle cannot be read back from it.
pub fn cid(session: cryptoki_sys::CK_SESSION_HANDLE) -> u32 {
    static SALT: OnceLock<u64> = OnceLock::new();
    let salt = *SALT.get_or_init(|| {
        let mut b = [0u8; 8];
        // SAFETY: getrandom fills at most `b.len()` bytes of `b`.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n == 8 {
            u64::from_ne_bytes(b)
        } else {
            record::now_micros() as u64
        }
    });
    let mut z = salt ^ (u64::from(std::process::id()) << 40) ^ session;
    // splitmix64's finalizer.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z as u32) | 1
}

enum Msg {
    Record(Raw, Option<Pool>),
    Flush(Sender<()>),
}

/// Formats, seals and writes; owned by the writer thread (or, without threads, locked by the
/// caller).
struct Writer {
    stream: Stream,
    sealer: Sealer,
    /// `haLogToSyslog`: the socket every record written is also sent to.
    syslog: Option<PathBuf>,
    /// The group's HA log, where a file that cannot be written is said (with its path).
    log: HaLog,
    serial: String,
    /// Records not written yet, oldest first (the file could not be written, or another process
    /// held the lock too long); at most [`QUEUE_CAPACITY`] and one `AUDIT_RECORDS_LOST` for the
    /// ones beyond.
    held: Vec<Raw>,
    /// The file cannot be written since the HA log said why; records lost meanwhile.
    outage: Option<u64>,
}

/// `AUDIT_RECORDS_LOST count=count why=why`.
fn lost_record(count: u64, why: &str) -> Raw {
    Raw::now(
        Op::RecordsLost,
        cryptoki_sys::CKR_OK,
        0,
        Vec::new(),
        Event::RecordsLost {
            count,
            why: why.into(),
        },
    )
}

/// How many records `raws` stand for (an `AUDIT_RECORDS_LOST` for its count).
fn count_of(raws: &[Raw]) -> u64 {
    raws.iter()
        .map(|r| match r.event {
            Event::RecordsLost { count, .. } => count,
            _ => 1,
        })
        .sum()
}

impl Writer {
    /// Writes what is held, then `raws`; `queue_lost` records were dropped at a full queue.
    /// What cannot be written is held for the next try; on the `last_try` (the process ends)
    /// it is lost, and the stream's state says so for the next writer.
    fn write(&mut self, raws: Vec<Raw>, pool: Option<&Pool>, queue_lost: u64, last_try: bool) {
        let mut all = std::mem::take(&mut self.held);
        if queue_lost > 0 {
            all.push(lost_record(queue_lost, "queue full"));
        }
        all.extend(raws);
        if all.is_empty() {
            return;
        }
        let Writer { stream, sealer, .. } = self;
        let result = stream.append(&all, &mut |h| sealer.mac(pool, h));
        sealer.end_batch();
        let path = self.stream.current_path().display().to_string();
        let (written, failure) = match result {
            Ok(lines) => (lines, None),
            Err(e) => (e.written, Some((e.error, e.unwritten))),
        };
        if let Some(socket) = &self.syslog {
            syslog::send(syslog::Source::Audit, socket, &written);
        }
        let Some((error, unwritten)) = failure else {
            if let Some(lost) = self.outage.take() {
                self.log.event(
                    &self.serial,
                    HaEvent::AuditWriteResumed {
                        path: &path,
                        written: written.len() as u64,
                        lost,
                    },
                );
            }
            return;
        };
        let why = error.to_string();
        // Another process holding the lock is no failure of the file.
        if error.kind() != std::io::ErrorKind::TimedOut && self.outage.is_none() {
            self.outage = Some(0);
            diag!(Error, "audit trail write failed: {path}: {why}");
            self.log.event(
                &self.serial,
                HaEvent::AuditWriteFailed {
                    path: &path,
                    why: &why,
                },
            );
        }
        if last_try {
            let count = count_of(&unwritten);
            let noted = match self.stream.note_lost(count, &why) {
                Ok(()) => "the next record written says so".to_string(),
                Err(e) => format!("not noted in the stream's state either: {e}"),
            };
            let why = format!("{why}; {noted}");
            diag!(
                Error,
                "audit trail {path}: {count} records could not be written: {why}"
            );
            self.log.event(
                &self.serial,
                HaEvent::AuditRecordsLost {
                    path: &path,
                    count,
                    why: &why,
                },
            );
            return;
        }
        self.held = unwritten;
        if self.held.len() > QUEUE_CAPACITY {
            let excess = self.held.len() - QUEUE_CAPACITY;
            let n = count_of(&self.held[..excess]);
            self.held.drain(..excess);
            self.held.insert(0, lost_record(n, &why));
            if let Some(lost) = &mut self.outage {
                *lost += n;
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Without a writer thread nothing tried the held records a last time.
        if !self.held.is_empty() {
            self.write(Vec::new(), None, 0, true);
        }
    }
}

enum Out {
    Thread {
        tx: Sender<Msg>,
        dropped: Arc<AtomicU64>,
        handle: Option<JoinHandle<()>>,
    },
    Inline(Box<Mutex<Writer>>),
}

struct Inner {
    serial: String,
    key_use: bool,
    /// The configuration last seen, for `CONFIG_RELOADED`.
    config: Mutex<HaConfig>,
    /// C_Finalize recorded: the sessions it closes are not recorded one by one.
    finalizing: AtomicBool,
    out: Out,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Out::Thread { tx, handle, .. } = &mut self.out {
            // Disconnect the queue: the writer writes what is left, then stops.
            *tx = crossbeam_channel::bounded(0).0;
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

fn writer_thread(rx: Receiver<Msg>, mut w: Writer, dropped: Arc<AtomicU64>) {
    let mut open = true;
    while open {
        let first = if w.held.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RETRY)
        };
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut pool = None;
        let mut next = match first {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                open = false;
                None
            }
        };
        let until = std::time::Instant::now() + GATHER;
        while let Some(msg) = next {
            match msg {
                Msg::Record(raw, p) => {
                    batch.push(raw);
                    pool = p.or(pool);
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() >= BATCH {
                None
            } else if !acks.is_empty() || !open {
                rx.try_recv().ok()
            } else {
                match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) => rx.recv_deadline(until).ok(),
                }
            };
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        w.write(batch, pool.as_ref(), lost, !open);
        // The pool holds members (and their module instances): not longer than a batch.
        drop(pool);
        acks.into_iter().for_each(|a| {
            let _ = a.send(());
        });
    }
}

/// A group's audit trail; cheap to clone; a disabled one accepts every call and writes nothing.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

impl Audit {
    pub fn disabled() -> Audit {
        Audit { inner: None }
    }

    /// Opens group `serial`'s trail per `cfg.audit` and records `C_Initialize`. An unusable
    /// directory or file ([`crate::safe_file`]) prints one line on stderr and gives a disabled
    /// trail. Never waits for the lock. `log`: the group's HA log, which says when the file
    /// cannot be written.
    pub fn open(cfg: &HaConfig, serial: &str, log: &HaLog) -> Audit {
        let s = &cfg.audit;
        let (true, Some(dir)) = (s.enabled, s.dir.as_deref()) else {
            return Audit::disabled();
        };
        let stream = match Stream::open(dir, serial, s.max_len, s.retain) {
            Ok(st) => st,
            Err(reason) => {
                diag!(
                    Error,
                    "audit trail of group {serial} disabled: {}: {reason}",
                    dir.display()
                );
                return Audit::disabled();
            }
        };
        if let Some(w) = stream.warning().filter(|w| crate::safe_file::is_new(w)) {
            diag!(Warn, "audit directory {w}");
        }
        let writer = Writer {
            stream,
            sealer: Sealer::new(serial),
            syslog: s.to_syslog.then(|| s.syslog_socket.clone()),
            log: log.clone(),
            serial: serial.to_string(),
            held: Vec::new(),
            outage: None,
        };
        let out = if crate::bounded::is_inline() {
            Out::Inline(Box::new(Mutex::new(writer)))
        } else {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
            let dropped = Arc::new(AtomicU64::new(0));
            let d = dropped.clone();
            // The writer moves into the thread; if it cannot start, it comes back.
            let cell = Arc::new(Mutex::new(Some(writer)));
            let c = cell.clone();
            let spawned = std::thread::Builder::new()
                .name("p11ha-audit".into())
                .spawn(move || {
                    crate::bounded::mark_own_thread();
                    let w = c.lock().take();
                    if let Some(w) = w {
                        writer_thread(rx, w, d);
                    }
                });
            match spawned {
                Ok(handle) => Out::Thread {
                    tx,
                    dropped,
                    handle: Some(handle),
                },
                Err(_) => match cell.lock().take() {
                    Some(w) => Out::Inline(Box::new(Mutex::new(w))),
                    None => return Audit::disabled(),
                },
            }
        };
        let audit = Audit {
            inner: Some(Arc::new(Inner {
                serial: serial.to_string(),
                key_use: s.key_use,
                config: Mutex::new(cfg.clone()),
                finalizing: AtomicBool::new(false),
                out,
            })),
        };
        audit.push(
            Raw::now(
                Op::Initialize,
                cryptoki_sys::CKR_OK,
                0,
                Vec::new(),
                Event::Initialize {
                    config: cfg.path.display().to_string(),
                },
            ),
            None,
        );
        audit
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether key use is recorded too (`haAuditKeyUse`).
    pub fn key_use(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.key_use)
    }

    /// The group serial the trail is for.
    pub fn serial(&self) -> Option<&str> {
        self.inner.as_deref().map(|i| i.serial.as_str())
    }

    /// Hands a record over: on the queue (never blocking; a full queue counts it as lost), or
    /// written here when there is no writer thread. `pool`: the members that may seal it.
    pub(crate) fn push(&self, raw: Raw, pool: Option<Pool>) {
        let Some(inner) = &self.inner else { return };
        match &inner.out {
            Out::Thread { tx, dropped, .. } => match tx.try_send(Msg::Record(raw, pool)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
            Out::Inline(w) => w.lock().write(vec![raw], pool.as_ref(), 0, false),
        }
    }

    /// Records an event from outside the HA core (a tool, a benchmark): what the core's hooks
    /// do, without members to seal it (the next sealed record seals it through the chain).
    pub fn record_event(&self, op: Op, rv: cryptoki_sys::CK_RV, cid: u32, event: Event) {
        self.push(Raw::now(op, rv, cid, Vec::new(), event), None);
    }

    /// Waits until every record handed over so far is written (and sealed where a member
    /// could), at most `timeout`. Returns whether it was.
    pub fn flush_within(&self, timeout: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        match &inner.out {
            Out::Thread { tx, .. } => {
                let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
                tx.send_timeout(Msg::Flush(ack_tx), timeout).is_ok()
                    && ack_rx.recv_timeout(timeout).is_ok()
            }
            Out::Inline(_) => true,
        }
    }

    /// [`Audit::flush_within`] [`FLUSH_TIMEOUT`].
    pub fn flush(&self) {
        self.flush_within(FLUSH_TIMEOUT);
    }

    /// Records dropped at a full queue and not yet written as `AUDIT_RECORDS_LOST`.
    pub fn dropped_pending(&self) -> u64 {
        match self.inner.as_deref().map(|i| &i.out) {
            Some(Out::Thread { dropped, .. }) => dropped.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    fn is_finalizing(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.finalizing.load(Ordering::Acquire))
    }

    fn set_finalizing(&self) {
        if let Some(i) = &self.inner {
            i.finalizing.store(true, Ordering::Release);
        }
    }

    /// Replaces the configuration last seen; returns the one before.
    fn swap_config(&self, cfg: &HaConfig) -> Option<HaConfig> {
        let inner = self.inner.as_ref()?;
        Some(std::mem::replace(&mut *inner.config.lock(), cfg.clone()))
    }
}
