//! Catching a member up: the destroys and attribute changes it missed while down, then every
//! token object it lacks. At its return before it takes work ([`reintroduce`]), and for members
//! that are up but owed changes another process made ([`catch_up`]).

use super::copy::{copy_missing, dst, src, CopyResult, End, Side};
use super::opened::Opened;
use crate::diag::diag;
use crate::ha::group::Group;
use crate::ha::journal::{Change, Owed};
use crate::ha::objects::find_twin;
use crate::mechanism::Attr;
use crate::provider::{Instance, MemberResult};
use cryptoki_sys::*;

/// Applies to `to` the destroys and attribute changes in `owed`, attribute values read from the
/// changed twin on `from`. Returns the records done with. Without a user login a missing twin
/// may only be invisible (a private object), so that record stays owed.
fn apply_owed(
    owed: &[Owed],
    to: &End,
    from: Option<&End>,
    logged_in: bool,
    what: &str,
) -> CopyResult<Vec<Owed>> {
    let mut done = Vec::new();
    for o in owed {
        let finished = match &o.change {
            Change::Destroy(identity) => match dst(find_twin(to.inst, to.session, identity))? {
                Some(h) => {
                    match to.inst.destroy_object(to.session, h) {
                        Err(f) if f.fails_member() => return Err((Side::Target, f)),
                        Err(f) => diag!(
                            Warn,
                            "{what}: a destroy made while it was down was refused: {}",
                            crate::rv::rv_name(f.rv())
                        ),
                        Ok(()) => {}
                    }
                    true
                }
                None => logged_in,
            },
            Change::Set {
                before,
                after,
                kinds,
            } => {
                let Some(from) = from else { continue };
                let theirs = src(find_twin(from.inst, from.session, after))?;
                let mine = dst(find_twin(to.inst, to.session, before))?;
                match (theirs, mine) {
                    (Some(t), Some(m)) => {
                        let values =
                            src(from.inst.read_attributes(from.session, t, kinds.clone()))?;
                        let template: Vec<Attr> = kinds
                            .iter()
                            .zip(values)
                            .filter_map(|(k, v)| v.map(|v| Attr::new(*k, v)))
                            .collect();
                        match to.inst.set_attributes(to.session, m, template) {
                            Err(f) if f.fails_member() => return Err((Side::Target, f)),
                            Err(f) => diag!(
                                Warn,
                                "{what}: an attribute change made while it was down was \
                                 refused: {}",
                                crate::rv::rv_name(f.rv())
                            ),
                            Ok(()) => {}
                        }
                        true
                    }
                    // Destroyed since, or already changed: nothing to do, if we could see.
                    _ => logged_in,
                }
            }
            Change::Created => false,
        };
        if finished {
            done.push(o.clone());
        }
    }
    Ok(done)
}

/// Brings a member up to date: applies the destroys and attribute changes it missed, then copies
/// every token object of an up member it lacks. Returns the number of objects copied. Used for a
/// returning member before it takes work (an error means it should not be bound yet), and for a
/// member up here that another process's changes are owed to ([`catch_up`]).
///
/// The member compared with is an up member that is owed nothing itself (one that is owed a
/// destroy would hand the destroyed object back). What cannot be settled yet stays owed: private
/// objects without a user login, and everything when there is no member to compare with.
pub fn reintroduce(
    g: &Group,
    serial: &str,
    target: &Instance,
    slot: CK_SLOT_ID,
) -> MemberResult<u64> {
    bring_up_to_date(g, serial, target, slot, false)
        .map_err(|(_, f)| f)
        .inspect(|&n| crate::audit::reintroduced(g, serial, n))
}

/// [`reintroduce`], saying which side failed; with `only_if_owed`, nothing is compared when the
/// member is no longer owed anything (another thread caught it up meanwhile).
fn bring_up_to_date(
    g: &Group,
    serial: &str,
    target: &Instance,
    slot: CK_SLOT_ID,
    only_if_owed: bool,
) -> CopyResult<u64> {
    let _one = g.sync.comparing.lock();
    let owed = g.sync.ledger.owed(serial);
    if only_if_owed && owed.is_empty() {
        return Ok(0);
    }
    let login = g.login();
    let logged_in = login.as_ref().is_some_and(|l| l.user == CKU_USER);
    let mine = dst(Opened::open(target, slot, &login, None))?;
    let mut to = End::new(target, mine.session, serial);
    let what = format!("group {}: catching up {serial}", g.label);
    let owing = g.sync.owing();
    let source = g
        .candidates(|_, m| m.serial != serial && !owing.contains(&m.serial))
        .first()
        .and_then(|&i| g.member(i).binding().map(|b| (i, b)));
    let Some((idx, b)) = source else {
        let done = apply_owed(&owed, &to, None, logged_in, &what)?;
        g.sync.ledger.settle(&done);
        return Ok(0); // nothing to compare with: the returning member is the group now
    };
    let result = src(Opened::open(
        &b.instance,
        b.slot,
        &login,
        Some(b.open_sessions.clone()),
    ))
    .and_then(|theirs| {
        let mut from = End::new(&b.instance, theirs.session, &g.member(idx).serial);
        let mut done = apply_owed(&owed, &to, Some(&from), logged_in, &what)?;
        // Comparing while a rename is still owed would copy the renamed object a second time:
        // the comparison waits until destroys and changes are settled (at C_Login at the latest).
        let unsettled = owed
            .iter()
            .any(|o| o.change != Change::Created && !done.contains(o));
        if unsettled {
            g.sync.ledger.settle(&done);
            return Ok(0);
        }
        let copied = copy_missing(&mut from, &mut to, &what)?;
        if logged_in {
            done.extend(owed.iter().filter(|o| o.change == Change::Created).cloned());
        }
        g.sync.ledger.settle(&done);
        Ok(copied)
    });
    if let Err((Side::Source, f)) = result {
        if f.fails_member() {
            g.drop_member(idx, b.instance.id, f);
        }
    }
    result
}

/// Catches up every member up here that is owed changes (made by another process, or needing
/// the login this group now has). A member that fails on its connection is dropped. Returns the
/// number of objects copied.
pub fn catch_up(g: &Group) -> u64 {
    if !g.sync.enabled() || g.passthrough {
        return 0;
    }
    let owing = g.sync.owing();
    let mut copied = 0;
    for (i, m) in g.members().iter().enumerate() {
        let Some(b) = m.binding().filter(|_| owing.contains(&m.serial)) else {
            continue;
        };
        match bring_up_to_date(g, &m.serial, &b.instance, b.slot, true) {
            Ok(n) => copied += n,
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
