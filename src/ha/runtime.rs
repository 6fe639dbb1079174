//! The running library: the HA state ([`Ha`]) with whatever drives its recovery rounds, the
//! management thread or, when the application forbids threads, its own calls.

use super::library::Ha;
use super::mgmt::{Inline, Mgmt};
use super::session::{CkResult, Session};
use crate::bounded;
use crate::config::HaConfig;
use crate::halog::HaLog;
use cryptoki_sys::CK_SESSION_HANDLE;
use parking_lot::Mutex;
use std::sync::Arc;

pub struct Runtime {
    ha: Arc<Ha>,
    driver: Driver,
}

enum Driver {
    Thread(Mutex<Option<Mgmt>>),
    Inline(Inline),
}

impl Runtime {
    /// Connects the members (bounded by ConnectTimeout) and starts recovery.
    pub fn start(config: HaConfig, log: HaLog) -> Runtime {
        let ha = Ha::start(config, log);
        let driver = if bounded::is_inline() {
            Driver::Inline(Inline::start(&ha))
        } else if ha.groups.is_empty() {
            // No configuration (or no group in it): nothing to recover, and no idle thread in
            // every p11-kit consumer that loads each registered module.
            Driver::Thread(Mutex::new(None))
        } else {
            Driver::Thread(Mutex::new(super::mgmt::start(&ha)))
        };
        Runtime { ha, driver }
    }

    /// The session `handle`; without threads, also the moment for a recovery round that is due.
    pub fn session(&self, handle: CK_SESSION_HANDLE) -> CkResult<Arc<Session>> {
        if let Driver::Inline(inline) = &self.driver {
            inline.poll_if_due(&self.ha);
        }
        self.ha.session(handle)
    }

    /// Stops recovery, closes every session, finalizes every member instance, flushes the log.
    pub fn stop(&self) {
        self.ha
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        if let Driver::Thread(mgmt) = &self.driver {
            if let Some(m) = mgmt.lock().take() {
                m.stop(&self.ha);
            }
        }
        self.ha.shutdown();
        self.ha.log.flush();
    }
}

impl std::ops::Deref for Runtime {
    type Target = Ha;

    fn deref(&self) -> &Ha {
        &self.ha
    }
}
