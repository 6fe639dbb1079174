//! The initialized library's state: providers, groups and slots, and the session registry.
//! Built by C_Initialize (through `ha::runtime`), torn down by C_Finalize.

use super::discovery::{bind, discover, trimmed_serial, unused_providers_note, ProviderSlot};
use super::group::Group;
use super::member::Member;
use super::session::{CkResult, Session};
use crate::bounded;
use crate::config::HaConfig;
use crate::diag::diag;
use crate::halog::HaLog;
use crate::provider::{Connected, Provider};
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Session handles are unique in the process and never reused.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

pub struct Ha {
    pub config: HaConfig,
    pub log: HaLog,
    pub providers: Vec<ProviderSlot>,
    /// In slot-list order: HA groups first, then passed-through member slots (HAOnly = 0).
    pub groups: Vec<Arc<Group>>,
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Session>>>,
    /// Set by C_Finalize: a recovery round still running stops at its next step.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// The last configuration re-read error, reported once.
    pub(crate) reread_error: Mutex<Option<String>>,
}

/// Slot IDs of passed-through member slots: provider number in the high half, so they never
/// collide with each other or with group slots (which are the group numbers NN).
pub fn passthrough_slot_id(provider_index: u32, slot: CK_SLOT_ID) -> CK_SLOT_ID {
    ((CK_SLOT_ID::from(provider_index) + 1) << 32) | (slot & 0xffff_ffff)
}

impl Ha {
    /// Connects every provider in parallel, all bounded by one ConnectTimeout, and binds the
    /// members that answered. Unreachable members start down; the group starts degraded.
    pub fn start(config: HaConfig, log: HaLog) -> Arc<Ha> {
        let deadline = Instant::now() + config.connect_timeout;
        let providers: Vec<ProviderSlot> = config
            .providers
            .iter()
            .map(|p| ProviderSlot::new(Provider::new(p, config.receive_timeout)))
            .collect();
        let found = discover(&providers, deadline);

        let mut groups = Vec::new();
        for g in &config.groups {
            let members: Vec<Arc<Member>> = g
                .members
                .iter()
                .map(|s| (s, false))
                .chain(g.standby.iter().map(|s| (s, true)))
                .map(|(s, standby)| Arc::new(Member::new(s.clone(), standby)))
                .collect();
            let mut group = Group::new(
                CK_SLOT_ID::from(g.index),
                g.label.clone(),
                g.serial.clone(),
                false,
                members,
                config.recovery.mode,
                log.clone(),
            );
            group.failover_on_deactivation = config.failover_on_deactivation;
            group.audit = crate::audit::Audit::open(&config, &group.serial, &log);
            group.replay_limit =
                usize::try_from(config.multipart_replay_limit).unwrap_or(usize::MAX);
            for m in group.members().iter() {
                match found.iter().find(|f| trimmed_serial(&f.token) == m.serial) {
                    Some(f) if !group.accepts_kind(&f.token) => refuse_kind(&group, m),
                    Some(f) => {
                        bind(m, f);
                    }
                    None => {
                        m.mark_unreachable(CKR_DEVICE_ERROR);
                        // Not "a recovery will bring it back" when it may sit behind a
                        // provider that is never used.
                        match unused_providers_note(&providers) {
                            Some(note) => log.config_error(
                                &group.serial,
                                &format!(
                                    "member: {} was not found in the providers in use. {note}",
                                    m.serial
                                ),
                            ),
                            None => log.drop_unrecoverable(&group.serial, &m.serial),
                        }
                    }
                }
            }
            *group.manual_recovery.lock() = g.manual_recovery;
            group.sync.set_enabled(g.synchronize);
            if g.synchronize {
                open_journal(&mut group, config.journal_dir.as_deref());
            }
            log_auth_kind(&group);
            groups.push(Arc::new(group));
        }
        if !config.ha_only {
            for f in &found {
                let p = &providers[f.provider].provider;
                let serial = trimmed_serial(&f.token);
                let m = Arc::new(Member::new(serial.clone(), false));
                bind(&m, f);
                groups.push(Arc::new(Group::new(
                    passthrough_slot_id(p.index, f.slot),
                    super::group::unpad(&f.token.label),
                    serial,
                    true,
                    vec![m],
                    config.recovery.mode,
                    HaLog::disabled(),
                )));
            }
        }
        Arc::new(Ha {
            config,
            log,
            providers,
            groups,
            sessions: RwLock::new(HashMap::new()),
            stopping: Default::default(),
            reread_error: Mutex::new(None),
        })
    }

    /// The configured HA groups (not passed-through member slots).
    pub fn ha_groups(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.iter().filter(|g| !g.passthrough)
    }

    /// Whether a member of an HA group that is up is bound to this module instance. Passed-through
    /// member slots (HAOnly = 0) do not count: they follow their provider's instance
    /// (`recovery::poll`), so they never keep a dead one from being replaced.
    pub fn instance_in_use(&self, origin: u64) -> bool {
        self.ha_groups()
            .flat_map(|g| g.members().as_ref().clone())
            .any(|m| m.binding().is_some_and(|b| b.instance.origin == origin))
    }

    pub fn slot_ids(&self) -> Vec<CK_SLOT_ID> {
        self.groups.iter().map(|g| g.slot_id).collect()
    }

    pub fn group(&self, slot: CK_SLOT_ID) -> CkResult<&Arc<Group>> {
        self.groups
            .iter()
            .find(|g| g.slot_id == slot)
            .ok_or(CKR_SLOT_ID_INVALID)
    }

    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> CkResult<CK_SESSION_HANDLE> {
        let group = self.group(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        if flags & CKF_RW_SESSION == 0 && group.login().is_some_and(|l| l.user == CKU_SO) {
            return Err(CKR_SESSION_READ_WRITE_SO_EXISTS);
        }
        let handle = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        group.session_opened(flags & CKF_RW_SESSION == 0);
        let session = Arc::new(Session::new(handle, group.clone(), flags));
        self.sessions.write().insert(handle, session);
        Ok(handle)
    }

    pub fn session(&self, handle: CK_SESSION_HANDLE) -> CkResult<Arc<Session>> {
        self.sessions
            .read()
            .get(&handle)
            .cloned()
            .ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    pub fn close_session(&self, handle: CK_SESSION_HANDLE) -> CkResult<()> {
        let session = self
            .sessions
            .write()
            .remove(&handle)
            .ok_or(CKR_SESSION_HANDLE_INVALID)?;
        session.close();
        session.group.session_closed(session.is_read_only());
        Ok(())
    }

    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> CkResult<()> {
        self.group(slot)?;
        let handles: Vec<_> = self
            .sessions
            .read()
            .values()
            .filter(|s| s.group.slot_id == slot)
            .map(|s| s.handle)
            .collect();
        for h in handles {
            // A concurrent close may have taken it already.
            let _ = self.close_session(h);
        }
        Ok(())
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Closes every session and finalizes every instance, each call bounded.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let drain = self.config.connect_timeout;
        crate::audit::finalizing(self);
        let all: Vec<_> = self.sessions.write().drain().map(|(_, s)| s).collect();
        for s in all {
            s.close();
            s.group.session_closed(s.is_read_only());
        }
        let deadline = Instant::now() + self.config.connect_timeout;
        let pending: Vec<_> = self
            .providers
            .iter()
            .flat_map(|p| {
                let (instances, initializing) = p.take_all();
                let finish = initializing.map(move |init| {
                    bounded::start(move || {
                        let left = deadline.saturating_duration_since(Instant::now());
                        // One that comes back now is finalized like the others; one that
                        // still hangs cannot be (C_Finalize during C_Initialize): it is left.
                        if let Ok(Connected::Ready(inst)) = init.wait(left) {
                            inst.retire(Duration::ZERO);
                        }
                        true
                    })
                });
                instances
                    .into_iter()
                    .map(|inst| bounded::start(move || inst.retire(drain)))
                    .chain(finish)
                    .collect::<Vec<_>>()
            })
            .collect();
        for p in pending {
            let _ = p.wait(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// Refuses a member whose authentication kind (PED or password) is not the group's: it can
/// never serve this group, so it is not retried.
pub fn refuse_kind(group: &Group, m: &Member) {
    m.mark_unreachable(CKR_FUNCTION_REJECTED);
    m.set_auto_recovery(false);
    group.log.unrecoverable(
        &group.serial,
        m.health().attempts + 1,
        &m.serial,
        CKR_FUNCTION_REJECTED,
    );
}

/// Keeps the records no member could take in the group's journal file (`haJournalPath`); without
/// one they stay in this process (the members hold every other record).
fn open_journal(group: &mut Group, dir: Option<&std::path::Path>) {
    let Some(dir) = dir else { return };
    match super::journal::Journal::open(dir, &group.serial) {
        Ok(j) => group.sync.use_journal(j),
        Err(e) => diag!(
            Warn,
            "group {}: journal in {}: {e}; records no member could take are kept in this \
             process only",
            group.label,
            dir.display()
        ),
    }
}

/// Logs whether the group is password or PED (protected authentication path) based.
fn log_auth_kind(group: &Group) {
    match group.is_ped() {
        Some(true) => group.log.configured_as_ped(&group.serial),
        Some(false) => group.log.configured_as_password(&group.serial),
        None => {}
    }
}
