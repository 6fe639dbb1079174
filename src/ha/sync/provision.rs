//! Provisioning a synchronized group's cloning keys (`p11ha synchronize -init-cloning-key`), for
//! a new group or for the members added to one.

use super::copy::cloning_search;
use super::entropy::fill_random;
use super::opened::Opened;
use super::policy::CLONING_LABEL;
use super::records::{self, Change, Record};
use crate::diag::diag;
use crate::ha::group::Group;
use crate::mechanism::{Attr, OwnedMechanism};
use crate::provider::{Fault, Input, Instance, MemberResult};
use cryptoki_sys::*;
use zeroize::{Zeroize, Zeroizing};

/// Bound on generating one receiving key pair at provisioning, whatever ReceiveTimeout says:
/// RSA-3072 generation takes seconds on many HSMs and has a long tail on loaded machines.
const KEYGEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// `p11ha_init_cloning_key` on a group whose members already hold a cloning key.
pub const RV_CLONING_KEY_EXISTS: CK_RV = CKR_FUNCTION_REJECTED;

/// Provisions the group's cloning keys on every member that has none, and returns the serials
/// of the members it provisioned.
///
/// - The AES-256 cloning key, identical everywhere: 32 random bytes from the operating system,
///   held only in zeroized memory (`Carrier::AesKeyWrap`). It is held like a p11ha-managed key
///   (extractable only under a trusted key), so that it can reach a member added later: wrapped
///   with RSA-OAEP under that member's trusted receiving key, unwrapped there with its private
///   half.
/// - On each member its own RSA-3072 receiving key pair, generated there (the private half never
///   exists anywhere else), and its public half copied to every other member as a trusted key
///   (`Carrier::RsaOaep`).
///
/// When no member has cloning objects, the group is provisioned from scratch; when some have,
/// only the members that have none are (from the others), and each is owed a comparison with a
/// user login (a record, `records`), so the next settler copies every object to it. When every
/// member has them: [`RV_CLONING_KEY_EXISTS`]; nothing is ever overwritten. What was made is
/// destroyed again when a member refuses. Needs a login that may set CKA_TRUSTED (the SO on
/// SoftHSM, whose SO sessions make only public objects: hence CKA_PRIVATE = false).
pub fn init_cloning_key(g: &Group) -> MemberResult<Vec<String>> {
    let login = g.login();
    let members = g.members();
    if members.iter().any(|m| !m.is_removed() && !m.is_up()) {
        diag!(
            Warn,
            "every member of {} must be up to provision cloning keys",
            g.label
        );
        return Err(Fault::Rv(CKR_DEVICE_ERROR));
    }
    let bound: Vec<_> = members
        .iter()
        .filter_map(|m| m.binding().map(|b| (m.serial.clone(), b)))
        .collect();
    let mut old = Vec::new();
    let mut new = Vec::new();
    for (serial, b) in &bound {
        let o = Opened::open(&b.instance, b.slot, &login, Some(b.open_sessions.clone()))?;
        let have = !b
            .instance
            .find_all(o.session, cloning_search(None))?
            .is_empty();
        let m = Provisioned {
            serial: serial.as_str(),
            inst: b.instance.as_ref(),
            o,
            pair: None,
        };
        if have {
            old.push(m)
        } else {
            new.push(m)
        }
    }
    if new.is_empty() {
        return Err(Fault::Rv(RV_CLONING_KEY_EXISTS));
    }
    let mut made: Vec<(&Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)> = Vec::new();
    let result = if old.is_empty() {
        provision(&mut new, &mut made)
    } else {
        extend(g, &old, &mut new, &mut made)
    };
    match result {
        Ok(()) => {
            if !old.is_empty() {
                owe_everything(&old, &new);
            }
            Ok(new.iter().map(|m| m.serial.to_string()).collect())
        }
        Err(rv) => {
            for (inst, session, h) in made {
                let _ = inst.destroy_object(session, h);
            }
            Err(rv)
        }
    }
}

/// A member being provisioned (or provisioning another): its session, and, once generated, its
/// receiving key pair (public handle, private handle, modulus, exponent).
struct Provisioned<'a> {
    serial: &'a str,
    inst: &'a Instance,
    o: Opened,
    pair: Option<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, Vec<u8>, Vec<u8>)>,
}

type Made<'a> = Vec<(&'a Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)>;

/// The attributes every cloning object has.
fn cloning(class: CK_OBJECT_CLASS, id: &[u8]) -> Vec<Attr> {
    vec![
        Attr::ulong(CKA_CLASS, class),
        Attr::bool(CKA_TOKEN, true),
        Attr::bool(CKA_PRIVATE, false),
        Attr::bool(CKA_MODIFIABLE, false),
        Attr::new(CKA_LABEL, CLONING_LABEL.to_vec()),
        Attr::new(CKA_ID, id.to_vec()),
    ]
}

/// A receiving member's public key: for wrapping keys to it, nothing else.
fn wrapping_rsa(id: &[u8]) -> Vec<Attr> {
    let mut t = cloning(CKO_PUBLIC_KEY, id);
    t.extend([
        Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
        Attr::bool(CKA_WRAP, true),
        Attr::bool(CKA_ENCRYPT, false),
        Attr::bool(CKA_VERIFY, false),
    ]);
    t
}

/// The AES cloning key's attributes, without its value.
fn aes_key() -> Vec<Attr> {
    let mut t = cloning(CKO_SECRET_KEY, CLONING_LABEL);
    t.extend([
        Attr::ulong(CKA_KEY_TYPE, CKK_AES),
        Attr::bool(CKA_TRUSTED, true),
        Attr::bool(CKA_WRAP, true),
        Attr::bool(CKA_UNWRAP, true),
        Attr::bool(CKA_ENCRYPT, false),
        Attr::bool(CKA_DECRYPT, false),
        Attr::bool(CKA_SIGN, false),
        Attr::bool(CKA_VERIFY, false),
        Attr::bool(CKA_DERIVE, false),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, true),
        Attr::bool(CKA_WRAP_WITH_TRUSTED, true),
    ]);
    t
}

/// Generates `m`'s receiving key pair on `m`.
fn receiving_pair<'a>(m: &mut Provisioned<'a>, made: &mut Made<'a>) -> MemberResult<()> {
    let (inst, session, id) = (m.inst, m.o.session, m.serial.as_bytes());
    let mut public = wrapping_rsa(id);
    public.extend([
        Attr::ulong(CKA_MODULUS_BITS, 3072),
        Attr::new(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]),
    ]);
    let mut private = cloning(CKO_PRIVATE_KEY, id);
    private.extend([
        Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
        Attr::bool(CKA_UNWRAP, true),
        Attr::bool(CKA_DECRYPT, false),
        Attr::bool(CKA_SIGN, false),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, false),
    ]);
    let mech = OwnedMechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN);
    let (pu, pr) = inst
        .with_timeout(KEYGEN_TIMEOUT)
        .generate_key_pair(session, mech, public, private)?;
    made.push((inst, session, pu));
    made.push((inst, session, pr));
    let (modulus, exponent) = public_values(inst, session, pu)?;
    m.pair = Some((pu, pr, modulus, exponent));
    Ok(())
}

fn public_values(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    h: CK_OBJECT_HANDLE,
) -> MemberResult<(Vec<u8>, Vec<u8>)> {
    let mut v = inst.read_attributes(session, h, vec![CKA_MODULUS, CKA_PUBLIC_EXPONENT])?;
    match (v.pop().flatten(), v.pop().flatten()) {
        (Some(exponent), Some(modulus)) => Ok((modulus, exponent)),
        _ => Err(Fault::Rv(CKR_FUNCTION_FAILED)),
    }
}

/// Puts the receiving public key of member `id` on `to`, trusted; returns its handle.
fn trust<'a>(
    to: &Provisioned<'a>,
    id: &[u8],
    modulus: &[u8],
    exponent: &[u8],
    made: &mut Made<'a>,
) -> MemberResult<CK_OBJECT_HANDLE> {
    let mut t = wrapping_rsa(id);
    t.extend([
        Attr::new(CKA_MODULUS, modulus.to_vec()),
        Attr::new(CKA_PUBLIC_EXPONENT, exponent.to_vec()),
        Attr::bool(CKA_TRUSTED, true),
    ]);
    let h = to.inst.create_object(to.o.session, t)?;
    made.push((to.inst, to.o.session, h));
    Ok(h)
}

/// The group from scratch: every member in `all`.
fn provision<'a>(all: &mut [Provisioned<'a>], made: &mut Made<'a>) -> MemberResult<()> {
    let mut key = Zeroizing::new(vec![0u8; 32]);
    fill_random(&mut key)?;
    for m in all.iter() {
        let mut t = aes_key();
        t.push(Attr::new(CKA_VALUE, key.to_vec()));
        let h = m.inst.create_object_zeroized(m.o.session, t)?;
        made.push((m.inst, m.o.session, h));
    }
    key.zeroize();
    for i in 0..all.len() {
        receiving_pair(&mut all[i], made)?;
        let (_, _, modulus, exponent) = all[i].pair.clone().unwrap_or_default();
        for (j, other) in all.iter().enumerate() {
            if j != i {
                trust(other, all[i].serial.as_bytes(), &modulus, &exponent, made)?;
            }
        }
    }
    Ok(())
}

/// Members added to a provisioned group (`new`) get their cloning objects from the others
/// (`old`): their own receiving pairs, the others' trusted receiving keys, and the AES cloning
/// key wrapped to them under their receiving key.
fn extend<'a>(
    g: &Group,
    old: &[Provisioned<'a>],
    new: &mut [Provisioned<'a>],
    made: &mut Made<'a>,
) -> MemberResult<()> {
    // The AES key comes from the first member that has it.
    let mut aes_source = None;
    for m in old {
        let found = m.inst.find_all(
            m.o.session,
            cloning_search(Some((CKO_SECRET_KEY, CLONING_LABEL))),
        )?;
        if let Some(h) = found.first() {
            aes_source = Some((m, *h));
            break;
        }
    }
    let Some((source, aes)) = aes_source else {
        diag!(
            Warn,
            "group {}: no member holds the AES cloning key: remove every {} object and \
             provision the group again",
            g.label,
            String::from_utf8_lossy(CLONING_LABEL)
        );
        return Err(Fault::Rv(CKR_FUNCTION_FAILED));
    };
    for i in 0..new.len() {
        receiving_pair(&mut new[i], made)?;
        let (_, pr, modulus, exponent) = new[i].pair.clone().unwrap_or_default();
        let id = new[i].serial.as_bytes();
        let mut on_source = None;
        for other in old.iter().chain(
            new.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, m)| m),
        ) {
            let h = trust(other, id, &modulus, &exponent, made)?;
            if std::ptr::eq(other, source) {
                on_source = Some(h);
            }
        }
        // The AES key, wrapped on the source under the new member's key, unwrapped there.
        let wrapping = on_source.ok_or(Fault::Rv(CKR_FUNCTION_FAILED))?;
        let mech = OwnedMechanism::rsa_oaep_sha1();
        let s = source.o.session;
        let size = source.inst.wrap_key(s, mech.clone(), wrapping, aes, None)?;
        let out = match size.rv {
            CKR_OK => source
                .inst
                .wrap_key(s, mech.clone(), wrapping, aes, Some(size.len))?,
            rv => {
                if rv == CKR_KEY_UNEXTRACTABLE || rv == CKR_KEY_NOT_WRAPPABLE {
                    diag!(
                        Warn,
                        "group {}: the AES cloning key on {} cannot be wrapped ({}): it was made \
                         before cloning keys could reach members added later; remove every {} \
                         object on every member and provision the group again",
                        g.label,
                        source.serial,
                        crate::rv::rv_name(rv),
                        String::from_utf8_lossy(CLONING_LABEL)
                    );
                }
                return Err(Fault::Rv(rv));
            }
        };
        let wrapped = match (out.rv, out.data) {
            (CKR_OK, Some(d)) => Input::new(d),
            (rv, _) => return Err(Fault::Rv(if rv == CKR_OK { CKR_GENERAL_ERROR } else { rv })),
        };
        let n = &new[i];
        // SoftHSM applies an unwrap template in attribute-type order and refuses every
        // attribute after CKA_MODIFIABLE = false (CKA_WRAP_WITH_TRUSTED among them) with
        // CKR_ATTRIBUTE_READ_ONLY: the unwrapped copy stays modifiable (CKA_TRUSTED,
        // CKA_WRAP_WITH_TRUSTED and CKA_EXTRACTABLE can only move the safe way anyway).
        let template: Vec<Attr> = aes_key()
            .into_iter()
            .filter(|a| a.kind != CKA_MODIFIABLE)
            .collect();
        let h = n
            .inst
            .unwrap_key(n.o.session, mech, pr, wrapped, template)?;
        made.push((n.inst, n.o.session, h));
    }
    // The receiving keys of the members that had them, trusted on the new ones.
    for m in old {
        let id = m.serial.as_bytes();
        let found = m
            .inst
            .find_all(m.o.session, cloning_search(Some((CKO_PUBLIC_KEY, id))))?;
        let Some(&h) = found.first() else {
            diag!(
                Warn,
                "group {}: {} has no receiving key of its own: secret keys travel to it only \
                 with CKM_AES_KEY_WRAP_PAD",
                g.label,
                m.serial
            );
            continue;
        };
        let (modulus, exponent) = public_values(m.inst, m.o.session, h)?;
        for n in new.iter() {
            trust(n, id, &modulus, &exponent, made)?;
        }
    }
    Ok(())
}

/// Each new member is owed every object the group holds: a record on every member, settled by
/// the next process that compares it with a user login.
fn owe_everything(old: &[Provisioned], new: &[Provisioned]) {
    for n in new {
        let r = Record::new(n.serial, Change::Created { login: true }, false);
        for m in old.iter().chain(new) {
            let _ = records::write(m.inst, m.o.session, &r);
        }
    }
}
