//! Which parameter each mechanism takes: one table from mechanism to [`Param`], over the
//! struct descriptions of [`super::layouts`]. The policy each entry implements is described in
//! the parent module's documentation.

use super::layouts::*;
use cryptoki_sys::*;

/// What a mechanism's parameter is.
#[derive(Debug, Clone, Copy)]
pub enum Param {
    /// Bytes without pointers (IVs, CK_AES_CTR_PARAMS, CK_RSA_PKCS_PSS_PARAMS,
    /// CK_MAC_GENERAL_PARAMS, ...), copied as they are; the member judges their size.
    Bytes,
    /// One of these structs, chosen by size (and `fits`); any other size is refused.
    Struct(&'static [&'static Layout]),
    /// One of these structs when the size matches one, otherwise bytes (CKM_AES_GMAC: a bare
    /// IV by the specification, CK_GCM_PARAMS for some vendors).
    StructOrBytes(&'static [&'static Layout]),
    /// The mechanism returns data or object handles through its parameter, or always names an
    /// object by handle: p11ha cannot serve it (CKR_MECHANISM_INVALID).
    Refused,
    /// p11ha does not know this parameter (vendor-defined and unlisted mechanisms): a
    /// non-empty parameter is refused (CKR_MECHANISM_PARAM_INVALID).
    Unknown,
}

/// The parameter of each mechanism p11ha knows; everything else is [`Param::Unknown`].
pub fn param(mechanism: CK_MECHANISM_TYPE) -> Param {
    use Param::*;
    match mechanism {
        // Output through the parameter: key handles and IVs (CK_SSL3_KEY_MAT_OUT,
        // CK_WTLS_KEY_MAT_OUT), PRF output (pOutput, pulOutputLen), SET OAEP's pX on unwrap.
        CKM_SSL3_KEY_AND_MAC_DERIVE
        | CKM_TLS_KEY_AND_MAC_DERIVE
        | CKM_TLS12_KEY_AND_MAC_DERIVE
        | CKM_TLS12_KEY_SAFE_DERIVE
        | CKM_WTLS_SERVER_KEY_AND_MAC_DERIVE
        | CKM_WTLS_CLIENT_KEY_AND_MAC_DERIVE
        | CKM_TLS_PRF
        | CKM_WTLS_PRF
        | CKM_KEY_WRAP_SET_OAEP => Refused,
        // Always name an object by handle (the parameter of CKM_CONCATENATE_BASE_AND_KEY is
        // one), or return a secret and handles (X3DH, X2Ratchet).
        CKM_CONCATENATE_BASE_AND_KEY
        | CKM_ECMQV_DERIVE
        | CKM_X9_42_DH_HYBRID_DERIVE
        | CKM_X9_42_MQV_DERIVE
        | CKM_IKE1_PRF_DERIVE
        | CKM_X3DH_INITIALIZE
        | CKM_X3DH_RESPOND
        | CKM_X2RATCHET_INITIALIZE
        | CKM_X2RATCHET_RESPOND => Refused,

        CKM_AES_GCM => Struct(&[&GCM, &GCM_240]),
        CKM_AES_GMAC => StructOrBytes(&[&GCM]),
        CKM_AES_CCM => Struct(&[&CCM]),
        CKM_CHACHA20 => Struct(&[&CHACHA20]),
        CKM_SALSA20 => Struct(&[&SALSA20]),
        CKM_CHACHA20_POLY1305 | CKM_SALSA20_POLY1305 => Struct(&[&AEAD_POLY1305]),
        CKM_RSA_PKCS_OAEP => Struct(&[&OAEP]),
        CKM_RSA_AES_KEY_WRAP => Struct(&[&RSA_AES_KEY_WRAP]),
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => Struct(&[&ECDH1]),
        CKM_ECDH_AES_KEY_WRAP | CKM_ECDH_X_AES_KEY_WRAP | CKM_ECDH_COF_AES_KEY_WRAP => {
            Struct(&[&ECDH_AES_KEY_WRAP])
        }
        CKM_X9_42_DH_DERIVE => Struct(&[&X9_42_DH1]),
        CKM_KEA_KEY_DERIVE | CKM_KEA_DERIVE => Struct(&[&KEA]),
        CKM_CONCATENATE_BASE_AND_DATA
        | CKM_CONCATENATE_DATA_AND_BASE
        | CKM_XOR_BASE_AND_DATA
        | CKM_DES_ECB_ENCRYPT_DATA
        | CKM_DES3_ECB_ENCRYPT_DATA
        | CKM_AES_ECB_ENCRYPT_DATA
        | CKM_ARIA_ECB_ENCRYPT_DATA
        | CKM_CAMELLIA_ECB_ENCRYPT_DATA
        | CKM_SEED_ECB_ENCRYPT_DATA => Struct(&[&STRING_DATA]),
        CKM_DES_CBC_ENCRYPT_DATA | CKM_DES3_CBC_ENCRYPT_DATA => Struct(&[&DES_CBC_ENCRYPT_DATA]),
        CKM_AES_CBC_ENCRYPT_DATA => Struct(&[&AES_CBC_ENCRYPT_DATA]),
        CKM_ARIA_CBC_ENCRYPT_DATA => Struct(&[&ARIA_CBC_ENCRYPT_DATA]),
        CKM_CAMELLIA_CBC_ENCRYPT_DATA => Struct(&[&CAMELLIA_CBC_ENCRYPT_DATA]),
        CKM_SEED_CBC_ENCRYPT_DATA => Struct(&[&SEED_CBC_ENCRYPT_DATA]),
        CKM_EDDSA => Struct(&[&EDDSA]),
        CKM_ML_DSA
        | CKM_SLH_DSA
        | CKM_HASH_ML_DSA_SHA224
        | CKM_HASH_ML_DSA_SHA256
        | CKM_HASH_ML_DSA_SHA384
        | CKM_HASH_ML_DSA_SHA512
        | CKM_HASH_ML_DSA_SHA3_224
        | CKM_HASH_ML_DSA_SHA3_256
        | CKM_HASH_ML_DSA_SHA3_384
        | CKM_HASH_ML_DSA_SHA3_512
        | CKM_HASH_ML_DSA_SHAKE128
        | CKM_HASH_ML_DSA_SHAKE256
        | CKM_HASH_SLH_DSA_SHA224
        | CKM_HASH_SLH_DSA_SHA256
        | CKM_HASH_SLH_DSA_SHA384
        | CKM_HASH_SLH_DSA_SHA512
        | CKM_HASH_SLH_DSA_SHA3_224
        | CKM_HASH_SLH_DSA_SHA3_256
        | CKM_HASH_SLH_DSA_SHA3_384
        | CKM_HASH_SLH_DSA_SHA3_512
        | CKM_HASH_SLH_DSA_SHAKE128
        | CKM_HASH_SLH_DSA_SHAKE256 => Struct(&[&SIGN_CONTEXT]),
        CKM_HASH_ML_DSA | CKM_HASH_SLH_DSA => Struct(&[&HASH_SIGN_CONTEXT]),
        CKM_HKDF_DERIVE | CKM_HKDF_DATA => Struct(&[&HKDF]),
        CKM_PKCS5_PBKD2 => Struct(&[&PBKD2_30, &PBKD2_220]),
        CKM_PBE_MD2_DES_CBC
        | CKM_PBE_MD5_DES_CBC
        | CKM_PBE_MD5_CAST_CBC
        | CKM_PBE_MD5_CAST3_CBC
        | CKM_PBE_MD5_CAST128_CBC
        | CKM_PBE_SHA1_CAST128_CBC
        | CKM_PBE_SHA1_RC4_128
        | CKM_PBE_SHA1_RC4_40
        | CKM_PBE_SHA1_DES3_EDE_CBC
        | CKM_PBE_SHA1_DES2_EDE_CBC
        | CKM_PBE_SHA1_RC2_128_CBC
        | CKM_PBE_SHA1_RC2_40_CBC
        | CKM_PBA_SHA1_WITH_SHA1_HMAC => Struct(&[&PBE]),
        CKM_SSL3_MASTER_KEY_DERIVE
        | CKM_SSL3_MASTER_KEY_DERIVE_DH
        | CKM_TLS_MASTER_KEY_DERIVE
        | CKM_TLS_MASTER_KEY_DERIVE_DH => Struct(&[&SSL3_MASTER]),
        CKM_TLS12_MASTER_KEY_DERIVE | CKM_TLS12_MASTER_KEY_DERIVE_DH => Struct(&[&TLS12_MASTER]),
        CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE | CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE_DH => {
            Struct(&[&TLS12_EXTENDED_MASTER])
        }
        CKM_TLS_KDF | CKM_TLS12_KDF => Struct(&[&TLS_KDF]),
        CKM_WTLS_MASTER_KEY_DERIVE | CKM_WTLS_MASTER_KEY_DERIVE_DH_ECC => Struct(&[&WTLS_MASTER]),
        CKM_GOSTR3410_DERIVE => Struct(&[&GOST_DERIVE]),
        CKM_GOSTR3410_KEY_WRAP => Struct(&[&GOST_KEY_WRAP]),
        CKM_RC5_CBC | CKM_RC5_CBC_PAD => Struct(&[&RC5_CBC]),
        CKM_DSA_FIPS_G_GEN => Struct(&[&DSA_G_GEN]),
        CKM_DSA_PROBABILISTIC_PARAMETER_GEN | CKM_DSA_SHAWE_TAYLOR_PARAMETER_GEN => {
            Struct(&[&DSA_PQ_GEN])
        }
        CKM_SP800_108_COUNTER_KDF | CKM_SP800_108_DOUBLE_PIPELINE_KDF => Struct(&[&SP800_108]),
        CKM_SP800_108_FEEDBACK_KDF => Struct(&[&SP800_108_FEEDBACK]),
        CKM_SECURID | CKM_HOTP | CKM_ACTI => Struct(&[&OTP]),
        CKM_CMS_SIG => Struct(&[&CMS_SIG]),
        CKM_KIP_DERIVE | CKM_KIP_WRAP | CKM_KIP_MAC => Struct(&[&KIP]),
        CKM_IKE_PRF_DERIVE => Struct(&[&IKE_PRF]),
        CKM_IKE1_EXTENDED_DERIVE => Struct(&[&IKE1_EXTENDED]),
        CKM_IKE2_PRF_PLUS_DERIVE => Struct(&[&IKE2_PRF_PLUS]),

        m if BYTES.contains(&m) => Bytes,
        _ => Unknown,
    }
}

/// Mechanisms whose parameter holds no pointer: an IV or counter block, a nonce, a version, a
/// DER-encoded OID, a public value, or a struct of integers.
pub static BYTES: &[CK_MECHANISM_TYPE] = &[
    // IVs (CBC, CFB, OFB, CTS, XTS tweak, key-wrap initial values, GOST IVs and UKM).
    CKM_DES_CBC,
    CKM_DES_CBC_PAD,
    CKM_DES3_CBC,
    CKM_DES3_CBC_PAD,
    CKM_CDMF_CBC,
    CKM_CDMF_CBC_PAD,
    CKM_DES_OFB64,
    CKM_DES_OFB8,
    CKM_DES_CFB64,
    CKM_DES_CFB8,
    CKM_CAST_CBC,
    CKM_CAST_CBC_PAD,
    CKM_CAST3_CBC,
    CKM_CAST3_CBC_PAD,
    CKM_CAST128_CBC,
    CKM_CAST128_CBC_PAD,
    CKM_IDEA_CBC,
    CKM_IDEA_CBC_PAD,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_OFB,
    CKM_AES_CFB1,
    CKM_AES_CFB8,
    CKM_AES_CFB64,
    CKM_AES_CFB128,
    CKM_AES_CTS,
    CKM_AES_XTS,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_PAD,
    CKM_AES_KEY_WRAP_KWP,
    CKM_CAMELLIA_CBC,
    CKM_CAMELLIA_CBC_PAD,
    CKM_ARIA_CBC,
    CKM_ARIA_CBC_PAD,
    CKM_SEED_CBC,
    CKM_SEED_CBC_PAD,
    CKM_BLOWFISH_CBC,
    CKM_BLOWFISH_CBC_PAD,
    CKM_TWOFISH_CBC,
    CKM_TWOFISH_CBC_PAD,
    CKM_GOST28147,
    CKM_GOST28147_MAC,
    CKM_GOST28147_KEY_WRAP,
    // CK_AES_CTR_PARAMS, CK_CAMELLIA_CTR_PARAMS.
    CKM_AES_CTR,
    CKM_CAMELLIA_CTR,
    // CK_RC2_PARAMS, CK_RC2_CBC_PARAMS, CK_RC2_MAC_GENERAL_PARAMS, CK_RC5_PARAMS,
    // CK_RC5_MAC_GENERAL_PARAMS.
    CKM_RC2_ECB,
    CKM_RC2_MAC,
    CKM_RC2_CBC,
    CKM_RC2_CBC_PAD,
    CKM_RC2_MAC_GENERAL,
    CKM_RC5_ECB,
    CKM_RC5_MAC,
    CKM_RC5_MAC_GENERAL,
    // CK_MAC_GENERAL_PARAMS (the MAC length; SHA-512/t's t).
    CKM_DES_MAC_GENERAL,
    CKM_DES3_MAC_GENERAL,
    CKM_DES3_CMAC_GENERAL,
    CKM_CDMF_MAC_GENERAL,
    CKM_CAST_MAC_GENERAL,
    CKM_CAST3_MAC_GENERAL,
    CKM_CAST128_MAC_GENERAL,
    CKM_IDEA_MAC_GENERAL,
    CKM_AES_MAC_GENERAL,
    CKM_AES_CMAC_GENERAL,
    CKM_CAMELLIA_MAC_GENERAL,
    CKM_ARIA_MAC_GENERAL,
    CKM_SEED_MAC_GENERAL,
    CKM_SSL3_MD5_MAC,
    CKM_SSL3_SHA1_MAC,
    CKM_MD2_HMAC_GENERAL,
    CKM_MD5_HMAC_GENERAL,
    CKM_SHA_1_HMAC_GENERAL,
    CKM_RIPEMD128_HMAC_GENERAL,
    CKM_RIPEMD160_HMAC_GENERAL,
    CKM_SHA224_HMAC_GENERAL,
    CKM_SHA256_HMAC_GENERAL,
    CKM_SHA384_HMAC_GENERAL,
    CKM_SHA512_HMAC_GENERAL,
    CKM_SHA512_224_HMAC_GENERAL,
    CKM_SHA512_256_HMAC_GENERAL,
    CKM_SHA512_T,
    CKM_SHA512_T_HMAC,
    CKM_SHA512_T_HMAC_GENERAL,
    CKM_SHA512_T_KEY_DERIVATION,
    CKM_SHA3_224_HMAC_GENERAL,
    CKM_SHA3_256_HMAC_GENERAL,
    CKM_SHA3_384_HMAC_GENERAL,
    CKM_SHA3_512_HMAC_GENERAL,
    CKM_BLAKE2B_160_HMAC_GENERAL,
    CKM_BLAKE2B_256_HMAC_GENERAL,
    CKM_BLAKE2B_384_HMAC_GENERAL,
    CKM_BLAKE2B_512_HMAC_GENERAL,
    // CK_RSA_PKCS_PSS_PARAMS.
    CKM_RSA_PKCS_PSS,
    CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA224_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
    CKM_SHA3_224_RSA_PKCS_PSS,
    CKM_SHA3_256_RSA_PKCS_PSS,
    CKM_SHA3_384_RSA_PKCS_PSS,
    CKM_SHA3_512_RSA_PKCS_PSS,
    // The other party's public value (CKM_DH_PKCS_DERIVE), CK_EXTRACT_PARAMS, CK_VERSION,
    // WTLS's version byte, CK_TLS_MAC_PARAMS, CK_XEDDSA_PARAMS, GOST's DER-encoded OIDs.
    CKM_DH_PKCS_DERIVE,
    CKM_EXTRACT_KEY_FROM_KEY,
    CKM_SSL3_PRE_MASTER_KEY_GEN,
    CKM_TLS_PRE_MASTER_KEY_GEN,
    CKM_WTLS_PRE_MASTER_KEY_GEN,
    CKM_TLS_MAC,
    CKM_TLS12_MAC,
    CKM_TLS10_MAC_SERVER,
    CKM_TLS10_MAC_CLIENT,
    CKM_XEDDSA,
    CKM_GOSTR3410,
    CKM_GOSTR3410_WITH_GOSTR3411,
    CKM_GOSTR3411,
    CKM_GOSTR3411_HMAC,
];
