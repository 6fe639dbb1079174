//! One member token of a group and its health: up (bound to a module instance and slot) or down.

use crate::provider::Instance;
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Orders member (re)joins against session opening, for activeBasic recovery.
static JOIN_SEQ: AtomicU64 = AtomicU64::new(1);

pub fn current_seq() -> u64 {
    JOIN_SEQ.load(Ordering::Acquire)
}

/// Where a live member is reached.
#[derive(Clone)]
pub struct Binding {
    pub instance: Arc<Instance>,
    pub slot: CK_SLOT_ID,
    /// The member's mechanisms, read when it joined.
    pub mechanisms: Arc<Vec<CK_MECHANISM_TYPE>>,
    /// `JOIN_SEQ` value when it joined.
    pub joined: u64,
    /// Member sessions open on this binding. When it falls to zero the member's login is gone,
    /// and with it (on SoftHSM, for one) the numbering of its private objects.
    pub open_sessions: Arc<AtomicUsize>,
}

#[derive(Clone)]
pub struct Health {
    pub binding: Option<Binding>,
    /// The error that took the member down (0 while it is up or never came up).
    pub last_error: CK_RV,
    /// Recovery attempts since the member went down.
    pub attempts: u64,
    /// False after a login failure or when attempts are exhausted, until a manual recovery.
    pub auto_recovery: bool,
    /// Last token info seen, so the virtual token can be described while members are down.
    pub token: Option<CK_TOKEN_INFO>,
    /// Taken down by a deactivation (HALOG_MEMBER_DEACTIVATED), until it is up again. Kept
    /// apart from `last_error`, which failed recovery attempts overwrite with their own errors
    /// (a p11-kit member whose server is gone is CKR_TOKEN_NOT_PRESENT, like a deactivation).
    pub deactivated: bool,
}

pub struct Member {
    pub serial: String,
    pub standby: bool,
    /// Taken out of the configuration while running: never used again.
    removed: AtomicBool,
    health: Mutex<Health>,
    /// Operations in progress on this member (the load balancer's measure).
    pub in_flight: AtomicUsize,
}

/// Counts an operation against a member while alive.
pub struct InFlight(Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Member {
    pub fn new(serial: String, standby: bool) -> Self {
        Member {
            serial,
            standby,
            removed: AtomicBool::new(false),
            health: Mutex::new(Health {
                binding: None,
                last_error: 0,
                attempts: 0,
                auto_recovery: true,
                token: None,
                deactivated: false,
            }),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn health(&self) -> Health {
        self.health.lock().clone()
    }

    pub fn binding(&self) -> Option<Binding> {
        self.health.lock().binding.clone()
    }

    pub fn is_up(&self) -> bool {
        self.health.lock().binding.is_some()
    }

    pub fn busy(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Binds the member to an instance and slot; returns the binding.
    pub fn bring_up(
        &self,
        instance: Arc<Instance>,
        slot: CK_SLOT_ID,
        token: CK_TOKEN_INFO,
        mechanisms: Vec<CK_MECHANISM_TYPE>,
    ) -> Binding {
        let binding = Binding {
            instance,
            slot,
            mechanisms: Arc::new(mechanisms),
            joined: JOIN_SEQ.fetch_add(1, Ordering::AcqRel) + 1,
            open_sessions: Arc::new(AtomicUsize::new(0)),
        };
        let mut h = self.health.lock();
        h.binding = Some(binding.clone());
        h.last_error = 0;
        h.attempts = 0;
        h.token = Some(token);
        h.deactivated = false;
        binding
    }

    /// What the member reports of its token now.
    pub fn set_token(&self, token: CK_TOKEN_INFO) {
        self.health.lock().token = Some(token);
    }

    /// Takes the member down if it is still bound to `instance_id` (a failure seen by several
    /// threads drops it once). Returns whether this call took it down.
    pub fn take_down(&self, instance_id: u64, rv: CK_RV) -> bool {
        let mut h = self.health.lock();
        match &h.binding {
            Some(b) if b.instance.id == instance_id => {
                h.binding = None;
                h.last_error = rv;
                h.attempts = 0;
                h.deactivated = crate::provider::is_deactivation(rv);
                true
            }
            _ => false,
        }
    }

    /// Records why a member that never came up is down.
    pub fn mark_unreachable(&self, rv: CK_RV) {
        let mut h = self.health.lock();
        h.binding = None;
        h.last_error = rv;
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Takes the member out of service for good (it left the configuration).
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        let mut h = self.health.lock();
        h.binding = None;
        h.auto_recovery = false;
    }

    /// A manual recovery request: auto-recovery on again, attempts counted from zero.
    pub fn rearm(&self) {
        let mut h = self.health.lock();
        h.auto_recovery = true;
        h.attempts = 0;
    }

    pub fn set_auto_recovery(&self, on: bool) {
        self.health.lock().auto_recovery = on;
    }

    /// Counts a recovery attempt and returns its number.
    pub fn count_attempt(&self, rv: CK_RV) -> u64 {
        let mut h = self.health.lock();
        h.attempts += 1;
        h.last_error = rv;
        h.attempts
    }
}
