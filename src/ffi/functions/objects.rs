//! Object management: create, copy, destroy, attributes, and the object search.
//!
//! Every `unsafe` block below dereferences the caller's pointers through `args`, which checks
//! them for NULL and their lengths for sanity; beyond that PKCS#11 makes the caller promise
//! they are valid, which is the one SAFETY argument these blocks have.

use super::session;
use crate::ffi::args::*;
use crate::ffi::entry::entry;
use cryptoki_sys::*;

entry! {
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
}
