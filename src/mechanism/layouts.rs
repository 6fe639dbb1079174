//! What p11ha knows about mechanism parameter structs: one description per struct (its size
//! and its pointer, handle and output fields). Which mechanism takes which is in `table`.
//!
//! Offsets come from cryptoki-sys's bindings (`offset_of!`), so they follow the platform's C
//! layout of the PKCS#11 3.0/3.1 headers. The policy each entry implements is described in the
//! parent module's documentation.

use cryptoki_sys::*;
use std::mem::{offset_of, size_of};

/// How many bytes a pointer field points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    /// A CK_ULONG field of the same struct counts bytes.
    Ulong(usize),
    /// A CK_ULONG field of the same struct counts bits.
    Bits(usize),
    /// A fixed number of bytes.
    Fixed(usize),
    /// The CK_ULONG that a pointer field of the same struct points to (PBKDF2 2.20's
    /// `ulPasswordLen`, a CK_ULONG_PTR). That field must be described, as a [`Field::Struct`]
    /// of [`ULONG`], before the field that uses it.
    Pointed(usize),
    /// A NUL-terminated string (the NUL included).
    CString,
}

/// When an object handle inside the parameter is used by the mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    Always,
    /// When the CK_BBOOL at this offset is true.
    IfTrue(usize),
    /// When the CK_ULONG at this offset has this value.
    IfEquals(usize, CK_ULONG),
}

/// One field of a parameter struct that needs more than a byte copy.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// A pointer to bytes that hold no pointers.
    Bytes { at: usize, len: Len },
    /// A pointer to one struct.
    Struct { at: usize, layout: &'static Layout },
    /// A pointer to `count` (a CK_ULONG field) structs.
    Array {
        at: usize,
        count: usize,
        layout: &'static Layout,
    },
    /// A pointer to a CK_MECHANISM, whose own parameter is copied by this table.
    Mechanism { at: usize },
    /// An object handle. p11ha's object handles are virtual and each member knows the object by
    /// another handle; this module cannot translate them, so a used handle is refused.
    Handle { at: usize, used: Used },
    /// A pointer through which the member returns data. The copy's results would land in
    /// p11ha's memory (possibly on a pool thread after the caller gave up), never in the
    /// caller's, so it must be NULL.
    Output { at: usize },
}

/// A parameter struct.
#[derive(Debug)]
pub struct Layout {
    /// Its C name: the tests check the table against every layout by it; Debug shows it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    pub size: usize,
    pub fields: &'static [Field],
    /// Tells apart layouts of one mechanism that have the same size.
    pub fits: Option<fn(&[u8]) -> bool>,
}

macro_rules! bytes {
    ($t:ty, $($p:ident).+, $($l:ident).+) => {
        Field::Bytes { at: offset_of!($t, $($p).+), len: Len::Ulong(offset_of!($t, $($l).+)) }
    };
}

macro_rules! layout {
    ($name:ident: $t:ty { $($f:expr),* $(,)? }) => {
        pub const $name: Layout = Layout {
            name: stringify!($t),
            size: size_of::<$t>(),
            fields: &[$($f),*],
            fits: None,
        };
    };
}

/// The CK_GCM_PARAMS of the PKCS#11 2.40 headers before the errata (no `ulIvBits`), which
/// some applications still send.
#[repr(C)]
#[allow(non_snake_case)]
pub struct CK_GCM_PARAMS_240 {
    pub pIv: *mut CK_BYTE,
    pub ulIvLen: CK_ULONG,
    pub pAAD: *mut CK_BYTE,
    pub ulAADLen: CK_ULONG,
    pub ulTagBits: CK_ULONG,
}

/// A CK_ULONG pointed to (PBKDF2 2.20's password length).
pub const ULONG: Layout = Layout {
    name: "CK_ULONG",
    size: size_of::<CK_ULONG>(),
    fields: &[],
    fits: None,
};

layout!(GCM: CK_GCM_PARAMS {
    bytes!(CK_GCM_PARAMS, pIv, ulIvLen),
    bytes!(CK_GCM_PARAMS, pAAD, ulAADLen),
});
layout!(GCM_240: CK_GCM_PARAMS_240 {
    bytes!(CK_GCM_PARAMS_240, pIv, ulIvLen),
    bytes!(CK_GCM_PARAMS_240, pAAD, ulAADLen),
});
layout!(CCM: CK_CCM_PARAMS {
    bytes!(CK_CCM_PARAMS, pNonce, ulNonceLen),
    bytes!(CK_CCM_PARAMS, pAAD, ulAADLen),
});
layout!(CHACHA20: CK_CHACHA20_PARAMS {
    Field::Bytes {
        at: offset_of!(CK_CHACHA20_PARAMS, pBlockCounter),
        len: Len::Bits(offset_of!(CK_CHACHA20_PARAMS, blockCounterBits)),
    },
    Field::Bytes {
        at: offset_of!(CK_CHACHA20_PARAMS, pNonce),
        len: Len::Bits(offset_of!(CK_CHACHA20_PARAMS, ulNonceBits)),
    },
});
layout!(SALSA20: CK_SALSA20_PARAMS {
    // Salsa20's block counter is 64 bits; the struct has no length for it.
    Field::Bytes { at: offset_of!(CK_SALSA20_PARAMS, pBlockCounter), len: Len::Fixed(8) },
    Field::Bytes {
        at: offset_of!(CK_SALSA20_PARAMS, pNonce),
        len: Len::Bits(offset_of!(CK_SALSA20_PARAMS, ulNonceBits)),
    },
});
layout!(AEAD_POLY1305: CK_SALSA20_CHACHA20_POLY1305_PARAMS {
    bytes!(CK_SALSA20_CHACHA20_POLY1305_PARAMS, pNonce, ulNonceLen),
    bytes!(CK_SALSA20_CHACHA20_POLY1305_PARAMS, pAAD, ulAADLen),
});
layout!(OAEP: CK_RSA_PKCS_OAEP_PARAMS {
    bytes!(CK_RSA_PKCS_OAEP_PARAMS, pSourceData, ulSourceDataLen),
});
layout!(RSA_AES_KEY_WRAP: CK_RSA_AES_KEY_WRAP_PARAMS {
    Field::Struct { at: offset_of!(CK_RSA_AES_KEY_WRAP_PARAMS, pOAEPParams), layout: &OAEP },
});
layout!(ECDH1: CK_ECDH1_DERIVE_PARAMS {
    bytes!(CK_ECDH1_DERIVE_PARAMS, pSharedData, ulSharedDataLen),
    bytes!(CK_ECDH1_DERIVE_PARAMS, pPublicData, ulPublicDataLen),
});
layout!(ECDH_AES_KEY_WRAP: CK_ECDH_AES_KEY_WRAP_PARAMS {
    bytes!(CK_ECDH_AES_KEY_WRAP_PARAMS, pSharedData, ulSharedDataLen),
});
layout!(X9_42_DH1: CK_X9_42_DH1_DERIVE_PARAMS {
    bytes!(CK_X9_42_DH1_DERIVE_PARAMS, pOtherInfo, ulOtherInfoLen),
    bytes!(CK_X9_42_DH1_DERIVE_PARAMS, pPublicData, ulPublicDataLen),
});
layout!(KEA: CK_KEA_DERIVE_PARAMS {
    bytes!(CK_KEA_DERIVE_PARAMS, RandomA, ulRandomLen),
    bytes!(CK_KEA_DERIVE_PARAMS, RandomB, ulRandomLen),
    bytes!(CK_KEA_DERIVE_PARAMS, PublicData, ulPublicDataLen),
});
layout!(STRING_DATA: CK_KEY_DERIVATION_STRING_DATA {
    bytes!(CK_KEY_DERIVATION_STRING_DATA, pData, ulLen),
});
layout!(DES_CBC_ENCRYPT_DATA: CK_DES_CBC_ENCRYPT_DATA_PARAMS {
    bytes!(CK_DES_CBC_ENCRYPT_DATA_PARAMS, pData, length),
});
layout!(AES_CBC_ENCRYPT_DATA: CK_AES_CBC_ENCRYPT_DATA_PARAMS {
    bytes!(CK_AES_CBC_ENCRYPT_DATA_PARAMS, pData, length),
});
layout!(ARIA_CBC_ENCRYPT_DATA: CK_ARIA_CBC_ENCRYPT_DATA_PARAMS {
    bytes!(CK_ARIA_CBC_ENCRYPT_DATA_PARAMS, pData, length),
});
layout!(CAMELLIA_CBC_ENCRYPT_DATA: CK_CAMELLIA_CBC_ENCRYPT_DATA_PARAMS {
    bytes!(CK_CAMELLIA_CBC_ENCRYPT_DATA_PARAMS, pData, length),
});
layout!(SEED_CBC_ENCRYPT_DATA: CK_SEED_CBC_ENCRYPT_DATA_PARAMS {
    bytes!(CK_SEED_CBC_ENCRYPT_DATA_PARAMS, pData, length),
});
layout!(EDDSA: CK_EDDSA_PARAMS {
    bytes!(CK_EDDSA_PARAMS, pContextData, ulContextDataLen),
});
layout!(SIGN_CONTEXT: CK_SIGN_ADDITIONAL_CONTEXT {
    bytes!(CK_SIGN_ADDITIONAL_CONTEXT, pContext, ulContextLen),
});
layout!(HASH_SIGN_CONTEXT: CK_HASH_SIGN_ADDITIONAL_CONTEXT {
    bytes!(CK_HASH_SIGN_ADDITIONAL_CONTEXT, pContext, ulContextLen),
});
layout!(HKDF: CK_HKDF_PARAMS {
    bytes!(CK_HKDF_PARAMS, pSalt, ulSaltLen),
    bytes!(CK_HKDF_PARAMS, pInfo, ulInfoLen),
    Field::Handle {
        at: offset_of!(CK_HKDF_PARAMS, hSaltKey),
        used: Used::IfEquals(offset_of!(CK_HKDF_PARAMS, ulSaltType), CKF_HKDF_SALT_KEY),
    },
});
layout!(PBE: CK_PBE_PARAMS {
    // "Receives the 8-byte initialization vector": an output.
    Field::Output { at: offset_of!(CK_PBE_PARAMS, pInitVector) },
    bytes!(CK_PBE_PARAMS, pPassword, ulPasswordLen),
    bytes!(CK_PBE_PARAMS, pSalt, ulSaltLen),
});

/// Below this, `ulPasswordLen` is a length (PKCS#11 3.0's CK_PKCS5_PBKD2_PARAMS2); from here
/// on, a pointer (2.20's CK_PKCS5_PBKD2_PARAMS, a CK_ULONG_PTR). Both structs have the same
/// size and the same mechanism; Linux maps nothing below 64 KiB (vm.mmap_min_addr), and no
/// password is that long.
const PBKD2_LENGTH_LIMIT: CK_ULONG = 1 << 16;

fn password_len_field(params: &[u8]) -> Option<CK_ULONG> {
    let at = offset_of!(CK_PKCS5_PBKD2_PARAMS2, ulPasswordLen);
    let raw = params.get(at..at + size_of::<CK_ULONG>())?;
    Some(CK_ULONG::from_ne_bytes(raw.try_into().ok()?))
}

pub const PBKD2_220: Layout = Layout {
    name: "CK_PKCS5_PBKD2_PARAMS",
    size: size_of::<CK_PKCS5_PBKD2_PARAMS>(),
    fields: &[
        Field::Struct {
            at: offset_of!(CK_PKCS5_PBKD2_PARAMS, ulPasswordLen),
            layout: &ULONG,
        },
        bytes!(CK_PKCS5_PBKD2_PARAMS, pSaltSourceData, ulSaltSourceDataLen),
        bytes!(CK_PKCS5_PBKD2_PARAMS, pPrfData, ulPrfDataLen),
        Field::Bytes {
            at: offset_of!(CK_PKCS5_PBKD2_PARAMS, pPassword),
            len: Len::Pointed(offset_of!(CK_PKCS5_PBKD2_PARAMS, ulPasswordLen)),
        },
    ],
    fits: Some(|p| password_len_field(p).is_some_and(|v| v >= PBKD2_LENGTH_LIMIT)),
};
pub const PBKD2_30: Layout = Layout {
    name: "CK_PKCS5_PBKD2_PARAMS2",
    size: size_of::<CK_PKCS5_PBKD2_PARAMS2>(),
    fields: &[
        bytes!(CK_PKCS5_PBKD2_PARAMS2, pSaltSourceData, ulSaltSourceDataLen),
        bytes!(CK_PKCS5_PBKD2_PARAMS2, pPrfData, ulPrfDataLen),
        bytes!(CK_PKCS5_PBKD2_PARAMS2, pPassword, ulPasswordLen),
    ],
    fits: Some(|p| password_len_field(p).is_some_and(|v| v < PBKD2_LENGTH_LIMIT)),
};

layout!(SSL3_MASTER: CK_SSL3_MASTER_KEY_DERIVE_PARAMS {
    bytes!(CK_SSL3_MASTER_KEY_DERIVE_PARAMS, RandomInfo.pClientRandom, RandomInfo.ulClientRandomLen),
    bytes!(CK_SSL3_MASTER_KEY_DERIVE_PARAMS, RandomInfo.pServerRandom, RandomInfo.ulServerRandomLen),
    // Receives the client's version from the pre-master secret (NULL for the DH variants).
    Field::Output { at: offset_of!(CK_SSL3_MASTER_KEY_DERIVE_PARAMS, pVersion) },
});
layout!(TLS12_MASTER: CK_TLS12_MASTER_KEY_DERIVE_PARAMS {
    bytes!(CK_TLS12_MASTER_KEY_DERIVE_PARAMS, RandomInfo.pClientRandom, RandomInfo.ulClientRandomLen),
    bytes!(CK_TLS12_MASTER_KEY_DERIVE_PARAMS, RandomInfo.pServerRandom, RandomInfo.ulServerRandomLen),
    Field::Output { at: offset_of!(CK_TLS12_MASTER_KEY_DERIVE_PARAMS, pVersion) },
});
layout!(TLS12_EXTENDED_MASTER: CK_TLS12_EXTENDED_MASTER_KEY_DERIVE_PARAMS {
    bytes!(CK_TLS12_EXTENDED_MASTER_KEY_DERIVE_PARAMS, pSessionHash, ulSessionHashLen),
    Field::Output { at: offset_of!(CK_TLS12_EXTENDED_MASTER_KEY_DERIVE_PARAMS, pVersion) },
});
layout!(TLS_KDF: CK_TLS_KDF_PARAMS {
    bytes!(CK_TLS_KDF_PARAMS, pLabel, ulLabelLength),
    bytes!(CK_TLS_KDF_PARAMS, RandomInfo.pClientRandom, RandomInfo.ulClientRandomLen),
    bytes!(CK_TLS_KDF_PARAMS, RandomInfo.pServerRandom, RandomInfo.ulServerRandomLen),
    bytes!(CK_TLS_KDF_PARAMS, pContextData, ulContextDataLength),
});
layout!(WTLS_MASTER: CK_WTLS_MASTER_KEY_DERIVE_PARAMS {
    bytes!(CK_WTLS_MASTER_KEY_DERIVE_PARAMS, RandomInfo.pClientRandom, RandomInfo.ulClientRandomLen),
    bytes!(CK_WTLS_MASTER_KEY_DERIVE_PARAMS, RandomInfo.pServerRandom, RandomInfo.ulServerRandomLen),
    Field::Output { at: offset_of!(CK_WTLS_MASTER_KEY_DERIVE_PARAMS, pVersion) },
});
layout!(GOST_DERIVE: CK_GOSTR3410_DERIVE_PARAMS {
    bytes!(CK_GOSTR3410_DERIVE_PARAMS, pPublicData, ulPublicDataLen),
    bytes!(CK_GOSTR3410_DERIVE_PARAMS, pUKM, ulUKMLen),
});
layout!(GOST_KEY_WRAP: CK_GOSTR3410_KEY_WRAP_PARAMS {
    bytes!(CK_GOSTR3410_KEY_WRAP_PARAMS, pWrapOID, ulWrapOIDLen),
    bytes!(CK_GOSTR3410_KEY_WRAP_PARAMS, pUKM, ulUKMLen),
    Field::Handle { at: offset_of!(CK_GOSTR3410_KEY_WRAP_PARAMS, hKey), used: Used::Always },
});
layout!(RC5_CBC: CK_RC5_CBC_PARAMS {
    bytes!(CK_RC5_CBC_PARAMS, pIv, ulIvLen),
});
layout!(DSA_G_GEN: CK_DSA_PARAMETER_GEN_PARAM {
    bytes!(CK_DSA_PARAMETER_GEN_PARAM, pSeed, ulSeedLen),
});
layout!(DSA_PQ_GEN: CK_DSA_PARAMETER_GEN_PARAM {
    // Probabilistic and Shawe-Taylor generation return the seed they used here.
    Field::Output { at: offset_of!(CK_DSA_PARAMETER_GEN_PARAM, pSeed) },
});
layout!(PRF_DATA_PARAM: CK_PRF_DATA_PARAM {
    // Every defined type's value (counter and DKM formats, byte arrays) is pointer-free.
    bytes!(CK_PRF_DATA_PARAM, pValue, ulValueLen),
});
layout!(SP800_108: CK_SP800_108_KDF_PARAMS {
    Field::Array {
        at: offset_of!(CK_SP800_108_KDF_PARAMS, pDataParams),
        count: offset_of!(CK_SP800_108_KDF_PARAMS, ulNumberOfDataParams),
        layout: &PRF_DATA_PARAM,
    },
    // Each CK_DERIVED_KEY returns a new key's handle.
    Field::Output { at: offset_of!(CK_SP800_108_KDF_PARAMS, pAdditionalDerivedKeys) },
});
layout!(SP800_108_FEEDBACK: CK_SP800_108_FEEDBACK_KDF_PARAMS {
    Field::Array {
        at: offset_of!(CK_SP800_108_FEEDBACK_KDF_PARAMS, pDataParams),
        count: offset_of!(CK_SP800_108_FEEDBACK_KDF_PARAMS, ulNumberOfDataParams),
        layout: &PRF_DATA_PARAM,
    },
    bytes!(CK_SP800_108_FEEDBACK_KDF_PARAMS, pIV, ulIVLen),
    Field::Output { at: offset_of!(CK_SP800_108_FEEDBACK_KDF_PARAMS, pAdditionalDerivedKeys) },
});
layout!(OTP_PARAM: CK_OTP_PARAM {
    bytes!(CK_OTP_PARAM, pValue, ulValueLen),
});
layout!(OTP: CK_OTP_PARAMS {
    Field::Array {
        at: offset_of!(CK_OTP_PARAMS, pParams),
        count: offset_of!(CK_OTP_PARAMS, ulCount),
        layout: &OTP_PARAM,
    },
});
layout!(CMS_SIG: CK_CMS_SIG_PARAMS {
    // CK_INVALID_HANDLE when no certificate is to be included.
    Field::Handle { at: offset_of!(CK_CMS_SIG_PARAMS, certificateHandle), used: Used::Always },
    Field::Mechanism { at: offset_of!(CK_CMS_SIG_PARAMS, pSigningMechanism) },
    Field::Mechanism { at: offset_of!(CK_CMS_SIG_PARAMS, pDigestMechanism) },
    Field::Bytes { at: offset_of!(CK_CMS_SIG_PARAMS, pContentType), len: Len::CString },
    bytes!(CK_CMS_SIG_PARAMS, pRequestedAttributes, ulRequestedAttributesLen),
    bytes!(CK_CMS_SIG_PARAMS, pRequiredAttributes, ulRequiredAttributesLen),
});
layout!(KIP: CK_KIP_PARAMS {
    Field::Mechanism { at: offset_of!(CK_KIP_PARAMS, pMechanism) },
    Field::Handle { at: offset_of!(CK_KIP_PARAMS, hKey), used: Used::Always },
    bytes!(CK_KIP_PARAMS, pSeed, ulSeedLen),
});
layout!(IKE_PRF: CK_IKE_PRF_DERIVE_PARAMS {
    bytes!(CK_IKE_PRF_DERIVE_PARAMS, pNi, ulNiLen),
    bytes!(CK_IKE_PRF_DERIVE_PARAMS, pNr, ulNrLen),
    Field::Handle {
        at: offset_of!(CK_IKE_PRF_DERIVE_PARAMS, hNewKey),
        used: Used::IfTrue(offset_of!(CK_IKE_PRF_DERIVE_PARAMS, bRekey)),
    },
});
layout!(IKE1_EXTENDED: CK_IKE1_EXTENDED_DERIVE_PARAMS {
    Field::Handle {
        at: offset_of!(CK_IKE1_EXTENDED_DERIVE_PARAMS, hKeygxy),
        used: Used::IfTrue(offset_of!(CK_IKE1_EXTENDED_DERIVE_PARAMS, bHasKeygxy)),
    },
    bytes!(CK_IKE1_EXTENDED_DERIVE_PARAMS, pExtraData, ulExtraDataLen),
});
layout!(IKE2_PRF_PLUS: CK_IKE2_PRF_PLUS_DERIVE_PARAMS {
    Field::Handle {
        at: offset_of!(CK_IKE2_PRF_PLUS_DERIVE_PARAMS, hSeedKey),
        used: Used::IfTrue(offset_of!(CK_IKE2_PRF_PLUS_DERIVE_PARAMS, bHasSeedKey)),
    },
    bytes!(CK_IKE2_PRF_PLUS_DERIVE_PARAMS, pSeedData, ulSeedDataLen),
});

/// Every layout above, for the tests that check each one.
#[cfg(test)]
pub static ALL: &[&Layout] = &[
    &ULONG,
    &GCM,
    &GCM_240,
    &CCM,
    &CHACHA20,
    &SALSA20,
    &AEAD_POLY1305,
    &OAEP,
    &RSA_AES_KEY_WRAP,
    &ECDH1,
    &ECDH_AES_KEY_WRAP,
    &X9_42_DH1,
    &KEA,
    &STRING_DATA,
    &DES_CBC_ENCRYPT_DATA,
    &AES_CBC_ENCRYPT_DATA,
    &ARIA_CBC_ENCRYPT_DATA,
    &CAMELLIA_CBC_ENCRYPT_DATA,
    &SEED_CBC_ENCRYPT_DATA,
    &EDDSA,
    &SIGN_CONTEXT,
    &HASH_SIGN_CONTEXT,
    &HKDF,
    &PBE,
    &PBKD2_220,
    &PBKD2_30,
    &SSL3_MASTER,
    &TLS12_MASTER,
    &TLS12_EXTENDED_MASTER,
    &TLS_KDF,
    &WTLS_MASTER,
    &GOST_DERIVE,
    &GOST_KEY_WRAP,
    &RC5_CBC,
    &DSA_G_GEN,
    &DSA_PQ_GEN,
    &PRF_DATA_PARAM,
    &SP800_108,
    &SP800_108_FEEDBACK,
    &OTP_PARAM,
    &OTP,
    &CMS_SIG,
    &KIP,
    &IKE_PRF,
    &IKE1_EXTENDED,
    &IKE2_PRF_PLUS,
];
