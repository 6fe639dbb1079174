//! The one way into p11ha from C: the `entry!` macro wraps every function in a panic guard and
//! maps `Result<(), CK_RV>` to the returned CK_RV; `ha()` is the initialization check.

use crate::diag::diag;
use crate::ha::Runtime;
use cryptoki_sys::*;
use parking_lot::RwLock;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The initialized library; `None` before C_Initialize and after C_Finalize.
pub(crate) static LIBRARY: RwLock<Option<Arc<Runtime>>> = RwLock::new(None);

/// Registers the fork handler once: a child starts uninitialized, as PKCS#11 wants, and works
/// after its own C_Initialize.
pub(crate) fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a handler that only touches this library's own statics.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// Runs in the child, where only the forking thread exists. The parent's library state is
/// forgotten, not torn down: its threads and member connections belong to the parent.
extern "C" fn after_fork_in_child() {
    // A lock another parent thread held at the fork stays held in the child forever; nobody
    // else runs here, so releasing it is safe.
    if LIBRARY.is_locked_exclusive() {
        // SAFETY: single-threaded child; the owner does not exist here.
        unsafe { LIBRARY.force_unlock_write() };
    }
    while LIBRARY.is_locked() && !LIBRARY.is_locked_exclusive() {
        // SAFETY: as above, for readers that were inside a call at the fork.
        unsafe { LIBRARY.force_unlock_read() };
    }
    std::mem::forget(LIBRARY.write().take());
    crate::bounded::forget_after_fork();
    crate::provider::after_fork_in_child();
}

/// The initialized library, or CKR_CRYPTOKI_NOT_INITIALIZED.
pub(crate) fn ha() -> Result<Arc<Runtime>, CK_RV> {
    LIBRARY.read().clone().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)
}

/// Runs an entry point's body: a panic never crosses the C boundary.
pub(crate) fn guard(name: &str, body: impl FnOnce() -> Result<(), CK_RV>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            diag!(Error, "internal error in {name}: {what}");
            CKR_GENERAL_ERROR
        }
    }
}

/// Defines PKCS#11 entry points: `fn C_X(args) { body returning Result<(), CK_RV> }`.
macro_rules! entry {
    ($(fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block)*) => {
        $(
            #[allow(non_snake_case, clippy::missing_safety_doc)]
            pub(crate) unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                $crate::ffi::entry::guard(stringify!($name), move || -> Result<(), CK_RV> { $body })
            }
        )*
    };
}
pub(crate) use entry;
