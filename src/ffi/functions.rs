//! The PKCS#11 functions: unpack C arguments (`args`), call the HA core, pack results.
//! No HA logic lives here.
//!
//! Every `unsafe` block below dereferences the caller's pointers through `args`, which checks
//! them for NULL and their lengths for sanity; beyond that PKCS#11 makes the caller promise
//! they are valid, which is the one SAFETY argument these blocks have.

use super::args::*;
use super::entry::{entry, ha, LIBRARY};
use crate::ha::group::{crate_version, pad};
use crate::ha::session::Session;
use crate::provider::OpKind;
use cryptoki_sys::*;
use std::ffi::c_void;
use std::sync::Arc;

/// Most random bytes asked of a member in one call: a huge request is served in pieces, so
/// p11ha never holds more than this at once whatever the caller asks.
const RANDOM_PIECE: usize = 64 * 1024;

fn session(h: CK_SESSION_HANDLE) -> Rv<Arc<Session>> {
    ha()?.session(h)
}

entry! {
    fn C_Initialize(p_init_args: *mut c_void) {
        // SAFETY: NULL or the caller's CK_C_INITIALIZE_ARGS.
        let args = unsafe { (p_init_args as *const CK_C_INITIALIZE_ARGS).as_ref() };
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
        crate::bounded::set_inline(no_threads);
        *lib = Some(super::init::start()?);
        Ok(())
    }

    fn C_Finalize(p_reserved: *mut c_void) {
        if !p_reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let lib = LIBRARY.write().take().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
        lib.stop();
        Ok(())
    }

    fn C_GetInfo(p_info: *mut CK_INFO) {
        ha()?;
        // SAFETY: see the module docs.
        let info = unsafe { out(p_info) }?;
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
        let slots = ha()?.slot_ids();
        // SAFETY: see the module docs.
        unsafe { deliver_list(&slots, p_slot_list, pul_count) }
    }

    fn C_GetSlotInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_SLOT_INFO) {
        let ha = ha()?;
        let info = ha.group(slot_id)?.slot_info();
        // SAFETY: see the module docs.
        *unsafe { out(p_info) }? = info;
        Ok(())
    }

    fn C_GetTokenInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_TOKEN_INFO) {
        let ha = ha()?;
        let info = ha.group(slot_id)?.token_info();
        // SAFETY: see the module docs.
        *unsafe { out(p_info) }? = info;
        Ok(())
    }

    fn C_GetMechanismList(slot_id: CK_SLOT_ID, p_list: *mut CK_MECHANISM_TYPE, pul_count: *mut CK_ULONG) {
        let ha = ha()?;
        let list = ha.group(slot_id)?.mechanisms();
        // SAFETY: see the module docs.
        unsafe { deliver_list(&list, p_list, pul_count) }
    }

    fn C_GetMechanismInfo(slot_id: CK_SLOT_ID, mech: CK_MECHANISM_TYPE, p_info: *mut CK_MECHANISM_INFO) {
        let ha = ha()?;
        let group = ha.group(slot_id)?;
        // SAFETY: see the module docs.
        let info = unsafe { out(p_info) }?;
        *info = group.mechanism_info(mech)?;
        Ok(())
    }

    fn C_InitToken(slot_id: CK_SLOT_ID, _pin: *mut CK_UTF8CHAR, _pin_len: CK_ULONG, _label: *mut CK_UTF8CHAR) {
        // A virtual token is made of initialized members; members are initialized one by one.
        ha()?.group(slot_id)?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    }

    fn C_InitPIN(h: CK_SESSION_HANDLE, p_pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let p = unsafe { pin(p_pin, pin_len) }?.ok_or(CKR_ARGUMENTS_BAD)?;
        s.init_pin(p)
    }

    fn C_SetPIN(h: CK_SESSION_HANDLE, p_old: *mut CK_UTF8CHAR, old_len: CK_ULONG, p_new: *mut CK_UTF8CHAR, new_len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (old, new) = unsafe { (pin(p_old, old_len)?, pin(p_new, new_len)?) };
        s.set_pin(old.ok_or(CKR_ARGUMENTS_BAD)?, new.ok_or(CKR_ARGUMENTS_BAD)?)
    }

    fn C_OpenSession(slot_id: CK_SLOT_ID, flags: CK_FLAGS, _app: *mut c_void, _notify: CK_NOTIFY, ph_session: *mut CK_SESSION_HANDLE) {
        let ha = ha()?;
        // SAFETY: see the module docs.
        let ph = unsafe { out(ph_session) }?;
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
        let info = CK_SESSION_INFO { slotID: s.group.slot_id, state: s.state(), flags: s.flags, ulDeviceError: 0 };
        // SAFETY: see the module docs.
        *unsafe { out(p_info) }? = info;
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
        // SAFETY: see the module docs.
        let p = match unsafe { pin(p_pin, pin_len) } {
            // Longer than any token takes: what the member would say of it, without trying it.
            Err(CKR_PIN_LEN_RANGE) => return Err(CKR_PIN_INCORRECT),
            other => other?,
        };
        s.login(user, p)
    }

    fn C_Logout(h: CK_SESSION_HANDLE) {
        session(h)?.logout()
    }

    fn C_CreateObject(h: CK_SESSION_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_object: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (t, ph) = unsafe { (template(p_template, count)?, out(ph_object)?) };
        *ph = s.create_object(t)?;
        Ok(())
    }

    fn C_CopyObject(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG, ph_new: *mut CK_OBJECT_HANDLE) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let (t, ph) = unsafe { (template(p_template, count)?, out(ph_new)?) };
        *ph = s.copy_object(obj, t)?;
        Ok(())
    }

    fn C_DestroyObject(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) {
        session(h)?.destroy_object(obj)
    }

    fn C_GetObjectSize(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, pul_size: *mut CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let p = unsafe { out(pul_size) }?;
        *p = s.object_size(obj)?;
        Ok(())
    }

    fn C_GetAttributeValue(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG) {
        let s = session(h)?;
        if count == 0 {
            // Nothing to read; and p11-kit 0.24's client aborts the process on an empty
            // template, so no member is asked.
            return if p_template.is_null() { Err(CKR_ARGUMENTS_BAD) } else { s.check_object(obj) };
        }
        // SAFETY: see the module docs.
        let attrs = unsafe { template_mut(p_template, count) }?;
        let query = attrs.iter().map(|a| (a.type_, (!a.pValue.is_null()).then_some(a.ulValueLen))).collect();
        let (rv, values) = s.get_attributes(obj, query)?;
        if !matches!(rv, CKR_OK | CKR_BUFFER_TOO_SMALL | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID) {
            // The call failed as a whole (a bad handle, ...): the template is left as it was,
            // as members leave it; only the three answers above speak of each attribute.
            return Err(rv);
        }
        for (a, (len, value)) in attrs.iter_mut().zip(values) {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                // SAFETY: the member filled at most the capacity this attribute offered.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len()) };
            }
            a.ulValueLen = len;
        }
        if rv == CKR_OK { Ok(()) } else { Err(rv) }
    }

    fn C_SetAttributeValue(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let t = unsafe { template(p_template, count) }?;
        s.set_attributes(obj, t)
    }

    fn C_FindObjectsInit(h: CK_SESSION_HANDLE, p_template: *mut CK_ATTRIBUTE, count: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let t = unsafe { template(p_template, count) }?;
        s.find_init(t)
    }

    fn C_FindObjects(h: CK_SESSION_HANDLE, ph_object: *mut CK_OBJECT_HANDLE, max: CK_ULONG, pul_count: *mut CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let count = unsafe { out(pul_count) }?;
        if ph_object.is_null() && max > 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let found = s.find_next(usize::try_from(max).unwrap_or(usize::MAX))?;
        if !found.is_empty() {
            // SAFETY: the caller's array holds `max` >= found.len() handles.
            unsafe { std::ptr::copy_nonoverlapping(found.as_ptr(), ph_object, found.len()) };
        }
        *count = found.len() as CK_ULONG;
        Ok(())
    }

    fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) {
        session(h)?.find_final()
    }

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

    fn C_SeedRandom(h: CK_SESSION_HANDLE, p_seed: *mut CK_BYTE, len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let seed = unsafe { data(p_seed, len) }?;
        s.seed_random(seed)
    }

    fn C_GenerateRandom(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let buf = unsafe { buffer_mut(p_out, len) }?;
        if buf.is_empty() {
            // Nothing to fill, but the member decides what a request for nothing means.
            s.generate_random(0, p_out.is_null())?;
        }
        for piece in buf.chunks_mut(RANDOM_PIECE) {
            piece.copy_from_slice(&s.generate_random(piece.len(), false)?);
        }
        Ok(())
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
        // SAFETY: see the module docs.
        unsafe { out(p_slot) }?;
        // Virtual slots never change; a blocking wait would never return.
        if flags & CKF_DONT_BLOCK != 0 { Err(CKR_NO_EVENT) } else { Err(CKR_FUNCTION_NOT_SUPPORTED) }
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
