//! Where the HA core hands its events to the audit trail. Each hook in the core is one line:
//! the session calls that are audited are the methods below (each wraps the core's
//! `*_unaudited` method of the same name), the rest are the functions below.
//!
//! On the application's thread a hook only reads what the record names (identities from the
//! object table, the template's attribute types, member serials) and hands it over: no PIN,
//! no attribute value and no key byte is ever read here.

use super::event::{attribute_types, Event, ObjectId, Op};
use super::record::Raw;
use super::seal::{is_key_label, Pool};
use super::{cid, Audit, SEAL_WAIT};
use crate::config::HaConfig;
use crate::ha::group::{Group, Pin};
use crate::ha::library::Ha;
use crate::ha::session::{CkResult, Session};
use crate::mechanism::{Attr, OwnedMechanism};
use crate::provider::{Data, Fault, OpKind};
use cryptoki_sys::*;

fn rv_of<T>(r: &CkResult<T>) -> CK_RV {
    match r {
        Ok(_) => CKR_OK,
        Err(rv) => *rv,
    }
}

fn pool(g: &Group) -> Option<Pool> {
    Some(g.members())
}

fn up_serials(g: &Group) -> Vec<String> {
    g.members()
        .iter()
        .filter(|m| m.is_up())
        .map(|m| m.serial.clone())
        .collect()
}

/// Serials of the members holding the virtual object `v`.
fn holders(g: &Group, v: CK_OBJECT_HANDLE) -> Vec<String> {
    let members = g.members();
    let mut idx = g.objects.members_with_twin(v);
    idx.sort_unstable();
    idx.iter()
        .filter_map(|&i| members.get(i).map(|m| m.serial.clone()))
        .collect()
}

fn identity(g: &Group, v: CK_OBJECT_HANDLE) -> Option<ObjectId> {
    g.objects.identity(v).map(|i| ObjectId::of(&i))
}

/// A record about the HA group itself (no session).
fn group_event(g: &Group, op: Op, rv: CK_RV, members: Vec<String>, event: Event) {
    g.audit.push(Raw::now(op, rv, 0, members, event), pool(g));
}

impl Session {
    fn audit(&self) -> Option<&Audit> {
        Some(&self.group.audit).filter(|a| a.is_on())
    }

    fn record(&self, op: Op, rv: CK_RV, members: Vec<String>, event: Event) {
        self.group.audit.push(
            Raw::now(op, rv, cid(self.handle), members, event),
            pool(&self.group),
        );
    }

    /// A management call that makes objects: `made` names them (virtual handles) on success;
    /// on failure the template's identity (`asked`) is recorded.
    fn record_made(
        &self,
        op: Op,
        result: Result<&[(&'static str, CK_OBJECT_HANDLE)], CK_RV>,
        asked: Vec<(&'static str, ObjectId)>,
        attributes: Vec<CK_ATTRIBUTE_TYPE>,
        mechanism: Option<CK_MECHANISM_TYPE>,
        key: Option<ObjectId>,
    ) {
        let (rv, objects, members) = match result {
            Ok(made) => (
                CKR_OK,
                made.iter()
                    .map(|(n, v)| (*n, identity(&self.group, *v).unwrap_or_default()))
                    .collect(),
                made.first()
                    .map(|(_, v)| holders(&self.group, *v))
                    .unwrap_or_default(),
            ),
            Err(rv) => (rv, asked, Vec::new()),
        };
        self.record(
            op,
            rv,
            members,
            Event::Object {
                objects,
                attributes,
                mechanism,
                key,
            },
        );
    }

    /// Whether `v` is the group's audit key (never shown to the application).
    pub(crate) fn is_audit_key(&self, v: CK_OBJECT_HANDLE) -> bool {
        self.group
            .objects
            .identity(v)
            .and_then(|i| i.get(CKA_LABEL).map(|l| is_key_label(&l.value)))
            .unwrap_or(false)
    }

    pub fn login(&self, user: CK_USER_TYPE, pin: Option<Pin>) -> CkResult<()> {
        let r = self.login_unaudited(user, pin);
        if self.audit().is_some() {
            self.record(
                Op::Login,
                rv_of(&r),
                up_serials(&self.group),
                Event::Login { user },
            );
        }
        r
    }

    /// C_Logout. While the group is logged in, the record is written and sealed *before* the
    /// members log out (after, no member would compute a MAC for this process).
    pub fn logout(&self) -> CkResult<()> {
        let Some(audit) = self.audit() else {
            return self.logout_unaudited();
        };
        let user = self.group.login().map(|l| l.user);
        if user.is_some() {
            let event = Event::Logout { user };
            self.record(Op::Logout, CKR_OK, up_serials(&self.group), event);
            audit.flush_within(SEAL_WAIT);
        }
        let r = self.logout_unaudited();
        if user.is_none() || r.is_err() {
            self.record(
                Op::Logout,
                rv_of(&r),
                up_serials(&self.group),
                Event::Logout { user },
            );
        }
        r
    }

    pub fn create_object(&self, template: Vec<Attr>) -> CkResult<CK_OBJECT_HANDLE> {
        if self.audit().is_none() {
            return self.create_object_unaudited(template);
        }
        let asked = vec![("object", ObjectId::from_attrs(&template, None))];
        let attributes = attribute_types(&template);
        let r = self.create_object_unaudited(template);
        let made = r.map(|v| [("object", v)]);
        self.record_made(
            Op::CreateObject,
            made.as_ref().map(|m| &m[..]).map_err(|e| *e),
            asked,
            attributes,
            None,
            None,
        );
        r
    }

    pub fn copy_object(
        &self,
        obj: CK_OBJECT_HANDLE,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        if self.audit().is_none() {
            return self.copy_object_unaudited(obj, template);
        }
        let from = identity(&self.group, obj);
        let attributes = attribute_types(&template);
        let r = self.copy_object_unaudited(obj, template);
        let made = r.map(|v| [("object", v)]);
        let asked = vec![("object", ObjectId::default())];
        self.record_made(
            Op::CopyObject,
            made.as_ref().map(|m| &m[..]).map_err(|e| *e),
            asked,
            attributes,
            None,
            from,
        );
        r
    }

    pub fn destroy_object(&self, obj: CK_OBJECT_HANDLE) -> CkResult<()> {
        if self.audit().is_none() {
            return self.destroy_object_unaudited(obj);
        }
        let (id, members) = (identity(&self.group, obj), holders(&self.group, obj));
        let r = self.destroy_object_unaudited(obj);
        let event = Event::Object {
            objects: vec![("object", id.unwrap_or_default())],
            attributes: Vec::new(),
            mechanism: None,
            key: None,
        };
        self.record(Op::DestroyObject, rv_of(&r), members, event);
        r
    }

    pub fn set_attributes(&self, obj: CK_OBJECT_HANDLE, template: Vec<Attr>) -> CkResult<()> {
        if self.audit().is_none() {
            return self.set_attributes_unaudited(obj, template);
        }
        let attributes = attribute_types(&template);
        let r = self.set_attributes_unaudited(obj, template);
        let event = Event::Object {
            objects: vec![("object", identity(&self.group, obj).unwrap_or_default())],
            attributes,
            mechanism: None,
            key: None,
        };
        self.record(
            Op::SetAttributeValue,
            rv_of(&r),
            holders(&self.group, obj),
            event,
        );
        r
    }

    pub fn generate_key(
        &self,
        mech: OwnedMechanism,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        if self.audit().is_none() {
            return self.generate_key_unaudited(mech, template);
        }
        let m = mech.mechanism;
        let asked = vec![(
            "object",
            ObjectId::from_attrs(&template, Some(CKO_SECRET_KEY)),
        )];
        let attributes = attribute_types(&template);
        let r = self.generate_key_unaudited(mech, template);
        let made = r.map(|v| [("object", v)]);
        self.record_made(
            Op::GenerateKey,
            made.as_ref().map(|m| &m[..]).map_err(|e| *e),
            asked,
            attributes,
            Some(m),
            None,
        );
        r
    }

    pub fn generate_key_pair(
        &self,
        mech: OwnedMechanism,
        public: Vec<Attr>,
        private: Vec<Attr>,
    ) -> CkResult<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        if self.audit().is_none() {
            return self.generate_key_pair_unaudited(mech, public, private);
        }
        let m = mech.mechanism;
        let asked = vec![
            (
                "public",
                ObjectId::from_attrs(&public, Some(CKO_PUBLIC_KEY)),
            ),
            (
                "private",
                ObjectId::from_attrs(&private, Some(CKO_PRIVATE_KEY)),
            ),
        ];
        let mut attributes = attribute_types(&public);
        attributes.extend(attribute_types(&private));
        attributes.sort_unstable();
        attributes.dedup();
        let r = self.generate_key_pair_unaudited(mech, public, private);
        let made = r.map(|(pu, pr)| [("public", pu), ("private", pr)]);
        self.record_made(
            Op::GenerateKeyPair,
            made.as_ref().map(|m| &m[..]).map_err(|e| *e),
            asked,
            attributes,
            Some(m),
            None,
        );
        r
    }

    pub fn unwrap_key(
        &self,
        mech: OwnedMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: Data,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        if self.audit().is_none() {
            return self.unwrap_key_unaudited(mech, unwrapping, wrapped, template);
        }
        let m = mech.mechanism;
        let key = identity(&self.group, unwrapping);
        let asked = vec![(
            "object",
            ObjectId::from_attrs(&template, Some(CKO_SECRET_KEY)),
        )];
        let attributes = attribute_types(&template);
        let r = self.unwrap_key_unaudited(mech, unwrapping, wrapped, template);
        let made = r.map(|v| [("object", v)]);
        self.record_made(
            Op::UnwrapKey,
            made.as_ref().map(|m| &m[..]).map_err(|e| *e),
            asked,
            attributes,
            Some(m),
            key,
        );
        r
    }

    pub fn derive_key(
        &self,
        mech: OwnedMechanism,
        base: CK_OBJECT_HANDLE,
        template: Vec<Attr>,
    ) -> CkResult<CK_OBJECT_HANDLE> {
        if self.audit().is_none() {
            return self.derive_key_unaudited(mech, base, template);
        }
        let m = mech.mechanism;
        let key = identity(&self.group, base);
        let asked = vec![(
            "object",
            ObjectId::from_attrs(&template, Some(CKO_SECRET_KEY)),
        )];
        let attributes = attribute_types(&template);
        let r = self.derive_key_unaudited(mech, base, template);
        let made = r.map(|v| [("object", v)]);
        self.record_made(
            Op::DeriveKey,
            made.as_ref().map(|m| &m[..]).map_err(|e| *e),
            asked,
            attributes,
            Some(m),
            key,
        );
        r
    }

    /// An operation's initialization; with `haAuditKeyUse`, the start of a signature,
    /// signature with recovery or decryption is recorded with the key it uses.
    pub fn op_init(
        &self,
        kind: OpKind,
        mech: Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> CkResult<()> {
        let op = match kind {
            OpKind::Sign => Op::SignInit,
            OpKind::SignRecover => Op::SignRecoverInit,
            OpKind::Decrypt => Op::DecryptInit,
            _ => return self.op_init_unaudited(kind, mech, key),
        };
        if !self.group.audit.key_use() {
            return self.op_init_unaudited(kind, mech, key);
        }
        let mechanism = mech.as_ref().map(|m| m.mechanism);
        let r = self.op_init_unaudited(kind, mech, key);
        let event = Event::KeyUse {
            mechanism,
            key: identity(&self.group, key),
        };
        self.record(op, rv_of(&r), holders(&self.group, key), event);
        r
    }
}

/// Session::new: C_OpenSession.
pub fn session_opened(g: &Group, session: CK_SESSION_HANDLE, flags: CK_FLAGS) {
    if g.audit.is_on() {
        let event = Event::OpenSession {
            session,
            rw: flags & CKF_RW_SESSION != 0,
        };
        g.audit.push(
            Raw::now(Op::OpenSession, CKR_OK, cid(session), Vec::new(), event),
            pool(g),
        );
    }
}

/// Session::close: C_CloseSession (not recorded when C_Finalize closes it). When it is the
/// group's last session of a login, the members log out with it: the record is sealed first.
pub fn session_closing(s: &Session) {
    let a = &s.group.audit;
    if !a.is_on() || a.is_finalizing() {
        return;
    }
    let event = Event::CloseSession { session: s.handle };
    a.push(
        Raw::now(Op::CloseSession, CKR_OK, cid(s.handle), Vec::new(), event),
        pool(&s.group),
    );
    if s.group.session_count() <= 1 && s.group.login().is_some() {
        a.flush_within(SEAL_WAIT);
    }
}

/// Group::drop_member: the member was dropped (or found deactivated); all members offline
/// when it was the last one up.
pub fn member_dropped(g: &Group, serial: &str, fault: Fault) {
    if !g.audit.is_on() {
        return;
    }
    let op = if fault.is_deactivation() {
        Op::MemberDeactivated
    } else {
        Op::MemberDropped
    };
    group_event(g, op, fault.status(), vec![serial.into()], Event::Member);
    if !g.any_up() {
        group_event(
            g,
            Op::MembersOffline,
            CKR_DEVICE_ERROR,
            Vec::new(),
            Event::Member,
        );
    }
}

/// recovery::recover: the member is back in the group.
pub fn member_recovered(g: &Group, serial: &str, attempt: u64) {
    if g.audit.is_on() {
        let event = Event::Recovered { attempt };
        group_event(g, Op::MemberRecovered, CKR_OK, vec![serial.into()], event);
    }
}

/// sync::catchup::reintroduce: `objects` token objects were copied to the returning member.
pub fn reintroduced(g: &Group, serial: &str, objects: u64) {
    if g.audit.is_on() {
        let event = Event::Reintroduced { objects };
        group_event(g, Op::Reintroduced, CKR_OK, vec![serial.into()], event);
    }
}

/// recovery::reread_config: a member added to the group in the file.
pub fn member_added(g: &Group, serial: &str, standby: bool) {
    if g.audit.is_on() {
        let event = Event::MemberAdded { standby };
        group_event(g, Op::MemberAdded, CKR_OK, vec![serial.into()], event);
    }
}

/// recovery::reread_config: a member removed from the group in the file.
pub fn member_removed(g: &Group, serial: &str) {
    if g.audit.is_on() {
        group_event(
            g,
            Op::MemberRemoved,
            CKR_OK,
            vec![serial.into()],
            Event::Member,
        );
    }
}

/// recovery::reread_config read `cfg`: when it differs from the configuration last seen, one
/// `CONFIG_RELOADED` record per group names what changed.
pub fn config_reread(ha: &Ha, cfg: &HaConfig) {
    for g in ha.ha_groups().filter(|g| g.audit.is_on()) {
        let Some(before) = g.audit.swap_config(cfg) else {
            continue;
        };
        let changed = changes(&before, cfg);
        if !changed.is_empty() {
            let event = Event::ConfigReloaded {
                file: cfg.path.display().to_string(),
                changed,
            };
            group_event(g, Op::ConfigReloaded, CKR_OK, Vec::new(), event);
        }
    }
}

/// recovery::reread_config refused the file (said once per error).
pub fn config_refused(ha: &Ha, error: &str) {
    for g in ha.ha_groups().filter(|g| g.audit.is_on()) {
        let event = Event::ConfigRefused {
            file: ha.config.path.display().to_string(),
            error: error.chars().take(512).collect(),
        };
        group_event(g, Op::ConfigRefused, CKR_GENERAL_ERROR, Vec::new(), event);
    }
}

/// Which parts of the configuration differ.
fn changes(a: &HaConfig, b: &HaConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut diff = |name, same: bool| {
        if !same {
            out.push(name);
        }
    };
    diff("groups", a.groups == b.groups);
    diff("providers", a.providers == b.providers);
    diff("ha_only", a.ha_only == b.ha_only);
    diff("log", a.log == b.log);
    diff("audit", a.audit == b.audit);
    diff("recovery", a.recovery == b.recovery);
    diff(
        "timeouts",
        (a.receive_timeout, a.connect_timeout) == (b.receive_timeout, b.connect_timeout),
    );
    diff(
        "other",
        (a.failover_on_deactivation, &a.journal_dir)
            == (b.failover_on_deactivation, &b.journal_dir),
    );
    out
}

/// Ha::shutdown, before it closes the sessions: C_Finalize, sealed while the members are still
/// logged in. The sessions it closes are not recorded one by one.
pub fn finalizing(ha: &Ha) {
    for g in ha.ha_groups().filter(|g| g.audit.is_on()) {
        let event = Event::Finalize {
            sessions: g.session_count() as u64,
        };
        group_event(g, Op::Finalize, CKR_OK, up_serials(g), event);
        g.audit.set_finalizing();
        g.audit.flush_within(SEAL_WAIT);
    }
}
