//! The cryptographic operations: encryption, decryption, digest, sign and MAC, verify, the
//! dual-function updates, and the init/single/update/final shape they share.
//!
//! Every `unsafe` block below dereferences the caller's pointers through `args`, which checks
//! them for NULL and their lengths for sanity; beyond that PKCS#11 makes the caller promise
//! they are valid, which is the one SAFETY argument these blocks have.

use super::session;
use crate::ffi::args::*;
use crate::ffi::entry::entry;
use crate::ha::session::Session;
use crate::provider::OpKind;
use cryptoki_sys::*;

entry! {
    fn C_EncryptInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: see the module docs.
        unsafe { op_init(h, OpKind::Encrypt, p_mech, key) }
    }

    fn C_Encrypt(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { single(h, OpKind::Encrypt, p_data, len, p_out, pul_out) }
    }

    fn C_EncryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { update_out(h, OpKind::Encrypt, p_part, len, p_out, pul_out) }
    }

    fn C_EncryptFinal(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { finish(h, OpKind::Encrypt, p_out, pul_out) }
    }

    fn C_DecryptInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: see the module docs.
        unsafe { op_init(h, OpKind::Decrypt, p_mech, key) }
    }

    fn C_Decrypt(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { single(h, OpKind::Decrypt, p_data, len, p_out, pul_out) }
    }

    fn C_DecryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { update_out(h, OpKind::Decrypt, p_part, len, p_out, pul_out) }
    }

    fn C_DecryptFinal(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { finish(h, OpKind::Decrypt, p_out, pul_out) }
    }

    fn C_DigestInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM) {
        // SAFETY: see the module docs.
        unsafe { op_init(h, OpKind::Digest, p_mech, 0) }
    }

    fn C_Digest(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { single(h, OpKind::Digest, p_data, len, p_out, pul_out) }
    }

    fn C_DigestUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { update(h, OpKind::Digest, p_part, len) }
    }

    fn C_DigestKey(h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) {
        session(h)?.digest_key(key)
    }

    fn C_DigestFinal(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { finish(h, OpKind::Digest, p_out, pul_out) }
    }

    fn C_SignInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: see the module docs.
        unsafe { op_init(h, OpKind::Sign, p_mech, key) }
    }

    fn C_Sign(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_sig: *mut CK_BYTE, pul_sig: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { single(h, OpKind::Sign, p_data, len, p_sig, pul_sig) }
    }

    fn C_SignUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { update(h, OpKind::Sign, p_part, len) }
    }

    fn C_SignFinal(h: CK_SESSION_HANDLE, p_sig: *mut CK_BYTE, pul_sig: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { finish(h, OpKind::Sign, p_sig, pul_sig) }
    }

    fn C_SignRecoverInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: see the module docs.
        unsafe { op_init(h, OpKind::SignRecover, p_mech, key) }
    }

    fn C_SignRecover(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_sig: *mut CK_BYTE, pul_sig: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { single(h, OpKind::SignRecover, p_data, len, p_sig, pul_sig) }
    }

    fn C_VerifyInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: see the module docs.
        unsafe { op_init(h, OpKind::Verify, p_mech, key) }
    }

    fn C_Verify(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_sig: *mut CK_BYTE, sig_len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let args = unsafe { data(p_data, len).and_then(|d| Ok((d, data(p_sig, sig_len)?))) };
        let (d, sig) = ended_on_error(&s, OpKind::Verify, args)?;
        s.verify(d, sig)
    }

    fn C_VerifyUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { update(h, OpKind::Verify, p_part, len) }
    }

    fn C_VerifyFinal(h: CK_SESSION_HANDLE, p_sig: *mut CK_BYTE, sig_len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let sig = ended_on_error(&s, OpKind::Verify, unsafe { data(p_sig, sig_len) })?;
        s.verify_final(sig)
    }

    fn C_VerifyRecoverInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: see the module docs.
        unsafe { op_init(h, OpKind::VerifyRecover, p_mech, key) }
    }

    fn C_VerifyRecover(h: CK_SESSION_HANDLE, p_sig: *mut CK_BYTE, len: CK_ULONG, p_data: *mut CK_BYTE, pul_data: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { single(h, OpKind::VerifyRecover, p_sig, len, p_data, pul_data) }
    }

    // Dual-function updates are the two single updates; the output-producing half runs first
    // so that a length query or short buffer consumes nothing.
    fn C_DigestEncryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { dual(h, OpKind::Encrypt, OpKind::Digest, false, p_part, len, p_out, pul_out) }
    }

    fn C_DecryptDigestUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { dual(h, OpKind::Decrypt, OpKind::Digest, true, p_part, len, p_out, pul_out) }
    }

    fn C_SignEncryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { dual(h, OpKind::Encrypt, OpKind::Sign, false, p_part, len, p_out, pul_out) }
    }

    fn C_DecryptVerifyUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        // SAFETY: see the module docs.
        unsafe { dual(h, OpKind::Decrypt, OpKind::Verify, true, p_part, len, p_out, pul_out) }
    }
}

/// An argument refused before any member saw the call ends the operation, as any error but
/// CKR_BUFFER_TOO_SMALL does (PKCS#11).
fn ended_on_error<T>(s: &Session, kind: OpKind, args: Rv<T>) -> Rv<T> {
    if args.is_err() {
        s.end_op(kind);
    }
    args
}

/// # Safety
/// `p_mech` as for every entry point (module docs).
unsafe fn op_init(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Rv<()> {
    let s = session(h)?;
    // SAFETY: forwarded from the caller's promise.
    let m = unsafe { mechanism(p_mech) }?;
    s.op_init(kind, Some(m), key)
}

/// # Safety
/// The pointers as for every entry point (module docs).
unsafe fn single(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_in: *mut u8,
    len: CK_ULONG,
    p_out: *mut u8,
    pul_out: *mut CK_ULONG,
) -> Rv<()> {
    let s = session(h)?;
    // SAFETY: forwarded from the caller's promise.
    let (d, cap) = ended_on_error(&s, kind, unsafe {
        data(p_in, len).and_then(|d| Ok((d, capacity(p_out, pul_out)?)))
    })?;
    let o = s.op_single(kind, d, cap)?;
    // SAFETY: forwarded from the caller's promise.
    unsafe { deliver(o, p_out, pul_out) }
}

/// # Safety
/// The pointers as for every entry point (module docs).
unsafe fn update(h: CK_SESSION_HANDLE, kind: OpKind, p_in: *mut u8, len: CK_ULONG) -> Rv<()> {
    let s = session(h)?;
    // SAFETY: forwarded from the caller's promise.
    let d = ended_on_error(&s, kind, unsafe { data(p_in, len) })?;
    let o = s.op_update(kind, d, None)?;
    if o.rv == CKR_OK {
        Ok(())
    } else {
        Err(o.rv)
    }
}

/// # Safety
/// The pointers as for every entry point (module docs).
unsafe fn update_out(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_in: *mut u8,
    len: CK_ULONG,
    p_out: *mut u8,
    pul_out: *mut CK_ULONG,
) -> Rv<()> {
    let s = session(h)?;
    // SAFETY: forwarded from the caller's promise.
    let (d, cap) = ended_on_error(&s, kind, unsafe {
        data(p_in, len).and_then(|d| Ok((d, capacity(p_out, pul_out)?)))
    })?;
    let o = s.op_update(kind, d, cap)?;
    // SAFETY: forwarded from the caller's promise.
    unsafe { deliver(o, p_out, pul_out) }
}

/// # Safety
/// The pointers as for every entry point (module docs).
unsafe fn finish(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_out: *mut u8,
    pul_out: *mut CK_ULONG,
) -> Rv<()> {
    let s = session(h)?;
    // SAFETY: forwarded from the caller's promise.
    let cap = ended_on_error(&s, kind, unsafe { capacity(p_out, pul_out) })?;
    let o = s.op_final(kind, cap)?;
    // SAFETY: forwarded from the caller's promise.
    unsafe { deliver(o, p_out, pul_out) }
}

/// A dual-function update: `first` produces the output; `second` is fed the plaintext (the
/// input, or with `feed_output` the output of a decryption).
///
/// # Safety
/// The pointers as for every entry point (module docs).
#[allow(clippy::too_many_arguments)]
unsafe fn dual(
    h: CK_SESSION_HANDLE,
    first: OpKind,
    second: OpKind,
    feed_output: bool,
    p_in: *mut u8,
    len: CK_ULONG,
    p_out: *mut u8,
    pul_out: *mut CK_ULONG,
) -> Rv<()> {
    let s = session(h)?;
    // SAFETY: forwarded from the caller's promise.
    let (d, cap) = unsafe { (data(p_in, len)?, capacity(p_out, pul_out)?) };
    let o = s.op_update(first, d.clone(), cap)?;
    if o.rv == CKR_OK && cap.is_some() {
        let plain = if feed_output {
            crate::provider::Input::new(o.data.clone().unwrap_or_default())
        } else {
            d
        };
        let fed = s.op_update(second, plain, None)?;
        if fed.rv != CKR_OK {
            return Err(fed.rv);
        }
    }
    // SAFETY: forwarded from the caller's promise.
    unsafe { deliver(o, p_out, pul_out) }
}
