//! What a member's answer to the group's credential means. Logging a member in happens in three
//! places (the application's C_Login fan-out, a member session opened later, and a recovery
//! that checks the credential before binding); they must read the answer the same way, because
//! the price of reading it wrong is high either way: a transient error taken for a wrong PIN
//! turns auto-recovery off for good, and a wrong PIN retried locks the token.

use super::group::Pin;
use crate::provider::{Fault, Instance};
use cryptoki_sys::*;
use std::time::Duration;

/// A member's answer to C_Login with the group's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Logged in (or already was: the login state is per application on most modules).
    Accepted,
    /// The PIN is not this member's: never try it there again (no lock-outs).
    WrongPin(CK_RV),
    /// The credential can no longer be used there (locked, expired, not initialized).
    Revoked(CK_RV),
    /// No verdict on the PIN: the connection, the member's own trouble, or a panic of ours.
    /// The member may be dropped and tried again; the PIN stays usable.
    Undecided(Fault),
}

impl Verdict {
    /// What the application is told when this verdict ends its C_Login.
    pub(crate) fn rv(self) -> CK_RV {
        match self {
            Verdict::Accepted => CKR_OK,
            Verdict::WrongPin(rv) | Verdict::Revoked(rv) => rv,
            Verdict::Undecided(f) => f.rv(),
        }
    }

    /// The answer of one C_Login.
    pub(crate) fn of(r: Result<(), Fault>) -> Verdict {
        match r {
            Ok(()) | Err(Fault::Rv(CKR_USER_ALREADY_LOGGED_IN)) => Verdict::Accepted,
            Err(Fault::Rv(rv @ (CKR_PIN_INCORRECT | CKR_PIN_INVALID | CKR_PIN_LEN_RANGE))) => {
                Verdict::WrongPin(rv)
            }
            Err(Fault::Rv(
                rv @ (CKR_PIN_LOCKED | CKR_PIN_EXPIRED | CKR_USER_PIN_NOT_INITIALIZED),
            )) => Verdict::Revoked(rv),
            Err(f) => Verdict::Undecided(f),
        }
    }
}

/// SoftHSM answers CKR_GENERAL_ERROR now and then when several processes log in to one token
/// at the same instant (each login rewrites the token file): a few short retries, then the
/// answer stands.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(5),
    Duration::from_millis(20),
    Duration::from_millis(50),
];

/// C_Login on one member session, with the retries above; the raw result.
fn log_in(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: &Option<Pin>,
) -> Result<(), Fault> {
    let mut r = inst.login(session, user, pin.clone());
    for pause in RETRY_PAUSES {
        if r != Err(Fault::Rv(CKR_GENERAL_ERROR)) {
            break;
        }
        std::thread::sleep(pause);
        r = inst.login(session, user, pin.clone());
    }
    r
}

/// [`log_in`], read as a [`Verdict`].
pub(crate) fn present(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: &Option<Pin>,
) -> Verdict {
    Verdict::of(log_in(inst, session, user, pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pin_answers_are_verdicts_on_the_pin() {
        assert_eq!(Verdict::of(Ok(())), Verdict::Accepted);
        assert_eq!(
            Verdict::of(Err(Fault::Rv(CKR_USER_ALREADY_LOGGED_IN))),
            Verdict::Accepted
        );
        assert_eq!(
            Verdict::of(Err(Fault::Rv(CKR_PIN_INCORRECT))),
            Verdict::WrongPin(CKR_PIN_INCORRECT)
        );
        assert_eq!(
            Verdict::of(Err(Fault::Rv(CKR_PIN_LOCKED))),
            Verdict::Revoked(CKR_PIN_LOCKED)
        );
        // A member's passing trouble (SoftHSM's concurrent-login CKR_GENERAL_ERROR seen in the
        // chaos test), its memory, its connection, our panic: none says the PIN is wrong.
        for f in [
            Fault::Rv(CKR_GENERAL_ERROR),
            Fault::Rv(CKR_DEVICE_MEMORY),
            Fault::Rv(CKR_FUNCTION_FAILED),
            Fault::TimedOut,
            Fault::Closed,
            Fault::Panicked,
        ] {
            assert_eq!(Verdict::of(Err(f)), Verdict::Undecided(f), "{f:?}");
        }
    }
}
