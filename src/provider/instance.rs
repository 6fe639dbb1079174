//! One initialized instance of a member module, and the gate that keeps C_Finalize away from
//! calls still running inside it. Every call into an instance runs through `Instance::call`:
//! on a pool thread, bounded by ReceiveTimeout, with owned data only.

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
}

/// One call inside the instance; leaving is dropping it, wherever the call finished.
pub(crate) struct Pass(Arc<Gate>);

impl Gate {
    /// SeqCst on both sides: either `enter` sees the gate closed, or `drained` sees the call.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Pass> {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(self.clone());
        (!self.closed.load(Ordering::SeqCst)).then_some(pass)
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
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Instance {
    pub(crate) fn new(provider: u32, fns: Fns, timeout: Duration) -> Arc<Instance> {
        let id = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        Arc::new(Instance {
            id,
            origin: id,
            provider,
            fns,
            gate: Arc::default(),
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
        let pass = self.gate.enter().ok_or(Fault::Closed)?;
        let fns = self.fns;
        bounded::run(self.timeout, move || {
            let _inside = pass;
            f(fns)
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
        let inside = gate.enter().expect("open gate admits");
        assert!(!gate.drained());
        gate.close();
        assert!(gate.enter().is_none(), "closed gate admitted a call");
        assert!(
            !gate.drained(),
            "refused call left a count behind or the first one vanished"
        );
        drop(inside);
        assert!(gate.drained());
    }

    #[test]
    fn a_call_leaving_on_another_thread_drains_the_gate() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter().unwrap();
        gate.close();
        std::thread::spawn(move || drop(pass)).join().unwrap();
        assert!(gate.drained());
    }
}
