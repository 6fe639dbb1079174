//! A member session p11ha opens for its own synchronization work.

use crate::ha::group::Login;
use crate::provider::{Fault, Instance, MemberResult};
use cryptoki_sys::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A member session opened for synchronization and logged in like the group, closed on drop.
pub(crate) struct Opened<'a> {
    inst: &'a Instance,
    pub(crate) session: CK_SESSION_HANDLE,
    counter: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl<'a> Opened<'a> {
    pub(crate) fn open(
        inst: &'a Instance,
        slot: CK_SLOT_ID,
        login: &Option<Login>,
        counter: Option<Arc<std::sync::atomic::AtomicUsize>>,
    ) -> MemberResult<Self> {
        let session = inst.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
        if let Some(c) = &counter {
            c.fetch_add(1, Ordering::AcqRel);
        }
        let me = Opened {
            inst,
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

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        let _ = self.inst.close_session(self.session);
        if let Some(c) = &self.counter {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
