//! Finding member tokens: each provider's current instance, the tokens its slots show, and
//! binding a member to the token with its serial.

use super::member::Member;
use crate::bounded;
use crate::diag::diag;
use crate::provider::table::Fns;
use crate::provider::{Connected, Initializing, Instance, LoadError, Provider, ENV_GRACE};
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
    /// A connection attempt still inside C_Initialize (a stopped server): at most one per
    /// provider, however many recovery rounds pass.
    connecting: Mutex<Option<Initializing>>,
    /// A function table that is not initialized (its instance was finalized, or its
    /// C_Initialize failed), to initialize again instead of asking for a new one.
    spare: Mutex<Option<Fns>>,
    /// Set by [`discover`] when this provider got the very instance of an earlier provider (a
    /// module that keeps one instance per process, loaded twice from one path): it is never
    /// used, reconnected or finalized, since that would take the instance from the other.
    shares_with: std::sync::OnceLock<u32>,
}

/// How long a recovery waits for the calls inside an instance it replaces; one still inside
/// after that (a hung member) is set aside and finalized by a later round.
const DRAIN: Duration = Duration::from_millis(250);

impl ProviderSlot {
    pub fn new(provider: Provider) -> Self {
        ProviderSlot {
            provider,
            instance: Mutex::new(None),
            last_error: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            connecting: Mutex::new(None),
            spare: Mutex::new(None),
            shares_with: std::sync::OnceLock::new(),
        }
    }

    /// Takes the current instance out of service and finalizes it, giving calls inside `drain`
    /// to return; one still busy is set aside for [`ProviderSlot::sweep_retired`]. A finalized
    /// instance's table is kept to be initialized again.
    pub fn retire_current(&self, drain: Duration) {
        let old = self.instance.lock().take();
        if let Some(old) = old {
            if old.retire(drain) {
                *self.spare.lock() = Some(old.fns);
            } else {
                self.retired.lock().push(old);
            }
        }
    }

    /// The earlier provider whose module instance [`discover`] found this one was handed: this
    /// provider is not used.
    pub fn shares_with(&self) -> Option<u32> {
        self.shares_with.get().copied()
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

    /// A new current instance: the one a hanging C_Initialize has meanwhile made, else the
    /// spare table initialized again, else a fresh C_GetFunctionList. While a C_Initialize is
    /// still hanging no other is started (`LoadError::TimedOut`).
    pub fn reconnect(&self, connect_timeout: Duration) -> Result<Arc<Instance>, LoadError> {
        let deadline = Instant::now() + connect_timeout;
        let hanging = self.connecting.lock().take();
        let attempt = match hanging {
            Some(init) => match init.wait(Duration::ZERO) {
                Ok(Connected::Initializing(init)) => {
                    *self.connecting.lock() = Some(init);
                    return Err(LoadError::TimedOut);
                }
                Ok(ready) => {
                    self.retire_current(DRAIN);
                    Ok(ready)
                }
                // It failed on its own: its table is not initialized and can be used again.
                Err(_) => self.fresh(deadline),
            },
            None => {
                self.retire_current(DRAIN);
                self.fresh(deadline)
            }
        };
        self.take(attempt)
    }

    fn fresh(&self, deadline: Instant) -> Result<Connected, LoadError> {
        let spare = self.spare.lock().take();
        match spare {
            Some(fns) => self.provider.reinitialize(fns, deadline),
            None => self.provider.connect(deadline),
        }
    }

    /// Makes a connection attempt's instance current, or keeps what is needed to go on.
    fn take(&self, attempt: Result<Connected, LoadError>) -> Result<Arc<Instance>, LoadError> {
        match attempt {
            Ok(Connected::Ready(inst)) => {
                *self.instance.lock() = Some(inst.clone());
                *self.last_error.lock() = None;
                Ok(inst)
            }
            Ok(Connected::Initializing(init)) => {
                *self.connecting.lock() = Some(init);
                *self.last_error.lock() = Some(LoadError::TimedOut);
                Err(LoadError::TimedOut)
            }
            Err(e) => {
                *self.last_error.lock() = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Everything this provider holds, for C_Finalize: current, set-aside and still
    /// initializing instances (the last ones are waited for by `Ha::shutdown` like the others).
    pub(crate) fn take_all(&self) -> (Vec<Arc<Instance>>, Option<Initializing>) {
        let mut all = std::mem::take(&mut *self.retired.lock());
        all.extend(self.instance.lock().take());
        (all, self.connecting.lock().take())
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

/// Connects the providers in parallel and lists the tokens each one shows.
///
/// Two providers can get one and the same module instance: a module that keeps one instance
/// per process (SoftHSM, most HSM vendors' libraries) configured twice with the same path. Only
/// one `ProviderNNEnv` then took effect and the other provider's tokens are never seen; worse,
/// replacing the second provider's "unused" instance during a recovery would finalize the
/// first one's under its members. Such a provider is reported (on stderr, naming both and what
/// to do) and left out for the life of this initialization.
pub fn discover(providers: &[ProviderSlot], deadline: Instant) -> Vec<Found> {
    let file = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let files: Vec<_> = providers
        .iter()
        .map(|p| file(&p.provider.library))
        .collect();
    let mut attempts: Vec<Attempt> = Vec::with_capacity(providers.len());
    for (i, p) in providers.iter().enumerate() {
        // A module with one instance per process takes the ProviderNNEnv of whichever provider
        // initializes it first. Started side by side, that was a race: either member of a
        // SoftHSM pair could be the one left out. The lower number now goes first, so the later
        // provider is the one reported unused, as the message says. A C_Initialize still
        // running after the grace (a stopped server behind p11-kit-client, which makes an
        // instance per provider anyway) holds the next one up no longer than that.
        if let Some(j) = files[..i].iter().rposition(|f| *f == files[i]) {
            let left = deadline.saturating_duration_since(Instant::now());
            attempts[j].wait(ENV_GRACE.saturating_mul(2).min(left));
        }
        let provider = Provider::clone_config(&p.provider);
        attempts.push(Attempt::Running(bounded::start(move || {
            provider.connect(deadline)
        })));
    }
    let mut found = Vec::new();
    for (i, mut a) in attempts.into_iter().enumerate() {
        // connect() gives up at the deadline itself; the margin is for it to say so.
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
        a.wait(left);
        let attempt = match a {
            Attempt::Done(r) => r,
            Attempt::Running(_) => Err(LoadError::TimedOut),
        };
        if let Ok(Connected::Ready(inst)) = &attempt {
            if let Some(first) = providers[..i].iter().find(|q| {
                q.instance
                    .lock()
                    .as_ref()
                    .is_some_and(|other| other.same_module(inst))
            }) {
                report_shared(first, &providers[i]);
                let _ = providers[i].shares_with.set(first.provider.index);
                continue;
            }
        }
        if let Ok(inst) = providers[i].take(attempt) {
            found.extend(list_tokens(&inst).into_iter().map(|(slot, token)| Found {
                provider: i,
                instance: inst.clone(),
                slot,
                token,
            }));
        }
    }
    found
}

/// One provider's connection attempt in [`discover`].
enum Attempt {
    Running(bounded::Pending<Result<Connected, LoadError>>),
    Done(Result<Connected, LoadError>),
}

impl Attempt {
    /// Waits up to `wait` for a running attempt to finish.
    fn wait(&mut self, wait: Duration) {
        let taken = std::mem::replace(self, Attempt::Done(Err(LoadError::TimedOut)));
        *self = match taken {
            Attempt::Running(p) => match p.wait(wait) {
                Ok(r) => Attempt::Done(r),
                Err(bounded::Unfinished::Running(p)) => Attempt::Running(p),
                Err(bounded::Unfinished::Panicked) => Attempt::Done(Err(LoadError::TimedOut)),
            },
            done => done,
        };
    }
}

fn report_shared(first: &ProviderSlot, second: &ProviderSlot) {
    let (a, b) = (first.provider.index, second.provider.index);
    diag!(
        Error,
        "Provider{b:02} is not used: {} handed it the same module instance as Provider{a:02} \
         (this module keeps one instance per process, so only one of the two ProviderNNEnv \
         settings took effect and the other provider's tokens are not seen). Give each such \
         provider a private copy of the library, e.g. cp {} /usr/local/lib/p11ha/provider{b:02}.so \
         and set Provider{b:02}Library to the copy. p11-kit-client.so needs no copy: it makes a \
         new instance for every provider.",
        second.provider.library.display(),
        second.provider.library.display()
    );
}

/// What is true of a provider left out because it was handed `first`'s module instance, and
/// what to do: said wherever a member it might show is reported missing (the HA log, `p11ha
/// listgroups`), so that member is not taken for one that a recovery can bring back.
pub fn unused_provider_text(unused: u32, first: u32, library: &std::path::Path) -> String {
    format!(
        "Provider{unused:02} is not used: it duplicates Provider{first:02}'s library file {lib} \
         (that module keeps one instance per process), so the tokens only Provider{unused:02} \
         would show are not seen. Give Provider{unused:02} a private copy of the library (cp \
         {lib} /usr/local/lib/p11ha/provider{unused:02}.so) and set Provider{unused:02}Library \
         to the copy",
        lib = library.display()
    )
}

/// [`unused_provider_text`] for every provider [`discover`] left out; `None` when all are used.
pub fn unused_providers_note(providers: &[ProviderSlot]) -> Option<String> {
    let notes: Vec<String> = providers
        .iter()
        .filter_map(|p| {
            let first = p.shares_with()?;
            Some(unused_provider_text(
                p.provider.index,
                first,
                &p.provider.library,
            ))
        })
        .collect();
    (!notes.is_empty()).then(|| notes.join(". "))
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
        if p.shares_with().is_some() {
            continue;
        }
        p.sweep_retired();
        let current = p.instance.lock().clone();
        if let Some(inst) = current.as_ref().filter(|inst| in_use(inst.origin)) {
            match in_instance(i, inst, serial) {
                Some(f) => return Ok(f),
                None => continue,
            }
        }
        // An instance no member uses is replaced: finalized first, and only then initialized
        // again, since most modules (SoftHSM among them) hand out one shared instance, which a
        // late C_Finalize of the old one would take away from the new.
        match p.reconnect(connect_timeout) {
            Ok(inst) => {
                if let Some(f) = in_instance(i, &inst, serial) {
                    return Ok(f);
                }
            }
            Err(e) => last = e.rv(),
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
