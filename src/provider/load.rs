//! Loading a member module: the library (loaded once per path, never unloaded: a hung call may
//! still be running inside it), the `ProviderNNEnv` environment it reads while starting, and
//! one initialized [`Instance`] per [`Provider::connect`].

use super::instance::{Calls, Instance};
use super::outcome::check;
use super::table::{ck, Fns};
use crate::bounded::{self, Pending, Unfinished};
use crate::config::ProviderConfig;
use cryptoki_sys::*;
use libloading::Library;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Libraries by path, loaded once and kept for the life of the process.
static LIBS: Mutex<Option<HashMap<PathBuf, &'static Library>>> = Mutex::new(None);

/// Serializes environment changes: `ProviderNNEnv` is process-wide while it is set.
static ENV_LOCK: Mutex<()> = Mutex::new(());

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

/// `ProviderNNEnv` set under [`ENV_LOCK`]: the previous values are restored before the lock
/// is released (fields drop after `drop` runs), so the next provider's values are never
/// overwritten by this one's restore.
struct EnvScope {
    saved: Vec<(String, Option<std::ffi::OsString>)>,
    _lock: parking_lot::MutexGuard<'static, ()>,
}

impl EnvScope {
    fn set(lock: parking_lot::MutexGuard<'static, ()>, vars: &[(String, String)]) -> Self {
        let saved = vars
            .iter()
            .map(|(k, v)| {
                let old = std::env::var_os(k);
                std::env::set_var(k, v);
                (k.clone(), old)
            })
            .collect();
        EnvScope { saved, _lock: lock }
    }
}

impl Drop for EnvScope {
    fn drop(&mut self) {
        for (k, old) in self.saved.drain(..).rev() {
            match old {
                Some(v) => std::env::set_var(&k, v),
                None => std::env::remove_var(&k),
            }
        }
    }
}

/// A configured member module.
pub struct Provider {
    pub index: u32,
    pub library: PathBuf,
    env: Vec<(String, String)>,
    receive_timeout: Duration,
    calls: Calls,
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

/// How long `ProviderNNEnv` stays set while C_Initialize runs (see [`Provider::connect`]).
pub const ENV_GRACE: Duration = Duration::from_millis(250);

impl Provider {
    pub fn new(cfg: &ProviderConfig, receive_timeout: Duration) -> Self {
        Provider {
            index: cfg.index,
            library: cfg.library.clone(),
            env: cfg.env.clone(),
            receive_timeout,
            calls: Calls::for_provider(&cfg.library, cfg.bounded_calls),
        }
    }

    /// A copy of the configuration, to connect from another thread.
    pub fn clone_config(&self) -> Provider {
        Provider {
            index: self.index,
            library: self.library.clone(),
            env: self.env.clone(),
            receive_timeout: self.receive_timeout,
            calls: self.calls,
        }
    }

    /// Makes a new initialized instance from a fresh `C_GetFunctionList`, giving up waiting at
    /// `deadline`.
    ///
    /// `ProviderNNEnv` is process-wide while set, so it is set under a lock: for the whole of
    /// C_GetFunctionList (p11-kit-client reads its address there) and for the first
    /// [`ENV_GRACE`] of C_Initialize (SoftHSM reads its conf as C_Initialize starts). A module
    /// that hangs in C_Initialize (a stopped server) then no longer holds up the others.
    pub fn connect(&self, deadline: Instant) -> Result<Connected, LoadError> {
        let lib = library(&self.library).map_err(LoadError::Library)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        let env_lock = ENV_LOCK.try_lock_for(left()).ok_or(LoadError::TimedOut)?;
        let env = EnvScope::set(env_lock, &self.env);
        let fns = bounded::run(left(), move || get_function_list(lib))
            .map_err(|_| LoadError::TimedOut)??;
        self.initialize(fns, deadline, env)
    }

    /// Initializes again a function table whose instance was finalized (or never initialized).
    /// p11-kit-client leaks about 8 kB per fresh C_GetFunctionList and none for this (measured:
    /// 2,000 rounds against a dead server), so recovery reuses a provider's table.
    pub(crate) fn reinitialize(&self, fns: Fns, deadline: Instant) -> Result<Connected, LoadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let env_lock = ENV_LOCK.try_lock_for(left).ok_or(LoadError::TimedOut)?;
        let env = EnvScope::set(env_lock, &self.env);
        self.initialize(fns, deadline, env)
    }

    /// C_Initialize with `ProviderNNEnv` set for its first [`ENV_GRACE`]. One still running at
    /// `deadline` is handed back as [`Connected::Initializing`], never abandoned: its thread and
    /// connection are what a stopped server would otherwise leak at every attempt.
    fn initialize(
        &self,
        fns: Fns,
        deadline: Instant,
        env: EnvScope,
    ) -> Result<Connected, LoadError> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let pending = bounded::start(move || initialize(fns));
        let pending = match pending.wait(ENV_GRACE.min(left())) {
            Ok(r) => return self.initialized(fns, r),
            Err(Unfinished::Running(pending)) => pending,
            Err(Unfinished::Panicked) => return Err(LoadError::TimedOut),
        };
        drop(env);
        Initializing {
            pending,
            fns,
            index: self.index,
            timeout: self.receive_timeout,
            calls: self.calls,
        }
        .wait(left())
    }

    fn initialized(&self, fns: Fns, r: Result<(), LoadError>) -> Result<Connected, LoadError> {
        r.map(|()| {
            Connected::Ready(Instance::new(
                self.index,
                fns,
                self.receive_timeout,
                self.calls,
            ))
        })
    }
}

/// What a connection attempt gave.
pub enum Connected {
    Ready(Arc<Instance>),
    /// C_Initialize has not returned yet (a stopped server): ask again later.
    Initializing(Initializing),
}

/// A C_Initialize still running, kept so that it is waited for, never started a second time
/// beside it, and its instance used (or finalized) when it returns.
pub struct Initializing {
    pending: Pending<Result<(), LoadError>>,
    fns: Fns,
    index: u32,
    timeout: Duration,
    calls: Calls,
}

impl Initializing {
    /// Waits up to `wait` more.
    pub fn wait(self, wait: Duration) -> Result<Connected, LoadError> {
        match self.pending.wait(wait) {
            Ok(r) => r.map(|()| {
                Connected::Ready(Instance::new(
                    self.index,
                    self.fns,
                    self.timeout,
                    self.calls,
                ))
            }),
            Err(Unfinished::Running(pending)) => {
                Ok(Connected::Initializing(Initializing { pending, ..self }))
            }
            Err(Unfinished::Panicked) => Err(LoadError::TimedOut),
        }
    }
}

fn get_function_list(lib: &'static Library) -> Result<Fns, LoadError> {
    // SAFETY: the symbol has the standard PKCS#11 signature.
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList\0") }
            .map_err(|e| LoadError::Library(e.to_string()))?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer for the duration of the call.
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
    if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED {
        return Ok(());
    }
    check(rv).map_err(|_| LoadError::Rv("C_Initialize", rv))
}
