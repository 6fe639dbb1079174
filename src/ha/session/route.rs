//! Which member serves a call: member choice, this session's session on each member (opened
//! and logged in on first use), the twins of the caller's objects, and failover.

use super::{forget, CkResult, Session, State};
use crate::config::RecoveryMode;
use crate::ha::credential::{self, Verdict};
use crate::ha::group::Login;
use crate::ha::member::Binding;
use crate::ha::objects::find_twin;
use crate::provider::{Fault, Instance, MemberResult};
use cryptoki_sys::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A member session of p11ha's own beside the application's, closed when dropped: for work
/// that must not run in a member session that may be in the middle of an operation (searches,
/// wrapping and unwrapping for replication; SoftHSM refuses those in such a session). Object
/// handles and the login are the same in every session of the application on a token.
pub(super) struct Apart {
    pub inst: Arc<Instance>,
    pub session: CK_SESSION_HANDLE,
}

impl Apart {
    pub fn open(inst: &Arc<Instance>, slot: CK_SLOT_ID) -> MemberResult<Apart> {
        let session = inst.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
        Ok(Apart {
            inst: inst.clone(),
            session,
        })
    }
}

impl Drop for Apart {
    fn drop(&mut self) {
        let _ = self.inst.close_session(self.session);
    }
}

/// A member chosen for one call, with this session's session on it and the caller's objects
/// resolved to their twins there.
pub struct Target {
    pub idx: usize,
    pub inst: Arc<Instance>,
    pub session: CK_SESSION_HANDLE,
    pub objects: Vec<CK_OBJECT_HANDLE>,
}

/// Calls a session makes in a row on one member while that member is no busier than the
/// others. Consecutive calls on one member find its caches warm (its key objects, the crypto
/// library's tables, the CPU's): p11ha-bench, 3 in-process members at 1 thread, ECDSA ratio
/// 0.930 rotating every call. Moving on after a run still gives every member work from a lone
/// caller, so a member that died is met by a call, not only by the next management round.
pub(super) const STAY_CALLS: u32 = 16;

/// The member this session's last call went to, and how many calls in a row it took.
#[derive(Clone, Copy)]
pub(super) struct Stay {
    idx: usize,
    calls: u32,
}

impl Session {
    /// Where the balancer sends this session's next call among equally busy `candidates`
    /// (best first): the member of its last calls, until it has had [`STAY_CALLS`] of them;
    /// then another one. `None`: the balancer's first choice.
    fn stay(&self, st: &State, candidates: &[usize]) -> Option<usize> {
        let s = st.stay?;
        let members = self.group.members();
        let busy = |i: usize| members[i].in_flight.load(Ordering::Relaxed);
        let least = busy(*candidates.first()?);
        let tied = |i: usize| busy(i) <= least;
        if s.calls < STAY_CALLS {
            Some(s.idx).filter(|&i| candidates.contains(&i) && tied(i))
        } else {
            candidates.iter().copied().find(|&i| i != s.idx && tied(i))
        }
    }

    pub(super) fn usable(&self, st: &State, idx: usize, b: &Binding) -> bool {
        if self.group.mode == RecoveryMode::Enhanced || b.joined <= self.opened_seq {
            return true;
        }
        // activeBasic: a member that rejoined serves only sessions it already had.
        matches!(st.member_sessions.get(idx), Some(Some((i, _))) if *i == b.instance.id)
    }

    pub(super) fn drop_member(&self, idx: usize, inst: &Instance, fault: Fault) {
        self.group.drop_member(idx, inst.id, fault);
    }

    /// This session's session on a member, opened (and logged in) on first use.
    pub(super) fn member_session(
        &self,
        st: &mut State,
        idx: usize,
        b: &Binding,
    ) -> MemberResult<CK_SESSION_HANDLE> {
        // Any other call in this session meets the member the way it would meet it directly:
        // with the operation's Init made (SoftHSM, for one, refuses a search while a digest is
        // active). Only the operation's own next call carries its Init.
        self.begin_waiting(st);
        if st.member_sessions.len() <= idx {
            st.member_sessions.resize(idx + 1, None);
        }
        if let Some((i, h)) = st.member_sessions[idx] {
            if i == b.instance.id {
                return Ok(h);
            }
        }
        let h = b
            .instance
            .open_session(b.slot, self.flags | CKF_SERIAL_SESSION)?;
        st.member_sessions[idx] = Some((b.instance.id, h));
        b.open_sessions.fetch_add(1, Ordering::AcqRel);
        if let Some(Login { user, pin }) = self.group.login() {
            match credential::present(&b.instance, h, user, &pin) {
                Verdict::Accepted => {}
                Verdict::WrongPin(rv) | Verdict::Revoked(rv) => {
                    // The cached PIN no longer works here: never retry it (no lock-outs).
                    let m = self.group.member(idx);
                    self.group
                        .log
                        .login_failed(&self.group.serial, &m.serial, rv);
                    m.set_auto_recovery(false);
                    self.drop_member(idx, &b.instance, Fault::Rv(rv));
                    return Err(Fault::Rv(CKR_DEVICE_ERROR));
                }
                Verdict::Undecided(f) if f.fails_member() || f == Fault::Panicked => return Err(f),
                // The member's own trouble, not a verdict on the PIN: dropped, and recovery
                // logs it in again.
                Verdict::Undecided(f) => {
                    self.drop_member(idx, &b.instance, f);
                    return Err(Fault::Rv(CKR_DEVICE_ERROR));
                }
            }
        }
        Ok(h)
    }

    /// The twin of a virtual object on a member, found and cached on first use.
    pub(super) fn resolve(
        &self,
        idx: usize,
        inst: &Instance,
        session: CK_SESSION_HANDLE,
        v: CK_OBJECT_HANDLE,
    ) -> MemberResult<Option<CK_OBJECT_HANDLE>> {
        let objects = &self.group.objects;
        if let Some(h) = objects.twin(v, idx, inst.id) {
            return Ok(Some(h));
        }
        let Some(identity) = objects.identity(v) else {
            return Ok(None);
        };
        if !identity.is_token() && objects.owner(v).is_some() {
            return Ok(None); // session objects live only where they were made
        }
        let twin = self.find_twin_apart(idx, inst, session, &identity)?;
        if let Some(h) = twin {
            objects.set_twin(v, idx, inst.id, h);
        }
        Ok(twin)
    }

    /// Looks for a twin in a session of its own: the caller's member session may be in the
    /// middle of an operation, and SoftHSM (for one) refuses a search in a session that is
    /// (C_DigestKey looking up its key answered CKR_OPERATION_ACTIVE). Object handles are the
    /// same in every session of the application.
    fn find_twin_apart(
        &self,
        idx: usize,
        inst: &Instance,
        session: CK_SESSION_HANDLE,
        identity: &crate::ha::objects::Identity,
    ) -> MemberResult<Option<CK_OBJECT_HANDLE>> {
        let binding = self
            .group
            .member(idx)
            .binding()
            .filter(|b| b.instance.id == inst.id);
        let Some(b) = binding else {
            return find_twin(inst, session, identity);
        };
        let apart = Apart::open(&b.instance, b.slot)?;
        find_twin(inst, apart.session, identity)
    }

    /// Runs `call` on the best member that holds every object in `objects`, failing over when
    /// the member fails. `prefer` is tried first when usable.
    ///
    /// A handle p11ha never gave out reaches the member as CK_INVALID_HANDLE, so that the
    /// caller gets the member's own answer to a bad handle (which differs between modules:
    /// CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID, ...).
    pub(super) fn attempt<T>(
        &self,
        st: &mut State,
        objects: &[CK_OBJECT_HANDLE],
        prefer: Option<usize>,
        mut call: impl FnMut(&Target) -> MemberResult<T>,
    ) -> CkResult<(T, Target)> {
        let unknown: Vec<bool> = objects
            .iter()
            .map(|&v| !self.group.objects.exists(v))
            .collect();
        let asking = unknown.contains(&true);
        let mut tried: Vec<usize> = Vec::new();
        let mut missing_object = false;
        let mut refreshed: Vec<usize> = Vec::new();
        let mut suspects: Vec<(usize, Arc<Instance>)> = Vec::new();
        let mut suspect_rv = None;
        loop {
            let next = {
                let prefer = if refreshed.last().is_some_and(|r| !tried.contains(r)) {
                    refreshed.last().copied()
                } else {
                    prefer
                };
                let candidates = self
                    .group
                    .candidates(|i, b| !tried.contains(&i) && self.usable(st, i, b));
                // A session object lives on one member only: go there first rather than past
                // members that cannot have it. Token objects spread the load as any call does.
                let holder = || {
                    let pinned = objects
                        .iter()
                        .any(|&v| self.group.objects.owner(v).is_some());
                    candidates.iter().copied().find(|&i| {
                        let inst = self.group.member(i).binding().map(|b| b.instance.id);
                        pinned
                            && objects.iter().all(|&v| {
                                inst.is_some_and(|id| self.group.objects.twin(v, i, id).is_some())
                            })
                    })
                };
                match prefer.filter(|p| candidates.contains(p)) {
                    Some(p) => Some(p),
                    None => holder()
                        .or_else(|| self.stay(st, &candidates))
                        .or(candidates.first().copied()),
                }
            };
            let Some(idx) = next else {
                if let Some(rv) = suspect_rv {
                    return Err(rv);
                }
                // No member to ask: p11ha's own answer to a handle it does not know.
                return Err(if missing_object || asking {
                    CKR_OBJECT_HANDLE_INVALID
                } else {
                    CKR_DEVICE_ERROR
                });
            };
            tried.push(idx);
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            let session = match self.member_session(st, idx, &b) {
                Ok(h) => h,
                Err(f) if f.fails_member() => {
                    self.drop_member(idx, &b.instance, f);
                    continue;
                }
                Err(f) => return Err(f.rv()),
            };
            let mut resolved = Vec::with_capacity(objects.len());
            let mut lost = None;
            for (n, &v) in objects.iter().enumerate() {
                if unknown[n] {
                    resolved.push(CK_INVALID_HANDLE);
                    continue;
                }
                match self.resolve(idx, &b.instance, session, v) {
                    Ok(Some(h)) => resolved.push(h),
                    Ok(None) => break,
                    Err(f) => {
                        lost = Some(f);
                        break;
                    }
                }
            }
            if let Some(f) = lost {
                if f.fails_member() {
                    self.drop_member(idx, &b.instance, f);
                    continue;
                }
                return Err(f.rv());
            }
            if resolved.len() < objects.len() {
                missing_object = true;
                continue;
            }
            let target = Target {
                idx,
                inst: b.instance.clone(),
                session,
                objects: resolved,
            };
            match call(&target) {
                // Modules may renumber objects (SoftHSM does after a logout): a cached twin
                // the member no longer knows is looked up again, once, on the same member.
                Err(Fault::Rv(
                    CKR_OBJECT_HANDLE_INVALID
                    | CKR_KEY_HANDLE_INVALID
                    | CKR_WRAPPING_KEY_HANDLE_INVALID
                    | CKR_UNWRAPPING_KEY_HANDLE_INVALID,
                )) if !objects.is_empty() && !asking && !refreshed.contains(&idx) => {
                    for &v in objects {
                        self.group.objects.forget_twin(v, idx);
                    }
                    refreshed.push(idx);
                    tried.retain(|&i| i != idx);
                }
                // p11-kit-client answers CKR_DEVICE_ERROR to arguments its protocol cannot
                // carry (an attribute of the wrong length). A member that still answers on the
                // same session is only suspect: the next member decides. If it serves the call,
                // the suspects are dropped; if every member answers so, it was the caller's
                // input, and no member is dropped for it.
                // CKR_GENERAL_ERROR the same way: SoftHSM answers it now and then when several
                // processes write one token at once, and a module may answer it to input it
                // cannot handle.
                Err(Fault::Rv(rv @ (CKR_DEVICE_ERROR | CKR_GENERAL_ERROR)))
                    if self.still_answers(st, idx, &b.instance) =>
                {
                    suspect_rv.get_or_insert(rv);
                    suspects.push((idx, b.instance.clone()));
                }
                Ok(v) => {
                    self.drop_suspects(st, &suspects);
                    st.stay = Some(match st.stay {
                        Some(s) if s.idx == idx => Stay {
                            idx,
                            calls: s.calls.saturating_add(1),
                        },
                        _ => Stay { idx, calls: 1 },
                    });
                    return Ok((v, target));
                }
                Err(f) if f.fails_member() => {
                    self.drop_member(idx, &b.instance, f);
                    forget(st, idx);
                    if self.stops_at_deactivation(f) {
                        return Err(f.rv());
                    }
                }
                Err(f) => {
                    // Another member answered the call as a module does: the suspects failed.
                    self.drop_suspects(st, &suspects);
                    return Err(f.rv());
                }
            }
        }
    }

    /// Whether member `idx` still answers on this session's member session there: the probe
    /// that makes a member answering CKR_DEVICE_ERROR only a suspect (`attempt`, searches).
    pub(super) fn still_answers(&self, st: &State, idx: usize, inst: &Instance) -> bool {
        match st.member_sessions.get(idx).copied().flatten() {
            Some((id, h)) if id == inst.id => inst.session_info(h).is_ok(),
            _ => false,
        }
    }

    fn drop_suspects(&self, st: &mut State, suspects: &[(usize, Arc<Instance>)]) {
        for (idx, inst) in suspects {
            self.drop_member(*idx, inst, Fault::Rv(CKR_DEVICE_ERROR));
            forget(st, *idx);
        }
    }

    /// The group's home member for this session (see `Group::home`).
    pub(super) fn home(&self, st: &State) -> Option<usize> {
        self.group.home(|i, b| self.usable(st, i, b))
    }

    /// With `failover_on_deactivation = 0`, a deactivation is the caller's answer, not a reason
    /// to move the call.
    pub(super) fn stops_at_deactivation(&self, f: Fault) -> bool {
        f.is_deactivation() && !self.group.failover_on_deactivation
    }
}
