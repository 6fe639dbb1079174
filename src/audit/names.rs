//! Names of the PKCS#11 constants an audit record shows (`CKO_SECRET_KEY`, `CKA_LABEL`, ...),
//! built from the cryptoki-sys constants so a name never drifts from its value. A value without
//! a name here is shown in hex.

use cryptoki_sys::*;

macro_rules! table {
    ($fn:ident, $ty:ty, [$($name:ident),* $(,)?]) => {
        /// The constant's name, if it is one this table knows.
        pub fn $fn(v: $ty) -> Option<&'static str> {
            match v {
                $(x if x == $name => Some(stringify!($name)),)*
                _ => None,
            }
        }
    };
}

table!(
    class_name,
    CK_OBJECT_CLASS,
    [
        CKO_DATA,
        CKO_CERTIFICATE,
        CKO_PUBLIC_KEY,
        CKO_PRIVATE_KEY,
        CKO_SECRET_KEY,
        CKO_HW_FEATURE,
        CKO_DOMAIN_PARAMETERS,
        CKO_MECHANISM,
        CKO_OTP_KEY,
        CKO_PROFILE,
    ]
);

table!(
    key_type_name,
    CK_KEY_TYPE,
    [
        CKK_RSA,
        CKK_DSA,
        CKK_DH,
        CKK_EC,
        CKK_X9_42_DH,
        CKK_KEA,
        CKK_GENERIC_SECRET,
        CKK_RC2,
        CKK_RC4,
        CKK_DES,
        CKK_DES2,
        CKK_DES3,
        CKK_CAST128,
        CKK_AES,
        CKK_BLOWFISH,
        CKK_TWOFISH,
        CKK_SECURID,
        CKK_HOTP,
        CKK_ACTI,
        CKK_CAMELLIA,
        CKK_ARIA,
        CKK_SHA256_HMAC,
        CKK_SHA384_HMAC,
        CKK_SHA512_HMAC,
        CKK_SHA224_HMAC,
        CKK_GOSTR3410,
        CKK_GOSTR3411,
        CKK_GOST28147,
        CKK_EC_EDWARDS,
        CKK_EC_MONTGOMERY,
    ]
);

table!(
    attribute_name,
    CK_ATTRIBUTE_TYPE,
    [
        CKA_CLASS,
        CKA_TOKEN,
        CKA_PRIVATE,
        CKA_LABEL,
        CKA_APPLICATION,
        CKA_VALUE,
        CKA_OBJECT_ID,
        CKA_CERTIFICATE_TYPE,
        CKA_ISSUER,
        CKA_SERIAL_NUMBER,
        CKA_TRUSTED,
        CKA_CERTIFICATE_CATEGORY,
        CKA_CHECK_VALUE,
        CKA_KEY_TYPE,
        CKA_SUBJECT,
        CKA_ID,
        CKA_SENSITIVE,
        CKA_ENCRYPT,
        CKA_DECRYPT,
        CKA_WRAP,
        CKA_UNWRAP,
        CKA_SIGN,
        CKA_SIGN_RECOVER,
        CKA_VERIFY,
        CKA_VERIFY_RECOVER,
        CKA_DERIVE,
        CKA_START_DATE,
        CKA_END_DATE,
        CKA_MODULUS,
        CKA_MODULUS_BITS,
        CKA_PUBLIC_EXPONENT,
        CKA_PRIVATE_EXPONENT,
        CKA_PRIME_1,
        CKA_PRIME_2,
        CKA_EXPONENT_1,
        CKA_EXPONENT_2,
        CKA_COEFFICIENT,
        CKA_PUBLIC_KEY_INFO,
        CKA_PRIME,
        CKA_SUBPRIME,
        CKA_BASE,
        CKA_VALUE_BITS,
        CKA_VALUE_LEN,
        CKA_EXTRACTABLE,
        CKA_LOCAL,
        CKA_NEVER_EXTRACTABLE,
        CKA_ALWAYS_SENSITIVE,
        CKA_KEY_GEN_MECHANISM,
        CKA_MODIFIABLE,
        CKA_COPYABLE,
        CKA_DESTROYABLE,
        CKA_EC_PARAMS,
        CKA_EC_POINT,
        CKA_ALWAYS_AUTHENTICATE,
        CKA_WRAP_WITH_TRUSTED,
        CKA_WRAP_TEMPLATE,
        CKA_UNWRAP_TEMPLATE,
        CKA_DERIVE_TEMPLATE,
        CKA_ALLOWED_MECHANISMS,
    ]
);

table!(
    mechanism_name,
    CK_MECHANISM_TYPE,
    [
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_RSA_PKCS,
        CKM_RSA_X_509,
        CKM_SHA1_RSA_PKCS,
        CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS,
        CKM_SHA512_RSA_PKCS,
        CKM_RSA_PKCS_OAEP,
        CKM_RSA_PKCS_PSS,
        CKM_SHA1_RSA_PKCS_PSS,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_SHA384_RSA_PKCS_PSS,
        CKM_SHA512_RSA_PKCS_PSS,
        CKM_EC_KEY_PAIR_GEN,
        CKM_ECDSA,
        CKM_ECDSA_SHA1,
        CKM_ECDSA_SHA256,
        CKM_ECDSA_SHA384,
        CKM_ECDSA_SHA512,
        CKM_ECDH1_DERIVE,
        CKM_ECDH1_COFACTOR_DERIVE,
        CKM_EC_EDWARDS_KEY_PAIR_GEN,
        CKM_EDDSA,
        CKM_GENERIC_SECRET_KEY_GEN,
        CKM_AES_KEY_GEN,
        CKM_AES_ECB,
        CKM_AES_CBC,
        CKM_AES_CBC_PAD,
        CKM_AES_CTR,
        CKM_AES_GCM,
        CKM_AES_CMAC,
        CKM_AES_KEY_WRAP,
        CKM_AES_KEY_WRAP_PAD,
        CKM_AES_ECB_ENCRYPT_DATA,
        CKM_AES_CBC_ENCRYPT_DATA,
        CKM_DES3_KEY_GEN,
        CKM_DES3_ECB,
        CKM_DES3_CBC,
        CKM_SHA_1,
        CKM_SHA256,
        CKM_SHA384,
        CKM_SHA512,
        CKM_SHA_1_HMAC,
        CKM_SHA256_HMAC,
        CKM_SHA384_HMAC,
        CKM_SHA512_HMAC,
        CKM_DH_PKCS_DERIVE,
        CKM_CONCATENATE_BASE_AND_KEY,
        CKM_CONCATENATE_BASE_AND_DATA,
        CKM_XOR_BASE_AND_DATA,
        CKM_EXTRACT_KEY_FROM_KEY,
        CKM_SHA256_KEY_DERIVATION,
    ]
);

table!(
    user_name,
    CK_USER_TYPE,
    [CKU_SO, CKU_USER, CKU_CONTEXT_SPECIFIC]
);

/// `name` or, without one, `0x` and the value in hex.
pub fn or_hex(name: Option<&'static str>, v: CK_ULONG) -> String {
    match name {
        Some(n) => n.to_string(),
        None => format!("0x{v:x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_constants() {
        assert_eq!(class_name(CKO_SECRET_KEY), Some("CKO_SECRET_KEY"));
        assert_eq!(key_type_name(CKK_AES), Some("CKK_AES"));
        assert_eq!(attribute_name(CKA_LABEL), Some("CKA_LABEL"));
        assert_eq!(mechanism_name(CKM_SHA256_HMAC), Some("CKM_SHA256_HMAC"));
        assert_eq!(user_name(CKU_USER), Some("CKU_USER"));
        assert_eq!(
            or_hex(attribute_name(0x8000_0001), 0x8000_0001),
            "0x80000001"
        );
    }
}
