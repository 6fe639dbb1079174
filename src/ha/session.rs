//! Virtual sessions: each has member sessions opened lazily on the members it uses, and runs
//! every call through `Session::attempt`, which picks a member, fails over on connection-class
//! errors and passes the caller's own errors through untouched.

use super::group::{Group, Login, Pin};
use super::member::{current_seq, Binding, InFlight};
use super::objects::{find_twin, Identity};
use super::sync::{
    copy_object, down_members, is_managed, member_set_template, member_template, End, Side,
};
use crate::config::RecoveryMode;
use crate::mechanism::{find, Attr, OwnedMechanism};
use crate::provider::{
    is_connection_error, is_deactivation, AttributeValues, Instance, MemberResult, OpKind, Output,
};
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub type CkResult<T> = Result<T, CK_RV>;

/// A member chosen for one call, with this session's session on it and the caller's objects
/// resolved to their twins there.
pub struct Target {
    pub idx: usize,
    pub inst: Arc<Instance>,
    pub session: CK_SESSION_HANDLE,
    pub objects: Vec<CK_OBJECT_HANDLE>,
}

/// An operation between its Init and its final call.
struct ActiveOp {
    kind: OpKind,
    mech: Option<OwnedMechanism>,
    /// Virtual key handle, 0 for none (digest).
    key: CK_OBJECT_HANDLE,
    idx: usize,
    inst: Arc<Instance>,
    session: CK_SESSION_HANDLE,
    /// Data went to the member (update calls): the operation cannot move to another member.
    fed: bool,
    _busy: InFlight,
}

#[derive(Default)]
struct State {
    /// Per member index: (instance id, member session handle).
    member_sessions: Vec<Option<(u64, CK_SESSION_HANDLE)>>,
    ops: Vec<ActiveOp>,
    found: Option<std::vec::IntoIter<CK_OBJECT_HANDLE>>,
}

pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    pub group: Arc<Group>,
    pub flags: CK_FLAGS,
    /// Members that joined after this sequence number are not used under activeBasic.
    opened_seq: u64,
    st: Mutex<State>,
}

fn ok_or_rv(rv: CK_RV) -> CkResult<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(rv)
    }
}

/// Whether a call with output leaves its operation active (length query or buffer too small).
fn keeps_active(out: &Output, cap: Option<CK_ULONG>) -> bool {
    out.rv == CKR_BUFFER_TOO_SMALL || (out.rv == CKR_OK && cap.is_none())
}

impl Session {
    pub fn new(handle: CK_SESSION_HANDLE, group: Arc<Group>, flags: CK_FLAGS) -> Self {
        let n = group.members().len();
        Session {
            handle,
            group,
            flags,
            opened_seq: current_seq(),
            st: Mutex::new(State {
                member_sessions: vec![None; n],
                ..Default::default()
            }),
        }
    }

    /// PKCS#11 session state from the group's login and this session's flags.
    pub fn state(&self) -> CK_STATE {
        let rw = self.flags & CKF_RW_SESSION != 0;
        match (self.group.login().map(|l| l.user), rw) {
            (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
            (Some(_), true) => CKS_RW_USER_FUNCTIONS,
            (Some(_), false) => CKS_RO_USER_FUNCTIONS,
            (None, true) => CKS_RW_PUBLIC_SESSION,
            (None, false) => CKS_RO_PUBLIC_SESSION,
        }
    }

    fn usable(&self, st: &State, idx: usize, b: &Binding) -> bool {
        if self.group.mode == RecoveryMode::Enhanced || b.joined <= self.opened_seq {
            return true;
        }
        // activeBasic: a member that rejoined serves only sessions it already had.
        matches!(st.member_sessions.get(idx), Some(Some((i, _))) if *i == b.instance.id)
    }

    fn drop_member(&self, idx: usize, inst: &Instance, rv: CK_RV) {
        self.group.drop_member(idx, inst.id, rv);
    }

    /// This session's session on a member, opened (and logged in) on first use.
    fn member_session(
        &self,
        st: &mut State,
        idx: usize,
        b: &Binding,
    ) -> MemberResult<CK_SESSION_HANDLE> {
        if st.member_sessions.len() <= idx {
            st.member_sessions.resize(idx + 1, None);
        }
        if let Some((i, h)) = st.member_sessions[idx] {
            if i == b.instance.id {
                return Ok(h);
            }
        }
        let h = b
            .instance
            .open_session(b.slot, self.flags | CKF_SERIAL_SESSION)?;
        st.member_sessions[idx] = Some((b.instance.id, h));
        b.open_sessions.fetch_add(1, Ordering::AcqRel);
        if let Some(Login { user, pin }) = self.group.login() {
            match b.instance.login(h, user, pin) {
                Ok(()) | Err(CKR_USER_ALREADY_LOGGED_IN) => {}
                Err(rv) if is_connection_error(rv) => return Err(rv),
                Err(rv) => {
                    // The cached PIN no longer works here: never retry it (no lock-outs).
                    let m = self.group.member(idx);
                    self.group
                        .log
                        .login_failed(&self.group.serial, &m.serial, rv);
                    m.set_auto_recovery(false);
                    self.drop_member(idx, &b.instance, rv);
                    return Err(CKR_DEVICE_ERROR);
                }
            }
        }
        Ok(h)
    }

    /// The twin of a virtual object on a member, found and cached on first use.
    fn resolve(
        &self,
        idx: usize,
        inst: &Instance,
        session: CK_SESSION_HANDLE,
        v: CK_OBJECT_HANDLE,
    ) -> MemberResult<Option<CK_OBJECT_HANDLE>> {
        let objects = &self.group.objects;
        if let Some(h) = objects.twin(v, idx, inst.id) {
            return Ok(Some(h));
        }
        let Some(identity) = objects.identity(v) else {
            return Ok(None);
        };
        if !identity.is_token() && objects.owner(v).is_some() {
            return Ok(None); // session objects live only where they were made
        }
        let twin = find_twin(inst, session, &identity)?;
        if let Some(h) = twin {
            objects.set_twin(v, idx, inst.id, h);
        }
        Ok(twin)
    }

    /// Runs `call` on the best member that holds every object in `objects`, failing over on
    /// connection-class errors. `prefer` is tried first when usable.
    fn attempt<T>(
        &self,
        st: &mut State,
        objects: &[CK_OBJECT_HANDLE],
        prefer: Option<usize>,
        mut call: impl FnMut(&Target) -> MemberResult<T>,
    ) -> CkResult<(T, Target)> {
        for &v in objects {
            if !self.group.objects.exists(v) {
                return Err(CKR_OBJECT_HANDLE_INVALID);
            }
        }
        let mut tried: Vec<usize> = Vec::new();
        let mut missing_object = false;
        let mut refreshed: Vec<usize> = Vec::new();
        loop {
            let next = {
                let prefer = if refreshed.last().is_some_and(|r| !tried.contains(r)) {
                    refreshed.last().copied()
                } else {
                    prefer
                };
                let candidates = self.group.candidates(|i, m| {
                    !tried.contains(&i) && m.binding().is_some_and(|b| self.usable(st, i, &b))
                });
                match prefer.filter(|p| candidates.contains(p)) {
                    Some(p) => Some(p),
                    None => candidates.first().copied(),
                }
            };
            let Some(idx) = next else {
                return Err(if missing_object {
                    CKR_OBJECT_HANDLE_INVALID
                } else {
                    CKR_DEVICE_ERROR
                });
            };
            tried.push(idx);
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            let session = match self.member_session(st, idx, &b) {
                Ok(h) => h,
                Err(rv) if is_connection_error(rv) => {
                    self.drop_member(idx, &b.instance, rv);
                    continue;
                }
                Err(rv) => return Err(rv),
            };
            let mut resolved = Vec::with_capacity(objects.len());
            let mut lost = None;
            for &v in objects {
                match self.resolve(idx, &b.instance, session, v) {
                    Ok(Some(h)) => resolved.push(h),
                    Ok(None) => break,
                    Err(rv) => {
                        lost = Some(rv);
                        break;
                    }
                }
            }
            if let Some(rv) = lost {
                if is_connection_error(rv) {
                    self.drop_member(idx, &b.instance, rv);
                    continue;
                }
                return Err(rv);
            }
            if resolved.len() < objects.len() {
                missing_object = true;
                continue;
            }
            let target = Target {
                idx,
                inst: b.instance.clone(),
                session,
                objects: resolved,
            };
            match call(&target) {
                // Modules may renumber objects (SoftHSM does after a logout): a cached twin
                // the member no longer knows is looked up again, once, on the same member.
                Err(
                    CKR_OBJECT_HANDLE_INVALID
                    | CKR_KEY_HANDLE_INVALID
                    | CKR_WRAPPING_KEY_HANDLE_INVALID
                    | CKR_UNWRAPPING_KEY_HANDLE_INVALID,
                ) if !objects.is_empty() && !refreshed.contains(&idx) => {
                    for &v in objects {
                        self.group.objects.forget_twin(v, idx);
                    }
                    refreshed.push(idx);
                    tried.retain(|&i| i != idx);
                }
                Ok(v) => return Ok((v, target)),
                Err(rv) if is_connection_error(rv) => {
                    self.drop_member(idx, &b.instance, rv);
                    forget(st, idx);
                    if self.stops_at_deactivation(rv) {
                        return Err(rv);
                    }
                }
                Err(rv) => return Err(rv),
            }
        }
    }

    /// With `failover_on_deactivation = 0`, a deactivation is the caller's answer, not a reason
    /// to move the call.
    fn stops_at_deactivation(&self, rv: CK_RV) -> bool {
        is_deactivation(rv) && !self.group.failover_on_deactivation
    }

    // ---- login -------------------------------------------------------------------------

    /// Logs every up member in with one PIN. The first member's verdict on the PIN is final:
    /// a wrong PIN is reported once and never tried on the others.
    pub fn login(&self, user: CK_USER_TYPE, pin: Option<Pin>) -> CkResult<()> {
        let group = &self.group;
        if user == CKU_CONTEXT_SPECIFIC {
            return self.context_login(pin);
        }
        if let Some(l) = group.login() {
            return Err(if l.user == user {
                CKR_USER_ALREADY_LOGGED_IN
            } else {
                CKR_USER_ANOTHER_ALREADY_LOGGED_IN
            });
        }
        if user == CKU_SO && self.flags & CKF_RW_SESSION == 0 {
            return Err(CKR_SESSION_READ_ONLY_EXISTS);
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
                Err(rv) if is_connection_error(rv) => {
                    self.drop_member(idx, &b.instance, rv);
                    continue;
                }
                Err(rv) => return Err(rv),
            };
            match b.instance.login(session, user, pin.clone()) {
                Ok(()) | Err(CKR_USER_ALREADY_LOGGED_IN) => accepted = true,
                Err(rv) if is_connection_error(rv) => self.drop_member(idx, &b.instance, rv),
                Err(rv) if !accepted => return Err(rv),
                Err(rv) => {
                    let m = group.member(idx);
                    group.log.login_failed(&group.serial, &m.serial, rv);
                    m.set_auto_recovery(false);
                    self.drop_member(idx, &b.instance, rv);
                }
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
            super::sync::catch_up(group);
        }
        Ok(())
    }

    /// CKU_CONTEXT_SPECIFIC belongs to the operation in progress, on its member only.
    fn context_login(&self, pin: Option<Pin>) -> CkResult<()> {
        let st = self.st.lock();
        let op = st.ops.last().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        op.inst
            .login(op.session, CKU_CONTEXT_SPECIFIC, pin)
            .map_err(|rv| {
                if is_connection_error(rv) {
                    CKR_DEVICE_ERROR
                } else {
                    rv
                }
            })
    }

    pub fn logout(&self) -> CkResult<()> {
        let group = &self.group;
        if group.login().is_none() {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        group.set_login(None);
        group.objects.forget_twins(None);
        let mut st = self.st.lock();
        for idx in 0..group.members().len() {
            let Some(b) = group.member(idx).binding() else {
                continue;
            };
            let Ok(session) = self.member_session(&mut st, idx, &b) else {
                continue;
            };
            match b.instance.logout(session) {
                Err(rv) if is_connection_error(rv) => self.drop_member(idx, &b.instance, rv),
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
                Err(rv) if is_connection_error(rv) => self.drop_member(idx, &b.instance, rv),
                Err(rv) if !accepted => return Err(rv),
                Err(rv) => self.drop_member(idx, &b.instance, rv),
            }
        }
        if accepted {
            Ok(())
        } else {
            Err(CKR_DEVICE_ERROR)
        }
    }

    // ---- objects -----------------------------------------------------------------------

    /// Registers an object a member just made for this session and returns its virtual handle.
    fn adopt(&self, t: &Target, handle: CK_OBJECT_HANDLE) -> MemberResult<CK_OBJECT_HANDLE> {
        let identity = Identity::read(&t.inst, t.session, handle)?;
        let owner = (!identity.is_token()).then_some(self.handle);
        Ok(self
            .group
            .objects
            .register(t.idx, t.inst.id, handle, identity, owner))
    }

    fn syncs(&self) -> bool {
        !self.group.passthrough && self.group.sync.enabled()
    }

    /// Runs a creating call on one member, adopts what it made and, in a synchronized group,
    /// replicates the token objects to every other up member before returning. A member that
    /// fails on its connection while receiving is dropped (it gets the objects when it is
    /// reintroduced); when the creating member fails, everything is undone and the call runs
    /// again elsewhere; any other refusal undoes everything and is the caller's error.
    fn create_replicated(
        &self,
        objects: &[CK_OBJECT_HANDLE],
        make: impl Fn(&Target) -> MemberResult<Vec<CK_OBJECT_HANDLE>>,
    ) -> CkResult<Vec<CK_OBJECT_HANDLE>> {
        let mut st = self.st.lock();
        for _ in 0..=self.group.members().len() {
            let (made, t) = self.attempt(&mut st, objects, None, |t| {
                let hs = make(t)?;
                hs.into_iter()
                    .map(|h| Ok((h, self.adopt(t, h)?)))
                    .collect::<MemberResult<Vec<_>>>()
            })?;
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
            match self.replicate(&mut st, &t, &token) {
                Ok(()) => return Ok(virtuals),
                Err(rv) if is_connection_error(rv) => {
                    // The creating member failed: what it made stays there until it returns
                    // and is destroyed at its reintroduction.
                    let serial = vec![self.group.member(t.idx).serial.clone()];
                    for (_, v) in &made {
                        if let Some(identity) = self.group.objects.identity(*v) {
                            self.group.sync.remember_destroy(identity, &serial);
                        }
                        self.group.objects.remove(*v);
                    }
                }
                Err(rv) => {
                    for (h, _) in &made {
                        let _ = t.inst.destroy_object(t.session, *h);
                    }
                    for (_, v) in &made {
                        self.group.objects.remove(*v);
                    }
                    return Err(rv);
                }
            }
        }
        Err(CKR_DEVICE_ERROR)
    }

    /// Copies objects just made on `first` to every other up member and registers the twins.
    /// On error every twin made here is destroyed again; a connection error is the creating
    /// member's (it has been dropped).
    fn replicate(
        &self,
        st: &mut State,
        first: &Target,
        made: &[(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)],
    ) -> CkResult<()> {
        let mut twins: Vec<(Arc<Instance>, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)> = Vec::new();
        let undo = |twins: &[(Arc<Instance>, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)]| {
            for (inst, s, h) in twins {
                let _ = inst.destroy_object(*s, *h);
            }
        };
        let mut from = End::new(
            &first.inst,
            first.session,
            &self.group.member(first.idx).serial,
        );
        let mut registered = Vec::new();
        for idx in (0..self.group.members().len()).filter(|&i| i != first.idx) {
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            let session = match self.member_session(st, idx, &b) {
                Ok(s) => s,
                Err(rv) if is_connection_error(rv) => {
                    self.drop_member(idx, &b.instance, rv);
                    continue;
                }
                Err(rv) => {
                    undo(&twins);
                    return Err(rv);
                }
            };
            let mut to = End::new(&b.instance, session, &self.group.member(idx).serial);
            let mut here = Vec::new();
            for &(h, v) in made {
                match copy_object(&mut from, h, &mut to) {
                    Ok(h2) => {
                        twins.push((b.instance.clone(), session, h2));
                        here.push((v, h2));
                    }
                    Err((Side::Target, rv)) if is_connection_error(rv) => {
                        self.drop_member(idx, &b.instance, rv);
                        forget(st, idx);
                        here.clear();
                        break;
                    }
                    Err((side, rv)) => {
                        undo(&twins);
                        if side == Side::Source && is_connection_error(rv) {
                            self.drop_member(first.idx, &first.inst, rv);
                            forget(st, first.idx);
                            return Err(CKR_DEVICE_ERROR);
                        }
                        eprintln!(
                            "p11ha: group {}: object not replicated to {}, creation undone: {}{}",
                            self.group.label,
                            self.group.member(idx).serial,
                            crate::rv::rv_name(rv),
                            super::sync::hint(rv)
                        );
                        return Err(rv);
                    }
                }
            }
            registered.extend(here.into_iter().map(|(v, h2)| (v, idx, b.instance.id, h2)));
        }
        for (v, idx, inst, h2) in registered {
            self.group.objects.set_twin(v, idx, inst, h2);
        }
        self.group.sync.remember_created(&down_members(&self.group));
        Ok(())
    }

    pub fn create_object(&self, template: Vec<Attr>) -> CkResult<CK_OBJECT_HANDLE> {
        let template = if self.syncs() {
            let class = find(&template, CKA_CLASS).and_then(Attr::as_ulong);
            member_template(class, &template)
        } else {
            template
        };
        self.create_replicated(&[], |t| {
            Ok(vec![t.inst.create_object(t.session, template.clone())?])
        })
        .map(|v| v[0])
    }

    pub fn copy_object(
        &self,
        obj: CK_OBJECT_HANDLE,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = if self.syncs() {
            member_set_template(&template)
        } else {
            template
        };
        self.create_replicated(&[obj], |t| {
            Ok(vec![t.inst.copy_object(
                t.session,
                t.objects[0],
                template.clone(),
            )?])
        })
        .map(|v| v[0])
    }

    /// Destroys the object on every member that holds a twin; members that are down have it
    /// destroyed when they are reintroduced.
    pub fn destroy_object(&self, obj: CK_OBJECT_HANDLE) -> CkResult<()> {
        let mut st = self.st.lock();
        let identity = self.group.objects.identity(obj);
        let (_, first) = self.attempt(&mut st, &[obj], None, |t| {
            t.inst.destroy_object(t.session, t.objects[0])
        })?;
        self.on_other_members(&mut st, first.idx, obj, |inst, s, h| {
            inst.destroy_object(s, h)
        });
        if let (true, Some(identity)) = (self.syncs(), identity) {
            self.group
                .sync
                .remember_destroy(identity, &down_members(&self.group));
        }
        self.group.objects.remove(obj);
        Ok(())
    }

    /// Applies `f` to the twin of `obj` on every up member but `done`; members that fail on
    /// their connection are dropped, other refusals are left for the member to answer later.
    fn on_other_members(
        &self,
        st: &mut State,
        done: usize,
        obj: CK_OBJECT_HANDLE,
        f: impl Fn(&Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE) -> MemberResult<()>,
    ) {
        for idx in (0..self.group.members().len()).filter(|&i| i != done) {
            let Some(b) = self.group.member(idx).binding() else {
                continue;
            };
            let r = self.member_session(st, idx, &b).and_then(|s| {
                match self.resolve(idx, &b.instance, s, obj)? {
                    Some(h) => f(&b.instance, s, h),
                    None => Ok(()),
                }
            });
            if let Err(rv) = r {
                if is_connection_error(rv) {
                    self.drop_member(idx, &b.instance, rv);
                }
            }
        }
    }

    pub fn object_size(&self, obj: CK_OBJECT_HANDLE) -> CkResult<CK_ULONG> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[obj], None, |t| {
            t.inst.object_size(t.session, t.objects[0])
        })
        .map(|(v, _)| v)
    }

    pub fn get_attributes(
        &self,
        obj: CK_OBJECT_HANDLE,
        query: Vec<(CK_ATTRIBUTE_TYPE, Option<CK_ULONG>)>,
    ) -> CkResult<AttributeValues> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[obj], None, |t| {
            let (rv, out) = t
                .inst
                .get_attributes(t.session, t.objects[0], query.clone())?;
            // A connection error inside the call is the member's failure, not the caller's.
            if is_connection_error(rv) {
                return Err(rv);
            }
            let mut out = out;
            let asked = query.iter().position(|(k, _)| *k == CKA_EXTRACTABLE);
            if let (true, Some(i)) = (self.syncs(), asked) {
                if is_managed(&t.inst, t.session, t.objects[0])? {
                    // The application asked for a non-extractable key: it reads back as one.
                    out[i] = match query[i].1 {
                        Some(cap) if cap >= 1 => (1, Some(vec![CK_FALSE])),
                        Some(_) => (CK_UNAVAILABLE_INFORMATION, None),
                        None => (1, None),
                    };
                }
            }
            Ok((rv, out))
        })
        .map(|(v, _)| v)
    }

    /// Sets attributes on every member that holds the object, then refreshes its identity.
    pub fn set_attributes(&self, obj: CK_OBJECT_HANDLE, template: Vec<Attr>) -> CkResult<()> {
        let template = if self.syncs() {
            member_set_template(&template)
        } else {
            template
        };
        let before = self.group.objects.identity(obj);
        let mut st = self.st.lock();
        let (_, first) = self.attempt(&mut st, &[obj], None, |t| {
            t.inst
                .set_attributes(t.session, t.objects[0], template.clone())
        })?;
        self.on_other_members(&mut st, first.idx, obj, |inst, s, h| {
            inst.set_attributes(s, h, template.clone())
        });
        let after = Identity::read(&first.inst, first.session, first.objects[0]).ok();
        if let Some(after) = &after {
            self.group.objects.update_identity(obj, after.clone());
        }
        if let (true, Some(before)) = (self.syncs(), before) {
            let kinds = template.iter().map(|a| a.kind).collect();
            let after = after.unwrap_or_else(|| before.clone());
            self.group
                .sync
                .remember_set(before, after, kinds, &down_members(&self.group));
        }
        Ok(())
    }

    /// Runs the whole search on one member and keeps the virtual handles for C_FindObjects.
    /// A synchronized group's cloning keys are p11ha's, not the application's: never found.
    pub fn find_init(&self, template: Vec<Attr>) -> CkResult<()> {
        let mut st = self.st.lock();
        if st.found.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let (found, _) = self.attempt(&mut st, &[], None, |t| {
            let handles = t.inst.find_all(t.session, template.clone())?;
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                let v = match self.group.objects.known(t.inst.id, h) {
                    Some(v) => v,
                    None => self.adopt(t, h)?,
                };
                if !(self.syncs() && self.is_cloning_object(v)) {
                    out.push(v);
                }
            }
            Ok(out)
        })?;
        st.found = Some(found.into_iter());
        Ok(())
    }

    fn is_cloning_object(&self, v: CK_OBJECT_HANDLE) -> bool {
        self.group.objects.identity(v).is_some_and(|i| {
            i.get(CKA_LABEL)
                .is_some_and(|l| l.value == super::sync::CLONING_LABEL)
        })
    }

    pub fn find_next(&self, max: usize) -> CkResult<Vec<CK_OBJECT_HANDLE>> {
        let mut st = self.st.lock();
        let it = st.found.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        Ok(it.take(max).collect())
    }

    pub fn find_final(&self) -> CkResult<()> {
        self.st
            .lock()
            .found
            .take()
            .map(|_| ())
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    // ---- keys and random ---------------------------------------------------------------

    pub fn generate_key(
        &self,
        mech: OwnedMechanism,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = self.key_template(CKO_SECRET_KEY, template);
        self.create_replicated(&[], |t| {
            Ok(vec![t.inst.generate_key(
                t.session,
                mech.clone(),
                template.clone(),
            )?])
        })
        .map(|v| v[0])
    }

    /// A key template as sent to members (see `sync::member_template`).
    fn key_template(&self, default_class: CK_OBJECT_CLASS, template: Vec<Attr>) -> Vec<Attr> {
        if !self.syncs() {
            return template;
        }
        let class = find(&template, CKA_CLASS)
            .and_then(Attr::as_ulong)
            .unwrap_or(default_class);
        member_template(Some(class), &template)
    }

    pub fn generate_key_pair(
        &self,
        mech: OwnedMechanism,
        public: Vec<Attr>,
        private: Vec<Attr>,
    ) -> CkResult<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let private = self.key_template(CKO_PRIVATE_KEY, private);
        self.create_replicated(&[], |t| {
            let (pu, pr) = t.inst.generate_key_pair(
                t.session,
                mech.clone(),
                public.clone(),
                private.clone(),
            )?;
            Ok(vec![pu, pr])
        })
        .map(|v| (v[0], v[1]))
    }

    pub fn wrap_key(
        &self,
        mech: OwnedMechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        cap: Option<CK_ULONG>,
    ) -> CkResult<Output> {
        let mut st = self.st.lock();
        let syncs = self.syncs();
        self.attempt(&mut st, &[wrapping, key], None, |t| {
            if syncs && is_managed(&t.inst, t.session, t.objects[1])? {
                // Non-extractable as far as the application is concerned.
                return Ok(Output {
                    rv: CKR_KEY_UNEXTRACTABLE,
                    len: 0,
                    data: None,
                });
            }
            let out = t
                .inst
                .wrap_key(t.session, mech.clone(), t.objects[0], t.objects[1], cap)?;
            if is_connection_error(out.rv) {
                return Err(out.rv);
            }
            Ok(out)
        })
        .map(|(v, _)| v)
    }

    pub fn unwrap_key(
        &self,
        mech: OwnedMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: Vec<u8>,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = self.key_template(CKO_SECRET_KEY, template);
        self.create_replicated(&[unwrapping], |t| {
            Ok(vec![t.inst.unwrap_key(
                t.session,
                mech.clone(),
                t.objects[0],
                wrapped.clone(),
                template.clone(),
            )?])
        })
        .map(|v| v[0])
    }

    pub fn derive_key(
        &self,
        mech: OwnedMechanism,
        base: CK_OBJECT_HANDLE,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        let template = self.key_template(CKO_SECRET_KEY, template);
        self.create_replicated(&[base], |t| {
            Ok(vec![t.inst.derive_key(
                t.session,
                mech.clone(),
                t.objects[0],
                template.clone(),
            )?])
        })
        .map(|v| v[0])
    }

    pub fn generate_random(&self, n: CK_ULONG) -> CkResult<Vec<u8>> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[], None, |t| t.inst.generate_random(t.session, n))
            .map(|(v, _)| v)
    }

    pub fn seed_random(&self, seed: Vec<u8>) -> CkResult<()> {
        let mut st = self.st.lock();
        self.attempt(&mut st, &[], None, |t| {
            t.inst.seed_random(t.session, seed.clone())
        })
        .map(|(v, _)| v)
    }

    // ---- cryptographic operations --------------------------------------------------------

    pub fn op_init(
        &self,
        kind: OpKind,
        mech: Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> CkResult<()> {
        let mut st = self.st.lock();
        if st.ops.iter().any(|o| o.kind == kind) {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let keys: Vec<_> = if key == 0 { vec![] } else { vec![key] };
        let (_, t) = self
            .attempt(&mut st, &keys, None, |t| {
                t.inst.op_init(
                    kind,
                    t.session,
                    mech.clone(),
                    t.objects.first().copied().unwrap_or(0),
                )
            })
            .map_err(|rv| {
                if rv == CKR_OBJECT_HANDLE_INVALID && key != 0 {
                    CKR_KEY_HANDLE_INVALID
                } else {
                    rv
                }
            })?;
        let busy = self.group.member(t.idx).busy();
        st.ops.push(ActiveOp {
            kind,
            mech,
            key,
            idx: t.idx,
            inst: t.inst,
            session: t.session,
            fed: false,
            _busy: busy,
        });
        Ok(())
    }

    fn take_op(st: &mut State, kind: OpKind) -> CkResult<ActiveOp> {
        let pos = st
            .ops
            .iter()
            .position(|o| o.kind == kind)
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        Ok(st.ops.swap_remove(pos))
    }

    /// Moves an operation that has not been fed data to another member after its member failed.
    fn restart_elsewhere(&self, st: &mut State, op: &mut ActiveOp, rv: CK_RV) -> CkResult<()> {
        self.drop_member(op.idx, &op.inst, rv);
        forget(st, op.idx);
        if self.stops_at_deactivation(rv) {
            return Err(rv);
        }
        if op.fed {
            // Luna's rule too: a multi-part operation whose member died is the application's to redo.
            return Err(CKR_DEVICE_ERROR);
        }
        let keys: Vec<_> = if op.key == 0 { vec![] } else { vec![op.key] };
        let (kind, mech) = (op.kind, op.mech.clone());
        let (_, t) = self.attempt(st, &keys, None, |t| {
            t.inst.op_init(
                kind,
                t.session,
                mech.clone(),
                t.objects.first().copied().unwrap_or(0),
            )
        })?;
        op._busy = self.group.member(t.idx).busy();
        op.idx = t.idx;
        op.inst = t.inst;
        op.session = t.session;
        Ok(())
    }

    /// A single-part call with output (C_Sign, C_Encrypt, C_Decrypt, C_Digest, *Recover),
    /// redone on another member if its member fails.
    pub fn op_single(
        &self,
        kind: OpKind,
        data: Vec<u8>,
        cap: Option<CK_ULONG>,
    ) -> CkResult<Output> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, kind)?;
        loop {
            match op.inst.op_single(kind, op.session, data.clone(), cap) {
                Ok(out) if !is_connection_error(out.rv) => {
                    if keeps_active(&out, cap) {
                        st.ops.push(op);
                    }
                    return Ok(out);
                }
                Ok(Output { rv, .. }) | Err(rv) => self.restart_elsewhere(&mut st, &mut op, rv)?,
            }
        }
    }

    /// C_Verify: the verdict is the return value.
    pub fn verify(&self, data: Vec<u8>, signature: Vec<u8>) -> CkResult<()> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, OpKind::Verify)?;
        loop {
            match op.inst.verify(op.session, data.clone(), signature.clone()) {
                Ok(rv) if !is_connection_error(rv) => return ok_or_rv(rv),
                Ok(rv) | Err(rv) => self.restart_elsewhere(&mut st, &mut op, rv)?,
            }
        }
    }

    pub fn op_update(
        &self,
        kind: OpKind,
        data: Vec<u8>,
        cap: Option<CK_ULONG>,
    ) -> CkResult<Output> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, kind)?;
        let r = op.inst.op_update(kind, op.session, data, cap);
        match r {
            Ok(out) if !is_connection_error(out.rv) => {
                let done = out.rv != CKR_OK && !keeps_active(&out, cap);
                op.fed = true;
                if !done {
                    st.ops.push(op);
                }
                Ok(out)
            }
            Ok(Output { rv, .. }) | Err(rv) => {
                // Data went to the member: the operation cannot move, so this always fails.
                op.fed = true;
                self.restart_elsewhere(&mut st, &mut op, rv)
                    .and(Err(CKR_DEVICE_ERROR))
            }
        }
    }

    pub fn op_final(&self, kind: OpKind, cap: Option<CK_ULONG>) -> CkResult<Output> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, kind)?;
        loop {
            match op.inst.op_final(kind, op.session, cap) {
                Ok(out) if !is_connection_error(out.rv) => {
                    if keeps_active(&out, cap) {
                        st.ops.push(op);
                    }
                    return Ok(out);
                }
                Ok(Output { rv, .. }) | Err(rv) => self.restart_elsewhere(&mut st, &mut op, rv)?,
            }
        }
    }

    pub fn verify_final(&self, signature: Vec<u8>) -> CkResult<()> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, OpKind::Verify)?;
        loop {
            match op.inst.verify_final(op.session, signature.clone()) {
                Ok(rv) if !is_connection_error(rv) => return ok_or_rv(rv),
                Ok(rv) | Err(rv) => self.restart_elsewhere(&mut st, &mut op, rv)?,
            }
        }
    }

    pub fn digest_key(&self, key: CK_OBJECT_HANDLE) -> CkResult<()> {
        let mut st = self.st.lock();
        let mut op = Self::take_op(&mut st, OpKind::Digest)?;
        let h = match self.resolve(op.idx, &op.inst, op.session, key) {
            Ok(Some(h)) => h,
            Ok(None) => {
                st.ops.push(op);
                return Err(CKR_KEY_HANDLE_INVALID);
            }
            Err(rv) => {
                op.fed = true;
                return self.restart_elsewhere(&mut st, &mut op, rv);
            }
        };
        match op.inst.digest_key(op.session, h) {
            Ok(rv) if !is_connection_error(rv) => {
                op.fed = true;
                if rv == CKR_OK {
                    st.ops.push(op);
                }
                ok_or_rv(rv)
            }
            Ok(rv) | Err(rv) => {
                op.fed = true;
                self.restart_elsewhere(&mut st, &mut op, rv)
            }
        }
    }

    /// Closes the member sessions (best effort: a dead member has closed them already).
    pub fn close(&self) {
        let st = std::mem::take(&mut *self.st.lock());
        for (idx, ms) in st.member_sessions.iter().enumerate() {
            let (Some((inst_id, h)), Some(b)) =
                (ms, self.group.members().get(idx).and_then(|m| m.binding()))
            else {
                continue;
            };
            if b.instance.id == *inst_id {
                if b.open_sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // The member logs out with its last session; its handles may change.
                    self.group.objects.forget_twins(Some(idx));
                }
                if let Err(rv) = b.instance.close_session(*h) {
                    if is_connection_error(rv) {
                        self.drop_member(idx, &b.instance, rv);
                    }
                }
            }
        }
        self.group.objects.remove_owned_by(self.handle);
    }

    /// Whether the template asks for a token object (the default is a session object).
    pub fn is_token_template(template: &[Attr]) -> bool {
        find(template, CKA_TOKEN)
            .and_then(Attr::as_bool)
            .unwrap_or(false)
    }
}

fn standbys(group: &Group) -> Vec<usize> {
    let members = group.members();
    (0..members.len())
        .filter(|&i| members[i].standby && members[i].is_up())
        .collect()
}

/// Forgets this session's session on a member that failed.
fn forget(st: &mut State, idx: usize) {
    if let Some(slot) = st.member_sessions.get_mut(idx) {
        *slot = None;
    }
}
