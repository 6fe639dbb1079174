//! Provisioning a synchronized group's cloning keys (`p11ha synchronize -init-cloning-key`).

use super::copy::cloning_search;
use super::opened::Opened;
use super::policy::CLONING_LABEL;
use crate::diag::diag;
use crate::ha::group::Group;
use crate::mechanism::{Attr, OwnedMechanism};
use crate::provider::{Fault, Instance, MemberResult};
use cryptoki_sys::*;
use zeroize::{Zeroize, Zeroizing};

/// Bound on generating one receiving key pair at provisioning, whatever ReceiveTimeout says:
/// RSA-3072 generation takes seconds on many HSMs and has a long tail on loaded machines.
const KEYGEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// `p11ha_init_cloning_key` on a group whose members already hold a cloning key.
pub const RV_CLONING_KEY_EXISTS: CK_RV = CKR_FUNCTION_REJECTED;

/// Provisions the group's cloning keys on every up member and returns the number of members.
///
/// - The AES-256 cloning key, identical everywhere: 32 random bytes from the operating system,
///   held only in zeroized memory (`Carrier::AesKeyWrap`).
/// - On each member its own RSA-3072 receiving key pair, generated there (the private half never
///   exists anywhere else), and its public half copied to every other member as a trusted key
///   (`Carrier::RsaOaep`).
///
/// Refuses when any member already has a cloning object (nothing is ever overwritten) and
/// destroys what it made when a member refuses. Needs a login that may set CKA_TRUSTED (the SO
/// on SoftHSM, whose SO sessions make only public objects: hence CKA_PRIVATE = false).
pub fn init_cloning_key(g: &Group) -> MemberResult<u64> {
    let login = g.login();
    let members = g.members();
    if members.iter().any(|m| !m.is_removed() && !m.is_up()) {
        diag!(
            Warn,
            "every member of {} must be up to create the cloning key",
            g.label
        );
        return Err(Fault::Rv(CKR_DEVICE_ERROR));
    }
    let bound: Vec<_> = members
        .iter()
        .filter_map(|m| m.binding().map(|b| (m.serial.clone(), b)))
        .collect();
    let mut opened = Vec::new();
    for (serial, b) in &bound {
        let o = Opened::open(&b.instance, b.slot, &login, Some(b.open_sessions.clone()))?;
        if !b
            .instance
            .find_all(o.session, cloning_search(None))?
            .is_empty()
        {
            return Err(Fault::Rv(RV_CLONING_KEY_EXISTS));
        }
        opened.push((serial.as_str(), b.instance.as_ref(), o));
    }
    let mut made: Vec<(&Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)> = Vec::new();
    match provision(&opened, &mut made) {
        Ok(()) => Ok(opened.len() as u64),
        Err(rv) => {
            for (inst, session, h) in made {
                let _ = inst.destroy_object(session, h);
            }
            Err(rv)
        }
    }
}

/// The work of [`init_cloning_key`]; every object made is pushed on `made`.
fn provision<'a>(
    opened: &[(&str, &'a Instance, Opened)],
    made: &mut Vec<(&'a Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)>,
) -> MemberResult<()> {
    let cloning = |class: CK_OBJECT_CLASS, id: &[u8]| {
        vec![
            Attr::ulong(CKA_CLASS, class),
            Attr::bool(CKA_TOKEN, true),
            Attr::bool(CKA_PRIVATE, false),
            Attr::bool(CKA_MODIFIABLE, false),
            Attr::new(CKA_LABEL, CLONING_LABEL.to_vec()),
            Attr::new(CKA_ID, id.to_vec()),
        ]
    };
    // A receiving member's public key: for wrapping keys to it, nothing else.
    let wrapping_rsa = |id: &[u8]| {
        let mut t = cloning(CKO_PUBLIC_KEY, id);
        t.extend([
            Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
            Attr::bool(CKA_WRAP, true),
            Attr::bool(CKA_ENCRYPT, false),
            Attr::bool(CKA_VERIFY, false),
        ]);
        t
    };
    let mut key = Zeroizing::new(vec![0u8; 32]);
    fill_random(&mut key)?;
    for (_, inst, o) in opened {
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
            Attr::bool(CKA_EXTRACTABLE, false),
            Attr::new(CKA_VALUE, key.to_vec()),
        ]);
        made.push((inst, o.session, inst.create_object_zeroized(o.session, t)?));
    }
    key.zeroize();
    for (serial, inst, o) in opened {
        let id = serial.as_bytes();
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
            .generate_key_pair(o.session, mech, public, private)?;
        made.push((inst, o.session, pu));
        made.push((inst, o.session, pr));
        let mut v = inst.read_attributes(o.session, pu, vec![CKA_MODULUS, CKA_PUBLIC_EXPONENT])?;
        let (Some(exponent), Some(modulus)) = (v.pop().flatten(), v.pop().flatten()) else {
            return Err(Fault::Rv(CKR_FUNCTION_FAILED));
        };
        for (other, inst2, o2) in opened {
            if other == serial {
                continue;
            }
            let mut t = wrapping_rsa(id);
            t.extend([
                Attr::new(CKA_MODULUS, modulus.clone()),
                Attr::new(CKA_PUBLIC_EXPONENT, exponent.clone()),
                Attr::bool(CKA_TRUSTED, true),
            ]);
            made.push((inst2, o2.session, inst2.create_object(o2.session, t)?));
        }
    }
    Ok(())
}

fn fill_random(buf: &mut [u8]) -> MemberResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
                0,
            )
        };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Fault::Rv(CKR_FUNCTION_FAILED));
        }
        done += n as usize;
    }
    Ok(())
}
