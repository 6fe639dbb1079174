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
use crate::mechanism::OwnedMechanism;
use crate::provider::{Data, Fault, Input, OpKind, Output};
use cryptoki_sys::*;

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
        let (_, t) = self
            .attempt(st, &keys, prefer, |t| {
                t.inst.op_init(
                    kind,
                    t.session,
                    mech.clone(),
                    t.objects.first().copied().unwrap_or(0),
                )
            })
            .map_err(|rv| {
                // p11ha's answer, not a member's: a key it knows that no member up holds, or
                // one it does not know with no member up to ask.
                let ours = self.group.objects.exists(key) || !self.group.any_up();
                if rv == CKR_OBJECT_HANDLE_INVALID && key != 0 && ours {
                    CKR_KEY_HANDLE_INVALID
                } else {
                    rv
                }
            })?;
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
        });
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
            let keys: Vec<_> = if op.key == 0 { vec![] } else { vec![op.key] };
            let (kind, mech) = (op.kind, op.mech.clone());
            let (_, t) = self.attempt(st, &keys, None, |t| {
                t.inst.op_init(
                    kind,
                    t.session,
                    mech.clone(),
                    t.objects.first().copied().unwrap_or(0),
                )
            })?;
            op.busy = Some(self.group.member(t.idx).busy());
            op.idx = t.idx;
            op.inst = t.inst;
            op.session = t.session;
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
                t.inst.op_single(kind, t.session, data.clone(), cap)
            });
        };
        loop {
            match op.inst.op_single(kind, op.session, data.clone(), cap) {
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
                t.inst.verify(t.session, data.clone(), signature.clone())
            });
        };
        loop {
            match op.inst.verify(op.session, data.clone(), signature.clone()) {
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
                t.inst.op_update(kind, t.session, data.clone(), cap)
            });
        };
        loop {
            match op.inst.op_update(kind, op.session, data.clone(), cap) {
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
            return self.unrecorded(&mut st, &[], |t| t.inst.op_final(kind, t.session, cap));
        };
        loop {
            match op.inst.op_final(kind, op.session, cap) {
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
                t.inst.verify_final(t.session, signature.clone())
            });
        };
        loop {
            match op.inst.verify_final(op.session, signature.clone()) {
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
        end_on_member(&op);
    }

    pub fn digest_key(&self, key: CK_OBJECT_HANDLE) -> CkResult<()> {
        let mut st = self.st.lock();
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
        let _ = op.inst.op_final(OpKind::Digest, op.session, Some(1024));
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
        OpKind::Verify => op.inst.verify_final(op.session, Input::new(Vec::new())),
        OpKind::SignRecover | OpKind::VerifyRecover => op
            .inst
            .op_single(op.kind, op.session, Input::new(Vec::new()), room)
            .map(|_| ()),
        _ => op.inst.op_final(op.kind, op.session, room).map(|_| ()),
    };
}
