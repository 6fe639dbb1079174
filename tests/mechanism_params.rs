//! Mechanism parameters through the C ABI against real SoftHSM members: pointer-bearing
//! parameters give the member's own result after the caller's memory is gone (also when the
//! operation is replayed on another member), and parameters p11ha cannot copy get a clear
//! CK_RV before any member sees them.

mod support;

use cryptoki_sys::*;
use libloading::Library;
use std::ffi::c_void;
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::*;

/// p11ha is one library per process: tests that load it take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

macro_rules! ok {
    ($e:expr) => {{
        let rv = $e;
        assert_eq!(rv, CKR_OK, "{} = {rv:#x}", stringify!($e));
    }};
}

/// One loaded, initialized PKCS#11 module, called raw. C_Finalize on drop.
struct Module {
    f: &'static CK_FUNCTION_LIST,
    _lib: Library,
}

impl Module {
    fn load(path: &Path, env: &[(&str, Option<&str>)]) -> Self {
        with_env_lock(env, || unsafe {
            let lib = Library::new(path).unwrap();
            let gfl: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
                lib.get(b"C_GetFunctionList\0").unwrap();
            let mut p = null_mut();
            ok!(gfl(&mut p));
            let f: &'static CK_FUNCTION_LIST = &*p;
            let mut args = CK_C_INITIALIZE_ARGS {
                CreateMutex: None,
                DestroyMutex: None,
                LockMutex: None,
                UnlockMutex: None,
                flags: CKF_OS_LOCKING_OK,
                pReserved: null_mut(),
            };
            ok!(f.C_Initialize.unwrap()(&mut args as *mut _ as *mut c_void));
            Module { f, _lib: lib }
        })
    }

    /// A logged-in read-write session on the token labelled `label`.
    fn session(&self, label: &str) -> CK_SESSION_HANDLE {
        let f = self.f;
        unsafe {
            let mut n: CK_ULONG = 0;
            ok!(f.C_GetSlotList.unwrap()(CK_TRUE, null_mut(), &mut n));
            let mut slots = vec![0; n as usize];
            ok!(f.C_GetSlotList.unwrap()(
                CK_TRUE,
                slots.as_mut_ptr(),
                &mut n
            ));
            let slot = slots
                .into_iter()
                .find(|&s| {
                    let mut ti: CK_TOKEN_INFO = std::mem::zeroed();
                    f.C_GetTokenInfo.unwrap()(s, &mut ti) == CKR_OK
                        && String::from_utf8_lossy(&ti.label).trim_end() == label
                })
                .unwrap_or_else(|| panic!("no token {label}"));
            let mut h = 0;
            let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
            ok!(f.C_OpenSession.unwrap()(
                slot,
                flags,
                null_mut(),
                None,
                &mut h
            ));
            let pin = USER_PIN.as_bytes();
            ok!(f.C_Login.unwrap()(
                h,
                CKU_USER,
                pin.as_ptr() as *mut _,
                pin.len() as CK_ULONG
            ));
            h
        }
    }

    fn find(&self, s: CK_SESSION_HANDLE, class: CK_OBJECT_CLASS, id: u8) -> CK_OBJECT_HANDLE {
        let f = self.f;
        let mut class = class;
        let mut id = [id];
        let mut t = [
            attr(CKA_CLASS, &mut class),
            CK_ATTRIBUTE {
                type_: CKA_ID,
                pValue: id.as_mut_ptr() as *mut c_void,
                ulValueLen: 1,
            },
        ];
        unsafe {
            ok!(f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 2));
            let (mut h, mut n) = (0, 0);
            ok!(f.C_FindObjects.unwrap()(s, &mut h, 1, &mut n));
            ok!(f.C_FindObjectsFinal.unwrap()(s));
            assert_eq!(n, 1, "object {id:?} of class {class}");
            h
        }
    }

    /// A session secret key with a known value.
    fn secret(&self, s: CK_SESSION_HANDLE, kind: CK_KEY_TYPE, value: &[u8]) -> CK_OBJECT_HANDLE {
        let (mut class, mut kind, mut yes, mut no) = (CKO_SECRET_KEY, kind, CK_TRUE, CK_FALSE);
        let mut value = value.to_vec();
        let mut t = [
            attr(CKA_CLASS, &mut class),
            attr(CKA_KEY_TYPE, &mut kind),
            attr(CKA_TOKEN, &mut no),
            attr(CKA_DERIVE, &mut yes),
            CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: value.as_mut_ptr() as *mut c_void,
                ulValueLen: value.len() as CK_ULONG,
            },
        ];
        let mut h = 0;
        ok!(unsafe { self.f.C_CreateObject.unwrap()(s, t.as_mut_ptr(), 5, &mut h) });
        h
    }

    /// Derives an extractable generic secret of `len` bytes and returns its value.
    fn derive(
        &self,
        s: CK_SESSION_HANDLE,
        m: &mut CK_MECHANISM,
        base: CK_OBJECT_HANDLE,
        len: CK_ULONG,
    ) -> Result<Vec<u8>, CK_RV> {
        let f = self.f;
        let (mut class, mut kind, mut yes, mut no, mut len) =
            (CKO_SECRET_KEY, CKK_GENERIC_SECRET, CK_TRUE, CK_FALSE, len);
        let mut t = [
            attr(CKA_CLASS, &mut class),
            attr(CKA_KEY_TYPE, &mut kind),
            attr(CKA_TOKEN, &mut no),
            attr(CKA_SENSITIVE, &mut no),
            attr(CKA_EXTRACTABLE, &mut yes),
            attr(CKA_VALUE_LEN, &mut len),
        ];
        unsafe {
            let mut h = 0;
            let rv = f.C_DeriveKey.unwrap()(s, m, base, t.as_mut_ptr(), 6, &mut h);
            if rv != CKR_OK {
                return Err(rv);
            }
            let mut v = vec![0u8; len as usize];
            let mut a = [CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: v.as_mut_ptr() as *mut c_void,
                ulValueLen: len,
            }];
            ok!(f.C_GetAttributeValue.unwrap()(s, h, a.as_mut_ptr(), 1));
            Ok(v)
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        unsafe { self.f.C_Finalize.unwrap()(null_mut()) };
    }
}

fn attr<T>(kind: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: v as *mut T as *mut c_void,
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

/// What an application does to its parameter memory once the Init call returned: reuse it,
/// then free it.
fn scribble_and_free(buffers: Vec<Vec<u8>>) {
    for mut b in buffers {
        b.fill(0xEE);
        drop(b);
    }
}

/// AES-GCM encryption whose IV, AAD and parameter struct are overwritten and freed between
/// C_EncryptInit and C_Encrypt.
fn gcm_encrypt(m: &Module, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE, data: &[u8]) -> Vec<u8> {
    let f = m.f;
    let mut iv = b"twelve bytes".to_vec();
    let mut aad = b"additional data, 29 bytes of it".to_vec();
    let mut params = Box::new(CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: iv.len() as CK_ULONG,
        ulIvBits: 96,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: 128,
    });
    let mut mech = Box::new(CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: &mut *params as *mut CK_GCM_PARAMS as *mut c_void,
        ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    });
    unsafe {
        ok!(f.C_EncryptInit.unwrap()(s, &mut *mech, key));
        std::ptr::write_bytes(&mut *params as *mut CK_GCM_PARAMS, 0xEE, 1);
        std::ptr::write_bytes(&mut *mech as *mut CK_MECHANISM, 0xEE, 1);
        drop((params, mech));
        scribble_and_free(vec![iv, aad]);
        let mut out = vec![0u8; data.len() + 16];
        let mut n = out.len() as CK_ULONG;
        ok!(f.C_Encrypt.unwrap()(
            s,
            data.as_ptr() as *mut _,
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut n
        ));
        out.truncate(n as usize);
        out
    }
}

/// DES3 key derivation by encrypting data, with a CK_KEY_DERIVATION_STRING_DATA (ECB) or a
/// CK_DES_CBC_ENCRYPT_DATA_PARAMS (CBC): parameters p11ha used to copy with the caller's
/// pointer inside.
fn des3_derivations(m: &Module, s: CK_SESSION_HANDLE, base: CK_OBJECT_HANDLE) -> Vec<Vec<u8>> {
    let mut data = (0u8..24).collect::<Vec<_>>();
    let mut ecb = CK_KEY_DERIVATION_STRING_DATA {
        pData: data.as_mut_ptr(),
        ulLen: 24,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_DES3_ECB_ENCRYPT_DATA,
        pParameter: &mut ecb as *mut _ as *mut c_void,
        ulParameterLen: size_of::<CK_KEY_DERIVATION_STRING_DATA>() as CK_ULONG,
    };
    let a = m.derive(s, &mut mech, base, 24).expect("DES3-ECB derive");
    let mut cbc = CK_DES_CBC_ENCRYPT_DATA_PARAMS {
        iv: *b"initvect",
        pData: data.as_mut_ptr(),
        length: 24,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_DES3_CBC_ENCRYPT_DATA,
        pParameter: &mut cbc as *mut _ as *mut c_void,
        ulParameterLen: size_of::<CK_DES_CBC_ENCRYPT_DATA_PARAMS>() as CK_ULONG,
    };
    let b = m.derive(s, &mut mech, base, 24).expect("DES3-CBC derive");
    vec![a, b]
}

/// An independent SoftHSM instance on member `i`'s token (p11ha loads its own copy).
fn direct(cluster: &Cluster, i: usize) -> Module {
    let lib = cluster.dir().join(format!("direct-m{i}.so"));
    if !lib.exists() {
        std::fs::copy(SOFTHSM_LIB, &lib).unwrap();
    }
    let conf = cluster.members[i].conf.to_str().unwrap().to_string();
    Module::load(&lib, &[("SOFTHSM2_CONF", Some(&conf))])
}

fn p11ha(conf: &Path) -> Module {
    Module::load(&p11ha_lib(), &[("P11HA_CONF", conf.to_str())])
}

const DES3_KEY: &[u8; 24] = b"0123456789abcdefghijklmn";

#[test]
fn pointer_bearing_parameters_give_the_members_result_after_the_caller_freed_them() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let conf = cluster.write_config(&ConfigOpts {
        direct: true,
        ..Default::default()
    });
    let data = b"sixteen byte msg and some more";
    let (ha_ct, ha_keys) = {
        let ha = p11ha(&conf);
        let s = ha.session(GROUP_LABEL);
        let aes = ha.find(s, CKO_SECRET_KEY, AES_ID);
        let des3 = ha.secret(s, CKK_DES3, DES3_KEY);
        (
            gcm_encrypt(&ha, s, aes, data),
            des3_derivations(&ha, s, des3),
        )
    };
    let m0 = direct(&cluster, 0);
    let s = m0.session(&cluster.members[0].label);
    let aes = m0.find(s, CKO_SECRET_KEY, AES_ID);
    let des3 = m0.secret(s, CKK_DES3, DES3_KEY);
    assert_eq!(
        ha_ct,
        gcm_encrypt(&m0, s, aes, data),
        "AES-GCM through p11ha"
    );
    assert_eq!(ha_ct.len(), data.len() + 16);
    assert_eq!(
        ha_keys,
        des3_derivations(&m0, s, des3),
        "DES3 derivations through p11ha"
    );
    assert_ne!(ha_keys[0], ha_keys[1]);
}

#[test]
fn parameters_p11ha_cannot_copy_are_refused_before_a_member_sees_them() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let conf = cluster.write_config(&ConfigOpts {
        direct: true,
        ..Default::default()
    });
    let init = |m: &Module, s, key, mut mech: CK_MECHANISM| unsafe {
        m.f.C_EncryptInit.unwrap()(s, &mut mech, key)
    };
    let mut blob = [7u8; 24];
    let vendor = |p: &mut [u8; 24], len| CK_MECHANISM {
        mechanism: CKM_VENDOR_DEFINED | 0x1234,
        pParameter: if len == 0 {
            null_mut()
        } else {
            p.as_mut_ptr() as *mut c_void
        },
        ulParameterLen: len,
    };

    let m0 = direct(&cluster, 0);
    let s0 = m0.session(&cluster.members[0].label);
    let aes0 = m0.find(s0, CKO_SECRET_KEY, AES_ID);
    let member_says = init(&m0, s0, aes0, vendor(&mut blob, 24));
    assert_eq!(
        member_says, CKR_MECHANISM_INVALID,
        "SoftHSM on a vendor mechanism"
    );

    let ha = p11ha(&conf);
    let s = ha.session(GROUP_LABEL);
    let aes = ha.find(s, CKO_SECRET_KEY, AES_ID);
    // With a parameter of unknown shape: refused by p11ha, whatever the member would say.
    assert_eq!(
        init(&ha, s, aes, vendor(&mut blob, 24)),
        CKR_MECHANISM_PARAM_INVALID
    );
    // Without one it goes to the member, who answers as it does directly.
    assert_eq!(init(&ha, s, aes, vendor(&mut blob, 0)), member_says);

    // A known struct of the wrong size: a pointer-bearing one cannot be copied, so p11ha
    // refuses it (SoftHSM says CKR_ARGUMENTS_BAD); a pointer-free one goes to the member.
    let sized = |kind, p: &mut [u8; 24], len| CK_MECHANISM {
        mechanism: kind,
        pParameter: p.as_mut_ptr() as *mut c_void,
        ulParameterLen: len,
    };
    let mut zeros = [0u8; 24];
    assert_eq!(
        init(&m0, s0, aes0, sized(CKM_AES_GCM, &mut zeros, 24)),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        init(&ha, s, aes, sized(CKM_AES_GCM, &mut zeros, 24)),
        CKR_MECHANISM_PARAM_INVALID
    );
    let short_ctr = init(&m0, s0, aes0, sized(CKM_AES_CTR, &mut zeros, 16));
    assert_ne!(short_ctr, CKR_OK);
    assert_eq!(
        init(&ha, s, aes, sized(CKM_AES_CTR, &mut zeros, 16)),
        short_ctr
    );

    // A parameter through which the member would return data: refused.
    let (mut client, mut server) = ([1u8; 32], [2u8; 32]);
    let mut version = CK_VERSION { major: 3, minor: 3 };
    let mut master = CK_TLS12_MASTER_KEY_DERIVE_PARAMS {
        RandomInfo: CK_SSL3_RANDOM_DATA {
            pClientRandom: client.as_mut_ptr(),
            ulClientRandomLen: 32,
            pServerRandom: server.as_mut_ptr(),
            ulServerRandomLen: 32,
        },
        pVersion: &mut version,
        prfHashMechanism: CKM_SHA256,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_TLS12_MASTER_KEY_DERIVE,
        pParameter: &mut master as *mut _ as *mut c_void,
        ulParameterLen: size_of::<CK_TLS12_MASTER_KEY_DERIVE_PARAMS>() as CK_ULONG,
    };
    assert_eq!(
        ha.derive(s, &mut mech, aes, 48),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    let mut key_mat: CK_TLS12_KEY_MAT_PARAMS = unsafe { std::mem::zeroed() };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_TLS12_KEY_AND_MAC_DERIVE,
        pParameter: &mut key_mat as *mut _ as *mut c_void,
        ulParameterLen: size_of::<CK_TLS12_KEY_MAT_PARAMS>() as CK_ULONG,
    };
    assert_eq!(ha.derive(s, &mut mech, aes, 48), Err(CKR_MECHANISM_INVALID));

    // The caller's mistakes cost no member, and the session still serves.
    let ct = gcm_encrypt(&ha, s, aes, b"still here");
    assert_eq!(ct.len(), 10 + 16);
    assert!(
        !cluster
            .ha_log_lines()
            .iter()
            .any(|l| l.contains("dropped member")),
        "{:#?}",
        cluster.ha_log_lines()
    );
}

/// Member 0 behind the fault module (tests/c/fault_module.c), member 1 a standby: operations
/// start on member 0, and move to member 1 when member 0 fails.
fn faulty_active_and_standby(cluster: &Cluster) -> (PathBuf, PathBuf) {
    let fault = cluster.dir().join("fault.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fault_module.c");
    let st = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-I/usr/include/p11-kit-1",
            "-o",
        ])
        .arg(&fault)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success(), "building the fault module");
    let control = cluster.dir().join("faults");
    std::fs::write(&control, "").unwrap();
    let conf = cluster.write_config(&ConfigOpts {
        direct: true,
        members: Some(vec![0]),
        ..Default::default()
    });
    let (m0, lib0) = (&cluster.members[0], cluster.softhsm_copy(0));
    let from = format!(
        "Provider00Library = {};\n   Provider00Env = SOFTHSM2_CONF={};",
        lib0.display(),
        m0.conf.display()
    );
    let to = format!(
        "Provider00Library = {};\n   Provider00Env = FAULT_MODULE={}, SOFTHSM2_CONF={}, FAULT_CONTROL={};",
        fault.display(),
        lib0.display(),
        m0.conf.display(),
        control.display()
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    let standby = format!(
        "   VirtualToken00Standby = {};\n   VirtualTokenActiveRecovery",
        cluster.members[1].serial
    );
    let text = text
        .replace(&from, &to)
        .replace("   VirtualTokenActiveRecovery", &standby);
    assert!(text.contains(&to) && text.contains("Standby"), "{text}");
    std::fs::write(&conf, text).unwrap();
    (conf, control)
}

#[test]
fn an_operation_replayed_on_another_member_uses_p11has_copy() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let (conf, control) = faulty_active_and_standby(&cluster);
    let data = b"signed after the member died";
    let sig = {
        let ha = p11ha(&conf);
        let f = ha.f;
        let s = ha.session(GROUP_LABEL);
        let key = ha.find(s, CKO_PRIVATE_KEY, RSA_ID);
        let mut pss = Box::new(CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: 32,
        });
        let mut mech = Box::new(CK_MECHANISM {
            mechanism: CKM_SHA256_RSA_PKCS_PSS,
            pParameter: &mut *pss as *mut _ as *mut c_void,
            ulParameterLen: size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG,
        });
        unsafe {
            ok!(f.C_SignInit.unwrap()(s, &mut *mech, key));
            std::ptr::write_bytes(&mut *pss as *mut CK_RSA_PKCS_PSS_PARAMS, 0xEE, 1);
            std::ptr::write_bytes(&mut *mech as *mut CK_MECHANISM, 0xEE, 1);
            drop((pss, mech));
            // Member 0 is gone for the final call: the operation restarts on member 1 from the
            // copy taken at C_SignInit.
            std::fs::write(&control, "C_Sign 0x30\n").unwrap(); // CKR_DEVICE_ERROR
            let mut sig = vec![0u8; 256];
            let mut n = sig.len() as CK_ULONG;
            ok!(f.C_Sign.unwrap()(
                s,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                sig.as_mut_ptr(),
                &mut n
            ));
            sig.truncate(n as usize);
            sig
        }
    };
    let dropped = format!("has dropped member: {}", cluster.members[0].serial);
    assert!(
        cluster
            .wait_ha_log(&dropped, Duration::from_secs(2))
            .is_some(),
        "the operation did not move: {:#?}",
        cluster.ha_log_lines()
    );
    // A PSS signature with SHA-256, MGF1-SHA-256 and a 32-byte salt, checked by the member.
    let m1 = direct(&cluster, 1);
    let s = m1.session(&cluster.members[1].label);
    let public = m1.find(s, CKO_PUBLIC_KEY, RSA_ID);
    let mut pss = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS_PSS,
        pParameter: &mut pss as *mut _ as *mut c_void,
        ulParameterLen: size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG,
    };
    unsafe {
        ok!(m1.f.C_VerifyInit.unwrap()(s, &mut mech, public));
        ok!(m1.f.C_Verify.unwrap()(
            s,
            data.as_ptr() as *mut _,
            data.len() as CK_ULONG,
            sig.as_ptr() as *mut _,
            sig.len() as CK_ULONG
        ));
    }
}
