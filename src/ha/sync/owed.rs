//! What the members that are down are owed: written as records on every live member when the
//! change happens ([`remember_destroy`], [`remember_set`], [`remember_created`]), and read back
//! from every up member by any process (`Survey`, [`View`]).

use super::opened::Opened;
use super::records::{self, Change, Held, Record};
use crate::diag::diag;
use crate::ha::group::{Group, Login};
use crate::ha::objects::Identity;
use crate::provider::{Instance, MemberResult};
use cryptoki_sys::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A live member a change is recorded on: the session the change was made through.
pub struct Holder {
    pub idx: usize,
    pub inst: Arc<Instance>,
    pub session: CK_SESSION_HANDLE,
}

/// Whether a login lets p11ha see private objects (and private records).
pub fn is_user(login: &Option<Login>) -> bool {
    login.as_ref().is_some_and(|l| l.user == CKU_USER)
}

/// Remembers, for the members in `owed` (those down now), that a token object was destroyed.
/// `private` is the object's CKA_PRIVATE: the record is as private as the object.
pub fn remember_destroy(
    g: &Group,
    holders: &[Holder],
    identity: Identity,
    private: bool,
    owed: &[String],
) {
    if !identity.is_token() {
        return;
    }
    let recs = owed
        .iter()
        .map(|s| Record::new(s, Change::Destroy(identity.clone()), private))
        .collect();
    place(g, holders, recs);
}

/// Remembers, for the members now down, that attributes of `kinds` changed on an object.
pub fn remember_set(
    g: &Group,
    holders: &[Holder],
    before: Identity,
    after: Identity,
    kinds: Vec<CK_ATTRIBUTE_TYPE>,
    private: bool,
) {
    if !before.is_token() {
        return;
    }
    let change = Change::Set {
        before,
        after,
        kinds,
    };
    let recs = g
        .down_serials()
        .iter()
        .map(|s| Record::new(s, change.clone(), private))
        .collect();
    place(g, holders, recs);
}

/// Remembers, for the members now down, that token objects were created: one record per member
/// until it is compared (the comparison finds everything it lacks anyway).
pub fn remember_created(g: &Group, holders: &[Holder]) {
    let login = is_user(&g.login());
    let mut recs = Vec::new();
    {
        let mut known = g.sync.created.lock();
        for s in g.down_serials() {
            if known.contains(&(s.clone(), true)) || known.contains(&(s.clone(), login)) {
                continue;
            }
            recs.push(Record::new(&s, Change::Created { login }, false));
            known.insert((s, login));
        }
    }
    place(g, holders, recs);
}

/// Writes records on every holder; what no holder takes waits in the group's ledger.
pub(crate) fn place(g: &Group, holders: &[Holder], recs: Vec<Record>) {
    if recs.is_empty() {
        return;
    }
    let mut placed = vec![false; recs.len()];
    for h in holders {
        for (i, r) in recs.iter().enumerate() {
            match records::write(&h.inst, h.session, r) {
                Ok(_) => placed[i] = true,
                Err(f) if f.fails_member() => {
                    g.drop_member(h.idx, h.inst.id, f);
                    break;
                }
                Err(f) => diag!(
                    Warn,
                    "group {}: member {} did not take the record that {} is owed ({}): {}",
                    g.label,
                    g.member(h.idx).serial,
                    r.target,
                    r.describe(),
                    crate::rv::rv_name(f.rv())
                ),
            }
        }
    }
    let left: Vec<Record> = recs
        .into_iter()
        .zip(placed)
        .filter(|(_, p)| !p)
        .map(|(r, _)| r)
        .collect();
    if !left.is_empty() {
        diag!(
            Warn,
            "group {}: no live member took {} records of what members that are down are owed; \
             kept {} until one does",
            g.label,
            left.len(),
            match g.sync.unplaced.journal_path() {
                Some(p) => format!("in {}", p.display()),
                None => "in this process".into(),
            }
        );
        g.sync.unplaced.keep(left);
    }
}

/// One up member read by a survey: a session that stays open, and the records it holds.
pub(crate) struct Surveyed {
    pub idx: usize,
    pub serial: String,
    pub opened: Opened,
    pub held: Vec<Held>,
}

/// The records every up member holds, read with the group's login.
pub(crate) struct Survey {
    pub ends: Vec<Surveyed>,
    /// Records no member has taken yet (this process's ledger).
    pub pending: Vec<Record>,
    /// Some up member's records (or the ledger) could not be read: any member may be owed
    /// anything, so no member is a safe source of copies.
    pub blind: bool,
}

impl Survey {
    /// Reads every up member but `except`, placing first what waits in the ledger. A member
    /// that fails on its connection is dropped.
    pub fn take(g: &Group, login: &Option<Login>, except: Option<&str>) -> Survey {
        let mut s = Survey {
            ends: Vec::new(),
            pending: Vec::new(),
            blind: false,
        };
        for (idx, m) in g.members().iter().enumerate() {
            if Some(m.serial.as_str()) == except {
                continue;
            }
            let Some(b) = m.binding() else { continue };
            match Opened::open(&b.instance, b.slot, login, Some(b.open_sessions.clone())) {
                Ok(opened) => s.ends.push(Surveyed {
                    idx,
                    serial: m.serial.clone(),
                    opened,
                    held: Vec::new(),
                }),
                Err(f) => s.unreadable(g, idx, b.instance.id, f),
            }
        }
        match g.sync.unplaced.all() {
            Ok(pending) => s.pending = pending,
            Err(e) => {
                diag!(
                    Warn,
                    "group {}: {e}: any member may be owed changes",
                    g.label
                );
                s.blind = true;
            }
        }
        if !s.pending.is_empty() {
            let mut placed = HashSet::new();
            for e in &s.ends {
                for r in &s.pending {
                    if records::write(&e.opened.inst, e.opened.session, r).is_ok() {
                        placed.insert(r.id.clone());
                    }
                }
            }
            let ids: Vec<String> = placed.iter().cloned().collect();
            g.sync.unplaced.settle(&ids);
            s.pending.retain(|r| !placed.contains(&r.id));
        }
        let mut failed = Vec::new();
        for (i, e) in s.ends.iter_mut().enumerate() {
            match records::read(&e.opened.inst, e.opened.session) {
                Ok(held) => e.held = held,
                Err(f) => failed.push((i, f)),
            }
        }
        for (i, f) in failed.into_iter().rev() {
            let e = s.ends.remove(i);
            s.unreadable(g, e.idx, e.opened.inst.id, f);
        }
        s
    }

    fn unreadable(&mut self, g: &Group, idx: usize, instance: u64, f: crate::provider::Fault) {
        if f.fails_member() {
            g.drop_member(idx, instance, f);
        } else {
            diag!(
                Warn,
                "group {}: the records of {} could not be read: {}",
                g.label,
                g.member(idx).serial,
                crate::rv::rv_name(f.rv())
            );
            self.blind = true;
        }
    }

    /// Everything read, with what `extra` (a member read separately) holds.
    pub fn view(&self, g: &Group, extra: &[Held]) -> View {
        let all = self
            .ends
            .iter()
            .flat_map(|e| e.held.iter())
            .chain(extra)
            .map(|h| &h.rec)
            .chain(&self.pending);
        View::new(all, configured(g), self.blind)
    }
}

/// Serials of the group's configured members.
pub(crate) fn configured(g: &Group) -> HashSet<String> {
    g.members()
        .iter()
        .filter(|m| !m.is_removed())
        .map(|m| m.serial.clone())
        .collect()
}

/// What a set of records says, whoever holds them.
pub struct View {
    /// Live records about configured members (destroys, changes, creations), one per id.
    pub live: Vec<Record>,
    /// Live records about members no longer configured (`-prune` drops them).
    pub orphans: Vec<Record>,
    /// Ids of settled records (named by a Forget at least as private as they are).
    pub forgotten: HashSet<String>,
    pub blind: bool,
}

impl View {
    pub fn new<'a>(
        all: impl Iterator<Item = &'a Record> + Clone,
        configured: HashSet<String>,
        blind: bool,
    ) -> View {
        let mut forgetting: HashMap<&str, bool> = HashMap::new();
        for r in all.clone() {
            if let Change::Forget(ids) = &r.change {
                for id in ids {
                    let p = forgetting.entry(id.as_str()).or_insert(false);
                    *p |= r.private;
                }
            }
        }
        let mut seen = HashSet::new();
        let mut forgotten = HashSet::new();
        let mut live = Vec::new();
        let mut orphans = Vec::new();
        for r in all {
            if matches!(r.change, Change::Forget(_) | Change::Claim) {
                continue;
            }
            // A public Forget cannot cancel a private record: anyone can write a public one.
            if forgetting
                .get(r.id.as_str())
                .is_some_and(|p| *p || !r.private)
            {
                forgotten.insert(r.id.clone());
                continue;
            }
            if !seen.insert(r.id.clone()) {
                continue;
            }
            if configured.contains(&r.target) {
                live.push(r.clone());
            } else {
                orphans.push(r.clone());
            }
        }
        live.sort_by(|a, b| (a.order, &a.id).cmp(&(b.order, &b.id)));
        View {
            live,
            orphans,
            forgotten,
            blind,
        }
    }

    /// What `serial` is owed, in order.
    pub fn owed_to(&self, serial: &str) -> Vec<Record> {
        self.live
            .iter()
            .filter(|r| r.target == serial)
            .cloned()
            .collect()
    }

    /// Members that must not be the source of a copy (owed a destroy or a change); `None`
    /// when nothing can be known (a member or the ledger could not be read): then none is safe.
    pub fn unsafe_sources(&self) -> Option<HashSet<String>> {
        (!self.blind).then(|| {
            self.live
                .iter()
                .filter(|r| r.change.is_change())
                .map(|r| r.target.clone())
                .collect()
        })
    }

    /// Members owed anything.
    pub fn owing(&self) -> HashSet<String> {
        self.live.iter().map(|r| r.target.clone()).collect()
    }

    /// Whether `serial` may be the source of a copy.
    pub fn safe_source(&self, serial: &str) -> bool {
        self.unsafe_sources().is_some_and(|u| !u.contains(serial))
    }

    /// The (member, with a user login) pairs that hold a "created" record.
    pub fn created(&self) -> HashSet<(String, bool)> {
        self.live
            .iter()
            .filter_map(|r| match r.change {
                Change::Created { login } => Some((r.target.clone(), login)),
                _ => None,
            })
            .collect()
    }
}

/// What `p11ha synchronize -show-owed` shows.
#[derive(Debug, Clone, Default)]
pub struct OwedReport {
    /// Per configured member: serial, up here, what it is owed (described, oldest first).
    pub members: Vec<(String, bool, Vec<String>)>,
    /// Records about members no longer configured: (serial, description).
    pub orphans: Vec<(String, String)>,
    /// Some member's records could not be read.
    pub blind: bool,
}

/// What every member is owed, as the up members' records say (private records only with a
/// user login).
pub fn show(g: &Group) -> OwedReport {
    let login = g.login();
    let survey = Survey::take(g, &login, None);
    let view = survey.view(g, &[]);
    let mut out = OwedReport {
        blind: view.blind,
        ..Default::default()
    };
    for m in g.members().iter().filter(|m| !m.is_removed()) {
        let owed = view
            .owed_to(&m.serial)
            .iter()
            .map(Record::describe)
            .collect();
        out.members.push((m.serial.clone(), m.is_up(), owed));
    }
    out.orphans = view
        .orphans
        .iter()
        .map(|r| (r.target.clone(), r.describe()))
        .collect();
    out
}

/// Destroys, on every up member, the records about members no longer configured (records of
/// every kind, including settled ones a member dropped from the group still had). Returns how
/// many distinct records went.
pub fn prune(g: &Group) -> usize {
    let login = g.login();
    let survey = Survey::take(g, &login, None);
    let members = configured(g);
    let mut gone = HashSet::new();
    for e in &survey.ends {
        for h in e.held.iter().filter(|h| !members.contains(&h.rec.target)) {
            if records::destroy(&e.opened.inst, e.opened.session, h.handle).is_ok() {
                gone.insert(h.rec.id.clone());
            }
        }
    }
    let ids: Vec<String> = survey
        .pending
        .iter()
        .filter(|r| !members.contains(&r.target))
        .map(|r| r.id.clone())
        .collect();
    g.sync.unplaced.settle(&ids);
    gone.extend(ids);
    gone.len()
}

/// CKA_PRIVATE of a member object (true when it cannot be read: the careful answer).
pub fn is_private(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    h: CK_OBJECT_HANDLE,
) -> MemberResult<bool> {
    Ok(inst
        .read_attributes(session, h, vec![CKA_PRIVATE])?
        .pop()
        .flatten()
        .as_deref()
        != Some(&[CK_FALSE]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanism::Attr;

    fn destroy(target: &str, private: bool) -> Record {
        let i = Identity::from_attrs(vec![Attr::ulong(CKA_CLASS, CKO_DATA)]);
        Record::new(target, Change::Destroy(i), private)
    }

    fn members() -> HashSet<String> {
        ["m1", "m2"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn copies_count_once_and_forgotten_records_are_dead() {
        let a = destroy("m1", false);
        let b = destroy("m2", true);
        let forget = Record::new("m2", Change::Forget(vec![a.id.clone()]), false);
        let all = [a.clone(), a.clone(), b.clone(), forget];
        let v = View::new(all.iter(), members(), false);
        assert_eq!(v.live, vec![b.clone()]);
        assert!(v.forgotten.contains(&a.id));
        assert_eq!(v.owing(), ["m2".to_string()].into_iter().collect());
        assert!(v.safe_source("m1"));
        assert!(!v.safe_source("m2"));
    }

    #[test]
    fn a_public_forget_does_not_cancel_a_private_record() {
        let b = destroy("m2", true);
        let forged = Record::new("m1", Change::Forget(vec![b.id.clone()]), false);
        let v = View::new([b.clone(), forged].iter(), members(), false);
        assert_eq!(v.live, vec![b.clone()]);
        let real = Record::new("m1", Change::Forget(vec![b.id.clone()]), true);
        let v = View::new([b, real].iter(), members(), false);
        assert!(v.live.is_empty());
    }

    #[test]
    fn blind_means_no_safe_source_and_orphans_are_apart() {
        let v = View::new([destroy("gone", false)].iter(), members(), true);
        assert!(v.live.is_empty());
        assert_eq!(v.orphans.len(), 1);
        assert!(
            !v.safe_source("m1"),
            "a failed read means anyone may be owed"
        );
        assert!(v.unsafe_sources().is_none());
    }

    #[test]
    fn records_apply_in_their_order() {
        let mut first = destroy("m1", false);
        let mut second = Record::new("m1", Change::Created { login: false }, false);
        first.order = 10;
        second.order = 5;
        let v = View::new([first.clone(), second.clone()].iter(), members(), false);
        assert_eq!(v.owed_to("m1"), vec![second, first]);
    }
}
