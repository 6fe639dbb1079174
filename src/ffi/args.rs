//! Pointer checks and the PKCS#11 length rules, in one place. Every pointer from the caller is
//! checked here; NULL where data is required is CKR_ARGUMENTS_BAD.
//!
//! Safety, for every function here: a non-NULL pointer must be valid for the length PKCS#11
//! gives it (the caller's promise to the library; NULL is the one thing we can check).

use crate::ha::group::Pin;
use crate::mechanism::{Attr, OwnedMechanism};
use crate::provider::Output;
use cryptoki_sys::*;
use std::sync::Arc;
use zeroize::Zeroizing;

pub type Rv<T> = Result<T, CK_RV>;

fn len(n: CK_ULONG) -> Rv<usize> {
    usize::try_from(n).map_err(|_| CKR_ARGUMENTS_BAD)
}

/// A required output location.
pub unsafe fn out<'a, T>(p: *mut T) -> Rv<&'a mut T> {
    p.as_mut().ok_or(CKR_ARGUMENTS_BAD)
}

/// A required input structure.
pub unsafe fn input<'a, T>(p: *const T) -> Rv<&'a T> {
    p.as_ref().ok_or(CKR_ARGUMENTS_BAD)
}

/// Caller bytes; NULL is allowed only with length 0.
pub unsafe fn bytes<'a>(p: *const u8, n: CK_ULONG) -> Rv<&'a [u8]> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(CKR_ARGUMENTS_BAD),
        (false, n) => Ok(std::slice::from_raw_parts(p, len(n)?)),
    }
}

/// A template copied into owned attributes.
pub unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Rv<Vec<Attr>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    std::slice::from_raw_parts(p, len(n)?)
        .iter()
        .map(|a| {
            if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            Ok(Attr::new(
                a.type_,
                bytes(a.pValue as *const u8, a.ulValueLen)?.to_vec(),
            ))
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
    Ok(std::slice::from_raw_parts_mut(p, len(n)?))
}

pub unsafe fn mechanism(p: *const CK_MECHANISM) -> Rv<OwnedMechanism> {
    let m = input(p)?;
    if m.pParameter.is_null() && m.ulParameterLen != 0 {
        return Err(CKR_ARGUMENTS_BAD);
    }
    OwnedMechanism::copy_from(m)
}

/// A PIN, copied straight into zeroized memory; NULL with length 0 means protected
/// authentication path (PIN pad / PED).
pub unsafe fn pin(p: *const u8, n: CK_ULONG) -> Rv<Option<Pin>> {
    if p.is_null() {
        return if n == 0 {
            Ok(None)
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    let mut v = Zeroizing::new(Vec::with_capacity(len(n)?));
    v.extend_from_slice(std::slice::from_raw_parts(p, len(n)?));
    Ok(Some(Arc::new(v)))
}

/// The capacity the caller offers: `None` (a length query) when the buffer is NULL.
pub unsafe fn capacity(buf: *mut u8, plen: *mut CK_ULONG) -> Rv<Option<CK_ULONG>> {
    let n = *out(plen)?;
    Ok((!buf.is_null()).then_some(n))
}

/// Delivers a member's output: the length is always set, the bytes when there are any.
pub unsafe fn deliver(o: Output, buf: *mut u8, plen: *mut CK_ULONG) -> Rv<()> {
    *out(plen)? = o.len;
    if let Some(data) = o.data {
        if !data.is_empty() {
            std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
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
    let plen = out(plen)?;
    let cap = *plen;
    *plen = items.len() as CK_ULONG;
    if buf.is_null() {
        return Ok(());
    }
    if len(cap)? < items.len() {
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    std::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len());
    Ok(())
}

/// Delivers bytes the caller sized exactly (C_GenerateRandom).
pub unsafe fn deliver_exact(data: &[u8], buf: *mut u8) -> Rv<()> {
    if data.is_empty() {
        return Ok(());
    }
    if buf.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
    Ok(())
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
