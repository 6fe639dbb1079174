//! How a synchronized group holds the application's keys on its members, and which objects
//! are p11ha's own.
//!
//! A key the application asked to be non-extractable is held by the members as
//! CKA_EXTRACTABLE = true with CKA_WRAP_WITH_TRUSTED = true ("p11ha-managed"): only trusted keys
//! can wrap it, so it can be cloned to members under the cloning keys. p11ha shows it to the
//! application as CKA_EXTRACTABLE = false and refuses to wrap it ([`is_managed`]).

use crate::ha::objects::Identity;
use crate::mechanism::{find, Attr};
use crate::provider::{Instance, MemberResult};
use cryptoki_sys::*;

/// CKA_LABEL (and CKA_ID) of the group cloning key on every member.
pub const CLONING_LABEL: &[u8] = b"p11ha-cloning-key";

/// One of p11ha's own objects (a cloning key, or a record of what a member is owed,
/// `super::records`): never shown to the application, never copied as its object.
pub fn is_cloning_object(identity: &Identity) -> bool {
    identity
        .get(CKA_LABEL)
        .is_some_and(|l| l.value == CLONING_LABEL || l.value == super::records::OWED_LABEL)
}

pub(crate) fn is_key_class(class: Option<CK_OBJECT_CLASS>) -> bool {
    matches!(class, Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY))
}

/// The template p11ha sends a member for a token key the application creates in a synchronized
/// group: a key asked to be non-extractable becomes extractable to trusted keys only; a key
/// that does not say becomes extractable explicitly (tokens differ on the default).
pub fn member_template(class: Option<CK_OBJECT_CLASS>, template: &[Attr]) -> Vec<Attr> {
    let token = find(template, CKA_TOKEN)
        .and_then(Attr::as_bool)
        .unwrap_or(false);
    if !token || !is_key_class(class) {
        return template.to_vec();
    }
    let wanted = find(template, CKA_EXTRACTABLE).and_then(Attr::as_bool);
    let mut out: Vec<Attr> = template
        .iter()
        .filter(|a| {
            a.kind != CKA_EXTRACTABLE && (wanted != Some(false) || a.kind != CKA_WRAP_WITH_TRUSTED)
        })
        .cloned()
        .collect();
    out.push(Attr::bool(CKA_EXTRACTABLE, true));
    if wanted == Some(false) {
        out.push(Attr::bool(CKA_WRAP_WITH_TRUSTED, true));
    }
    out
}

/// A C_SetAttributeValue template for a synchronized group: making a key non-extractable makes
/// it p11ha-managed instead (so it can still be cloned to members).
pub fn member_set_template(template: &[Attr]) -> Vec<Attr> {
    if find(template, CKA_EXTRACTABLE).and_then(Attr::as_bool) != Some(false) {
        return template.to_vec();
    }
    let mut out: Vec<Attr> = template
        .iter()
        .filter(|a| a.kind != CKA_EXTRACTABLE && a.kind != CKA_WRAP_WITH_TRUSTED)
        .cloned()
        .collect();
    out.push(Attr::bool(CKA_WRAP_WITH_TRUSTED, true));
    out
}

/// Whether a member key is p11ha-managed: a secret or private key held as CKA_EXTRACTABLE = true
/// and CKA_WRAP_WITH_TRUSTED = true, which the application sees as non-extractable.
pub fn is_managed(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
) -> MemberResult<bool> {
    let v = inst.read_attributes(
        session,
        obj,
        vec![CKA_CLASS, CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED],
    )?;
    let class = v[0].as_ref().map(|b| Attr::new(CKA_CLASS, b.clone()));
    let flag = |i: usize| v[i].as_deref().is_some_and(|b| b == [CK_TRUE]);
    Ok(is_key_class(class.and_then(|a| a.as_ulong())) && flag(1) && flag(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_extractable_token_keys_become_managed() {
        let t = vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::bool(CKA_EXTRACTABLE, false),
        ];
        let m = member_template(Some(CKO_SECRET_KEY), &t);
        assert_eq!(
            find(&m, CKA_EXTRACTABLE).and_then(Attr::as_bool),
            Some(true)
        );
        assert_eq!(
            find(&m, CKA_WRAP_WITH_TRUSTED).and_then(Attr::as_bool),
            Some(true)
        );
        // Session keys and public objects are left as asked.
        let s = vec![Attr::bool(CKA_EXTRACTABLE, false)];
        assert_eq!(member_template(Some(CKO_SECRET_KEY), &s), s);
        assert_eq!(member_template(Some(CKO_DATA), &t), t);
        // Extractable by default: made explicit, not managed.
        let d = member_template(Some(CKO_PRIVATE_KEY), &[Attr::bool(CKA_TOKEN, true)]);
        assert_eq!(
            find(&d, CKA_EXTRACTABLE).and_then(Attr::as_bool),
            Some(true)
        );
        assert!(find(&d, CKA_WRAP_WITH_TRUSTED).is_none());
    }

    #[test]
    fn making_a_key_non_extractable_makes_it_managed() {
        let t = member_set_template(&[Attr::bool(CKA_EXTRACTABLE, false)]);
        assert!(find(&t, CKA_EXTRACTABLE).is_none());
        assert_eq!(
            find(&t, CKA_WRAP_WITH_TRUSTED).and_then(Attr::as_bool),
            Some(true)
        );
    }
}
