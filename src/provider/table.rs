//! A member module's function table, and the one way p11ha calls a function in it.

use cryptoki_sys::*;

/// The function table of one initialized instance.
#[derive(Clone, Copy)]
pub(crate) struct Fns(pub(crate) &'static CK_FUNCTION_LIST);
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
pub(crate) use ck;
