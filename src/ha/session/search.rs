//! C_FindObjectsInit / C_FindObjects / C_FindObjectsFinal.
//!
//! A search finds every object the application may see, each once. With synchronization on,
//! token objects are on every member and session objects on the group's home member, so the
//! home member's answer is the whole answer. Without it, objects live where they were made:
//! every member is searched and twins (one virtual handle) are found once.

use super::route::Target;
use super::{CkResult, Session, State};
use crate::ha::sync::policy::is_cloning_object;
use crate::mechanism::Attr;
use crate::provider::{Fault, MemberResult};
use cryptoki_sys::*;
use std::collections::HashSet;

impl Session {
    pub fn find_init(&self, template: Vec<Attr>) -> CkResult<()> {
        let mut st = self.st.lock();
        if st.found.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let found = if self.syncs() {
            let home = self.home(&st);
            self.attempt(&mut st, &[], home, |t| self.find_on(t, &template))?
                .0
        } else {
            self.find_everywhere(&mut st, &template)?
        };
        let mut seen = HashSet::new();
        let found: Vec<_> = found
            .into_iter()
            .filter(|v| {
                seen.insert(*v) && !(self.syncs() && self.is_cloning(*v)) && !self.is_audit_key(*v)
            })
            .collect();
        st.found = Some(found.into_iter());
        Ok(())
    }

    /// The virtual handles of what one member finds.
    fn find_on(&self, t: &Target, template: &[Attr]) -> MemberResult<Vec<CK_OBJECT_HANDLE>> {
        let handles = t.inst.find_all(t.session, template.to_vec())?;
        handles
            .into_iter()
            .map(|h| match self.group.objects.known(t.inst.id, h) {
                Some(v) => Ok(v),
                None => self.adopt(t, h),
            })
            .collect()
    }

    /// Every up member's finds, in configured member order. A member that fails is dropped and the others
    /// answer; the caller's errors (a bad template) are the first member's answer.
    fn find_everywhere(
        &self,
        st: &mut State,
        template: &[Attr],
    ) -> CkResult<Vec<CK_OBJECT_HANDLE>> {
        let mut all = Vec::new();
        let mut answered = false;
        let mut suspects = Vec::new();
        // In the configured member order, not the load-balancing rotation: the same search
        // then lists the same objects in the same order every time (the first member's
        // order, as that member would list them), which applications that take the first
        // match rely on.
        let mut members = self.group.candidates(|i, b| self.usable(st, i, b));
        members.sort_unstable();
        for idx in members {
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            let found = self.member_session(st, idx, &b).and_then(|session| {
                let t = Target {
                    idx,
                    inst: b.instance.clone(),
                    session,
                    objects: Vec::new(),
                };
                self.find_on(&t, template)
            });
            match found {
                Ok(v) => {
                    answered = true;
                    all.extend(v);
                }
                // As in `attempt`: a member that still answers is only suspect (p11-kit-client
                // answers CKR_DEVICE_ERROR to a template attribute of the wrong length).
                Err(Fault::Rv(CKR_DEVICE_ERROR)) if self.still_answers(st, idx, &b.instance) => {
                    suspects.push((idx, b.instance.clone()));
                }
                Err(f) if f.fails_member() => self.drop_member(idx, &b.instance, f),
                Err(f) => return Err(f.rv()),
            }
        }
        if answered {
            for (idx, inst) in suspects {
                self.drop_member(idx, &inst, Fault::Rv(CKR_DEVICE_ERROR));
            }
            Ok(all)
        } else {
            Err(CKR_DEVICE_ERROR)
        }
    }

    fn is_cloning(&self, v: CK_OBJECT_HANDLE) -> bool {
        self.group
            .objects
            .identity(v)
            .is_some_and(|i| is_cloning_object(&i))
    }

    pub fn find_next(&self, max: usize) -> CkResult<Vec<CK_OBJECT_HANDLE>> {
        let mut st = self.st.lock();
        let it = st.found.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        Ok(it.take(max).collect())
    }

    pub fn find_final(&self) -> CkResult<()> {
        self.st
            .lock()
            .found
            .take()
            .map(|_| ())
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }
}
