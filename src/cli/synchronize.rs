//! `p11ha synchronize`: runs the library in this process (the same code applications load),
//! logs into the group and works on its members:
//!
//! - (no option, user PIN from `P11HA_PIN`): settles what members are owed, then copies every
//!   token object to every member that lacks it; exits non-zero when an object could not be
//!   copied or a member was skipped, and says which.
//! - `-init-cloning-key` (SO PIN from `P11HA_SO_PIN`): creates the cloning keys on the members
//!   that have none (every member of a new group); with `P11HA_PIN` too, then copies every object
//!   to the members it provisioned.
//! - `-show-owed` (`P11HA_PIN`): what each member is owed, by label and CKA_ID.
//! - `-prune` (`P11HA_PIN`): drops records about members no longer in the group.
//! - `-check` (`P11HA_PIN`): which key classes can travel between which members.
//!
//! [`after_addmember`] gives a member added to a synchronized group its cloning keys and objects.

/// This verb's results keep (CK_RV, message) errors; `run` converts them for the CLI.
type VerbResult = Result<Vec<String>, (CK_RV, String)>;
use crate::confedit::locate;
use crate::config::{self, GroupConfig};
use crate::ffi::sync_api;
use crate::ha::sync::provision::RV_CLONING_KEY_EXISTS;
use crate::rv::rv_name;
use cryptoki_sys::*;
use zeroize::Zeroizing;

const USAGE: &str =
    "synchronize -group <label> [-init-cloning-key | -show-owed | -prune | -check | -enable | -disable] \
                     (PIN from P11HA_PIN, SO PIN from P11HA_SO_PIN)";

fn bad(msg: impl Into<String>) -> (CK_RV, String) {
    (CKR_ARGUMENTS_BAD, msg.into())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Copy,
    Init,
    ShowOwed,
    Prune,
    Check,
    /// `-enable` / `-disable`: HASynchronize for the group, as Luna's `synchronize -enable`.
    Switch(bool),
}

/// The `synchronize` verb.
pub fn run(args: &[String]) -> super::VerbResult {
    run_verb(args).map_err(Into::into)
}

fn run_verb(args: &[String]) -> VerbResult {
    let mut label = None;
    let mut action = Action::Copy;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let chosen = match a.to_ascii_lowercase().as_str() {
            "-group" => {
                label = Some(it.next().ok_or_else(|| {
                    bad(format!(
                        "synchronize: -group needs a label\nusage: p11ha {USAGE}"
                    ))
                })?);
                continue;
            }
            "-init-cloning-key" => Action::Init,
            "-show-owed" => Action::ShowOwed,
            "-prune" => Action::Prune,
            "-check" => Action::Check,
            "-enable" => Action::Switch(true),
            "-disable" => Action::Switch(false),
            _ => {
                return Err(bad(format!(
                    "synchronize: unknown option {a:?}\nusage: p11ha {USAGE}"
                )))
            }
        };
        if action != Action::Copy && action != chosen {
            return Err(bad(format!(
                "synchronize: one of -init-cloning-key, -show-owed, -prune, -check, -enable, -disable\nusage: p11ha {USAGE}"
            )));
        }
        action = chosen;
    }
    let label = label.ok_or_else(|| {
        bad(format!(
            "synchronize: expected -group <label>\nusage: p11ha {USAGE}"
        ))
    })?;
    if let Action::Switch(on) = action {
        return super::set_synchronize(label, on).map_err(|e| (e.rv, e.message));
    }
    let group = find_group(label)?;
    if !group.synchronize {
        return Err(bad(format!(
            "synchronize: HA group {label} does not synchronize (HASynchronize {label} = 1 turns it on)"
        )));
    }
    let slot = CK_SLOT_ID::from(group.index);
    if action == Action::Init {
        return init(label, slot, &group);
    }
    let pin =
        pin("P11HA_PIN")?.ok_or_else(|| bad("synchronize: set P11HA_PIN to the group's PIN"))?;
    let lib = InProcess::start()?;
    let _ = sync_api::wait_all_up(slot, settle_wait());
    lib.logged_in(slot, CKU_USER, &pin, || match action {
        Action::ShowOwed => show_owed(label, slot),
        Action::Prune => {
            let n = sync_api::prune(slot).map_err(|rv| failed(label, rv))?;
            Ok(vec![format!(
                "        Dropped {n} records about members no longer in HA group {label}."
            )])
        }
        Action::Check => check(label, slot),
        _ => copy(label, slot),
    })
}

/// How long a run waits for members its C_Initialize missed (the management thread recovers
/// them every AutoReconnectInterval): a member really down is reported after this.
fn settle_wait() -> std::time::Duration {
    let interval = config::load(&locate())
        .map(|c| c.recovery.interval)
        .unwrap_or(std::time::Duration::from_secs(1));
    (interval * 3).min(std::time::Duration::from_secs(30))
}

fn failed(label: &str, rv: CK_RV) -> (CK_RV, String) {
    (
        rv,
        format!("synchronize: group {label} failed: {}", rv_name(rv)),
    )
}

fn find_group(label: &str) -> Result<GroupConfig, (CK_RV, String)> {
    let file = locate();
    let cfg = config::load(&file).map_err(|e| (CKR_FUNCTION_FAILED, e.to_string()))?;
    cfg.groups
        .into_iter()
        .find(|g| g.label == label)
        .ok_or_else(|| {
            bad(format!(
                "synchronize: no HA group labelled {label:?} in {}",
                file.display()
            ))
        })
}

fn pin(var: &str) -> Result<Option<Zeroizing<Vec<u8>>>, (CK_RV, String)> {
    match std::env::var(var) {
        Ok(p) => Ok(Some(Zeroizing::new(p.into_bytes()))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(_) => Err(bad(format!("synchronize: {var} is not valid UTF-8"))),
    }
}

/// Everything everywhere; the report, or an error saying what is not synchronized.
fn copy(label: &str, slot: CK_SLOT_ID) -> VerbResult {
    let r = sync_api::synchronize(slot).map_err(|rv| failed(label, rv))?;
    let mut lines = vec![format!(
        "        Synchronized HA group {label}: {} objects copied.",
        r.copied.copied
    )];
    if r.complete() {
        return Ok(lines);
    }
    if r.copied.failed > 0 {
        lines.push(format!(
            "        {} objects could not be copied; the first: {}.",
            r.copied.failed,
            r.copied.first.as_deref().unwrap_or("(no reason given)")
        ));
    }
    for (serial, why) in &r.skipped {
        lines.push(format!("        Member {serial} was skipped: {why}."));
    }
    lines.push(format!(
        "synchronize: HA group {label} is not fully synchronized"
    ));
    Err((CKR_FUNCTION_FAILED, lines.join("\n")))
}

fn show_owed(label: &str, slot: CK_SLOT_ID) -> VerbResult {
    let r = sync_api::show_owed(slot).map_err(|rv| failed(label, rv))?;
    let mut lines = Vec::new();
    for (serial, up, owed) in &r.members {
        let state = if *up { "up" } else { "down" };
        if owed.is_empty() {
            lines.push(format!("        Member {serial} ({state}): owed nothing."));
            continue;
        }
        lines.push(format!(
            "        Member {serial} ({state}): owed {} changes:",
            owed.len()
        ));
        lines.extend(owed.iter().map(|o| format!("            {o}")));
    }
    if !r.orphans.is_empty() {
        lines.push(format!(
            "        {} records about members no longer in HA group {label} (drop them with -prune):",
            r.orphans.len()
        ));
        lines.extend(
            r.orphans
                .iter()
                .map(|(s, o)| format!("            {s}: {o}")),
        );
    }
    if r.blind {
        lines.push(
            "        Some member's records could not be read: what it holds is not shown.".into(),
        );
    }
    Ok(lines)
}

fn check(label: &str, slot: CK_SLOT_ID) -> VerbResult {
    let pairs = sync_api::check(slot).map_err(|rv| failed(label, rv))?;
    let mut lines = vec![format!(
        "        HA group {label}: data objects, certificates and public keys travel between every pair (by value)."
    )];
    let say = |r: &Result<&str, String>| match r {
        Ok(carrier) => format!("yes ({carrier})"),
        Err(why) => format!("no ({why})"),
    };
    for p in &pairs {
        lines.push(format!(
            "        {} -> {}: secret keys {}; private keys {}.",
            p.from,
            p.to,
            say(&p.secret),
            say(&p.private)
        ));
    }
    Ok(lines)
}

/// `-init-cloning-key`: the SO provisions the members that have no cloning keys; with the user
/// PIN too, every object is then copied to the members provisioned.
fn init(label: &str, slot: CK_SLOT_ID, group: &GroupConfig) -> VerbResult {
    let so = pin("P11HA_SO_PIN")?
        .ok_or_else(|| bad("synchronize: set P11HA_SO_PIN to the members' SO PIN"))?;
    let user = pin("P11HA_PIN")?;
    provision(label, slot, group, &so, user.as_ref().map(|p| p.as_slice()))
}

/// The members of `group` without cloning keys get them; with `user`, then every object.
fn provision(
    label: &str,
    slot: CK_SLOT_ID,
    group: &GroupConfig,
    so: &[u8],
    user: Option<&[u8]>,
) -> VerbResult {
    let lib = InProcess::start()?;
    let _ = sync_api::wait_all_up(slot, settle_wait());
    let before = lib.logged_in(slot, CKU_SO, so, || {
        sync_api::init_cloning_key(slot).map_err(|rv| match rv {
            RV_CLONING_KEY_EXISTS => (
                rv,
                format!(
                    "synchronize: every member of group {label} already has cloning keys; they are never overwritten"
                ),
            ),
            rv => failed(label, rv),
        })
    })?;
    let n = before.len();
    let members = group.members.len() + group.standby.len();
    let mut lines = Vec::new();
    if n == members {
        lines.push(format!(
            "        Cloning key created on {n} members of HA group {label}."
        ));
        return Ok(lines);
    }
    lines.push(format!(
        "        Cloning keys provisioned on {n} members of HA group {label}: {}.",
        before.join(", ")
    ));
    let Some(user) = user else {
        lines.push(format!(
            "        They are owed every object of the group: the next process logged in to it copies them (or run P11HA_PIN=... p11ha synchronize -group {label})."
        ));
        return Ok(lines);
    };
    lib.logged_in(slot, CKU_USER, user, || {
        for serial in &before {
            let o = sync_api::reintroduce(slot, serial).map_err(|rv| failed(label, rv))?;
            if o.busy {
                lines.push(format!(
                    "        {serial} is being caught up by another process."
                ));
                continue;
            }
            lines.push(format!(
                "        {} objects copied to {serial}.",
                o.copied.copied
            ));
            if o.copied.failed > 0 {
                return Err((
                    CKR_FUNCTION_FAILED,
                    format!(
                        "{}\n        {} objects could not be copied to {serial}; the first: {}.",
                        lines.join("\n"),
                        o.copied.failed,
                        o.copied.first.as_deref().unwrap_or("(no reason given)")
                    ),
                ));
            }
        }
        Ok(())
    })?;
    Ok(lines)
}

/// `p11ha addmember` on a synchronized group: the new member gets its cloning keys from the
/// others when `P11HA_SO_PIN` is set (and every object when `P11HA_PIN` is too); otherwise a
/// line says how. `lines` are addmember's own.
pub fn after_addmember(args: &[String], mut lines: Vec<String>) -> VerbResult {
    let value = |name: &str| {
        let i = args.iter().position(|a| a.eq_ignore_ascii_case(name))?;
        args.get(i + 1).cloned()
    };
    let Some(label) = value("-group") else {
        return Ok(lines);
    };
    let Ok(group) = find_group(&label) else {
        return Ok(lines);
    };
    if !group.synchronize {
        return Ok(lines);
    }
    let serial = value("-serialnumber").unwrap_or_else(|| "the new member".into());
    let Some(so) = pin("P11HA_SO_PIN")? else {
        lines.push(format!(
            "        HA group {label} synchronizes: give {serial} its cloning keys with P11HA_SO_PIN=<SO PIN> p11ha synchronize -group {label} -init-cloning-key"
        ));
        return Ok(lines);
    };
    let user = pin("P11HA_PIN")?;
    let slot = CK_SLOT_ID::from(group.index);
    lines.extend(provision(
        &label,
        slot,
        &group,
        &so,
        user.as_ref().map(|p| p.as_slice()),
    )?);
    Ok(lines)
}

/// The library, initialized in this process through its own function table.
struct InProcess {
    f: &'static CK_FUNCTION_LIST,
}

impl InProcess {
    fn start() -> Result<Self, (CK_RV, String)> {
        let started = (|| {
            let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
            // SAFETY: the library's own entry points, called as a PKCS#11 application would.
            unsafe {
                rv(crate::ffi::table::C_GetFunctionList(&mut list))?;
                let f = list.as_ref().ok_or(CKR_FUNCTION_FAILED)?;
                rv(f.C_Initialize.ok_or(CKR_FUNCTION_FAILED)?(
                    std::ptr::null_mut(),
                ))?;
                Ok(InProcess { f })
            }
        })();
        started.map_err(|rv| {
            (
                rv,
                format!(
                    "synchronize: the library did not initialize: {}",
                    rv_name(rv)
                ),
            )
        })
    }

    /// Runs `body` with a session on `slot` logged in as `user`; logs out and closes after.
    fn logged_in<T>(
        &self,
        slot: CK_SLOT_ID,
        user: CK_USER_TYPE,
        pin: &[u8],
        body: impl FnOnce() -> Result<T, (CK_RV, String)>,
    ) -> Result<T, (CK_RV, String)> {
        let f = self.f;
        let mut h: CK_SESSION_HANDLE = 0;
        let who = if user == CKU_SO { "the SO" } else { "the user" };
        // SAFETY: valid pointers to locals; the session is closed before returning.
        unsafe {
            f.C_OpenSession
                .ok_or(CKR_FUNCTION_FAILED)
                .and_then(|open| {
                    rv(open(
                        slot,
                        CKF_SERIAL_SESSION | CKF_RW_SESSION,
                        std::ptr::null_mut(),
                        None,
                        &mut h,
                    ))
                })
                .map_err(|rv| (rv, format!("synchronize: no session: {}", rv_name(rv))))?;
            let result = match f
                .C_Login
                .map(|l| l(h, user, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG))
            {
                Some(CKR_OK) => {
                    let r = body();
                    if let Some(logout) = f.C_Logout {
                        logout(h);
                    }
                    r
                }
                Some(rv) => Err((
                    rv,
                    format!("synchronize: login as {who} refused: {}", rv_name(rv)),
                )),
                None => Err((CKR_FUNCTION_FAILED, "synchronize: no C_Login".into())),
            };
            if let Some(close) = f.C_CloseSession {
                close(h);
            }
            result
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(fin) = self.f.C_Finalize {
            // SAFETY: initialized in `start`.
            unsafe { fin(std::ptr::null_mut()) };
        }
    }
}

fn rv(r: CK_RV) -> Result<(), CK_RV> {
    if r == CKR_OK {
        Ok(())
    } else {
        Err(r)
    }
}
