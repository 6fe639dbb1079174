//! Pointer checks and the PKCS#11 length rules, in one place. Every pointer from the caller is
//! checked here; NULL where data is required is CKR_ARGUMENTS_BAD.
//!
//! Sizes the caller gives are checked before anything is read or allocated: a length no object
//! can have (over `isize::MAX`) is CKR_ARGUMENTS_BAD, copies are fallible (CKR_HOST_MEMORY),
//! and a PIN longer than any token takes is refused without being read.
//!
//! Safety, for every function here: a non-NULL pointer must be valid for the length PKCS#11
//! gives it (the caller's promise to the library; NULL is the one thing we can check).

use crate::ha::Pin;
use crate::mechanism::{Attr, OwnedMechanism};
use crate::provider::{Data, Input, Output};
use cryptoki_sys::*;
use std::sync::Arc;
use zeroize::Zeroizing;

pub type Rv<T> = Result<T, CK_RV>;

/// Longest PIN p11ha passes on. Tokens take far less (SoftHSM: 255 bytes); one this long can
/// only be a wrong length, and reading it could run off the caller's memory.
const MAX_PIN_LEN: usize = 4096;

/// A caller length as `usize`; no object in memory can be longer than `isize::MAX` bytes.
fn len(n: CK_ULONG) -> Rv<usize> {
    usize::try_from(n)
        .ok()
        .filter(|&n| isize::try_from(n).is_ok())
        .ok_or(CKR_ARGUMENTS_BAD)
}

/// A caller count of `T`s: the array must fit in `isize::MAX` bytes too.
fn count<T>(n: CK_ULONG) -> Rv<usize> {
    let n = len(n)?;
    n.checked_mul(std::mem::size_of::<T>().max(1))
        .filter(|&b| isize::try_from(b).is_ok())
        .map(|_| n)
        .ok_or(CKR_ARGUMENTS_BAD)
}

/// Copies caller bytes into fresh memory, or CKR_HOST_MEMORY.
fn copy(src: &[u8]) -> Rv<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(src.len())
        .map_err(|_| CKR_HOST_MEMORY)?;
    v.extend_from_slice(src);
    Ok(v)
}

/// A required output location.
pub unsafe fn out<'a, T>(p: *mut T) -> Rv<&'a mut T> {
    // SAFETY: the caller's pointer is valid or NULL (module docs); NULL is refused.
    unsafe { p.as_mut() }.ok_or(CKR_ARGUMENTS_BAD)
}

/// A required input structure.
pub unsafe fn input<'a, T>(p: *const T) -> Rv<&'a T> {
    // SAFETY: as for `out`.
    unsafe { p.as_ref() }.ok_or(CKR_ARGUMENTS_BAD)
}

/// Caller bytes; NULL is allowed only with length 0.
pub unsafe fn bytes<'a>(p: *const u8, n: CK_ULONG) -> Rv<&'a [u8]> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(CKR_ARGUMENTS_BAD),
        // SAFETY: non-NULL, and valid for `n` bytes by the caller's promise; `len` keeps `n`
        // within what a slice may span.
        (false, n) => Ok(unsafe { std::slice::from_raw_parts(p, len(n)?) }),
    }
}

/// Caller bytes copied for an operation (shared by its attempts, wiped when done). A NULL
/// pointer with length 0 stays NULL for the member to judge.
pub unsafe fn data(p: *const u8, n: CK_ULONG) -> Rv<Data> {
    if p.is_null() && n == 0 {
        return Ok(Input::null());
    }
    // SAFETY: forwarded from the caller's promise.
    let src = unsafe { bytes(p, n) }?;
    Ok(Input::new(copy(src)?))
}

/// A template copied into owned attributes.
pub unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Rv<Vec<Attr>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL, and an array of `n` attributes by the caller's promise.
    let raw = unsafe { std::slice::from_raw_parts(p, count::<CK_ATTRIBUTE>(n)?) };
    raw.iter()
        .map(|a| {
            if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            // A value NULL with a length: the attribute's value is what is wrong (SoftHSM's
            // answer too).
            if a.pValue.is_null() && a.ulValueLen != 0 {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            // SAFETY: each value is valid for its length by the caller's promise.
            let value = unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?;
            Ok(Attr::new(a.type_, copy(value)?))
        })
        .collect()
}

/// The caller's template array, for filling in (C_GetAttributeValue).
pub unsafe fn template_mut<'a>(p: *mut CK_ATTRIBUTE, n: CK_ULONG) -> Rv<&'a mut [CK_ATTRIBUTE]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL, and an array of `n` attributes by the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, count::<CK_ATTRIBUTE>(n)?) })
}

pub unsafe fn mechanism(p: *const CK_MECHANISM) -> Rv<OwnedMechanism> {
    // SAFETY: forwarded from the caller's promise.
    let m = unsafe { input(p) }?;
    // A NULL parameter with a length is relayed as no parameter (NULL, 0): the member judges
    // it, as SoftHSM does (a digest ignores it, AES-CBC refuses it), and never reads NULL.
    // SAFETY: the parameter block (and what it points to) is valid by the caller's promise.
    unsafe { OwnedMechanism::copy_from(m) }
}

/// A PIN, copied straight into zeroized memory; NULL with length 0 means protected
/// authentication path (PIN pad / PED). A PIN over [`MAX_PIN_LEN`] is CKR_PIN_LEN_RANGE,
/// unread.
pub unsafe fn pin(p: *const u8, n: CK_ULONG) -> Rv<Option<Pin>> {
    if p.is_null() {
        return if n == 0 {
            Ok(None)
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    let n = len(n)?;
    if n > MAX_PIN_LEN {
        return Err(CKR_PIN_LEN_RANGE);
    }
    let mut v = Zeroizing::new(Vec::with_capacity(n));
    // SAFETY: non-NULL, and valid for `n` bytes by the caller's promise.
    v.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
    Ok(Some(Arc::new(v)))
}

/// The capacity the caller offers: `None` (a length query) when the buffer is NULL.
pub unsafe fn capacity(buf: *mut u8, plen: *mut CK_ULONG) -> Rv<Option<CK_ULONG>> {
    // SAFETY: forwarded from the caller's promise.
    let n = *unsafe { out(plen) }?;
    Ok((!buf.is_null()).then_some(n))
}

/// Delivers a member's output: the length is always set, the bytes when there are any.
pub unsafe fn deliver(o: Output, buf: *mut u8, plen: *mut CK_ULONG) -> Rv<()> {
    // SAFETY: forwarded from the caller's promise.
    *unsafe { out(plen) }? = o.len;
    if let Some(data) = o.data {
        if !data.is_empty() {
            // SAFETY: `data` came from a call told the caller's capacity (never more), so the
            // caller's buffer holds it.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
        }
    }
    if o.rv == CKR_OK {
        Ok(())
    } else {
        Err(o.rv)
    }
}

/// Delivers a list with the PKCS#11 length rules: NULL asks for the count; a short buffer gets
/// CKR_BUFFER_TOO_SMALL with the count set.
pub unsafe fn deliver_list<T: Copy>(items: &[T], buf: *mut T, plen: *mut CK_ULONG) -> Rv<()> {
    // SAFETY: forwarded from the caller's promise.
    let plen = unsafe { out(plen) }?;
    let cap = *plen;
    *plen = items.len() as CK_ULONG;
    if buf.is_null() {
        return Ok(());
    }
    if count::<T>(cap).unwrap_or(usize::MAX) < items.len() {
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    // SAFETY: the caller's buffer holds `cap` >= items.len() elements.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len()) };
    Ok(())
}

/// The caller's buffer of exactly `n` bytes to fill (C_GenerateRandom).
pub unsafe fn buffer_mut<'a>(p: *mut u8, n: CK_ULONG) -> Rv<&'a mut [u8]> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&mut []),
        (true, _) => Err(CKR_ARGUMENTS_BAD),
        // SAFETY: non-NULL, and valid for `n` bytes by the caller's promise.
        (false, n) => Ok(unsafe { std::slice::from_raw_parts_mut(p, len(n)?) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_length_rules() {
        let items = [1u64, 2, 3];
        let mut n: CK_ULONG = 0;
        unsafe {
            assert_eq!(deliver_list(&items, std::ptr::null_mut(), &mut n), Ok(()));
            assert_eq!(n, 3);
            let mut small = [0u64; 2];
            n = 2;
            assert_eq!(
                deliver_list(&items, small.as_mut_ptr(), &mut n),
                Err(CKR_BUFFER_TOO_SMALL)
            );
            assert_eq!(n, 3, "the count is set on CKR_BUFFER_TOO_SMALL too");
            let mut big = [0u64; 4];
            n = 4;
            assert_eq!(deliver_list(&items, big.as_mut_ptr(), &mut n), Ok(()));
            assert_eq!((n, &big[..3]), (3, &items[..]));
            assert_eq!(
                deliver_list(&items, big.as_mut_ptr(), std::ptr::null_mut()),
                Err(CKR_ARGUMENTS_BAD)
            );
        }
    }

    #[test]
    fn null_bytes_only_with_zero_length() {
        unsafe {
            assert_eq!(bytes(std::ptr::null(), 0), Ok(&[][..]));
            assert_eq!(bytes(std::ptr::null(), 5), Err(CKR_ARGUMENTS_BAD));
            assert_eq!(pin(std::ptr::null(), 0).map(|p| p.is_none()), Ok(true));
            assert!(pin(std::ptr::null(), 4).is_err());
        }
    }

    #[test]
    fn absurd_lengths_are_refused_before_anything_is_read() {
        let byte = 0u8;
        unsafe {
            assert_eq!(
                bytes(&byte, CK_ULONG::MAX).map(|b| b.len()),
                Err(CKR_ARGUMENTS_BAD)
            );
            assert_eq!(
                pin(&byte, 1 << 62).map(|p| p.is_some()),
                Err(CKR_PIN_LEN_RANGE),
                "a PIN no token takes is not read"
            );
            assert_eq!(
                template(std::ptr::NonNull::dangling().as_ptr(), 1 << 60).map(|t| t.len()),
                Err(CKR_ARGUMENTS_BAD)
            );
        }
    }

    #[test]
    fn output_length_is_always_set() {
        let mut n: CK_ULONG = 1;
        let mut buf = [0u8; 1];
        let o = Output {
            rv: CKR_BUFFER_TOO_SMALL,
            len: 256,
            data: None,
        };
        unsafe {
            assert_eq!(
                deliver(o, buf.as_mut_ptr(), &mut n),
                Err(CKR_BUFFER_TOO_SMALL)
            );
        }
        assert_eq!(n, 256);
    }
}
