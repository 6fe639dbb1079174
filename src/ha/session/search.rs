//! C_FindObjectsInit / C_FindObjects / C_FindObjectsFinal.

use super::{CkResult, Session};
use crate::ha::sync::policy::is_cloning_object;
use crate::mechanism::Attr;
use cryptoki_sys::*;

impl Session {
    /// Runs the whole search on one member and keeps the virtual handles for C_FindObjects.
    /// A synchronized group's cloning keys are p11ha's, not the application's: never found.
    pub fn find_init(&self, template: Vec<Attr>) -> CkResult<()> {
        let mut st = self.st.lock();
        if st.found.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let (found, _) = self.attempt(&mut st, &[], None, |t| {
            let handles = t.inst.find_all(t.session, template.clone())?;
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                let v = match self.group.objects.known(t.inst.id, h) {
                    Some(v) => v,
                    None => self.adopt(t, h)?,
                };
                if !(self.syncs() && self.is_cloning(v)) && !self.is_audit_key(v) {
                    out.push(v);
                }
            }
            Ok(out)
        })?;
        st.found = Some(found.into_iter());
        Ok(())
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
