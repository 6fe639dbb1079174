//! Key management: generate, generate a pair, wrap, unwrap, derive.
//!
//! Every `unsafe` block below dereferences the caller's pointers through `args`, which checks
//! them for NULL and their lengths for sanity; beyond that PKCS#11 makes the caller promise
//! they are valid, which is the one SAFETY argument these blocks have.

use super::session;
use crate::ffi::args::*;
use crate::ffi::entry::entry;
use cryptoki_sys::*;

entry! {
    fn C_GenerateKey(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_key: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (m, t, ph) = unsafe { (mechanism(p_mech)?, template(p_template, count)?, out(ph_key)?) };
        *ph = s.generate_key(m, t)?;
        Ok(())
    }

    fn C_GenerateKeyPair(
        h: CK_SESSION_HANDLE,
        p_mech: *mut CK_MECHANISM,
        p_pub: *mut CK_ATTRIBUTE,
        pub_count: CK_ULONG,
        p_priv: *mut CK_ATTRIBUTE,
        priv_count: CK_ULONG,
        ph_pub: *mut CK_OBJECT_HANDLE,
        ph_priv: *mut CK_OBJECT_HANDLE,
    ) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (m, pu, pr, oh_pub, oh_priv) = unsafe {
            (mechanism(p_mech)?, template(p_pub, pub_count)?, template(p_priv, priv_count)?, out(ph_pub)?, out(ph_priv)?)
        };
        let (a, b) = s.generate_key_pair(m, pu, pr)?;
        *oh_pub = a;
        *oh_priv = b;
        Ok(())
    }

    fn C_WrapKey(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, wrapping: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (m, cap) = unsafe { (mechanism(p_mech)?, capacity(p_out, pul_out)?) };
        let o = s.wrap_key(m, wrapping, key, cap)?;
        // SAFETY: see the module docs.
        unsafe { deliver(o, p_out, pul_out) }
    }

    fn C_UnwrapKey(
        h: CK_SESSION_HANDLE,
        p_mech: *mut CK_MECHANISM,
        unwrapping: CK_OBJECT_HANDLE,
        p_wrapped: *mut CK_BYTE,
        wrapped_len: CK_ULONG,
        p_template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        ph_key: *mut CK_OBJECT_HANDLE,
    ) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (m, wrapped, t, ph) = unsafe {
            (mechanism(p_mech)?, data(p_wrapped, wrapped_len)?, template(p_template, count)?, out(ph_key)?)
        };
        *ph = s.unwrap_key(m, unwrapping, wrapped, t)?;
        Ok(())
    }

    fn C_DeriveKey(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, base: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_key: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (m, t, ph) = unsafe { (mechanism(p_mech)?, template(p_template, count)?, out(ph_key)?) };
        *ph = s.derive_key(m, base, t)?;
        Ok(())
    }
}
