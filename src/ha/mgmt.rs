//! The management thread: every AutoReconnectInterval it tries to bring dropped members back,
//! with the HA log lines of seed 003. Without threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS) the
//! same poll runs on application calls when it is due.

use super::group::Group;
use super::library::{bind, list_tokens, trimmed_serial, Found, Ha};
use super::member::Member;
use crate::bounded;
use crate::config;
use crate::provider::is_connection_error;
use crossbeam_channel::{bounded as channel, select, Sender};
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

pub struct Mgmt {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// Starts the thread (or, when threads are forbidden, arms polling on application calls).
pub fn start(ha: &Arc<Ha>) {
    if bounded::is_inline() {
        eprintln!("p11ha: the application forbids threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS): members are recovered during application calls");
        if owed_at_start(ha) {
            catch_up_all(ha);
        }
        *ha.next_poll.lock() = Some(Instant::now() + ha.config.recovery.interval);
        return;
    }
    let (stop, stop_rx) = channel::<()>(1);
    let weak: Weak<Ha> = Arc::downgrade(ha);
    let interval = ha.config.recovery.interval;
    for g in ha.ha_groups() {
        ha.log.mgmt_thread_start(&g.serial);
    }
    // Members that came up owing changes (another process made them) catch up at once.
    let mut wait = if owed_at_start(ha) {
        std::time::Duration::ZERO
    } else {
        interval
    };
    let spawned = std::thread::Builder::new()
        .name("p11ha-mgmt".into())
        .spawn(move || loop {
            select! {
                recv(stop_rx) -> _ => break,
                default(wait) => match weak.upgrade() {
                    Some(ha) => {
                        if wait.is_zero() {
                            catch_up_all(&ha);
                        }
                        poll(&ha);
                        wait = interval;
                    }
                    None => break,
                },
            }
        });
    match spawned {
        Ok(thread) => *ha.mgmt.lock() = Some(Mgmt { stop, thread }),
        Err(e) => eprintln!("p11ha: cannot start the management thread: {e}"),
    }
}

pub fn stop(ha: &Ha) {
    if let Some(m) = ha.mgmt.lock().take() {
        let _ = m.stop.send(());
        let _ = m.thread.join();
        for g in ha.ha_groups() {
            ha.log.mgmt_thread_terminate(&g.serial);
        }
    }
}

/// Runs a poll when one is due, for libraries without a management thread.
pub fn poll_if_due(ha: &Ha) {
    let due = {
        let Some(mut next) = ha.next_poll.try_lock() else {
            return;
        };
        match *next {
            Some(t) if Instant::now() >= t => {
                *next = Some(Instant::now() + ha.config.recovery.interval);
                true
            }
            _ => false,
        }
    };
    if due {
        poll(ha);
    }
}

/// Whether a member that is up is owed changes (by another process, or by an earlier run).
fn owed_at_start(ha: &Ha) -> bool {
    ha.ha_groups().any(|g| {
        let owing = g.sync.owing();
        g.members()
            .iter()
            .any(|m| m.is_up() && owing.contains(&m.serial))
    })
}

/// Catches up, as far as possible without a login, every member that is up but owed changes.
fn catch_up_all(ha: &Ha) {
    for g in ha.ha_groups() {
        super::sync::catch_up(g);
    }
}

/// One management round: pick up configuration changes, catch up members that are up but owed
/// changes, then try every dropped member that auto-recovery may still try.
pub fn poll(ha: &Ha) {
    reread_config(ha);
    let limit = ha.config.recovery.attempts;
    for g in ha.ha_groups() {
        // Without a user login most of what is owed cannot be settled: C_Login does it.
        if g.login().is_some_and(|l| l.user == CKU_USER) {
            super::sync::catch_up(g);
        }
    }
    for g in &ha.groups {
        for m in g.members().iter() {
            let h = m.health();
            if h.binding.is_some() || !h.auto_recovery || limit == 0 || m.is_removed() {
                continue;
            }
            recover(ha, g, m, limit);
        }
    }
}

/// Applies what changed in the file since the last poll: members added to or removed from a
/// group, and `HARecovery.<label>` counters that went up (manual recovery, also what
/// `p11ha recover` does). Other settings take effect at the next C_Initialize.
fn reread_config(ha: &Ha) {
    let cfg = match config::load(&ha.config.path) {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            let mut last = ha.reread_error.lock();
            if last.as_deref() != Some(msg.as_str()) {
                eprintln!("p11ha: configuration not re-read, keeping the running one: {msg}");
                *last = Some(msg);
            }
            return;
        }
    };
    *ha.reread_error.lock() = None;
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
                eprintln!(
                    "p11ha: member {} left group {} (configuration)",
                    m.serial, g.label
                );
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
            recover(ha, g, &m, ha.config.recovery.attempts);
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
                recover(ha, g, m, ha.config.recovery.attempts);
            }
        }
    }
}

/// One attempt to bring `m` back, counted and logged.
pub fn recover(ha: &Ha, g: &Group, m: &Member, limit: i64) -> bool {
    match find_member(ha, &m.serial) {
        Ok(found) if !g.accepts_kind(&found.token) => {
            super::library::refuse_kind(g, m);
            false
        }
        Ok(found) if !credential_still_valid(g, m, &found) => false,
        Ok(found) => {
            let attempt = m.health().attempts + 1;
            if g.sync.enabled() && !g.passthrough {
                // Reintroduction: the member catches up before it takes work.
                match super::sync::reintroduce(g, &m.serial, &found.instance, found.slot) {
                    Ok(count) => g.log.reintroducing(&g.serial, attempt, count, &m.serial),
                    Err(rv) => {
                        let attempt = m.count_attempt(rv);
                        g.log.recovery_failed(&g.serial, attempt, &m.serial, rv);
                        if limit > 0 && attempt >= limit.unsigned_abs() {
                            g.log.recovery_exhausted(&g.serial, &m.serial);
                            m.set_auto_recovery(false);
                        }
                        return false;
                    }
                }
            }
            bind(m, &found);
            g.log.recovered(&g.serial, attempt, &m.serial);
            g.log.member_now_activated(&g.serial, attempt, &m.serial);
            true
        }
        Err(rv) => {
            let attempt = m.count_attempt(rv);
            g.log.recovery_failed(&g.serial, attempt, &m.serial, rv);
            if limit > 0 && attempt >= limit.unsigned_abs() {
                g.log.recovery_exhausted(&g.serial, &m.serial);
                m.set_auto_recovery(false);
            }
            false
        }
    }
}

/// When the group is logged in, a returning member must still accept the group's credential
/// before it takes work. A token that now refuses it as locked, expired or uninitialized has been
/// revoked (HALOG_MEMBER_REVOKED); one that calls it wrong has another PIN (HALOG_LOGINFAILED).
/// Either way the PIN is tried once, never again: auto-recovery stops for that member.
fn credential_still_valid(g: &Group, m: &Member, found: &Found) -> bool {
    let Some(login) = g.login() else { return true };
    let inst = &found.instance;
    let Ok(probe) = inst.open_session(found.slot, CKF_SERIAL_SESSION) else {
        return true; // the connection question is the recovery's, which goes on
    };
    let verdict = inst.login(probe, login.user, login.pin.clone());
    let _ = inst.close_session(probe);
    match verdict {
        Ok(()) | Err(CKR_USER_ALREADY_LOGGED_IN) => true,
        Err(rv @ (CKR_PIN_LOCKED | CKR_PIN_EXPIRED | CKR_USER_PIN_NOT_INITIALIZED)) => {
            g.log.member_revoked(&g.serial, &m.serial);
            m.mark_unreachable(rv);
            m.set_auto_recovery(false);
            false
        }
        Err(rv) if is_connection_error(rv) => true,
        Err(rv) => {
            g.log.login_failed(&g.serial, &m.serial, rv);
            m.mark_unreachable(rv);
            m.set_auto_recovery(false);
            false
        }
    }
}

/// Looks for a token serial in every provider. A provider instance that no live member uses is
/// replaced by a new one first: a dead p11-kit-client instance may never reconnect, or may
/// reconnect on its own to a restarted server whose handles alias the old ones.
fn find_member(ha: &Ha, serial: &str) -> Result<Found, CK_RV> {
    let mut last = CKR_TOKEN_NOT_PRESENT;
    for (i, p) in ha.providers.iter().enumerate() {
        p.sweep_retired();
        let current = p.instance.lock().clone();
        if let Some(inst) = current
            .as_ref()
            .filter(|inst| ha.instance_in_use(inst.origin))
        {
            match in_instance(i, inst, serial) {
                Some(f) => return Ok(f),
                None => continue,
            }
        }
        // The old instance is finalized first, and only then a new one initialized: most modules
        // (SoftHSM among them) hand out one shared instance, which a late C_Finalize of the old
        // one would take away from the new. Calls still inside it get the connect timeout to
        // return; one that does not (a hung member) keeps the old instance alive, unfinalized.
        p.retire_current(ha.config.connect_timeout);
        match p
            .provider
            .connect(Instant::now() + ha.config.connect_timeout)
        {
            Ok(inst) => {
                *p.instance.lock() = Some(inst.clone());
                if let Some(f) = in_instance(i, &inst, serial) {
                    return Ok(f);
                }
            }
            Err(e) => {
                last = e.rv();
                *p.last_error.lock() = Some(e);
            }
        }
    }
    Err(last)
}

fn in_instance(
    provider: usize,
    inst: &Arc<crate::provider::Instance>,
    serial: &str,
) -> Option<Found> {
    list_tokens(inst)
        .into_iter()
        .find(|(_, t)| trimmed_serial(t) == serial)
        .map(|(slot, token)| Found {
            provider,
            instance: inst.clone(),
            slot,
            token,
        })
}

/// When threads are forbidden: when the next recovery poll is due.
pub type NextPoll = Mutex<Option<Instant>>;
