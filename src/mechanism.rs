//! Owned copies of mechanisms and templates, so a member call can run on another thread and
//! outlive its caller (see `bounded`). Parameters that carry pointers are deep-copied for the
//! mechanisms listed in `pointer_fields`; other parameters are copied as bytes.

use cryptoki_sys::*;
use std::mem::{offset_of, size_of};

/// A mechanism whose parameter bytes and pointed-to buffers are owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMechanism {
    pub mechanism: CK_MECHANISM_TYPE,
    params: Vec<u8>,
    /// (offset of a pointer field in `params`, the bytes it points to).
    blobs: Vec<(usize, Vec<u8>)>,
}

/// A pointer field and the length field that sizes it, for parameter structs with pointers.
fn pointer_fields(mechanism: CK_MECHANISM_TYPE) -> &'static [(usize, usize)] {
    match mechanism {
        CKM_AES_GCM => &[
            (
                offset_of!(CK_GCM_PARAMS, pIv),
                offset_of!(CK_GCM_PARAMS, ulIvLen),
            ),
            (
                offset_of!(CK_GCM_PARAMS, pAAD),
                offset_of!(CK_GCM_PARAMS, ulAADLen),
            ),
        ],
        CKM_AES_CCM => &[
            (
                offset_of!(CK_CCM_PARAMS, pNonce),
                offset_of!(CK_CCM_PARAMS, ulNonceLen),
            ),
            (
                offset_of!(CK_CCM_PARAMS, pAAD),
                offset_of!(CK_CCM_PARAMS, ulAADLen),
            ),
        ],
        CKM_RSA_PKCS_OAEP => &[(
            offset_of!(CK_RSA_PKCS_OAEP_PARAMS, pSourceData),
            offset_of!(CK_RSA_PKCS_OAEP_PARAMS, ulSourceDataLen),
        )],
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => &[
            (
                offset_of!(CK_ECDH1_DERIVE_PARAMS, pSharedData),
                offset_of!(CK_ECDH1_DERIVE_PARAMS, ulSharedDataLen),
            ),
            (
                offset_of!(CK_ECDH1_DERIVE_PARAMS, pPublicData),
                offset_of!(CK_ECDH1_DERIVE_PARAMS, ulPublicDataLen),
            ),
        ],
        CKM_CONCATENATE_BASE_AND_DATA
        | CKM_CONCATENATE_DATA_AND_BASE
        | CKM_XOR_BASE_AND_DATA
        | CKM_AES_ECB_ENCRYPT_DATA => &[(
            offset_of!(CK_KEY_DERIVATION_STRING_DATA, pData),
            offset_of!(CK_KEY_DERIVATION_STRING_DATA, ulLen),
        )],
        CKM_AES_CBC_ENCRYPT_DATA => &[(
            offset_of!(CK_AES_CBC_ENCRYPT_DATA_PARAMS, pData),
            offset_of!(CK_AES_CBC_ENCRYPT_DATA_PARAMS, length),
        )],
        _ => &[],
    }
}

fn read_ulong(bytes: &[u8], at: usize) -> Option<CK_ULONG> {
    let raw = bytes.get(at..at + size_of::<CK_ULONG>())?;
    Some(CK_ULONG::from_ne_bytes(raw.try_into().ok()?))
}

fn read_ptr(bytes: &[u8], at: usize) -> Option<usize> {
    let raw = bytes.get(at..at + size_of::<usize>())?;
    Some(usize::from_ne_bytes(raw.try_into().ok()?))
}

impl OwnedMechanism {
    pub fn new(mechanism: CK_MECHANISM_TYPE) -> Self {
        OwnedMechanism {
            mechanism,
            params: Vec::new(),
            blobs: Vec::new(),
        }
    }

    /// CKM_RSA_PKCS_OAEP with SHA-1, MGF1-SHA-1 and no label: the OAEP variant SoftHSM 2.6 wraps
    /// with (it refuses SHA-256). OAEP's security does not rest on SHA-1's collision resistance.
    pub fn rsa_oaep_sha1() -> Self {
        let mut p = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: std::ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        let m = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS_OAEP,
            pParameter: &mut p as *mut CK_RSA_PKCS_OAEP_PARAMS as *mut _,
            ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
        };
        // SAFETY: `m` points to `p`, which outlives the copy, and p's data pointer is NULL.
        unsafe { Self::copy_from(&m) }.unwrap_or_else(|| Self::new(CKM_RSA_PKCS_OAEP))
    }

    /// Copies `m`, following the pointers of known parameter structs.
    ///
    /// # Safety
    /// `m.pParameter` must point to `m.ulParameterLen` readable bytes (or be NULL), and pointer
    /// fields of known structs must point to as many bytes as their length fields say.
    pub unsafe fn copy_from(m: &CK_MECHANISM) -> Option<Self> {
        let len = usize::try_from(m.ulParameterLen).ok()?;
        let params = if m.pParameter.is_null() || len == 0 {
            Vec::new()
        } else {
            // SAFETY: the caller's promise (see `# Safety`).
            unsafe { std::slice::from_raw_parts(m.pParameter as *const u8, len) }.to_vec()
        };
        let mut blobs = Vec::new();
        for &(ptr_at, len_at) in pointer_fields(m.mechanism) {
            if params.len() < ptr_at + size_of::<usize>() {
                break; // short or absent parameters: the member will judge them
            }
            let ptr = read_ptr(&params, ptr_at)?;
            let n = usize::try_from(read_ulong(&params, len_at)?).ok()?;
            let data = if ptr == 0 || n == 0 {
                Vec::new()
            } else {
                // SAFETY: the caller's promise (see `# Safety`).
                unsafe { std::slice::from_raw_parts(ptr as *const u8, n) }.to_vec()
            };
            blobs.push((ptr_at, data));
        }
        Some(OwnedMechanism {
            mechanism: m.mechanism,
            params,
            blobs,
        })
    }

    /// Lays the mechanism out for one call. The returned value borrows `self`.
    pub fn raw(&self) -> RawMechanism<'_> {
        // u64 storage keeps the struct aligned for the member.
        let mut storage = vec![0u64; self.params.len().div_ceil(8)];
        let bytes: &mut [u8] = bytemuck_u64(&mut storage);
        bytes[..self.params.len()].copy_from_slice(&self.params);
        for (at, blob) in &self.blobs {
            let p = if blob.is_empty() {
                0
            } else {
                blob.as_ptr() as usize
            };
            bytes[*at..*at + size_of::<usize>()].copy_from_slice(&p.to_ne_bytes());
        }
        RawMechanism {
            storage,
            len: self.params.len(),
            mechanism: self.mechanism,
            _owner: std::marker::PhantomData,
        }
    }
}

fn bytemuck_u64(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers the same memory.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
}

/// A `CK_MECHANISM` ready to pass to a member for the duration of one call.
pub struct RawMechanism<'a> {
    storage: Vec<u64>,
    len: usize,
    mechanism: CK_MECHANISM_TYPE,
    _owner: std::marker::PhantomData<&'a OwnedMechanism>,
}

impl RawMechanism<'_> {
    pub fn ck(&mut self) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: self.mechanism,
            pParameter: if self.len == 0 {
                std::ptr::null_mut()
            } else {
                self.storage.as_mut_ptr() as *mut _
            },
            ulParameterLen: self.len as CK_ULONG,
        }
    }
}

/// One attribute with an owned value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub kind: CK_ATTRIBUTE_TYPE,
    pub value: Vec<u8>,
}

impl Attr {
    pub fn new(kind: CK_ATTRIBUTE_TYPE, value: impl Into<Vec<u8>>) -> Self {
        Attr {
            kind,
            value: value.into(),
        }
    }
    pub fn ulong(kind: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Self {
        Attr::new(kind, v.to_ne_bytes().to_vec())
    }
    pub fn bool(kind: CK_ATTRIBUTE_TYPE, v: bool) -> Self {
        Attr::new(kind, vec![if v { CK_TRUE } else { CK_FALSE }])
    }
    pub fn as_ulong(&self) -> Option<CK_ULONG> {
        read_ulong(&self.value, 0).filter(|_| self.value.len() == size_of::<CK_ULONG>())
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self.value.as_slice() {
            [b] => Some(*b != CK_FALSE),
            _ => None,
        }
    }
}

/// Builds the `CK_ATTRIBUTE` array for a template that borrows `attrs`.
pub fn raw_template(attrs: &[Attr]) -> Vec<CK_ATTRIBUTE> {
    attrs
        .iter()
        .map(|a| CK_ATTRIBUTE {
            type_: a.kind,
            pValue: if a.value.is_empty() {
                std::ptr::null_mut()
            } else {
                a.value.as_ptr() as *mut _
            },
            ulValueLen: a.value.len() as CK_ULONG,
        })
        .collect()
}

/// Looks an attribute up in a template.
pub fn find(attrs: &[Attr], kind: CK_ATTRIBUTE_TYPE) -> Option<&Attr> {
    attrs.iter().find(|a| a.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm_params_are_deep_copied_and_relaid() {
        let iv = [7u8; 12];
        let aad = [9u8; 5];
        let mut gcm = CK_GCM_PARAMS {
            pIv: iv.as_ptr() as *mut _,
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: aad.as_ptr() as *mut _,
            ulAADLen: 5,
            ulTagBits: 128,
        };
        let m = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: &mut gcm as *mut _ as *mut _,
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        let owned = unsafe { OwnedMechanism::copy_from(&m) }.unwrap();
        let mut raw = owned.raw();
        let ck = raw.ck();
        let p = unsafe { &*(ck.pParameter as *const CK_GCM_PARAMS) };
        assert_ne!(
            p.pIv as usize,
            iv.as_ptr() as usize,
            "must point at the owned copy"
        );
        assert_eq!(unsafe { std::slice::from_raw_parts(p.pIv, 12) }, &iv);
        assert_eq!(unsafe { std::slice::from_raw_parts(p.pAAD, 5) }, &aad);
        assert_eq!((p.ulIvBits, p.ulTagBits), (96, 128));
    }

    #[test]
    fn plain_params_are_copied_as_bytes() {
        let iv = [1u8; 16];
        let m = CK_MECHANISM {
            mechanism: CKM_AES_CBC_PAD,
            pParameter: iv.as_ptr() as *mut _,
            ulParameterLen: 16,
        };
        let owned = unsafe { OwnedMechanism::copy_from(&m) }.unwrap();
        let mut raw = owned.raw();
        let ck = raw.ck();
        assert_eq!(ck.ulParameterLen, 16);
        assert_eq!(
            unsafe { std::slice::from_raw_parts(ck.pParameter as *const u8, 16) },
            &iv
        );
    }

    #[test]
    fn attribute_helpers() {
        assert_eq!(
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY).as_ulong(),
            Some(CKO_SECRET_KEY)
        );
        assert_eq!(Attr::bool(CKA_TOKEN, true).as_bool(), Some(true));
        assert_eq!(Attr::new(CKA_TOKEN, vec![1, 2]).as_bool(), None);
    }
}
