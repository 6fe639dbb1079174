//! The management thread: every AutoReconnectInterval it runs a recovery round
//! (`ha::recovery::poll`). Without threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS) the same round
//! runs on application calls when it is due ([`Inline`]).

use super::library::Ha;
use super::recovery::{catch_up_all, owed_at_start, poll};
use crate::diag::diag;
use crossbeam_channel::{bounded as channel, select, Sender};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running management thread.
pub struct Mgmt {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// Starts the thread; `None` (said on stderr) when it cannot be started.
pub fn start(ha: &Arc<Ha>) -> Option<Mgmt> {
    let (stop, stop_rx) = channel::<()>(1);
    let weak: Weak<Ha> = Arc::downgrade(ha);
    let interval = ha.config.recovery.interval;
    for g in ha.ha_groups() {
        ha.log.mgmt_thread_start(&g.serial);
    }
    // Members that came up owing changes (another process made them) catch up at once.
    let mut wait = if owed_at_start(ha) {
        Duration::ZERO
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
        Ok(thread) => Some(Mgmt { stop, thread }),
        Err(e) => {
            diag!(Error, "cannot start the management thread: {e}");
            None
        }
    }
}

impl Mgmt {
    /// Stops the thread and waits for it.
    pub fn stop(self, ha: &Ha) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        for g in ha.ha_groups() {
            ha.log.mgmt_thread_terminate(&g.serial);
        }
    }
}

/// Recovery rounds when threads are forbidden: due every AutoReconnectInterval, run by the
/// application call that finds one due.
pub struct Inline {
    next: Mutex<Instant>,
}

impl Inline {
    /// Arms the rounds, catching up at once what members that are up are owed.
    pub fn start(ha: &Ha) -> Inline {
        diag!(Info, "the application forbids threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS): members are recovered during application calls");
        if owed_at_start(ha) {
            catch_up_all(ha);
        }
        Inline {
            next: Mutex::new(Instant::now() + ha.config.recovery.interval),
        }
    }

    /// Runs a round when one is due (and no other call is running one).
    pub fn poll_if_due(&self, ha: &Ha) {
        let due = {
            let Some(mut next) = self.next.try_lock() else {
                return;
            };
            if Instant::now() < *next {
                return;
            }
            *next = Instant::now() + ha.config.recovery.interval;
            true
        };
        if due {
            poll(ha);
        }
    }
}
