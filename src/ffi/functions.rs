//! The PKCS#11 functions, one file per function family of the specification: unpack C
//! arguments (`args`), call the HA core, pack results. No HA logic lives here.

mod crypto;
mod general;
mod keys;
mod objects;
mod random;
mod sessions;

pub(crate) use crypto::*;
pub(crate) use general::*;
pub(crate) use keys::*;
pub(crate) use objects::*;
pub(crate) use random::*;
pub(crate) use sessions::*;

use super::args::Rv;
use super::entry::ha;
use crate::ha::session::Session;
use cryptoki_sys::CK_SESSION_HANDLE;
use std::sync::Arc;

fn session(h: CK_SESSION_HANDLE) -> Rv<Arc<Session>> {
    ha()?.session(h)
}
