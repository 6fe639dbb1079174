//! Copying one token object from one member to another: public objects by value, secret and
//! private keys only wrapped, under the group's cloning keys (`Carrier`).

use super::policy::{is_cloning_object, is_key_class, CLONING_LABEL};
use crate::diag::diag;
use crate::ha::objects::Identity;
use crate::mechanism::{Attr, OwnedMechanism};
use crate::provider::{Fault, Input, Instance, MemberResult};
use cryptoki_sys::*;

/// What a creation in a synchronized group returns when a member (or its transport) refuses
/// every mechanism the new key could travel to it by: not CKR_MECHANISM_INVALID, which would
/// blame the application's mechanism. The HA log names the member and the mechanism.
pub const RV_NO_CARRIER: CK_RV = CKR_FUNCTION_FAILED;

/// The mechanism keys travel under.
pub const CLONING_MECHANISM: CK_MECHANISM_TYPE = CKM_AES_KEY_WRAP_PAD;

/// Attributes copied by value for public objects (those a member lets us read and set).
fn value_kinds(class: CK_OBJECT_CLASS) -> &'static [CK_ATTRIBUTE_TYPE] {
    match class {
        CKO_DATA => &[
            CKA_CLASS,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_MODIFIABLE,
            CKA_APPLICATION,
            CKA_OBJECT_ID,
            CKA_VALUE,
        ],
        CKO_CERTIFICATE => &[
            CKA_CLASS,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_MODIFIABLE,
            CKA_CERTIFICATE_TYPE,
            CKA_CERTIFICATE_CATEGORY,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_SUBJECT,
            CKA_ID,
            CKA_ISSUER,
            CKA_SERIAL_NUMBER,
            CKA_VALUE,
            CKA_URL,
        ],
        CKO_PUBLIC_KEY => &[
            CKA_CLASS,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_MODIFIABLE,
            CKA_KEY_TYPE,
            CKA_ID,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_DERIVE,
            CKA_SUBJECT,
            CKA_ENCRYPT,
            CKA_VERIFY,
            CKA_VERIFY_RECOVER,
            CKA_WRAP,
            CKA_MODULUS,
            CKA_PUBLIC_EXPONENT,
            CKA_EC_PARAMS,
            CKA_EC_POINT,
        ],
        _ => &[],
    }
}

/// The unwrap template of a cloned key: its attributes as the source member holds them.
fn key_kinds(class: CK_OBJECT_CLASS) -> &'static [CK_ATTRIBUTE_TYPE] {
    match class {
        CKO_SECRET_KEY => &[
            CKA_CLASS,
            CKA_KEY_TYPE,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_ID,
            CKA_MODIFIABLE,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_DERIVE,
            CKA_SENSITIVE,
            CKA_ENCRYPT,
            CKA_DECRYPT,
            CKA_SIGN,
            CKA_VERIFY,
            CKA_WRAP,
            CKA_UNWRAP,
            CKA_EXTRACTABLE,
            CKA_WRAP_WITH_TRUSTED,
        ],
        CKO_PRIVATE_KEY => &[
            CKA_CLASS,
            CKA_KEY_TYPE,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_ID,
            CKA_MODIFIABLE,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_DERIVE,
            CKA_SUBJECT,
            CKA_SENSITIVE,
            CKA_DECRYPT,
            CKA_SIGN,
            CKA_SIGN_RECOVER,
            CKA_UNWRAP,
            CKA_EXTRACTABLE,
            CKA_WRAP_WITH_TRUSTED,
            CKA_ALWAYS_AUTHENTICATE,
        ],
        _ => &[],
    }
}

/// One side of a copy: a member instance, a session on it, and the cloning keys found on it.
pub struct End<'a> {
    pub inst: &'a Instance,
    pub session: CK_SESSION_HANDLE,
    serial: String,
    found: Vec<((CK_OBJECT_CLASS, Vec<u8>), CK_OBJECT_HANDLE)>,
    /// Carriers this member (or the transport to it) answered CKR_MECHANISM_INVALID.
    refused: Vec<Carrier>,
}

impl End<'_> {
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The mechanism of the first carrier this member (or its transport) refused, if any.
    pub fn refused_carrier(&self) -> Option<&'static str> {
        self.refused.first().map(|c| c.name())
    }
}

impl<'a> End<'a> {
    pub fn new(inst: &'a Instance, session: CK_SESSION_HANDLE, serial: &str) -> Self {
        End {
            inst,
            session,
            serial: serial.to_string(),
            found: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// The cloning object of `class` with CKA_ID `id`; CKR_FUNCTION_FAILED when there is none
    /// (the group was not provisioned with `-init-cloning-key`).
    fn cloning_object(
        &mut self,
        class: CK_OBJECT_CLASS,
        id: &[u8],
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        if let Some((_, h)) = self.found.iter().find(|(k, _)| k.0 == class && k.1 == id) {
            return Ok(*h);
        }
        let found = self
            .inst
            .find_all(self.session, cloning_search(Some((class, id))))?;
        let h = *found.first().ok_or(Fault::Rv(CKR_FUNCTION_FAILED))?;
        self.found.push(((class, id.to_vec()), h));
        Ok(h)
    }
}

/// Every cloning object, or the one of a class and CKA_ID.
pub(crate) fn cloning_search(which: Option<(CK_OBJECT_CLASS, &[u8])>) -> Vec<Attr> {
    let mut t = vec![
        Attr::bool(CKA_TOKEN, true),
        Attr::new(CKA_LABEL, CLONING_LABEL.to_vec()),
    ];
    if let Some((class, id)) = which {
        t.push(Attr::ulong(CKA_CLASS, class));
        t.push(Attr::new(CKA_ID, id.to_vec()));
    }
    t
}

/// How a secret or private key travels between two members, in order of preference. A carrier
/// one end refuses with CKR_MECHANISM_INVALID is not tried with that end again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// CKM_AES_KEY_WRAP_PAD under the group's AES cloning key: any secret or private key.
    AesKeyWrap,
    /// CKM_RSA_PKCS_OAEP under the receiving member's own RSA cloning key pair (the private half
    /// made on that member, the public half trusted on every other one): secret keys only, but
    /// p11-kit's RPC carries it where it carries no AES key wrap.
    RsaOaep,
}

impl Carrier {
    const ALL: [Carrier; 2] = [Carrier::AesKeyWrap, Carrier::RsaOaep];

    fn carries(self, class: CK_OBJECT_CLASS) -> bool {
        match self {
            Carrier::AesKeyWrap => true,
            Carrier::RsaOaep => class == CKO_SECRET_KEY,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Carrier::AesKeyWrap => "CKM_AES_KEY_WRAP_PAD",
            Carrier::RsaOaep => "CKM_RSA_PKCS_OAEP",
        }
    }

    fn mechanism(self) -> OwnedMechanism {
        match self {
            Carrier::AesKeyWrap => OwnedMechanism::new(CLONING_MECHANISM),
            Carrier::RsaOaep => OwnedMechanism::rsa_oaep_sha1(),
        }
    }

    /// The wrapping key on `from` and the unwrapping key on `to`.
    fn keys(
        self,
        from: &mut End,
        to: &mut End,
    ) -> CopyResult<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        match self {
            Carrier::AesKeyWrap => Ok((
                src(from.cloning_object(CKO_SECRET_KEY, CLONING_LABEL))?,
                dst(to.cloning_object(CKO_SECRET_KEY, CLONING_LABEL))?,
            )),
            Carrier::RsaOaep => {
                let id = to.serial.clone().into_bytes();
                Ok((
                    src(from.cloning_object(CKO_PUBLIC_KEY, &id))?,
                    dst(to.cloning_object(CKO_PRIVATE_KEY, &id))?,
                ))
            }
        }
    }
}

/// What to tell the user when an object could not be copied with `rv`.
pub fn hint(rv: CK_RV) -> &'static str {
    match rv {
        CKR_FUNCTION_FAILED => {
            " (a member has no cloning objects: p11ha synchronize -group <label> \
             -init-cloning-key provisions the members that lack them)"
        }
        CKR_MECHANISM_INVALID => {
            " (no key-wrap mechanism reaches both members for this key: private keys need \
             CKM_AES_KEY_WRAP_PAD, which p11-kit's RPC does not carry; see docs/SYNC.md)"
        }
        _ => "",
    }
}

/// Which side of a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

pub type CopyResult<T> = Result<T, (Side, Fault)>;

pub(crate) fn src<T>(r: MemberResult<T>) -> CopyResult<T> {
    r.map_err(|f| (Side::Source, f))
}

pub(crate) fn dst<T>(r: MemberResult<T>) -> CopyResult<T> {
    r.map_err(|f| (Side::Target, f))
}

/// Copies one token object from `from` to `to`; returns its handle on `to`.
pub fn copy_object(
    from: &mut End,
    obj: CK_OBJECT_HANDLE,
    to: &mut End,
) -> CopyResult<CK_OBJECT_HANDLE> {
    copy_via(from, obj, to).map(|(h, _)| h)
}

/// [`copy_object`] (of a token or session object), saying which carrier a key travelled by.
pub fn copy_via(
    from: &mut End,
    obj: CK_OBJECT_HANDLE,
    to: &mut End,
) -> CopyResult<(CK_OBJECT_HANDLE, Option<Carrier>)> {
    let class = src(from
        .inst
        .read_attributes(from.session, obj, vec![CKA_CLASS]))?
    .pop()
    .flatten()
    .and_then(|b| Attr::new(CKA_CLASS, b).as_ulong())
    .ok_or((Side::Source, Fault::Rv(CKR_OBJECT_HANDLE_INVALID)))?;
    let keyed = is_key_class(Some(class));
    let kinds = if keyed {
        key_kinds(class)
    } else {
        value_kinds(class)
    };
    if kinds.is_empty() {
        return Err((Side::Source, Fault::Rv(CKR_KEY_NOT_WRAPPABLE)));
    }
    let values = src(from.inst.read_attributes(from.session, obj, kinds.to_vec()))?;
    let template: Vec<Attr> = kinds
        .iter()
        .zip(values)
        .filter_map(|(k, v)| v.map(|v| Attr::new(*k, v)))
        .collect();
    if !keyed {
        return dst(to.inst.create_object(to.session, template)).map(|h| (h, None));
    }
    carry_key(from, obj, class, to, template).map(|(h, c)| (h, Some(c)))
}

/// A secret or private key from `from` to `to` with `template`, by the first carrier both ends
/// take; returns its handle on `to` and the carrier. When none could carry it, the error is
/// CKR_MECHANISM_INVALID ([`End::refused_carrier`] says which end refused what).
pub fn carry_key(
    from: &mut End,
    obj: CK_OBJECT_HANDLE,
    class: CK_OBJECT_CLASS,
    to: &mut End,
    template: Vec<Attr>,
) -> CopyResult<(CK_OBJECT_HANDLE, Carrier)> {
    let mut last = (Side::Source, Fault::Rv(CKR_MECHANISM_INVALID));
    for carrier in Carrier::ALL {
        if !carrier.carries(class)
            || from.refused.contains(&carrier)
            || to.refused.contains(&carrier)
        {
            continue;
        }
        match carry(carrier, from, obj, to, template.clone()) {
            Err((side, Fault::Rv(CKR_MECHANISM_INVALID))) => {
                match side {
                    Side::Source => from.refused.push(carrier),
                    Side::Target => to.refused.push(carrier),
                }
                last = (side, Fault::Rv(CKR_MECHANISM_INVALID));
            }
            Ok(h) => return Ok((h, carrier)),
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Wraps `obj` on `from` and unwraps it on `to` with `template`.
fn carry(
    carrier: Carrier,
    from: &mut End,
    obj: CK_OBJECT_HANDLE,
    to: &mut End,
    template: Vec<Attr>,
) -> CopyResult<CK_OBJECT_HANDLE> {
    let (wrapping, unwrapping) = carrier.keys(from, to)?;
    let mech = carrier.mechanism();
    let size = src(from
        .inst
        .wrap_key(from.session, mech.clone(), wrapping, obj, None))?;
    if size.rv != CKR_OK {
        return Err((Side::Source, Fault::Rv(size.rv)));
    }
    let out = src(from
        .inst
        .wrap_key(from.session, mech.clone(), wrapping, obj, Some(size.len)))?;
    // Input wipes the wrapped key when the last call lets go of it.
    let wrapped = Input::new(match (out.rv, out.data) {
        (CKR_OK, Some(d)) => d,
        (rv, _) => {
            let rv = if rv == CKR_OK { CKR_GENERAL_ERROR } else { rv };
            return Err((Side::Source, Fault::Rv(rv)));
        }
    });
    dst(to
        .inst
        .unwrap_key(to.session, mech, unwrapping, wrapped, template))
}

/// Token objects of a member with their identities (p11ha's own objects left out). An object
/// another process destroys while this one lists them (a settler's claim, a settled record) is
/// left out too: it is gone.
fn token_objects(end: &End) -> MemberResult<Vec<(CK_OBJECT_HANDLE, Identity)>> {
    let mut out = Vec::new();
    for h in end
        .inst
        .find_all(end.session, vec![Attr::bool(CKA_TOKEN, true)])?
    {
        let identity = match Identity::read(end.inst, end.session, h) {
            Err(Fault::Rv(CKR_OBJECT_HANDLE_INVALID)) => continue,
            r => r?,
        };
        if is_cloning_object(&identity) {
            continue;
        }
        out.push((h, identity));
    }
    Ok(out)
}

/// What a comparison copied, and what it could not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Copied {
    pub copied: u64,
    pub failed: u64,
    /// The first object that could not be copied, and why (label and CKA_ID, never a value).
    pub first: Option<String>,
}

impl Copied {
    pub fn add(&mut self, other: Copied) {
        self.copied += other.copied;
        self.failed += other.failed;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Copies to `to` every token object of `from` that `to` has no twin of. Objects that cannot be
/// copied for a reason other than a connection are counted (and said on stderr) and skipped.
pub fn copy_missing(from: &mut End, to: &mut End, what: &str) -> CopyResult<Copied> {
    let theirs = src(token_objects(from))?;
    let mine = dst(token_objects(to))?;
    let mut used = vec![false; mine.len()];
    let mut out = Copied::default();
    for (h, identity) in theirs {
        let twin = mine
            .iter()
            .enumerate()
            .find(|(i, (_, m))| !used[*i] && m.matches(&identity));
        if let Some((i, _)) = twin {
            used[i] = true;
            continue;
        }
        match copy_object(from, h, to) {
            Ok(_) => out.copied += 1,
            Err((side, f)) if f.fails_member() => return Err((side, f)),
            Err((side, f)) => {
                let why = format!(
                    "{} from {} to {}: {}{}",
                    identity.describe(),
                    from.serial,
                    to.serial,
                    crate::rv::rv_name(f.rv()),
                    reason(f.rv(), if side == Side::Source { from } else { to })
                );
                diag!(Warn, "{what}: {why}");
                out.failed += 1;
                out.first.get_or_insert(why);
            }
        }
    }
    Ok(out)
}

/// [`hint`], naming the carrier an end refused when that is why.
fn reason(rv: CK_RV, end: &End) -> String {
    match (rv, end.refused_carrier()) {
        (CKR_MECHANISM_INVALID, Some(c)) => format!(
            " ({c} refused by {} or its transport; see p11ha synchronize -check)",
            end.serial
        ),
        _ => hint(rv).to_string(),
    }
}
