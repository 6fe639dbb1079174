//! Random number generation: C_SeedRandom, C_GenerateRandom.
//!
//! Every `unsafe` block below dereferences the caller's pointers through `args`, which checks
//! them for NULL and their lengths for sanity; beyond that PKCS#11 makes the caller promise
//! they are valid, which is the one SAFETY argument these blocks have.

use super::session;
use crate::ffi::args::*;
use crate::ffi::entry::entry;
use cryptoki_sys::*;

/// Most random bytes asked of a member in one call: a huge request is served in pieces, so
/// p11ha never holds more than this at once whatever the caller asks.
const RANDOM_PIECE: usize = 64 * 1024;

entry! {
    fn C_SeedRandom(h: CK_SESSION_HANDLE, p_seed: *mut CK_BYTE, len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let seed = unsafe { data(p_seed, len) }?;
        s.seed_random(seed)
    }

    fn C_GenerateRandom(h: CK_SESSION_HANDLE, p_out: *mut CK_BYTE, len: CK_ULONG) {
        let s = session(h)?;
        // SAFETY: see the module docs.
        let buf = unsafe { buffer_mut(p_out, len) }?;
        if buf.is_empty() {
            // Nothing to fill, but the member decides what a request for nothing means.
            s.generate_random(0, p_out.is_null())?;
        }
        for piece in buf.chunks_mut(RANDOM_PIECE) {
            piece.copy_from_slice(&s.generate_random(piece.len(), false)?);
        }
        Ok(())
    }
}
