//! The PKCS#11 functions: unpack C arguments (`args`), call the HA core, pack results.
//! No HA logic lives here.

use super::args::*;
use super::entry::{entry, ha, LIBRARY};
use crate::bounded;
use crate::ha::group::{crate_version, intersect_mechanism_info, pad};
use crate::ha::session::Session;
use crate::ha::Ha;
use crate::provider::OpKind;
use cryptoki_sys::*;
use std::ffi::c_void;
use std::sync::Arc;

fn session(h: CK_SESSION_HANDLE) -> Rv<Arc<Session>> {
    let ha = ha()?;
    if bounded::is_inline() {
        // No management thread: recovery polls ride on application calls.
        crate::ha::mgmt::poll_if_due(&ha);
    }
    ha.session(h)
}

entry! {
    fn C_Initialize(p_init_args: *mut c_void) {
        let args = (p_init_args as *const CK_C_INITIALIZE_ARGS).as_ref();
        if let Some(a) = args {
            if !a.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let some = [a.CreateMutex.is_some(), a.DestroyMutex.is_some(), a.LockMutex.is_some(), a.UnlockMutex.is_some()];
            if some.iter().any(|b| *b) && !some.iter().all(|b| *b) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // p11ha locks with its own primitives; an application that insists on its own gets a no.
            if some[0] && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(CKR_CANT_LOCK);
            }
        }
        let no_threads = args.is_some_and(|a| a.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS != 0);
        let mut lib = LIBRARY.write();
        if lib.is_some() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        super::entry::watch_forks();
        bounded::set_inline(no_threads);
        *lib = Some(super::init::start()?);
        Ok(())
    }

    fn C_Finalize(p_reserved: *mut c_void) {
        if !p_reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let lib = LIBRARY.write().take().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
        super::init::stop(&lib);
        Ok(())
    }

    fn C_GetInfo(p_info: *mut CK_INFO) {
        ha()?;
        let info = out(p_info)?;
        *info = CK_INFO {
            cryptokiVersion: CK_VERSION { major: 2, minor: 40 },
            manufacturerID: pad("p11ha"),
            flags: 0,
            libraryDescription: pad("p11ha high-availability PKCS#11"),
            libraryVersion: crate_version(),
        };
        Ok(())
    }

    fn C_GetSlotList(_token_present: CK_BBOOL, p_slot_list: *mut CK_SLOT_ID, pul_count: *mut CK_ULONG) {
        // Virtual slots always hold their token, so the list is the same either way.
        deliver_list(&ha()?.slot_ids(), p_slot_list, pul_count)
    }

    fn C_GetSlotInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_SLOT_INFO) {
        let ha = ha()?;
        *out(p_info)? = ha.group(slot_id)?.slot_info();
        Ok(())
    }

    fn C_GetTokenInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_TOKEN_INFO) {
        let ha = ha()?;
        *out(p_info)? = ha.group(slot_id)?.token_info();
        Ok(())
    }

    fn C_GetMechanismList(slot_id: CK_SLOT_ID, p_list: *mut CK_MECHANISM_TYPE, pul_count: *mut CK_ULONG) {
        let ha = ha()?;
        deliver_list(&ha.group(slot_id)?.mechanisms(), p_list, pul_count)
    }

    fn C_GetMechanismInfo(slot_id: CK_SLOT_ID, mech: CK_MECHANISM_TYPE, p_info: *mut CK_MECHANISM_INFO) {
        let ha = ha()?;
        let group = ha.group(slot_id)?;
        let info = out(p_info)?;
        if !group.mechanisms().contains(&mech) {
            return Err(if group.any_up() { CKR_MECHANISM_INVALID } else { CKR_DEVICE_ERROR });
        }
        let infos: Vec<_> = group
            .members()
            .iter()
            .filter_map(|m| m.binding())
            .filter_map(|b| b.instance.mechanism_info(b.slot, mech).ok())
            .collect();
        *info = intersect_mechanism_info(&infos).ok_or(CKR_DEVICE_ERROR)?;
        Ok(())
    }

    fn C_InitToken(slot_id: CK_SLOT_ID, _pin: *mut CK_UTF8CHAR, _pin_len: CK_ULONG, _label: *mut CK_UTF8CHAR) {
        // A virtual token is made of initialized members; members are initialized one by one.
        ha()?.group(slot_id)?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    }

    fn C_InitPIN(h: CK_SESSION_HANDLE, p_pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        let s = session(h)?;
        let p = pin(p_pin, pin_len)?.ok_or(CKR_ARGUMENTS_BAD)?;
        s.init_pin(p)
    }

    fn C_SetPIN(h: CK_SESSION_HANDLE, p_old: *mut CK_UTF8CHAR, old_len: CK_ULONG, p_new: *mut CK_UTF8CHAR, new_len: CK_ULONG) {
        let s = session(h)?;
        let old = pin(p_old, old_len)?.ok_or(CKR_ARGUMENTS_BAD)?;
        let new = pin(p_new, new_len)?.ok_or(CKR_ARGUMENTS_BAD)?;
        s.set_pin(old, new)
    }

    fn C_OpenSession(slot_id: CK_SLOT_ID, flags: CK_FLAGS, _app: *mut c_void, _notify: CK_NOTIFY, ph_session: *mut CK_SESSION_HANDLE) {
        let ha = ha()?;
        let ph = out(ph_session)?;
        *ph = ha.open_session(slot_id, flags)?;
        Ok(())
    }

    fn C_CloseSession(h: CK_SESSION_HANDLE) {
        ha()?.close_session(h)
    }

    fn C_CloseAllSessions(slot_id: CK_SLOT_ID) {
        ha()?.close_all_sessions(slot_id)
    }

    fn C_GetSessionInfo(h: CK_SESSION_HANDLE, p_info: *mut CK_SESSION_INFO) {
        let s = session(h)?;
        *out(p_info)? = CK_SESSION_INFO { slotID: s.group.slot_id, state: s.state(), flags: s.flags, ulDeviceError: 0 };
        Ok(())
    }

    fn C_GetOperationState(h: CK_SESSION_HANDLE, _state: *mut CK_BYTE, _len: *mut CK_ULONG) {
        // Operation state is one member's internal format and cannot move to another member.
        session(h)?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    }

    fn C_SetOperationState(h: CK_SESSION_HANDLE, _state: *mut CK_BYTE, _len: CK_ULONG, _enc: CK_OBJECT_HANDLE, _auth: CK_OBJECT_HANDLE) {
        session(h)?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    }

    fn C_Login(h: CK_SESSION_HANDLE, user: CK_USER_TYPE, p_pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        let s = session(h)?;
        if !matches!(user, CKU_USER | CKU_SO | CKU_CONTEXT_SPECIFIC) {
            return Err(CKR_USER_TYPE_INVALID);
        }
        s.login(user, pin(p_pin, pin_len)?)
    }

    fn C_Logout(h: CK_SESSION_HANDLE) {
        session(h)?.logout()
    }

    fn C_CreateObject(h: CK_SESSION_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_object: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        let t = template(p_template, count)?;
        let ph = out(ph_object)?;
        *ph = s.create_object(t)?;
        Ok(())
    }

    fn C_CopyObject(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_new: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        let t = template(p_template, count)?;
        let ph = out(ph_new)?;
        *ph = s.copy_object(obj, t)?;
        Ok(())
    }

    fn C_DestroyObject(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) {
        session(h)?.destroy_object(obj)
    }

    fn C_GetObjectSize(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, pul_size: *mut CK_ULONG) {
        let s = session(h)?;
        let p = out(pul_size)?;
        *p = s.object_size(obj)?;
        Ok(())
    }

    fn C_GetAttributeValue(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG) {
        let s = session(h)?;
        let attrs = template_mut(p_template, count)?;
        let query = attrs.iter().map(|a| (a.type_, (!a.pValue.is_null()).then_some(a.ulValueLen))).collect();
        let (rv, values) = s.get_attributes(obj, query)?;
        for (a, (len, value)) in attrs.iter_mut().zip(values) {
            if let Some(v) = value {
                if !v.is_empty() {
                    std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len());
                }
            }
            a.ulValueLen = len;
        }
        if rv == CKR_OK { Ok(()) } else { Err(rv) }
    }

    fn C_SetAttributeValue(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG) {
        let s = session(h)?;
        s.set_attributes(obj, template(p_template, count)?)
    }

    fn C_FindObjectsInit(h: CK_SESSION_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG) {
        let s = session(h)?;
        s.find_init(template(p_template, count)?)
    }

    fn C_FindObjects(h: CK_SESSION_HANDLE, ph_object: *mut CK_OBJECT_HANDLE, max: CK_ULONG, pul_count: *mut CK_ULONG) {
        let s = session(h)?;
        let count = out(pul_count)?;
        if ph_object.is_null() && max > 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let found = s.find_next(usize::try_from(max).map_err(|_| CKR_ARGUMENTS_BAD)?)?;
        if !found.is_empty() {
            std::ptr::copy_nonoverlapping(found.as_ptr(), ph_object, found.len());
        }
        *count = found.len() as CK_ULONG;
        Ok(())
    }

    fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) {
        session(h)?.find_final()
    }

    fn C_EncryptInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        op_init(h, OpKind::Encrypt, p_mech, key)
    }

    fn C_Encrypt(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        single(h, OpKind::Encrypt, p_data, len, p_out, pul_out)
    }

    fn C_EncryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        update_out(h, OpKind::Encrypt, p_part, len, p_out, pul_out)
    }

    fn C_EncryptFinal(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        finish(h, OpKind::Encrypt, p_out, pul_out)
    }

    fn C_DecryptInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        op_init(h, OpKind::Decrypt, p_mech, key)
    }

    fn C_Decrypt(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        single(h, OpKind::Decrypt, p_data, len, p_out, pul_out)
    }

    fn C_DecryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        update_out(h, OpKind::Decrypt, p_part, len, p_out, pul_out)
    }

    fn C_DecryptFinal(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        finish(h, OpKind::Decrypt, p_out, pul_out)
    }

    fn C_DigestInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM) {
        op_init(h, OpKind::Digest, p_mech, 0)
    }

    fn C_Digest(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        single(h, OpKind::Digest, p_data, len, p_out, pul_out)
    }

    fn C_DigestUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG) {
        update(h, OpKind::Digest, p_part, len)
    }

    fn C_DigestKey(h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) {
        session(h)?.digest_key(key)
    }

    fn C_DigestFinal(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        finish(h, OpKind::Digest, p_out, pul_out)
    }

    fn C_SignInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        op_init(h, OpKind::Sign, p_mech, key)
    }

    fn C_Sign(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_sig: *mut CK_BYTE, pul_sig: *mut CK_ULONG) {
        single(h, OpKind::Sign, p_data, len, p_sig, pul_sig)
    }

    fn C_SignUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG) {
        update(h, OpKind::Sign, p_part, len)
    }

    fn C_SignFinal(h: CK_SESSION_HANDLE, p_sig: *mut CK_BYTE, pul_sig: *mut CK_ULONG) {
        finish(h, OpKind::Sign, p_sig, pul_sig)
    }

    fn C_SignRecoverInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        op_init(h, OpKind::SignRecover, p_mech, key)
    }

    fn C_SignRecover(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_sig: *mut CK_BYTE, pul_sig: *mut CK_ULONG) {
        single(h, OpKind::SignRecover, p_data, len, p_sig, pul_sig)
    }

    fn C_VerifyInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        op_init(h, OpKind::Verify, p_mech, key)
    }

    fn C_Verify(h: CK_SESSION_HANDLE, p_data: *mut CK_BYTE, len: CK_ULONG, p_sig: *mut CK_BYTE, sig_len: CK_ULONG) {
        let s = session(h)?;
        s.verify(bytes(p_data, len)?.to_vec(), bytes(p_sig, sig_len)?.to_vec())
    }

    fn C_VerifyUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG) {
        update(h, OpKind::Verify, p_part, len)
    }

    fn C_VerifyFinal(h: CK_SESSION_HANDLE, p_sig: *mut CK_BYTE, sig_len: CK_ULONG) {
        let s = session(h)?;
        s.verify_final(bytes(p_sig, sig_len)?.to_vec())
    }

    fn C_VerifyRecoverInit(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        op_init(h, OpKind::VerifyRecover, p_mech, key)
    }

    fn C_VerifyRecover(h: CK_SESSION_HANDLE, p_sig: *mut CK_BYTE, len: CK_ULONG, p_data: *mut CK_BYTE, pul_data: *mut CK_ULONG) {
        single(h, OpKind::VerifyRecover, p_sig, len, p_data, pul_data)
    }

    // Dual-function updates are the two single updates; the output-producing half runs first
    // so that a length query or short buffer consumes nothing.
    fn C_DigestEncryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        dual(h, OpKind::Encrypt, OpKind::Digest, false, p_part, len, p_out, pul_out)
    }

    fn C_DecryptDigestUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        dual(h, OpKind::Decrypt, OpKind::Digest, true, p_part, len, p_out, pul_out)
    }

    fn C_SignEncryptUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        dual(h, OpKind::Encrypt, OpKind::Sign, false, p_part, len, p_out, pul_out)
    }

    fn C_DecryptVerifyUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, len: CK_ULONG, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        dual(h, OpKind::Decrypt, OpKind::Verify, true, p_part, len, p_out, pul_out)
    }

    fn C_GenerateKey(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_key: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        let (m, t) = (mechanism(p_mech)?, template(p_template, count)?);
        let ph = out(ph_key)?;
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
        let m = mechanism(p_mech)?;
        let (pu, pr) = (template(p_pub, pub_count)?, template(p_priv, priv_count)?);
        let (oh_pub, oh_priv) = (out(ph_pub)?, out(ph_priv)?);
        let (a, b) = s.generate_key_pair(m, pu, pr)?;
        *oh_pub = a;
        *oh_priv = b;
        Ok(())
    }

    fn C_WrapKey(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, wrapping: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, p_out: *mut CK_BYTE, pul_out: *mut CK_ULONG) {
        let s = session(h)?;
        let m = mechanism(p_mech)?;
        let cap = capacity(p_out, pul_out)?;
        deliver(s.wrap_key(m, wrapping, key, cap)?, p_out, pul_out)
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
        let m = mechanism(p_mech)?;
        let wrapped = bytes(p_wrapped, wrapped_len)?.to_vec();
        let t = template(p_template, count)?;
        let ph = out(ph_key)?;
        *ph = s.unwrap_key(m, unwrapping, wrapped, t)?;
        Ok(())
    }

    fn C_DeriveKey(h: CK_SESSION_HANDLE, p_mech: *mut CK_MECHANISM, base: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_key: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        let (m, t) = (mechanism(p_mech)?, template(p_template, count)?);
        let ph = out(ph_key)?;
        *ph = s.derive_key(m, base, t)?;
        Ok(())
    }

    fn C_SeedRandom(h: CK_SESSION_HANDLE, p_seed: *mut CK_BYTE, len: CK_ULONG) {
        let s = session(h)?;
        s.seed_random(bytes(p_seed, len)?.to_vec())
    }

    fn C_GenerateRandom(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, len: CK_ULONG) {
        let s = session(h)?;
        if p_out.is_null() && len > 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        deliver_exact(&s.generate_random(len)?, p_out)
    }

    fn C_GetFunctionStatus(h: CK_SESSION_HANDLE) {
        session(h)?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    }

    fn C_CancelFunction(h: CK_SESSION_HANDLE) {
        session(h)?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    }

    fn C_WaitForSlotEvent(flags: CK_FLAGS, p_slot: *mut CK_SLOT_ID, _reserved: *mut c_void) {
        ha()?;
        out(p_slot)?;
        // Virtual slots never change; a blocking wait would never return.
        if flags & CKF_DONT_BLOCK != 0 { Err(CKR_NO_EVENT) } else { Err(CKR_FUNCTION_NOT_SUPPORTED) }
    }
}

unsafe fn op_init(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Rv<()> {
    let s = session(h)?;
    s.op_init(kind, Some(mechanism(p_mech)?), key)
}

unsafe fn single(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_in: *mut u8,
    len: CK_ULONG,
    p_out: *mut u8,
    pul_out: *mut CK_ULONG,
) -> Rv<()> {
    let s = session(h)?;
    let data = bytes(p_in, len)?.to_vec();
    let cap = capacity(p_out, pul_out)?;
    deliver(s.op_single(kind, data, cap)?, p_out, pul_out)
}

unsafe fn update(h: CK_SESSION_HANDLE, kind: OpKind, p_in: *mut u8, len: CK_ULONG) -> Rv<()> {
    let s = session(h)?;
    let o = s.op_update(kind, bytes(p_in, len)?.to_vec(), None)?;
    if o.rv == CKR_OK {
        Ok(())
    } else {
        Err(o.rv)
    }
}

unsafe fn update_out(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_in: *mut u8,
    len: CK_ULONG,
    p_out: *mut u8,
    pul_out: *mut CK_ULONG,
) -> Rv<()> {
    let s = session(h)?;
    let data = bytes(p_in, len)?.to_vec();
    let cap = capacity(p_out, pul_out)?;
    deliver(s.op_update(kind, data, cap)?, p_out, pul_out)
}

unsafe fn finish(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p_out: *mut u8,
    pul_out: *mut CK_ULONG,
) -> Rv<()> {
    let s = session(h)?;
    let cap = capacity(p_out, pul_out)?;
    deliver(s.op_final(kind, cap)?, p_out, pul_out)
}

/// A dual-function update: `first` produces the output; `second` is fed the plaintext (the
/// input, or with `feed_output` the output of a decryption).
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
    let data = bytes(p_in, len)?.to_vec();
    let cap = capacity(p_out, pul_out)?;
    let o = s.op_update(first, data.clone(), cap)?;
    if o.rv == CKR_OK && cap.is_some() {
        let plain = if feed_output {
            o.data.clone().unwrap_or_default()
        } else {
            data
        };
        let fed = s.op_update(second, plain, None)?;
        if fed.rv != CKR_OK {
            return Err(fed.rv);
        }
    }
    deliver(o, p_out, pul_out)
}

/// Keeps `Ha` in scope for the docs of this module's callers.
#[allow(dead_code)]
fn _types(_: &Ha) {}
