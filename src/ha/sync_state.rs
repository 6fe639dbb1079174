//! A synchronized group's state in this process: whether it synchronizes, the records that no
//! member could take yet (the [`Ledger`]), what the last survey of the members saw, and the lock
//! that keeps two comparisons of one group apart. What members are owed lives on the members
//! (`ha::sync::records`); the group holds this, the work lives in `ha::sync`.

use super::journal::{Journal, Ledger};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// A group's synchronization state.
#[derive(Default)]
pub struct SyncState {
    enabled: AtomicBool,
    /// Records written while no member could take them (in memory until
    /// [`SyncState::use_journal`]).
    pub(crate) unplaced: Ledger,
    /// Members known to hold a "created while down" record already, as (serial, with a user
    /// login): one such record per member is enough. Refreshed by every survey.
    pub(crate) created: Mutex<HashSet<(String, bool)>>,
    /// One comparison at a time in this process (between processes: the claim, `catchup`).
    pub(crate) comparing: parking_lot::Mutex<()>,
}

impl SyncState {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    /// Keeps records no member could take in a journal file shared with other processes.
    pub fn use_journal(&mut self, journal: Journal) {
        self.unplaced = Ledger::with_journal(journal);
    }

    /// Records waiting for a member to take them (tests and diagnostics); `None` when the
    /// journal could not be read.
    pub fn unplaced(&self) -> Option<usize> {
        self.unplaced.all().ok().map(|v| v.len())
    }
}
