//! The bounded waits on a lock file: `flock` tried with `LOCK_NB` and polled until
//! [`LOCK_WAIT`], then [`STUCK_WAIT`] only while the holder has not let go (see the module docs
//! of [`super`]).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for a lock held by someone else. p11ha's own holders keep these locks for one
/// `write` of a batch of records, one rename or one read of a small journal: microseconds, a
/// few milliseconds on a loaded machine. 2 s is hundreds of times that, and short enough that a
/// C_Initialize or C_Finalize stalled by a holder that never lets go stays a nuisance, not a
/// hang.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The wait for a lock that was held too long last time: enough for another p11ha process's
/// write, not enough to add up when every record of a C_Finalize tries.
pub const STUCK_WAIT: Duration = Duration::from_millis(20);

/// Longest sleep between two lock attempts (after a few yields, they start at 50 µs and
/// double).
const MAX_POLL_SLEEP: Duration = Duration::from_millis(20);

/// Shared (readers) or exclusive (writers) `flock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// The bounded waits on one lock file (see the module docs).
pub struct Locker {
    /// The lock file's name, for messages.
    name: String,
    /// The last wait ran out: wait [`STUCK_WAIT`] only, until an attempt succeeds.
    stuck: AtomicBool,
}

/// A `flock` held, released on drop.
pub struct Held<'a>(&'a File);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor the borrow keeps open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Locker {
    pub fn new(name: impl Into<String>) -> Locker {
        Locker {
            name: name.into(),
            stuck: AtomicBool::new(false),
        }
    }

    /// Locks `file` within [`LOCK_WAIT`] ([`STUCK_WAIT`] while stuck). Running out is an error
    /// of kind `TimedOut`.
    pub fn lock<'a>(&self, file: &'a File, kind: LockKind) -> io::Result<Held<'a>> {
        let stuck = self.stuck.load(Ordering::Relaxed);
        let wait = if stuck { STUCK_WAIT } else { LOCK_WAIT };
        match lock_within(file, kind, wait) {
            Ok(true) => {
                self.stuck.store(false, Ordering::Relaxed);
                Ok(Held(file))
            }
            Ok(false) => {
                self.stuck.store(true, Ordering::Relaxed);
                let message = if stuck {
                    format!("the lock on {} is still held by another process", self.name)
                } else {
                    format!(
                        "the lock on {} was held by another process for longer than {} s",
                        self.name,
                        LOCK_WAIT.as_secs()
                    )
                };
                Err(io::Error::new(io::ErrorKind::TimedOut, message))
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot lock {}: {e}", self.name),
            )),
        }
    }
}

/// `flock` with `LOCK_NB`, polled with growing sleeps until `wait` has passed. `Ok(false)`: the
/// lock was still held by someone else.
fn lock_within(file: &File, kind: LockKind, wait: Duration) -> io::Result<bool> {
    let op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(50);
    let mut spins = 0;
    loop {
        // SAFETY: flock on a descriptor the caller keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {}
            _ => return Err(err),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        // A holder that is another p11ha writer lets go within microseconds: yield a few
        // times before sleeping.
        if spins < 8 {
            spins += 1;
            std::thread::yield_now();
            continue;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL_SLEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safe_file::{open, Access};

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_held_lock_is_waited_for_once_then_only_briefly() {
        let d = dir();
        let p = d.path().join("lock");
        // flock belongs to the open file: a second open conflicts even in this process.
        let holder = open(&p, Access::ReadWrite).unwrap();
        let ours = open(&p, Access::ReadWrite).unwrap();
        assert!(lock_within(&holder, LockKind::Exclusive, Duration::ZERO).unwrap());
        let locker = Locker::new("lock");

        let t = Instant::now();
        let e = locker.lock(&ours, LockKind::Shared).err().unwrap();
        assert!(t.elapsed() >= LOCK_WAIT, "gave up after {:?}", t.elapsed());
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            e.to_string(),
            "the lock on lock was held by another process for longer than 2 s"
        );

        let t = Instant::now();
        let e = locker.lock(&ours, LockKind::Exclusive).err().unwrap();
        assert!(t.elapsed() < LOCK_WAIT, "waited again: {:?}", t.elapsed());
        assert_eq!(
            e.to_string(),
            "the lock on lock is still held by another process"
        );

        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_UN) };
        let held = locker.lock(&ours, LockKind::Exclusive).unwrap();
        assert!(!locker.stuck.load(Ordering::Relaxed));
        assert!(!lock_within(&holder, LockKind::Shared, Duration::ZERO).unwrap());
        drop(held);
        assert!(lock_within(&holder, LockKind::Shared, Duration::ZERO).unwrap());
    }
}
