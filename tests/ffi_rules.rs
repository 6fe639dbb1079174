//! The C boundary's rules, called raw through the function table: initialization state, NULL
//! pointers, length rules, interfaces, and CA_GetHAState with every member unreachable.

mod support;

use cryptoki_sys::*;
use libloading::Library;
use std::ptr::null_mut;
use support::*;

struct Lib {
    _lib: Library,
    f: &'static CK_FUNCTION_LIST,
    get_interface: unsafe extern "C" fn(
        *mut CK_UTF8CHAR,
        *mut CK_VERSION,
        *mut *mut CK_INTERFACE,
        CK_FLAGS,
    ) -> CK_RV,
    ha_state: unsafe extern "C" fn(CK_SLOT_ID, *mut u8) -> CK_RV,
}

fn load() -> Lib {
    unsafe {
        let lib = Library::new(p11ha_lib()).unwrap();
        let gfl: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0").unwrap();
        let mut p = null_mut();
        assert_eq!(gfl(&mut p), CKR_OK);
        assert_eq!(gfl(null_mut()), CKR_ARGUMENTS_BAD);
        let get_interface = *lib.get(b"C_GetInterface\0").unwrap();
        let ha_state = *lib.get(b"CA_GetHAState\0").unwrap();
        Lib {
            f: &*p,
            get_interface,
            ha_state,
            _lib: lib,
        }
    }
}

#[test]
fn the_c_boundary_follows_the_rules() {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-ffi")
        .tempdir_in("/tmp")
        .unwrap();
    let conf = dir.path().join("Chrystoki.conf");
    std::fs::write(
        &conf,
        format!(
            "VirtualToken = {{\n VirtualToken00Label = g;\n VirtualToken00Members = 111;\n}}\n\
             HAConfiguration = {{ ConnectTimeout = 500; }}\n\
             HAProviders = {{\n Provider00Library = {P11KIT_CLIENT_LIB};\n Provider00Env = P11_KIT_SERVER_ADDRESS=unix:path={}/none.sock;\n}}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let l = load();
    let f = l.f;
    unsafe {
        let mut n: CK_ULONG = 0;
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_FALSE, null_mut(), &mut n),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
        let mut bad = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: std::ptr::dangling_mut(),
        };
        assert_eq!(
            f.C_Initialize.unwrap()(&mut bad as *mut _ as *mut _),
            CKR_ARGUMENTS_BAD
        );

        with_env_lock(&[("P11HA_CONF", conf.to_str())], || {
            assert_eq!(f.C_Initialize.unwrap()(null_mut()), CKR_OK);
        });
        assert_eq!(
            f.C_Initialize.unwrap()(null_mut()),
            CKR_CRYPTOKI_ALREADY_INITIALIZED
        );

        // Slot list length rules; the group's slot is there with every member down.
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, null_mut(), null_mut()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, null_mut(), &mut n),
            CKR_OK
        );
        assert_eq!(n, 1);
        let mut slots = [99 as CK_SLOT_ID; 1];
        n = 0;
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut n),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(n, 1);
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut n),
            CKR_OK
        );
        assert_eq!(slots[0], 0, "group VirtualToken00 is slot 0");

        let mut ti: CK_TOKEN_INFO = std::mem::zeroed();
        assert_eq!(f.C_GetTokenInfo.unwrap()(0, null_mut()), CKR_ARGUMENTS_BAD);
        assert_eq!(f.C_GetTokenInfo.unwrap()(7, &mut ti), CKR_SLOT_ID_INVALID);
        assert_eq!(f.C_GetTokenInfo.unwrap()(0, &mut ti), CKR_OK);
        assert_eq!(&ti.label[..2], b"g ");
        assert_eq!(
            &ti.serialNumber[..4],
            b"1111",
            "derived serial: '1' + first member serial"
        );

        // Sessions open with the group down; work on them fails fast and cleanly.
        let mut h: CK_SESSION_HANDLE = 0;
        assert_eq!(
            f.C_OpenSession.unwrap()(0, 0, null_mut(), None, &mut h),
            CKR_SESSION_PARALLEL_NOT_SUPPORTED
        );
        assert_eq!(
            f.C_OpenSession.unwrap()(0, CKF_SERIAL_SESSION, null_mut(), None, null_mut()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            f.C_OpenSession.unwrap()(0, CKF_SERIAL_SESSION, null_mut(), None, &mut h),
            CKR_OK
        );
        assert_ne!(h, 0);
        let mut buf = [0u8; 16];
        assert_eq!(
            f.C_GenerateRandom.unwrap()(h, buf.as_mut_ptr(), 16),
            CKR_DEVICE_ERROR
        );
        assert_eq!(
            f.C_GenerateRandom.unwrap()(h, null_mut(), 16),
            CKR_ARGUMENTS_BAD
        );
        let mut mech = CK_MECHANISM {
            mechanism: CKM_SHA256_RSA_PKCS,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        assert_eq!(
            f.C_SignInit.unwrap()(h, &mut mech, 12345),
            CKR_KEY_HANDLE_INVALID
        );
        assert_eq!(
            f.C_SignInit.unwrap()(h, null_mut(), 12345),
            CKR_ARGUMENTS_BAD
        );
        let mut sig_len: CK_ULONG = 0;
        assert_eq!(
            f.C_Sign.unwrap()(h, null_mut(), 0, null_mut(), &mut sig_len),
            CKR_OPERATION_NOT_INITIALIZED
        );
        assert_eq!(
            f.C_Sign.unwrap()(h + 1000, null_mut(), 0, null_mut(), &mut sig_len),
            CKR_SESSION_HANDLE_INVALID
        );
        let mut si: CK_SESSION_INFO = std::mem::zeroed();
        assert_eq!(f.C_GetSessionInfo.unwrap()(h, &mut si), CKR_OK);
        assert_eq!((si.slotID, si.state), (0, CKS_RO_PUBLIC_SESSION));
        assert_eq!(f.C_CloseSession.unwrap()(h), CKR_OK);
        assert_eq!(f.C_CloseSession.unwrap()(h), CKR_SESSION_HANDLE_INVALID);

        // Luna's CA_GetHAState: group serial, one member, its status an error while down.
        let mut st = [0u8; 24 + 32 * 32 + 8];
        assert_eq!((l.ha_state)(0, st.as_mut_ptr()), CKR_OK);
        assert_eq!(&st[..5], b"1111\0");
        assert_eq!(&st[24..28], b"111\0");
        let status = CK_RV::from_ne_bytes(st[24 + 24..24 + 32].try_into().unwrap());
        assert_ne!(status, CKR_OK);
        let list_size = CK_ULONG::from_ne_bytes(st[24 + 32 * 32..].try_into().unwrap());
        assert_eq!(list_size, 1);
        assert_eq!((l.ha_state)(0, null_mut()), CKR_ARGUMENTS_BAD);

        // Interfaces: 3.0 by default, 2.40 on request, unknown names refused.
        let mut pi: *mut CK_INTERFACE = null_mut();
        assert_eq!(
            (l.get_interface)(null_mut(), null_mut(), &mut pi, 0),
            CKR_OK
        );
        let v = *((*pi).pFunctionList as *const CK_VERSION);
        assert_eq!((v.major, v.minor), (3, 0));
        let mut want = CK_VERSION {
            major: 2,
            minor: 40,
        };
        assert_eq!(
            (l.get_interface)(c"PKCS 11".as_ptr() as *mut _, &mut want, &mut pi, 0),
            CKR_OK
        );
        assert_eq!(
            (*pi).pFunctionList as *const CK_FUNCTION_LIST,
            f as *const CK_FUNCTION_LIST
        );
        assert_eq!(
            (l.get_interface)(c"nope".as_ptr() as *mut _, null_mut(), &mut pi, 0),
            CKR_ARGUMENTS_BAD
        );

        assert_eq!(
            f.C_Finalize.unwrap()(std::ptr::dangling_mut()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(f.C_Finalize.unwrap()(null_mut()), CKR_OK);
        assert_eq!(
            f.C_Finalize.unwrap()(null_mut()),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
    }
}
