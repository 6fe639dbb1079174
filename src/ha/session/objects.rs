//! Objects through a session: creating (and, in a synchronized group, replicating before the
//! call returns), copying, destroying, and their attributes.

use super::at_once::at_once;
use super::route::{Apart, Target};
use super::{forget, CkResult, Session, State};
use crate::diag::diag;
use crate::ha::objects::Identity;
use crate::ha::sync::copy::{copy_object, hint, End, Side, RV_NO_CARRIER};
use crate::ha::sync::owed::{self, is_private, Holder};
use crate::ha::sync::policy::{is_managed, member_set_template, member_template};
use crate::mechanism::{find, Attr};
use crate::provider::{AttributeValues, Fault, Instance, MemberResult};
use cryptoki_sys::*;

/// Flags a p11ha-managed key holds on its members only so it can be cloned: the application
/// asked for a non-extractable key and reads them as one (false).
const HIDDEN: [CK_ATTRIBUTE_TYPE; 2] = [CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED];

/// Secret values of keys: PKCS#11 never reveals them for a non-extractable key.
const SENSITIVE: [CK_ATTRIBUTE_TYPE; 7] = [
    CKA_VALUE,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
];

/// Makes a copy of a member's twin of an object, on that member.
type CopyHere<'a> =
    dyn Fn(&Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE) -> MemberResult<CK_OBJECT_HANDLE> + 'a;

impl Session {
    /// Registers an object a member just made for this session and returns its virtual handle.
    pub(super) fn adopt(
        &self,
        t: &Target,
        handle: CK_OBJECT_HANDLE,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        let identity = Identity::read(&t.inst, t.session, handle)?;
        let owner = (!identity.is_token()).then_some(self.handle);
        Ok(self
            .group
            .objects
            .register(t.idx, t.inst.id, handle, identity, owner))
    }

    /// Runs a creating call on one member, adopts what it made and, in a synchronized group,
    /// replicates the token objects to every other up member before returning. A member that
    /// fails on its connection while receiving is dropped (it gets the objects when it is
    /// reintroduced); when the creating member fails, everything is undone and the call runs
    /// again elsewhere; any other refusal undoes everything and is the caller's error.
    pub(super) fn create_replicated(
        &self,
        objects: &[CK_OBJECT_HANDLE],
        make: impl Fn(&Target) -> MemberResult<Vec<CK_OBJECT_HANDLE>>,
    ) -> CkResult<Vec<CK_OBJECT_HANDLE>> {
        self.create_replicated_as(objects, make, None)
    }

    /// [`Session::create_replicated`]; with `copy_of`, the one object made is a C_CopyObject
    /// of `copy_of.0`, and each member that holds a twin of it makes its own copy with
    /// `copy_of.1` (a non-extractable key cannot be wrapped to another member, but each
    /// member can copy its own twin).
    fn create_replicated_as(
        &self,
        objects: &[CK_OBJECT_HANDLE],
        make: impl Fn(&Target) -> MemberResult<Vec<CK_OBJECT_HANDLE>>,
        copy_of: Option<(CK_OBJECT_HANDLE, &CopyHere)>,
    ) -> CkResult<Vec<CK_OBJECT_HANDLE>> {
        let mut st = self.st.lock();
        for _ in 0..=self.group.members().len() {
            let home = self.home(&st);
            let (made, t) = self.attempt(&mut st, objects, home, |t| {
                let hs = make(t)?;
                hs.into_iter()
                    .map(|h| Ok((h, self.adopt(t, h)?)))
                    .collect::<MemberResult<Vec<_>>>()
            })?;
            if home != Some(t.idx) {
                // The home failed, or the objects named live elsewhere: that is the home now.
                self.group.set_home(t.idx);
            }
            let virtuals: Vec<_> = made.iter().map(|(_, v)| *v).collect();
            let token: Vec<_> = made
                .iter()
                .copied()
                .filter(|(_, v)| {
                    self.group
                        .objects
                        .identity(*v)
                        .is_some_and(|i| i.is_token())
                })
                .collect();
            if !self.syncs() || token.is_empty() {
                return Ok(virtuals);
            }
            match self.replicate(&mut st, &t, &token, copy_of) {
                Ok(()) => return Ok(virtuals),
                Err(f) if f.fails_member() => {
                    // The creating member failed: what it made stays there until it returns
                    // and is destroyed at its reintroduction.
                    let serial = vec![self.group.member(t.idx).serial.clone()];
                    let holders = self.holders(&mut st);
                    let private = owed::is_user(&self.group.login());
                    for (_, v) in &made {
                        if let Some(identity) = self.group.objects.identity(*v) {
                            owed::remember_destroy(
                                &self.group,
                                &holders,
                                identity,
                                private,
                                &serial,
                            );
                        }
                        self.group.objects.remove(*v);
                    }
                }
                Err(f) => {
                    for (h, _) in &made {
                        let _ = t.inst.destroy_object(t.session, *h);
                    }
                    for (_, v) in &made {
                        self.group.objects.remove(*v);
                    }
                    return Err(f.rv());
                }
            }
        }
        Err(CKR_DEVICE_ERROR)
    }

    /// Copies objects just made on `first` to every other up member and registers the twins.
    /// The members receive at once, each over sessions of its own (creating a token object is
    /// a file write on SoftHSM, milliseconds, so one member after the other multiplied the
    /// application's wait). On error every twin made here is destroyed again; a fault that
    /// fails a member is the creating member's (it has been dropped).
    fn replicate(
        &self,
        st: &mut State,
        first: &Target,
        made: &[(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)],
        copy_of: Option<(CK_OBJECT_HANDLE, &CopyHere)>,
    ) -> MemberResult<()> {
        let source = self.group.member(first.idx).binding();
        let Some(source) = source.filter(|b| b.instance.id == first.inst.id) else {
            return Err(Fault::Closed);
        };
        let source_serial = self.group.member(first.idx).serial.clone();
        let mut receivers = Vec::new();
        for idx in (0..self.group.members().len()).filter(|&i| i != first.idx) {
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            // The application's member session there logs the member in with the group. Copies
            // run in sessions of their own on both sides: the application's member sessions may
            // be in the middle of an operation.
            let opened = self
                .member_session(st, idx, &b)
                .and_then(|_| Apart::open(&b.instance, b.slot));
            let to = match opened {
                Ok(a) => a,
                Err(f) if f.fails_member() => {
                    self.drop_member(idx, &b.instance, f);
                    continue;
                }
                // Not a failure of any member: the caller's answer.
                Err(f) => return Err(f),
            };
            // The member's own twin of the object copied, if it has one.
            let source_here = match copy_of {
                Some((src, _)) => match self.resolve(idx, &b.instance, to.session, src) {
                    Ok(t) => t,
                    Err(f) if f.fails_member() => {
                        self.drop_member(idx, &b.instance, f);
                        forget(st, idx);
                        continue;
                    }
                    Err(_) => None,
                },
                None => None,
            };
            receivers.push(Receiver {
                idx,
                from: Apart::open(&source.instance, source.slot)?,
                to,
                serial: self.group.member(idx).serial.clone(),
                source_here,
            });
        }
        let results: Vec<Received> = match copy_of {
            Some((_, copy_here)) => receivers
                .iter()
                .map(|rx| receive(rx, made, &source_serial, Some(copy_here)))
                .collect(),
            None => receive_at_once(&receivers, made, &source_serial),
        };
        let twins: Vec<_> = receivers
            .iter()
            .zip(&results)
            .flat_map(|(rx, r)| r.made.iter().map(move |&(_, h2)| (rx, h2)))
            .collect();
        let undo = || {
            for (rx, h) in &twins {
                let _ = rx.to.inst.destroy_object(rx.to.session, *h);
            }
        };
        let mut registered = Vec::new();
        for (rx, r) in receivers.iter().zip(&results) {
            let inst = &rx.to.inst;
            match r.failed {
                None => registered.extend(r.made.iter().map(|&(v, h2)| (v, rx.idx, inst.id, h2))),
                // It gets the objects when it is reintroduced.
                Some((Side::Target, f, _)) if f.fails_member() => {
                    self.drop_member(rx.idx, inst, f);
                    forget(st, rx.idx);
                }
                Some((side, f, refused)) => {
                    undo();
                    if side == Side::Source && f.fails_member() {
                        self.drop_member(first.idx, &first.inst, f);
                        forget(st, first.idx);
                        return Err(f);
                    }
                    let end = if side == Side::Source {
                        &source_serial
                    } else {
                        &rx.serial
                    };
                    if let (CKR_MECHANISM_INVALID, Some(carrier)) = (f.rv(), refused) {
                        // Not the application's mechanism: a member cannot receive the key.
                        let g = &self.group;
                        g.log.carrier_refused(&g.serial, end, carrier);
                        diag!(
                            Warn,
                            "group {}: a key cannot travel to {} ({carrier} refused by {end} \
                             or its transport), creation undone: see p11ha synchronize -check",
                            g.label,
                            rx.serial,
                        );
                        return Err(Fault::Rv(RV_NO_CARRIER));
                    }
                    diag!(
                        Warn,
                        "group {}: object not replicated to {}, creation undone: {}{}",
                        self.group.label,
                        rx.serial,
                        crate::rv::rv_name(f.rv()),
                        hint(f.rv())
                    );
                    return Err(f);
                }
            }
        }
        for (v, idx, inst, h2) in registered {
            self.group.objects.set_twin(v, idx, inst, h2);
        }
        let holders = self.holders(st);
        owed::remember_created(&self.group, &holders);
        Ok(())
    }

    /// The up members' sessions of this session: where records of what the members that are
    /// down are owed are written, before the change returns. A member that fails is dropped.
    pub(super) fn holders(&self, st: &mut State) -> Vec<Holder> {
        let mut out = Vec::new();
        for idx in 0..self.group.members().len() {
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            match self.member_session(st, idx, &b) {
                Ok(session) => out.push(Holder {
                    idx,
                    inst: b.instance.clone(),
                    session,
                }),
                Err(f) if f.fails_member() => self.drop_member(idx, &b.instance, f),
                Err(_) => {}
            }
        }
        out
    }

    pub(crate) fn create_object_unaudited(
        &self,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = if self.syncs() {
            let class = find(&template, CKA_CLASS).and_then(Attr::as_ulong);
            member_template(class, &template)
        } else {
            template
        };
        if self.syncs() && super::everywhere::applies(&template) {
            if let Some(made) = self.create_everywhere(&template) {
                return made;
            }
        }
        self.create_replicated(&[], |t| {
            Ok(vec![t.inst.create_object(t.session, template.clone())?])
        })
        .map(|v| v[0])
    }

    pub(crate) fn copy_object_unaudited(
        &self,
        obj: CK_OBJECT_HANDLE,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = if self.syncs() {
            member_set_template(&template)
        } else {
            template
        };
        let copy_here: &CopyHere = &|inst, s, twin| inst.copy_object(s, twin, template.clone());
        self.create_replicated_as(
            &[obj],
            |t| Ok(vec![copy_here(&t.inst, t.session, t.objects[0])?]),
            Some((obj, copy_here)),
        )
        .map(|v| v[0])
    }

    /// Destroys the object on every member that holds a twin; members that are down have it
    /// destroyed when they are reintroduced.
    pub(crate) fn destroy_object_unaudited(&self, obj: CK_OBJECT_HANDLE) -> CkResult<()> {
        let mut st = self.st.lock();
        let identity = self.group.objects.identity(obj);
        let syncs = self.syncs();
        let (private, first) = self.attempt(&mut st, &[obj], None, |t| {
            // The record of the destroy is as private as the object (read before it is gone).
            let private = syncs && is_private(&t.inst, t.session, t.objects[0])?;
            t.inst.destroy_object(t.session, t.objects[0])?;
            Ok(private)
        })?;
        self.on_other_members(&mut st, first.idx, obj, |inst, s, h| {
            inst.destroy_object(s, h)
        });
        if let (true, Some(identity)) = (syncs, identity) {
            let holders = self.holders(&mut st);
            let down = self.group.down_serials();
            owed::remember_destroy(&self.group, &holders, identity, private, &down);
        }
        self.group.objects.remove(obj);
        Ok(())
    }

    /// Applies `f` to the twin of `obj` on every up member but `done`, on all of them at once
    /// (each is a round trip and, on SoftHSM, a file written or removed); members that fail are
    /// dropped, other refusals are left for the member to answer later.
    fn on_other_members(
        &self,
        st: &mut State,
        done: usize,
        obj: CK_OBJECT_HANDLE,
        f: impl Fn(&Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE) -> MemberResult<()> + Sync,
    ) {
        let mut twins = Vec::new();
        for idx in (0..self.group.members().len()).filter(|&i| i != done) {
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            let twin = self
                .member_session(st, idx, &b)
                .and_then(|s| Ok(self.resolve(idx, &b.instance, s, obj)?.map(|h| (s, h))));
            match twin {
                Ok(Some((s, h))) => twins.push((idx, b.instance, s, h)),
                Ok(None) => {}
                Err(fault) if fault.fails_member() => self.drop_member(idx, &b.instance, fault),
                Err(_) => {}
            }
        }
        let results = at_once(&twins, |(_, inst, s, h)| f(inst, *s, *h));
        for ((idx, inst, _, _), r) in twins.iter().zip(results) {
            if let Some(Err(fault)) = r {
                if fault.fails_member() {
                    self.drop_member(*idx, inst, fault);
                }
            }
        }
    }

    /// The C_SetAttributeValue template for one member. In a synchronized group a key the
    /// application made non-extractable is held extractable-to-trusted-keys (see
    /// `sync::policy`); for it, making it extractable again is refused as PKCS#11 refuses it,
    /// and asking again for what it already is (non-extractable) changes nothing on the member.
    fn member_set(
        &self,
        inst: &Instance,
        session: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        template: &[Attr],
    ) -> MemberResult<Vec<Attr>> {
        if !self.syncs() {
            return Ok(template.to_vec());
        }
        if !template.iter().any(|a| HIDDEN.contains(&a.kind)) || !is_managed(inst, session, h)? {
            return Ok(member_set_template(template));
        }
        if find(template, CKA_EXTRACTABLE).and_then(Attr::as_bool) == Some(true) {
            return Err(Fault::Rv(CKR_ATTRIBUTE_READ_ONLY));
        }
        Ok(template
            .iter()
            .filter(|a| !HIDDEN.contains(&a.kind))
            .cloned()
            .collect())
    }

    pub fn object_size(&self, obj: CK_OBJECT_HANDLE) -> CkResult<CK_ULONG> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[obj], None, |t| {
            t.inst.object_size(t.session, t.objects[0])
        })
        .map(|(v, _)| v)
    }

    /// CKR_OK for an object handle the application may use, as a member would answer it.
    pub fn check_object(&self, obj: CK_OBJECT_HANDLE) -> CkResult<()> {
        if self.group.objects.exists(obj) {
            Ok(())
        } else {
            Err(CKR_OBJECT_HANDLE_INVALID)
        }
    }

    pub fn get_attributes(
        &self,
        obj: CK_OBJECT_HANDLE,
        query: Vec<(CK_ATTRIBUTE_TYPE, Option<CK_ULONG>)>,
    ) -> CkResult<AttributeValues> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[obj], None, |t| {
            let (mut rv, mut out) =
                t.inst
                    .get_attributes(t.session, t.objects[0], query.clone())?;
            let concerned = query
                .iter()
                .any(|(k, _)| HIDDEN.contains(k) || SENSITIVE.contains(k));
            if self.syncs() && concerned && is_managed(&t.inst, t.session, t.objects[0])? {
                // The application asked for a non-extractable key: it reads back as one, and a
                // non-extractable key's secret values are never revealed, sensitive or not.
                for (i, (kind, cap)) in query.iter().enumerate() {
                    if HIDDEN.contains(kind) {
                        out[i] = match cap {
                            Some(cap) if *cap >= 1 => (1, Some(vec![CK_FALSE])),
                            Some(_) => (CK_UNAVAILABLE_INFORMATION, None),
                            None => (1, None),
                        };
                    } else if SENSITIVE.contains(kind) {
                        out[i] = (CK_UNAVAILABLE_INFORMATION, None);
                        if matches!(rv, CKR_OK | CKR_BUFFER_TOO_SMALL) {
                            rv = CKR_ATTRIBUTE_SENSITIVE;
                        }
                    }
                }
            }
            Ok((rv, out))
        })
        .map(|(v, _)| v)
    }

    /// Sets attributes on every member that holds the object, then refreshes its identity.
    pub(crate) fn set_attributes_unaudited(
        &self,
        obj: CK_OBJECT_HANDLE,
        template: Vec<Attr>,
    ) -> CkResult<()> {
        let before = self.group.objects.identity(obj);
        let mut st = self.st.lock();
        // Before and after: an Init accepted meanwhile may have seen the old attributes.
        self.group.objects.inits.forget_key(obj);
        let set = self.attempt(&mut st, &[obj], None, |t| {
            let template = self.member_set(&t.inst, t.session, t.objects[0], &template)?;
            t.inst.set_attributes(t.session, t.objects[0], template)
        });
        self.group.objects.inits.forget_key(obj);
        let (_, first) = set?;
        self.on_other_members(&mut st, first.idx, obj, |inst, s, h| {
            let template = self.member_set(inst, s, h, &template)?;
            inst.set_attributes(s, h, template)
        });
        let after = Identity::read(&first.inst, first.session, first.objects[0]).ok();
        if let Some(after) = &after {
            self.group.objects.update_identity(obj, after.clone());
        }
        if let (true, Some(before)) = (self.syncs(), before) {
            let kinds = template.iter().map(|a| a.kind).collect();
            let after = after.unwrap_or_else(|| before.clone());
            let private = is_private(&first.inst, first.session, first.objects[0]).unwrap_or(true);
            let holders = self.holders(&mut st);
            owed::remember_set(&self.group, &holders, before, after, kinds, private);
        }
        Ok(())
    }
}

/// A member that receives copies from `replicate`, with a session of its own there and one on
/// the source (a session serves one thread at a time).
struct Receiver {
    idx: usize,
    from: Apart,
    to: Apart,
    serial: String,
    /// With `copy_of`: the member's own twin of the object copied.
    source_here: Option<CK_OBJECT_HANDLE>,
}

/// What one receiver got: twins made (virtual handle, handle there), and the error that
/// stopped it, with the carrier the failing end refused.
struct Received {
    made: Vec<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)>,
    failed: Option<(Side, Fault, Option<&'static str>)>,
}

/// Copies `made` to one receiver.
fn receive(
    rx: &Receiver,
    made: &[(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)],
    source_serial: &str,
    copy_here: Option<&CopyHere>,
) -> Received {
    let mut from = End::new(&rx.from.inst, rx.from.session, source_serial);
    let mut to = End::new(&rx.to.inst, rx.to.session, &rx.serial);
    let mut got = Vec::new();
    for &(h, v) in made {
        let copied = match (copy_here, rx.source_here) {
            (Some(copy_here), Some(twin)) => {
                copy_here(&rx.to.inst, rx.to.session, twin).map_err(|f| (Side::Target, f))
            }
            _ => copy_object(&mut from, h, &mut to),
        };
        match copied {
            Ok(h2) => got.push((v, h2)),
            Err((side, f)) => {
                let refused = match side {
                    Side::Source => from.refused_carrier(),
                    Side::Target => to.refused_carrier(),
                };
                return Received {
                    made: got,
                    failed: Some((side, f, refused)),
                };
            }
        }
    }
    Received {
        made: got,
        failed: None,
    }
}

/// [`receive`] for every receiver at once.
fn receive_at_once(
    receivers: &[Receiver],
    made: &[(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)],
    source_serial: &str,
) -> Vec<Received> {
    at_once(receivers, |rx| receive(rx, made, source_serial, None))
        .into_iter()
        .map(|r| {
            r.unwrap_or(Received {
                made: Vec::new(),
                failed: Some((Side::Target, Fault::Panicked, None)),
            })
        })
        .collect()
}
