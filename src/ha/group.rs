//! An HA group as the application sees it: one virtual slot and token over its members, the
//! group's login, member choice (least busy) and dropping failed members.

use super::member::{Binding, Member};
use super::objects::ObjectTable;
use super::sync_state::SyncState;
use crate::config::RecoveryMode;
use crate::halog::HaLog;
use crate::provider::Fault;
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use zeroize::Zeroizing;

pub type Pin = Arc<Zeroizing<Vec<u8>>>;

#[derive(Clone)]
pub struct Login {
    pub user: CK_USER_TYPE,
    /// Kept only in zeroized memory, to log members in again after they return.
    pub pin: Option<Pin>,
}

pub struct Group {
    pub slot_id: CK_SLOT_ID,
    pub label: String,
    pub serial: String,
    /// A member slot shown as is (HAOnly = 0): one member, no failover, real token info.
    pub passthrough: bool,
    /// Append-only, so a member's index stays valid; removed members are only marked.
    members: RwLock<Arc<Vec<Arc<Member>>>>,
    pub objects: ObjectTable,
    /// Object synchronization (`HASynchronize.<label>`), see `ha::sync`.
    pub sync: SyncState,
    pub mode: RecoveryMode,
    /// `failover_on_deactivation`: redo a call elsewhere when its member reports itself
    /// deactivated (true), or return that error to the caller (false). The member is dropped
    /// either way.
    pub failover_on_deactivation: bool,
    /// `MultipartReplayLimit`: input bytes kept per multi-part operation for a replay on
    /// another member (0: none, a failed member's fed operation fails).
    pub replay_limit: usize,
    pub log: HaLog,
    pub audit: crate::audit::Audit,
    login: Mutex<Option<Login>>,
    /// The group's authentication kind (true: PED / protected authentication path), fixed by
    /// the first member that came up. Members of the other kind are refused.
    ped: Mutex<Option<bool>>,
    /// Last `HARecovery.<label>` value seen; an increase asks for a recovery now.
    pub manual_recovery: Mutex<Option<u64>>,
    sessions: AtomicUsize,
    /// Read-only sessions open: the SO cannot log in while there is one.
    ro_sessions: AtomicUsize,
    rr: AtomicUsize,
    /// The member where objects are created (see [`Group::home`]); `usize::MAX` for none yet.
    home: AtomicUsize,
}

/// Copies `s` into a blank-padded fixed field.
pub fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let b = s.as_bytes();
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// Reads a blank-padded fixed field.
pub fn unpad(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

impl Group {
    pub fn new(
        slot_id: CK_SLOT_ID,
        label: String,
        serial: String,
        passthrough: bool,
        members: Vec<Arc<Member>>,
        mode: RecoveryMode,
        log: HaLog,
    ) -> Self {
        Group {
            slot_id,
            label,
            serial,
            passthrough,
            members: RwLock::new(Arc::new(members)),
            objects: ObjectTable::default(),
            sync: Default::default(),
            mode,
            failover_on_deactivation: true,
            replay_limit: crate::config::DEFAULT_REPLAY_LIMIT as usize,
            log,
            audit: Default::default(),
            login: Mutex::new(None),
            ped: Mutex::new(None),
            manual_recovery: Mutex::new(None),
            sessions: AtomicUsize::new(0),
            ro_sessions: AtomicUsize::new(0),
            rr: AtomicUsize::new(0),
            home: AtomicUsize::new(usize::MAX),
        }
    }

    /// The members now (a snapshot; indices stay valid for the life of the group).
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.read().clone()
    }

    pub fn member(&self, idx: usize) -> Arc<Member> {
        self.members.read()[idx].clone()
    }

    /// Adds a member (configuration re-read); returns its index.
    pub fn add_member(&self, m: Arc<Member>) -> usize {
        let mut members = self.members.write();
        let mut v = members.as_ref().clone();
        v.push(m);
        *members = Arc::new(v);
        members.len() - 1
    }

    /// Whether a token of this kind may serve the group (the first one decides the kind).
    pub fn accepts_kind(&self, token: &CK_TOKEN_INFO) -> bool {
        let ped = token.flags & CKF_PROTECTED_AUTHENTICATION_PATH != 0;
        *self.ped.lock().get_or_insert(ped) == ped
    }

    pub fn is_ped(&self) -> Option<bool> {
        *self.ped.lock()
    }

    pub fn login(&self) -> Option<Login> {
        self.login.lock().clone()
    }

    pub fn set_login(&self, login: Option<Login>) {
        *self.login.lock() = login;
    }

    pub fn session_opened(&self, read_only: bool) {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        if read_only {
            self.ro_sessions.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Returns true when this was the group's last session: the application is logged out then.
    pub fn session_closed(&self, read_only: bool) -> bool {
        if read_only {
            self.ro_sessions.fetch_sub(1, Ordering::AcqRel);
        }
        let last = self.sessions.fetch_sub(1, Ordering::AcqRel) == 1;
        if last {
            self.set_login(None);
            self.objects.remove_session_objects();
        }
        last
    }

    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    pub fn has_read_only_session(&self) -> bool {
        self.ro_sessions.load(Ordering::Acquire) > 0
    }

    /// The member where the application's objects are made: every session object, and with
    /// synchronization off every token object, so that an operation naming several of them
    /// (C_WrapKey, C_DigestKey, a search) finds them on one member. It stays the home while it
    /// is up and can serve; then the least busy member that can becomes the home.
    pub fn home(&self, usable: impl Fn(usize, &Binding) -> bool) -> Option<usize> {
        let members = self.members();
        let current = self.home.load(Ordering::Acquire);
        let fits = |i: usize| {
            members
                .get(i)
                .is_some_and(|m| !m.standby && m.binding().is_some_and(|b| usable(i, &b)))
        };
        if fits(current) {
            return Some(current);
        }
        let chosen = self.candidates(usable).first().copied()?;
        self.home.store(chosen, Ordering::Release);
        Some(chosen)
    }

    /// Records where an object was made when that was not the home (the home had failed).
    pub fn set_home(&self, idx: usize) {
        self.home.store(idx, Ordering::Release);
    }

    /// Serials of the members that are down (and not removed): those owed what changes now.
    pub fn down_serials(&self) -> Vec<String> {
        self.members()
            .iter()
            .filter(|m| !m.is_removed() && !m.is_up())
            .map(|m| m.serial.clone())
            .collect()
    }

    pub fn any_up(&self) -> bool {
        self.members().iter().any(|m| m.is_up())
    }

    /// Members that may serve a call now, best first: up, active before standby (standbys only
    /// when no active member is up), least busy, ties rotated. `usable` filters further.
    pub fn candidates(&self, usable: impl Fn(usize, &Binding) -> bool) -> Vec<usize> {
        let members = self.members();
        let mut active = Vec::with_capacity(members.len());
        // Allocated only when no active member serves.
        let mut standby = Vec::new();
        for (i, m) in members.iter().enumerate() {
            // One look at the member's health: this runs on every call.
            if (m.standby && !active.is_empty()) || !m.binding().is_some_and(|b| usable(i, &b)) {
                continue;
            }
            if m.standby {
                standby.push(i);
            } else {
                active.push(i);
            }
        }
        let mut pool = if active.is_empty() { standby } else { active };
        if pool.len() > 1 {
            let start = self.rr.fetch_add(1, Ordering::Relaxed) % pool.len();
            pool.rotate_left(start);
            // Stable sort keeps the rotation among equally busy members.
            pool.sort_by_key(|&i| members[i].in_flight.load(Ordering::Relaxed));
        }
        pool
    }

    /// Drops a member that failed while bound to `instance_id`, with its HA log lines.
    pub fn drop_member(&self, idx: usize, instance_id: u64, fault: Fault) {
        let m = self.member(idx);
        if m.take_down(instance_id, fault.status()) {
            if fault.is_deactivation() {
                self.log.member_deactivated(&self.serial, &m.serial);
            } else {
                self.log.drop_member(&self.serial, &m.serial);
            }
            if !self.any_up() {
                self.log.members_offline(&self.serial);
            }
            crate::audit::member_dropped(self, &m.serial, fault);
        }
    }

    /// Token info for the virtual token, from what its members report now (a member that fails
    /// to answer is dropped, and described by what it last reported).
    pub fn token_info(&self) -> CK_TOKEN_INFO {
        for (idx, m) in self.members().iter().enumerate() {
            let Some(b) = m.binding() else { continue };
            match b.instance.token_info(b.slot) {
                Ok(t) => m.set_token(t),
                Err(f) if f.fails_member() => self.drop_member(idx, b.instance.id, f),
                Err(_) => {}
            }
        }
        let members = self.members();
        // Members that are up first: they describe the token as it is now.
        let seen: Vec<CK_TOKEN_INFO> = members
            .iter()
            .filter(|m| m.is_up())
            .chain(members.iter().filter(|m| !m.is_up()))
            .filter_map(|m| m.health().token)
            .collect();
        if self.passthrough {
            if let Some(t) = seen.first() {
                return *t;
            }
        }
        let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        info.label = pad(&self.label);
        info.manufacturerID = pad("p11ha");
        info.model = pad("HA virtual token");
        info.serialNumber = pad(&self.serial);
        let member_flags = seen
            .first()
            .map_or(CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED, |t| t.flags);
        // A wrong PIN reaches one member and a good login clears every member's count, so a PIN
        // state any member reports is the group's.
        let pin_state = seen
            .iter()
            .fold(0, |acc, t| acc | (t.flags & PIN_STATE_FLAGS));
        info.flags = CKF_TOKEN_INITIALIZED | CKF_RNG | (member_flags & PASSED_FLAGS) | pin_state;
        info.ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
        info.ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
        info.ulSessionCount = self.session_count() as CK_ULONG;
        info.ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
        info.ulMaxPinLen = seen.iter().map(|t| t.ulMaxPinLen).min().unwrap_or(255);
        info.ulMinPinLen = seen.iter().map(|t| t.ulMinPinLen).max().unwrap_or(4);
        info.ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
        info.ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
        info.ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
        info.ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
        info.hardwareVersion = CK_VERSION { major: 1, minor: 0 };
        info.firmwareVersion = crate_version();
        info.utcTime = pad("");
        info
    }

    pub fn slot_info(&self) -> CK_SLOT_INFO {
        let mut info: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
        let desc = if self.passthrough {
            format!("p11ha member slot {}", self.serial)
        } else {
            format!("p11ha HA group {}", self.label)
        };
        info.slotDescription = pad(&desc);
        info.manufacturerID = pad("p11ha");
        // The virtual token is always present, even with every member down. Not CKF_HW_SLOT:
        // the slot is p11ha's, whatever its members are.
        info.flags = CKF_TOKEN_PRESENT;
        info.hardwareVersion = CK_VERSION { major: 1, minor: 0 };
        info.firmwareVersion = crate_version();
        info
    }

    /// What every up member can do with `mech` (so an operation can fail over to any of them).
    /// A member that fails to answer is dropped, like on any call.
    pub fn mechanism_info(&self, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO, CK_RV> {
        if !self.mechanisms().contains(&mech) {
            return Err(if self.any_up() {
                CKR_MECHANISM_INVALID
            } else {
                CKR_DEVICE_ERROR
            });
        }
        let mut infos = Vec::new();
        for (idx, m) in self.members().iter().enumerate() {
            let Some(b) = m.binding() else { continue };
            match b.instance.mechanism_info(b.slot, mech) {
                Ok(info) => infos.push(info),
                Err(f) if f.fails_member() => self.drop_member(idx, b.instance.id, f),
                Err(f) => return Err(f.rv()),
            }
        }
        intersect_mechanism_info(&infos).ok_or(CKR_DEVICE_ERROR)
    }

    /// Mechanisms every up member supports (so an operation can fail over to any of them).
    pub fn mechanisms(&self) -> Vec<CK_MECHANISM_TYPE> {
        let lists: Vec<_> = self
            .members()
            .iter()
            .filter_map(|m| m.binding())
            .map(|b| b.mechanisms)
            .collect();
        let Some((first, rest)) = lists.split_first() else {
            return Vec::new();
        };
        first
            .iter()
            .copied()
            .filter(|m| rest.iter().all(|l| l.contains(m)))
            .collect()
    }
}

/// Token flags the virtual token shows as its members do.
const PASSED_FLAGS: CK_FLAGS = CKF_LOGIN_REQUIRED
    | CKF_USER_PIN_INITIALIZED
    | CKF_PROTECTED_AUTHENTICATION_PATH
    | CKF_WRITE_PROTECTED
    | CKF_RESTORE_KEY_NOT_NEEDED
    | CKF_DUAL_CRYPTO_OPERATIONS
    | CKF_SECONDARY_AUTHENTICATION;

/// PIN states (count low, final try, locked, to be changed): the group's if any member's.
const PIN_STATE_FLAGS: CK_FLAGS = CKF_USER_PIN_COUNT_LOW
    | CKF_USER_PIN_FINAL_TRY
    | CKF_USER_PIN_LOCKED
    | CKF_USER_PIN_TO_BE_CHANGED
    | CKF_SO_PIN_COUNT_LOW
    | CKF_SO_PIN_FINAL_TRY
    | CKF_SO_PIN_LOCKED
    | CKF_SO_PIN_TO_BE_CHANGED;

pub fn crate_version() -> CK_VERSION {
    let major = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    CK_VERSION { major, minor }
}

/// Intersects mechanism infos from several members: what every one of them can do.
pub fn intersect_mechanism_info(infos: &[CK_MECHANISM_INFO]) -> Option<CK_MECHANISM_INFO> {
    let (first, rest) = infos.split_first()?;
    Some(rest.iter().fold(*first, |acc, i| CK_MECHANISM_INFO {
        ulMinKeySize: acc.ulMinKeySize.max(i.ulMinKeySize),
        ulMaxKeySize: acc.ulMaxKeySize.min(i.ulMaxKeySize),
        flags: acc.flags & i.flags,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_round_trips() {
        let f: [u8; 8] = pad("abc");
        assert_eq!(&f, b"abc     ");
        assert_eq!(unpad(&f), "abc");
        let long: [u8; 4] = pad("abcdef");
        assert_eq!(&long, b"abcd");
    }

    #[test]
    fn mechanism_info_intersection_is_the_common_ground() {
        let a = CK_MECHANISM_INFO {
            ulMinKeySize: 512,
            ulMaxKeySize: 16384,
            flags: CKF_SIGN | CKF_VERIFY,
        };
        let b = CK_MECHANISM_INFO {
            ulMinKeySize: 1024,
            ulMaxKeySize: 4096,
            flags: CKF_SIGN,
        };
        let i = intersect_mechanism_info(&[a, b]).unwrap();
        assert_eq!(
            (i.ulMinKeySize, i.ulMaxKeySize, i.flags),
            (1024, 4096, CKF_SIGN)
        );
    }
}
