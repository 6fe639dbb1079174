//! The management thread: every AutoReconnectInterval it tries to bring dropped members back,
//! with the HA log lines of seed 003. Without threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS) the
//! same poll runs on application calls when it is due.

use super::group::Group;
use super::library::{bind, list_tokens, trimmed_serial, Found, Ha};
use super::member::Member;
use crate::bounded;
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
        *ha.next_poll.lock() = Some(Instant::now() + ha.config.recovery.interval);
        return;
    }
    let (stop, stop_rx) = channel::<()>(1);
    let weak: Weak<Ha> = Arc::downgrade(ha);
    let interval = ha.config.recovery.interval;
    for g in ha.ha_groups() {
        ha.log.mgmt_thread_start(&g.serial);
    }
    let spawned = std::thread::Builder::new()
        .name("p11ha-mgmt".into())
        .spawn(move || loop {
            select! {
                recv(stop_rx) -> _ => break,
                default(interval) => match weak.upgrade() {
                    Some(ha) => poll(&ha),
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

/// One recovery round over every dropped member that auto-recovery may still try.
pub fn poll(ha: &Ha) {
    let limit = ha.config.recovery.attempts;
    for g in &ha.groups {
        for m in &g.members {
            let h = m.health();
            if h.binding.is_some() || !h.auto_recovery || limit == 0 {
                continue;
            }
            recover(ha, g, m, limit);
        }
    }
}

/// One attempt to bring `m` back, counted and logged.
pub fn recover(ha: &Ha, g: &Group, m: &Member, limit: i64) -> bool {
    match find_member(ha, &m.serial) {
        Ok(found) => {
            let attempt = m.health().attempts + 1;
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

/// Looks for a token serial in every provider, making a new instance of a provider whose
/// instance does not show it and serves no member that is up (a dead p11-kit-client instance
/// never reconnects by itself).
fn find_member(ha: &Ha, serial: &str) -> Result<Found, CK_RV> {
    let mut last = CKR_TOKEN_NOT_PRESENT;
    for (i, p) in ha.providers.iter().enumerate() {
        let current = p.instance.lock().clone();
        if let Some(inst) = &current {
            if let Some(f) = in_instance(i, inst, serial) {
                return Ok(f);
            }
            if ha.instance_in_use(inst.id) {
                continue;
            }
        }
        match p
            .provider
            .connect(Instant::now() + ha.config.connect_timeout)
        {
            Ok(inst) => {
                let old = p.instance.lock().replace(inst.clone());
                if let Some(old) = old {
                    // Finalize the dead instance off this thread: it may hang.
                    drop(bounded::start(move || old.finalize()));
                }
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
