//! p11ha's object-synchronization calls , used by
//! `p11ha synchronize`: the caller opens a session on the group's slot and logs in first (the
//! user for `p11ha_synchronize`, the SO where CKA_TRUSTED needs it for `p11ha_init_cloning_key`).

use super::args::out;
use super::entry::{guard, ha};
use crate::ha::sync;
use std::os::raw::c_ulong;

/// Copies every token object any up member of the group in `slot_id` has to every up member
/// that lacks it; `*p_copied` receives the number of objects copied.
///
/// # Safety
/// `p_copied` must point to a writable `CK_ULONG`.
#[no_mangle]
pub unsafe extern "C" fn p11ha_synchronize(slot_id: c_ulong, p_copied: *mut c_ulong) -> c_ulong {
    guard("p11ha_synchronize", || {
        let g = ha()?.group(slot_id)?.clone();
        // SAFETY: the caller promises a writable CK_ULONG (or NULL, refused).
        let copied = unsafe { out(p_copied) }?;
        *copied = sync::synchronize::synchronize(&g)?;
        Ok(())
    })
}

/// Creates the group cloning key identically on every member of the group in `slot_id`;
/// refuses with CKR_FUNCTION_REJECTED when a member already has one. `*p_members` receives the
/// number of members provisioned.
///
/// # Safety
/// `p_members` must point to a writable `CK_ULONG`.
#[no_mangle]
pub unsafe extern "C" fn p11ha_init_cloning_key(
    slot_id: c_ulong,
    p_members: *mut c_ulong,
) -> c_ulong {
    guard("p11ha_init_cloning_key", || {
        let g = ha()?.group(slot_id)?.clone();
        // SAFETY: the caller promises a writable CK_ULONG (or NULL, refused).
        let members = unsafe { out(p_members) }?;
        *members = sync::provision::init_cloning_key(&g)?;
        Ok(())
    })
}
