//! One member module (`HAProviders.ProviderNN`) and its instances.
//!
//! A provider is a loaded library plus the environment it needs. An [`Instance`] is one
//! `C_GetFunctionList` + `C_Initialize` of it: p11-kit-client gives a fresh, independent instance
//! per `C_GetFunctionList`, and a dead one never reconnects, so recovery makes a new instance.
//! Every call into an instance is time-bounded (`bounded::run`) and takes and returns owned data.
//! Libraries are never unloaded: a hung call may still be running inside one.

use crate::bounded::{self, TimedOut};
use crate::config::ProviderConfig;
use crate::mechanism::{raw_template, Attr, OwnedMechanism};
use cryptoki_sys::*;
use libloading::Library;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Internal code for "the member did not answer in time"; never returned to applications.
pub const RV_TIMEOUT: CK_RV = CKR_VENDOR_DEFINED | 0x0011_0001;

pub type MemberResult<T> = Result<T, CK_RV>;

/// C_GetAttributeValue's answer: the call's CK_RV and, per attribute, the length the member
/// reported and the value when it was copied.
pub type AttributeValues = (CK_RV, Vec<(CK_ULONG, Option<Vec<u8>>)>);

/// The function table of one initialized instance.
#[derive(Clone, Copy)]
struct Fns(&'static CK_FUNCTION_LIST);
// SAFETY: the table is immutable and lives as long as the (never unloaded) library; modules
// initialized with CKF_OS_LOCKING_OK accept calls from any thread.
unsafe impl Send for Fns {}
unsafe impl Sync for Fns {}

/// Calls `$f` of the table with the given arguments; a missing function is CKR_FUNCTION_NOT_SUPPORTED.
macro_rules! ck {
    ($fns:expr, $f:ident ( $($a:expr),* )) => {
        match $fns.0.$f {
            // SAFETY: arguments are built by the caller from owned, live buffers.
            Some(f) => unsafe { f($($a),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

/// Libraries by path, loaded once and kept for the life of the process.
fn library(path: &Path) -> Result<&'static Library, String> {
    let mut guard = LIBS.lock();
    let libs = guard.get_or_insert_with(HashMap::new);
    if let Some(lib) = libs.get(path) {
        return Ok(lib);
    }
    // SAFETY: loading a PKCS#11 module runs its initializers; that is what the user configured.
    let lib = unsafe { Library::new(path) }.map_err(|e| e.to_string())?;
    let lib: &'static Library = Box::leak(Box::new(lib));
    libs.insert(path.to_path_buf(), lib);
    Ok(lib)
}

/// Serializes environment changes: `ProviderNNEnv` is process-wide while it is set.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Libraries by path, loaded once and kept for the life of the process.
static LIBS: Mutex<Option<HashMap<PathBuf, &'static Library>>> = Mutex::new(None);

/// In a forked child (one thread): releases locks a parent thread may have held at the fork.
pub(crate) fn after_fork_in_child() {
    for lock in [&ENV_LOCK as &dyn ForceUnlock, &LIBS] {
        lock.release_if_held();
    }
}

trait ForceUnlock {
    fn release_if_held(&self);
}

impl<T> ForceUnlock for Mutex<T> {
    fn release_if_held(&self) {
        if self.is_locked() {
            // SAFETY: only called in a single-threaded forked child, where the owner is gone.
            unsafe { self.force_unlock() };
        }
    }
}

/// Sets variables and restores the previous values on drop.
struct EnvScope(Vec<(String, Option<std::ffi::OsString>)>);

impl EnvScope {
    fn set(vars: &[(String, String)]) -> Self {
        let saved = vars
            .iter()
            .map(|(k, v)| {
                let old = std::env::var_os(k);
                std::env::set_var(k, v);
                (k.clone(), old)
            })
            .collect();
        EnvScope(saved)
    }
}

impl Drop for EnvScope {
    fn drop(&mut self) {
        for (k, old) in self.0.drain(..).rev() {
            match old {
                Some(v) => std::env::set_var(&k, v),
                None => std::env::remove_var(&k),
            }
        }
    }
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// A configured member module.
pub struct Provider {
    pub index: u32,
    pub library: PathBuf,
    env: Vec<(String, String)>,
    receive_timeout: Duration,
}

/// Why an instance could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    Library(String),
    NoFunctionList,
    Rv(&'static str, CK_RV),
    TimedOut,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Library(e) => write!(f, "cannot load library: {e}"),
            LoadError::NoFunctionList => write!(f, "C_GetFunctionList returned no table"),
            LoadError::Rv(call, rv) => {
                write!(
                    f,
                    "{call} returned {rv:#010x} ({})",
                    crate::rv::rv_name(*rv)
                )
            }
            LoadError::TimedOut => write!(f, "no answer within the connect timeout"),
        }
    }
}

impl LoadError {
    pub fn rv(&self) -> CK_RV {
        match self {
            LoadError::Rv(_, rv) => *rv,
            _ => CKR_DEVICE_ERROR,
        }
    }
}

impl Provider {
    pub fn new(cfg: &ProviderConfig, receive_timeout: Duration) -> Self {
        Provider {
            index: cfg.index,
            library: cfg.library.clone(),
            env: cfg.env.clone(),
            receive_timeout,
        }
    }

    /// A copy of the configuration, to connect from another thread.
    pub fn clone_config(&self) -> Provider {
        Provider {
            index: self.index,
            library: self.library.clone(),
            env: self.env.clone(),
            receive_timeout: self.receive_timeout,
        }
    }

    /// Makes a new initialized instance, giving up at `deadline`.
    ///
    /// `ProviderNNEnv` is process-wide while set, so it is set under a lock: for the whole of
    /// C_GetFunctionList (p11-kit-client reads its address there) and for the first
    /// [`ENV_GRACE`] of C_Initialize (SoftHSM reads its conf as C_Initialize starts). A module
    /// that hangs in C_Initialize (a stopped server) then no longer holds up the others.
    pub fn connect(&self, deadline: Instant) -> Result<Arc<Instance>, LoadError> {
        let lib = library(&self.library).map_err(LoadError::Library)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        let env_lock = ENV_LOCK.try_lock_for(left()).ok_or(LoadError::TimedOut)?;
        let env = EnvScope::set(&self.env);
        let fns = bounded::run(left(), move || get_function_list(lib))
            .map_err(|TimedOut| LoadError::TimedOut)??;
        let pending = bounded::start(move || initialize(fns));
        let result = match pending.wait(ENV_GRACE.min(left())) {
            Ok(r) => r,
            Err(pending) => {
                drop(env);
                drop(env_lock);
                pending.wait(left()).map_err(|_| LoadError::TimedOut)?
            }
        };
        result?;
        let id = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Instance {
            id,
            origin: id,
            provider: self.index,
            fns,
            gate: Arc::default(),
            timeout: self.receive_timeout,
        }))
    }
}

/// How long `ProviderNNEnv` stays set while C_Initialize runs (see [`Provider::connect`]).
pub const ENV_GRACE: Duration = Duration::from_millis(250);

fn get_function_list(lib: &'static Library) -> Result<Fns, LoadError> {
    // SAFETY: the symbol has the standard PKCS#11 signature.
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList\0") }
            .map_err(|e| LoadError::Library(e.to_string()))?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK {
        return Err(LoadError::Rv("C_GetFunctionList", rv));
    }
    // SAFETY: a module's function table lives as long as the module, which is never unloaded.
    unsafe { list.as_ref() }
        .map(Fns)
        .ok_or(LoadError::NoFunctionList)
}

fn initialize(fns: Fns) -> Result<(), LoadError> {
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    let rv = ck!(fns, C_Initialize(&mut args as *mut _ as *mut _));
    // A module shared by several providers (same path) is initialized once.
    if rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
        return Err(LoadError::Rv("C_Initialize", rv));
    }
    Ok(())
}

/// One initialized instance of a provider's module.
pub struct Instance {
    /// Unique in the process, and new for every member binding (see [`Instance::view`]): session
    /// and object handles are cached under it, so a member that comes back never reuses a
    /// handle from before, even when the module reconnected on its own and handle values alias.
    pub id: u64,
    /// The id of the initialized module instance this is a view of.
    pub origin: u64,
    pub provider: u32,
    fns: Fns,
    /// Shared by every view of the module instance.
    gate: Arc<Gate>,
    timeout: Duration,
}

/// Keeps C_Finalize away from calls still running inside a module instance.
///
/// p11-kit-client frees its socket in C_Finalize; a call still inside it (one that timed out, or
/// that raced the member's drop) then fails an assertion and aborts the whole application. So
/// calls enter through the gate, and the instance is finalized only once the gate is closed and
/// no call is inside.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    inside: AtomicUsize,
}

/// One call inside the instance; leaving is dropping it, wherever the call finished.
struct Pass(Arc<Gate>);

impl Gate {
    /// SeqCst on both sides: either `enter` sees the gate closed, or `drained` sees the call.
    fn enter(self: &Arc<Self>) -> Option<Pass> {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(self.clone());
        (!self.closed.load(Ordering::SeqCst)).then_some(pass)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn drained(&self) -> bool {
        self.inside.load(Ordering::SeqCst) == 0
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Output of a call that fills a caller buffer: the return value, the length the member reported,
/// and the bytes (when a buffer was given and the call succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub rv: CK_RV,
    pub len: CK_ULONG,
    pub data: Option<Vec<u8>>,
}

/// Which cryptographic operation a generic init/update/final call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    SignRecover,
    Verify,
    VerifyRecover,
}

/// Runs `f` with a buffer of `cap` bytes (or NULL for a length query) and its length in/out.
fn with_out(cap: Option<CK_ULONG>, f: impl FnOnce(*mut u8, *mut CK_ULONG) -> CK_RV) -> Output {
    let mut buf = cap.map(|n| vec![0u8; usize::try_from(n).unwrap_or(0)]);
    let mut len = cap.unwrap_or(0);
    let ptr = buf
        .as_mut()
        .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr());
    let rv = f(ptr, &mut len);
    let data = match (rv, buf) {
        (CKR_OK, Some(mut b)) => {
            b.truncate(usize::try_from(len).unwrap_or(0).min(b.len()));
            Some(b)
        }
        _ => None,
    };
    Output { rv, len, data }
}

fn ok(rv: CK_RV) -> MemberResult<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(rv)
    }
}

fn ulen(v: &[u8]) -> CK_ULONG {
    v.len() as CK_ULONG
}

impl Instance {
    /// The same module instance under a fresh id, for one member binding.
    pub fn view(&self) -> Arc<Instance> {
        Arc::new(Instance {
            id: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            ..self.with_timeout(self.timeout)
        })
    }

    /// The same instance (same id, same handles) with another bound on each call, for slow
    /// administrative calls: key generation on an HSM can take seconds.
    pub fn with_timeout(&self, timeout: Duration) -> Instance {
        Instance {
            id: self.id,
            origin: self.origin,
            provider: self.provider,
            fns: self.fns,
            gate: self.gate.clone(),
            timeout,
        }
    }

    /// Runs `f` with this instance's table within the receive timeout. Once the instance is
    /// being finalized, no call enters it: the answer is CKR_DEVICE_REMOVED.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(Fns) -> T + Send + 'static,
    ) -> MemberResult<T> {
        let pass = self.gate.enter().ok_or(CKR_DEVICE_REMOVED)?;
        let fns = self.fns;
        bounded::run(self.timeout, move || {
            let _inside = pass;
            f(fns)
        })
        .map_err(|TimedOut| RV_TIMEOUT)
    }

    /// Closes the instance to new calls (they get CKR_DEVICE_REMOVED without entering the
    /// module) and finalizes it once the calls inside have returned. A call still inside after
    /// `drain` (a hung member) keeps the instance initialized: the answer is then false.
    pub fn retire(&self, drain: Duration) -> bool {
        self.gate.close();
        let deadline = Instant::now() + drain;
        while !self.gate.drained() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let fns = self.fns;
        let _ = bounded::run(self.timeout, move || {
            ck!(fns, C_Finalize(std::ptr::null_mut()))
        });
        true
    }

    /// True when both are the same module instance: the module handed out one shared function
    /// table (SoftHSM does; p11-kit-client makes a new one per C_GetFunctionList).
    pub fn same_module(&self, other: &Instance) -> bool {
        std::ptr::eq(self.fns.0, other.fns.0)
    }

    pub fn slot_list(&self, token_present: bool) -> MemberResult<Vec<CK_SLOT_ID>> {
        self.call(move |f| {
            let present = if token_present { CK_TRUE } else { CK_FALSE };
            let mut n: CK_ULONG = 0;
            ok(ck!(f, C_GetSlotList(present, std::ptr::null_mut(), &mut n)))?;
            let mut v = vec![0; usize::try_from(n).unwrap_or(0)];
            ok(ck!(f, C_GetSlotList(present, v.as_mut_ptr(), &mut n)))?;
            v.truncate(usize::try_from(n).unwrap_or(0));
            Ok(v)
        })?
    }

    pub fn slot_info(&self, slot: CK_SLOT_ID) -> MemberResult<CK_SLOT_INFO> {
        self.call(move |f| {
            let mut info: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
            ok(ck!(f, C_GetSlotInfo(slot, &mut info))).map(|_| info)
        })?
    }

    pub fn token_info(&self, slot: CK_SLOT_ID) -> MemberResult<CK_TOKEN_INFO> {
        self.call(move |f| {
            let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
            ok(ck!(f, C_GetTokenInfo(slot, &mut info))).map(|_| info)
        })?
    }

    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> MemberResult<Vec<CK_MECHANISM_TYPE>> {
        self.call(move |f| {
            let mut n: CK_ULONG = 0;
            ok(ck!(
                f,
                C_GetMechanismList(slot, std::ptr::null_mut(), &mut n)
            ))?;
            let mut v = vec![0; usize::try_from(n).unwrap_or(0)];
            ok(ck!(f, C_GetMechanismList(slot, v.as_mut_ptr(), &mut n)))?;
            v.truncate(usize::try_from(n).unwrap_or(0));
            Ok(v)
        })?
    }

    pub fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mech: CK_MECHANISM_TYPE,
    ) -> MemberResult<CK_MECHANISM_INFO> {
        self.call(move |f| {
            let mut info: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
            ok(ck!(f, C_GetMechanismInfo(slot, mech, &mut info))).map(|_| info)
        })?
    }

    pub fn open_session(
        &self,
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
    ) -> MemberResult<CK_SESSION_HANDLE> {
        self.call(move |f| {
            let mut h: CK_SESSION_HANDLE = 0;
            ok(ck!(
                f,
                C_OpenSession(slot, flags, std::ptr::null_mut(), None, &mut h)
            ))
            .map(|_| h)
        })?
    }

    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> MemberResult<()> {
        self.call(move |f| ck!(f, C_CloseSession(h))).and_then(ok)
    }

    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> MemberResult<CK_SESSION_INFO> {
        self.call(move |f| {
            let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
            ok(ck!(f, C_GetSessionInfo(h, &mut info))).map(|_| info)
        })?
    }

    pub fn login(
        &self,
        h: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<Arc<Zeroizing<Vec<u8>>>>,
    ) -> MemberResult<()> {
        self.call(move |f| {
            let (p, n) = match &pin {
                Some(pin) => (pin.as_ptr() as *mut u8, ulen(pin)),
                None => (std::ptr::null_mut(), 0),
            };
            ck!(f, C_Login(h, user, p, n))
        })
        .and_then(ok)
    }

    pub fn logout(&self, h: CK_SESSION_HANDLE) -> MemberResult<()> {
        self.call(move |f| ck!(f, C_Logout(h))).and_then(ok)
    }

    pub fn create_object(
        &self,
        h: CK_SESSION_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.call(move |f| {
            let mut raw = raw_template(&t);
            let mut o = 0;
            ok(ck!(
                f,
                C_CreateObject(h, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            ))
            .map(|_| o)
        })?
    }

    /// C_CreateObject for a template holding secret values: the template is zeroized after
    /// the call (the group cloning key's value, see `ha::sync::init_cloning_key`).
    pub fn create_object_zeroized(
        &self,
        h: CK_SESSION_HANDLE,
        mut t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.call(move |f| {
            let mut raw = raw_template(&t);
            let mut o = 0;
            let rv = ck!(
                f,
                C_CreateObject(h, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            );
            drop(raw);
            for a in t.iter_mut() {
                zeroize::Zeroize::zeroize(&mut a.value);
            }
            ok(rv).map(|_| o)
        })?
    }

    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.call(move |f| {
            let mut raw = raw_template(&t);
            let mut o = 0;
            ok(ck!(
                f,
                C_CopyObject(h, obj, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            ))
            .map(|_| o)
        })?
    }

    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> MemberResult<()> {
        self.call(move |f| ck!(f, C_DestroyObject(h, obj)))
            .and_then(ok)
    }

    pub fn object_size(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
    ) -> MemberResult<CK_ULONG> {
        self.call(move |f| {
            let mut n = 0;
            ok(ck!(f, C_GetObjectSize(h, obj, &mut n))).map(|_| n)
        })?
    }

    /// C_GetAttributeValue with the caller's per-attribute capacities (`None` = length query).
    /// Returns the call's CK_RV and, per attribute, the reported length and the value if copied.
    pub fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        query: Vec<(CK_ATTRIBUTE_TYPE, Option<CK_ULONG>)>,
    ) -> MemberResult<AttributeValues> {
        self.call(move |f| {
            let mut bufs: Vec<Option<Vec<u8>>> = query
                .iter()
                .map(|(_, cap)| cap.map(|n| vec![0u8; usize::try_from(n).unwrap_or(0)]))
                .collect();
            let mut raw: Vec<CK_ATTRIBUTE> = query
                .iter()
                .zip(bufs.iter_mut())
                .map(|((t, cap), b)| CK_ATTRIBUTE {
                    type_: *t,
                    pValue: b
                        .as_mut()
                        .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr() as *mut _),
                    ulValueLen: cap.unwrap_or(0),
                })
                .collect();
            let rv = ck!(
                f,
                C_GetAttributeValue(h, obj, raw.as_mut_ptr(), raw.len() as CK_ULONG)
            );
            let out = raw
                .iter()
                .zip(bufs)
                .map(|(a, b)| {
                    let v = b
                        .filter(|_| a.ulValueLen != CK_UNAVAILABLE_INFORMATION)
                        .map(|mut b| {
                            b.truncate(usize::try_from(a.ulValueLen).unwrap_or(0).min(b.len()));
                            b
                        });
                    (a.ulValueLen, v)
                })
                .collect();
            (rv, out)
        })
    }

    /// Reads attributes whole (two-phase); unreadable ones are `None`.
    pub fn read_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
    ) -> MemberResult<Vec<Option<Vec<u8>>>> {
        self.call(move |f| {
            let mut out = Vec::with_capacity(kinds.len());
            for t in kinds {
                let mut a = CK_ATTRIBUTE {
                    type_: t,
                    pValue: std::ptr::null_mut(),
                    ulValueLen: 0,
                };
                let rv = ck!(f, C_GetAttributeValue(h, obj, &mut a, 1));
                if is_connection_error(rv) {
                    return Err(rv);
                }
                if rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                    out.push(None);
                    continue;
                }
                let mut buf = vec![0u8; usize::try_from(a.ulValueLen).unwrap_or(0)];
                a.pValue = buf.as_mut_ptr() as *mut _;
                let rv = ck!(f, C_GetAttributeValue(h, obj, &mut a, 1));
                if is_connection_error(rv) {
                    return Err(rv);
                }
                out.push((rv == CKR_OK).then_some(buf));
            }
            Ok(out)
        })?
    }

    pub fn set_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<()> {
        self.call(move |f| {
            let mut raw = raw_template(&t);
            ck!(
                f,
                C_SetAttributeValue(h, obj, raw.as_mut_ptr(), raw.len() as CK_ULONG)
            )
        })
        .and_then(ok)
    }

    /// FindObjectsInit + FindObjects until done + FindObjectsFinal, as one bounded call.
    pub fn find_all(
        &self,
        h: CK_SESSION_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<Vec<CK_OBJECT_HANDLE>> {
        self.call(move |f| {
            let mut raw = raw_template(&t);
            let tp = if raw.is_empty() {
                std::ptr::null_mut()
            } else {
                raw.as_mut_ptr()
            };
            ok(ck!(f, C_FindObjectsInit(h, tp, raw.len() as CK_ULONG)))?;
            let mut found = Vec::new();
            let mut page = [0 as CK_OBJECT_HANDLE; 64];
            let rv = loop {
                let mut n: CK_ULONG = 0;
                let rv = ck!(
                    f,
                    C_FindObjects(h, page.as_mut_ptr(), page.len() as CK_ULONG, &mut n)
                );
                if rv != CKR_OK {
                    break rv;
                }
                let n = usize::try_from(n).unwrap_or(0).min(page.len());
                found.extend_from_slice(&page[..n]);
                if n == 0 {
                    break CKR_OK;
                }
            };
            let final_rv = ck!(f, C_FindObjectsFinal(h));
            ok(rv)?;
            ok(final_rv)?;
            Ok(found)
        })?
    }

    pub fn op_init(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        mech: Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> MemberResult<()> {
        self.call(move |f| {
            let mut raw = mech.as_ref().map(|m| m.raw());
            let mut ckm = raw.as_mut().map(|r| r.ck());
            let m = ckm.as_mut().map_or(std::ptr::null_mut(), |m| m as *mut _);
            match kind {
                OpKind::Encrypt => ck!(f, C_EncryptInit(h, m, key)),
                OpKind::Decrypt => ck!(f, C_DecryptInit(h, m, key)),
                OpKind::Digest => ck!(f, C_DigestInit(h, m)),
                OpKind::Sign => ck!(f, C_SignInit(h, m, key)),
                OpKind::SignRecover => ck!(f, C_SignRecoverInit(h, m, key)),
                OpKind::Verify => ck!(f, C_VerifyInit(h, m, key)),
                OpKind::VerifyRecover => ck!(f, C_VerifyRecoverInit(h, m, key)),
            }
        })
        .and_then(ok)
    }

    /// The single-part call of an operation that produces output (all but Verify).
    pub fn op_single(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        data: Vec<u8>,
        cap: Option<CK_ULONG>,
    ) -> MemberResult<Output> {
        self.call(move |f| {
            with_out(cap, |out, len| {
                let (d, n) = (data.as_ptr() as *mut u8, ulen(&data));
                match kind {
                    OpKind::Encrypt => ck!(f, C_Encrypt(h, d, n, out, len)),
                    OpKind::Decrypt => ck!(f, C_Decrypt(h, d, n, out, len)),
                    OpKind::Digest => ck!(f, C_Digest(h, d, n, out, len)),
                    OpKind::Sign => ck!(f, C_Sign(h, d, n, out, len)),
                    OpKind::SignRecover => ck!(f, C_SignRecover(h, d, n, out, len)),
                    OpKind::VerifyRecover => ck!(f, C_VerifyRecover(h, d, n, out, len)),
                    OpKind::Verify => CKR_FUNCTION_FAILED,
                }
            })
        })
    }

    /// Update calls: Encrypt/Decrypt produce output, Digest/Sign/Verify do not (`cap` ignored).
    pub fn op_update(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        data: Vec<u8>,
        cap: Option<CK_ULONG>,
    ) -> MemberResult<Output> {
        self.call(move |f| {
            let (d, n) = (data.as_ptr() as *mut u8, ulen(&data));
            match kind {
                OpKind::Encrypt => {
                    with_out(cap, |out, len| ck!(f, C_EncryptUpdate(h, d, n, out, len)))
                }
                OpKind::Decrypt => {
                    with_out(cap, |out, len| ck!(f, C_DecryptUpdate(h, d, n, out, len)))
                }
                OpKind::Digest => plain(ck!(f, C_DigestUpdate(h, d, n))),
                OpKind::Sign => plain(ck!(f, C_SignUpdate(h, d, n))),
                OpKind::Verify => plain(ck!(f, C_VerifyUpdate(h, d, n))),
                OpKind::SignRecover | OpKind::VerifyRecover => plain(CKR_OPERATION_NOT_INITIALIZED),
            }
        })
    }

    pub fn op_final(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        cap: Option<CK_ULONG>,
    ) -> MemberResult<Output> {
        self.call(move |f| {
            with_out(cap, |out, len| match kind {
                OpKind::Encrypt => ck!(f, C_EncryptFinal(h, out, len)),
                OpKind::Decrypt => ck!(f, C_DecryptFinal(h, out, len)),
                OpKind::Digest => ck!(f, C_DigestFinal(h, out, len)),
                OpKind::Sign => ck!(f, C_SignFinal(h, out, len)),
                _ => CKR_OPERATION_NOT_INITIALIZED,
            })
        })
    }

    pub fn verify(&self, h: CK_SESSION_HANDLE, data: Vec<u8>, sig: Vec<u8>) -> MemberResult<CK_RV> {
        self.call(move |f| {
            ck!(
                f,
                C_Verify(
                    h,
                    data.as_ptr() as *mut u8,
                    ulen(&data),
                    sig.as_ptr() as *mut u8,
                    ulen(&sig)
                )
            )
        })
    }

    pub fn verify_final(&self, h: CK_SESSION_HANDLE, sig: Vec<u8>) -> MemberResult<CK_RV> {
        self.call(move |f| ck!(f, C_VerifyFinal(h, sig.as_ptr() as *mut u8, ulen(&sig))))
    }

    pub fn digest_key(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> MemberResult<CK_RV> {
        self.call(move |f| ck!(f, C_DigestKey(h, key)))
    }

    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut raw = raw_template(&t);
            let mut o = 0;
            ok(ck!(
                f,
                C_GenerateKey(h, &mut m, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            ))
            .map(|_| o)
        })?
    }

    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        public: Vec<Attr>,
        private: Vec<Attr>,
    ) -> MemberResult<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        self.call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut pu = raw_template(&public);
            let mut pr = raw_template(&private);
            let (mut a, mut b) = (0, 0);
            ok(ck!(
                f,
                C_GenerateKeyPair(
                    h,
                    &mut m,
                    pu.as_mut_ptr(),
                    pu.len() as CK_ULONG,
                    pr.as_mut_ptr(),
                    pr.len() as CK_ULONG,
                    &mut a,
                    &mut b
                )
            ))
            .map(|_| (a, b))
        })?
    }

    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        cap: Option<CK_ULONG>,
    ) -> MemberResult<Output> {
        self.call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            with_out(cap, |out, len| {
                ck!(f, C_WrapKey(h, &mut m, wrapping, key, out, len))
            })
        })
    }

    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: Vec<u8>,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut raw = raw_template(&t);
            let mut o = 0;
            ok(ck!(
                f,
                C_UnwrapKey(
                    h,
                    &mut m,
                    unwrapping,
                    wrapped.as_ptr() as *mut u8,
                    ulen(&wrapped),
                    raw.as_mut_ptr(),
                    raw.len() as CK_ULONG,
                    &mut o
                )
            ))
            .map(|_| o)
        })?
    }

    pub fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        base: CK_OBJECT_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut raw = raw_template(&t);
            let mut o = 0;
            ok(ck!(
                f,
                C_DeriveKey(
                    h,
                    &mut m,
                    base,
                    raw.as_mut_ptr(),
                    raw.len() as CK_ULONG,
                    &mut o
                )
            ))
            .map(|_| o)
        })?
    }

    pub fn seed_random(&self, h: CK_SESSION_HANDLE, seed: Vec<u8>) -> MemberResult<()> {
        self.call(move |f| ck!(f, C_SeedRandom(h, seed.as_ptr() as *mut u8, ulen(&seed))))
            .and_then(ok)
    }

    pub fn generate_random(&self, h: CK_SESSION_HANDLE, n: CK_ULONG) -> MemberResult<Vec<u8>> {
        self.call(move |f| {
            let mut v = vec![0u8; usize::try_from(n).unwrap_or(0)];
            ok(ck!(f, C_GenerateRandom(h, v.as_mut_ptr(), n))).map(|_| v)
        })?
    }

    pub fn set_pin(
        &self,
        h: CK_SESSION_HANDLE,
        old: Arc<Zeroizing<Vec<u8>>>,
        new: Arc<Zeroizing<Vec<u8>>>,
    ) -> MemberResult<()> {
        self.call(move |f| {
            ck!(
                f,
                C_SetPIN(
                    h,
                    old.as_ptr() as *mut u8,
                    ulen(&old),
                    new.as_ptr() as *mut u8,
                    ulen(&new)
                )
            )
        })
        .and_then(ok)
    }

    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: Arc<Zeroizing<Vec<u8>>>) -> MemberResult<()> {
        self.call(move |f| ck!(f, C_InitPIN(h, pin.as_ptr() as *mut u8, ulen(&pin))))
            .and_then(ok)
    }
}

fn plain(rv: CK_RV) -> Output {
    Output {
        rv,
        len: 0,
        data: None,
    }
}

/// The module answers but its token cannot serve: a deactivated member (Luna's deactivated
/// partition shows up this way through standard PKCS#11).
pub fn is_deactivation(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_TOKEN_NOT_PRESENT | CKR_DEVICE_REMOVED | CKR_TOKEN_NOT_RECOGNIZED
    )
}

/// Errors that mean the member (or our connection to it) is gone, not that the caller erred.
pub fn is_connection_error(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_REMOVED
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_SESSION_HANDLE_INVALID
            | CKR_SESSION_CLOSED
            | CKR_SLOT_ID_INVALID
            | CKR_CRYPTOKI_NOT_INITIALIZED
            | CKR_GENERAL_ERROR
            | RV_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_admits_no_call_and_drains_when_the_last_one_leaves() {
        let gate = Arc::new(Gate::default());
        let inside = gate.enter().expect("open gate admits");
        assert!(!gate.drained());
        gate.close();
        assert!(gate.enter().is_none(), "closed gate admitted a call");
        assert!(
            !gate.drained(),
            "refused call left a count behind or the first one vanished"
        );
        drop(inside);
        assert!(gate.drained());
    }

    #[test]
    fn a_call_leaving_on_another_thread_drains_the_gate() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter().unwrap();
        gate.close();
        std::thread::spawn(move || drop(pass)).join().unwrap();
        assert!(gate.drained());
    }
}
