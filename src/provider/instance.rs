//! One initialized instance of a member module, and the gate that keeps C_Finalize away from
//! calls still running inside it. Every call into an instance runs through `Instance::call`:
//! on a pool thread, bounded by ReceiveTimeout, with owned data only, and, for a module that
//! multiplexes one connection ([`Calls::OneAtATime`]), one call at a time, on the instance's
//! serving thread ([`bounded::Serial`]).

use super::outcome::{Fault, MemberResult};
use super::table::{ck, Fns};
use crate::bounded;
use cryptoki_sys::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// One initialized instance of a provider's module.
pub struct Instance {
    /// Unique in the process, and new for every member binding (see [`Instance::view`]): session
    /// and object handles are cached under it, so a member that comes back never reuses a
    /// handle from before, even when the module reconnected on its own and handle values alias.
    pub id: u64,
    /// The id of the initialized module instance this is a view of.
    pub origin: u64,
    pub provider: u32,
    pub(crate) fns: Fns,
    /// Shared by every view of the module instance.
    gate: Arc<Gate>,
    timeout: Duration,
}

/// How calls reach a module instance, and how many may be inside at once.
///
/// p11-kit-client (0.24) sends every thread's calls over one socket, and its server answers them
/// one after the other, so calls running at once only queue. When a call fails on that socket
/// (its server killed) while others are inside, those threads can stay inside for ever:
/// `rpc_socket_read` leaves a header read for another thread without waking it, and the failing
/// call closes the socket's descriptor while another thread is about to read it, so that thread
/// later reads whatever connection reuses the number (p11-kit/rpc-transport.c, seen with gdb in
/// tests/ha_chaos.rs: threads parked in `pthread_cond_wait` and in `read` of a live socket). One
/// call at a time leaves no other thread inside to strand: a call that fails is the only one in
/// the socket, and the others wait for their turn in p11ha, where their deadline still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// On pool threads, bounded by ReceiveTimeout, several at once.
    Concurrent,
    /// On pool threads, bounded, one at a time (p11-kit-client).
    OneAtATime,
    /// On the application's thread, several at once, with no bound (`ProviderNNBoundedCalls =
    /// 0`): no hand-off, so an in-process module runs at its own speed, but a call that hangs
    /// holds the application's thread until it returns. The instance still notices when its
    /// calls are stuck ([`Gate::stuck`]) and then lets no new call in.
    OnCaller,
}

impl Calls {
    /// p11-kit-client (and copies of it, which keep its name) multiplex one connection; the
    /// configuration refuses unbounded calls for it.
    pub fn for_provider(library: &std::path::Path, bounded: bool) -> Calls {
        if crate::config::is_p11kit_client(library) {
            Calls::OneAtATime
        } else if bounded {
            Calls::Concurrent
        } else {
            Calls::OnCaller
        }
    }
}

/// Keeps C_Finalize away from calls still running inside a module instance.
///
/// p11-kit-client frees its socket in C_Finalize; a call still inside it (one that timed out, or
/// that raced the member's drop) then fails an assertion and aborts the whole application. So
/// calls enter through the gate, and the instance is finalized only once the gate is closed and
/// no call is inside.
#[derive(Default)]
pub(crate) struct Gate {
    closed: AtomicBool,
    inside: AtomicUsize,
    /// Makes the calls one at a time, in order, when they take turns ([`Calls::OneAtATime`]).
    serial: Option<bounded::Serial>,
    /// Calls run on the caller's thread ([`Calls::OnCaller`]).
    here: bool,
    /// Kept for [`Calls::OnCaller`]: when a call last left, or entered the idle instance (ns on
    /// [`bounded::now_ns`]'s clock).
    moved: AtomicU64,
    /// Calls inside that were given more than the instance's receive timeout (key generation):
    /// while one is inside, no progress for that long proves nothing.
    long_inside: AtomicUsize,
    /// The receive timeout the instance was made with.
    timeout: Duration,
    /// How long calls into the module take: how long a caller sleeps before it polls.
    pace: bounded::Pace,
}

/// One call inside the instance; leaving is dropping it, wherever the call finished.
pub(crate) struct Pass {
    gate: Arc<Gate>,
    /// Given more than the instance's receive timeout (see [`Gate::long_inside`]).
    long: bool,
}

impl Gate {
    /// SeqCst on both sides: either `enter` sees the gate closed, or `drained` sees the call.
    pub(crate) fn enter(self: &Arc<Self>, long: bool) -> Option<Pass> {
        let before = self.inside.fetch_add(1, Ordering::SeqCst);
        if self.here {
            if before == 0 {
                self.moved.store(bounded::now_ns(), Ordering::Relaxed);
            }
            if long {
                self.long_inside.fetch_add(1, Ordering::Relaxed);
            }
        }
        let pass = Pass {
            gate: self.clone(),
            long,
        };
        (!self.closed.load(Ordering::SeqCst)).then_some(pass)
    }

    fn new(calls: Calls, timeout: Duration) -> Gate {
        Gate {
            serial: (calls == Calls::OneAtATime).then(bounded::Serial::default),
            here: calls == Calls::OnCaller,
            timeout,
            ..Gate::default()
        }
    }

    /// Whether the calls inside are stuck in the module: `besides` calls other than the one
    /// asking are inside, none has left for longer than the receive timeout, and none was given
    /// longer. A call on the caller's thread does not start then: it fails as a timed-out call
    /// does, its member is dropped, and only the threads already inside wait for a hung module.
    fn stuck(&self, besides: usize) -> bool {
        if self.inside.load(Ordering::SeqCst) <= besides
            || self.long_inside.load(Ordering::Relaxed) > 0
        {
            return false;
        }
        let moved = self.moved.load(Ordering::Relaxed);
        Duration::from_nanos(bounded::now_ns().saturating_sub(moved)) > self.timeout
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn drained(&self) -> bool {
        self.inside.load(Ordering::SeqCst) == 0
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let gate = &self.gate;
        if gate.here {
            gate.moved.store(bounded::now_ns(), Ordering::Relaxed);
            if self.long {
                gate.long_inside.fetch_sub(1, Ordering::Relaxed);
            }
        }
        gate.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Instance {
    pub(crate) fn new(provider: u32, fns: Fns, timeout: Duration, calls: Calls) -> Arc<Instance> {
        let id = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        Arc::new(Instance {
            id,
            origin: id,
            provider,
            fns,
            gate: Arc::new(Gate::new(calls, timeout)),
            timeout,
        })
    }

    /// The same module instance under a fresh id, for one member binding.
    pub fn view(&self) -> Arc<Instance> {
        Arc::new(Instance {
            id: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            ..self.with_timeout(self.timeout)
        })
    }

    /// The same instance (same id, same handles) with another bound on each call, for slow
    /// administrative calls: key generation on an HSM can take seconds.
    pub fn with_timeout(&self, timeout: Duration) -> Instance {
        Instance {
            id: self.id,
            origin: self.origin,
            provider: self.provider,
            fns: self.fns,
            gate: self.gate.clone(),
            timeout,
        }
    }

    /// Runs `f` with this instance's table within the receive timeout. Once the instance is
    /// being finalized, no call enters it.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(Fns) -> T + Send + 'static,
    ) -> MemberResult<T> {
        let pass = self
            .gate
            .enter(self.timeout > self.gate.timeout)
            .ok_or(Fault::Closed)?;
        let fns = self.fns;
        // p11ha's own threads (recovery, the audit trail, copies to members) keep the bound
        // everywhere: a hung module must not take them with it.
        if self.gate.here && !bounded::on_own_thread() {
            if self.gate.stuck(1) {
                return Err(Fault::TimedOut);
            }
            let out = bounded::here(move || f(fns));
            drop(pass);
            return out.map_err(Fault::from);
        }
        if let Some(serial) = &self.gate.serial {
            // Queued for the serving thread; a call still queued at the deadline is not made.
            return serial
                .run(self.timeout, &self.gate.pace, move || {
                    // Moved in: the instance counts the call as inside until it returns.
                    let inside = pass;
                    let began = Instant::now();
                    let out = f(fns);
                    inside.gate.pace.record(began.elapsed());
                    out
                })
                .map_err(Fault::from);
        }
        let sleep_first = self.gate.pace.sleep_first();
        bounded::run_after(self.timeout, sleep_first, move || {
            // The pass is moved in so the instance counts this call as inside until it returns.
            let inside = pass;
            let began = Instant::now();
            let out = f(fns);
            inside.gate.pace.record(began.elapsed());
            out
        })
        .map_err(Fault::from)
    }

    /// [`Instance::call`] for a closure that answers with a member result itself.
    pub(crate) fn try_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(Fns) -> MemberResult<T> + Send + 'static,
    ) -> MemberResult<T> {
        self.call(f)?
    }

    /// Closes the instance to new calls (they fail with [`Fault::Closed`] without entering the
    /// module) and finalizes it once the calls inside have returned. A call still inside after
    /// `drain` (a hung member) keeps the instance initialized: the answer is then false.
    pub fn retire(&self, drain: Duration) -> bool {
        self.gate.close();
        let deadline = Instant::now() + drain;
        while !self.gate.drained() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let fns = self.fns;
        let _ = bounded::run(self.timeout, move || {
            ck!(fns, C_Finalize(std::ptr::null_mut()))
        });
        true
    }

    /// Whether calls into the instance run on the application's thread ([`Calls::OnCaller`]).
    pub fn calls_on_caller(&self) -> bool {
        self.gate.here
    }

    /// Whether calls on the application's thread ([`Calls::OnCaller`]) are stuck inside: some
    /// are, and none has left for longer than the receive timeout. The management round drops
    /// such a member, so that threads stop walking into it.
    pub fn is_stuck(&self) -> bool {
        self.gate.here && self.gate.stuck(0)
    }

    /// Whether the instance was taken out of service ([`Instance::retire`]).
    pub fn is_retired(&self) -> bool {
        self.gate.closed.load(Ordering::SeqCst)
    }

    /// True when both are the same module instance: the module handed out one shared function
    /// table (SoftHSM does; p11-kit-client makes a new one per C_GetFunctionList).
    pub fn same_module(&self, other: &Instance) -> bool {
        std::ptr::eq(self.fns.0, other.fns.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_admits_no_call_and_drains_when_the_last_one_leaves() {
        let gate = Arc::new(Gate::default());
        let inside = gate.enter(false).expect("open gate admits");
        assert!(!gate.drained());
        gate.close();
        assert!(gate.enter(false).is_none(), "closed gate admitted a call");
        assert!(
            !gate.drained(),
            "refused call left a count behind or the first one vanished"
        );
        drop(inside);
        assert!(gate.drained());
    }

    /// A fake module whose C_GenerateRandom stays inside for `ulRandomLen` ms and counts the
    /// calls inside at once.
    static INSIDE: AtomicUsize = AtomicUsize::new(0);
    static MOST: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn slow_random(_: CK_SESSION_HANDLE, _: CK_BYTE_PTR, ms: CK_ULONG) -> CK_RV {
        let now = INSIDE.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        INSIDE.fetch_sub(1, Ordering::SeqCst);
        CKR_OK
    }

    fn fake(calls: Calls, timeout: Duration) -> Arc<Instance> {
        // SAFETY: a table of None function pointers is a valid CK_FUNCTION_LIST.
        let mut list: CK_FUNCTION_LIST = unsafe { std::mem::zeroed() };
        list.C_GenerateRandom = Some(slow_random);
        Instance::new(0, Fns(Box::leak(Box::new(list))), timeout, calls)
    }

    fn random(inst: &Instance, ms: CK_ULONG) -> MemberResult<CK_RV> {
        inst.call(move |fns| ck!(fns, C_GenerateRandom(0, std::ptr::null_mut(), ms)))
    }

    // One test for both, since they share the fake's counters.
    #[test]
    fn calls_take_turns_only_where_the_module_needs_it_and_a_turn_never_outwaits_its_deadline() {
        for (calls, most) in [(Calls::OneAtATime, 1), (Calls::Concurrent, 4)] {
            MOST.store(0, Ordering::SeqCst);
            let inst = fake(calls, Duration::from_secs(5));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let inst = inst.clone();
                    std::thread::spawn(move || random(&inst, 100))
                })
                .collect();
            for t in threads {
                assert_eq!(t.join().unwrap(), Ok(CKR_OK), "{calls:?}");
            }
            // Concurrent: 4 calls of 100 ms started together overlap (all four, on any
            // machine that starts 4 threads within 100 ms).
            assert!(
                if most == 1 {
                    MOST.load(Ordering::SeqCst) == 1
                } else {
                    MOST.load(Ordering::SeqCst) > 1
                },
                "{calls:?}: {} calls inside at once",
                MOST.load(Ordering::SeqCst)
            );
        }

        // A call that hangs holds the serving thread; the next one gives up at its own
        // deadline, without entering the module, and leaves the gate once the hung call
        // returns (the serving thread drops it unmade).
        let inst = fake(Calls::OneAtATime, Duration::from_millis(200));
        let hung = {
            let inst = inst.clone();
            std::thread::spawn(move || random(&inst, 1500))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(random(&inst, 0), Err(Fault::TimedOut));
        assert_eq!(
            INSIDE.load(Ordering::SeqCst),
            1,
            "the second call waited for the hung one to return"
        );
        assert_eq!(hung.join().unwrap(), Err(Fault::TimedOut));
        // Once the hung call returns, the gate drains: nothing waits for a turn any more.
        assert!(
            inst.retire(Duration::from_secs(3)),
            "a call stayed inside the gate"
        );
    }

    /// Calls into an [`Calls::OnCaller`] fake: the thread each ran on, and how long it stays
    /// inside (`ulRandomLen` ms). Counters of their own: tests run in parallel.
    static HERE_INSIDE: AtomicUsize = AtomicUsize::new(0);
    static HERE_MOST: AtomicUsize = AtomicUsize::new(0);
    static HERE_ENTERED: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static RAN_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    extern "C" fn here_random(_: CK_SESSION_HANDLE, _: CK_BYTE_PTR, ms: CK_ULONG) -> CK_RV {
        RAN_HERE.with(|r| r.set(true));
        HERE_ENTERED.fetch_add(1, Ordering::SeqCst);
        let now = HERE_INSIDE.fetch_add(1, Ordering::SeqCst) + 1;
        HERE_MOST.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        HERE_INSIDE.fetch_sub(1, Ordering::SeqCst);
        CKR_OK
    }

    fn here_fake(timeout: Duration) -> Arc<Instance> {
        // SAFETY: a table of None function pointers is a valid CK_FUNCTION_LIST.
        let mut list: CK_FUNCTION_LIST = unsafe { std::mem::zeroed() };
        list.C_GenerateRandom = Some(here_random);
        let calls = Calls::for_provider(std::path::Path::new("/usr/lib/softhsm.so"), false);
        assert_eq!(calls, Calls::OnCaller);
        Instance::new(0, Fns(Box::leak(Box::new(list))), timeout, calls)
    }

    /// Runs `f` on a new thread, marked as p11ha's own when `own`.
    fn on_thread<T: Send + 'static>(own: bool, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            if own {
                bounded::mark_own_thread();
            }
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn unbounded_calls_run_on_the_callers_thread_and_a_stuck_module_admits_no_more() {
        let inst = here_fake(Duration::from_millis(150));
        let ran_here = |own: bool| {
            let inst = inst.clone();
            on_thread(own, move || {
                let rv = random(&inst, 0);
                (rv, RAN_HERE.with(|r| r.get()))
            })
        };
        assert_eq!(ran_here(false), (Ok(CKR_OK), true));
        // p11ha's own threads keep the bound: the call runs on a pool thread.
        assert_eq!(ran_here(true), (Ok(CKR_OK), false));

        // Several at once, like the application's threads.
        HERE_MOST.store(0, Ordering::SeqCst);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let inst = inst.clone();
                std::thread::spawn(move || random(&inst, 100))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(CKR_OK));
        }
        assert!(HERE_MOST.load(Ordering::SeqCst) > 1, "calls took turns");

        // One call stays inside for 1.2 s. Within the timeout another call still enters; once
        // nothing has left for longer than the timeout, a call fails at once without entering.
        let stuck = {
            let inst = inst.clone();
            std::thread::spawn(move || random(&inst, 1200))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(random(&inst, 0), Ok(CKR_OK), "within the timeout");
        std::thread::sleep(Duration::from_millis(400));
        let entered = HERE_ENTERED.load(Ordering::SeqCst);
        let t0 = Instant::now();
        assert!(inst.is_stuck());
        assert_eq!(
            random(&inst, 0),
            Err(Fault::TimedOut),
            "stuck module admitted a call"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            HERE_ENTERED.load(Ordering::SeqCst),
            entered,
            "it entered the module"
        );
        // The stuck call is not bounded: it returns when the module lets it, and then calls
        // enter again.
        assert_eq!(stuck.join().unwrap(), Ok(CKR_OK));
        assert!(!inst.is_stuck());
        assert_eq!(
            random(&inst, 0),
            Ok(CKR_OK),
            "after the stuck call returned"
        );

        // A call given longer than the receive timeout (key generation) is not taken for stuck.
        let long = {
            let long = inst.with_timeout(Duration::from_secs(5));
            std::thread::spawn(move || random(&long, 500))
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!inst.is_stuck());
        assert_eq!(
            random(&inst, 0),
            Ok(CKR_OK),
            "a long call made the module look stuck"
        );
        assert_eq!(long.join().unwrap(), Ok(CKR_OK));
        assert!(inst.retire(Duration::from_secs(3)));
    }

    #[test]
    fn a_call_leaving_on_another_thread_drains_the_gate() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter(false).unwrap();
        gate.close();
        std::thread::spawn(move || drop(pass)).join().unwrap();
        assert!(gate.drained());
    }
}
