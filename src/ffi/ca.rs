//! Status calls beyond PKCS#11: Luna's `CA_GetHAState` with Luna's struct layout, so
//! applications written for Luna read member state unchanged, and p11ha's richer
//! `p11ha_group_status` (declared in include/p11ha.h).

use super::args::out;
use super::entry::{guard, ha};
use crate::ha::group::Group;
use std::os::raw::{c_char, c_uchar, c_ulong};

/// Most members a group reports (Luna's limit too).
pub const P11HA_MAX_MEMBERS: usize = 32;

/// Luna's `CK_HA_MEMBER`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CK_HA_MEMBER {
    pub memberSerial: [c_uchar; 20],
    /// CKR_OK while the member is up, else the error that took it down.
    pub memberStatus: c_ulong,
}

/// Luna's `CK_HA_STATUS`.
#[repr(C)]
pub struct CK_HA_STATUS {
    pub groupSerial: [c_uchar; 20],
    pub memberList: [CK_HA_MEMBER; P11HA_MAX_MEMBERS],
    pub listSize: c_ulong,
}

/// One member in `p11ha_group_status`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct P11haMemberStatus {
    /// NUL-terminated token serial.
    pub serial: [c_char; 33],
    /// 1 for a standby member.
    pub standby: c_uchar,
    /// 1 while the member is up.
    pub alive: c_uchar,
    /// CKR_OK while up, else the error that took the member down or the last recovery error.
    pub last_error: c_ulong,
    /// Recovery attempts since the member went down.
    pub recovery_attempts: c_ulong,
    /// 1 while auto-recovery may still try this member.
    pub auto_recovery: c_uchar,
    /// Operations in progress on the member.
    pub in_flight: c_ulong,
}

/// A group in `p11ha_group_status`.
#[repr(C)]
pub struct P11haGroupStatus {
    pub slot_id: c_ulong,
    /// NUL-terminated group label.
    pub label: [c_char; 33],
    /// NUL-terminated group serial, as the token shows it.
    pub serial: [c_char; 17],
    /// Open application sessions.
    pub sessions: c_ulong,
    pub member_count: c_ulong,
    pub members: [P11haMemberStatus; P11HA_MAX_MEMBERS],
}

/// Copies `s` into a NUL-terminated fixed field (truncating; the last byte is always NUL).
fn copy_text<T: Copy>(dst: &mut [T], s: &str, from: impl Fn(u8) -> T) {
    let room = dst.len().saturating_sub(1);
    for (i, slot) in dst.iter_mut().enumerate() {
        *slot = from(if i < room {
            s.as_bytes().get(i).copied().unwrap_or(0)
        } else {
            0
        });
    }
}

fn uchar(b: u8) -> c_uchar {
    b
}

fn cchar(b: u8) -> c_char {
    b as c_char
}

/// The members a status call reports: those in the configuration. A member removed from it
/// (removemember, removestandby) stays in the group's list for sessions that still hold it, but
/// is no longer reported; added back, it is a new member and reported once.
fn listed(g: &Group) -> Vec<std::sync::Arc<crate::ha::member::Member>> {
    g.members()
        .iter()
        .filter(|m| !m.is_removed())
        .cloned()
        .collect()
}

fn find_group(slot: c_ulong) -> Result<std::sync::Arc<Group>, c_ulong> {
    ha()?.group(slot).cloned()
}

/// Luna-compatible HA state of the group in `slot_id`.
///
/// # Safety
/// `p_state` must point to a writable `CK_HA_STATUS`.
#[no_mangle]
pub unsafe extern "C" fn CA_GetHAState(slot_id: c_ulong, p_state: *mut CK_HA_STATUS) -> c_ulong {
    guard("CA_GetHAState", || {
        let g = find_group(slot_id)?;
        // SAFETY: the caller promises a writable CK_HA_STATUS (or NULL, refused).
        let st = unsafe { out(p_state) }?;
        copy_text(&mut st.groupSerial, &g.serial, uchar);
        let members = listed(&g);
        let n = members.len().min(P11HA_MAX_MEMBERS);
        for (dst, m) in st.memberList.iter_mut().zip(members.iter()) {
            copy_text(&mut dst.memberSerial, &m.serial, uchar);
            let h = m.health();
            dst.memberStatus = if h.binding.is_some() {
                0
            } else {
                h.last_error.max(1)
            };
        }
        st.listSize = n as c_ulong;
        Ok(())
    })
}

/// p11ha's status of the group in `slot_id`: members with liveness, last error, recovery
/// attempts and load.
///
/// # Safety
/// `p_status` must point to a writable `P11haGroupStatus`.
#[no_mangle]
pub unsafe extern "C" fn p11ha_group_status(
    slot_id: c_ulong,
    p_status: *mut P11haGroupStatus,
) -> c_ulong {
    guard("p11ha_group_status", || {
        let g = find_group(slot_id)?;
        // SAFETY: the caller promises a writable P11haGroupStatus (or NULL, refused).
        let st = unsafe { out(p_status) }?;
        st.slot_id = g.slot_id;
        copy_text(&mut st.label, &g.label, cchar);
        copy_text(&mut st.serial, &g.serial, cchar);
        st.sessions = g.session_count() as c_ulong;
        let members = listed(&g);
        st.member_count = members.len().min(P11HA_MAX_MEMBERS) as c_ulong;
        for (dst, m) in st.members.iter_mut().zip(members.iter()) {
            let h = m.health();
            copy_text(&mut dst.serial, &m.serial, cchar);
            dst.standby = m.standby.into();
            dst.alive = h.binding.is_some().into();
            dst.last_error = h.last_error;
            dst.recovery_attempts = h.attempts;
            dst.auto_recovery = h.auto_recovery.into();
            dst.in_flight = m.in_flight.load(std::sync::atomic::Ordering::Relaxed) as c_ulong;
        }
        Ok(())
    })
}
