//! Creating an object from the application's template on every member at once, for the classes
//! copied by value (data objects, certificates, public keys) in a synchronized group. Copying
//! after the creating member's C_CreateObject made the application wait for two writes in a row
//! (SoftHSM writes a file per token object); from the template every member writes at the same
//! time. What the members answer is judged as for a copy (`replicate` in objects.rs): the
//! creating member's answer is the caller's, a receiver that fails on its connection is dropped
//! (it gets the object at its reintroduction), any other refusal by a receiver undoes everything.

use super::at_once::beside;
use super::route::Apart;
use super::{forget, CkResult, Session};
use crate::diag::diag;
use crate::ha::sync::copy::{copy_object, hint, CopyResult, End, Side};
use crate::ha::sync::owed;
use crate::mechanism::{find, Attr};
use crate::provider::{Fault, MemberResult};
use cryptoki_sys::*;

/// Whether a C_CreateObject with this template is made on every member at once.
pub(super) fn applies(template: &[Attr]) -> bool {
    let class = find(template, CKA_CLASS).and_then(Attr::as_ulong);
    find(template, CKA_TOKEN).and_then(Attr::as_bool) == Some(true)
        && matches!(class, Some(CKO_DATA | CKO_CERTIFICATE | CKO_PUBLIC_KEY))
        && !crate::bounded::is_inline()
}

/// A member receiving the object: its index and a session of its own there.
struct Receiver {
    idx: usize,
    apart: Apart,
}

impl Session {
    /// C_CreateObject of a token object (see [`applies`]) on the home member and, at the same
    /// time, on every other up member; `None` when there is no home to start from (the caller
    /// then takes the one-member-then-copy path).
    pub(super) fn create_everywhere(
        &self,
        template: &[Attr],
    ) -> Option<CkResult<CK_OBJECT_HANDLE>> {
        let mut st = self.st.lock();
        let home = self.home(&st)?;
        let mut receivers = Vec::new();
        for idx in (0..self.group.members().len()).filter(|&i| i != home) {
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            // The application's member session logs the member in with the group.
            let opened = self
                .member_session(&mut st, idx, &b)
                .and_then(|_| Apart::open(&b.instance, b.slot));
            match opened {
                Ok(apart) => receivers.push(Receiver { idx, apart }),
                Err(f) if f.fails_member() => self.drop_member(idx, &b.instance, f),
                Err(f) => return Some(Err(f.rv())),
            }
        }
        let st = &mut *st;
        let create = |rx: &Receiver| {
            rx.apart
                .inst
                .create_object(rx.apart.session, template.to_vec())
        };
        let (first, made) = beside(&receivers, create, || {
            self.attempt(st, &[], Some(home), |t| {
                let h = t.inst.create_object(t.session, template.to_vec())?;
                Ok((h, self.adopt(t, h)?))
            })
        });
        let made: Vec<MemberResult<CK_OBJECT_HANDLE>> = made
            .into_iter()
            .map(|r| r.unwrap_or(Err(Fault::Panicked)))
            .collect();
        let undo = |made: &[MemberResult<CK_OBJECT_HANDLE>]| {
            for (rx, h) in receivers.iter().zip(made) {
                if let Ok(h) = h {
                    let _ = rx.apart.inst.destroy_object(rx.apart.session, *h);
                }
            }
        };
        let ((h, v), t) = match first {
            Ok(x) => x,
            Err(rv) => {
                undo(&made);
                return Some(Err(rv));
            }
        };
        if t.idx != home {
            // The home failed: the member that made it is the home now.
            self.group.set_home(t.idx);
        }
        let mut twins = Vec::new();
        let mut copies = Vec::new();
        for (rx, r) in receivers.iter().zip(&made) {
            let inst = &rx.apart.inst;
            let bound = self
                .group
                .member(rx.idx)
                .binding()
                .is_some_and(|b| b.instance.id == inst.id);
            // A receiver that refused the template but still answers gets a copy of what the
            // creating member made, as without this path: the template may have been fine for
            // that member and not for its transport (p11-kit answers CKR_DEVICE_ERROR to an
            // attribute it cannot carry), which must not cost the group a member.
            let r = match r {
                Err(f) if !f.fails_member() || inst.session_info(rx.apart.session).is_ok() => {
                    match self.copy_from(&t, h, rx) {
                        Ok(h2) => {
                            copies.push((rx, h2));
                            Ok(h2)
                        }
                        Err(e) => Err(e),
                    }
                }
                other => other.map_err(|f| (Side::Target, f)),
            };
            match r {
                // The creating call moved here after the home failed: it made its own.
                Ok(h2) if rx.idx == t.idx => {
                    let _ = inst.destroy_object(rx.apart.session, h2);
                }
                Ok(h2) if bound => twins.push((rx.idx, inst.id, h2)),
                // Dropped meanwhile: its copy matches at its reintroduction.
                Ok(_) => {}
                Err((Side::Target, f)) if f.fails_member() => {
                    self.drop_member(rx.idx, inst, f);
                    forget(st, rx.idx);
                }
                Err((side, f)) => {
                    undo(&made);
                    for (rx, h2) in &copies {
                        let _ = rx.apart.inst.destroy_object(rx.apart.session, *h2);
                    }
                    let _ = t.inst.destroy_object(t.session, h);
                    self.group.objects.remove(v);
                    if side == Side::Source && f.fails_member() {
                        self.drop_member(t.idx, &t.inst, f);
                        forget(st, t.idx);
                    }
                    diag!(
                        Warn,
                        "group {}: object not replicated to {}, creation undone: {}{}",
                        self.group.label,
                        self.group.member(rx.idx).serial,
                        crate::rv::rv_name(f.rv()),
                        hint(f.rv())
                    );
                    return Some(Err(f.rv()));
                }
            }
        }
        for (idx, inst, h2) in twins {
            self.group.objects.set_twin(v, idx, inst, h2);
        }
        let holders = self.holders(st);
        owed::remember_created(&self.group, &holders);
        Some(Ok(v))
    }

    /// A copy of `h` (made on `first`) to a receiver, read in a session of its own on `first`.
    fn copy_from(
        &self,
        first: &super::route::Target,
        h: CK_OBJECT_HANDLE,
        rx: &Receiver,
    ) -> CopyResult<CK_OBJECT_HANDLE> {
        let slot = self
            .group
            .member(first.idx)
            .binding()
            .filter(|b| b.instance.id == first.inst.id)
            .map(|b| b.slot)
            .ok_or((Side::Source, Fault::Closed))?;
        let from = Apart::open(&first.inst, slot).map_err(|f| (Side::Source, f))?;
        let mut from_end = End::new(
            &from.inst,
            from.session,
            &self.group.member(first.idx).serial,
        );
        let mut to = End::new(
            &rx.apart.inst,
            rx.apart.session,
            &self.group.member(rx.idx).serial,
        );
        copy_object(&mut from_end, h, &mut to)
    }
}
