//! The HA event log `haErrorLog.txt` (seed 003): one method per HALOG message, and the rotating,
//! multi-process-safe writer behind them.
//!
//! INTERFACE CONTRACT (used by ha/mgmt/ffi): `HaLog` and the methods below. `group` is the HA group
//! serial printed in the prefix; `member` a member token serial; `rv` a CK_RV printed as
//! `0x00000030 : CKR_DEVICE_ERROR`.

use crate::config::LogSettings;
use cryptoki_sys::CK_RV;

/// Handle to the HA log; cheap to clone; a disabled log accepts every call and writes nothing.
#[derive(Clone, Default)]
pub struct HaLog {}

#[allow(unused_variables)]
impl HaLog {
    pub fn disabled() -> HaLog {
        HaLog {}
    }
    /// Opens the log per settings; a missing/unwritable directory prints one line on stderr and
    /// returns a disabled log.
    pub fn open(settings: &LogSettings) -> HaLog {
        HaLog {}
    }
    pub fn is_enabled(&self) -> bool {
        false
    }
    /// Waits until every record accepted so far is on disk (C_Finalize calls this).
    pub fn flush(&self) {}

    pub fn configured_as_password(&self, group: &str) {}
    pub fn configured_as_ped(&self, group: &str) {}
    pub fn drop_member(&self, group: &str, member: &str) {}
    pub fn drop_unrecoverable(&self, group: &str, member: &str) {}
    pub fn login_failed(&self, group: &str, member: &str, rv: CK_RV) {}
    pub fn member_deactivated(&self, group: &str, member: &str) {}
    pub fn member_now_activated(&self, group: &str, attempt: u64, member: &str) {}
    pub fn member_revoked(&self, group: &str, member: &str) {}
    pub fn members_offline(&self, group: &str) {}
    pub fn mgmt_thread_start(&self, group: &str) {}
    pub fn mgmt_thread_terminate(&self, group: &str) {}
    pub fn new_member(&self, group: &str, member: &str) {}
    pub fn recovered(&self, group: &str, attempt: u64, member: &str) {}
    pub fn reintroducing(&self, group: &str, attempt: u64, count: u64, member: &str) {}
    pub fn recovery_failed(&self, group: &str, attempt: u64, member: &str, rv: CK_RV) {}
    pub fn recovery_exhausted(&self, group: &str, member: &str) {}
    pub fn renable_member(&self, group: &str, member: &str) {}
    pub fn unrecoverable(&self, group: &str, attempt: u64, member: &str, rv: CK_RV) {}
    pub fn member_not_activated(&self, group: &str, member: &str) {}
    pub fn recovery_not_activated(&self, group: &str, member: &str) {}
    pub fn recovery_now_activated(&self, group: &str, member: &str) {}
    /// Not a seed message: a configuration error (already formatted with file:line: key).
    pub fn config_error(&self, group: &str, message: &str) {}
}
