//! CK_RV names, for logs and messages.
//!
//! The table is every `CKR_*` return value of PKCS#11 3.0 (and the 3.1 additions cryptoki-sys
//! carries), built from the cryptoki-sys constants so a name can never drift from its value.

use cryptoki_sys::*;

macro_rules! rv_table {
    ($($name:ident),* $(,)?) => {
        /// `(value, name)` of every standard return value, in ascending value order.
        pub const RV_NAMES: &[(CK_RV, &str)] = &[$(($name, stringify!($name))),*];
    };
}

rv_table![
    CKR_OK,
    CKR_CANCEL,
    CKR_HOST_MEMORY,
    CKR_SLOT_ID_INVALID,
    CKR_GENERAL_ERROR,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_NO_EVENT,
    CKR_NEED_TO_CREATE_THREADS,
    CKR_CANT_LOCK,
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_ACTION_PROHIBITED,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_ENCRYPTED_DATA_LEN_RANGE,
    CKR_AEAD_DECRYPT_FAILED,
    CKR_FUNCTION_CANCELED,
    CKR_FUNCTION_NOT_PARALLEL,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_SIZE_RANGE,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_NOT_NEEDED,
    CKR_KEY_CHANGED,
    CKR_KEY_NEEDED,
    CKR_KEY_INDIGESTIBLE,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_KEY_NOT_WRAPPABLE,
    CKR_KEY_UNEXTRACTABLE,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_OPERATION_ACTIVE,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_SESSION_HANDLE_INVALID,
    CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    CKR_SESSION_READ_ONLY,
    CKR_SESSION_EXISTS,
    CKR_SESSION_READ_ONLY_EXISTS,
    CKR_SESSION_READ_WRITE_SO_EXISTS,
    CKR_SIGNATURE_INVALID,
    CKR_SIGNATURE_LEN_RANGE,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_TOKEN_NOT_PRESENT,
    CKR_TOKEN_NOT_RECOGNIZED,
    CKR_TOKEN_WRITE_PROTECTED,
    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    CKR_UNWRAPPING_KEY_SIZE_RANGE,
    CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_USER_TYPE_INVALID,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_TOO_MANY_TYPES,
    CKR_WRAPPED_KEY_INVALID,
    CKR_WRAPPED_KEY_LEN_RANGE,
    CKR_WRAPPING_KEY_HANDLE_INVALID,
    CKR_WRAPPING_KEY_SIZE_RANGE,
    CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_RANDOM_SEED_NOT_SUPPORTED,
    CKR_RANDOM_NO_RNG,
    CKR_DOMAIN_PARAMS_INVALID,
    CKR_CURVE_NOT_SUPPORTED,
    CKR_BUFFER_TOO_SMALL,
    CKR_SAVED_STATE_INVALID,
    CKR_INFORMATION_SENSITIVE,
    CKR_STATE_UNSAVEABLE,
    CKR_CRYPTOKI_NOT_INITIALIZED,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_MUTEX_BAD,
    CKR_MUTEX_NOT_LOCKED,
    CKR_NEW_PIN_MODE,
    CKR_NEXT_OTP,
    CKR_EXCEEDED_MAX_ITERATIONS,
    CKR_FIPS_SELF_TEST_FAILED,
    CKR_LIBRARY_LOAD_FAILED,
    CKR_PIN_TOO_WEAK,
    CKR_PUBLIC_KEY_INVALID,
    CKR_FUNCTION_REJECTED,
    CKR_TOKEN_RESOURCE_EXCEEDED,
    CKR_OPERATION_CANCEL_FAILED,
    CKR_KEY_EXHAUSTED,
    CKR_PENDING,
    CKR_SESSION_ASYNC_NOT_SUPPORTED,
    CKR_SEED_RANDOM_REQUIRED,
    CKR_OPERATION_NOT_VALIDATED,
    CKR_TOKEN_NOT_INITIALIZED,
    CKR_PARAMETER_SET_NOT_SUPPORTED,
];

/// `CKR_*` name of `rv`, or "CKR_VENDOR_DEFINED" (any value at or above `CKR_VENDOR_DEFINED`) or
/// "CKR_UNKNOWN" (a value in the standard range that no standard defines).
pub fn rv_name(rv: CK_RV) -> &'static str {
    if rv >= CKR_VENDOR_DEFINED {
        return "CKR_VENDOR_DEFINED";
    }
    match RV_NAMES.binary_search_by_key(&rv, |&(value, _)| value) {
        Ok(i) => RV_NAMES[i].1,
        Err(_) => "CKR_UNKNOWN",
    }
}

/// `0x00000030 : CKR_DEVICE_ERROR`: the code as the HA log prints it (seed 003), 8 hex digits.
pub fn rv_code(rv: CK_RV) -> String {
    format!("0x{rv:08x} : {}", rv_name(rv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(RV_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(RV_NAMES.len(), 104);
    }

    #[test]
    fn names() {
        assert_eq!(rv_name(0), "CKR_OK");
        assert_eq!(rv_name(0x30), "CKR_DEVICE_ERROR");
        assert_eq!(rv_name(0xA0), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(0x1B), "CKR_ACTION_PROHIBITED");
        assert_eq!(rv_name(0x150), "CKR_BUFFER_TOO_SMALL");
        assert_eq!(rv_name(0x1B9), "CKR_PUBLIC_KEY_INVALID");
        assert_eq!(rv_name(0x4), "CKR_UNKNOWN");
        assert_eq!(rv_name(0x8000_0000), "CKR_VENDOR_DEFINED");
        assert_eq!(rv_name(0x8000_0104), "CKR_VENDOR_DEFINED");
    }

    #[test]
    fn code() {
        assert_eq!(rv_code(0x30), "0x00000030 : CKR_DEVICE_ERROR");
        assert_eq!(rv_code(0x8000_0001), "0x80000001 : CKR_VENDOR_DEFINED");
    }
}
