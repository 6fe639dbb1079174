//! C_Login, C_Logout and the PIN calls, fanned out to every member with the group's one
//! credential.

use super::{standbys, CkResult, Session};
use crate::ha::credential::{self, Verdict};
use crate::ha::group::{Login, Pin};
use crate::provider::{Fault, Instance, MemberResult};
use cryptoki_sys::*;

impl Session {
    /// Logs every up member in with one PIN. The first member's verdict on the PIN is final:
    /// a wrong PIN is reported once and never tried on the others.
    pub(crate) fn login_unaudited(&self, user: CK_USER_TYPE, pin: Option<Pin>) -> CkResult<()> {
        let group = &self.group;
        if user == CKU_CONTEXT_SPECIFIC {
            return self.context_login(pin);
        }
        // Any read-only session of the application, not only this one: members only see the
        // sessions p11ha opened on them, so they cannot tell. Checked first, as SoftHSM does.
        if user == CKU_SO && group.has_read_only_session() {
            return Err(CKR_SESSION_READ_ONLY_EXISTS);
        }
        if let Some(l) = group.login() {
            return Err(if l.user == user {
                CKR_USER_ALREADY_LOGGED_IN
            } else {
                CKR_USER_ANOTHER_ALREADY_LOGGED_IN
            });
        }
        let mut st = self.st.lock();
        let mut accepted = false;
        for idx in group
            .candidates(|_, _| true)
            .into_iter()
            .chain(standbys(group))
        {
            let Some(b) = group.member(idx).binding() else {
                continue;
            };
            let session = match self.member_session(&mut st, idx, &b) {
                Ok(h) => h,
                Err(f) if f.fails_member() => {
                    self.drop_member(idx, &b.instance, f);
                    continue;
                }
                Err(f) => return Err(f.rv()),
            };
            let m = group.member(idx);
            match credential::present(&b.instance, session, user, &pin) {
                Verdict::Accepted => accepted = true,
                Verdict::Undecided(f) if f.fails_member() => self.drop_member(idx, &b.instance, f),
                // Not a verdict on the PIN: the member is dropped (recovery logs it in again)
                // and the next member judges the PIN.
                Verdict::Undecided(f @ Fault::Rv(CKR_GENERAL_ERROR)) => {
                    self.drop_member(idx, &b.instance, f)
                }
                // The first member to answer judges the caller's PIN and arguments: a wrong PIN
                // is reported once and never tried on the others. That is the application's
                // error, not the member's: every member stays up, auto-recovery stays on, and
                // the HA log says so (P11HA_LOGIN_REFUSED, not HALOG_LOGINFAILED). The serial is
                // there so that a member whose PIN was changed on its own shows up. A panic of
                // ours is no member's answer: no line.
                v if !accepted || v == Verdict::Undecided(Fault::Panicked) => {
                    let rv = v.rv();
                    if v != Verdict::Undecided(Fault::Panicked) {
                        group.log.login_refused(&group.serial, &m.serial, rv);
                    }
                    return Err(rv);
                }
                // A later member refuses the PIN the first one took: it is not this group's
                // any more. Never tried again there (no lock-outs).
                Verdict::WrongPin(rv) | Verdict::Revoked(rv) => {
                    group.log.login_failed(&group.serial, &m.serial, rv);
                    m.set_auto_recovery(false);
                    self.drop_member(idx, &b.instance, Fault::Rv(rv));
                }
                // A later member's own trouble says nothing about the PIN: dropped, and
                // recovery tries it again.
                Verdict::Undecided(f) => self.drop_member(idx, &b.instance, f),
            }
        }
        if !accepted {
            return Err(CKR_DEVICE_ERROR);
        }
        group.set_login(Some(Login { user, pin }));
        drop(st);
        if user == CKU_USER {
            // Owed changes to private objects wait for a login: settle them before the
            // application can see those objects on a member that missed them.
            // Bounded: a reintroduction the management thread runs holds the comparison for
            // as long as it takes; what is skipped here is settled in its next round.
            crate::ha::sync::catchup::catch_up_within(
                group,
                Some(crate::ha::sync::catchup::LOGIN_WAIT),
            );
        }
        Ok(())
    }

    /// CKU_CONTEXT_SPECIFIC belongs to the operation in progress, on its member only.
    fn context_login(&self, pin: Option<Pin>) -> CkResult<()> {
        let mut st = self.st.lock();
        // The login is for the operation the member holds: its Init cannot wait.
        self.begin_waiting(&mut st);
        let op = st.ops.last().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        op.inst
            .login(op.session, CKU_CONTEXT_SPECIFIC, pin)
            .map_err(|f| {
                if f.fails_member() {
                    CKR_DEVICE_ERROR
                } else {
                    f.rv()
                }
            })
    }

    pub(crate) fn logout_unaudited(&self) -> CkResult<()> {
        let group = &self.group;
        if group.login().is_none() {
            // Not logged in: what the member says to that (SoftHSM says CKR_OK).
            let mut st = self.st.lock();
            return self
                .attempt(&mut st, &[], None, |t| t.inst.logout(t.session))
                .map(|_| ());
        }
        group.set_login(None);
        // Private objects' handles end with the login; the others stay valid (members keep
        // their handles: SoftHSM renumbers only private objects).
        group.objects.remove_private();
        let mut st = self.st.lock();
        for idx in 0..group.members().len() {
            let Some(b) = group.member(idx).binding() else {
                continue;
            };
            let Ok(session) = self.member_session(&mut st, idx, &b) else {
                continue;
            };
            match b.instance.logout(session) {
                Err(f) if f.fails_member() => self.drop_member(idx, &b.instance, f),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn set_pin(&self, old: Pin, new: Pin) -> CkResult<()> {
        self.each_member(|inst, s| inst.set_pin(s, old.clone(), new.clone()))?;
        if let Some(mut l) = self.group.login() {
            if l.pin.is_some() {
                l.pin = Some(new.clone());
                self.group.set_login(Some(l));
            }
        }
        Ok(())
    }

    pub fn init_pin(&self, pin: Pin) -> CkResult<()> {
        self.each_member(|inst, s| inst.init_pin(s, pin.clone()))
    }

    /// Applies a change to every up member: the first member's error is the caller's; a later
    /// member that refuses what the first accepted no longer matches the group and is dropped.
    fn each_member(
        &self,
        f: impl Fn(&Instance, CK_SESSION_HANDLE) -> MemberResult<()>,
    ) -> CkResult<()> {
        let group = &self.group;
        let mut st = self.st.lock();
        let mut accepted = false;
        for idx in 0..group.members().len() {
            let Some(b) = group.member(idx).binding() else {
                continue;
            };
            let r = self
                .member_session(&mut st, idx, &b)
                .and_then(|s| f(&b.instance, s));
            match r {
                Ok(()) => accepted = true,
                Err(fault) if fault.fails_member() => self.drop_member(idx, &b.instance, fault),
                Err(fault) if !accepted || fault == Fault::Panicked => return Err(fault.rv()),
                Err(fault) => self.drop_member(idx, &b.instance, fault),
            }
        }
        if accepted {
            Ok(())
        } else {
            Err(CKR_DEVICE_ERROR)
        }
    }
}
