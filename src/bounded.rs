//! Bounded calls: run a closure on a pool thread and wait for it at most a deadline.
//!
//! A member module can block a thread forever (a SIGSTOPped p11-kit server, or p11-kit-client
//! stuck in pthread_cond_wait after its server was killed: REFERENCE §3). The only way to give the
//! application its thread back is to make the member call on another thread. Closures must own
//! everything they touch: after a timeout the caller is gone, and a late-returning call may only
//! write into memory the closure owns.
//!
//! A call is one allocation (closure and answer together, shared by the caller and the worker);
//! it goes to an idle worker's mailbox, and the answer wakes the waiting thread by unpark.

use parking_lot::Mutex;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Why a bounded call gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// No answer within the deadline; the call may still be running.
    TimedOut,
    /// The call panicked (caught on its thread: a panic never takes a worker or the caller down).
    Panicked,
}

mod serial;
pub use serial::Serial;

/// How long an idle worker waits before it exits. Calls that hung while a member was stopped
/// leave extra workers behind once they return; they are gone this long after the faults end
/// (tokio's blocking pool keeps idle threads as long). Starting a thread again costs tens of
/// microseconds, nothing next to a member call that follows 10 s of idleness.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

/// How long the caller polls for its answer, and a worker that has just answered for its next
/// job, before it parks. A member call usually answers, and an application's next call (C_Sign
/// after C_SignInit) usually follows, within tens of microseconds; waking a parked thread costs
/// about as much again on a loaded virtual machine. p11ha-bench, part 1, ECDSA ratio: 0.99 with
/// 100 µs, 0.82 with 20 µs for the caller (which used 20 % less CPU per operation), 0.78 parking
/// after a 3 µs busy spin.
const POLL_CALLER: Duration = Duration::from_micros(100);
const POLL_WORKER: Duration = Duration::from_micros(100);

/// How long before an expected answer a caller that slept wakes up to poll for it: the timer
/// slack of a normal thread (50 µs) and waking on a virtual machine.
const WAKE_LEAD: Duration = Duration::from_micros(70);

/// How long the calls into one module instance take, about: the fastest of late, drifting up
/// slowly. A caller that expects a long call (a remote member: one round trip is 100 µs or more)
/// sleeps for most of it rather than polling, and polls only around the time the answer is due:
/// the CPU of polling is spent where it saves a wake-up, not for the whole round trip.
#[derive(Default)]
pub struct Pace {
    nanos: AtomicU64,
}

impl Pace {
    /// Records one call that took `took`.
    pub fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let was = self.nanos.load(Ordering::Relaxed);
        // Down at once, up by an eighth of the gap: a slow call now and then (a key
        // generation, a stall) does not make callers oversleep the usual ones.
        let now = if was == 0 || took < was {
            took
        } else {
            was + (took - was) / 8
        };
        self.nanos.store(now, Ordering::Relaxed);
    }

    /// How long a caller may sleep before it polls for the answer of a call starting now.
    pub fn sleep_first(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed)).saturating_sub(WAKE_LEAD)
    }
}

/// Callers, and idle workers, polling now. At most one of each polls at a time, so that pollers
/// never crowd out the threads doing work on a small machine (the others park at once instead;
/// p11ha-bench measured one poller per CPU as slower on 2 CPUs).
static POLLING_CALLERS: AtomicUsize = AtomicUsize::new(0);
static POLLING_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Polling is harmful when the CPUs are contended: a thread that yields waits behind the
/// others for their whole time slice (milliseconds), and an unpark does not hurry it, being
/// runnable already; a parked thread, woken, runs promptly. p11ha-bench part 13, ECDSA at 1
/// thread with 4 CPU burners, in-process member: 0.01-0.04 of direct polling, 0.4-1.1 parking.
///
/// How often [`cpus_busy`] looks again.
const BUSY_CHECK_EVERY: Duration = Duration::from_millis(5);

/// Whether more threads are runnable than the process has CPUs, as last seen (at most
/// [`BUSY_CHECK_EVERY`] ago): polling then takes a CPU from a thread that needs it, the
/// member's own (a p11-kit server), the worker, or another program's. A yield does not tell:
/// the scheduler often hands the CPU straight back to the poller.
fn cpus_busy() -> bool {
    static NEXT_CHECK: AtomicU64 = AtomicU64::new(0);
    static BUSY: AtomicBool = AtomicBool::new(false);
    let now = since_epoch(Instant::now());
    let next = NEXT_CHECK.load(Ordering::Relaxed);
    let every = BUSY_CHECK_EVERY.as_nanos() as u64;
    if now >= next
        && NEXT_CHECK
            .compare_exchange(next, now + every, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        BUSY.store(runnable_beyond_cpus(), Ordering::Relaxed);
    }
    BUSY.load(Ordering::Relaxed)
}

/// `/proc/loadavg` reads "0.52 0.58 0.59 3/211 1234": the fourth field's first number is the
/// number of threads runnable now, the reader included. One more than the CPUs is normal (the
/// reader, its worker, a kernel thread); more is contention (4 CPU burners on 2 CPUs read 5-6).
/// Without the file: not busy.
fn runnable_beyond_cpus() -> bool {
    use std::io::Read;
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut buf = [0u8; 128];
    let n = std::fs::File::open("/proc/loadavg")
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    let running = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.split_whitespace().nth(3))
        .and_then(|f| f.split('/').next())
        .and_then(|r| r.parse::<usize>().ok())
        .unwrap_or(0);
    running > cpus + 1
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Now, in ns on a clock private to p11ha: an atomic's worth of time.
pub fn now_ns() -> u64 {
    since_epoch(Instant::now())
}

fn since_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Waits for `done` for up to `limit`, yielding the CPU between checks (busy spinning measured
/// far slower on a loaded 2-CPU machine: the spinner takes the CPU the worker needs), unless
/// another thread of the same kind polls already or the CPUs are contended; whether `done`
/// came.
fn poll(limit: Duration, polling: &AtomicUsize, done: impl Fn() -> bool) -> bool {
    if done() {
        return true;
    }
    let start = Instant::now();
    if limit.is_zero()
        || cpus_busy()
        || polling
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return false;
    }
    let got = loop {
        std::thread::yield_now();
        if done() {
            break true;
        }
        if start.elapsed() >= limit {
            break false;
        }
    };
    polling.store(0, Ordering::Release);
    got
}

/// A job handed to a worker: one call's closure, run once. `ready_again` runs after the
/// closure and before the answer is published: the worker is back in the idle list by the time
/// its caller can see the answer, so a caller's next call (C_Sign after C_SignInit) finds it
/// there instead of starting a thread (which is how a pool under steady load used to grow).
trait Job: Send + Sync {
    fn run(&self, ready_again: &dyn Fn());
}

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const PANICKED: u8 = 2;

/// One call: its closure and its answer in one allocation, shared by the caller (as
/// [`Pending`]) and the worker (as a [`Job`]). After a timeout the caller's side is dropped and
/// the worker's keeps everything the call touches alive.
struct Call<T, F> {
    state: AtomicU8,
    f: UnsafeCell<Option<F>>,
    value: UnsafeCell<Option<T>>,
    /// The thread to wake when the answer is there (the last one that waited).
    waiter: Mutex<Option<Thread>>,
}

// SAFETY: `f` is taken only by the one worker that runs the call; `value` is written by it
// before `state` is released and read by the waiting side only after acquiring DONE.
unsafe impl<T: Send, F: Send> Sync for Call<T, F> {}

impl<T: Send, F: FnOnce() -> T + Send> Job for Call<T, F> {
    fn run(&self, ready_again: &dyn Fn()) {
        // SAFETY: see the Sync impl; `run` is called once, by one thread.
        let f = unsafe { (*self.f.get()).take() };
        let Some(f) = f else {
            ready_again();
            return;
        };
        let state = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => {
                // SAFETY: nobody reads `value` before DONE is stored below.
                unsafe { *self.value.get() = Some(v) };
                DONE
            }
            Err(_) => PANICKED,
        };
        ready_again();
        self.state.store(state, Ordering::Release);
        // Under the lock: a waiter that registers itself later sees the state (it checks after).
        if let Some(t) = self.waiter.lock().as_ref() {
            t.unpark();
        }
    }
}

/// The caller's view of a [`Call`], with the closure's type erased.
trait Answer<T>: Send + Sync {
    fn state(&self) -> &AtomicU8;
    fn waiter(&self) -> &Mutex<Option<Thread>>;
    /// The value; only after DONE was acquired, once.
    fn take(&self) -> Option<T>;
}

impl<T: Send, F: FnOnce() -> T + Send> Answer<T> for Call<T, F> {
    fn state(&self) -> &AtomicU8 {
        &self.state
    }

    fn waiter(&self) -> &Mutex<Option<Thread>> {
        &self.waiter
    }

    fn take(&self) -> Option<T> {
        // SAFETY: called by the one Pending, after acquiring DONE (see the Sync impl).
        unsafe { (*self.value.get()).take() }
    }
}

/// One pool thread's mailbox.
struct Worker {
    job: Mutex<Option<Arc<dyn Job>>>,
    /// Set once `job` holds a job: what a spinning worker watches without taking the lock.
    ready: AtomicBool,
    thread: Thread,
}

struct Pool {
    /// Idle workers, the most recently idle last (its caches are warm, and it may still spin).
    idle: Mutex<Vec<Arc<Worker>>>,
    /// Workers that were started and have not exited (includes hung ones).
    alive: AtomicUsize,
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
    let fresh = Box::into_raw(Box::new(Pool {
        idle: Mutex::new(Vec::new()),
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

/// Forks seen by this process: a [`Serial`] queue made before the last one belongs to the
/// parent (its serving thread does not exist here).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// In a forked child: the parent's pool threads are gone, so the next call starts a new pool.
/// The old one is leaked, untouched (its locks may have been held at the fork); so are the
/// queues of the parent's serving threads ([`Serial`]).
pub fn forget_after_fork() {
    POOL.store(std::ptr::null_mut(), Ordering::Release);
    FORKS.fetch_add(1, Ordering::AcqRel);
}

thread_local! {
    /// Set on threads p11ha starts ([`mark_own_thread`]).
    static OWN_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of p11ha's own (pool, management, audit, parallel member
/// calls): a module whose calls otherwise run on the caller's thread is still called bounded
/// from it, so that a hung module cannot take p11ha's machinery with it.
pub fn mark_own_thread() {
    OWN_THREAD.with(|o| o.set(true));
}

/// Whether the calling thread is one of p11ha's own ([`mark_own_thread`]).
pub fn on_own_thread() -> bool {
    OWN_THREAD.with(|o| o.get())
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
    run_after(timeout, Duration::ZERO, f)
}

/// [`run`] for a call expected to take at least `sleep_first` ([`Pace::sleep_first`]): the
/// caller sleeps that long (woken earlier by an earlier answer) before it polls.
pub fn run_after<T, F>(timeout: Duration, sleep_first: Duration, f: F) -> Result<T, Stalled>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if is_inline() {
        return here(|| without_sigpipe(f));
    }
    settled(start(f).wait_after(timeout, sleep_first))
}

/// A waited-for call's result as a bounded call gives it: still running is timed out.
fn settled<T>(r: Result<T, Unfinished<T>>) -> Result<T, Stalled> {
    match r {
        Ok(v) => Ok(v),
        Err(Unfinished::Running(_)) => Err(Stalled::TimedOut),
        Err(Unfinished::Panicked) => Err(Stalled::Panicked),
    }
}

/// Runs `f` on the calling thread, without a deadline, catching a panic: for modules whose
/// operator chose speed over the bound (`ProviderNNBoundedCalls = 0`: modules that do no I/O,
/// so SIGPIPE is not kept from the application around them; that costs three system calls a
/// call, a third of a pass-through's price), and when threads are forbidden.
pub fn here<T>(f: impl FnOnce() -> T) -> Result<T, Stalled> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Stalled::Panicked)
}

/// A call started on the pool; wait for it as often as needed, from any thread.
pub struct Pending<T> {
    call: Arc<dyn Answer<T>>,
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
        self.wait_after(timeout, Duration::ZERO)
    }

    /// [`Pending::wait`], sleeping up to `sleep_first` before polling (see [`Pace`]).
    fn wait_after(self, timeout: Duration, sleep_first: Duration) -> Result<T, Unfinished<T>> {
        let start = Instant::now();
        self.wait_until(start, start + timeout, sleep_first)
    }

    /// [`Pending::wait_after`] for a wait that began at `start` and ends at `deadline`.
    fn wait_until(
        self,
        start: Instant,
        deadline: Instant,
        sleep_first: Duration,
    ) -> Result<T, Unfinished<T>> {
        let state = || self.call.state().load(Ordering::Acquire);
        let timeout = deadline.saturating_duration_since(start);
        // With the CPUs busy, sleeping first measured far slower (p11ha-bench part 13, remote
        // member with 4 CPU burners: 0.16 of direct, 1.01 parking at once).
        let sleep_first = if cpus_busy() {
            Duration::ZERO
        } else {
            sleep_first
        };
        let sleep_until = start + sleep_first.min(timeout);
        let mut registered = false;
        let mut polled = sleep_first.is_zero();
        if polled
            && poll(POLL_CALLER.min(timeout), &POLLING_CALLERS, || {
                state() != RUNNING
            })
        {
            return self.answer();
        }
        while state() == RUNNING {
            let now = Instant::now();
            if now >= deadline {
                return Err(Unfinished::Running(self));
            }
            if !polled && now >= sleep_until {
                // Slept through most of the call: its answer is due about now.
                polled = true;
                let left = deadline - now;
                if poll(POLL_CALLER.min(left), &POLLING_CALLERS, || {
                    state() != RUNNING
                }) {
                    break;
                }
                continue;
            }
            if !registered {
                // The thread that started the call is registered already; another one (a
                // C_Initialize waited for by the recovery thread) registers itself.
                registered = true;
                let mut w = self.call.waiter().lock();
                let me = std::thread::current();
                if w.as_ref().map(Thread::id) != Some(me.id()) {
                    *w = Some(me);
                }
                continue; // the answer may have come meanwhile
            }
            let until = if polled { deadline } else { sleep_until };
            // Wakes on the worker's unpark, or spuriously (a stale token): checked again.
            std::thread::park_timeout(until - now);
        }
        self.answer()
    }

    fn answer(self) -> Result<T, Unfinished<T>> {
        match self.call.state().load(Ordering::Acquire) {
            DONE => self.call.take().ok_or(Unfinished::Panicked),
            _ => Err(Unfinished::Panicked),
        }
    }
}

/// Starts `f` on the pool (inline when threads are forbidden) and returns at once.
pub fn start<T, F>(f: F) -> Pending<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let call = new_call(f);
    if is_inline() {
        without_sigpipe(|| call.run(&|| {}));
    } else {
        submit(call.clone());
    }
    Pending { call }
}

/// One call of `f`, not started yet, to be waited for by this thread.
fn new_call<T, F>(f: F) -> Arc<Call<T, F>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    Arc::new(Call {
        state: AtomicU8::new(RUNNING),
        f: UnsafeCell::new(Some(f)),
        value: UnsafeCell::new(None),
        waiter: Mutex::new(Some(std::thread::current())),
    })
}

fn submit(job: Arc<dyn Job>) {
    let p = pool();
    let idle = p.idle.lock().pop();
    match idle {
        Some(w) => {
            *w.job.lock() = Some(job);
            w.ready.store(true, Ordering::Release);
            w.thread.unpark();
        }
        None => spawn_worker(p, job),
    }
}

fn spawn_worker(p: &'static Pool, first: Arc<dyn Job>) {
    p.alive.fetch_add(1, Ordering::Relaxed);
    // The job travels through a slot the caller keeps too, so that it can run it here should no
    // thread start.
    let slot = Arc::new(Mutex::new(Some(first)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("p11ha-call".into())
        .spawn(move || {
            let first = theirs.lock().take();
            worker(p, first)
        });
    if spawned.is_err() {
        // No thread: run the job here rather than leave the caller waiting for nobody.
        p.alive.fetch_sub(1, Ordering::Relaxed);
        if let Some(job) = slot.lock().take() {
            without_sigpipe(|| job.run(&|| {}));
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

fn worker(p: &'static Pool, first: Option<Arc<dyn Job>>) {
    block_sigpipe();
    mark_own_thread();
    let me = Arc::new(Worker {
        job: Mutex::new(None),
        ready: AtomicBool::new(false),
        thread: std::thread::current(),
    });
    let mut next = first;
    let ready_again = || p.idle.lock().push(me.clone());
    loop {
        match next.take() {
            Some(job) => job.run(&ready_again),
            None => ready_again(),
        }
        poll(POLL_WORKER, &POLLING_WORKERS, || {
            me.ready.load(Ordering::Acquire)
        });
        let deadline = Instant::now() + IDLE_EXIT;
        loop {
            if me.ready.load(Ordering::Acquire) {
                me.ready.store(false, Ordering::Relaxed);
                next = me.job.lock().take();
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                // Exit only if no submitter has taken this worker meanwhile (its job is on
                // the way then).
                let mut idle = p.idle.lock();
                if let Some(i) = idle.iter().position(|w| Arc::ptr_eq(w, &me)) {
                    idle.swap_remove(i);
                    p.alive.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                drop(idle);
                std::thread::park_timeout(Duration::from_millis(1));
                continue;
            }
            std::thread::park_timeout(deadline - now);
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
        let (release_tx, release_rx) = std::sync::mpsc::sync_channel::<()>(1);
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
    fn a_call_waited_for_on_another_thread_wakes_that_thread() {
        // As a C_Initialize still running is waited for by the recovery thread: the answer must
        // wake the thread that waits now, not only the one that started the call.
        let (release_tx, release_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let pending = start(move || {
            let _ = release_rx.recv();
            9
        });
        let pending = match pending.wait(Duration::from_millis(10)) {
            Err(Unfinished::Running(p)) => p,
            _ => panic!("answered before it was released"),
        };
        let waiter = std::thread::spawn(move || {
            let t0 = Instant::now();
            let r = pending.wait(Duration::from_secs(20)).ok();
            (r, t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        release_tx.send(()).unwrap();
        let (r, waited) = waiter.join().unwrap();
        assert_eq!(r, Some(9));
        assert!(
            waited < Duration::from_secs(10),
            "slept to its deadline: {waited:?}"
        );
    }

    #[test]
    fn the_pace_follows_the_fastest_calls_at_once_and_slower_ones_slowly() {
        let pace = Pace::default();
        assert_eq!(
            pace.sleep_first(),
            Duration::ZERO,
            "nothing known: no sleep"
        );
        pace.record(Duration::from_micros(1070));
        assert_eq!(pace.sleep_first(), Duration::from_micros(1000));
        pace.record(Duration::from_micros(270));
        assert_eq!(
            pace.sleep_first(),
            Duration::from_micros(200),
            "down at once"
        );
        pace.record(Duration::from_micros(1070));
        assert_eq!(
            pace.sleep_first(),
            Duration::from_micros(300),
            "up by an eighth of the gap"
        );
        pace.record(Duration::from_micros(10));
        assert_eq!(
            pace.sleep_first(),
            Duration::ZERO,
            "a fast member is polled for"
        );
    }

    #[test]
    fn a_caller_sleeping_first_is_woken_by_an_early_answer_and_still_bounded() {
        let t0 = Instant::now();
        assert_eq!(
            run_after(Duration::from_secs(20), Duration::from_secs(10), || 3),
            Ok(3)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "slept past the answer"
        );

        let (release_tx, release_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let t0 = Instant::now();
        let r = run_after(
            Duration::from_millis(100),
            Duration::from_secs(10),
            move || {
                let _ = release_rx.recv();
            },
        );
        assert_eq!(r, Err(Stalled::TimedOut));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "slept past the deadline"
        );
        release_tx.send(()).unwrap();
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
