//! Bounded calls: run a closure on a pool thread and wait for it at most a deadline.
//!
//! A member module can block a thread forever (a SIGSTOPped p11-kit server, or p11-kit-client
//! stuck in pthread_cond_wait after its server was killed: REFERENCE §3). The only way to give the
//! application its thread back is to make the member call on another thread. Closures must own
//! everything they touch: after a timeout the caller is gone, and a late-returning call may only
//! write into memory the closure owns.

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a bounded call gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// No answer within the deadline; the call may still be running.
    TimedOut,
    /// The call panicked (caught on its thread: a panic never takes a worker or the caller down).
    Panicked,
}

struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    /// Workers waiting for a job and not yet reserved by a submitter.
    idle: AtomicUsize,
    /// Workers that were started and have not exited (includes hung ones).
    alive: AtomicUsize,
}

/// How long an idle worker waits before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// How long a waiting side (the caller for its result, a worker for its next job) polls,
/// yielding the CPU between polls, before it sleeps on the channel. A member call usually
/// answers, and an application's next call (C_Sign after C_SignInit) usually follows, within
/// tens of microseconds; waking a thread that went to sleep costs about as much again on a
/// virtual machine (measured by p11ha-bench: +45 µs per two-call operation without this).
/// Yielding, not busy spinning, lets runnable application threads have the CPU.
const SPIN: Duration = Duration::from_micros(100);

/// Callers, and idle workers, polling now. At most one of each polls at a time, so that pollers
/// never crowd out the threads doing work on a small machine (the others sleep at once instead;
/// p11ha-bench measured one poller per CPU as slower on 2 CPUs).
static POLLING_CALLERS: AtomicUsize = AtomicUsize::new(0);
static POLLING_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Polls `rx` for up to `limit` (yielding between polls) unless another thread of the same
/// kind is polling already; None when nothing came.
fn poll<T>(rx: &Receiver<T>, limit: Duration, polling: &AtomicUsize) -> Option<T> {
    if let Ok(v) = rx.try_recv() {
        return Some(v);
    }
    if polling
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    let start = std::time::Instant::now();
    let got = loop {
        std::thread::yield_now();
        if let Ok(v) = rx.try_recv() {
            break Some(v);
        }
        if start.elapsed() >= limit {
            break None;
        }
    };
    polling.store(0, Ordering::Release);
    got
}

/// The pool of this process. A forked child starts a new one: the parent's threads do not
/// exist there (see [`forget_after_fork`]).
static POOL: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());
/// Set when the application forbids thread creation (CKF_LIBRARY_CANT_CREATE_OS_THREADS).
static INLINE: AtomicBool = AtomicBool::new(false);

fn pool() -> &'static Pool {
    let p = POOL.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: pools are leaked, never freed.
        return unsafe { &*p };
    }
    let (tx, rx) = unbounded();
    let fresh = Box::into_raw(Box::new(Pool {
        tx,
        rx,
        idle: AtomicUsize::new(0),
        alive: AtomicUsize::new(0),
    }));
    match POOL.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just leaked above.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never shared; `winner` is leaked and lives forever.
            unsafe {
                drop(Box::from_raw(fresh));
                &*winner
            }
        }
    }
}

/// In a forked child: the parent's pool threads are gone, so the next call starts a new pool.
/// The old one is leaked, untouched (its locks may have been held at the fork).
pub fn forget_after_fork() {
    POOL.store(std::ptr::null_mut(), Ordering::Release);
}

/// With `true`, calls run on the caller's thread without a deadline.
pub fn set_inline(inline: bool) {
    INLINE.store(inline, Ordering::Relaxed);
}

pub fn is_inline() -> bool {
    INLINE.load(Ordering::Relaxed)
}

/// Threads started for member calls that are alive now (idle, busy or hung).
pub fn worker_count() -> usize {
    let p = POOL.load(Ordering::Acquire);
    // SAFETY: pools are leaked, never freed.
    unsafe { p.as_ref() }.map_or(0, |p| p.alive.load(Ordering::Relaxed))
}

/// Runs `f` and returns its result, or why there is none: it did not return within `timeout`
/// (it then finishes, or not, on its own), or it panicked.
pub fn run<T, F>(timeout: Duration, f: F) -> Result<T, Stalled>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if is_inline() {
        return catch_unwind(AssertUnwindSafe(|| without_sigpipe(f)))
            .map_err(|_| Stalled::Panicked);
    }
    match start(f).wait(timeout) {
        Ok(v) => Ok(v),
        Err(Unfinished::Running(_)) => Err(Stalled::TimedOut),
        Err(Unfinished::Panicked) => Err(Stalled::Panicked),
    }
}

/// A call started on the pool; wait for it as often as needed.
pub struct Pending<T> {
    rx: Receiver<T>,
}

/// A call that has no result (yet).
pub enum Unfinished<T> {
    /// Still running after the wait: wait again, or drop it to abandon the result.
    Running(Pending<T>),
    /// It panicked; there will be no result.
    Panicked,
}

impl<T> Pending<T> {
    /// The result, or what became of the call after `timeout`.
    pub fn wait(self, timeout: Duration) -> Result<T, Unfinished<T>> {
        let start = std::time::Instant::now();
        if let Some(v) = poll(&self.rx, SPIN.min(timeout), &POLLING_CALLERS) {
            return Ok(v);
        }
        match self
            .rx
            .recv_timeout(timeout.saturating_sub(start.elapsed()))
        {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(Unfinished::Running(self)),
            // The job's sender is dropped without a value only when the job panicked.
            Err(RecvTimeoutError::Disconnected) => Err(Unfinished::Panicked),
        }
    }
}

/// Starts `f` on the pool (inline when threads are forbidden) and returns at once.
pub fn start<T, F>(f: F) -> Pending<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (done_tx, done_rx) = bounded(1);
    let job = move || {
        // A panic drops the sender unsent, which the waiting side reads as `Panicked`. The
        // receiver is gone after a timeout; the result is dropped then.
        if let Ok(v) = catch_unwind(AssertUnwindSafe(f)) {
            let _ = done_tx.send(v);
        }
    };
    if is_inline() {
        without_sigpipe(job);
    } else {
        submit(Box::new(job));
    }
    Pending { rx: done_rx }
}

fn submit(job: Job) {
    let p = pool();
    let reserved = p
        .idle
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok();
    if !reserved {
        spawn_worker(p);
    }
    // The pool lives for the process; the channel never disconnects.
    let _ = p.tx.send(job);
}

fn spawn_worker(p: &'static Pool) {
    p.alive.fetch_add(1, Ordering::Relaxed);
    let rx = p.rx.clone();
    let spawned = std::thread::Builder::new()
        .name("p11ha-call".into())
        .spawn(move || worker(p, rx));
    if spawned.is_err() {
        // No thread: run queued jobs here rather than leave the caller waiting for nobody.
        p.alive.fetch_sub(1, Ordering::Relaxed);
        if let Ok(job) = p.rx.try_recv() {
            job();
        }
    }
}

/// Keeps SIGPIPE from a member's dead socket (p11-kit-client writes without MSG_NOSIGNAL) from
/// killing the application: a blocked synchronous signal stays pending on this thread and the
/// write fails with EPIPE instead.
fn block_sigpipe() {
    // SAFETY: plain libc calls on a local signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs `f` on the caller's thread with SIGPIPE blocked, discarding one it raised.
fn without_sigpipe<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain libc calls on local signal sets; the old mask is restored.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = f();
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGPIPE {}
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

fn worker(p: &'static Pool, rx: Receiver<Job>) {
    block_sigpipe();
    loop {
        let next = match poll(&rx, SPIN, &POLLING_WORKERS) {
            Some(job) => Ok(job),
            None => rx.recv_timeout(IDLE_EXIT),
        };
        match next {
            Ok(job) => {
                job();
                p.idle.fetch_add(1, Ordering::AcqRel);
            }
            Err(_) => {
                // Exit only if no submitter has reserved this worker meanwhile.
                if p.idle
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    p.alive.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value() {
        assert_eq!(run(Duration::from_secs(5), || 41 + 1), Ok(42));
    }

    #[test]
    fn a_hung_call_times_out_and_later_calls_still_run() {
        let (release_tx, release_rx) = bounded::<()>(1);
        let t0 = std::time::Instant::now();
        let r = run(Duration::from_millis(100), move || {
            let _ = release_rx.recv();
            1
        });
        assert_eq!(r, Err(Stalled::TimedOut));
        assert!(t0.elapsed() < Duration::from_secs(2));
        // The hung worker is busy; a new call must get another thread.
        assert_eq!(run(Duration::from_secs(5), || 7), Ok(7));
        release_tx.send(()).unwrap();
    }

    #[test]
    fn a_panicking_call_is_reported_as_such_and_its_worker_lives_on() {
        let r: Result<u8, Stalled> = run(Duration::from_secs(5), || panic!("hostile length"));
        assert_eq!(r, Err(Stalled::Panicked), "a panic is not a timeout");
        assert_eq!(run(Duration::from_secs(5), || 5), Ok(5));
    }

    #[test]
    fn many_concurrent_calls_all_complete() {
        let handles: Vec<_> = (0..16)
            .map(|i| std::thread::spawn(move || run(Duration::from_secs(10), move || i * 2)))
            .collect();
        let mut sum = 0;
        for h in handles {
            sum += h.join().unwrap().unwrap();
        }
        assert_eq!(sum, (0..16).map(|i| i * 2).sum());
    }
}
