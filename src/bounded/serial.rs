//! One call at a time into a module instance, made by one serving thread per instance.
//!
//! A module that multiplexes one connection (p11-kit-client, see `Calls::OneAtATime`) must have
//! at most one call inside. Pool workers taking turns on a lock put a lock hand-off (an unlock,
//! a futex wake and the scheduling of another worker) between every two calls, on the critical
//! path, and keep one parked worker per waiting caller. Here the calls queue instead, and the
//! instance's serving thread makes them back to back in the order they came; the callers wait
//! for their answers as they wait for a pool worker's ([`Pending`]), bounded by their deadlines.
//!
//! - A call whose deadline passed before its turn came is not made: its caller has given up.
//! - A call that hangs in the module holds only the serving thread. The callers queued behind
//!   it time out at their own deadlines. Once the call inside has outlived its own caller's
//!   deadline (the module is stuck for a whole timeout), new calls are refused at once with
//!   [`Stalled::TimedOut`] instead of queueing for another full timeout behind it; the queue
//!   starts serving again when the call returns.
//! - An idle serving thread polls briefly for the next call, then parks; it exits after
//!   [`IDLE_EXIT`] and the next call starts another.
//! - After a fork the child never waits for the parent's serving thread: a queue made before
//!   the last fork is abandoned (leaked: its lock may have been held) and a new one made.

use super::{
    is_inline, new_call, poll, since_epoch, without_sigpipe, Job, Pace, Pending, Stalled, FORKS,
    IDLE_EXIT, POLLING_WORKERS, POLL_WORKER,
};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The calls into one module instance, made one at a time in the order they came.
pub struct Serial {
    /// From `Arc::into_raw`; made on first use, and again in a forked child.
    queue: AtomicPtr<Queue>,
    /// Held by the call inside when calls run on the caller's thread ([`is_inline`]).
    inline_turn: Mutex<()>,
    /// How long an idle serving thread stays ([`IDLE_EXIT`]; shorter in tests).
    idle_exit: Duration,
}

struct Queue {
    /// [`FORKS`] when the queue was made.
    born: u64,
    idle_exit: Duration,
    state: Mutex<State>,
    /// `state.jobs.len()`, for an idle serving thread to poll without the lock.
    waiting: AtomicUsize,
    /// The deadline of the call being made now ([`since_epoch`]), 0 when none. Cleared as
    /// soon as the call returns, before its caller sees the answer: a caller's next call then
    /// knows that no call is ahead of it.
    running: AtomicU64,
}

struct State {
    jobs: VecDeque<Queued>,
    server: Server,
}

enum Server {
    /// No serving thread: the next call starts one.
    Absent,
    /// Making calls, or about to look at the queue again.
    Busy,
    /// Idle (polling or parked): the next call wakes it.
    Idle(Thread),
}

struct Queued {
    job: Arc<dyn Job>,
    deadline: Instant,
}

/// Where [`Serial::run_with`] makes the call: what [`Serial::run`] reads from the process.
#[derive(Clone, Copy)]
struct Mode {
    inline: bool,
    forks: u64,
}

impl Default for Serial {
    fn default() -> Serial {
        Serial::with_idle_exit(IDLE_EXIT)
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        let p = *self.queue.get_mut();
        // SAFETY: `p` came from Arc::into_raw; a queue of the parent's (made before a fork)
        // is left alone.
        if !p.is_null() && unsafe { (*p).born } == FORKS.load(Ordering::Acquire) {
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}

impl Serial {
    fn with_idle_exit(idle_exit: Duration) -> Serial {
        Serial {
            queue: AtomicPtr::new(std::ptr::null_mut()),
            inline_turn: Mutex::new(()),
            idle_exit,
        }
    }

    /// Runs `f` after the calls queued before it, on the serving thread, and returns its
    /// result, or why there is none: it did not return within `timeout` (queueing included;
    /// it then finishes, or not, on its own, or it is not made at all), or it panicked. The
    /// caller sleeps about as long as `pace` says the call takes before it polls for the
    /// answer, when no other call is ahead of it; otherwise until the answer wakes it.
    pub fn run<T, F>(&self, timeout: Duration, pace: &Pace, f: F) -> Result<T, Stalled>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let mode = Mode {
            inline: is_inline(),
            forks: FORKS.load(Ordering::Acquire),
        };
        self.run_with(mode, timeout, pace, f)
    }

    fn run_with<T, F>(&self, mode: Mode, timeout: Duration, pace: &Pace, f: F) -> Result<T, Stalled>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let start = Instant::now();
        let deadline = start + timeout;
        if mode.inline {
            // No threads: the caller makes the call, taking turns with the other callers.
            let Some(_turn) = self.inline_turn.try_lock_until(deadline) else {
                return Err(Stalled::TimedOut);
            };
            return super::here(|| without_sigpipe(f));
        }
        let call = new_call(f);
        let ahead = self.queue(mode.forks).submit(call.clone(), deadline)?;
        // Behind another call the answer is at least one whole call away: polling for it
        // would take a CPU from the calls ahead; the serving thread's unpark wakes the caller.
        let sleep_first = if ahead == 0 {
            pace.sleep_first()
        } else {
            timeout
        };
        super::settled((Pending { call }).wait_until(start, deadline, sleep_first))
    }

    /// This process's queue (made now if there is none, or only the parent's of a fork).
    fn queue(&self, forks: u64) -> Arc<Queue> {
        let p = self.queue.load(Ordering::Acquire);
        // SAFETY: a non-null `p` came from Arc::into_raw and is released only by Drop (which
        // has `self` to itself) or never (a parent's queue).
        if !p.is_null() && unsafe { (*p).born } == forks {
            unsafe {
                Arc::increment_strong_count(p);
                return Arc::from_raw(p);
            }
        }
        let fresh = Arc::new(Queue {
            born: forks,
            idle_exit: self.idle_exit,
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                server: Server::Absent,
            }),
            waiting: AtomicUsize::new(0),
            running: AtomicU64::new(0),
        });
        let raw = Arc::into_raw(fresh.clone()) as *mut Queue;
        match self
            .queue
            .compare_exchange(p, raw, Ordering::AcqRel, Ordering::Acquire)
        {
            // The old queue, if any, was the parent's: leaked.
            Ok(_) => fresh,
            Err(_) => {
                // SAFETY: `raw` was never shared.
                drop(unsafe { Arc::from_raw(raw) });
                self.queue(forks)
            }
        }
    }

    /// Whether a serving thread exists now (for tests).
    #[cfg(test)]
    fn serving(&self) -> bool {
        let q = self.queue(FORKS.load(Ordering::Acquire));
        let s = q.state.lock();
        !matches!(s.server, Server::Absent)
    }

    /// Calls queued and not started (for tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue(FORKS.load(Ordering::Acquire))
            .waiting
            .load(Ordering::Acquire)
    }
}

impl Queue {
    /// Queues `job`; how many calls are ahead of it (the one being made included), or
    /// TimedOut when the call being made has outlived its caller's deadline already.
    fn submit(self: Arc<Queue>, job: Arc<dyn Job>, deadline: Instant) -> Result<usize, Stalled> {
        let mut s = self.state.lock();
        let running = self.running.load(Ordering::Acquire);
        if running != 0 && since_epoch(Instant::now()) > running {
            return Err(Stalled::TimedOut);
        }
        let ahead = s.jobs.len() + usize::from(running != 0);
        s.jobs.push_back(Queued { job, deadline });
        self.waiting.store(s.jobs.len(), Ordering::Release);
        match std::mem::replace(&mut s.server, Server::Busy) {
            Server::Busy => {}
            Server::Idle(t) => {
                drop(s);
                t.unpark();
            }
            Server::Absent => {
                drop(s);
                let theirs = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("p11ha-serve".into())
                    .spawn(move || {
                        super::block_sigpipe();
                        theirs.serve(Some(theirs.idle_exit))
                    });
                if spawned.is_err() {
                    // No thread: serve the queue here rather than leave it to nobody.
                    without_sigpipe(|| self.serve(None));
                }
            }
        }
        Ok(ahead)
    }

    /// The serving thread: makes the queued calls in order until idle for `idle_exit` (None:
    /// until the queue is empty).
    fn serve(&self, idle_exit: Option<Duration>) {
        loop {
            if let Some(job) = self.next() {
                job.run(&|| self.running.store(0, Ordering::Release));
                continue;
            }
            // Idle. The application's next call usually follows within tens of µs.
            if idle_exit.is_some()
                && poll(POLL_WORKER, &POLLING_WORKERS, || {
                    self.waiting.load(Ordering::Acquire) > 0
                })
            {
                continue;
            }
            let mut s = self.state.lock();
            if !s.jobs.is_empty() {
                continue;
            }
            let Some(idle_exit) = idle_exit else {
                s.server = Server::Absent;
                return;
            };
            s.server = Server::Idle(std::thread::current());
            let until = Instant::now() + idle_exit;
            loop {
                let now = Instant::now();
                if !matches!(s.server, Server::Idle(_)) {
                    break; // a caller queued a call and woke this thread
                }
                if now >= until {
                    s.server = Server::Absent;
                    return;
                }
                drop(s);
                std::thread::park_timeout(until - now);
                s = self.state.lock();
            }
        }
    }

    /// The next call to make (marked as being made), skipping those whose deadline passed.
    fn next(&self) -> Option<Arc<dyn Job>> {
        let mut s = self.state.lock();
        self.running.store(0, Ordering::Release);
        let now = Instant::now();
        let mut expired = Vec::new();
        let next = loop {
            match s.jobs.pop_front() {
                Some(q) if q.deadline <= now => expired.push(q.job),
                Some(q) => {
                    let d = since_epoch(q.deadline).max(1);
                    self.running.store(d, Ordering::Release);
                    break Some(q.job);
                }
                None => break None,
            }
        };
        self.waiting.store(s.jobs.len(), Ordering::Release);
        drop(s);
        // Dropped without the lock: a closure may own anything.
        drop(expired);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc::{sync_channel, Receiver};

    const LONG: Duration = Duration::from_secs(20);

    fn now_mode() -> Mode {
        Mode {
            inline: false,
            forks: FORKS.load(Ordering::Acquire),
        }
    }

    /// Counts the calls inside at once, and the most there were.
    #[derive(Default)]
    struct Inside {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Inside {
        fn during<T>(&self, f: impl FnOnce() -> T) -> T {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            let out = f();
            self.now.fetch_sub(1, Ordering::SeqCst);
            out
        }
    }

    /// Starts a call that stays inside until released (or `timeout` for its caller).
    fn hang(
        serial: &Arc<Serial>,
        timeout: Duration,
    ) -> (
        std::sync::mpsc::SyncSender<()>,
        std::thread::JoinHandle<Result<(), Stalled>>,
    ) {
        let (release, wait): (_, Receiver<()>) = sync_channel(1);
        let (entered_tx, entered) = sync_channel(1);
        let s = serial.clone();
        let t = std::thread::spawn(move || {
            s.run(timeout, &Pace::default(), move || {
                entered_tx.send(()).unwrap();
                let _ = wait.recv();
            })
        });
        entered.recv().unwrap();
        (release, t)
    }

    fn wait_queued(serial: &Serial, n: usize) {
        let t0 = Instant::now();
        while serial.queued() < n {
            assert!(t0.elapsed() < LONG, "{} queued, not {n}", serial.queued());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn calls_are_made_one_at_a_time_in_the_order_they_came() {
        let serial = Arc::new(Serial::default());
        let (release, first) = hang(&serial, LONG);
        let order = Arc::new(Mutex::new(Vec::new()));
        let inside = Arc::new(Inside::default());
        let callers: Vec<_> = (0..6)
            .map(|i| {
                let (s, order, inside) = (serial.clone(), order.clone(), inside.clone());
                let t = std::thread::spawn(move || {
                    s.run(LONG, &Pace::default(), move || {
                        inside.during(|| {
                            std::thread::sleep(Duration::from_millis(5));
                            order.lock().push(i);
                        });
                        i * 10
                    })
                });
                // The next caller comes once this one is queued.
                wait_queued(&serial, i + 1);
                t
            })
            .collect();
        release.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(()));
        for (i, t) in callers.into_iter().enumerate() {
            assert_eq!(t.join().unwrap(), Ok(i * 10));
        }
        assert_eq!(*order.lock(), (0..6).collect::<Vec<_>>(), "not FIFO");

        // Many callers at once, no order among them: still one at a time.
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (s, inside) = (serial.clone(), inside.clone());
                std::thread::spawn(move || {
                    (0..20)
                        .map(|_| {
                            let inside = inside.clone();
                            s.run(LONG, &Pace::default(), move || {
                                inside.during(std::thread::yield_now)
                            })
                        })
                        .all(|r| r.is_ok())
                })
            })
            .collect();
        for t in callers {
            assert!(t.join().unwrap());
        }
        assert_eq!(inside.most.load(Ordering::SeqCst), 1, "calls overlapped");
    }

    #[test]
    fn a_stuck_call_makes_the_queued_ones_time_out_at_their_deadline_and_none_is_made_late() {
        let serial = Arc::new(Serial::default());
        let (release, stuck) = hang(&serial, Duration::from_millis(400));
        let made = Arc::new(AtomicBool::new(false));
        let queued = {
            let (s, made) = (serial.clone(), made.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let r = s.run(Duration::from_millis(150), &Pace::default(), move || {
                    made.store(true, Ordering::SeqCst)
                });
                (r, t0.elapsed())
            })
        };
        let (r, waited) = queued.join().unwrap();
        assert_eq!(r, Err(Stalled::TimedOut));
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_millis(350),
            "queued caller answered after {waited:?}, its bound is 150 ms"
        );
        assert_eq!(stuck.join().unwrap(), Err(Stalled::TimedOut));

        // The call inside has outlived its caller: a new call is refused at once.
        let t0 = Instant::now();
        let r = serial.run(LONG, &Pace::default(), || ());
        assert_eq!(r, Err(Stalled::TimedOut));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "waited behind a stuck call: {:?}",
            t0.elapsed()
        );

        // Once it returns the queue serves again, and the expired call was never made.
        release.send(()).unwrap();
        let t0 = Instant::now();
        loop {
            match serial.run(LONG, &Pace::default(), || 5) {
                Ok(v) => break assert_eq!(v, 5),
                Err(e) => {
                    assert_eq!(e, Stalled::TimedOut);
                    assert!(t0.elapsed() < LONG, "never served again");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        assert!(
            !made.load(Ordering::SeqCst),
            "a call was made after its caller gave up"
        );
    }

    #[test]
    fn a_stuck_call_delays_no_other_instance() {
        let stuck = Arc::new(Serial::default());
        let (release, t) = hang(&stuck, LONG);
        let other = Serial::default();
        let t0 = Instant::now();
        assert_eq!(other.run(LONG, &Pace::default(), || 3), Ok(3));
        assert!(t0.elapsed() < Duration::from_secs(2));
        release.send(()).unwrap();
        assert_eq!(t.join().unwrap(), Ok(()));
    }

    #[test]
    fn the_serving_thread_exits_when_idle_and_a_new_one_starts_on_demand() {
        let serial = Serial::with_idle_exit(Duration::from_millis(100));
        let id = || std::thread::current().id();
        let first = serial.run(LONG, &Pace::default(), id).unwrap();
        assert_ne!(first, id(), "made on the caller's thread");
        assert_eq!(
            serial.run(LONG, &Pace::default(), id).unwrap(),
            first,
            "back-to-back calls found another thread"
        );
        assert!(serial.serving());
        let t0 = Instant::now();
        while serial.serving() {
            // 100 ms idle, then gone: long before the 10 s of IDLE_EXIT.
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "the idle serving thread stayed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t0.elapsed() >= Duration::from_millis(50), "left too soon");
        let again = serial.run(LONG, &Pace::default(), id).unwrap();
        assert_ne!(again, first, "the exited thread answered");
        assert!(serial.serving());
    }

    #[test]
    fn calls_are_made_with_sigpipe_blocked() {
        let serial = Serial::default();
        let blocked = serial.run(LONG, &Pace::default(), || unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            libc::sigismember(&set, libc::SIGPIPE) == 1
        });
        assert_eq!(blocked, Ok(true));
    }

    #[test]
    fn a_panicking_call_is_reported_and_the_queue_serves_on() {
        let serial = Serial::default();
        let r: Result<(), Stalled> = serial.run(LONG, &Pace::default(), || panic!("boom"));
        assert_eq!(r, Err(Stalled::Panicked));
        assert_eq!(serial.run(LONG, &Pace::default(), || 1), Ok(1));
    }

    #[test]
    fn without_threads_calls_run_on_the_caller_one_at_a_time_and_bounded() {
        let serial = Arc::new(Serial::default());
        let inline = Mode {
            inline: true,
            ..now_mode()
        };
        let me = std::thread::current().id();
        assert_eq!(
            serial.run_with(
                inline,
                LONG,
                &Pace::default(),
                move || std::thread::current().id() == me
            ),
            Ok(true),
            "a thread was used"
        );
        assert!(!serial.serving(), "a serving thread was started");

        let inside = Arc::new(Inside::default());
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (s, inside) = (serial.clone(), inside.clone());
                std::thread::spawn(move || {
                    s.run_with(inline, LONG, &Pace::default(), move || {
                        inside.during(|| std::thread::sleep(Duration::from_millis(20)))
                    })
                })
            })
            .collect();
        for t in callers {
            assert_eq!(t.join().unwrap(), Ok(()));
        }
        assert_eq!(
            inside.most.load(Ordering::SeqCst),
            1,
            "inline calls overlapped"
        );

        // A caller waiting for its turn gives up at its deadline.
        let (release, wait) = sync_channel::<()>(1);
        let (entered_tx, entered) = sync_channel(1);
        let holder = {
            let s = serial.clone();
            std::thread::spawn(move || {
                s.run_with(inline, LONG, &Pace::default(), move || {
                    entered_tx.send(()).unwrap();
                    let _ = wait.recv();
                })
            })
        };
        entered.recv().unwrap();
        let t0 = Instant::now();
        let r = serial.run_with(inline, Duration::from_millis(100), &Pace::default(), || ());
        assert_eq!(r, Err(Stalled::TimedOut));
        assert!(t0.elapsed() < Duration::from_secs(2));
        release.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), Ok(()));
    }

    #[test]
    fn after_a_fork_a_call_does_not_wait_for_the_parents_serving_thread() {
        // As the child sees it: the queue was made before the last fork, and its serving
        // thread (stuck here) does not exist for the child.
        let serial = Arc::new(Serial::default());
        let (release, t) = hang(&serial, LONG);
        let child = Mode {
            inline: false,
            forks: now_mode().forks + 1,
        };
        let t0 = Instant::now();
        assert_eq!(serial.run_with(child, LONG, &Pace::default(), || 4), Ok(4));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "waited for the parent's queue"
        );
        release.send(()).unwrap();
        assert_eq!(t.join().unwrap(), Ok(()));
    }
}
