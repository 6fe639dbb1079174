//! p11ha's object-synchronization calls, used by `p11ha synchronize`: the caller opens a
//! session on the group's slot and logs in first (the user for most, the SO where CKA_TRUSTED
//! needs it for `p11ha_init_cloning_key`). The C functions return a count; the Rust functions
//! below return the whole report, for the `p11ha` command (which loads the library in-process).

use super::args::out;
use super::entry::{guard, ha};
use crate::ha::sync;
use crate::ha::sync::catchup::Outcome;
use crate::ha::sync::check::PairCheck;
use crate::ha::sync::owed::OwedReport;
use crate::ha::sync::synchronize::Report;
use cryptoki_sys::{CKR_FUNCTION_FAILED, CKR_SLOT_ID_INVALID, CK_RV, CK_SLOT_ID};
use std::os::raw::c_ulong;

/// Settles what members are owed, then copies every token object any up member of the group in
/// `slot_id` has to every up member that lacks it; `*p_copied` receives the number of objects
/// copied. CKR_FUNCTION_FAILED (with the count still written) when an object could not be
/// copied or a member was skipped.
///
/// # Safety
/// `p_copied` must point to a writable `CK_ULONG`.
#[no_mangle]
pub unsafe extern "C" fn p11ha_synchronize(slot_id: c_ulong, p_copied: *mut c_ulong) -> c_ulong {
    let mut complete = true;
    let rv = guard("p11ha_synchronize", || {
        let g = ha()?.group(slot_id)?.clone();
        // SAFETY: the caller promises a writable CK_ULONG (or NULL, refused).
        let copied = unsafe { out(p_copied) }?;
        let report = sync::synchronize::synchronize(&g);
        *copied = report.copied.copied as c_ulong;
        complete = report.complete();
        Ok(())
    });
    match (rv, complete) {
        (0, false) => CKR_FUNCTION_FAILED,
        _ => rv,
    }
}

/// Creates the group's cloning keys on every member of the group in `slot_id` that has none
/// (all of them for a new group); refuses with CKR_FUNCTION_REJECTED when every member has
/// them. `*p_members` receives the number of members provisioned.
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
        *members = sync::provision::init_cloning_key(&g)?.len() as c_ulong;
        Ok(())
    })
}

/// Runs `f` on the synchronized group in `slot`; a panic never leaves.
fn with_group<T>(
    name: &str,
    slot: CK_SLOT_ID,
    f: impl FnOnce(&crate::ha::group::Group) -> Result<T, CK_RV>,
) -> Result<T, CK_RV> {
    let mut result = None;
    let rv = guard(name, || {
        let g = ha()?.group(slot)?.clone();
        if g.passthrough || !g.sync.enabled() {
            return Err(CKR_SLOT_ID_INVALID);
        }
        result = Some(f(&g)?);
        Ok(())
    });
    result.ok_or(rv)
}

/// `p11ha synchronize`: what [`p11ha_synchronize`] does, reported in full.
pub fn synchronize(slot: CK_SLOT_ID) -> Result<Report, CK_RV> {
    with_group("synchronize", slot, |g| {
        Ok(sync::synchronize::synchronize(g))
    })
}

/// Waits (at most `within`) until every configured member of the group is up: a member's module
/// may miss its token at a fresh C_Initialize while another process writes it (SoftHSM does),
/// and the management thread's next round brings it in. Returns whether all are up.
pub fn wait_all_up(slot: CK_SLOT_ID, within: std::time::Duration) -> Result<bool, CK_RV> {
    with_group("wait", slot, |g| {
        let end = std::time::Instant::now() + within;
        loop {
            let all = g.members().iter().all(|m| m.is_removed() || m.is_up());
            if all || std::time::Instant::now() >= end {
                return Ok(all);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
}

/// `p11ha synchronize -init-cloning-key`: the serials of the members provisioned.
pub fn init_cloning_key(slot: CK_SLOT_ID) -> Result<Vec<String>, CK_RV> {
    with_group("init-cloning-key", slot, |g| {
        Ok(sync::provision::init_cloning_key(g)?)
    })
}

/// `p11ha synchronize -show-owed`: what each member is owed.
pub fn show_owed(slot: CK_SLOT_ID) -> Result<OwedReport, CK_RV> {
    with_group("show-owed", slot, |g| Ok(sync::owed::show(g)))
}

/// `p11ha synchronize -prune`: drops records about members no longer configured.
pub fn prune(slot: CK_SLOT_ID) -> Result<usize, CK_RV> {
    with_group("prune", slot, |g| Ok(sync::owed::prune(g)))
}

/// `p11ha synchronize -check`: which key classes travel between which members.
pub fn check(slot: CK_SLOT_ID) -> Result<Vec<PairCheck>, CK_RV> {
    with_group("check", slot, |g| Ok(sync::check::check(g)?))
}

/// Brings the member `serial` up to date as at its reintroduction (with the HA log's
/// reintroduction line): used after members were provisioned, with the user logged in.
pub fn reintroduce(slot: CK_SLOT_ID, serial: &str) -> Result<Outcome, CK_RV> {
    with_group("reintroduce", slot, |g| {
        let m = g
            .members()
            .iter()
            .find(|m| m.serial == serial && !m.is_removed())
            .cloned()
            .ok_or(CKR_SLOT_ID_INVALID)?;
        let b = m.binding().ok_or(cryptoki_sys::CKR_DEVICE_ERROR)?;
        let o = sync::catchup::bring_up_to_date(g, serial, &b.instance, b.slot, false)
            .map_err(|(_, f)| f.rv())?;
        let attempt = m.health().attempts + 1;
        if !o.busy {
            g.log
                .reintroducing(&g.serial, attempt, o.copied.copied, serial);
            if let (n @ 1.., Some(first)) = (o.copied.failed, &o.copied.first) {
                g.log.not_copied(&g.serial, attempt, n, serial, first);
            }
        }
        Ok(o)
    })
}
