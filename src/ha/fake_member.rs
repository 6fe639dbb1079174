//! A scripted member module for unit tests of routing and failover: a real
//! `CK_FUNCTION_LIST` whose functions answer from a per-member script, so the HA policy in
//! `ha::session` runs through the same provider calls, pool threads and deadlines as with
//! SoftHSM, and a test decides what each member answers to each call.
//!
//! The C functions receive no pointer to the fake they belong to, so each fake owns a slot
//! number unique in the test process, and its session handles carry that slot number: every call
//! finds its fake from its slot or session argument.

use crate::config::RecoveryMode;
use crate::ha::group::Group;
use crate::ha::member::Member;
use crate::halog::HaLog;
use crate::provider::instance::Calls;
use crate::provider::table::Fns;
use crate::provider::Instance;
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a fake answers to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Rv(CK_RV),
    /// Answers CKR_OK only after this long (a stopped member that comes back late).
    Hang(Duration),
}

/// One fake member module and token.
pub struct FakeMember {
    pub slot: CK_SLOT_ID,
    /// Filled into every output (random bytes, digests), so a test sees who served a call.
    pub tag: u8,
    /// Per function name: answers for the next calls, then the standing answer.
    once: Mutex<HashMap<&'static str, VecDeque<Answer>>>,
    always: Mutex<HashMap<&'static str, Answer>>,
    calls: Mutex<HashMap<&'static str, usize>>,
    next_session: AtomicU64,
    /// Sessions with a digest between C_DigestInit and the C_Digest that ends it.
    digesting: Mutex<HashSet<CK_SESSION_HANDLE>>,
}

static FAKES: Mutex<Vec<Arc<FakeMember>>> = Mutex::new(Vec::new());

/// Session handles are `slot << SLOT_SHIFT | n`.
const SLOT_SHIFT: u32 = 20;

impl FakeMember {
    pub fn new(tag: u8) -> Arc<FakeMember> {
        let mut fakes = FAKES.lock();
        let fake = Arc::new(FakeMember {
            slot: fakes.len() as CK_SLOT_ID + 1,
            tag,
            once: Default::default(),
            always: Default::default(),
            calls: Default::default(),
            next_session: AtomicU64::new(1),
            digesting: Default::default(),
        });
        fakes.push(fake.clone());
        fake
    }

    /// `answer` to the next call of `function` (queued after earlier ones).
    pub fn next(&self, function: &'static str, answer: Answer) {
        self.once
            .lock()
            .entry(function)
            .or_default()
            .push_back(answer);
    }

    /// `answer` to every call of `function` from now on (after queued ones).
    pub fn always(&self, function: &'static str, answer: Answer) {
        self.always.lock().insert(function, answer);
    }

    /// Calls of `function` that reached this fake.
    pub fn calls(&self, function: &'static str) -> usize {
        self.calls.lock().get(function).copied().unwrap_or(0)
    }

    fn answer(&self, function: &'static str) -> CK_RV {
        *self.calls.lock().entry(function).or_default() += 1;
        let queued = self
            .once
            .lock()
            .get_mut(function)
            .and_then(|q| q.pop_front());
        let answer = queued
            .or_else(|| self.always.lock().get(function).copied())
            .unwrap_or(Answer::Ok);
        match answer {
            Answer::Ok => CKR_OK,
            Answer::Rv(rv) => rv,
            Answer::Hang(d) => {
                std::thread::sleep(d);
                CKR_OK
            }
        }
    }
}

fn by_slot(slot: CK_SLOT_ID) -> Option<Arc<FakeMember>> {
    let i = usize::try_from(slot).ok()?.checked_sub(1)?;
    FAKES.lock().get(i).cloned()
}

fn by_session(h: CK_SESSION_HANDLE) -> Option<Arc<FakeMember>> {
    by_slot(h >> SLOT_SHIFT)
}

/// Runs `function`'s script on the fake that owns `h`, then `then` when it answered CKR_OK.
fn on_session(
    h: CK_SESSION_HANDLE,
    function: &'static str,
    then: impl FnOnce(&FakeMember),
) -> CK_RV {
    let Some(fake) = by_session(h) else {
        return CKR_SESSION_HANDLE_INVALID;
    };
    let rv = fake.answer(function);
    if rv == CKR_OK {
        then(&fake);
    }
    rv
}

extern "C" fn open_session(
    slot: CK_SLOT_ID,
    _flags: CK_FLAGS,
    _app: *mut std::ffi::c_void,
    _notify: CK_NOTIFY,
    out: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    let Some(fake) = by_slot(slot) else {
        return CKR_SLOT_ID_INVALID;
    };
    let rv = fake.answer("C_OpenSession");
    if rv == CKR_OK {
        let n = fake.next_session.fetch_add(1, Ordering::Relaxed);
        // SAFETY: p11ha's provider calls pass a valid pointer to a handle.
        unsafe { *out = slot << SLOT_SHIFT | n };
    }
    rv
}

extern "C" fn close_session(h: CK_SESSION_HANDLE) -> CK_RV {
    on_session(h, "C_CloseSession", |_| {})
}

extern "C" fn session_info(h: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    on_session(h, "C_GetSessionInfo", |fake| {
        // SAFETY: p11ha's provider calls pass a valid pointer to a CK_SESSION_INFO.
        unsafe {
            *info = CK_SESSION_INFO {
                slotID: fake.slot,
                state: CKS_RW_PUBLIC_SESSION,
                flags: CKF_SERIAL_SESSION | CKF_RW_SESSION,
                ulDeviceError: 0,
            }
        }
    })
}

extern "C" fn login(
    h: CK_SESSION_HANDLE,
    _: CK_USER_TYPE,
    _: CK_UTF8CHAR_PTR,
    _: CK_ULONG,
) -> CK_RV {
    on_session(h, "C_Login", |_| {})
}

extern "C" fn logout(h: CK_SESSION_HANDLE) -> CK_RV {
    on_session(h, "C_Logout", |_| {})
}

extern "C" fn generate_random(h: CK_SESSION_HANDLE, out: CK_BYTE_PTR, n: CK_ULONG) -> CK_RV {
    on_session(h, "C_GenerateRandom", |fake| {
        // SAFETY: p11ha's provider calls pass a buffer of n bytes.
        unsafe { std::ptr::write_bytes(out, fake.tag, n as usize) }
    })
}

/// CKR_OPERATION_ACTIVE while a digest is active in the session, as SoftHSM answers.
extern "C" fn digest_init(h: CK_SESSION_HANDLE, _: CK_MECHANISM_PTR) -> CK_RV {
    let mut active = false;
    let rv = on_session(h, "C_DigestInit", |fake| {
        active = !fake.digesting.lock().insert(h);
    });
    if active {
        CKR_OPERATION_ACTIVE
    } else {
        rv
    }
}

/// A 4-byte "digest" of the fake's tag.
extern "C" fn digest(
    h: CK_SESSION_HANDLE,
    _: CK_BYTE_PTR,
    _: CK_ULONG,
    out: CK_BYTE_PTR,
    len: CK_ULONG_PTR,
) -> CK_RV {
    let mut rv = CKR_OK;
    let scripted = on_session(h, "C_Digest", |fake| {
        if !fake.digesting.lock().contains(&h) {
            rv = CKR_OPERATION_NOT_INITIALIZED;
            return;
        }
        // SAFETY: p11ha's provider calls pass a valid length and a buffer of that length.
        unsafe {
            if !out.is_null() && *len >= 4 {
                std::ptr::write_bytes(out, fake.tag, 4);
                fake.digesting.lock().remove(&h);
            }
            *len = 4;
        }
    });
    if scripted == CKR_OK {
        rv
    } else {
        scripted
    }
}

/// The instance p11ha would get from connecting to the fake's module.
pub fn instance(timeout: Duration) -> Arc<Instance> {
    instance_calling(timeout, Calls::Concurrent)
}

/// [`instance`], its calls made as `calls` says.
pub fn instance_calling(timeout: Duration, calls: Calls) -> Arc<Instance> {
    // SAFETY: a table of None function pointers is a valid CK_FUNCTION_LIST.
    let mut list: CK_FUNCTION_LIST = unsafe { std::mem::zeroed() };
    list.C_OpenSession = Some(open_session);
    list.C_CloseSession = Some(close_session);
    list.C_GetSessionInfo = Some(session_info);
    list.C_Login = Some(login);
    list.C_Logout = Some(logout);
    list.C_GenerateRandom = Some(generate_random);
    list.C_DigestInit = Some(digest_init);
    list.C_Digest = Some(digest);
    Instance::new(0, Fns(Box::leak(Box::new(list))), timeout, calls)
}

/// A group over fresh fakes, one per entry of `standby` (true: a standby member), every member
/// up, each call bounded by `timeout`. Member `i` is tagged `i + 1`.
pub fn group(standby: &[bool], timeout: Duration) -> (Arc<Group>, Vec<Arc<FakeMember>>) {
    group_with(standby, timeout, |_| {})
}

/// [`group`], with `adjust` applied to the group before it is shared.
pub fn group_with(
    standby: &[bool],
    timeout: Duration,
    adjust: impl FnOnce(&mut Group),
) -> (Arc<Group>, Vec<Arc<FakeMember>>) {
    group_calling(standby, instance(timeout), adjust)
}

/// [`group_with`] over views of `inst`.
pub fn group_calling(
    standby: &[bool],
    inst: Arc<Instance>,
    adjust: impl FnOnce(&mut Group),
) -> (Arc<Group>, Vec<Arc<FakeMember>>) {
    let mut fakes = Vec::new();
    let mut members = Vec::new();
    for (i, &standby) in standby.iter().enumerate() {
        let fake = FakeMember::new(i as u8 + 1);
        let member = Arc::new(Member::new(format!("fake-{}", i + 1), standby));
        // SAFETY: CK_TOKEN_INFO is plain data; zeroes are a valid (empty) token description.
        let token: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        member.bring_up(inst.view(), fake.slot, token, vec![CKM_SHA256]);
        fakes.push(fake);
        members.push(member);
    }
    let mut group = Group::new(
        1,
        "fakes".into(),
        "9999".into(),
        false,
        members,
        RecoveryMode::Enhanced,
        HaLog::disabled(),
    );
    adjust(&mut group);
    (Arc::new(group), fakes)
}
