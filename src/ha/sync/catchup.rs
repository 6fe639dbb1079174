//! Settling what a member is owed: at its return before it takes work ([`reintroduce`]), and,
//! for members that are up, in every management round, at C_Login and in `p11ha synchronize`
//! ([`catch_up`]). Any process on any host may do it, and several may try at once:
//!
//! 1. The settler claims the member: it writes a claim record on it and reads the member's
//!    claims back. Only a settler that finds its own claim alone goes on; the others withdraw and
//!    try again later. (Two that write at once may both withdraw; never both go on, because each
//!    reads after it wrote.) A claim older than [`LEASE`] is a crashed settler's and is removed.
//! 2. It reads the records of every up member and of the claimed one, applies the destroys and
//!    attribute changes owed, in their order, then copies what the member lacks from a member
//!    that is owed no destroy or change (so a re-creation after a destroy wins: it is copied
//!    after the destroy was applied).
//! 3. It destroys the settled records on every up member and, for each member that is down
//!    (it may hold copies), writes a Forget naming them. A Forget is applied wherever it is seen,
//!    and dropped once its member no longer holds what it names.
//! 4. It releases the claim.

use super::copy::{copy_missing, dst, src, Copied, CopyResult, End, Side};
use super::opened::Opened;
use super::owed::{is_private, is_user, Survey, View};
use super::records::{self, now_ns, Change, Held, Record};
use crate::diag::diag;
use crate::ha::group::Group;
use crate::ha::objects::Identity;
use crate::mechanism::Attr;
use crate::provider::{Fault, Instance, MemberResult};
use cryptoki_sys::*;
use std::collections::HashSet;
use std::sync::Arc;

/// How long a claim keeps other settlers away. Settling takes seconds even for thousands of
/// records; a settler that died holding a claim delays the member's settling by this much.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(120);
/// Record ids per Forget record.
const FORGET_CHUNK: usize = 100;

/// What settling a member did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Objects copied, and those that could not be.
    pub copied: Copied,
    /// Records settled.
    pub settled: usize,
    /// Another settler holds the member: nothing was done, try again later.
    pub busy: bool,
}

/// Brings a returning member up to date before it is bound: see the module. An error means it
/// should not be bound yet; `busy` that another process is settling it now.
pub fn reintroduce(
    g: &Group,
    serial: &str,
    target: &Arc<Instance>,
    slot: CK_SLOT_ID,
) -> MemberResult<Outcome> {
    bring_up_to_date(g, serial, target, slot, false)
        .map_err(|(_, f)| f)
        .inspect(|o| crate::audit::reintroduced(g, serial, o.copied.copied))
}

/// [`reintroduce`], saying which side failed; with `only_if_owed`, nothing is compared when the
/// member turns out to be owed nothing (someone else settled it meanwhile).
pub fn bring_up_to_date(
    g: &Group,
    serial: &str,
    target: &Arc<Instance>,
    slot: CK_SLOT_ID,
    only_if_owed: bool,
) -> CopyResult<Outcome> {
    bring_up_to_date_within(g, serial, target, slot, only_if_owed, None)
}

/// [`bring_up_to_date`] that waits at most `wait` for another comparison in this process (the
/// management thread's reintroduction) to end; if it does not, nothing is done (`busy`): an
/// application's thread is never held for a whole reintroduction.
fn bring_up_to_date_within(
    g: &Group,
    serial: &str,
    target: &Arc<Instance>,
    slot: CK_SLOT_ID,
    only_if_owed: bool,
    wait: Option<std::time::Duration>,
) -> CopyResult<Outcome> {
    let _one = match wait {
        None => g.sync.comparing.lock(),
        Some(d) => match g.sync.comparing.try_lock_for(d) {
            Some(held) => held,
            None => {
                return Ok(Outcome {
                    busy: true,
                    ..Default::default()
                })
            }
        },
    };
    let login = g.login();
    let mine = dst(Opened::open(target, slot, &login, None))?;
    let Some(claim) = dst(claim_for_copy(&mine, serial))? else {
        return Ok(Outcome {
            busy: true,
            ..Default::default()
        });
    };
    let result = settle(g, serial, &mine, only_if_owed);
    claim.release();
    result
}

/// A settler's claim on a member (step 1), released on drop.
pub(crate) struct Claim<'a> {
    on: &'a Opened,
    handle: CK_OBJECT_HANDLE,
}

impl Claim<'_> {
    pub(crate) fn release(self) {}
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let _ = records::destroy(&self.on.inst, self.on.session, self.handle);
    }
}

/// Step 1: claims `serial` (on the member itself, through `mine`) before anything is copied to
/// it or settled on it; `None` when another settler holds it.
pub(crate) fn claim_for_copy<'a>(
    mine: &'a Opened,
    serial: &str,
) -> MemberResult<Option<Claim<'a>>> {
    let me = Record::new(serial, Change::Claim, false);
    let claim = Claim {
        on: mine,
        handle: records::write(&mine.inst, mine.session, &me)?,
    };
    let now = now_ns();
    let mut others = false;
    for held in records::read(&mine.inst, mine.session)? {
        let r = &held.rec;
        if r.change != Change::Claim || r.target != serial || r.id == me.id {
            continue;
        }
        if now.saturating_sub(r.order) > LEASE.as_nanos() as u64 {
            records::destroy(&mine.inst, mine.session, held.handle)?;
        } else {
            others = true;
        }
    }
    // Withdrawn (dropped) when another claim is there.
    Ok((!others).then_some(claim))
}

/// Steps 2 and 3 for the claimed member.
fn settle(g: &Group, serial: &str, mine: &Opened, only_if_owed: bool) -> CopyResult<Outcome> {
    let login = g.login();
    let user = is_user(&login);
    let survey = Survey::take(g, &login, Some(serial));
    let own = dst(records::read(&mine.inst, mine.session))?;
    let view = survey.view(g, &own);
    let owed = view.owed_to(serial);
    let mut out = Outcome::default();
    drop_forgotten(&own, mine, &view);
    if only_if_owed && owed.is_empty() {
        return Ok(out);
    }
    exchange(g, &survey, &own, mine, serial, &view);
    let what = format!("group {}: catching up {serial}", g.label);
    let mut to = End::new(&mine.inst, mine.session, serial);
    let source = g
        .candidates(|i, _| {
            let m = g.member(i);
            m.serial != serial && view.safe_source(&m.serial)
        })
        .into_iter()
        .find_map(|i| survey.ends.iter().find(|e| e.idx == i));
    let mut from = source.map(|e| End::new(&e.opened.inst, e.opened.session, &e.serial));
    let result = (|| {
        let mut done = apply_owed(&owed, &to, from.as_ref(), &what)?;
        // A rename still owed would make the comparison copy the renamed object a second time:
        // the comparison waits until every destroy and change is settled.
        let unsettled = owed
            .iter()
            .any(|r| r.change.is_change() && !done.contains(&r.id));
        match (&mut from, unsettled) {
            (Some(from), false) => {
                out.copied = copy_missing(from, &mut to, &what)?;
                done.extend(
                    owed.iter()
                        .filter(|r| matches!(r.change, Change::Created { login } if user || !login))
                        .map(|r| r.id.clone()),
                );
            }
            // Nothing safe to compare with: the member stays owed a comparison.
            _ if !done.is_empty()
                && !owed
                    .iter()
                    .any(|r| matches!(r.change, Change::Created { .. })) =>
            {
                let again = Record::new(serial, Change::Created { login: user }, false);
                let ends = std::iter::once(mine).chain(survey.ends.iter().map(|e| &e.opened));
                for o in ends {
                    let _ = records::write(&o.inst, o.session, &again);
                }
            }
            _ => {}
        }
        Ok(done)
    })();
    let done = match result {
        Ok(done) => done,
        Err((Side::Source, f)) => {
            if let Some(e) = source.filter(|_| f.fails_member()) {
                g.drop_member(e.idx, e.opened.inst.id, f);
            }
            return Err((Side::Source, f));
        }
        Err(e) => return Err(e),
    };
    out.settled = done.len();
    g.sync.unplaced.settle(&done);
    let done: HashSet<String> = done.into_iter().collect();
    finish(g, &survey, &own, mine, serial, &done);
    Ok(out)
}

/// Copies of records only the claimed member holds (written while it was the only one up) go to
/// the other up members; records it lacks (owed to others) come to it, so it can hold them when
/// the others fail.
fn exchange(g: &Group, survey: &Survey, own: &[Held], mine: &Opened, serial: &str, view: &View) {
    let on = |held: &[Held], id: &str| held.iter().any(|h| h.rec.id == id);
    for r in view.live.iter().filter(|r| r.target != serial) {
        if !on(own, &r.id) {
            let _ = records::write(&mine.inst, mine.session, r);
        }
        for e in survey.ends.iter().filter(|e| !on(&e.held, &r.id)) {
            if let Err(f) = records::write(&e.opened.inst, e.opened.session, r) {
                if f.fails_member() {
                    g.drop_member(e.idx, e.opened.inst.id, f);
                }
            }
        }
    }
}

/// Step 3: destroys the settled records everywhere up and tells the members that are down.
fn finish(
    g: &Group,
    survey: &Survey,
    own: &[Held],
    mine: &Opened,
    serial: &str,
    done: &HashSet<String>,
) {
    if done.is_empty() {
        return;
    }
    let mut privacy = std::collections::HashMap::new();
    let mut destroy_on = |o: &Opened, held: &[Held]| -> MemberResult<()> {
        for h in held.iter().filter(|h| done.contains(&h.rec.id)) {
            privacy.insert(h.rec.id.clone(), h.rec.private);
            records::destroy(&o.inst, o.session, h.handle)?;
        }
        Ok(())
    };
    let _ = destroy_on(mine, own);
    for e in &survey.ends {
        if let Err(f) = destroy_on(&e.opened, &e.held) {
            if f.fails_member() {
                g.drop_member(e.idx, e.opened.inst.id, f);
            }
        }
    }
    // Members down now (including any just dropped) may hold copies: a Forget each.
    let down: Vec<String> = g
        .down_serials()
        .into_iter()
        .filter(|s| s != serial)
        .collect();
    if down.is_empty() {
        return;
    }
    let mut forgets = Vec::new();
    for private in [false, true] {
        let ids: Vec<String> = done
            .iter()
            .filter(|id| privacy.get(*id).copied().unwrap_or(true) == private)
            .cloned()
            .collect();
        for chunk in ids.chunks(FORGET_CHUNK) {
            for d in &down {
                forgets.push(Record::new(d, Change::Forget(chunk.to_vec()), private));
            }
        }
    }
    let ends = std::iter::once(mine).chain(survey.ends.iter().map(|e| &e.opened));
    for o in ends {
        for r in &forgets {
            let _ = records::write(&o.inst, o.session, r);
        }
    }
}

/// Drops what a member holds that is settled: copies of forgotten records, and Forgets naming
/// only records it no longer holds.
fn drop_forgotten(held: &[Held], o: &Opened, view: &View) {
    let ids: HashSet<&str> = held.iter().map(|h| h.rec.id.as_str()).collect();
    for h in held {
        let dead = match &h.rec.change {
            Change::Forget(names) => names
                .iter()
                .all(|n| !ids.contains(n.as_str()) || view.forgotten.contains(n)),
            _ => view.forgotten.contains(&h.rec.id),
        };
        if dead {
            let _ = records::destroy(&o.inst, o.session, h.handle);
        }
    }
}

/// Every object on a member that is a twin of `identity`.
fn twins(end: &End, identity: &Identity) -> MemberResult<Vec<CK_OBJECT_HANDLE>> {
    let mut out = Vec::new();
    for h in end.inst.find_all(end.session, identity.search_template())? {
        match Identity::read(end.inst, end.session, h) {
            Ok(twin) if twin.matches(identity) => out.push(h),
            Ok(_) | Err(Fault::Rv(CKR_OBJECT_HANDLE_INVALID)) => {} // not it, or gone meanwhile
            Err(f) => return Err(f),
        }
    }
    Ok(out)
}

/// Owed destroys from which [`apply_owed`] reads the member's objects once instead of searching
/// for each record's twins: a SoftHSM search costs as much as the token holds objects, so one
/// search per record made settling quadratic (p11ha-bench part 11: 1,000 records, 12 s of
/// searches). Below this, a few searches cost less than reading every object.
const SCAN_FROM: usize = 32;

/// The objects of the classes owed a destroy, read once from the member, by label.
struct Scan {
    objects: Vec<Option<(CK_OBJECT_HANDLE, Identity)>>,
    by_label: std::collections::HashMap<Vec<u8>, Vec<usize>>,
}

impl Scan {
    fn read(end: &End, owed: &[Record]) -> MemberResult<Scan> {
        let classes: std::collections::BTreeSet<CK_OBJECT_CLASS> = owed
            .iter()
            .filter_map(|r| match &r.change {
                Change::Destroy(i) => i.class(),
                _ => None,
            })
            .collect();
        let mut scan = Scan {
            objects: Vec::new(),
            by_label: Default::default(),
        };
        for class in classes {
            let template = vec![Attr::ulong(CKA_CLASS, class), Attr::bool(CKA_TOKEN, true)];
            for h in end.inst.find_all(end.session, template)? {
                match Identity::read(end.inst, end.session, h) {
                    Ok(twin) => {
                        let label = twin.get(CKA_LABEL).map(|a| a.value.clone());
                        scan.by_label
                            .entry(label.unwrap_or_default())
                            .or_default()
                            .push(scan.objects.len());
                        scan.objects.push(Some((h, twin)));
                    }
                    Err(Fault::Rv(CKR_OBJECT_HANDLE_INVALID)) => {} // gone meanwhile
                    Err(f) => return Err(f),
                }
            }
        }
        Ok(scan)
    }

    /// What [`twins`] finds: what the search template would select (every attribute of it
    /// equal), of those the twins; they leave the scan (destroyed next).
    fn take_twins(&mut self, identity: &Identity) -> Vec<CK_OBJECT_HANDLE> {
        let template = identity.search_template();
        let selected = |twin: &Identity| {
            template
                .iter()
                .all(|a| twin.get(a.kind).is_some_and(|b| b.value == a.value))
                && twin.matches(identity)
        };
        let candidates: Vec<usize> = match identity.get(CKA_LABEL) {
            Some(l) => self.by_label.get(&l.value).cloned().unwrap_or_default(),
            None => (0..self.objects.len()).collect(),
        };
        let mut out = Vec::new();
        for i in candidates {
            if let Some((h, twin)) = &self.objects[i] {
                if selected(twin) {
                    out.push(*h);
                    self.objects[i] = None;
                }
            }
        }
        out
    }
}

/// Applies to `to` the destroys and attribute changes in `owed`, attribute values read from the
/// changed twin on `from`. Returns the ids of the records done with. A destroy removes every twin
/// (a copy made meanwhile by a process that saw the member up comes back with the comparison);
/// a public record never touches a private object.
fn apply_owed(
    owed: &[Record],
    to: &End,
    from: Option<&End>,
    what: &str,
) -> CopyResult<Vec<String>> {
    let mut done = Vec::new();
    let refused = |r: &Record, how: &str, rv: CK_RV| {
        diag!(
            Warn,
            "{what}: {how} made while it was down was refused ({}): {}",
            r.describe(),
            crate::rv::rv_name(rv)
        )
    };
    let many = owed
        .iter()
        .filter(|r| matches!(r.change, Change::Destroy(_)))
        .count()
        >= SCAN_FROM;
    // Read at the first destroy, again after an attribute change (it may rename a twin).
    let mut scan: Option<Scan> = None;
    for r in owed {
        match &r.change {
            Change::Destroy(identity) => {
                let found = match (&mut scan, many) {
                    (_, false) => dst(twins(to, identity))?,
                    (Some(s), true) => s.take_twins(identity),
                    (None, true) => scan.insert(dst(Scan::read(to, owed))?).take_twins(identity),
                };
                for h in found {
                    if !r.private && dst(is_private(to.inst, to.session, h))? {
                        continue;
                    }
                    match to.inst.destroy_object(to.session, h) {
                        Err(f) if f.fails_member() => return Err((Side::Target, f)),
                        // Another settler destroyed it first: done all the same.
                        Err(Fault::Rv(CKR_OBJECT_HANDLE_INVALID)) => {}
                        Err(f) => refused(r, "a destroy", f.rv()),
                        Ok(()) => {}
                    }
                }
            }
            Change::Set {
                before,
                after,
                kinds,
            } => {
                let Some(from) = from else { continue };
                let theirs = src(super::super::objects::find_twin(
                    from.inst,
                    from.session,
                    after,
                ))?;
                let mine = dst(super::super::objects::find_twin(
                    to.inst, to.session, before,
                ))?;
                // Destroyed since, or already changed: nothing to do (what this login cannot see,
                // its record cannot name either).
                if let (Some(t), Some(m)) = (theirs, mine) {
                    let hidden = !r.private
                        && (src(is_private(from.inst, from.session, t))?
                            || dst(is_private(to.inst, to.session, m))?);
                    if !hidden {
                        let values =
                            src(from.inst.read_attributes(from.session, t, kinds.clone()))?;
                        let template: Vec<Attr> = kinds
                            .iter()
                            .zip(values)
                            .filter_map(|(k, v)| v.map(|v| Attr::new(*k, v)))
                            .collect();
                        scan = None;
                        match to.inst.set_attributes(to.session, m, template) {
                            Err(f) if f.fails_member() => return Err((Side::Target, f)),
                            Err(f) => refused(r, "an attribute change", f.rv()),
                            Ok(()) => {}
                        }
                    }
                }
            }
            _ => continue,
        }
        done.push(r.id.clone());
    }
    Ok(done)
}

/// Settles what up members are owed (changes made by other processes, or that needed the login
/// this group now has) and drops settled records. A member that fails on its connection is
/// dropped. Returns what was copied.
pub fn catch_up(g: &Group) -> Copied {
    catch_up_within(g, None)
}

/// How long C_Login waits for a comparison another thread of this process runs.
pub const LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// [`catch_up`] from an application's thread (C_Login): each member's settling waits at most
/// `wait` for a comparison another thread runs; what is skipped is settled by the management
/// thread's next round.
pub fn catch_up_within(g: &Group, wait: Option<std::time::Duration>) -> Copied {
    let mut copied = Copied::default();
    if !g.sync.enabled() || g.passthrough {
        return copied;
    }
    let login = g.login();
    let user = is_user(&login);
    let owing = {
        let survey = Survey::take(g, &login, None);
        let view = survey.view(g, &[]);
        *g.sync.created.lock() = view.created();
        for e in &survey.ends {
            drop_forgotten(&e.held, &e.opened, &view);
        }
        // What only a user login could settle waits for one.
        let mut owing: HashSet<String> = view
            .live
            .iter()
            .filter(|r| user || !matches!(r.change, Change::Created { login: true }))
            .map(|r| r.target.clone())
            .collect();
        owing.retain(|s| survey.ends.iter().any(|e| &e.serial == s));
        owing
    };
    for (i, m) in g.members().iter().enumerate() {
        let Some(b) = m.binding().filter(|_| owing.contains(&m.serial)) else {
            continue;
        };
        match bring_up_to_date_within(g, &m.serial, &b.instance, b.slot, true, wait) {
            Ok(o) => copied.add(o.copied),
            Err((Side::Target, f)) if f.fails_member() => g.drop_member(i, b.instance.id, f),
            Err((_, f)) => diag!(
                Warn,
                "group {}: {} could not catch up yet: {}",
                g.label,
                m.serial,
                crate::rv::rv_name(f.rv())
            ),
        }
    }
    copied
}
