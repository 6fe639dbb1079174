//! Recovery: one management round picks up configuration changes, catches up members that
//! are owed changes, and tries to bring dropped members back, with the HA log lines of seed 003.
//! Run by the management thread (`ha::mgmt`), or on application calls when threads are
//! forbidden.

use super::credential::{self, Verdict};
use super::discovery::{bind, find_member, Found};
use super::group::Group;
use super::library::{refuse_kind, Ha};
use super::member::Member;
use super::sync::catchup::{catch_up, reintroduce};
use crate::config;
use crate::diag::diag;
use crate::provider::Fault;
use cryptoki_sys::*;
use std::sync::Arc;

/// Whether records wait for a member to take them (this host's journal): then the first round
/// runs at once. What the members' records say is read at every round (and at C_Login), not
/// here: a round at C_Initialize would run beside the application's first calls.
pub(crate) fn owed_at_start(ha: &Ha) -> bool {
    ha.ha_groups()
        .any(|g| g.sync.enabled() && g.sync.unplaced().is_none_or(|n| n > 0))
}

/// Catches up, as far as possible without a login, every member that is up but owed changes.
pub(crate) fn catch_up_all(ha: &Ha) {
    for g in ha.ha_groups() {
        catch_up(g);
    }
}

/// One management round: pick up configuration changes, catch up members that are up but owed
/// changes, then try every dropped member that auto-recovery may still try.
pub fn poll(ha: &Ha) {
    reread_config(ha);
    let limit = ha.config.recovery.attempts;
    for g in ha.ha_groups() {
        // What needs a user login waits for one (C_Login settles it); the rest is settled now.
        // Not beside an SO at work (provisioning): the SO sees only public objects anyway.
        if g.login().is_none_or(|l| l.user != CKU_SO) {
            catch_up(g);
        }
    }
    for g in &ha.groups {
        for (idx, m) in g.members().iter().enumerate() {
            if ha.is_stopping() {
                return; // C_Finalize is waiting: the rest waits for the next C_Initialize
            }
            // A passed-through member slot (HAOnly = 0) shares its provider's instance, which
            // the recovery of an HA member may have just replaced: it moves to the new one.
            // And a member whose calls on the application's threads (ProviderNNBoundedCalls =
            // 0) stay inside it is dropped: no more threads should walk into it.
            if let Some(b) = m.binding() {
                if b.instance.is_retired() {
                    g.drop_member(idx, b.instance.id, Fault::Closed);
                } else if b.instance.is_stuck() {
                    g.drop_member(idx, b.instance.id, Fault::TimedOut);
                }
            }
            let h = m.health();
            if h.binding.is_some() || !h.auto_recovery || limit == 0 || m.is_removed() {
                continue;
            }
            recover(ha, g, m, limit);
        }
    }
}

/// Applies what changed in the file since the last poll: members added to or removed from a
/// group (each logged: HALOG_NEWMEMBER, P11HA_MEMBER_REMOVED), and `HARecovery.<label>`
/// counters that went up (manual recovery, also what `p11ha recover` does). Other settings take
/// effect at the next C_Initialize.
///
/// A new member, or one a manual recovery re-arms, is tried by the rest of this same round
/// ([`poll`]) when auto-recovery is on, and here only when it is off (`reconnAtt = 0`): one
/// request is one attempt, never two in the same second.
fn reread_config(ha: &Ha) {
    // Only groups' members and counters are applied: with no group (no configuration at all)
    // there is nothing to re-read, and no reason to say every interval that the file is missing.
    if ha.config.groups.is_empty() {
        return;
    }
    let cfg = match config::load(&ha.config.path) {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            let mut last = ha.reread_error.lock();
            if last.as_deref() != Some(msg.as_str()) {
                diag!(
                    Warn,
                    "configuration not re-read, keeping the running one: {msg}"
                );
                crate::audit::config_refused(ha, &msg);
                *last = Some(msg);
            }
            return;
        }
    };
    *ha.reread_error.lock() = None;
    crate::audit::config_reread(ha, &cfg);
    let auto_off = ha.config.recovery.attempts == 0;
    for gc in &cfg.groups {
        let Some(g) = ha.ha_groups().find(|g| g.label == gc.label) else {
            continue;
        };
        let wanted: Vec<(&String, bool)> = gc
            .members
            .iter()
            .map(|s| (s, false))
            .chain(gc.standby.iter().map(|s| (s, true)))
            .collect();
        for m in g.members().iter() {
            if !m.is_removed() && !wanted.iter().any(|(s, _)| **s == m.serial) {
                m.remove();
                g.log.member_removed(&g.serial, &m.serial);
                crate::audit::member_removed(g, &m.serial);
            }
        }
        for (serial, standby) in &wanted {
            if g.members()
                .iter()
                .any(|m| !m.is_removed() && m.serial == **serial)
            {
                continue;
            }
            let m = Arc::new(Member::new((*serial).clone(), *standby));
            g.add_member(m.clone());
            g.log.new_member(&g.serial, serial);
            crate::audit::member_added(g, serial, *standby);
            if auto_off {
                recover(ha, g, &m, 0);
            }
        }
        let asked = {
            let mut last = g.manual_recovery.lock();
            let asked = matches!((*last, gc.manual_recovery), (Some(a), Some(b)) if b > a)
                || (last.is_none() && gc.manual_recovery.is_some());
            *last = gc.manual_recovery;
            asked
        };
        if asked {
            for m in g.members().iter().filter(|m| !m.is_removed() && !m.is_up()) {
                g.log.renable_member(&g.serial, &m.serial);
                m.rearm();
                if auto_off {
                    recover(ha, g, m, 0);
                }
            }
        }
    }
}

/// One attempt to bring `m` back, counted and logged.
pub fn recover(ha: &Ha, g: &Group, m: &Member, limit: i64) -> bool {
    match find_member(&ha.providers, &m.serial, ha.config.connect_timeout, |o| {
        ha.instance_in_use(o)
    }) {
        Ok(found) if !g.accepts_kind(&found.token) => {
            refuse_kind(g, m);
            false
        }
        Ok(found) => {
            match credential_still_valid(g, m, &found) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(rv) => return attempt_failed(g, m, rv, limit),
            }
            let attempt = m.health().attempts + 1;
            if g.sync.enabled() && !g.passthrough {
                // Reintroduction: the member catches up before it takes work.
                match reintroduce(g, &m.serial, &found.instance, found.slot) {
                    // Another process is catching it up: not an attempt of ours, try next round.
                    Ok(o) if o.busy => return false,
                    Ok(o) => {
                        let c = &o.copied;
                        // The seed's line is for a member "at which some objects were cloned".
                        if c.copied > 0 {
                            g.log.reintroducing(&g.serial, attempt, c.copied, &m.serial);
                        }
                        if let (n @ 1.., Some(first)) = (c.failed, &c.first) {
                            g.log.not_copied(&g.serial, attempt, n, &m.serial, first);
                        }
                    }
                    Err(f) => return attempt_failed(g, m, f.status(), limit),
                }
            }
            // HALOG_MEMBER_NOW_ACTIVATED is for a partition that was deactivated, not for
            // every member that comes back.
            let was_deactivated = m.health().deactivated;
            bind(m, &found);
            g.log.recovered(&g.serial, attempt, &m.serial);
            if was_deactivated {
                g.log.member_now_activated(&g.serial, attempt, &m.serial);
            }
            crate::audit::member_recovered(g, &m.serial, attempt);
            true
        }
        Err(rv) => attempt_failed(g, m, rv, limit),
    }
}

/// A failed attempt, counted and logged; auto-recovery ends after `limit` of them.
fn attempt_failed(g: &Group, m: &Member, rv: CK_RV, limit: i64) -> bool {
    let attempt = m.count_attempt(rv);
    g.log.recovery_failed(&g.serial, attempt, &m.serial, rv);
    if limit > 0 && attempt >= limit.unsigned_abs() {
        g.log.recovery_exhausted(&g.serial, &m.serial);
        m.set_auto_recovery(false);
    }
    false
}

/// When the group is logged in, a returning member must still accept the group's credential
/// before it takes work. A token that now refuses it as locked, expired or uninitialized has been
/// revoked (HALOG_MEMBER_REVOKED); one that calls it wrong has another PIN (HALOG_LOGINFAILED).
/// Either way the PIN is tried once, never again: auto-recovery stops for that member. Any other
/// answer is no verdict on the PIN: `Err(rv)`, a failed attempt, tried again next round.
fn credential_still_valid(g: &Group, m: &Member, found: &Found) -> Result<bool, CK_RV> {
    let Some(login) = g.login() else {
        return Ok(true);
    };
    let inst = &found.instance;
    let Ok(probe) = inst.open_session(found.slot, CKF_SERIAL_SESSION) else {
        return Ok(true); // the connection question is the recovery's, which goes on
    };
    let verdict = credential::present(inst, probe, login.user, &login.pin);
    let _ = inst.close_session(probe);
    match verdict {
        Verdict::Accepted => Ok(true),
        Verdict::Revoked(rv) => {
            g.log.member_revoked(&g.serial, &m.serial);
            m.mark_unreachable(rv);
            m.set_auto_recovery(false);
            Ok(false)
        }
        Verdict::WrongPin(rv) => {
            g.log.login_failed(&g.serial, &m.serial, rv);
            m.mark_unreachable(rv);
            m.set_auto_recovery(false);
            Ok(false)
        }
        // The connection question is the recovery's, which goes on; a panic of ours says
        // nothing about the credential either.
        Verdict::Undecided(f) if f.fails_member() || f == Fault::Panicked => Ok(true),
        // SoftHSM's CKR_GENERAL_ERROR when processes log in at once (the chaos test saw it turn
        // auto-recovery off for good): a failed attempt, not a verdict.
        Verdict::Undecided(f) => Err(f.rv()),
    }
}
