use super::layouts::CK_GCM_PARAMS_240;
use super::*;
use std::collections::BTreeSet;
use std::ffi::c_void;
use std::mem::size_of;

const SCRIBBLE: u8 = 0xEE;

/// A caller's parameter struct and buffers, overwritten after the copy as an application
/// reusing or freeing them would.
struct Caller {
    buffers: Vec<Vec<u8>>,
}

impl Caller {
    fn new() -> Self {
        Caller {
            buffers: Vec::new(),
        }
    }

    /// A buffer of `n` distinct bytes, kept until [`Caller::scribble`]; returns its address.
    fn buffer(&mut self, n: usize) -> *mut u8 {
        let k = self.buffers.len() as u8 + 1;
        let mut b: Vec<u8> = (0..n)
            .map(|i| k.wrapping_mul(37).wrapping_add(i as u8))
            .collect();
        let p = b.as_mut_ptr();
        self.buffers.push(b);
        p
    }

    fn expected(&self, i: usize) -> Vec<u8> {
        self.buffers[i].clone()
    }

    fn addresses(&self) -> Vec<usize> {
        self.buffers.iter().map(|b| b.as_ptr() as usize).collect()
    }

    fn scribble(&mut self) {
        for b in &mut self.buffers {
            b.fill(SCRIBBLE);
        }
    }
}

unsafe fn copy_of<T>(mechanism: CK_MECHANISM_TYPE, s: &mut T) -> Result<OwnedMechanism, CK_RV> {
    // SAFETY: `s` is a whole struct of its type.
    unsafe { copy_sized(mechanism, s, size_of::<T>()) }
}

unsafe fn copy_sized<T>(
    mechanism: CK_MECHANISM_TYPE,
    s: &mut T,
    len: usize,
) -> Result<OwnedMechanism, CK_RV> {
    let m = CK_MECHANISM {
        mechanism,
        pParameter: s as *mut T as *mut c_void,
        ulParameterLen: len as CK_ULONG,
    };
    // SAFETY: the test's struct and the buffers it points to are alive for the copy.
    unsafe { OwnedMechanism::copy_from(&m) }
}

/// Overwrites the caller's struct too, so that nothing can be read from it any more.
fn scribble_struct<T>(s: &mut T) {
    // SAFETY: any bytes are fine for the plain C structs used here; they are not read again.
    unsafe { std::ptr::write_bytes(s as *mut T as *mut u8, SCRIBBLE, size_of::<T>()) };
}

unsafe fn relayed<T>(raw: &mut RawMechanism<'_>) -> &'static T {
    let ck = raw.ck();
    assert_eq!(ck.ulParameterLen as usize, size_of::<T>());
    // SAFETY: the relayed parameter is a `T` laid out by `raw`, alive as long as the tests use it.
    unsafe { &*(ck.pParameter as *const T) }
}

/// The bytes at `p`, checked not to be caller memory.
unsafe fn owned_bytes<'a>(p: *const u8, n: CK_ULONG, caller: &[usize]) -> &'a [u8] {
    assert!(!p.is_null(), "relayed pointer is NULL");
    assert!(
        !caller.contains(&(p as usize)),
        "relayed pointer is the caller's"
    );
    // SAFETY: the relayed buffer of `n` bytes, alive as long as the tests use it.
    unsafe { std::slice::from_raw_parts(p, n as usize) }
}

// ---- Deep copies that today's byte copy got wrong: the copy survives the caller's memory.

#[test]
fn eddsa_context_outlives_the_callers_buffers() {
    let mut ctx = b"context for ed448".to_vec();
    let expected = ctx.clone();
    let mut p = CK_EDDSA_PARAMS {
        phFlag: CK_TRUE,
        ulContextDataLen: ctx.len() as CK_ULONG,
        pContextData: ctx.as_mut_ptr(),
    };
    let owned = unsafe { copy_of(CKM_EDDSA, &mut p) }.unwrap();
    let old = ctx.as_ptr() as usize;
    ctx.fill(0);
    drop(ctx);
    scribble_struct(&mut p);
    let mut raw = owned.raw();
    let r: &CK_EDDSA_PARAMS = unsafe { relayed(&mut raw) };
    assert_eq!(r.phFlag, CK_TRUE);
    let got = unsafe { owned_bytes(r.pContextData, r.ulContextDataLen, &[old]) };
    assert_eq!(got, &expected[..]);
}

#[test]
fn des3_encrypt_data_string_outlives_the_callers_buffer() {
    let mut data = vec![0x5Au8; 24];
    let mut p = CK_KEY_DERIVATION_STRING_DATA {
        pData: data.as_mut_ptr(),
        ulLen: 24,
    };
    let owned = unsafe { copy_of(CKM_DES3_ECB_ENCRYPT_DATA, &mut p) }.unwrap();
    let old = data.as_ptr() as usize;
    data.fill(0);
    drop(data);
    let mut raw = owned.raw();
    let r: &CK_KEY_DERIVATION_STRING_DATA = unsafe { relayed(&mut raw) };
    assert_eq!(
        unsafe { owned_bytes(r.pData, r.ulLen, &[old]) },
        &[0x5A; 24]
    );
}

#[test]
fn pbkdf2_v3_password_salt_and_prf_data_are_copied() {
    let mut c = Caller::new();
    let (salt, prf, pw) = (c.buffer(16), c.buffer(3), c.buffer(11));
    let mut p = CK_PKCS5_PBKD2_PARAMS2 {
        saltSource: CKZ_SALT_SPECIFIED,
        pSaltSourceData: salt as *mut c_void,
        ulSaltSourceDataLen: 16,
        iterations: 10_000,
        prf: CKP_PKCS5_PBKD2_HMAC_SHA256,
        pPrfData: prf as *mut c_void,
        ulPrfDataLen: 3,
        pPassword: pw,
        ulPasswordLen: 11,
    };
    let owned = unsafe { copy_of(CKM_PKCS5_PBKD2, &mut p) }.unwrap();
    let (expected, addrs) = (
        (0..3).map(|i| c.expected(i)).collect::<Vec<_>>(),
        c.addresses(),
    );
    c.scribble();
    scribble_struct(&mut p);
    let mut raw = owned.raw();
    let r: &CK_PKCS5_PBKD2_PARAMS2 = unsafe { relayed(&mut raw) };
    assert_eq!((r.iterations, r.ulPasswordLen), (10_000, 11));
    unsafe {
        let salt = owned_bytes(
            r.pSaltSourceData as *const u8,
            r.ulSaltSourceDataLen,
            &addrs,
        );
        assert_eq!(salt, &expected[0][..]);
        assert_eq!(
            owned_bytes(r.pPrfData as *const u8, r.ulPrfDataLen, &addrs),
            &expected[1][..]
        );
        assert_eq!(
            owned_bytes(r.pPassword, r.ulPasswordLen, &addrs),
            &expected[2][..]
        );
    }
}

#[test]
fn pbkdf2_v220_password_length_pointer_is_copied_too() {
    let mut c = Caller::new();
    let pw = c.buffer(9);
    let mut len: Box<CK_ULONG> = Box::new(9);
    let len_at = &mut *len as *mut CK_ULONG;
    let mut p = CK_PKCS5_PBKD2_PARAMS {
        saltSource: CKZ_SALT_SPECIFIED,
        pSaltSourceData: std::ptr::null_mut(),
        ulSaltSourceDataLen: 0,
        iterations: 1000,
        prf: CKP_PKCS5_PBKD2_HMAC_SHA256,
        pPrfData: std::ptr::null_mut(),
        ulPrfDataLen: 0,
        pPassword: pw,
        ulPasswordLen: len_at,
    };
    let owned = unsafe { copy_of(CKM_PKCS5_PBKD2, &mut p) }.unwrap();
    let (expected, addrs) = (c.expected(0), c.addresses());
    c.scribble();
    *len = 0xFFFF_FFFF;
    drop(len);
    let mut raw = owned.raw();
    let r: &CK_PKCS5_PBKD2_PARAMS = unsafe { relayed(&mut raw) };
    assert_ne!(r.ulPasswordLen, len_at, "length pointer is the caller's");
    let n = unsafe { *r.ulPasswordLen };
    assert_eq!(n, 9);
    assert_eq!(
        unsafe { owned_bytes(r.pPassword, n, &addrs) },
        &expected[..]
    );
    assert!(r.pSaltSourceData.is_null() && r.pPrfData.is_null());
}

#[test]
fn hkdf_salt_and_info_are_copied_and_a_salt_key_handle_refused() {
    let mut c = Caller::new();
    let (salt, info) = (c.buffer(32), c.buffer(7));
    let mut p = CK_HKDF_PARAMS {
        bExtract: CK_TRUE,
        bExpand: CK_TRUE,
        prfHashMechanism: CKM_SHA256,
        ulSaltType: CKF_HKDF_SALT_DATA,
        pSalt: salt,
        ulSaltLen: 32,
        // Not used with CKF_HKDF_SALT_DATA: passed along as it is.
        hSaltKey: 77,
        pInfo: info,
        ulInfoLen: 7,
    };
    let owned = unsafe { copy_of(CKM_HKDF_DERIVE, &mut p) }.unwrap();
    let (expected, addrs) = (
        (0..2).map(|i| c.expected(i)).collect::<Vec<_>>(),
        c.addresses(),
    );
    c.scribble();
    let mut raw = owned.raw();
    let r: &CK_HKDF_PARAMS = unsafe { relayed(&mut raw) };
    assert_eq!((r.prfHashMechanism, r.hSaltKey), (CKM_SHA256, 77));
    assert_eq!(
        unsafe { owned_bytes(r.pSalt, r.ulSaltLen, &addrs) },
        &expected[0][..]
    );
    assert_eq!(
        unsafe { owned_bytes(r.pInfo, r.ulInfoLen, &addrs) },
        &expected[1][..]
    );

    p.ulSaltType = CKF_HKDF_SALT_KEY;
    p.pSalt = std::ptr::null_mut();
    p.ulSaltLen = 0;
    p.pInfo = std::ptr::null_mut();
    p.ulInfoLen = 0;
    assert_eq!(
        unsafe { copy_of(CKM_HKDF_DATA, &mut p) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    p.hSaltKey = CK_INVALID_HANDLE;
    assert!(unsafe { copy_of(CKM_HKDF_DATA, &mut p) }.is_ok());
}

// ---- Fail closed.

#[test]
fn a_vendor_mechanism_with_a_parameter_is_refused_and_without_one_passes() {
    let mut bytes = [1u8; 24];
    let vendor = CKM_VENDOR_DEFINED | 0x1234;
    assert_eq!(
        unsafe { copy_of(vendor, &mut bytes) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    // An unlisted standard mechanism is treated alike.
    assert_eq!(
        unsafe { copy_of(CKM_X2RATCHET_ENCRYPT, &mut bytes) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    let m = CK_MECHANISM {
        mechanism: vendor,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let owned = unsafe { OwnedMechanism::copy_from(&m) }.unwrap();
    let ck = owned.raw().ck();
    assert!(ck.pParameter.is_null() && ck.ulParameterLen == 0);
}

#[test]
fn mechanisms_returning_data_through_the_parameter_are_refused() {
    let mut p: CK_TLS12_KEY_MAT_PARAMS = unsafe { std::mem::zeroed() };
    for m in [
        CKM_TLS12_KEY_AND_MAC_DERIVE,
        CKM_TLS_KEY_AND_MAC_DERIVE,
        CKM_SSL3_KEY_AND_MAC_DERIVE,
        CKM_TLS_PRF,
        CKM_CONCATENATE_BASE_AND_KEY,
        CKM_ECMQV_DERIVE,
    ] {
        assert_eq!(
            unsafe { copy_of(m, &mut p) }.unwrap_err(),
            CKR_MECHANISM_INVALID,
            "{m:#x}"
        );
    }
    // Even without a parameter: no parameter could make them servable.
    let m = CK_MECHANISM {
        mechanism: CKM_TLS_PRF,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(
        unsafe { OwnedMechanism::copy_from(&m) }.unwrap_err(),
        CKR_MECHANISM_INVALID
    );
}

#[test]
fn an_output_pointer_must_be_null() {
    let mut c = Caller::new();
    let (cr, sr) = (c.buffer(32), c.buffer(32));
    let mut version = CK_VERSION { major: 0, minor: 0 };
    let mut p = CK_TLS12_MASTER_KEY_DERIVE_PARAMS {
        RandomInfo: CK_SSL3_RANDOM_DATA {
            pClientRandom: cr,
            ulClientRandomLen: 32,
            pServerRandom: sr,
            ulServerRandomLen: 32,
        },
        pVersion: &mut version,
        prfHashMechanism: CKM_SHA256,
    };
    assert_eq!(
        unsafe { copy_of(CKM_TLS12_MASTER_KEY_DERIVE, &mut p) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    p.pVersion = std::ptr::null_mut();
    assert!(unsafe { copy_of(CKM_TLS12_MASTER_KEY_DERIVE_DH, &mut p) }.is_ok());
}

#[test]
fn a_used_handle_is_refused_an_unused_one_passes() {
    let mut seed = [3u8; 8];
    let mut p = CK_IKE2_PRF_PLUS_DERIVE_PARAMS {
        prfMechanism: CKM_SHA256_HMAC,
        bHasSeedKey: CK_TRUE,
        hSeedKey: 5,
        pSeedData: seed.as_mut_ptr(),
        ulSeedDataLen: 8,
    };
    assert_eq!(
        unsafe { copy_of(CKM_IKE2_PRF_PLUS_DERIVE, &mut p) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    p.bHasSeedKey = CK_FALSE;
    assert!(unsafe { copy_of(CKM_IKE2_PRF_PLUS_DERIVE, &mut p) }.is_ok());
}

#[test]
fn a_known_struct_of_the_wrong_size_is_refused_pointer_free_bytes_pass() {
    let mut gcm: CK_GCM_PARAMS = unsafe { std::mem::zeroed() };
    for n in [
        8,
        size_of::<CK_GCM_PARAMS>() - 1,
        size_of::<CK_GCM_PARAMS>() + 8,
    ] {
        let mut big = [0u64; 16];
        assert_eq!(
            unsafe { copy_sized(CKM_AES_GCM, &mut big, n) }.unwrap_err(),
            CKR_MECHANISM_PARAM_INVALID,
            "{n} bytes"
        );
    }
    assert!(unsafe { copy_of(CKM_AES_GCM, &mut gcm) }.is_ok());
    // CK_RSA_PKCS_PSS_PARAMS has no pointer: a short one goes to the member, who judges it.
    let mut pss = [7u8; 5];
    let owned = unsafe { copy_of(CKM_RSA_PKCS_PSS, &mut pss) }.unwrap();
    let mut raw = owned.raw();
    let ck = raw.ck();
    assert_eq!(ck.ulParameterLen, 5);
    assert_eq!(
        unsafe { std::slice::from_raw_parts(ck.pParameter as *const u8, 5) },
        &pss
    );
}

#[test]
fn null_data_with_a_length_and_wild_lengths_are_refused() {
    let mut p = CK_GCM_PARAMS {
        pIv: std::ptr::null_mut(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: std::ptr::null_mut(),
        ulAADLen: 0,
        ulTagBits: 128,
    };
    assert_eq!(
        unsafe { copy_of(CKM_AES_GCM, &mut p) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    let mut iv = [0u8; 12];
    p.pIv = iv.as_mut_ptr();
    p.ulIvLen = 1 << 40;
    assert_eq!(
        unsafe { copy_of(CKM_AES_GCM, &mut p) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    // The top-level length too, before anything is read.
    let mut ivs = [0u8; 16];
    assert_eq!(
        unsafe { copy_sized(CKM_AES_CBC, &mut ivs, 1 << 40) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
}

#[test]
fn a_non_null_empty_buffer_stays_non_null() {
    let mut aad = [0u8; 1];
    let mut iv = [9u8; 12];
    let mut p = CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: 0,
        ulTagBits: 128,
    };
    let owned = unsafe { copy_of(CKM_AES_GCM, &mut p) }.unwrap();
    let mut raw = owned.raw();
    let r: &CK_GCM_PARAMS = unsafe { relayed(&mut raw) };
    assert!(!r.pAAD.is_null());
    assert_ne!(r.pAAD, aad.as_mut_ptr());
    p.pAAD = std::ptr::null_mut();
    let owned = unsafe { copy_of(CKM_AES_GCM, &mut p) }.unwrap();
    let mut raw = owned.raw();
    let r: &CK_GCM_PARAMS = unsafe { relayed(&mut raw) };
    assert!(r.pAAD.is_null());
}

#[test]
fn the_copy_keeps_no_caller_address_and_debug_shows_no_content() {
    let mut c = Caller::new();
    let label = c.buffer(5);
    let mut p = CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: label as *mut c_void,
        ulSourceDataLen: 5,
    };
    let owned = unsafe { copy_of(CKM_RSA_PKCS_OAEP, &mut p) }.unwrap();
    let addr = (label as usize).to_ne_bytes();
    for b in &owned.blocks {
        assert!(!b.bytes.windows(addr.len()).any(|w| w == addr));
    }
    // Clones relay their own memory.
    let twin = owned.clone();
    let (mut a, mut b) = (owned.raw(), twin.raw());
    let (ra, rb): (&CK_RSA_PKCS_OAEP_PARAMS, &CK_RSA_PKCS_OAEP_PARAMS) =
        unsafe { (relayed(&mut a), relayed(&mut b)) };
    assert_ne!(ra.pSourceData, rb.pSourceData);
    assert_eq!(
        format!("{owned:?}"),
        format!(
            "OwnedMechanism {{ mechanism: 0x9, parameter_len: {}, buffers: 2 }}",
            size_of::<CK_RSA_PKCS_OAEP_PARAMS>()
        )
    );
}

#[test]
fn gmac_takes_an_iv_or_gcm_params() {
    let mut iv = [4u8; 12];
    let owned = unsafe { copy_of(CKM_AES_GMAC, &mut iv) }.unwrap();
    assert_eq!(owned.blocks.len(), 1);
    let mut c = Caller::new();
    let aad = c.buffer(20);
    let mut p = CK_GCM_PARAMS {
        pIv: std::ptr::null_mut(),
        ulIvLen: 0,
        ulIvBits: 0,
        pAAD: aad,
        ulAADLen: 20,
        ulTagBits: 128,
    };
    let owned = unsafe { copy_of(CKM_AES_GMAC, &mut p) }.unwrap();
    let (expected, addrs) = (c.expected(0), c.addresses());
    c.scribble();
    let mut raw = owned.raw();
    let r: &CK_GCM_PARAMS = unsafe { relayed(&mut raw) };
    assert_eq!(
        unsafe { owned_bytes(r.pAAD, r.ulAADLen, &addrs) },
        &expected[..]
    );
}

// ---- Every layout of the table, field by field through the real struct definitions, so that a
// length paired with the wrong pointer or a forgotten pointer fails.

/// Fills `$t` with the given scalars and one distinct buffer per `pointer / length` pair,
/// copies it, scribbles over the caller's memory and compares the relay field by field.
/// Returns the struct's name.
macro_rules! round_trip {
    ($mech:expr, $t:ident { $($s:ident : $v:expr),* $(,)? } $(, $($p:ident).+ / $($l:ident).+)* $(,)?) => {{
        let mut c = Caller::new();
        let mut s: $t = unsafe { std::mem::zeroed() };
        $( s.$s = $v; )*
        $(
            let n = 3 + c.buffers.len();
            s.$($p).+ = c.buffer(n) as _;
            s.$($l).+ = n as CK_ULONG;
        )*
        let owned = unsafe { copy_of($mech, &mut s) }
            .unwrap_or_else(|rv| panic!("{}: {rv:#x}", stringify!($t)));
        let addrs = c.addresses();
        let _expected: Vec<Vec<u8>> = (0..addrs.len()).map(|i| c.expected(i)).collect();
        c.scribble();
        scribble_struct(&mut s);
        let mut raw = owned.raw();
        let r: &$t = unsafe { relayed(&mut raw) };
        $( assert_eq!(r.$s, $v, concat!(stringify!($t), ".", stringify!($s))); )*
        let mut _i = 0;
        $(
            let got = unsafe { owned_bytes(r.$($p).+ as *const u8, r.$($l).+, &addrs) };
            assert_eq!(got, &_expected[_i][..], concat!(stringify!($t), ".", stringify!($($p).+)));
            _i += 1;
        )*
        stringify!($t)
    }};
}

fn flat_round_trips() -> Vec<&'static str> {
    vec![
        round_trip!(
            CKM_AES_GCM,
            CK_GCM_PARAMS {
                ulIvBits: 96,
                ulTagBits: 112
            },
            pIv / ulIvLen,
            pAAD / ulAADLen
        ),
        round_trip!(
            CKM_AES_GCM,
            CK_GCM_PARAMS_240 { ulTagBits: 96 },
            pIv / ulIvLen,
            pAAD / ulAADLen
        ),
        round_trip!(
            CKM_AES_CCM,
            CK_CCM_PARAMS {
                ulDataLen: 100,
                ulMACLen: 16
            },
            pNonce / ulNonceLen,
            pAAD / ulAADLen
        ),
        round_trip!(
            CKM_CHACHA20_POLY1305,
            CK_SALSA20_CHACHA20_POLY1305_PARAMS {},
            pNonce / ulNonceLen,
            pAAD / ulAADLen
        ),
        round_trip!(
            CKM_RSA_PKCS_OAEP,
            CK_RSA_PKCS_OAEP_PARAMS {
                hashAlg: CKM_SHA384,
                mgf: CKG_MGF1_SHA384,
                source: CKZ_DATA_SPECIFIED
            },
            pSourceData / ulSourceDataLen
        ),
        round_trip!(
            CKM_ECDH1_DERIVE,
            CK_ECDH1_DERIVE_PARAMS {
                kdf: CKD_SHA256_KDF
            },
            pSharedData / ulSharedDataLen,
            pPublicData / ulPublicDataLen
        ),
        round_trip!(
            CKM_ECDH_AES_KEY_WRAP,
            CK_ECDH_AES_KEY_WRAP_PARAMS {
                ulAESKeyBits: 256,
                kdf: CKD_NULL
            },
            pSharedData / ulSharedDataLen
        ),
        round_trip!(
            CKM_X9_42_DH_DERIVE,
            CK_X9_42_DH1_DERIVE_PARAMS { kdf: 1 },
            pOtherInfo / ulOtherInfoLen,
            pPublicData / ulPublicDataLen
        ),
        round_trip!(
            CKM_CONCATENATE_BASE_AND_DATA,
            CK_KEY_DERIVATION_STRING_DATA {},
            pData / ulLen
        ),
        round_trip!(
            CKM_DES3_CBC_ENCRYPT_DATA,
            CK_DES_CBC_ENCRYPT_DATA_PARAMS { iv: [1; 8] },
            pData / length
        ),
        round_trip!(
            CKM_AES_CBC_ENCRYPT_DATA,
            CK_AES_CBC_ENCRYPT_DATA_PARAMS { iv: [2; 16] },
            pData / length
        ),
        round_trip!(
            CKM_ARIA_CBC_ENCRYPT_DATA,
            CK_ARIA_CBC_ENCRYPT_DATA_PARAMS { iv: [3; 16] },
            pData / length
        ),
        round_trip!(
            CKM_CAMELLIA_CBC_ENCRYPT_DATA,
            CK_CAMELLIA_CBC_ENCRYPT_DATA_PARAMS { iv: [4; 16] },
            pData / length
        ),
        round_trip!(
            CKM_SEED_CBC_ENCRYPT_DATA,
            CK_SEED_CBC_ENCRYPT_DATA_PARAMS { iv: [5; 16] },
            pData / length
        ),
        round_trip!(
            CKM_EDDSA,
            CK_EDDSA_PARAMS { phFlag: CK_TRUE },
            pContextData / ulContextDataLen
        ),
        round_trip!(
            CKM_ML_DSA,
            CK_SIGN_ADDITIONAL_CONTEXT { hedgeVariant: 1 },
            pContext / ulContextLen
        ),
        round_trip!(
            CKM_HASH_SLH_DSA,
            CK_HASH_SIGN_ADDITIONAL_CONTEXT {
                hedgeVariant: 2,
                hash: CKM_SHA3_256
            },
            pContext / ulContextLen
        ),
        round_trip!(
            CKM_HKDF_DATA,
            CK_HKDF_PARAMS {
                bExtract: CK_TRUE,
                bExpand: CK_FALSE,
                prfHashMechanism: CKM_SHA512,
                ulSaltType: CKF_HKDF_SALT_DATA,
                hSaltKey: 0
            },
            pSalt / ulSaltLen,
            pInfo / ulInfoLen
        ),
        round_trip!(
            CKM_PBA_SHA1_WITH_SHA1_HMAC,
            CK_PBE_PARAMS { ulIteration: 2048 },
            pPassword / ulPasswordLen,
            pSalt / ulSaltLen
        ),
        round_trip!(
            CKM_PKCS5_PBKD2,
            CK_PKCS5_PBKD2_PARAMS2 {
                saltSource: CKZ_SALT_SPECIFIED,
                iterations: 7,
                prf: 3
            },
            pSaltSourceData / ulSaltSourceDataLen,
            pPrfData / ulPrfDataLen,
            pPassword / ulPasswordLen
        ),
        round_trip!(
            CKM_TLS_MASTER_KEY_DERIVE_DH,
            CK_SSL3_MASTER_KEY_DERIVE_PARAMS {},
            RandomInfo.pClientRandom / RandomInfo.ulClientRandomLen,
            RandomInfo.pServerRandom / RandomInfo.ulServerRandomLen
        ),
        round_trip!(
            CKM_TLS12_MASTER_KEY_DERIVE_DH,
            CK_TLS12_MASTER_KEY_DERIVE_PARAMS {
                prfHashMechanism: CKM_SHA384
            },
            RandomInfo.pClientRandom / RandomInfo.ulClientRandomLen,
            RandomInfo.pServerRandom / RandomInfo.ulServerRandomLen
        ),
        round_trip!(
            CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE_DH,
            CK_TLS12_EXTENDED_MASTER_KEY_DERIVE_PARAMS {
                prfHashMechanism: CKM_SHA256
            },
            pSessionHash / ulSessionHashLen
        ),
        round_trip!(
            CKM_TLS12_KDF,
            CK_TLS_KDF_PARAMS {
                prfMechanism: CKM_SHA256
            },
            pLabel / ulLabelLength,
            RandomInfo.pClientRandom / RandomInfo.ulClientRandomLen,
            RandomInfo.pServerRandom / RandomInfo.ulServerRandomLen,
            pContextData / ulContextDataLength
        ),
        round_trip!(
            CKM_WTLS_MASTER_KEY_DERIVE_DH_ECC,
            CK_WTLS_MASTER_KEY_DERIVE_PARAMS {
                DigestMechanism: CKM_SHA_1
            },
            RandomInfo.pClientRandom / RandomInfo.ulClientRandomLen,
            RandomInfo.pServerRandom / RandomInfo.ulServerRandomLen
        ),
        round_trip!(
            CKM_GOSTR3410_DERIVE,
            CK_GOSTR3410_DERIVE_PARAMS { kdf: 1 },
            pPublicData / ulPublicDataLen,
            pUKM / ulUKMLen
        ),
        round_trip!(
            CKM_GOSTR3410_KEY_WRAP,
            CK_GOSTR3410_KEY_WRAP_PARAMS { hKey: 0 },
            pWrapOID / ulWrapOIDLen,
            pUKM / ulUKMLen
        ),
        round_trip!(
            CKM_RC5_CBC,
            CK_RC5_CBC_PARAMS {
                ulWordsize: 4,
                ulRounds: 12
            },
            pIv / ulIvLen
        ),
        round_trip!(
            CKM_DSA_FIPS_G_GEN,
            CK_DSA_PARAMETER_GEN_PARAM {
                hash: CKM_SHA256,
                ulIndex: 1
            },
            pSeed / ulSeedLen
        ),
        round_trip!(
            CKM_DSA_PROBABILISTIC_PARAMETER_GEN,
            CK_DSA_PARAMETER_GEN_PARAM {
                hash: CKM_SHA224,
                ulSeedLen: 0,
                ulIndex: 2
            }
        ),
        round_trip!(
            CKM_IKE_PRF_DERIVE,
            CK_IKE_PRF_DERIVE_PARAMS {
                prfMechanism: CKM_SHA256_HMAC,
                bDataAsKey: CK_TRUE,
                bRekey: CK_FALSE,
                hNewKey: 9
            },
            pNi / ulNiLen,
            pNr / ulNrLen
        ),
        round_trip!(
            CKM_IKE1_EXTENDED_DERIVE,
            CK_IKE1_EXTENDED_DERIVE_PARAMS {
                prfMechanism: CKM_SHA_1_HMAC,
                bHasKeygxy: CK_FALSE
            },
            pExtraData / ulExtraDataLen
        ),
        round_trip!(
            CKM_IKE2_PRF_PLUS_DERIVE,
            CK_IKE2_PRF_PLUS_DERIVE_PARAMS {
                prfMechanism: CKM_SHA384_HMAC,
                bHasSeedKey: CK_FALSE
            },
            pSeedData / ulSeedDataLen
        ),
        round_trip!(
            CKM_KEA_DERIVE,
            CK_KEA_DERIVE_PARAMS { isSender: CK_TRUE },
            PublicData / ulPublicDataLen
        ),
    ]
}

/// KEA's two random values share one length.
fn kea() -> &'static str {
    let mut c = Caller::new();
    let (a, b, public) = (c.buffer(20), c.buffer(20), c.buffer(64));
    let mut p = CK_KEA_DERIVE_PARAMS {
        isSender: CK_FALSE,
        ulRandomLen: 20,
        RandomA: a,
        RandomB: b,
        ulPublicDataLen: 64,
        PublicData: public,
    };
    let owned = unsafe { copy_of(CKM_KEA_KEY_DERIVE, &mut p) }.unwrap();
    let (addrs, e) = (
        c.addresses(),
        (0..3).map(|i| c.expected(i)).collect::<Vec<_>>(),
    );
    c.scribble();
    let mut raw = owned.raw();
    let r: &CK_KEA_DERIVE_PARAMS = unsafe { relayed(&mut raw) };
    unsafe {
        assert_eq!(owned_bytes(r.RandomA, r.ulRandomLen, &addrs), &e[0][..]);
        assert_eq!(owned_bytes(r.RandomB, r.ulRandomLen, &addrs), &e[1][..]);
        assert_eq!(
            owned_bytes(r.PublicData, r.ulPublicDataLen, &addrs),
            &e[2][..]
        );
    }
    "CK_KEA_DERIVE_PARAMS"
}

/// Lengths in bits and fixed lengths.
fn stream_ciphers() -> Vec<&'static str> {
    let mut c = Caller::new();
    let (counter, nonce) = (c.buffer(4), c.buffer(12));
    let mut p = CK_CHACHA20_PARAMS {
        pBlockCounter: counter,
        blockCounterBits: 32,
        pNonce: nonce,
        ulNonceBits: 96,
    };
    let owned = unsafe { copy_of(CKM_CHACHA20, &mut p) }.unwrap();
    let (addrs, e) = (c.addresses(), [c.expected(0), c.expected(1)]);
    c.scribble();
    let mut raw = owned.raw();
    let r: &CK_CHACHA20_PARAMS = unsafe { relayed(&mut raw) };
    unsafe {
        assert_eq!(
            owned_bytes(r.pBlockCounter, r.blockCounterBits / 8, &addrs),
            &e[0][..]
        );
        assert_eq!(owned_bytes(r.pNonce, r.ulNonceBits / 8, &addrs), &e[1][..]);
    }

    let mut c = Caller::new();
    let (counter, nonce) = (c.buffer(8), c.buffer(24));
    let mut p = CK_SALSA20_PARAMS {
        pBlockCounter: counter,
        pNonce: nonce,
        ulNonceBits: 192,
    };
    let owned = unsafe { copy_of(CKM_SALSA20, &mut p) }.unwrap();
    let (addrs, e) = (c.addresses(), [c.expected(0), c.expected(1)]);
    c.scribble();
    let mut raw = owned.raw();
    let r: &CK_SALSA20_PARAMS = unsafe { relayed(&mut raw) };
    unsafe {
        assert_eq!(owned_bytes(r.pBlockCounter, 8, &addrs), &e[0][..]);
        assert_eq!(owned_bytes(r.pNonce, 24, &addrs), &e[1][..]);
    }
    vec!["CK_CHACHA20_PARAMS", "CK_SALSA20_PARAMS"]
}

/// A struct pointer inside a struct pointer: RSA-AES key wrap's OAEP params and their label.
fn rsa_aes_key_wrap() -> Vec<&'static str> {
    let mut c = Caller::new();
    let label = c.buffer(6);
    let mut oaep = Box::new(CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: label as *mut c_void,
        ulSourceDataLen: 6,
    });
    let oaep_at = &mut *oaep as *mut CK_RSA_PKCS_OAEP_PARAMS;
    let mut p = CK_RSA_AES_KEY_WRAP_PARAMS {
        ulAESKeyBits: 256,
        pOAEPParams: oaep_at,
    };
    let owned = unsafe { copy_of(CKM_RSA_AES_KEY_WRAP, &mut p) }.unwrap();
    let (addrs, e) = (c.addresses(), c.expected(0));
    c.scribble();
    scribble_struct(&mut *oaep);
    drop(oaep);
    let mut raw = owned.raw();
    let r: &CK_RSA_AES_KEY_WRAP_PARAMS = unsafe { relayed(&mut raw) };
    assert_eq!(r.ulAESKeyBits, 256);
    assert_ne!(r.pOAEPParams, oaep_at);
    let o = unsafe { &*r.pOAEPParams };
    assert_eq!((o.hashAlg, o.mgf), (CKM_SHA256, CKG_MGF1_SHA256));
    let got = unsafe { owned_bytes(o.pSourceData as *const u8, o.ulSourceDataLen, &addrs) };
    assert_eq!(got, &e[..]);
    vec!["CK_RSA_AES_KEY_WRAP_PARAMS", "CK_RSA_PKCS_OAEP_PARAMS"]
}

/// PBKDF2 2.20: `ulPasswordLen` points to the length.
fn pbkdf2_220() -> Vec<&'static str> {
    let mut c = Caller::new();
    let (salt, prf, pw) = (c.buffer(8), c.buffer(2), c.buffer(13));
    let mut len: Box<CK_ULONG> = Box::new(13);
    let mut p = CK_PKCS5_PBKD2_PARAMS {
        saltSource: CKZ_SALT_SPECIFIED,
        pSaltSourceData: salt as *mut c_void,
        ulSaltSourceDataLen: 8,
        iterations: 4096,
        prf: CKP_PKCS5_PBKD2_HMAC_SHA256,
        pPrfData: prf as *mut c_void,
        ulPrfDataLen: 2,
        pPassword: pw,
        ulPasswordLen: &mut *len,
    };
    let owned = unsafe { copy_of(CKM_PKCS5_PBKD2, &mut p) }.unwrap();
    let (addrs, e) = (
        c.addresses(),
        (0..3).map(|i| c.expected(i)).collect::<Vec<_>>(),
    );
    c.scribble();
    *len = 0;
    let mut raw = owned.raw();
    let r: &CK_PKCS5_PBKD2_PARAMS = unsafe { relayed(&mut raw) };
    assert_eq!(r.iterations, 4096);
    unsafe {
        let salt = owned_bytes(
            r.pSaltSourceData as *const u8,
            r.ulSaltSourceDataLen,
            &addrs,
        );
        assert_eq!(salt, &e[0][..]);
        assert_eq!(
            owned_bytes(r.pPrfData as *const u8, r.ulPrfDataLen, &addrs),
            &e[1][..]
        );
        assert_eq!(
            owned_bytes(r.pPassword, *r.ulPasswordLen, &addrs),
            &e[2][..]
        );
    }
    vec!["CK_PKCS5_PBKD2_PARAMS", "CK_ULONG"]
}

/// Arrays of structs with pointers: SP 800-108's data params, OTP params.
fn arrays() -> Vec<&'static str> {
    let mut c = Caller::new();
    let mut counter = Box::new(CK_SP800_108_COUNTER_FORMAT {
        bLittleEndian: CK_FALSE,
        ulWidthInBits: 32,
    });
    let label = c.buffer(10);
    let iv = c.buffer(16);
    let mut data = vec![
        CK_PRF_DATA_PARAM {
            type_: CK_SP800_108_ITERATION_VARIABLE,
            pValue: &mut *counter as *mut _ as *mut c_void,
            ulValueLen: size_of::<CK_SP800_108_COUNTER_FORMAT>() as CK_ULONG,
        },
        CK_PRF_DATA_PARAM {
            type_: CK_SP800_108_BYTE_ARRAY,
            pValue: label as *mut c_void,
            ulValueLen: 10,
        },
    ];
    let mut p = CK_SP800_108_FEEDBACK_KDF_PARAMS {
        prfType: CKM_SHA256_HMAC,
        ulNumberOfDataParams: 2,
        pDataParams: data.as_mut_ptr(),
        ulIVLen: 16,
        pIV: iv,
        ulAdditionalDerivedKeys: 0,
        pAdditionalDerivedKeys: std::ptr::null_mut(),
    };
    let owned = unsafe { copy_of(CKM_SP800_108_FEEDBACK_KDF, &mut p) }.unwrap();
    let mut q = CK_SP800_108_KDF_PARAMS {
        prfType: CKM_SHA256_HMAC,
        ulNumberOfDataParams: 2,
        pDataParams: data.as_mut_ptr(),
        ulAdditionalDerivedKeys: 0,
        pAdditionalDerivedKeys: std::ptr::null_mut(),
    };
    let owned_counter = unsafe { copy_of(CKM_SP800_108_COUNTER_KDF, &mut q) }.unwrap();
    let (addrs, e) = (c.addresses(), [c.expected(0), c.expected(1)]);
    let data_at = data.as_ptr();
    c.scribble();
    counter.ulWidthInBits = 0;
    data.iter_mut().for_each(scribble_struct);
    let check = |d: *const CK_PRF_DATA_PARAM| unsafe {
        assert_ne!(d, data_at);
        let d = std::slice::from_raw_parts(d, 2);
        assert_eq!(d[0].type_, CK_SP800_108_ITERATION_VARIABLE);
        let f = &*(d[0].pValue as *const CK_SP800_108_COUNTER_FORMAT);
        assert_eq!(f.ulWidthInBits, 32);
        assert_eq!(d[1].type_, CK_SP800_108_BYTE_ARRAY);
        assert_eq!(
            owned_bytes(d[1].pValue as *const u8, d[1].ulValueLen, &addrs),
            &e[0][..]
        );
    };
    let mut raw = owned.raw();
    let r: &CK_SP800_108_FEEDBACK_KDF_PARAMS = unsafe { relayed(&mut raw) };
    check(r.pDataParams);
    assert_eq!(unsafe { owned_bytes(r.pIV, r.ulIVLen, &addrs) }, &e[1][..]);
    let mut raw = owned_counter.raw();
    let r: &CK_SP800_108_KDF_PARAMS = unsafe { relayed(&mut raw) };
    check(r.pDataParams);
    // A key to be returned through the parameter: refused.
    let mut keys: CK_DERIVED_KEY = unsafe { std::mem::zeroed() };
    q.ulAdditionalDerivedKeys = 1;
    q.pAdditionalDerivedKeys = &mut keys;
    q.pDataParams = std::ptr::null_mut();
    q.ulNumberOfDataParams = 0;
    assert_eq!(
        unsafe { copy_of(CKM_SP800_108_COUNTER_KDF, &mut q) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );

    let mut c = Caller::new();
    let (pin, challenge) = (c.buffer(4), c.buffer(8));
    let mut otp = vec![
        CK_OTP_PARAM {
            type_: CK_OTP_PIN,
            pValue: pin as *mut c_void,
            ulValueLen: 4,
        },
        CK_OTP_PARAM {
            type_: CK_OTP_VALUE,
            pValue: challenge as *mut c_void,
            ulValueLen: 8,
        },
    ];
    let mut p = CK_OTP_PARAMS {
        pParams: otp.as_mut_ptr(),
        ulCount: 2,
    };
    let owned = unsafe { copy_of(CKM_HOTP, &mut p) }.unwrap();
    let (addrs, e) = (c.addresses(), [c.expected(0), c.expected(1)]);
    c.scribble();
    otp.iter_mut().for_each(scribble_struct);
    let mut raw = owned.raw();
    let r: &CK_OTP_PARAMS = unsafe { relayed(&mut raw) };
    let got = unsafe { std::slice::from_raw_parts(r.pParams, 2) };
    assert_eq!((got[0].type_, got[1].type_), (CK_OTP_PIN, CK_OTP_VALUE));
    for (i, g) in got.iter().enumerate() {
        let v = unsafe { owned_bytes(g.pValue as *const u8, g.ulValueLen, &addrs) };
        assert_eq!(v, &e[i][..]);
    }
    vec![
        "CK_SP800_108_FEEDBACK_KDF_PARAMS",
        "CK_SP800_108_KDF_PARAMS",
        "CK_PRF_DATA_PARAM",
        "CK_OTP_PARAMS",
        "CK_OTP_PARAM",
    ]
}

/// Nested mechanisms: CMS signature (two, plus a C string) and KIP (an OAEP mechanism whose
/// label is three pointers deep).
fn nested_mechanisms() -> Vec<&'static str> {
    let mut c = Caller::new();
    let (requested, required) = (c.buffer(5), c.buffer(6));
    let mut pss = Box::new(CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    });
    let mut signing = Box::new(CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS_PSS,
        pParameter: &mut *pss as *mut _ as *mut c_void,
        ulParameterLen: size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG,
    });
    let mut digest = Box::new(CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    });
    let mut content_type = b"text/plain\0".to_vec();
    let mut p = CK_CMS_SIG_PARAMS {
        certificateHandle: CK_INVALID_HANDLE,
        pSigningMechanism: &mut *signing,
        pDigestMechanism: &mut *digest,
        pContentType: content_type.as_mut_ptr(),
        pRequestedAttributes: requested,
        ulRequestedAttributesLen: 5,
        pRequiredAttributes: required,
        ulRequiredAttributesLen: 6,
    };
    let owned = unsafe { copy_of(CKM_CMS_SIG, &mut p) }.unwrap();
    p.certificateHandle = 3;
    assert_eq!(
        unsafe { copy_of(CKM_CMS_SIG, &mut p) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID,
        "a certificate handle"
    );
    let mut addrs = c.addresses();
    addrs.extend([
        &*signing as *const _ as usize,
        &*digest as *const _ as usize,
        &*pss as *const _ as usize,
        content_type.as_ptr() as usize,
    ]);
    let e = [c.expected(0), c.expected(1)];
    c.scribble();
    content_type.fill(SCRIBBLE);
    scribble_struct(&mut *pss);
    scribble_struct(&mut *signing);
    scribble_struct(&mut *digest);
    let mut raw = owned.raw();
    let r: &CK_CMS_SIG_PARAMS = unsafe { relayed(&mut raw) };
    unsafe {
        assert!(!addrs.contains(&(r.pSigningMechanism as usize)));
        let s = &*r.pSigningMechanism;
        assert_eq!(s.mechanism, CKM_SHA256_RSA_PKCS_PSS);
        let pss = owned_bytes(s.pParameter as *const u8, s.ulParameterLen, &addrs);
        assert_eq!(pss.len(), size_of::<CK_RSA_PKCS_PSS_PARAMS>());
        assert_eq!((*(s.pParameter as *const CK_RSA_PKCS_PSS_PARAMS)).sLen, 32);
        let d = &*r.pDigestMechanism;
        assert!(!addrs.contains(&(r.pDigestMechanism as usize)));
        assert_eq!(
            (d.mechanism, d.pParameter, d.ulParameterLen),
            (CKM_SHA256, std::ptr::null_mut(), 0)
        );
        assert_eq!(owned_bytes(r.pContentType, 11, &addrs), b"text/plain\0");
        let req = owned_bytes(r.pRequestedAttributes, r.ulRequestedAttributesLen, &addrs);
        assert_eq!(req, &e[0][..]);
        let req = owned_bytes(r.pRequiredAttributes, r.ulRequiredAttributesLen, &addrs);
        assert_eq!(req, &e[1][..]);
    }

    let mut c = Caller::new();
    let (label, seed) = (c.buffer(4), c.buffer(9));
    let mut oaep = Box::new(CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA_1,
        mgf: CKG_MGF1_SHA1,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: label as *mut c_void,
        ulSourceDataLen: 4,
    });
    let mut inner = Box::new(CK_MECHANISM {
        mechanism: CKM_RSA_PKCS_OAEP,
        pParameter: &mut *oaep as *mut _ as *mut c_void,
        ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
    });
    let mut p = CK_KIP_PARAMS {
        pMechanism: &mut *inner,
        hKey: CK_INVALID_HANDLE,
        pSeed: seed,
        ulSeedLen: 9,
    };
    let owned = unsafe { copy_of(CKM_KIP_DERIVE, &mut p) }.unwrap();
    let (addrs, e) = (c.addresses(), [c.expected(0), c.expected(1)]);
    c.scribble();
    scribble_struct(&mut *oaep);
    scribble_struct(&mut *inner);
    let mut raw = owned.raw();
    let r: &CK_KIP_PARAMS = unsafe { relayed(&mut raw) };
    unsafe {
        let m = &*r.pMechanism;
        assert_eq!(m.mechanism, CKM_RSA_PKCS_OAEP);
        let o = &*(m.pParameter as *const CK_RSA_PKCS_OAEP_PARAMS);
        assert_eq!(o.hashAlg, CKM_SHA_1);
        let got = owned_bytes(o.pSourceData as *const u8, o.ulSourceDataLen, &addrs);
        assert_eq!(got, &e[0][..]);
        assert_eq!(owned_bytes(r.pSeed, r.ulSeedLen, &addrs), &e[1][..]);
    }
    // A nested mechanism p11ha refuses makes the outer parameter invalid.
    inner.mechanism = CKM_VENDOR_DEFINED;
    inner.pParameter = seed as *mut c_void;
    inner.ulParameterLen = 4;
    assert_eq!(
        unsafe { copy_of(CKM_KIP_WRAP, &mut p) }.unwrap_err(),
        CKR_MECHANISM_PARAM_INVALID
    );
    vec!["CK_CMS_SIG_PARAMS", "CK_KIP_PARAMS"]
}

#[test]
fn every_layout_round_trips_field_by_field() {
    let mut tested: BTreeSet<&str> = flat_round_trips().into_iter().collect();
    tested.insert(kea());
    tested.extend(stream_ciphers());
    tested.extend(rsa_aes_key_wrap());
    tested.extend(pbkdf2_220());
    tested.extend(arrays());
    tested.extend(nested_mechanisms());
    let table: BTreeSet<&str> = layouts::ALL.iter().map(|l| l.name).collect();
    let untested: Vec<_> = table.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "layouts without a round trip: {untested:?}"
    );
}

#[test]
fn every_struct_mechanism_maps_to_layouts_of_the_table() {
    // The table's layouts are the ones tested above: a mechanism must not point elsewhere.
    let names: BTreeSet<&str> = layouts::ALL.iter().map(|l| l.name).collect();
    for m in 0..0x5000u64 {
        if let table::Param::Struct(ls) | table::Param::StructOrBytes(ls) = table::param(m) {
            for l in ls {
                assert!(names.contains(l.name), "{m:#x}: {}", l.name);
            }
        }
    }
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
    assert_eq!(ck.pParameter as usize % 8, 0, "aligned for the member");
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
