//! A member session p11ha opens for its own synchronization work.

use crate::ha::group::Login;
use crate::provider::{Fault, Instance, MemberResult};
use cryptoki_sys::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A member session opened for synchronization and logged in like the group, closed on drop.
pub(crate) struct Opened {
    pub(crate) inst: Arc<Instance>,
    pub(crate) session: CK_SESSION_HANDLE,
    counter: Option<Arc<AtomicUsize>>,
}

impl Opened {
    /// Opens a read-write session on `slot` and logs it in with `login`. `counter` is the
    /// binding's count of open sessions (a member logs out with its last one), when bound.
    pub(crate) fn open(
        inst: &Arc<Instance>,
        slot: CK_SLOT_ID,
        login: &Option<Login>,
        counter: Option<Arc<AtomicUsize>>,
    ) -> MemberResult<Self> {
        let session = inst.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
        if let Some(c) = &counter {
            c.fetch_add(1, Ordering::AcqRel);
        }
        let me = Opened {
            inst: inst.clone(),
            session,
            counter,
        };
        if let Some(Login { user, pin }) = login.clone() {
            match inst.login(session, user, pin) {
                Ok(()) | Err(Fault::Rv(CKR_USER_ALREADY_LOGGED_IN)) => {}
                Err(f) => return Err(f),
            }
        }
        Ok(me)
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let _ = self.inst.close_session(self.session);
        if let Some(c) = &self.counter {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
