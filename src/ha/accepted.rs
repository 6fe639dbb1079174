//! The Inits members have accepted. An application signs with the same key and mechanism again
//! and again; once a member has accepted that Init, the next one is not made on its own but
//! travels with the operation's first data call, in one bounded call ([`Begin`]): one thread
//! hand-off per operation instead of two, while an Init the member has not accepted yet (a
//! wrong key type, a key that may not sign, an unknown mechanism) is still made at the
//! application's Init and refused there.
//!
//! Only mechanisms without a parameter qualify: a parameter (an IV, a PSS salt length) can make
//! one Init fail where the last succeeded. An acceptance is forgotten with its key, with the
//! key's twin on that member, and whenever the key's attributes change through p11ha. What
//! p11ha cannot see (another application clearing CKA_SIGN on a token key) makes the member
//! refuse the Init that travels with the data call; p11ha then makes the Init on its own, so
//! the application still gets the member's answer, one call later than it would directly.
//!
//! [`Begin`]: crate::provider::Begin

use crate::provider::OpKind;
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::collections::HashSet;

/// Most acceptances kept; past that the record starts again empty (a fleet of keys used once
/// each gains nothing from it, and the record must not grow without bound).
const MOST: usize = 4096;

/// One Init a member accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Init {
    /// The virtual key; 0 for an operation without key (a digest).
    pub key: CK_OBJECT_HANDLE,
    pub member: usize,
    /// The member's instance: a reconnected member starts with nothing accepted.
    pub instance: u64,
    pub kind: OpKind,
    pub mechanism: CK_MECHANISM_TYPE,
}

/// The Inits a group's members accepted.
#[derive(Default)]
pub struct Accepted {
    inits: Mutex<HashSet<Init>>,
}

impl Accepted {
    pub fn knows(&self, init: &Init) -> bool {
        self.inits.lock().contains(init)
    }

    pub fn accept(&self, init: Init) {
        let mut inits = self.inits.lock();
        if inits.len() >= MOST {
            inits.clear();
        }
        inits.insert(init);
    }

    /// The member refused an Init it had accepted before.
    pub fn refuse(&self, init: &Init) {
        self.inits.lock().remove(init);
    }

    /// Forgets what was accepted for a key (destroyed, or its attributes changed).
    pub fn forget_key(&self, key: CK_OBJECT_HANDLE) {
        self.inits.lock().retain(|i| i.key != key);
    }

    /// Forgets what was accepted for a key on one member (its twin there is forgotten).
    pub fn forget_twin(&self, key: CK_OBJECT_HANDLE, member: usize) {
        self.inits
            .lock()
            .retain(|i| i.key != key || i.member != member);
    }

    /// Forgets what a member accepted, or every member with `None` (its handles may change).
    pub fn forget_member(&self, member: Option<usize>) {
        match member {
            Some(m) => self.inits.lock().retain(|i| i.member != m),
            None => self.inits.lock().clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(key: CK_OBJECT_HANDLE, member: usize) -> Init {
        Init {
            key,
            member,
            instance: 7,
            kind: OpKind::Sign,
            mechanism: CKM_ECDSA,
        }
    }

    #[test]
    fn an_acceptance_is_forgotten_with_its_key_its_twin_or_its_member() {
        let a = Accepted::default();
        for (k, m) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            a.accept(init(k, m));
        }
        assert!(a.knows(&init(1, 0)));
        assert!(
            !a.knows(&Init {
                kind: OpKind::Verify,
                ..init(1, 0)
            }),
            "another kind was never accepted"
        );
        assert!(
            !a.knows(&Init {
                instance: 8,
                ..init(1, 0)
            }),
            "a reconnected instance accepted nothing yet"
        );
        a.forget_twin(1, 0);
        assert!(!a.knows(&init(1, 0)) && a.knows(&init(1, 1)));
        a.forget_key(1);
        assert!(!a.knows(&init(1, 1)) && a.knows(&init(2, 0)));
        a.forget_member(Some(0));
        assert!(!a.knows(&init(2, 0)) && a.knows(&init(2, 1)));
        a.refuse(&init(2, 1));
        assert!(!a.knows(&init(2, 1)));
        a.accept(init(3, 0));
        a.forget_member(None);
        assert!(!a.knows(&init(3, 0)));
    }

    #[test]
    fn the_record_never_outgrows_its_bound() {
        let a = Accepted::default();
        for k in 1..=(MOST as CK_ULONG + 10) {
            a.accept(init(k, 0));
        }
        assert!(a.inits.lock().len() <= MOST);
        assert!(
            a.knows(&init(MOST as CK_ULONG + 10, 0)),
            "the newest is kept"
        );
    }
}
