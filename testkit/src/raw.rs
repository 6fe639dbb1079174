//! A minimal PKCS#11 client over the raw function table (libloading + cryptoki-sys), with no
//! per-call allocation on the paths p11ha-bench measures. Logs in with [`crate::USER_PIN`].

use std::ptr::null_mut;

use cryptoki_sys::*;
use libloading::Library;
use p11ha::ffi::ca::P11haGroupStatus;

use crate::status::StatusApi;
use crate::USER_PIN;

/// One loaded, initialized module.
pub struct Module {
    fns: &'static CK_FUNCTION_LIST,
    /// p11ha's status API, when the module is p11ha.
    status: Option<StatusApi>,
}

// SAFETY: the table is immutable; modules are initialized with CKF_OS_LOCKING_OK.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

macro_rules! call {
    ($m:expr, $f:ident ( $($a:expr),* )) => {
        match $m.fns.$f {
            // SAFETY: every pointer argument points at live memory owned by the caller.
            Some(f) => unsafe { f($($a),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

pub fn check(what: &str, rv: CK_RV) -> Result<(), String> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!("{what} returned {rv:#x}"))
    }
}

impl Module {
    /// Loads `path` (never unloaded) and calls C_GetFunctionList; returns it uninitialized.
    pub fn load(path: &str) -> Result<Module, String> {
        // SAFETY: loading a PKCS#11 module runs its initializers; that is the point.
        let lib = unsafe { Library::new(path) }.map_err(|e| format!("load {path}: {e}"))?;
        let lib: &'static Library = Box::leak(Box::new(lib));
        // SAFETY: standard PKCS#11 entry point signature.
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| e.to_string())?;
        let mut list: *mut CK_FUNCTION_LIST = null_mut();
        check("C_GetFunctionList", unsafe { get(&mut list) })?;
        // SAFETY: the table lives as long as the (leaked) library.
        let fns = unsafe { list.as_ref() }.ok_or("no function list")?;
        Ok(Module {
            fns,
            status: StatusApi::from_library(lib),
        })
    }

    pub fn initialize(&self) -> Result<(), String> {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: null_mut(),
        };
        check(
            "C_Initialize",
            call!(self, C_Initialize(&mut args as *mut _ as *mut _)),
        )
    }

    pub fn finalize(&self) {
        call!(self, C_Finalize(null_mut()));
    }

    /// The slot whose token has `label`.
    pub fn find_slot(&self, label: &str) -> Result<CK_SLOT_ID, String> {
        let mut n: CK_ULONG = 0;
        check(
            "C_GetSlotList",
            call!(self, C_GetSlotList(CK_TRUE, null_mut(), &mut n)),
        )?;
        let mut v = vec![0; n as usize];
        check(
            "C_GetSlotList",
            call!(self, C_GetSlotList(CK_TRUE, v.as_mut_ptr(), &mut n)),
        )?;
        v.truncate(n as usize);
        for s in v {
            // SAFETY: plain C struct.
            let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
            if call!(self, C_GetTokenInfo(s, &mut info)) != CKR_OK {
                continue;
            }
            if String::from_utf8_lossy(&info.label).trim_end() == label {
                return Ok(s);
            }
        }
        Err(format!("no token labelled {label}"))
    }

    pub fn open_session(&self, slot: CK_SLOT_ID) -> Result<CK_SESSION_HANDLE, String> {
        let mut h = 0;
        check(
            "C_OpenSession",
            call!(
                self,
                C_OpenSession(
                    slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    null_mut(),
                    None,
                    &mut h
                )
            ),
        )?;
        Ok(h)
    }

    pub fn close_session(&self, h: CK_SESSION_HANDLE) {
        call!(self, C_CloseSession(h));
    }

    pub fn login(&self, h: CK_SESSION_HANDLE) -> Result<(), String> {
        let mut pin = USER_PIN.as_bytes().to_vec();
        let rv = call!(
            self,
            C_Login(h, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
        );
        if rv == CKR_USER_ALREADY_LOGGED_IN {
            return Ok(());
        }
        check("C_Login", rv)
    }

    /// The object of `class` with CKA_ID `[id]`.
    pub fn find(
        &self,
        h: CK_SESSION_HANDLE,
        class: CK_OBJECT_CLASS,
        id: u8,
    ) -> Result<CK_OBJECT_HANDLE, String> {
        let mut class = class;
        let mut id = [id];
        let mut tmpl = [
            CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: &mut class as *mut _ as *mut _,
                ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_ID,
                pValue: id.as_mut_ptr() as *mut _,
                ulValueLen: 1,
            },
        ];
        check(
            "C_FindObjectsInit",
            call!(self, C_FindObjectsInit(h, tmpl.as_mut_ptr(), 2)),
        )?;
        let mut objs = [0; 4];
        let mut n = 0;
        let rv = call!(self, C_FindObjects(h, objs.as_mut_ptr(), 4, &mut n));
        call!(self, C_FindObjectsFinal(h));
        check("C_FindObjects", rv)?;
        if n != 1 {
            return Err(format!("{n} objects with id {}", id[0]));
        }
        Ok(objs[0])
    }

    /// C_CreateObject of a token data object (CKA_TOKEN and CKA_PRIVATE true) with `label` and
    /// `value`.
    pub fn create_data(&self, h: CK_SESSION_HANDLE, label: &[u8], value: &[u8]) -> CK_RV {
        let mut class: CK_OBJECT_CLASS = CKO_DATA;
        let mut token: CK_BBOOL = CK_TRUE;
        let mut private: CK_BBOOL = CK_TRUE;
        let mut label = label.to_vec();
        let mut value = value.to_vec();
        let mut tmpl = [
            attr(CKA_CLASS, &mut class),
            attr(CKA_TOKEN, &mut token),
            attr(CKA_PRIVATE, &mut private),
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_mut_ptr() as *mut _,
                ulValueLen: label.len() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: value.as_mut_ptr() as *mut _,
                ulValueLen: value.len() as CK_ULONG,
            },
        ];
        let mut o = 0;
        call!(
            self,
            C_CreateObject(h, tmpl.as_mut_ptr(), tmpl.len() as CK_ULONG, &mut o)
        )
    }

    /// Every data object visible in session `h`.
    pub fn data_objects(&self, h: CK_SESSION_HANDLE) -> Result<Vec<CK_OBJECT_HANDLE>, String> {
        let mut class: CK_OBJECT_CLASS = CKO_DATA;
        let mut tmpl = [attr(CKA_CLASS, &mut class)];
        check(
            "C_FindObjectsInit",
            call!(self, C_FindObjectsInit(h, tmpl.as_mut_ptr(), 1)),
        )?;
        let mut all = Vec::new();
        let mut chunk = [0; 256];
        let rv = loop {
            let mut n = 0;
            let rv = call!(
                self,
                C_FindObjects(h, chunk.as_mut_ptr(), chunk.len() as CK_ULONG, &mut n)
            );
            if rv != CKR_OK || n == 0 {
                break rv;
            }
            all.extend_from_slice(&chunk[..n as usize]);
        };
        call!(self, C_FindObjectsFinal(h));
        check("C_FindObjects", rv)?;
        Ok(all)
    }

    pub fn destroy(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_DestroyObject(h, o))
    }

    pub fn sign(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &mut [u8],
        out: &mut [u8],
    ) -> CK_RV {
        self.sign_calls(h, mech, key, data, out, false)
    }

    /// C_SignInit, then C_Sign twice as the standard's two-call convention has it: a length
    /// query with a NULL buffer, then the buffer of that length.
    pub fn sign_two_call(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &mut [u8],
        out: &mut [u8],
    ) -> CK_RV {
        self.sign_calls(h, mech, key, data, out, true)
    }

    fn sign_calls(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &mut [u8],
        out: &mut [u8],
        query_first: bool,
    ) -> CK_RV {
        let rv = call!(self, C_SignInit(h, mech, key));
        if rv != CKR_OK {
            return rv;
        }
        let (d, n) = (data.as_mut_ptr(), data.len() as CK_ULONG);
        let mut len = out.len() as CK_ULONG;
        if query_first {
            let rv = call!(self, C_Sign(h, d, n, std::ptr::null_mut(), &mut len));
            if rv != CKR_OK {
                return rv;
            }
            if len as usize > out.len() {
                return CKR_BUFFER_TOO_SMALL;
            }
        }
        call!(self, C_Sign(h, d, n, out.as_mut_ptr(), &mut len))
    }

    pub fn encrypt(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &mut [u8],
        out: &mut [u8],
    ) -> CK_RV {
        let rv = call!(self, C_EncryptInit(h, mech, key));
        if rv != CKR_OK {
            return rv;
        }
        let mut len = out.len() as CK_ULONG;
        call!(
            self,
            C_Encrypt(
                h,
                data.as_mut_ptr(),
                data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut len
            )
        )
    }

    pub fn random(&self, h: CK_SESSION_HANDLE, out: &mut [u8]) -> CK_RV {
        call!(
            self,
            C_GenerateRandom(h, out.as_mut_ptr(), out.len() as CK_ULONG)
        )
    }

    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        // SAFETY: plain C struct.
        let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        call!(self, C_GetSessionInfo(h, &mut info))
    }

    /// The module's function table, for callers that make calls this client has no method for
    /// (the differential tester's bad arguments).
    pub fn functions(&self) -> &'static CK_FUNCTION_LIST {
        self.fns
    }

    /// p11ha's status API of this module (None for other modules).
    pub fn status(&self) -> Option<&StatusApi> {
        self.status.as_ref()
    }

    /// p11ha's per-member status of the group in `slot` (None for other modules or on error).
    pub fn group_status(&self, slot: CK_SLOT_ID) -> Option<Box<P11haGroupStatus>> {
        self.status.as_ref()?.group(slot).ok()
    }
}

/// A template entry pointing at `v` (which must outlive the call that reads it).
fn attr<T>(type_: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: v as *mut T as *mut _,
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}
