//! Finding member tokens: each provider's current instance, the tokens its slots show, and
//! binding a member to the token with its serial.

use super::member::Member;
use crate::bounded;
use crate::provider::{Instance, LoadError, Provider};
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A provider and its current instance (none while unreachable).
pub struct ProviderSlot {
    pub provider: Provider,
    pub instance: Mutex<Option<Arc<Instance>>>,
    pub last_error: Mutex<Option<LoadError>>,
    /// Instances taken out of service while a call was still inside them (a hung member).
    pub(crate) retired: Mutex<Vec<Arc<Instance>>>,
}

impl ProviderSlot {
    pub fn new(provider: Provider) -> Self {
        ProviderSlot {
            provider,
            instance: Mutex::new(None),
            last_error: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// Takes the current instance out of service and finalizes it, giving calls inside `drain`
    /// to return; one still busy is set aside for [`ProviderSlot::sweep_retired`].
    pub fn retire_current(&self, drain: Duration) {
        let old = self.instance.lock().take();
        if let Some(old) = old.filter(|old| !old.retire(drain)) {
            self.retired.lock().push(old);
        }
    }

    /// Finalizes set-aside instances whose calls have all returned. One the module handed out
    /// again as the current instance (a shared module) is just forgotten: finalizing it would
    /// take it from under the current one.
    pub fn sweep_retired(&self) {
        let current = self.instance.lock().clone();
        self.retired.lock().retain(|old| {
            if current.as_ref().is_some_and(|c| c.same_module(old)) {
                return false;
            }
            !old.retire(Duration::ZERO)
        });
    }
}

/// A token found in a provider's slot list.
#[derive(Clone)]
pub struct Found {
    pub provider: usize,
    pub instance: Arc<Instance>,
    pub slot: CK_SLOT_ID,
    pub token: CK_TOKEN_INFO,
}

pub fn trimmed_serial(token: &CK_TOKEN_INFO) -> String {
    super::group::unpad(&token.serialNumber)
}

/// Binds a member to a found token, reading its mechanisms.
pub fn bind(m: &Member, f: &Found) {
    let mechanisms = f.instance.mechanism_list(f.slot).unwrap_or_default();
    m.bring_up(f.instance.view(), f.slot, f.token, mechanisms);
}

type Tokens = Vec<(CK_SLOT_ID, CK_TOKEN_INFO)>;

/// Connects the providers in parallel and lists the tokens each one shows.
pub fn discover(providers: &[ProviderSlot], deadline: Instant) -> Vec<Found> {
    let pending: Vec<_> = providers
        .iter()
        .map(|p| {
            let provider = Provider::clone_config(&p.provider);
            bounded::start(move || -> Result<(Arc<Instance>, Tokens), LoadError> {
                let inst = provider.connect(deadline)?;
                let tokens = list_tokens(&inst);
                Ok((inst, tokens))
            })
        })
        .collect();
    let mut found = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.wait(left) {
            Ok(Ok((inst, tokens))) => {
                *providers[i].instance.lock() = Some(inst.clone());
                *providers[i].last_error.lock() = None;
                found.extend(tokens.into_iter().map(|(slot, token)| Found {
                    provider: i,
                    instance: inst.clone(),
                    slot,
                    token,
                }));
            }
            Ok(Err(e)) => *providers[i].last_error.lock() = Some(e),
            Err(_) => *providers[i].last_error.lock() = Some(LoadError::TimedOut),
        }
    }
    found
}

/// Tokens present in an instance's slots; a failing slot is skipped.
pub fn list_tokens(inst: &Instance) -> Vec<(CK_SLOT_ID, CK_TOKEN_INFO)> {
    let Ok(slots) = inst.slot_list(true) else {
        return Vec::new();
    };
    slots
        .into_iter()
        .filter_map(|s| inst.token_info(s).ok().map(|t| (s, t)))
        .collect()
}

/// Looks for a token serial in every provider. A provider instance that no live member uses
/// (`in_use` of its origin is false) is replaced by a new one first: a dead p11-kit-client
/// instance may never reconnect, or may reconnect on its own to a restarted server whose
/// handles alias the old ones.
pub fn find_member(
    providers: &[ProviderSlot],
    serial: &str,
    connect_timeout: Duration,
    in_use: impl Fn(u64) -> bool,
) -> Result<Found, CK_RV> {
    let mut last = CKR_TOKEN_NOT_PRESENT;
    for (i, p) in providers.iter().enumerate() {
        p.sweep_retired();
        let current = p.instance.lock().clone();
        if let Some(inst) = current.as_ref().filter(|inst| in_use(inst.origin)) {
            match in_instance(i, inst, serial) {
                Some(f) => return Ok(f),
                None => continue,
            }
        }
        // The old instance is finalized first, and only then a new one initialized: most modules
        // (SoftHSM among them) hand out one shared instance, which a late C_Finalize of the old
        // one would take away from the new. Calls still inside it get the connect timeout to
        // return; one that does not (a hung member) keeps the old instance alive, unfinalized.
        p.retire_current(connect_timeout);
        match p.provider.connect(Instant::now() + connect_timeout) {
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

fn in_instance(provider: usize, inst: &Arc<Instance>, serial: &str) -> Option<Found> {
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
