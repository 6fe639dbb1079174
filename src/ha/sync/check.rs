//! `p11ha synchronize -check`: which key classes can travel between which members, found by
//! carrying throw-away session keys the way token keys travel (`copy::carry_key`), before an
//! application's key generation finds out.

use super::copy::{copy_via, End, Side};
use super::opened::Opened;
use crate::ha::group::Group;
use crate::mechanism::{Attr, OwnedMechanism};
use crate::provider::{Fault, Instance, MemberResult};
use crate::rv::rv_name;
use cryptoki_sys::*;

/// DER of the OID of NIST P-256 (the probe's EC key).
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What can travel from one member to another.
#[derive(Debug, Clone, PartialEq)]
pub struct PairCheck {
    pub from: String,
    pub to: String,
    /// The carrier of secret keys, or why there is none.
    pub secret: Result<&'static str, String>,
    /// The carrier of private keys, or why there is none.
    pub private: Result<&'static str, String>,
}

/// Every ordered pair of up members. Data objects, certificates and public keys always travel
/// (by value); this says how secret and private keys do.
pub fn check(g: &Group) -> MemberResult<Vec<PairCheck>> {
    let login = g.login();
    let mut opened = Vec::new();
    for m in g.members().iter() {
        if let Some(b) = m.binding() {
            let o = Opened::open(&b.instance, b.slot, &login, Some(b.open_sessions.clone()))?;
            opened.push((m.serial.clone(), o));
        }
    }
    let mut out = Vec::new();
    for (a, (sa, oa)) in opened.iter().enumerate() {
        for (z, (sz, oz)) in opened.iter().enumerate() {
            if a == z {
                continue;
            }
            let secret = probe(&oa.inst, oa.session, sa, &oz.inst, oz.session, sz, false)?;
            let private = probe(&oa.inst, oa.session, sa, &oz.inst, oz.session, sz, true)?;
            out.push(PairCheck {
                from: sa.clone(),
                to: sz.clone(),
                secret,
                private,
            });
        }
    }
    Ok(out)
}

/// Makes a session key on `from` (an AES key, or an EC key pair for `private`) and carries it
/// to `to`; everything made is destroyed again. A member failing on its connection is an error.
fn probe(
    fi: &Instance,
    fs: CK_SESSION_HANDLE,
    from_serial: &str,
    ti: &Instance,
    ts: CK_SESSION_HANDLE,
    to_serial: &str,
    private: bool,
) -> MemberResult<Result<&'static str, String>> {
    let session_key = |extra: &[Attr]| {
        let mut t = vec![
            Attr::bool(CKA_TOKEN, false),
            Attr::bool(CKA_PRIVATE, false),
            Attr::bool(CKA_SENSITIVE, true),
            Attr::bool(CKA_EXTRACTABLE, true),
        ];
        t.extend_from_slice(extra);
        t
    };
    let made: Vec<CK_OBJECT_HANDLE> = if private {
        let public = vec![
            Attr::bool(CKA_TOKEN, false),
            Attr::new(CKA_EC_PARAMS, P256.to_vec()),
            Attr::bool(CKA_VERIFY, true),
        ];
        match fi.generate_key_pair(
            fs,
            OwnedMechanism::new(CKM_EC_KEY_PAIR_GEN),
            public,
            session_key(&[Attr::bool(CKA_SIGN, true)]),
        ) {
            Ok((pu, pr)) => vec![pr, pu],
            Err(f) if f.fails_member() => return Err(f),
            Err(f) => {
                return Ok(Err(format!(
                    "{from_serial} made no EC key: {}",
                    rv_name(f.rv())
                )))
            }
        }
    } else {
        match fi.generate_key(
            fs,
            OwnedMechanism::new(CKM_AES_KEY_GEN),
            session_key(&[
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::bool(CKA_ENCRYPT, true),
            ]),
        ) {
            Ok(k) => vec![k],
            Err(f) if f.fails_member() => return Err(f),
            Err(f) => {
                return Ok(Err(format!(
                    "{from_serial} made no AES key: {}",
                    rv_name(f.rv())
                )))
            }
        }
    };
    let mut from = End::new(fi, fs, from_serial);
    let mut to = End::new(ti, ts, to_serial);
    let result = copy_via(&mut from, made[0], &mut to);
    for h in &made {
        let _ = fi.destroy_object(fs, *h);
    }
    Ok(match result {
        Ok((h, carrier)) => {
            let _ = ti.destroy_object(ts, h);
            Ok(carrier.map_or("by value", |c| c.name()))
        }
        Err((_, f)) if f.fails_member() => return Err(f),
        Err((side, Fault::Rv(CKR_MECHANISM_INVALID))) => {
            let (end, serial) = match side {
                Side::Source => (&from, from_serial),
                Side::Target => (&to, to_serial),
            };
            let refused = end
                .refused_carrier()
                .or(from.refused_carrier())
                .unwrap_or("every carrier");
            Err(format!(
                "{refused} refused by {serial} or its transport (CKR_MECHANISM_INVALID)"
            ))
        }
        Err((side, f)) => Err(format!(
            "{} answered {}{}",
            if side == Side::Source {
                from_serial
            } else {
                to_serial
            },
            rv_name(f.rv()),
            super::copy::hint(f.rv())
        )),
    })
}
