//! p11ha's status API, `p11ha_group_status` (include/p11ha.h), read into plain Rust values.
//!
//! The C layout is the library's own ([`p11ha::ffi::ca::P11haGroupStatus`]), not a copy.

use std::os::raw::{c_char, c_ulong};
use std::path::Path;

use libloading::Library;
use p11ha::ffi::ca::P11haGroupStatus;

/// The C signature of `p11ha_group_status`.
pub type GroupStatusFn = unsafe extern "C" fn(c_ulong, *mut P11haGroupStatus) -> c_ulong;

/// One member as `p11ha_group_status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub serial: String,
    pub alive: bool,
    /// CKR_OK while up, else the error that took the member down (or the last recovery error).
    pub last_error: c_ulong,
    /// Operations in progress on the member.
    pub in_flight: c_ulong,
}

/// `p11ha_group_status` of one loaded libp11ha.so.
#[derive(Clone, Copy)]
pub struct StatusApi {
    f: GroupStatusFn,
}

impl StatusApi {
    /// Looks the function up in the library at `path`. When the application has loaded that
    /// path already, dlopen returns the same (initialized) library; the reference taken here is
    /// kept for the life of the process, like the application's.
    pub fn load(path: &Path) -> Result<StatusApi, String> {
        // SAFETY: loading libp11ha.so runs no code beyond its initializers, which expect this.
        let lib = unsafe { Library::new(path) }.map_err(|e| format!("{}: {e}", path.display()))?;
        let lib: &'static Library = Box::leak(Box::new(lib));
        Self::from_library(lib).ok_or_else(|| format!("{}: no p11ha_group_status", path.display()))
    }

    /// The function in `lib`, None when `lib` is not p11ha.
    pub fn from_library(lib: &'static Library) -> Option<StatusApi> {
        // SAFETY: include/p11ha.h declares this signature; the library outlives the pointer.
        let f = unsafe { lib.get::<GroupStatusFn>(b"p11ha_group_status\0") }.ok()?;
        Some(StatusApi { f: *f })
    }

    /// The raw status of the group in `slot`, or the CK_RV the call returned.
    pub fn group(&self, slot: c_ulong) -> Result<Box<P11haGroupStatus>, c_ulong> {
        // SAFETY: all-zero is a valid P11haGroupStatus (integers and byte arrays).
        let mut st: Box<P11haGroupStatus> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `st` is a writable P11haGroupStatus.
        match unsafe { (self.f)(slot, &mut *st) } {
            0 => Ok(st),
            rv => Err(rv),
        }
    }

    /// The members of the group in `slot`.
    pub fn members(&self, slot: c_ulong) -> Result<Vec<MemberState>, String> {
        let st = self
            .group(slot)
            .map_err(|rv| format!("p11ha_group_status returned {rv:#x}"))?;
        let n = usize::try_from(st.member_count).unwrap_or(0);
        Ok(st.members[..n.min(st.members.len())]
            .iter()
            .map(|m| MemberState {
                serial: text(&m.serial),
                alive: m.alive != 0,
                last_error: m.last_error,
                in_flight: m.in_flight,
            })
            .collect())
    }

    /// The member with `serial` in the group in `slot` (None: no such group or member).
    pub fn member(&self, slot: c_ulong, serial: &str) -> Option<MemberState> {
        self.members(slot)
            .ok()?
            .into_iter()
            .find(|m| m.serial == serial)
    }
}

/// A NUL-terminated fixed-size C text field (up to its first NUL, or all of it).
fn text(field: &[c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
