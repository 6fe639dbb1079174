//! Owned copies of mechanisms and templates, so a member call can run on another thread,
//! outlive its caller (see `bounded`) and be replayed on another member after a failover.
//!
//! A mechanism's parameter is deep-copied when it is taken from the caller: every buffer its
//! pointers reach is copied (at any depth), and the copy keeps no caller address. Each call
//! lays the copy out afresh ([`OwnedMechanism::raw`]), so a member only ever sees p11ha's
//! memory. What each parameter holds is described once, in [`layouts`]:
//!
//! - **Copied as bytes** (no pointers): IVs of the CBC/CFB/OFB/CTS/XTS modes and key wraps,
//!   CK_AES_CTR_PARAMS, CK_CAMELLIA_CTR_PARAMS, RC2/RC5 integer params,
//!   CK_MAC_GENERAL_PARAMS (all *_MAC_GENERAL, *_HMAC_GENERAL, SSL3 MACs, SHA-512/t),
//!   CK_RSA_PKCS_PSS_PARAMS (all PSS variants), the DH public value, CK_EXTRACT_PARAMS,
//!   CK_VERSION of the pre-master key generations, CK_TLS_MAC_PARAMS, CK_XEDDSA_PARAMS and
//!   GOST's OIDs ([`table::BYTES`]). The member judges their size.
//! - **Deep-copied**: CK_GCM_PARAMS (and 2.40's without `ulIvBits`), CK_CCM_PARAMS,
//!   CK_CHACHA20_PARAMS, CK_SALSA20_PARAMS, CK_SALSA20_CHACHA20_POLY1305_PARAMS,
//!   CK_RSA_PKCS_OAEP_PARAMS, CK_RSA_AES_KEY_WRAP_PARAMS (and its OAEP params),
//!   CK_ECDH1_DERIVE_PARAMS, CK_ECDH_AES_KEY_WRAP_PARAMS, CK_X9_42_DH1_DERIVE_PARAMS,
//!   CK_KEA_DERIVE_PARAMS, CK_KEY_DERIVATION_STRING_DATA (concatenate/XOR and every
//!   *_ECB_ENCRYPT_DATA), the DES/AES/ARIA/Camellia/SEED *_CBC_ENCRYPT_DATA params,
//!   CK_EDDSA_PARAMS, CK_(HASH_)SIGN_ADDITIONAL_CONTEXT (ML-DSA, SLH-DSA), CK_HKDF_PARAMS,
//!   CK_PKCS5_PBKD2_PARAMS (2.20, `ulPasswordLen` a pointer) and _PARAMS2 (3.0), CK_PBE_PARAMS,
//!   the SSL3/TLS/TLS 1.2/extended/WTLS master-key derivations, CK_TLS_KDF_PARAMS, GOST
//!   derive and key wrap, CK_RC5_CBC_PARAMS, CK_DSA_PARAMETER_GEN_PARAM, the SP 800-108 KDFs
//!   (with their CK_PRF_DATA_PARAM arrays), CK_OTP_PARAMS, CK_CMS_SIG_PARAMS and
//!   CK_KIP_PARAMS (with their nested mechanisms), and the IKE PRF derivations. A size other
//!   than the struct's is refused with CKR_MECHANISM_PARAM_INVALID (SoftHSM 2.6.1 answers
//!   CKR_ARGUMENTS_BAD for some, but a struct of unknown shape cannot be copied safely).
//! - **Output fields must be NULL** (else CKR_MECHANISM_PARAM_INVALID): the member would write
//!   into the copy, possibly on a pool thread after the caller's call timed out, and the copy
//!   is not written back. These are the master-key derivations' `pVersion` (NULL is what the
//!   *_DH variants require anyway), CK_PBE_PARAMS' `pInitVector`, the DSA PQ generations'
//!   `pSeed`, and SP 800-108's `pAdditionalDerivedKeys` (their handles would also need
//!   virtual handles).
//! - **Object handles must be unused or CK_INVALID_HANDLE** (else CKR_MECHANISM_PARAM_INVALID):
//!   the application's handles are p11ha's virtual handles, which no member knows, and this
//!   module cannot translate them. These are HKDF's `hSaltKey` (with CKF_HKDF_SALT_KEY), the
//!   GOST key wrap's `hKey`, CMS's `certificateHandle`, KIP's `hKey`, and the IKE derivations'
//!   optional keys.
//! - **Refused, CKR_MECHANISM_INVALID**, whatever the parameter: mechanisms that always return
//!   data or handles through it (SSL3/TLS/TLS 1.2/WTLS key-and-MAC derivations, TLS 1.2 key-safe
//!   derivation, TLS and WTLS PRF, SET OAEP key wrap) or always name an object by handle
//!   (CKM_CONCATENATE_BASE_AND_KEY, ECMQV, X9.42 hybrid and MQV derivations, IKE1 PRF, X3DH and
//!   X2Ratchet set-up).
//! - **Unknown** (vendor-defined mechanisms and any not listed): without a parameter they pass;
//!   with one they are refused with CKR_MECHANISM_PARAM_INVALID, since p11ha cannot tell
//!   whether it holds pointers.
//!
//! The message-based functions (C_EncryptMessage..., with CK_GCM_MESSAGE_PARAMS and their
//! generated-IV outputs) are not offered by p11ha, so their per-message params never get here.
//! Copies are bounded (16 MiB, 4096 buffers, nesting depth 4) and zeroized on drop.

mod copy;
pub mod layouts;
pub mod table;

use cryptoki_sys::*;
use std::mem::size_of;
use zeroize::Zeroizing;

/// A mechanism whose parameter bytes and pointed-to buffers are owned.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnedMechanism {
    pub mechanism: CK_MECHANISM_TYPE,
    /// Block 0 is the parameter (none when it is empty); the others are what its pointers
    /// point to.
    blocks: Vec<copy::Block>,
}

/// Never the parameter's content: it may hold passwords.
impl std::fmt::Debug for OwnedMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedMechanism")
            .field("mechanism", &format_args!("{:#x}", self.mechanism))
            .field(
                "parameter_len",
                &self.blocks.first().map_or(0, |b| b.bytes.len()),
            )
            .field("buffers", &self.blocks.len())
            .finish()
    }
}

fn read_ulong(bytes: &[u8], at: usize) -> Option<CK_ULONG> {
    let raw = bytes.get(at..at + size_of::<CK_ULONG>())?;
    Some(CK_ULONG::from_ne_bytes(raw.try_into().ok()?))
}

impl OwnedMechanism {
    pub fn new(mechanism: CK_MECHANISM_TYPE) -> Self {
        OwnedMechanism {
            mechanism,
            blocks: Vec::new(),
        }
    }

    /// Whether the mechanism carries a parameter (a non-empty one).
    pub fn has_parameter(&self) -> bool {
        !self.blocks.is_empty()
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
        unsafe { Self::copy_from(&m) }.unwrap_or_else(|_| Self::new(CKM_RSA_PKCS_OAEP))
    }

    /// Copies `m` and everything its parameter points to (see the module documentation).
    /// Errors: CKR_MECHANISM_INVALID for a mechanism p11ha cannot serve,
    /// CKR_MECHANISM_PARAM_INVALID for a parameter it cannot copy or must refuse.
    ///
    /// # Safety
    /// `m.pParameter` must point to `m.ulParameterLen` readable bytes (or be NULL), and pointer
    /// fields of known structs must point to as many bytes as their length fields say.
    pub unsafe fn copy_from(m: &CK_MECHANISM) -> Result<Self, CK_RV> {
        // SAFETY: forwarded from this function's own contract.
        let blocks =
            unsafe { copy::copy(m.mechanism, m.pParameter as *const u8, m.ulParameterLen) }?;
        Ok(OwnedMechanism {
            mechanism: m.mechanism,
            blocks,
        })
    }

    /// Lays the mechanism out for one call, in memory of its own.
    pub fn raw(&self) -> RawMechanism<'_> {
        RawMechanism {
            storage: copy::relay(&self.blocks),
            len: self.blocks.first().map_or(0, |b| b.bytes.len()),
            mechanism: self.mechanism,
            _owner: std::marker::PhantomData,
        }
    }
}

/// A `CK_MECHANISM` ready to pass to a member for the duration of one call. It owns every
/// buffer the parameter points to (aligned for the member, zeroized on drop).
pub struct RawMechanism<'a> {
    /// Block 0 (the parameter) first.
    storage: Vec<Zeroizing<Vec<u64>>>,
    len: usize,
    mechanism: CK_MECHANISM_TYPE,
    _owner: std::marker::PhantomData<&'a OwnedMechanism>,
}

impl RawMechanism<'_> {
    pub fn ck(&mut self) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: self.mechanism,
            pParameter: match self.storage.first_mut() {
                Some(words) if self.len > 0 => words.as_mut_ptr() as *mut _,
                _ => std::ptr::null_mut(),
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
mod tests;
