//! The management thread: every AutoReconnectInterval it runs a recovery round
//! (`ha::recovery::poll`). Without threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS) the same round
//! runs on application calls when it is due ([`Inline`]).

use super::library::Ha;
use super::recovery::{catch_up_all, owed_at_start, poll};
use crate::diag::diag;
use crossbeam_channel::{bounded as channel, select, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running management thread.
pub struct Mgmt {
    stop: Sender<()>,
    /// Disconnects when the thread ends.
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

/// How long C_Finalize waits for a recovery round in progress to reach its next step (each
/// member call in it is bounded; a round checks `Ha::is_stopping` between members). A thread
/// still busy after that is left to finish on its own: it holds its own reference to the state.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Starts the thread; `None` (said on stderr) when it cannot be started.
pub fn start(ha: &Arc<Ha>) -> Option<Mgmt> {
    let (stop, stop_rx) = channel::<()>(1);
    let (done_tx, done) = channel::<()>(0);
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
        .spawn(move || {
            crate::bounded::mark_own_thread();
            let _done = &done_tx;
            loop {
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
            }
        });
    match spawned {
        Ok(thread) => Some(Mgmt { stop, done, thread }),
        Err(e) => {
            diag!(Error, "cannot start the management thread: {e}");
            None
        }
    }
}

impl Mgmt {
    /// Stops the thread, waiting for it at most `STOP_WAIT` (`Ha::shutdown` has already set
    /// the stop flag a running round looks at).
    pub fn stop(self, ha: &Ha) {
        let _ = self.stop.try_send(());
        if self.done.recv_timeout(STOP_WAIT) != Err(RecvTimeoutError::Timeout) {
            let _ = self.thread.join();
        }
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
