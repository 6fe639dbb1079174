//! `listgroups` and member checks: the live view, asked of the library through its own C ABI
//! (C_Initialize, p11ha_group_status, C_Finalize) in this process, not guessed from the file.

use super::{failed, Opts, VerbResult};
use crate::confedit::locate;
use crate::config::{self, GroupConfig, HaConfig, RecoveryMode};
use crate::ffi::ca::{p11ha_group_status, P11haGroupStatus, P11HA_MAX_MEMBERS};
use crate::ffi::table::C_GetFunctionList;
use crate::ha::discovery::{list_tokens, trimmed_serial};
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
fn live_view(cfg: &HaConfig) -> Result<Vec<Vec<MemberView>>, (CK_RV, String)> {
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
            return Err((
                rv,
                format!("the library did not initialize ({})", rv_name(rv)),
            ));
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
    let o = Opts::new("listgroups", args, &["json"])?;
    let cfg = config::load(&locate()).map_err(|e| failed(e.to_string()))?;
    let live = live_view(&cfg)?;
    let mode = match cfg.recovery.mode {
        RecoveryMode::Basic => "activeBasic",
        RecoveryMode::Enhanced => "activeEnhanced",
    };
    let logging = match (&cfg.log.path, cfg.log.enabled) {
        (Some(p), true) => format!("enabled ({})", p.join("haErrorLog.txt").display()),
        _ => "disabled".into(),
    };
    if o.flag("json") {
        let groups: Vec<String> = cfg
            .groups
            .iter()
            .zip(&live)
            .map(|(g, ms)| {
                let members: Vec<String> = ms
                    .iter()
                    .map(|m| {
                        format!(
                            "{{\"serial\":{},\"standby\":{},\"alive\":{},\"last_error\":{},\"last_error_name\":{},\"recovery_attempts\":{}}}",
                            json_str(&m.serial),
                            m.standby,
                            m.alive,
                            m.last_error,
                            json_str(if m.last_error == 0 { "CKR_OK" } else { rv_name(m.last_error) }),
                            m.attempts
                        )
                    })
                    .collect();
                format!(
                    "{{\"label\":{},\"serial\":{},\"slot\":{},\"synchronize\":{},\"members\":[{}]}}",
                    json_str(&g.label),
                    json_str(&g.serial),
                    g.index,
                    g.synchronize,
                    members.join(",")
                )
            })
            .collect();
        return Ok(vec![format!(
            "{{\"auto_recovery\":{},\"recovery_mode\":{},\"max_retries\":{},\"interval_s\":{},\"ha_log\":{},\"ha_only\":{},\"groups\":[{}]}}",
            cfg.recovery.attempts != 0,
            json_str(mode),
            cfg.recovery.attempts,
            cfg.recovery.interval.as_secs(),
            json_str(&logging),
            cfg.ha_only,
            groups.join(",")
        )]);
    }
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
    for (g, ms) in cfg.groups.iter().zip(&live) {
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
        out.push(String::new());
        out.push(format!(
            "    {:<20} {:<8} {:<7} {:<32} {}",
            "Member S/N", "Role", "Status", "Last error", "Recovery attempts"
        ));
        for m in ms {
            let err = if m.alive {
                "-".to_string()
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
    }
    Ok(out)
}

/// A token that may join `group`: found in a provider, answering, and of the group's
/// authentication kind (PED or password) when another member can be reached to compare.
pub(super) fn check_member(
    cfg: &HaConfig,
    group: &GroupConfig,
    serial: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut tokens = Vec::new();
    for p in &cfg.providers {
        // A provider still initializing at the deadline is one the CLI cannot check.
        if let Ok(Connected::Ready(inst)) = Provider::new(p, cfg.receive_timeout).connect(deadline)
        {
            tokens.extend(list_tokens(&inst));
            inst.retire(cfg.connect_timeout);
        }
    }
    let serial_of = |t: &CK_TOKEN_INFO| trimmed_serial(t);
    let ped = |t: &CK_TOKEN_INFO| t.flags & CKF_PROTECTED_AUTHENTICATION_PATH != 0;
    let (_, new) = tokens
        .iter()
        .find(|(_, t)| serial_of(t) == serial)
        .ok_or_else(|| {
            format!("token {serial} was not found (or did not answer) in any provider")
        })?;
    let existing = tokens.iter().find(|(_, t)| {
        group
            .members
            .iter()
            .chain(&group.standby)
            .any(|m| *m == serial_of(t))
    });
    if let Some((_, t)) = existing {
        if ped(t) != ped(new) {
            let kind = |p: bool| if p { "PED" } else { "password" };
            return Err(format!(
                "token {serial} is {}-authenticated, the group is {}-authenticated",
                kind(ped(new)),
                kind(ped(t))
            ));
        }
    }
    Ok(())
}
