//! A synchronized group's state: whether it synchronizes, what its members that were down are
//! owed (the [`Ledger`], in a journal shared by every process when there is one), and the lock
//! that keeps two comparisons of one group apart. The group holds it; the copying lives in
//! `ha::sync`.

use super::journal::{Change, Journal, Ledger};
use super::objects::Identity;
use cryptoki_sys::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// A group's synchronization state.
#[derive(Default)]
pub struct SyncState {
    enabled: AtomicBool,
    /// What members that were down are owed (in memory until [`SyncState::use_journal`]).
    pub(crate) ledger: Ledger,
    /// One comparison at a time: two copying the same object to one member would make two.
    pub(crate) comparing: parking_lot::Mutex<()>,
}

impl SyncState {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    /// Keeps owed changes in a journal file shared with other processes.
    pub fn use_journal(&mut self, journal: Journal) {
        self.ledger = Ledger::with_journal(journal);
    }

    /// Remembers, for the members now down, that a token object was destroyed.
    pub fn remember_destroy(&self, identity: Identity, down: &[String]) {
        if identity.is_token() {
            self.ledger.record(Change::Destroy(identity), down);
        }
    }

    /// Remembers, for the members now down, that attributes of `kinds` changed on an object.
    pub fn remember_set(
        &self,
        before: Identity,
        after: Identity,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
        down: &[String],
    ) {
        if before.is_token() {
            let change = Change::Set {
                before,
                after,
                kinds,
            };
            self.ledger.record(change, down);
        }
    }

    /// Remembers, for the members now down, that token objects were created (once per member
    /// until it catches up: the catching up compares everything anyway).
    pub fn remember_created(&self, down: &[String]) {
        let new: Vec<String> = down
            .iter()
            .filter(|s| {
                !self
                    .ledger
                    .owed(s)
                    .iter()
                    .any(|o| o.change == Change::Created)
            })
            .cloned()
            .collect();
        self.ledger.record(Change::Created, &new);
    }

    /// Serials of the members that are owed anything.
    pub fn owing(&self) -> HashSet<String> {
        if !self.enabled() {
            return HashSet::new();
        }
        self.ledger.owing()
    }

    /// Number of changes still owed to some member (tests and diagnostics).
    pub fn pending(&self) -> usize {
        self.ledger.pending()
    }
}
