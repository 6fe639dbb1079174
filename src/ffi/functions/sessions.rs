//! Session management: opening and closing sessions, their state, login and logout.
//!
//! Every `unsafe` block below dereferences the caller's pointers through `args`, which checks
//! them for NULL and their lengths for sanity; beyond that PKCS#11 makes the caller promise
//! they are valid, which is the one SAFETY argument these blocks have.

use super::session;
use crate::ffi::args::*;
use crate::ffi::entry::{entry, ha};
use cryptoki_sys::*;
use std::ffi::c_void;

entry! {
    fn C_OpenSession(slot_id: CK_SLOT_ID, flags: CK_FLAGS, _app: *mut c_void, _notify: CK_NOTIFY, ph_session: *mut CK_SESSION_HANDLE) {
        let ha = ha()?;
        // SAFETY: see the module docs.
        let ph = unsafe { out(ph_session) }?;
        *ph = ha.open_session(slot_id, flags)?;
        Ok(())
    }

    fn C_CloseSession(h: CK_SESSION_HANDLE) {
        ha()?.close_session(h)
    }

    fn C_CloseAllSessions(slot_id: CK_SLOT_ID) {
        ha()?.close_all_sessions(slot_id)
    }

    fn C_GetSessionInfo(h: CK_SESSION_HANDLE, p_info: *mut CK_SESSION_INFO) {
        let s = session(h)?;
        let info = CK_SESSION_INFO { slotID: s.group.slot_id, state: s.state(), flags: s.flags, ulDeviceError: 0 };
        // SAFETY: see the module docs.
        *unsafe { out(p_info) }? = info;
        Ok(())
    }

    fn C_GetOperationState(h: CK_SESSION_HANDLE, _state: *mut CK_BYTE, _len: *mut CK_ULONG) {
        // Operation state is one member's internal format and cannot move to another member.
        session(h)?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    }

    fn C_SetOperationState(h: CK_SESSION_HANDLE, _state: *mut CK_BYTE, _len: CK_ULONG, _enc: CK_OBJECT_HANDLE, _auth: CK_OBJECT_HANDLE) {
        session(h)?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    }

    fn C_Login(h: CK_SESSION_HANDLE, user: CK_USER_TYPE, p_pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        let s = session(h)?;
        if !matches!(user, CKU_USER | CKU_SO | CKU_CONTEXT_SPECIFIC) {
            return Err(CKR_USER_TYPE_INVALID);
        }
        // SAFETY: see the module docs.
        let p = match unsafe { pin(p_pin, pin_len) } {
            // Longer than any token takes: what the member would say of it, without trying it.
            Err(CKR_PIN_LEN_RANGE) => return Err(CKR_PIN_INCORRECT),
            other => other?,
        };
        s.login(user, p)
    }

    fn C_Logout(h: CK_SESSION_HANDLE) {
        session(h)?.logout()
    }
}
