//! The one way into p11ha from C: the `entry!` macro wraps every function in a panic guard and
//! maps `Result<(), CK_RV>` to the returned CK_RV; `ha()` is the initialization check.

use crate::ha::Ha;
use cryptoki_sys::*;
use parking_lot::RwLock;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The initialized library; `None` before C_Initialize and after C_Finalize.
pub(crate) static LIBRARY: RwLock<Option<Arc<Ha>>> = RwLock::new(None);

/// The initialized library, or CKR_CRYPTOKI_NOT_INITIALIZED.
pub(crate) fn ha() -> Result<Arc<Ha>, CK_RV> {
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
            eprintln!("p11ha: internal error in {name}: {what}");
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
