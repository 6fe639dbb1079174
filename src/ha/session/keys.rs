//! Keys through a session: generation, unwrapping and derivation (replicated like every
//! creation), wrapping, and random numbers.

use super::{CkResult, Session};
use crate::ha::sync::policy::{is_managed, member_template};
use crate::mechanism::{find, Attr, OwnedMechanism};
use crate::provider::{Data, Fault, Output};
use cryptoki_sys::*;

impl Session {
    pub(crate) fn generate_key_unaudited(
        &self,
        mech: OwnedMechanism,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = self.key_template(CKO_SECRET_KEY, template);
        self.create_replicated(&[], |t| {
            Ok(vec![t.inst.generate_key(
                t.session,
                mech.clone(),
                template.clone(),
            )?])
        })
        .map(|v| v[0])
    }

    /// A key template as sent to members (see `sync::policy::member_template`).
    fn key_template(&self, default_class: CK_OBJECT_CLASS, template: Vec<Attr>) -> Vec<Attr> {
        if !self.syncs() {
            return template;
        }
        let class = find(&template, CKA_CLASS)
            .and_then(Attr::as_ulong)
            .unwrap_or(default_class);
        member_template(Some(class), &template)
    }

    pub(crate) fn generate_key_pair_unaudited(
        &self,
        mech: OwnedMechanism,
        public: Vec<Attr>,
        private: Vec<Attr>,
    ) -> CkResult<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let private = self.key_template(CKO_PRIVATE_KEY, private);
        self.create_replicated(&[], |t| {
            let (pu, pr) = t.inst.generate_key_pair(
                t.session,
                mech.clone(),
                public.clone(),
                private.clone(),
            )?;
            Ok(vec![pu, pr])
        })
        .map(|v| (v[0], v[1]))
    }

    pub fn wrap_key(
        &self,
        mech: OwnedMechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        cap: Option<CK_ULONG>,
    ) -> CkResult<Output> {
        let mut st = self.st.lock();
        let syncs = self.syncs();
        self.attempt(&mut st, &[wrapping, key], None, |t| {
            if syncs && is_managed(&t.inst, t.session, t.objects[1])? {
                // Non-extractable as far as the application is concerned.
                return Err(Fault::Rv(CKR_KEY_UNEXTRACTABLE));
            }
            t.inst
                .wrap_key(t.session, mech.clone(), t.objects[0], t.objects[1], cap)
        })
        .map(|(v, _)| v)
    }

    pub(crate) fn unwrap_key_unaudited(
        &self,
        mech: OwnedMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: Data,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = self.key_template(CKO_SECRET_KEY, template);
        self.create_replicated(&[unwrapping], |t| {
            Ok(vec![t.inst.unwrap_key(
                t.session,
                mech.clone(),
                t.objects[0],
                wrapped.clone(),
                template.clone(),
            )?])
        })
        .map(|v| v[0])
    }

    pub(crate) fn derive_key_unaudited(
        &self,
        mech: OwnedMechanism,
        base: CK_OBJECT_HANDLE,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = self.key_template(CKO_SECRET_KEY, template);
        self.create_replicated(&[base], |t| {
            Ok(vec![t.inst.derive_key(
                t.session,
                mech.clone(),
                t.objects[0],
                template.clone(),
            )?])
        })
        .map(|v| v[0])
    }

    /// `n` random bytes (`null`: the caller's buffer is NULL, which only `n` = 0 allows).
    pub fn generate_random(&self, n: usize, null: bool) -> CkResult<Vec<u8>> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[], None, |t| {
            t.inst.generate_random(t.session, n, null)
        })
        .map(|(v, _)| v)
    }

    pub fn seed_random(&self, seed: Data) -> CkResult<()> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[], None, |t| {
            t.inst.seed_random(t.session, seed.clone())
        })
        .map(|(v, _)| v)
    }
}
