//! Virtual sessions. Each has member sessions opened lazily on the members it uses, and runs
//! every call through `Session::attempt` (`route.rs`), which picks a member, fails over when
//! the member fails and passes the caller's own errors through untouched.
//!
//! - `route.rs`: member choice, member sessions, twins of the caller's objects, failover.
//! - `login.rs`: C_Login / C_Logout / PINs, fanned out to every member.
//! - `objects.rs`: creating (and replicating), copying, destroying objects, their attributes.
//! - `search.rs`: C_FindObjects*.
//! - `keys.rs`: key generation, wrapping, unwrapping, derivation; random numbers.
//! - `ops.rs`: cryptographic operations between their Init and their final call.
//! - `replay.rs`: what is kept of a multi-part operation to replay it on another member.

mod at_once;
mod everywhere;
mod keys;
mod login;
mod objects;
mod ops;
mod replay;
pub(crate) mod route;
mod search;
#[cfg(test)]
mod tests;

use super::group::Group;
use super::member::{current_seq, InFlight};
use crate::mechanism::{find, Attr, OwnedMechanism};
use crate::provider::{Begin, Instance, OpKind, Output};
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub type CkResult<T> = Result<T, CK_RV>;

/// An operation between its Init and its final call.
struct ActiveOp {
    kind: OpKind,
    mech: Option<OwnedMechanism>,
    /// Virtual key handle, 0 for none (digest).
    key: CK_OBJECT_HANDLE,
    idx: usize,
    inst: Arc<Instance>,
    session: CK_SESSION_HANDLE,
    /// Data went to the member (update calls): the operation moves to another member only
    /// with a replay of `kept`.
    fed: bool,
    kept: replay::Kept,
    /// Counts against the member while the operation is live; `None` once the member answered
    /// it with an error (it may have ended it: the record stays, for the member to say).
    busy: Option<InFlight>,
    /// The member's Init, not made yet: it travels with the first data call
    /// (`crate::ha::accepted`). Only while this is the session's one operation.
    begin: Option<Begin>,
    /// A length query answered by doing the operation (`ops.rs`, `answer_ahead`): its result
    /// for the follow-up call. The member's operation is over meanwhile.
    answered: Option<ops::Answered>,
}

#[derive(Default)]
struct State {
    /// Per member index: (instance id, member session handle).
    member_sessions: Vec<Option<(u64, CK_SESSION_HANDLE)>>,
    ops: Vec<ActiveOp>,
    found: Option<std::vec::IntoIter<CK_OBJECT_HANDLE>>,
    /// Where this session's calls went last (`route.rs`, the balancer's tie-break).
    stay: Option<route::Stay>,
}

pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    pub group: Arc<Group>,
    pub flags: CK_FLAGS,
    /// Members that joined after this sequence number are not used under activeBasic.
    opened_seq: u64,
    st: Mutex<State>,
}

/// Whether a call with output leaves its operation active (length query or buffer too small).
fn keeps_active(out: &Output, cap: Option<CK_ULONG>) -> bool {
    out.rv == CKR_BUFFER_TOO_SMALL || (out.rv == CKR_OK && cap.is_none())
}

impl Session {
    pub fn new(handle: CK_SESSION_HANDLE, group: Arc<Group>, flags: CK_FLAGS) -> Self {
        let n = group.members().len();
        crate::audit::session_opened(&group, handle, flags);
        Session {
            handle,
            group,
            flags,
            opened_seq: current_seq(),
            st: Mutex::new(State {
                member_sessions: vec![None; n],
                ..Default::default()
            }),
        }
    }

    /// PKCS#11 session state from the group's login and this session's flags.
    pub fn state(&self) -> CK_STATE {
        let rw = self.flags & CKF_RW_SESSION != 0;
        match (self.group.login().map(|l| l.user), rw) {
            (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
            (Some(_), true) => CKS_RW_USER_FUNCTIONS,
            (Some(_), false) => CKS_RO_USER_FUNCTIONS,
            (None, true) => CKS_RW_PUBLIC_SESSION,
            (None, false) => CKS_RO_PUBLIC_SESSION,
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.flags & CKF_RW_SESSION == 0
    }

    /// Whether objects are replicated to every member (`HASynchronize`).
    fn syncs(&self) -> bool {
        !self.group.passthrough && self.group.sync.enabled()
    }

    /// Closes the member sessions (best effort: a dead member has closed them already).
    pub fn close(&self) {
        crate::audit::session_closing(self);
        let st = std::mem::take(&mut *self.st.lock());
        for (idx, ms) in st.member_sessions.iter().enumerate() {
            let (Some((inst_id, h)), Some(b)) =
                (ms, self.group.members().get(idx).and_then(|m| m.binding()))
            else {
                continue;
            };
            if b.instance.id == *inst_id {
                if b.open_sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // The member logs out with its last session; its handles may change.
                    self.group.objects.forget_twins(Some(idx));
                }
                if let Err(f) = b.instance.close_session(*h) {
                    if f.fails_member() {
                        self.drop_member(idx, &b.instance, f);
                    }
                }
            }
        }
        self.group.objects.remove_owned_by(self.handle);
    }

    /// Whether the template asks for a token object (the default is a session object).
    pub fn is_token_template(template: &[Attr]) -> bool {
        find(template, CKA_TOKEN)
            .and_then(Attr::as_bool)
            .unwrap_or(false)
    }
}

/// Indices of the group's standby members that are up.
fn standbys(group: &Group) -> Vec<usize> {
    let members = group.members();
    (0..members.len())
        .filter(|&i| members[i].standby && members[i].is_up())
        .collect()
}

/// Forgets this session's session on a member that failed.
fn forget(st: &mut State, idx: usize) {
    if let Some(slot) = st.member_sessions.get_mut(idx) {
        *slot = None;
    }
}
