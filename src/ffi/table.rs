//! The function tables (PKCS#11 2.40 and 3.0, built from one list) and the three exported
//! functions that hand them out. No other C_ symbol is exported: a host that defines its own
//! C_Initialize cannot hijack ours.

use super::args::{deliver_list, out};
use super::entry::guard;
use super::functions::*;
use cryptoki_sys::*;
use std::ffi::{c_void, CStr};

/// 3.0 functions p11ha does not offer: message-based crypto, C_LoginUser, C_SessionCancel.
/// Members are reached through their 2.40 tables, so there is nothing to forward these to.
macro_rules! not_supported {
    ($($name:ident($($ty:ty),*);)*) => {
        $(
            #[allow(non_snake_case)]
            unsafe extern "C" fn $name($(_: $ty),*) -> CK_RV {
                CKR_FUNCTION_NOT_SUPPORTED
            }
        )*
    };
}

type P = *mut c_void;
type B = *mut CK_BYTE;
type L = CK_ULONG;
type H = CK_SESSION_HANDLE;
not_supported! {
    C_LoginUser(H, CK_USER_TYPE, *mut CK_UTF8CHAR, L, *mut CK_UTF8CHAR, L);
    C_SessionCancel(H, CK_FLAGS);
    C_MessageEncryptInit(H, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_EncryptMessage(H, P, L, B, L, B, L, B, *mut L);
    C_EncryptMessageBegin(H, P, L, B, L);
    C_EncryptMessageNext(H, P, L, B, L, B, *mut L, CK_FLAGS);
    C_MessageEncryptFinal(H);
    C_MessageDecryptInit(H, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_DecryptMessage(H, P, L, B, L, B, L, B, *mut L);
    C_DecryptMessageBegin(H, P, L, B, L);
    C_DecryptMessageNext(H, P, L, B, L, B, *mut L, CK_FLAGS);
    C_MessageDecryptFinal(H);
    C_MessageSignInit(H, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_SignMessage(H, P, L, B, L, B, *mut L);
    C_SignMessageBegin(H, P, L);
    C_SignMessageNext(H, P, L, B, L, B, *mut L);
    C_MessageSignFinal(H);
    C_MessageVerifyInit(H, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_VerifyMessage(H, P, L, B, L, B, L);
    C_VerifyMessageBegin(H, P, L);
    C_VerifyMessageNext(H, P, L, B, L, B, L);
    C_MessageVerifyFinal(H);
}

macro_rules! tables {
    ($($f:ident),* $(,)?) => {
        pub(crate) static FUNCTIONS_2_40: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            C_GetFunctionList: Some(C_GetFunctionList),
            $($f: Some($f),)*
        };
        pub(crate) static FUNCTIONS_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: CK_VERSION { major: 3, minor: 0 },
            C_GetFunctionList: Some(C_GetFunctionList),
            $($f: Some($f),)*
            C_GetInterfaceList: Some(C_GetInterfaceList),
            C_GetInterface: Some(C_GetInterface),
            C_LoginUser: Some(C_LoginUser),
            C_SessionCancel: Some(C_SessionCancel),
            C_MessageEncryptInit: Some(C_MessageEncryptInit),
            C_EncryptMessage: Some(C_EncryptMessage),
            C_EncryptMessageBegin: Some(C_EncryptMessageBegin),
            C_EncryptMessageNext: Some(C_EncryptMessageNext),
            C_MessageEncryptFinal: Some(C_MessageEncryptFinal),
            C_MessageDecryptInit: Some(C_MessageDecryptInit),
            C_DecryptMessage: Some(C_DecryptMessage),
            C_DecryptMessageBegin: Some(C_DecryptMessageBegin),
            C_DecryptMessageNext: Some(C_DecryptMessageNext),
            C_MessageDecryptFinal: Some(C_MessageDecryptFinal),
            C_MessageSignInit: Some(C_MessageSignInit),
            C_SignMessage: Some(C_SignMessage),
            C_SignMessageBegin: Some(C_SignMessageBegin),
            C_SignMessageNext: Some(C_SignMessageNext),
            C_MessageSignFinal: Some(C_MessageSignFinal),
            C_MessageVerifyInit: Some(C_MessageVerifyInit),
            C_VerifyMessage: Some(C_VerifyMessage),
            C_VerifyMessageBegin: Some(C_VerifyMessageBegin),
            C_VerifyMessageNext: Some(C_VerifyMessageNext),
            C_MessageVerifyFinal: Some(C_MessageVerifyFinal),
        };
    };
}

tables!(
    C_Initialize,
    C_Finalize,
    C_GetInfo,
    C_GetSlotList,
    C_GetSlotInfo,
    C_GetTokenInfo,
    C_GetMechanismList,
    C_GetMechanismInfo,
    C_InitToken,
    C_InitPIN,
    C_SetPIN,
    C_OpenSession,
    C_CloseSession,
    C_CloseAllSessions,
    C_GetSessionInfo,
    C_GetOperationState,
    C_SetOperationState,
    C_Login,
    C_Logout,
    C_CreateObject,
    C_CopyObject,
    C_DestroyObject,
    C_GetObjectSize,
    C_GetAttributeValue,
    C_SetAttributeValue,
    C_FindObjectsInit,
    C_FindObjects,
    C_FindObjectsFinal,
    C_EncryptInit,
    C_Encrypt,
    C_EncryptUpdate,
    C_EncryptFinal,
    C_DecryptInit,
    C_Decrypt,
    C_DecryptUpdate,
    C_DecryptFinal,
    C_DigestInit,
    C_Digest,
    C_DigestUpdate,
    C_DigestKey,
    C_DigestFinal,
    C_SignInit,
    C_Sign,
    C_SignUpdate,
    C_SignFinal,
    C_SignRecoverInit,
    C_SignRecover,
    C_VerifyInit,
    C_Verify,
    C_VerifyUpdate,
    C_VerifyFinal,
    C_VerifyRecoverInit,
    C_VerifyRecover,
    C_DigestEncryptUpdate,
    C_DecryptDigestUpdate,
    C_SignEncryptUpdate,
    C_DecryptVerifyUpdate,
    C_GenerateKey,
    C_GenerateKeyPair,
    C_WrapKey,
    C_UnwrapKey,
    C_DeriveKey,
    C_SeedRandom,
    C_GenerateRandom,
    C_GetFunctionStatus,
    C_CancelFunction,
    C_WaitForSlotEvent,
);

const INTERFACE_NAME: &CStr = c"PKCS 11";

/// `CK_INTERFACE` holds raw pointers; these point at immutable statics.
struct Interfaces([CK_INTERFACE; 2]);
// SAFETY: the pointed-to data is immutable and 'static.
unsafe impl Sync for Interfaces {}

static INTERFACES: Interfaces = Interfaces([
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTIONS_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTIONS_2_40 as *const CK_FUNCTION_LIST as *mut c_void,
        flags: 0,
    },
]);

/// Returns the PKCS#11 2.40 function table.
///
/// # Safety
/// `pp_function_list` must be NULL or point to writable memory for one pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(pp_function_list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard("C_GetFunctionList", || {
        // SAFETY: the caller's promise (see `# Safety`); NULL is refused.
        *unsafe { out(pp_function_list) }? =
            &FUNCTIONS_2_40 as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        Ok(())
    })
}

/// Lists the interfaces: PKCS#11 3.0, then 2.40.
///
/// # Safety
/// Pointers as PKCS#11 3.0 defines them for C_GetInterfaceList.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    p_list: *mut CK_INTERFACE,
    pul_count: *mut CK_ULONG,
) -> CK_RV {
    guard("C_GetInterfaceList", || {
        // SAFETY: the caller's promise (see `# Safety`).
        unsafe { deliver_list(&INTERFACES.0, p_list, pul_count) }
    })
}

/// Finds an interface by name ("PKCS 11" or NULL), version (NULL: the newest) and flags.
///
/// # Safety
/// Pointers as PKCS#11 3.0 defines them for C_GetInterface.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    p_name: *mut CK_UTF8CHAR,
    p_version: *mut CK_VERSION,
    pp_interface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_GetInterface", || {
        // SAFETY: the caller's promise (see `# Safety`); NULL is refused.
        let pp = unsafe { out(pp_interface) }?;
        // SAFETY: a non-NULL name is a NUL-terminated string by PKCS#11 3.0.
        if !p_name.is_null() && unsafe { CStr::from_ptr(p_name as *const _) } != INTERFACE_NAME {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: NULL or the caller's CK_VERSION.
        let wanted = unsafe { p_version.as_ref() }.map(|v| (v.major, v.minor));
        let found = INTERFACES.0.iter().find(|i| {
            // SAFETY: every table starts with its CK_VERSION (ours are statics).
            let v = unsafe { (i.pFunctionList as *const CK_VERSION).read() };
            wanted.is_none_or(|w| w == (v.major, v.minor)) && i.flags & flags == flags
        });
        let found = found.ok_or(CKR_ARGUMENTS_BAD)?;
        // Handed out in writable memory of its own: pkcs11-spy (OpenSC 0.23, Debian 12's)
        // writes its own table pointer into the CK_INTERFACE it gets, and crashed on the
        // read-only static (fixed upstream, OpenSC PR 3275). 24 bytes per call; applications
        // ask once.
        *pp = Box::leak(Box::new(*found));
        Ok(())
    })
}
