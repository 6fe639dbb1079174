//! Cryptographic operations between their Init and their final call. An operation lives on
//! one member; when that member fails before the operation was fed data, it is initialized
//! again on another member and the call goes on there.

use super::{forget, keeps_active, ActiveOp, CkResult, Session, State};
use crate::mechanism::OwnedMechanism;
use crate::provider::{Data, Fault, OpKind, Output};
use cryptoki_sys::*;

impl Session {
    pub(crate) fn op_init_unaudited(
        &self,
        kind: OpKind,
        mech: Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> CkResult<()> {
        let mut st = self.st.lock();
        if st.ops.iter().any(|o| o.kind == kind) {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let keys: Vec<_> = if key == 0 { vec![] } else { vec![key] };
        let (_, t) = self
            .attempt(&mut st, &keys, None, |t| {
                t.inst.op_init(
                    kind,
                    t.session,
                    mech.clone(),
                    t.objects.first().copied().unwrap_or(0),
                )
            })
            .map_err(|rv| {
                if rv == CKR_OBJECT_HANDLE_INVALID && key != 0 {
                    CKR_KEY_HANDLE_INVALID
                } else {
                    rv
                }
            })?;
        let busy = self.group.member(t.idx).busy();
        st.ops.push(ActiveOp {
            kind,
            mech,
            key,
            idx: t.idx,
            inst: t.inst,
            session: t.session,
            fed: false,
            _busy: busy,
        });
        Ok(())
    }

    fn take_op(st: &mut State, kind: OpKind) -> CkResult<ActiveOp> {
        let pos = st
            .ops
            .iter()
            .position(|o| o.kind == kind)
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        Ok(st.ops.swap_remove(pos))
    }

    /// Moves an operation that has not been fed data to another member after its member failed.
    fn restart_elsewhere(&self, st: &mut State, op: &mut ActiveOp, fault: Fault) -> CkResult<()> {
        self.drop_member(op.idx, &op.inst, fault);
        forget(st, op.idx);
        if self.stops_at_deactivation(fault) {
            return Err(fault.rv());
        }
        if op.fed {
            // Luna's rule too: a multi-part operation whose member died is the application's to redo.
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
        op._busy = self.group.member(t.idx).busy();
        op.idx = t.idx;
        op.inst = t.inst;
        op.session = t.session;
        Ok(())
    }

    /// A single-part call with output (C_Sign, C_Encrypt, C_Decrypt, C_Digest, *Recover),
    /// redone on another member if its member fails.
    pub fn op_single(&self, kind: OpKind, data: Data, cap: Option<CK_ULONG>) -> CkResult<Output> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, kind)?;
        loop {
            match op.inst.op_single(kind, op.session, data.clone(), cap) {
                Ok(out) => {
                    if keeps_active(&out, cap) {
                        st.ops.push(op);
                    }
                    return Ok(out);
                }
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => return Err(f.rv()),
            }
        }
    }

    /// C_Verify: the verdict is the return value.
    pub fn verify(&self, data: Data, signature: Data) -> CkResult<()> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, OpKind::Verify)?;
        loop {
            match op.inst.verify(op.session, data.clone(), signature.clone()) {
                Ok(()) => return Ok(()),
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => return Err(f.rv()),
            }
        }
    }

    pub fn op_update(&self, kind: OpKind, data: Data, cap: Option<CK_ULONG>) -> CkResult<Output> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, kind)?;
        match op.inst.op_update(kind, op.session, data, cap) {
            Ok(out) => {
                op.fed = true;
                st.ops.push(op);
                Ok(out)
            }
            Err(f) if f.fails_member() => {
                // Data went to the member: the operation cannot move, so this always fails.
                op.fed = true;
                self.restart_elsewhere(&mut st, &mut op, f)
                    .and(Err(CKR_DEVICE_ERROR))
            }
            Err(f) => Err(f.rv()),
        }
    }

    pub fn op_final(&self, kind: OpKind, cap: Option<CK_ULONG>) -> CkResult<Output> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, kind)?;
        loop {
            match op.inst.op_final(kind, op.session, cap) {
                Ok(out) => {
                    if keeps_active(&out, cap) {
                        st.ops.push(op);
                    }
                    return Ok(out);
                }
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => return Err(f.rv()),
            }
        }
    }

    pub fn verify_final(&self, signature: Data) -> CkResult<()> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, OpKind::Verify)?;
        loop {
            match op.inst.verify_final(op.session, signature.clone()) {
                Ok(()) => return Ok(()),
                Err(f) if f.fails_member() => self.restart_elsewhere(&mut st, &mut op, f)?,
                Err(f) => return Err(f.rv()),
            }
        }
    }

    pub fn digest_key(&self, key: CK_OBJECT_HANDLE) -> CkResult<()> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, OpKind::Digest)?;
        let h = match self.resolve(op.idx, &op.inst, op.session, key) {
            Ok(Some(h)) => h,
            Ok(None) => {
                st.ops.push(op);
                return Err(CKR_KEY_HANDLE_INVALID);
            }
            Err(f) if f.fails_member() => {
                op.fed = true;
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
                st.ops.push(op);
                Ok(())
            }
            Err(f) if f.fails_member() => {
                op.fed = true;
                self.restart_elsewhere(&mut st, &mut op, f)
            }
            Err(f) => Err(f.rv()),
        }
    }
}
