//! Virtual object handles and twins: one virtual handle names the same object on every member.
//!
//! Twins are matched by identity: class, key type, CKA_ID, label, token flag and a value
//! fingerprint (RSA modulus and exponent, EC parameters and point, CKA_CHECK_VALUE of secret keys,
//! a certificate's value). Never by label alone. Member handles are only meaningful together
//! with the module instance they came from, so they are cached per (member, instance).

use crate::mechanism::Attr;
use crate::provider::{Instance, MemberResult};
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Virtual object handles are unique in the process and never reused.
static NEXT_OBJECT: AtomicU64 = AtomicU64::new(1);

const BASE_KINDS: [CK_ATTRIBUTE_TYPE; 7] = [
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_ID,
    CKA_LABEL,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_CERTIFICATE_TYPE,
];

/// Attributes that tell objects with equal class, id and label apart.
fn value_kinds(class: CK_OBJECT_CLASS) -> &'static [CK_ATTRIBUTE_TYPE] {
    match class {
        CKO_PUBLIC_KEY | CKO_PRIVATE_KEY => &[
            CKA_MODULUS,
            CKA_PUBLIC_EXPONENT,
            CKA_EC_PARAMS,
            CKA_EC_POINT,
            CKA_PUBLIC_KEY_INFO,
        ],
        CKO_SECRET_KEY => &[CKA_CHECK_VALUE, CKA_VALUE_LEN],
        CKO_CERTIFICATE => &[CKA_VALUE, CKA_SERIAL_NUMBER, CKA_ISSUER],
        CKO_DATA => &[CKA_APPLICATION, CKA_OBJECT_ID],
        _ => &[],
    }
}

/// A fingerprint value the member does not actually know: SoftHSM gives an unwrapped secret key
/// an empty CKA_CHECK_VALUE and a CKA_VALUE_LEN of 0, which would tell it apart from its twin.
fn is_unknown(a: &Attr) -> bool {
    match a.kind {
        CKA_CHECK_VALUE => a.value.is_empty(),
        CKA_VALUE_LEN => a.as_ulong() == Some(0),
        _ => false,
    }
}

/// What makes an object the same object on another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    attrs: Vec<Attr>,
}

impl Identity {
    /// Reads the identity of `obj` from a member: CKR_OBJECT_HANDLE_INVALID when it is gone,
    /// even halfway through (another process destroyed it).
    pub fn read(
        inst: &Instance,
        session: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
    ) -> MemberResult<Self> {
        let base = inst.read_existing_attributes(session, obj, BASE_KINDS.to_vec())?;
        let mut attrs: Vec<Attr> = BASE_KINDS
            .iter()
            .zip(base)
            .filter_map(|(k, v)| v.map(|v| Attr::new(*k, v)))
            .collect();
        let class = attrs
            .iter()
            .find(|a| a.kind == CKA_CLASS)
            .and_then(Attr::as_ulong);
        if let Some(class) = class {
            let kinds = value_kinds(class).to_vec();
            let values = inst.read_existing_attributes(session, obj, kinds.clone())?;
            attrs.extend(
                kinds
                    .into_iter()
                    .zip(values)
                    .filter_map(|(k, v)| v.map(|v| Attr::new(k, v)))
                    .filter(|a| !is_unknown(a)),
            );
        }
        Ok(Identity { attrs })
    }

    /// An identity from attributes read earlier (the journal).
    pub fn from_attrs(attrs: Vec<Attr>) -> Self {
        Identity { attrs }
    }

    pub fn attrs(&self) -> &[Attr] {
        &self.attrs
    }

    pub fn get(&self, kind: CK_ATTRIBUTE_TYPE) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.kind == kind)
    }

    /// The object as a person reads it in a log line: label and CKA_ID, never a value.
    pub fn describe(&self) -> String {
        let label = self
            .get(CKA_LABEL)
            .map(|l| String::from_utf8_lossy(&l.value).escape_debug().to_string());
        let id: Option<String> = self
            .get(CKA_ID)
            .filter(|a| !a.value.is_empty())
            .map(|a| a.value.iter().map(|b| format!("{b:02x}")).collect());
        match (label, id) {
            (Some(l), Some(id)) => format!("object \"{l}\" (id {id})"),
            (Some(l), None) => format!("object \"{l}\""),
            (None, Some(id)) => format!("object with id {id}"),
            (None, None) => "an object without label or id".to_string(),
        }
    }

    pub fn class(&self) -> Option<CK_OBJECT_CLASS> {
        self.get(CKA_CLASS).and_then(Attr::as_ulong)
    }

    /// Only a logged-in user sees it; its handles end with the login (PKCS#11, C_Logout).
    pub fn is_private(&self) -> bool {
        self.get(CKA_PRIVATE)
            .and_then(Attr::as_bool)
            .unwrap_or(false)
    }

    pub fn is_token(&self) -> bool {
        self.get(CKA_TOKEN).and_then(Attr::as_bool).unwrap_or(false)
    }

    /// A search template that finds the candidates for a twin.
    pub fn search_template(&self) -> Vec<Attr> {
        [CKA_CLASS, CKA_KEY_TYPE, CKA_ID, CKA_LABEL, CKA_TOKEN]
            .iter()
            .filter_map(|k| self.get(*k).cloned())
            .collect()
    }

    /// Same object: same class and key type, and every attribute both sides could read is equal.
    pub fn matches(&self, other: &Identity) -> bool {
        if self.class().is_none() || self.class() != other.class() {
            return false;
        }
        if self.get(CKA_KEY_TYPE) != other.get(CKA_KEY_TYPE) {
            return false;
        }
        self.attrs
            .iter()
            .all(|a| other.get(a.kind).is_none_or(|b| b.value == a.value))
    }
}

struct VObject {
    identity: Identity,
    /// member index → (instance id, member handle).
    twins: HashMap<usize, (u64, CK_OBJECT_HANDLE)>,
    /// The virtual session a session object belongs to.
    owner: Option<CK_SESSION_HANDLE>,
}

#[derive(Default)]
struct Inner {
    objects: HashMap<CK_OBJECT_HANDLE, VObject>,
    by_member: HashMap<(u64, CK_OBJECT_HANDLE), CK_OBJECT_HANDLE>,
}

/// The virtual objects of one group.
#[derive(Default)]
pub struct ObjectTable {
    inner: Mutex<Inner>,
    /// The Inits members accepted with these objects as key: forgotten here with the object,
    /// its twin, or its attributes.
    pub inits: super::accepted::Accepted,
}

impl ObjectTable {
    pub fn known(&self, instance: u64, handle: CK_OBJECT_HANDLE) -> Option<CK_OBJECT_HANDLE> {
        let inner = self.inner.lock();
        let v = *inner.by_member.get(&(instance, handle))?;
        inner.objects.contains_key(&v).then_some(v)
    }

    pub fn exists(&self, v: CK_OBJECT_HANDLE) -> bool {
        self.inner.lock().objects.contains_key(&v)
    }

    pub fn identity(&self, v: CK_OBJECT_HANDLE) -> Option<Identity> {
        self.inner
            .lock()
            .objects
            .get(&v)
            .map(|o| o.identity.clone())
    }

    pub fn owner(&self, v: CK_OBJECT_HANDLE) -> Option<CK_SESSION_HANDLE> {
        self.inner.lock().objects.get(&v).and_then(|o| o.owner)
    }

    /// The cached twin of `v` on a member, if it came from `instance`.
    pub fn twin(
        &self,
        v: CK_OBJECT_HANDLE,
        member: usize,
        instance: u64,
    ) -> Option<CK_OBJECT_HANDLE> {
        let inner = self.inner.lock();
        match inner.objects.get(&v)?.twins.get(&member) {
            Some((i, h)) if *i == instance => Some(*h),
            _ => None,
        }
    }

    pub fn set_twin(
        &self,
        v: CK_OBJECT_HANDLE,
        member: usize,
        instance: u64,
        handle: CK_OBJECT_HANDLE,
    ) {
        let mut inner = self.inner.lock();
        if let Some(o) = inner.objects.get_mut(&v) {
            o.twins.insert(member, (instance, handle));
            inner.by_member.insert((instance, handle), v);
        }
    }

    /// Registers a member object seen for the first time: it joins the virtual object it is a twin
    /// of (one with a matching identity and no live twin on this member), or gets a new handle.
    pub fn register(
        &self,
        member: usize,
        instance: u64,
        handle: CK_OBJECT_HANDLE,
        identity: Identity,
        owner: Option<CK_SESSION_HANDLE>,
    ) -> CK_OBJECT_HANDLE {
        let mut inner = self.inner.lock();
        if let Some(v) = inner.by_member.get(&(instance, handle)).copied() {
            if inner.objects.contains_key(&v) {
                return v;
            }
        }
        let existing = if identity.is_token() {
            inner
                .objects
                .iter()
                .find(|(_, o)| {
                    o.identity.matches(&identity)
                        && o.twins.get(&member).is_none_or(|(i, _)| *i != instance)
                })
                .map(|(v, _)| *v)
        } else {
            None // a session object exists only where it was made
        };
        let v = match existing {
            Some(v) => v,
            None => {
                let v = NEXT_OBJECT.fetch_add(1, Ordering::Relaxed);
                inner.objects.insert(
                    v,
                    VObject {
                        identity,
                        twins: HashMap::new(),
                        owner,
                    },
                );
                v
            }
        };
        if let Some(o) = inner.objects.get_mut(&v) {
            o.twins.insert(member, (instance, handle));
        }
        inner.by_member.insert((instance, handle), v);
        v
    }

    /// Drops the cached twin of `v` on a member (the member no longer knows that handle).
    pub fn forget_twin(&self, v: CK_OBJECT_HANDLE, member: usize) {
        let mut inner = self.inner.lock();
        let old = inner
            .objects
            .get_mut(&v)
            .and_then(|o| o.twins.remove(&member));
        if let Some((i, h)) = old {
            inner.by_member.remove(&(i, h));
        }
        self.inits.forget_twin(v, member);
    }

    /// Drops every cached twin on a member, or on all members with `None`.
    pub fn forget_twins(&self, member: Option<usize>) {
        let mut inner = self.inner.lock();
        let Inner { objects, by_member } = &mut *inner;
        for o in objects.values_mut() {
            o.twins.retain(|m, (i, h)| {
                let keep = member.is_some_and(|only| only != *m);
                if !keep {
                    by_member.remove(&(*i, *h));
                }
                keep
            });
        }
        self.inits.forget_member(member);
    }

    pub fn update_identity(&self, v: CK_OBJECT_HANDLE, identity: Identity) {
        self.inits.forget_key(v);
        if let Some(o) = self.inner.lock().objects.get_mut(&v) {
            o.identity = identity;
        }
    }

    /// Members that hold a twin of `v` (from any instance).
    pub fn members_with_twin(&self, v: CK_OBJECT_HANDLE) -> Vec<usize> {
        let inner = self.inner.lock();
        inner
            .objects
            .get(&v)
            .map(|o| o.twins.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn remove(&self, v: CK_OBJECT_HANDLE) {
        let mut inner = self.inner.lock();
        if let Some(o) = inner.objects.remove(&v) {
            for (i, h) in o.twins.values() {
                inner.by_member.remove(&(*i, *h));
            }
        }
        drop(inner);
        self.inits.forget_key(v);
    }

    /// Forgets the session objects of a closed session (the member destroyed them).
    pub fn remove_owned_by(&self, session: CK_SESSION_HANDLE) {
        let owned: Vec<_> = {
            let inner = self.inner.lock();
            inner
                .objects
                .iter()
                .filter(|(_, o)| o.owner == Some(session))
                .map(|(v, _)| *v)
                .collect()
        };
        for v in owned {
            self.remove(v);
        }
    }

    /// Forgets the private objects: after a logout their handles are invalid (PKCS#11), and
    /// members renumber them (SoftHSM does).
    pub fn remove_private(&self) {
        let private: Vec<_> = {
            let inner = self.inner.lock();
            inner
                .objects
                .iter()
                .filter(|(_, o)| o.identity.is_private())
                .map(|(v, _)| *v)
                .collect()
        };
        for v in private {
            self.remove(v);
        }
    }

    /// Forgets every session object (all sessions of the group closed).
    pub fn remove_session_objects(&self) {
        let owned: Vec<_> = {
            let inner = self.inner.lock();
            inner
                .objects
                .iter()
                .filter(|(_, o)| o.owner.is_some())
                .map(|(v, _)| *v)
                .collect()
        };
        for v in owned {
            self.remove(v);
        }
    }
}

/// Finds the twin of `identity` on a member: search by class/type/id/label, then compare identities.
pub fn find_twin(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    identity: &Identity,
) -> MemberResult<Option<CK_OBJECT_HANDLE>> {
    for h in inst.find_all(session, identity.search_template())? {
        if Identity::read(inst, session, h)?.matches(identity) {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(attrs: Vec<Attr>) -> Identity {
        Identity { attrs }
    }

    fn rsa_pub(id: u8, modulus: &[u8]) -> Identity {
        ident(vec![
            Attr::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
            Attr::new(CKA_ID, vec![id]),
            Attr::new(CKA_LABEL, b"k".to_vec()),
            Attr::bool(CKA_TOKEN, true),
            Attr::new(CKA_MODULUS, modulus.to_vec()),
        ])
    }

    #[test]
    fn values_softhsm_leaves_blank_on_unwrapped_keys_are_not_compared() {
        assert!(is_unknown(&Attr::new(CKA_CHECK_VALUE, vec![])));
        assert!(is_unknown(&Attr::ulong(CKA_VALUE_LEN, 0)));
        assert!(!is_unknown(&Attr::new(
            CKA_CHECK_VALUE,
            vec![0xa8, 0x13, 0xd8]
        )));
        assert!(!is_unknown(&Attr::ulong(CKA_VALUE_LEN, 32)));
        assert!(!is_unknown(&Attr::new(CKA_LABEL, vec![])));
    }

    #[test]
    fn same_label_different_key_is_not_a_twin() {
        assert!(rsa_pub(1, &[1, 2, 3]).matches(&rsa_pub(1, &[1, 2, 3])));
        assert!(!rsa_pub(1, &[1, 2, 3]).matches(&rsa_pub(1, &[9, 9, 9])));
        assert!(!rsa_pub(1, &[1, 2, 3]).matches(&rsa_pub(2, &[1, 2, 3])));
    }

    #[test]
    fn twins_share_one_virtual_handle_and_distinct_objects_do_not() {
        let t = ObjectTable::default();
        let a = t.register(0, 100, 5, rsa_pub(1, &[1]), None);
        let b = t.register(1, 200, 9, rsa_pub(1, &[1]), None);
        assert_eq!(a, b, "the same key on two members is one virtual object");
        let c = t.register(0, 100, 6, rsa_pub(1, &[2]), None);
        assert_ne!(a, c);
        // A second object with an identical identity on the same member is a different object.
        let d = t.register(0, 100, 7, rsa_pub(1, &[1]), None);
        assert_ne!(a, d);
        assert_eq!(t.twin(a, 1, 200), Some(9));
        assert_eq!(
            t.twin(a, 1, 201),
            None,
            "a handle from an old instance is stale"
        );
        assert_eq!(t.known(100, 5), Some(a));
    }

    #[test]
    fn session_objects_never_merge_and_go_with_their_session() {
        let t = ObjectTable::default();
        let mut id = rsa_pub(1, &[1]);
        id.attrs.retain(|a| a.kind != CKA_TOKEN);
        let a = t.register(0, 100, 5, id.clone(), Some(77));
        let b = t.register(1, 200, 5, id, Some(78));
        assert_ne!(a, b);
        t.remove_owned_by(77);
        assert!(!t.exists(a));
        assert!(t.exists(b));
    }
}
