//! `listgroups` and member checks: the live view, asked of the library through its own C ABI
//! (C_Initialize, p11ha_group_status, C_Finalize) in this process, not guessed from the file.

use super::{failed, parse, CliError, VerbResult};
use crate::confedit::locate;
use crate::config::{self, GroupConfig, HaConfig, RecoveryMode};
use crate::ffi::ca::{p11ha_group_status, P11haGroupStatus, P11HA_MAX_MEMBERS};
use crate::ffi::table::C_GetFunctionList;
use crate::ha::discovery::{list_tokens, trimmed_serial, unused_provider_text};
use crate::provider::{Connected, Provider};
use crate::rv::rv_name;
use cryptoki_sys::*;
use std::ffi::CStr;
use std::time::Instant;

struct MemberView {
    serial: String,
    standby: bool,
    alive: bool,
    last_error: CK_RV,
    attempts: u64,
}

/// Initializes the library in this process and reads every group's member states.
fn live_view(cfg: &HaConfig) -> Result<Vec<Vec<MemberView>>, CliError> {
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: our own exported functions, called as a C application would.
    unsafe {
        let rv = C_GetFunctionList(&mut list);
        let f = list
            .as_ref()
            .filter(|_| rv == CKR_OK)
            .ok_or_else(|| failed("no function list"))?;
        let rv = f
            .C_Initialize
            .map_or(CKR_GENERAL_ERROR, |init| init(std::ptr::null_mut()));
        if rv != CKR_OK {
            return Err(CliError {
                rv,
                ..failed(format!("the library did not initialize ({})", rv_name(rv)))
            });
        }
        let mut out = Vec::new();
        for g in &cfg.groups {
            let mut st: Box<P11haGroupStatus> = Box::new(std::mem::zeroed());
            let rv = p11ha_group_status(CK_SLOT_ID::from(g.index), &mut *st);
            let mut members = Vec::new();
            if rv == CKR_OK {
                let n = usize::try_from(st.member_count)
                    .unwrap_or(0)
                    .min(P11HA_MAX_MEMBERS);
                for m in &st.members[..n] {
                    members.push(MemberView {
                        serial: CStr::from_ptr(m.serial.as_ptr())
                            .to_string_lossy()
                            .into_owned(),
                        standby: m.standby != 0,
                        alive: m.alive != 0,
                        last_error: m.last_error,
                        attempts: m.recovery_attempts,
                    });
                }
            }
            out.push(members);
        }
        if let Some(fin) = f.C_Finalize {
            fin(std::ptr::null_mut());
        }
        Ok(out)
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn retries(n: i64) -> String {
    match n {
        -1 => "unlimited".into(),
        0 => "0 (auto recovery off)".into(),
        n => n.to_string(),
    }
}

/// `listgroups [-json]`: every group with its settings and each member's live state.
pub fn listgroups(args: &[String]) -> VerbResult {
    let o = parse("listgroups", args)?;
    let cfg = config::load(&locate()).map_err(|e| failed(e.to_string()))?;
    let live = live_view(&cfg)?;
    // A member that is down may be one that no provider shows at all, or one behind a
    // provider the library does not use: say so, not its error.
    let scan = if live.iter().flatten().any(|m| !m.alive) {
        scan(&cfg)
    } else {
        Scan::default()
    };
    let degraded: Vec<&str> = cfg
        .groups
        .iter()
        .zip(&live)
        .filter(|(_, ms)| ms.iter().any(|m| !m.alive))
        .map(|(g, _)| g.label.as_str())
        .collect();
    let out = if o.flag("json") {
        json(&cfg, &live, &scan)
    } else {
        text(&cfg, &live, &scan)
    };
    if o.flag("check") && !degraded.is_empty() {
        return Err(CliError {
            rv: CKR_DEVICE_ERROR,
            message: format!("listgroups: degraded: {}", degraded.join(", ")),
            exit: 3,
            output: out,
        });
    }
    Ok(out)
}

fn mode_and_log(cfg: &HaConfig) -> (&'static str, String) {
    let mode = match cfg.recovery.mode {
        RecoveryMode::Basic => "activeBasic",
        RecoveryMode::Enhanced => "activeEnhanced",
    };
    let logging = match (&cfg.log.path, cfg.log.enabled) {
        (Some(p), true) => format!("enabled ({})", p.join("haErrorLog.txt").display()),
        _ => "disabled".into(),
    };
    (mode, logging)
}

fn json(cfg: &HaConfig, live: &[Vec<MemberView>], scan: &Scan) -> Vec<String> {
    let found = |m: &MemberView| m.alive || scan.shown.contains(&m.serial);
    let (mode, logging) = mode_and_log(cfg);
    {
        let groups: Vec<String> = cfg
            .groups
            .iter()
            .zip(live)
            .map(|(g, ms)| {
                let down = ms.iter().filter(|m| !m.alive).count();
                let members: Vec<String> = ms
                    .iter()
                    .map(|m| {
                        format!(
                            "{{\"serial\":{},\"standby\":{},\"alive\":{},\"found\":{},\"unused_provider\":{},\"last_error\":{},\"last_error_name\":{},\"recovery_attempts\":{}}}",
                            json_str(&m.serial),
                            m.standby,
                            m.alive,
                            found(m),
                            unused_json(scan, m),
                            m.last_error,
                            json_str(if m.last_error == 0 { "CKR_OK" } else { rv_name(m.last_error) }),
                            m.attempts
                        )
                    })
                    .collect();
                format!(
                    "{{\"label\":{},\"serial\":{},\"slot\":{},\"synchronize\":{},\"degraded\":{},\"members_down\":{down},\"members\":[{}]}}",
                    json_str(&g.label),
                    json_str(&g.serial),
                    g.index,
                    g.synchronize,
                    down > 0,
                    members.join(",")
                )
            })
            .collect();
        vec![format!(
            "{{\"auto_recovery\":{},\"recovery_mode\":{},\"max_retries\":{},\"interval_s\":{},\"ha_log\":{},\"ha_only\":{},\"groups\":[{}]}}",
            cfg.recovery.attempts != 0,
            json_str(mode),
            cfg.recovery.attempts,
            cfg.recovery.interval.as_secs(),
            json_str(&logging),
            cfg.ha_only,
            groups.join(",")
        )]
    }
}

/// `null`, or the provider the library leaves out behind which a down member sits.
fn unused_json(scan: &Scan, m: &MemberView) -> String {
    match behind_unused(scan, m) {
        None => "null".into(),
        Some(u) => format!(
            "{{\"provider\":{},\"duplicates\":{},\"note\":{}}}",
            u.index,
            u.first,
            json_str(&unused_provider_text(u.index, u.first, &u.library))
        ),
    }
}

/// A down member that no provider in use shows but one the library leaves out does.
fn behind_unused<'s>(scan: &'s Scan, m: &MemberView) -> Option<&'s Unused> {
    if m.alive || scan.shown.contains(&m.serial) {
        return None;
    }
    scan.unused_for(&m.serial)
}

fn text(cfg: &HaConfig, live: &[Vec<MemberView>], scan: &Scan) -> Vec<String> {
    let found = |m: &MemberView| m.alive || scan.shown.contains(&m.serial);
    let (mode, logging) = mode_and_log(cfg);
    let mut out = vec![
        format!(
            "   HA auto recovery:  {}",
            if cfg.recovery.attempts != 0 {
                "enabled"
            } else {
                "disabled"
            }
        ),
        format!("      Recovery mode:  {mode}"),
        format!("    Maximum retries:  {}", retries(cfg.recovery.attempts)),
        format!(
            "Auto recovery poll interval:  {} seconds",
            cfg.recovery.interval.as_secs()
        ),
        format!("         HA logging:  {logging}"),
        format!(
            "            HA only:  {}",
            if cfg.ha_only { "enabled" } else { "disabled" }
        ),
    ];
    for (g, ms) in cfg.groups.iter().zip(live) {
        let down = ms.iter().filter(|m| !m.alive).count();
        let standby: Vec<&str> = g.standby.iter().map(String::as_str).collect();
        out.push(String::new());
        out.push(format!("     HA Group Label:  {}", g.label));
        out.push(format!("    HA Group Number:  {}", g.serial));
        out.push(format!("   HA Group Slot ID:  {}", g.index));
        out.push(format!(
            "    Synchronization:  {}",
            if g.synchronize { "enabled" } else { "disabled" }
        ));
        out.push(format!("      Group Members:  {}", g.members.join(", ")));
        out.push(format!(
            "    Standby Members:  {}",
            if standby.is_empty() {
                "<none>".into()
            } else {
                standby.join(", ")
            }
        ));
        out.push(format!(
            "       Group Status:  {}",
            match down {
                0 => "ok".to_string(),
                n => format!("degraded ({n} of {} members down)", ms.len()),
            }
        ));
        out.push(String::new());
        out.push(format!(
            "    {:<20} {:<8} {:<7} {:<32} {}",
            "Member S/N", "Role", "Status", "Last error", "Recovery attempts"
        ));
        let mut notes: Vec<&Unused> = Vec::new();
        for m in ms {
            let err = if m.alive {
                "-".to_string()
            } else if let Some(u) = behind_unused(scan, m) {
                if !notes.iter().any(|n| n.index == u.index) {
                    notes.push(u);
                }
                format!("only on Provider{:02}, not used", u.index)
            } else if !found(m) {
                "not found in any provider".to_string()
            } else {
                format!("0x{:08x} {}", m.last_error, rv_name(m.last_error))
            };
            out.push(format!(
                "    {:<20} {:<8} {:<7} {:<32} {}",
                m.serial,
                if m.standby { "standby" } else { "active" },
                if m.alive { "alive" } else { "down" },
                err,
                m.attempts
            ));
        }
        for u in notes {
            out.push(String::new());
            out.push(format!(
                "    {}.",
                unused_provider_text(u.index, u.first, &u.library)
            ));
        }
    }
    out
}

/// The tokens the providers show now, seen as the library sees them.
#[derive(Default)]
struct Scan {
    /// Serials of the tokens the providers in use show.
    shown: Vec<String>,
    /// Providers the library leaves out: handed an earlier provider's module instance.
    unused: Vec<Unused>,
}

struct Unused {
    index: u32,
    first: u32,
    library: std::path::PathBuf,
    /// What it shows when connected on its own, which the library never does.
    serials: Vec<String>,
}

impl Scan {
    fn unused_for(&self, serial: &str) -> Option<&Unused> {
        self.unused
            .iter()
            .find(|u| u.serials.iter().any(|s| s == serial))
    }
}

/// Connects the providers side by side, as the library does, so that one handed an earlier
/// one's module instance (SoftHSM twice from one file) is told apart; connected one after
/// the other, each would show its own tokens and its members would look merely down. Such a
/// provider is then connected alone, to name the members that sit behind it.
fn scan(cfg: &HaConfig) -> Scan {
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut held: Vec<(u32, std::sync::Arc<crate::provider::Instance>)> = Vec::new();
    let mut scan = Scan::default();
    for p in &cfg.providers {
        let Ok(Connected::Ready(inst)) = Provider::new(p, cfg.receive_timeout).connect(deadline)
        else {
            continue;
        };
        match held.iter().find(|(_, h)| h.same_module(&inst)) {
            // Not retired: that would finalize the instance the earlier provider holds.
            Some((first, _)) => scan.unused.push(Unused {
                index: p.index,
                first: *first,
                library: p.library.clone(),
                serials: Vec::new(),
            }),
            None => {
                scan.shown
                    .extend(list_tokens(&inst).iter().map(|(_, t)| trimmed_serial(t)));
                held.push((p.index, inst));
            }
        }
    }
    for (_, inst) in held {
        inst.retire(cfg.connect_timeout);
    }
    for u in &mut scan.unused {
        let Some(p) = cfg.providers.iter().find(|p| p.index == u.index) else {
            continue;
        };
        let deadline = Instant::now() + cfg.connect_timeout;
        if let Ok(Connected::Ready(inst)) = Provider::new(p, cfg.receive_timeout).connect(deadline)
        {
            u.serials = list_tokens(&inst)
                .iter()
                .map(|(_, t)| trimmed_serial(t))
                .collect();
            inst.retire(cfg.connect_timeout);
        }
    }
    scan
}

/// A token that may join `group`: found in a provider, answering, of the group's
/// authentication kind (PED or password) when another member can be reached to compare, and
/// accepting the group's user PIN, which a reachable member must accept too (so a wrong PIN
/// typed here is not taken for the new token's fault).
pub(super) fn check_member(
    cfg: &HaConfig,
    group: &GroupConfig,
    serial: &str,
    pin: &[u8],
) -> Result<(), String> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut tokens = Vec::new();
    let mut instances = Vec::new();
    for p in &cfg.providers {
        // A provider still initializing at the deadline is one the CLI cannot check.
        if let Ok(Connected::Ready(inst)) = Provider::new(p, cfg.receive_timeout).connect(deadline)
        {
            let i = instances.len();
            tokens.extend(list_tokens(&inst).into_iter().map(|(slot, t)| (i, slot, t)));
            instances.push(inst);
        }
    }
    let result = (|| {
        let serial_of = |t: &CK_TOKEN_INFO| trimmed_serial(t);
        let ped = |t: &CK_TOKEN_INFO| t.flags & CKF_PROTECTED_AUTHENTICATION_PATH != 0;
        let new = tokens
            .iter()
            .find(|(_, _, t)| serial_of(t) == serial)
            .ok_or_else(|| {
                format!("token {serial} was not found (or did not answer) in any provider")
            })?;
        let existing = tokens.iter().find(|(_, _, t)| {
            group
                .members
                .iter()
                .chain(&group.standby)
                .any(|m| *m == serial_of(t))
        });
        if let Some((_, _, t)) = existing {
            if ped(t) != ped(&new.2) {
                let kind = |p: bool| if p { "PED" } else { "password" };
                return Err(format!(
                    "token {serial} is {}-authenticated, the group is {}-authenticated",
                    kind(ped(&new.2)),
                    kind(ped(t))
                ));
            }
        }
        if ped(&new.2) {
            return Ok(()); // the PIN is entered on the PED, not here
        }
        if let Some((i, slot, t)) = existing {
            try_login(&instances[*i], *slot, pin).map_err(|rv| {
                format!(
                    "member {} of the group refused the PIN ({}): give the group's user PIN",
                    serial_of(t),
                    rv_name(rv)
                )
            })?;
        }
        try_login(&instances[new.0], new.1, pin).map_err(|rv| {
            format!(
                "token {serial} refused the group's PIN ({}): every member must have the same user PIN",
                rv_name(rv)
            )
        })
    })();
    for inst in instances {
        inst.retire(cfg.connect_timeout);
    }
    result
}

/// A user login and logout in a session of its own.
fn try_login(inst: &crate::provider::Instance, slot: CK_SLOT_ID, pin: &[u8]) -> Result<(), CK_RV> {
    let h = inst
        .open_session(slot, CKF_SERIAL_SESSION)
        .map_err(|f| f.rv())?;
    let pin = std::sync::Arc::new(zeroize::Zeroizing::new(pin.to_vec()));
    let r = match inst.login(h, CKU_USER, Some(pin)) {
        Ok(()) => {
            let _ = inst.logout(h);
            Ok(())
        }
        Err(f) if f.rv() == CKR_USER_ALREADY_LOGGED_IN => Ok(()),
        Err(f) => Err(f.rv()),
    };
    let _ = inst.close_session(h);
    r
}
