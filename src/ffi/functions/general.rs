//! General-purpose, slot and token management: C_Initialize, C_Finalize, C_GetInfo, the slot,
//! token and mechanism queries, C_InitToken, C_InitPIN, C_SetPIN, C_WaitForSlotEvent, and the
//! legacy parallel-function calls.
//!
//! Every `unsafe` block below dereferences the caller's pointers through `args`, which checks
//! them for NULL and their lengths for sanity; beyond that PKCS#11 makes the caller promise
//! they are valid, which is the one SAFETY argument these blocks have.

use super::session;
use crate::ffi::args::*;
use crate::ffi::entry::{entry, ha, LIBRARY};
use crate::ha::group::{crate_version, pad};
use cryptoki_sys::*;
use std::ffi::c_void;

entry! {
    fn C_Initialize(p_init_args: *mut c_void) {
        // SAFETY: NULL or the caller's CK_C_INITIALIZE_ARGS.
        let args = unsafe { (p_init_args as *const CK_C_INITIALIZE_ARGS).as_ref() };
        if let Some(a) = args {
            if !a.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let some = [a.CreateMutex.is_some(), a.DestroyMutex.is_some(), a.LockMutex.is_some(), a.UnlockMutex.is_some()];
            if some.iter().any(|b| *b) && !some.iter().all(|b| *b) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // p11ha locks with its own primitives; an application that insists on its own gets a no.
            if some[0] && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(CKR_CANT_LOCK);
            }
        }
        let no_threads = args.is_some_and(|a| a.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS != 0);
        let mut lib = LIBRARY.write();
        if lib.is_some() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        crate::ffi::entry::watch_forks();
        crate::bounded::set_inline(no_threads);
        *lib = Some(crate::ffi::init::start()?);
        Ok(())
    }

    fn C_Finalize(p_reserved: *mut c_void) {
        if !p_reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let lib = LIBRARY.write().take().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
        lib.stop();
        Ok(())
    }

    fn C_GetInfo(p_info: *mut CK_INFO) {
        ha()?;
        // SAFETY: see the module docs.
        let info = unsafe { out(p_info) }?;
        *info = CK_INFO {
            cryptokiVersion: CK_VERSION { major: 2, minor: 40 },
            manufacturerID: pad("p11ha"),
            flags: 0,
            libraryDescription: pad("p11ha high-availability PKCS#11"),
            libraryVersion: crate_version(),
        };
        Ok(())
    }

    fn C_GetSlotList(_token_present: CK_BBOOL, p_slot_list: *mut CK_SLOT_ID, pul_count: *mut CK_ULONG) {
        // Virtual slots always hold their token, so the list is the same either way.
        let slots = ha()?.slot_ids();
        // SAFETY: see the module docs.
        unsafe { deliver_list(&slots, p_slot_list, pul_count) }
    }

    fn C_GetSlotInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_SLOT_INFO) {
        let ha = ha()?;
        let info = ha.group(slot_id)?.slot_info();
        // SAFETY: see the module docs.
        *unsafe { out(p_info) }? = info;
        Ok(())
    }

    fn C_GetTokenInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_TOKEN_INFO) {
        let ha = ha()?;
        let info = ha.group(slot_id)?.token_info();
        // SAFETY: see the module docs.
        *unsafe { out(p_info) }? = info;
        Ok(())
    }

    fn C_GetMechanismList(slot_id: CK_SLOT_ID, p_list: *mut CK_MECHANISM_TYPE, pul_count: *mut CK_ULONG) {
        let ha = ha()?;
        let list = ha.group(slot_id)?.mechanisms();
        // SAFETY: see the module docs.
        unsafe { deliver_list(&list, p_list, pul_count) }
    }

    fn C_GetMechanismInfo(slot_id: CK_SLOT_ID, mech: CK_MECHANISM_TYPE, p_info: *mut CK_MECHANISM_INFO) {
        let ha = ha()?;
        let group = ha.group(slot_id)?;
        // SAFETY: see the module docs.
        let info = unsafe { out(p_info) }?;
        *info = group.mechanism_info(mech)?;
        Ok(())
    }

    fn C_InitToken(slot_id: CK_SLOT_ID, _pin: *mut CK_UTF8CHAR, _pin_len: CK_ULONG, _label: *mut CK_UTF8CHAR) {
        // A virtual token is made of initialized members; members are initialized one by one.
        ha()?.group(slot_id)?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    }

    fn C_InitPIN(h: CK_SESSION_HANDLE, p_pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let p = unsafe { pin(p_pin, pin_len) }?.ok_or(CKR_ARGUMENTS_BAD)?;
        s.init_pin(p)
    }

    fn C_SetPIN(h: CK_SESSION_HANDLE, p_old: *mut CK_UTF8CHAR, old_len: CK_ULONG, p_new: *mut CK_UTF8CHAR, new_len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (old, new) = unsafe { (pin(p_old, old_len)?, pin(p_new, new_len)?) };
        s.set_pin(old.ok_or(CKR_ARGUMENTS_BAD)?, new.ok_or(CKR_ARGUMENTS_BAD)?)
    }

    fn C_GetFunctionStatus(h: CK_SESSION_HANDLE) {
        session(h)?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    }

    fn C_CancelFunction(h: CK_SESSION_HANDLE) {
        session(h)?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    }

    fn C_WaitForSlotEvent(flags: CK_FLAGS, p_slot: *mut CK_SLOT_ID, _reserved: *mut c_void) {
        ha()?;
        // SAFETY: see the module docs.
        unsafe { out(p_slot) }?;
        // Virtual slots never change; a blocking wait would never return.
        if flags & CKF_DONT_BLOCK != 0 { Err(CKR_NO_EVENT) } else { Err(CKR_FUNCTION_NOT_SUPPORTED) }
    }
}
