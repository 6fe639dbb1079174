//! What a member call can come back with, and what each answer means for the HA core. This is
//! the one place that decides whether an error is the member's (drop it, move the call) or the
//! caller's (pass it on untouched).

use crate::bounded::Stalled;
use cryptoki_sys::*;

/// Why a member call gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The member module answered with this CK_RV (or p11ha refused the call before it reached
    /// the module, e.g. CKR_HOST_MEMORY for a buffer it could not set aside).
    Rv(CK_RV),
    /// No answer within ReceiveTimeout; the call may still be running inside the module.
    TimedOut,
    /// The call panicked inside p11ha. A bug of ours, never a sign that the member failed.
    Panicked,
    /// The instance is being finalized: the call never entered the module.
    Closed,
    /// The member refused the operation's Init that travelled with this data call
    /// ([`super::Begin`]) with this CK_RV: the data call was not made, and the member holds no
    /// operation.
    NotBegun(CK_RV),
}

pub type MemberResult<T> = Result<T, Fault>;

/// The member status shown for a member that timed out (`CA_GetHAState`, `p11ha listgroups`);
/// never returned to applications.
pub const RV_TIMEOUT: CK_RV = CKR_VENDOR_DEFINED | 0x0011_0001;

impl Fault {
    /// The member (or the connection to it) is gone, so the call belongs on another member. A
    /// caller's error, and a panic of ours, never take a member down.
    pub fn fails_member(self) -> bool {
        match self {
            Fault::TimedOut | Fault::Closed => true,
            Fault::Panicked => false,
            Fault::Rv(rv) | Fault::NotBegun(rv) => is_connection_error(rv),
        }
    }

    /// The module answers but its token cannot serve: a deactivated member.
    pub fn is_deactivation(self) -> bool {
        matches!(self, Fault::Rv(rv) | Fault::NotBegun(rv) if is_deactivation(rv))
    }

    /// What the application is told when this ends its call.
    pub fn rv(self) -> CK_RV {
        match self {
            Fault::Rv(rv) | Fault::NotBegun(rv) => rv,
            Fault::TimedOut | Fault::Closed => CKR_DEVICE_ERROR,
            Fault::Panicked => CKR_GENERAL_ERROR,
        }
    }

    /// What a member taken down by this fault shows as its status.
    pub fn status(self) -> CK_RV {
        match self {
            Fault::TimedOut => RV_TIMEOUT,
            other => other.rv(),
        }
    }
}

impl From<Stalled> for Fault {
    fn from(s: Stalled) -> Self {
        match s {
            Stalled::TimedOut => Fault::TimedOut,
            Stalled::Panicked => Fault::Panicked,
        }
    }
}

/// `?` in the HA core turns a member fault into the caller's CK_RV.
impl From<Fault> for CK_RV {
    fn from(f: Fault) -> CK_RV {
        f.rv()
    }
}

/// CKR_OK as `Ok`, anything else as the member's answer.
pub fn check(rv: CK_RV) -> MemberResult<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(Fault::Rv(rv))
    }
}

/// The module answers but its token cannot serve (Luna's deactivated partition shows up this
/// way through standard PKCS#11).
pub fn is_deactivation(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_TOKEN_NOT_PRESENT | CKR_DEVICE_REMOVED | CKR_TOKEN_NOT_RECOGNIZED
    )
}

/// Answers that mean the member (or our connection to it) is gone, not that the caller erred.
/// CKR_GENERAL_ERROR is not one: SoftHSM gives it for a caller's bad input (a signature over
/// the wrong length with RSA-PSS, ECDSA with an RSA key, a corrupted ciphertext), and taking a
/// member down for it took every member down, one retry at a time.
fn is_connection_error(rv: CK_RV) -> bool {
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_member_s_own_failures_take_it_down() {
        assert!(Fault::TimedOut.fails_member());
        assert!(Fault::Closed.fails_member());
        assert!(Fault::Rv(CKR_DEVICE_ERROR).fails_member());
        assert!(
            !Fault::Panicked.fails_member(),
            "a panic of ours is not the member's"
        );
        assert!(!Fault::Rv(CKR_PIN_INCORRECT).fails_member());
        assert!(!Fault::Rv(CKR_HOST_MEMORY).fails_member());
        assert!(
            !Fault::Rv(CKR_GENERAL_ERROR).fails_member(),
            "members answer it to bad input"
        );
        assert_eq!(Fault::Panicked.rv(), CKR_GENERAL_ERROR);
        assert_eq!(Fault::TimedOut.rv(), CKR_DEVICE_ERROR);
        assert_eq!(Fault::TimedOut.status(), RV_TIMEOUT);
        assert!(!Fault::Closed.is_deactivation());
        assert!(Fault::Rv(CKR_TOKEN_NOT_PRESENT).is_deactivation());
    }
}
