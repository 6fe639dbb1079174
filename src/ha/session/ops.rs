//! Cryptographic operations between their Init and their final call. An operation lives on
//! one member; when that member fails before the operation was fed data, it is initialized
//! again on another member and the call goes on there.
//!
//! p11ha never decides alone that an operation ended: after an error the record stays, and the
//! next call for it, a new Init included, goes to the member that holds it, which answers as it
//! would to the application directly (SoftHSM, for one, keeps a digest active after a failed
//! C_DigestKey).

use super::replay::not_movable;
use super::{forget, keeps_active, ActiveOp, CkResult, Session, State};
use crate::ha::accepted::Init;
use crate::mechanism::OwnedMechanism;
use crate::provider::{Begin, Data, Fault, Input, MemberResult, OpKind, Output, Secret};
use cryptoki_sys::*;

/// A length query's answer given ahead: the operation was done at the query, and the result
/// waits for the follow-up call with the same input. A two-call application then costs one
/// member call, not two (over p11-kit: one round trip).
pub(super) struct Answered {
    input: Data,
    /// Wiped when dropped: a digest of secret data, or a signature, is nobody else's business.
    out: Secret,
}

/// Operations whose length query is answered ahead: their query answers the exact length on
/// the members p11ha knows (SoftHSM), so the answer given ahead is the one the member would
/// have given. A decryption's query answers an upper bound instead, and its errors belong to
/// the follow-up call, so it is asked as it is.
fn answers_ahead(kind: OpKind) -> bool {
    matches!(kind, OpKind::Sign | OpKind::Digest)
}

/// What became of a length query done ahead.
enum Ahead {
    /// The length, the result kept for the follow-up call.
    Answer(Output),
    /// To be asked as a plain length query.
    Plain,
    /// The member's answer to it, as to the plain query.
    Refused(CK_RV),
}

/// Room for an output done ahead; a larger one is asked for as a plain length query.
const AHEAD_ROOM: usize = 1024;

/// C_DigestKey's input is a key on the member, not bytes p11ha holds.
const DIGEST_KEY: &str = "C_DigestKey fed it a key, which is not replayed";

impl Session {
    pub(crate) fn op_init_unaudited(
        &self,
        kind: OpKind,
        mech: Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> CkResult<()> {
        let mut st = self.st.lock();
        self.begin_waiting(&mut st);
        let mut old = None;
        if let Some(pos) = st.ops.iter().position(|o| o.kind == kind) {
            let was = st.ops.swap_remove(pos);
            match self.init_again(&mut st, &was, &mech, key) {
                Ok(()) => {
                    let busy = Some(self.group.member(was.idx).busy());
                    st.ops.push(ActiveOp {
                        mech,
                        key,
                        fed: false,
                        kept: Default::default(),
                        busy,
                        begin: None,
                        answered: None,
                        ..was
                    });
                    return Ok(());
                }
                Err(Some(rv)) => {
                    st.ops.push(was);
                    return Err(rv);
                }
                // Its member is gone, or lacks the key: start afresh; the record stays unless
                // that succeeds.
                Err(None) => old = Some(was),
            }
        }
        let fresh = self.init_fresh(&mut st, kind, &mech, key);
        if let (Err(_), Some(old)) = (&fresh, old) {
            st.ops.push(old);
        }
        fresh
    }

    /// A new operation on the best member for it.
    fn init_fresh(
        &self,
        st: &mut State,
        kind: OpKind,
        mech: &Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> CkResult<()> {
        let mech = mech.clone();
        let keys: Vec<_> = if key == 0 { vec![] } else { vec![key] };
        // Where the session's other operations are, so that a member that allows one
        // operation per session answers as it would directly; else, for a digest (it names no
        // key, but C_DigestKey may name a session key), the home member. Otherwise the
        // balancer chooses: sessions are not pinned to a member, so load spreads and a member
        // that returns is used again.
        let busy_on = st.ops.first().map(|o| o.idx);
        let prefer = busy_on.or(if key == 0 { self.home(st) } else { None });
        // An Init this member accepted before travels with the first data call instead.
        let waits = st.ops.is_empty();
        let mechanism = mech
            .as_ref()
            .filter(|m| waits && !m.has_parameter())
            .map(|m| m.mechanism);
        let accepted = &self.group.objects.inits;
        let (begin, t) = self
            .attempt(st, &keys, prefer, |t| {
                let member_key = t.objects.first().copied().unwrap_or(0);
                // The Init travels to save a thread hand-off; a member called on the
                // application's thread has none to save, and sees every Init when it is made.
                let mechanism = mechanism.filter(|_| !t.inst.calls_on_caller());
                let init = mechanism.map(|mechanism| Init {
                    key,
                    member: t.idx,
                    instance: t.inst.id,
                    kind,
                    mechanism,
                });
                if let Some(i) = init.filter(|i| accepted.knows(i)) {
                    return Ok(Some(Begin {
                        mechanism: i.mechanism,
                        key: member_key,
                    }));
                }
                t.inst.op_init(kind, t.session, mech.clone(), member_key)?;
                if let Some(i) = init {
                    accepted.accept(i);
                }
                Ok(None)
            })
            .map_err(|rv| self.init_rv(rv, key))?;
        let busy = Some(self.group.member(t.idx).busy());
        st.ops.push(ActiveOp {
            kind,
            mech,
            key,
            idx: t.idx,
            inst: t.inst,
            session: t.session,
            fed: false,
            kept: Default::default(),
            busy,
            begin,
            answered: None,
        });
        Ok(())
    }

    /// An Init's answer as the application gets it: p11ha's own for a key it knows that no
    /// member up holds, or one it does not know with no member up to ask.
    fn init_rv(&self, rv: CK_RV, key: CK_OBJECT_HANDLE) -> CK_RV {
        let ours = self.group.objects.exists(key) || !self.group.any_up();
        if rv == CKR_OBJECT_HANDLE_INVALID && key != 0 && ours {
            CKR_KEY_HANDLE_INVALID
        } else {
            rv
        }
    }

    /// Makes the member hold this session's operation again (there is at most one waiting)
    /// for a call that is not the operation's own next one: the Init still waiting is made,
    /// and an operation whose length query was answered ahead is initialized again. Called by
    /// another Init (the member must see the operation that is active, as it would directly),
    /// C_DigestKey, a context-specific login, and `member_session` (every other call). An
    /// operation whose member fails meanwhile moves; one that cannot start anywhere is
    /// forgotten (the application's next call for it gets CKR_OPERATION_NOT_INITIALIZED).
    pub(super) fn begin_waiting(&self, st: &mut State) {
        let Some(pos) = st
            .ops
            .iter()
            .position(|o| o.begin.is_some() || o.answered.is_some())
        else {
            return;
        };
        let mut op = st.ops.swap_remove(pos);
        if op.answered.is_some() {
            if self.reopen(st, &mut op).is_ok() {
                st.ops.push(op);
            }
            return;
        }
        let Some(b) = op.begin.take() else { return };
        let mech = Some(OwnedMechanism::new(b.mechanism));
        match op.inst.op_init(op.kind, op.session, mech, b.key) {
            Ok(()) => st.ops.push(op),
            Err(f) if f.fails_member() => {
                if self.restart_elsewhere(st, &mut op, f).is_ok() {
                    st.ops.push(op);
                }
            }
            Err(_) => self.group.objects.inits.refuse(&accepted_init(&op, b)),
        }
    }

    /// Runs one data call of `op` on its member with the Init still owed travelling in it. A
    /// member that refuses that Init, which it accepted before, is asked for the Init on its
    /// own through the usual member choice, and the call follows if it succeeds. `Err`: that
    /// Init failed too; the application gets the member's answer and the operation is over.
    fn feed<T>(
        &self,
        st: &mut State,
        op: &mut ActiveOp,
        call: impl Fn(&ActiveOp, Option<Begin>) -> MemberResult<T>,
    ) -> CkResult<MemberResult<T>> {
        if op.answered.is_some() {
            self.reopen(st, op)?;
        }
        let Some(b) = op.begin.take() else {
            return Ok(call(op, None));
        };
        match call(op, Some(b)) {
            Err(Fault::NotBegun(rv)) if !Fault::Rv(rv).fails_member() => {
                self.group.objects.inits.refuse(&accepted_init(op, b));
                let prefer = Some(op.idx);
                self.init_anew(st, op, prefer)
                    .map_err(|rv| self.init_rv(rv, op.key))?;
                self.group.objects.inits.accept(accepted_init(op, b));
                Ok(call(op, None))
            }
            r => Ok(r),
        }
    }

    /// Initializes again, on its member, an operation whose length query was answered ahead
    /// (the member's operation is over) for a call other than the follow-up it expected: the
    /// member then sees the operation the application believes active.
    fn reopen(&self, st: &mut State, op: &mut ActiveOp) -> CkResult<()> {
        op.answered = None;
        let key = if op.key == 0 {
            Ok(Some(0))
        } else {
            self.resolve(op.idx, &op.inst, op.session, op.key)
        };
        let r = key.and_then(|k| {
            let k = k.ok_or(Fault::Rv(CKR_KEY_HANDLE_INVALID))?;
            op.inst.op_init(op.kind, op.session, op.mech.clone(), k)
        });
        match r {
            Ok(()) => Ok(()),
            Err(f) if f.fails_member() => self.restart_elsewhere(st, op, f),
            Err(f) => Err(f.rv()),
        }
    }

    /// A length query of an operation done ahead (see [`Answered`]). It is asked as a plain
    /// query instead, the member's operation active, when the output is larger than
    /// [`AHEAD_ROOM`], when the member failed (on the member the operation moved to), or
    /// when it refused the data (the refusal belongs to the follow-up call, as it would
    /// directly). `Err`: the operation could not start anywhere (see `feed`).
    fn answer_ahead(&self, st: &mut State, op: &mut ActiveOp, data: &Data) -> CkResult<Ahead> {
        let room = Some(data.len().saturating_add(AHEAD_ROOM) as CK_ULONG);
        let kind = op.kind;
        let r = self.feed(st, op, |op, b| {
            op.inst.op_single(kind, op.session, data.clone(), room, b)
        })?;
        match r {
            Ok(Output {
                rv: CKR_OK,
                len,
                data: Some(out),
            }) => {
                op.answered = Some(Answered {
                    input: data.clone(),
                    out,
                });
                Ok(Ahead::Answer(Output {
                    rv: CKR_OK,
                    len,
                    data: None,
                }))
            }
            Ok(_) => Ok(Ahead::Plain),
            // The member failed, maybe before the Init that travelled: the operation starts
            // again on another member, and the plain query goes there.
            Err(f) if f.fails_member() => {
                self.restart_elsewhere(st, op, f)?;
                Ok(Ahead::Plain)
            }
            // It was over already (ended by an earlier error): the query's own answer.
            Err(f @ Fault::Rv(CKR_OPERATION_NOT_INITIALIZED)) => Ok(Ahead::Refused(f.rv())),
            // The member may have ended the operation on the error, or kept it (SoftHSM
            // keeps some): active either way before the plain query.
            Err(f) => match self.reopen(st, op) {
                Ok(()) | Err(CKR_OPERATION_ACTIVE) => Ok(Ahead::Plain),
                Err(_) => Ok(Ahead::Refused(f.rv())),
            },
        }
    }

    /// The follow-up of a length query answered ahead, with the same input: the kept answer.
    /// `None` when the input differs.
    fn answered_before(op: &mut ActiveOp, data: &Data, cap: Option<CK_ULONG>) -> Option<Output> {
        let a = op.answered.as_ref()?;
        if a.input[..] != data[..] {
            return None;
        }
        let len = a.out.len() as CK_ULONG;
        Some(match cap {
            None => Output {
                rv: CKR_OK,
                len,
                data: None,
            },
            Some(c) if c < len => Output {
                rv: CKR_BUFFER_TOO_SMALL,
                len,
                data: None,
            },
            Some(_) => Output {
                rv: CKR_OK,
                len,
                data: op.answered.take().map(|a| a.out),
            },
        })
    }

    /// Initializes `op` afresh through the usual member choice (`prefer` first) and moves its
    /// record to the member that took it: after its member failed, or refused the Init that
    /// travelled with a data call.
    fn init_anew(&self, st: &mut State, op: &mut ActiveOp, prefer: Option<usize>) -> CkResult<()> {
        let keys: Vec<_> = if op.key == 0 { vec![] } else { vec![op.key] };
        let (kind, mech) = (op.kind, op.mech.clone());
        let (_, t) = self.attempt(st, &keys, prefer, |t| {
            let member_key = t.objects.first().copied().unwrap_or(0);
            t.inst.op_init(kind, t.session, mech.clone(), member_key)
        })?;
        op.busy = Some(self.group.member(t.idx).busy());
        op.idx = t.idx;
        op.inst = t.inst;
        op.session = t.session;
        Ok(())
    }

    /// A new Init of an operation kind that has a record: on the member session that holds it.
    /// `Err(Some(rv))` is that member's answer (CKR_OPERATION_ACTIVE while it is active);
    /// `Err(None)`: that member cannot take it (gone, or without the key).
    fn init_again(
        &self,
        st: &mut State,
        old: &ActiveOp,
        mech: &Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> Result<(), Option<CK_RV>> {
        let mut probing = false;
        let member_key = if key == 0 {
            0
        } else if !self.group.objects.exists(key) {
            CK_INVALID_HANDLE // never given out: the member answers what it answers to that
        } else {
            match self.resolve(old.idx, &old.inst, old.session, key) {
                Ok(Some(h)) => h,
                // The key is elsewhere. Whether the old operation still holds this member
                // session only the member can say: asked with a handle that names nothing, it
                // says CKR_OPERATION_ACTIVE (the answer the application gets) or refuses the
                // handle (the old operation is over: start afresh where the key is).
                Ok(None) => {
                    probing = true;
                    CK_INVALID_HANDLE
                }
                Err(f) if f.fails_member() => {
                    self.drop_member(old.idx, &old.inst, f);
                    forget(st, old.idx);
                    return Err(None);
                }
                Err(f) => return Err(Some(f.rv())),
            }
        };
        match old
            .inst
            .op_init(old.kind, old.session, mech.clone(), member_key)
        {
            Ok(()) if !probing => Ok(()),
            Err(f) if f.fails_member() => {
                self.drop_member(old.idx, &old.inst, f);
                forget(st, old.idx);
                Err(None)
            }
            Err(Fault::Rv(CKR_OPERATION_ACTIVE)) => Err(Some(CKR_OPERATION_ACTIVE)),
            Err(f) if !probing => Err(Some(f.rv())),
            _ => Err(None),
        }
    }

    /// A call for an operation p11ha holds no record of: a member answers it, as it would
    /// directly (SoftHSM checks a NULL argument before it says CKR_OPERATION_NOT_INITIALIZED).
    fn unrecorded<T>(
        &self,
        st: &mut State,
        objects: &[CK_OBJECT_HANDLE],
        call: impl FnMut(&super::route::Target) -> crate::provider::MemberResult<T>,
    ) -> CkResult<T> {
        if !self.group.any_up() {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        self.attempt(st, objects, None, call).map(|(v, _)| v)
    }

    /// Keeps the record of an operation its member answered with an error.
    fn keep(st: &mut State, mut op: ActiveOp) {
        op.busy = None;
        st.ops.push(op);
    }

    fn take_op(st: &mut State, kind: OpKind) -> CkResult<ActiveOp> {
        let pos = st
            .ops
            .iter()
            .position(|o| o.kind == kind)
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        Ok(st.ops.swap_remove(pos))
    }

    /// Moves an operation to another member after its member failed: initialized there again
    /// (same mechanism and parameters, the key's twin there) and, if it had been fed, fed the
    /// kept parts again (`replay.rs`). Without a complete replay the caller gets
    /// CKR_DEVICE_ERROR, Luna's rule for a multi-part operation whose member died.
    fn restart_elsewhere(&self, st: &mut State, op: &mut ActiveOp, fault: Fault) -> CkResult<()> {
        let mut fault = fault;
        loop {
            self.drop_member(op.idx, &op.inst, fault);
            forget(st, op.idx);
            if self.stops_at_deactivation(fault) {
                return Err(fault.rv());
            }
            if let Some(why) = not_movable(op) {
                self.log_replay(op, why);
                return Err(CKR_DEVICE_ERROR);
            }
            self.init_anew(st, op, None)?;
            if !op.fed {
                return Ok(());
            }
            match self.replay(op) {
                Ok(()) => return Ok(()),
                // The new member failed too: on to the next.
                Err(Some(f)) if f.fails_member() => fault = f,
                Err(_) => {
                    end_on_member(op);
                    return Err(CKR_DEVICE_ERROR);
                }
            }
        }
    }

    /// A single-part call with output (C_Sign, C_Encrypt, C_Decrypt, C_Digest, *Recover),
    /// redone on another member if its member fails.
    pub fn op_single(&self, kind: OpKind, data: Data, cap: Option<CK_ULONG>) -> CkResult<Output> {
        let mut st = self.st.lock();
        let Ok(mut op) = Self::take_op(&mut st, kind) else {
            return self.unrecorded(&mut st, &[], |t| {
                t.inst.op_single(kind, t.session, data.clone(), cap, None)
            });
        };
        if let Some(out) = Self::answered_before(&mut op, &data, cap) {
            if keeps_active(&out, cap) {
                st.ops.push(op);
            }
            return Ok(out);
        }
        if cap.is_none() && op.answered.is_none() && answers_ahead(kind) {
            match self.answer_ahead(&mut st, &mut op, &data)? {
                Ahead::Answer(out) => {
                    st.ops.push(op);
                    return Ok(out);
                }
                Ahead::Refused(rv) => {
                    Self::keep(&mut st, op);
                    return Err(rv);
                }
                Ahead::Plain => {}
            }
        }
        loop {
            let r = self.feed(&mut st, &mut op, |op, b| {
                op.inst.op_single(kind, op.session, data.clone(), cap, b)
            })?;
            match r {
                Ok(out) => {
                    if keeps_active(&out, cap) {
                        st.ops.push(op);
                    }
                    return Ok(out);
                }
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => {
                    Self::keep(&mut st, op);
                    return Err(f.rv());
                }
            }
        }
    }

    /// C_Verify: the verdict is the return value.
    pub fn verify(&self, data: Data, signature: Data) -> CkResult<()> {
        let mut st = self.st.lock();
        let Ok(mut op) = Self::take_op(&mut st, OpKind::Verify) else {
            return self.unrecorded(&mut st, &[], |t| {
                t.inst
                    .verify(t.session, data.clone(), signature.clone(), None)
            });
        };
        loop {
            let r = self.feed(&mut st, &mut op, |op, b| {
                op.inst
                    .verify(op.session, data.clone(), signature.clone(), b)
            })?;
            match r {
                Ok(()) => return Ok(()),
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => {
                    Self::keep(&mut st, op);
                    return Err(f.rv());
                }
            }
        }
    }

    pub fn op_update(&self, kind: OpKind, data: Data, cap: Option<CK_ULONG>) -> CkResult<Output> {
        let mut st = self.st.lock();
        let Ok(mut op) = Self::take_op(&mut st, kind) else {
            return self.unrecorded(&mut st, &[], |t| {
                t.inst.op_update(kind, t.session, data.clone(), cap, None)
            });
        };
        loop {
            let r = self.feed(&mut st, &mut op, |op, b| {
                op.inst.op_update(kind, op.session, data.clone(), cap, b)
            })?;
            match r {
                Err(f) if f.fails_member() => {
                    // Redone where the kept parts were replayed, or CKR_DEVICE_ERROR.
                    self.restart_elsewhere(&mut st, &mut op, f)?;
                }
                r => {
                    op.fed = true;
                    self.keep_part(&mut op, &data, r.as_ref().ok(), cap);
                    return match r {
                        Ok(out) => {
                            st.ops.push(op);
                            Ok(out)
                        }
                        Err(f) => {
                            Self::keep(&mut st, op);
                            Err(f.rv())
                        }
                    };
                }
            }
        }
    }

    pub fn op_final(&self, kind: OpKind, cap: Option<CK_ULONG>) -> CkResult<Output> {
        let mut st = self.st.lock();
        let Ok(mut op) = Self::take_op(&mut st, kind) else {
            return self.unrecorded(&mut st, &[], |t| {
                t.inst.op_final(kind, t.session, cap, None)
            });
        };
        loop {
            let r = self.feed(&mut st, &mut op, |op, b| {
                op.inst.op_final(kind, op.session, cap, b)
            })?;
            match r {
                Ok(out) => {
                    if keeps_active(&out, cap) {
                        st.ops.push(op);
                    }
                    return Ok(out);
                }
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => {
                    Self::keep(&mut st, op);
                    return Err(f.rv());
                }
            }
        }
    }

    pub fn verify_final(&self, signature: Data) -> CkResult<()> {
        let mut st = self.st.lock();
        let Ok(mut op) = Self::take_op(&mut st, OpKind::Verify) else {
            return self.unrecorded(&mut st, &[], |t| {
                t.inst.verify_final(t.session, signature.clone(), None)
            });
        };
        loop {
            let r = self.feed(&mut st, &mut op, |op, b| {
                op.inst.verify_final(op.session, signature.clone(), b)
            })?;
            match r {
                Ok(()) => return Ok(()),
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => {
                    Self::keep(&mut st, op);
                    return Err(f.rv());
                }
            }
        }
    }

    /// Ends an operation whose call failed before any member saw it (a NULL length pointer, a
    /// NULL buffer with a length): PKCS#11 ends an operation on such an error, so it is ended
    /// on its member too, which would otherwise refuse the next Init as still active.
    pub fn end_op(&self, kind: OpKind) {
        let mut st = self.st.lock();
        let Ok(op) = Self::take_op(&mut st, kind) else {
            return;
        };
        drop(st);
        if op.begin.is_none() && op.answered.is_none() {
            end_on_member(&op);
        }
    }

    pub fn digest_key(&self, key: CK_OBJECT_HANDLE) -> CkResult<()> {
        let mut st = self.st.lock();
        self.begin_waiting(&mut st);
        let Ok(mut op) = Self::take_op(&mut st, OpKind::Digest) else {
            return self.unrecorded(&mut st, &[key], |t| {
                t.inst.digest_key(t.session, t.objects[0])
            });
        };
        let known = self.group.objects.exists(key);
        let h = match self.resolve(op.idx, &op.inst, op.session, key) {
            Ok(Some(h)) => h,
            // Never given out: the member says what it says to a bad handle.
            Ok(None) if !known => CK_INVALID_HANDLE,
            Ok(None) if !op.fed => match self.move_digest_to(&mut st, &mut op, key) {
                Ok(h) => h,
                Err(rv) => {
                    st.ops.push(op);
                    return Err(rv);
                }
            },
            Ok(None) => {
                st.ops.push(op);
                return Err(CKR_KEY_HANDLE_INVALID);
            }
            Err(f) if f.fails_member() => {
                op.fed = true;
                op.kept.give_up(DIGEST_KEY);
                return self.restart_elsewhere(&mut st, &mut op, f);
            }
            Err(f) => {
                st.ops.push(op);
                return Err(f.rv());
            }
        };
        match op.inst.digest_key(op.session, h) {
            Ok(()) => {
                op.fed = true;
                op.kept.give_up(DIGEST_KEY);
                st.ops.push(op);
                Ok(())
            }
            Err(f) if f.fails_member() => {
                op.fed = true;
                op.kept.give_up(DIGEST_KEY);
                self.restart_elsewhere(&mut st, &mut op, f)
            }
            Err(f) => {
                Self::keep(&mut st, op);
                Err(f.rv())
            }
        }
    }

    /// A digest that has not been fed yet, whose key is on another member: it starts again
    /// there (the one on the old member is ended). Returns the key's handle there.
    fn move_digest_to(
        &self,
        st: &mut State,
        op: &mut ActiveOp,
        key: CK_OBJECT_HANDLE,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let mech = op.mech.clone();
        let (_, t) = self
            .attempt(st, &[key], None, |t| {
                t.inst.op_init(OpKind::Digest, t.session, mech.clone(), 0)
            })
            .map_err(|rv| {
                if rv == CKR_OBJECT_HANDLE_INVALID {
                    CKR_KEY_HANDLE_INVALID
                } else {
                    rv
                }
            })?;
        // A final call with room for any digest ends the operation left on the old member.
        let _ = op
            .inst
            .op_final(OpKind::Digest, op.session, Some(1024), None);
        op.busy = Some(self.group.member(t.idx).busy());
        op.idx = t.idx;
        op.inst = t.inst;
        op.session = t.session;
        Ok(t.objects[0])
    }
}

/// Ends an operation on its member session, whatever its state: a final call with room for
/// any output (the output is dropped).
fn end_on_member(op: &ActiveOp) {
    let room = Some(64 * 1024);
    let _ = match op.kind {
        OpKind::Verify => op
            .inst
            .verify_final(op.session, Input::new(Vec::new()), None),
        OpKind::SignRecover | OpKind::VerifyRecover => op
            .inst
            .op_single(op.kind, op.session, Input::new(Vec::new()), room, None)
            .map(|_| ()),
        _ => op
            .inst
            .op_final(op.kind, op.session, room, None)
            .map(|_| ()),
    };
}

/// The acceptance an operation's waiting Init came from.
fn accepted_init(op: &ActiveOp, b: Begin) -> Init {
    Init {
        key: op.key,
        member: op.idx,
        instance: op.inst.id,
        kind: op.kind,
        mechanism: b.mechanism,
    }
}
