//! The `p11ha` command's group verbs, the `lunacm hagroup` equivalents. Every edit goes through
//! [`crate::confedit`] (in place, comments and layout kept, atomic save) and is checked by loading
//! the edited text with the library's own configuration reader before it is saved: a verb never
//! writes a file that would make the next C_Initialize fail.

pub mod audit;
pub mod help;
pub mod opts;
mod pin;
mod providers;
mod status;
pub mod synchronize;

pub use help::parse;
pub use pin::pin;
pub use providers::{addprovider, removeprovider};
pub use status::listgroups;

use crate::confedit::{locate, ConfFile};
use crate::config::{self, GroupConfig, HaConfig};
use cryptoki_sys::{CKR_ARGUMENTS_BAD, CKR_FUNCTION_FAILED, CK_RV};

/// Lines to print, or why the verb failed.
pub type VerbResult = Result<Vec<String>, CliError>;

/// A failed verb: the CK_RV shown as the command result, a message for stderr, the exit status,
/// and any output it still has to show (listgroups -check of a degraded group).
#[derive(Debug)]
pub struct CliError {
    pub rv: CK_RV,
    pub message: String,
    pub exit: u8,
    pub output: Vec<String>,
}

/// Bad arguments: CKR_ARGUMENTS_BAD, exit 2.
pub fn bad(msg: impl Into<String>) -> CliError {
    CliError {
        rv: CKR_ARGUMENTS_BAD,
        message: msg.into(),
        exit: 2,
        output: Vec::new(),
    }
}

/// The command failed: CKR_FUNCTION_FAILED, exit 1.
pub fn failed(msg: impl Into<String>) -> CliError {
    CliError {
        rv: CKR_FUNCTION_FAILED,
        message: msg.into(),
        exit: 1,
        output: Vec::new(),
    }
}

impl From<(CK_RV, String)> for CliError {
    fn from((rv, message): (CK_RV, String)) -> CliError {
        CliError {
            rv,
            exit: if rv == CKR_ARGUMENTS_BAD { 2 } else { 1 },
            ..failed(message)
        }
    }
}

/// How the `p11ha` command must initialize the library in its own process for `verb` (see
/// [`crate::ffi::ToolMode`]): only synchronize may touch a journal, no verb writes the HA log.
pub fn tool_mode(verb: &str) -> crate::ffi::ToolMode {
    if verb == "synchronize" {
        crate::ffi::ToolMode::JournalIfOwner
    } else {
        crate::ffi::ToolMode::NoFiles
    }
}

/// The file, its typed reading, and the path it came from.
struct Edit {
    conf: ConfFile,
    cfg: HaConfig,
}

impl Edit {
    fn open() -> Result<Edit, CliError> {
        let path = locate();
        let cfg = config::load(&path).map_err(|e| failed(e.to_string()))?;
        let conf = ConfFile::load(&path).map_err(|e| failed(e.to_string()))?;
        Ok(Edit { conf, cfg })
    }

    /// Like [`Edit::open`], and a missing or empty file is a start (addprovider).
    fn open_or_new() -> Result<Edit, CliError> {
        let path = locate();
        let conf = ConfFile::load_or_empty(&path).map_err(|e| failed(e.to_string()))?;
        let text = String::from_utf8_lossy(conf.bytes()).into_owned();
        // A file with nothing in it yet reads like one with an empty HAProviders section; any
        // other error is the file's.
        let cfg = config::parse_str(&text, &path)
            .or_else(|e| match config::parse_str("HAProviders = {\n}\n", &path) {
                Ok(empty) if conf.is_blank() => Ok(empty),
                _ => Err(e),
            })
            .map_err(|e| failed(e.to_string()))?;
        Ok(Edit { conf, cfg })
    }

    fn group(&self, label: &str) -> Result<&GroupConfig, CliError> {
        self.cfg
            .groups
            .iter()
            .find(|g| g.label == label)
            .ok_or_else(|| {
                bad(format!(
                    "no HA group labelled {label:?} in {}",
                    self.cfg.path.display()
                ))
            })
    }

    fn set(&mut self, section: &str, key: &str, value: &str) -> Result<(), CliError> {
        self.conf
            .set(section, key, value)
            .map_err(|e| bad(e.to_string()))
    }

    fn remove(&mut self, section: &str, key: &str) -> Result<(), CliError> {
        self.conf
            .remove(section, key)
            .map(|_| ())
            .map_err(|e| failed(e.to_string()))
    }

    /// Checks the edited text with the library's reader, then saves atomically.
    fn save(self) -> Result<(), CliError> {
        let text = String::from_utf8_lossy(self.conf.bytes()).into_owned();
        config::parse_str(&text, self.conf.path()).map_err(|e| {
            bad(format!(
                "the change would make the configuration invalid: {e}"
            ))
        })?;
        self.conf.save().map_err(|e| failed(e.to_string()))
    }
}

fn key(n: u32, what: &str) -> String {
    format!("VirtualToken{n:02}{what}")
}

fn check_serial(verb: &str, s: &str) -> Result<(), CliError> {
    if s.is_empty()
        || s.len() > 32
        || !s
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != ';')
    {
        return Err(bad(format!("{verb}: {s:?} is not a token serial number")));
    }
    Ok(())
}

/// `creategroup -label L -serialnumber S [-groupserial G] [-password P]`: a new group with S
/// as its first member. S must be a token a provider shows and that accepts the PIN; the group
/// serial is written (`VirtualTokenNNSN`) so that it never follows the first member.
pub fn creategroup(args: &[String]) -> VerbResult {
    let o = parse("creategroup", args)?;
    let (label, serial) = (o.need("label")?, o.need("serialnumber")?);
    check_serial("creategroup", serial)?;
    let mut e = Edit::open()?;
    if e.group(label).is_ok() {
        return Err(bad(format!(
            "creategroup: a group labelled {label:?} exists already"
        )));
    }
    if let Some(g) = e
        .cfg
        .groups
        .iter()
        .find(|g| g.members.iter().chain(&g.standby).any(|m| m == serial))
    {
        return Err(bad(format!(
            "creategroup: {serial} is a member of group {:?} already",
            g.label
        )));
    }
    let n = (0..100)
        .find(|n| !e.cfg.groups.iter().any(|g| g.index == *n))
        .ok_or_else(|| bad("creategroup: no free group number"))?;
    let group_serial = match o.value("groupserial") {
        Some(gs) => {
            check_serial("creategroup", gs)?;
            gs.to_string()
        }
        None => config::derive_group_serial(serial),
    };
    let pin = pin(
        "creategroup",
        o.value("password"),
        "P11HA_PIN",
        "the group's user PIN",
    )?;
    status::check_member(&e.cfg, &empty_group(n), serial, &pin)
        .map_err(|m| bad(format!("creategroup: {m}")))?;
    e.set("VirtualToken", &key(n, "Label"), label)?;
    e.set("VirtualToken", &key(n, "SN"), &group_serial)?;
    e.set("VirtualToken", &key(n, "Members"), serial)?;
    e.save()?;
    Ok(vec![format!(
        "        New group with label \"{label}\" created with group number {group_serial}."
    )])
}

/// A group with no members, for checking the first one against nothing.
fn empty_group(n: u32) -> GroupConfig {
    GroupConfig {
        label: String::new(),
        index: n,
        serial: String::new(),
        members: Vec::new(),
        standby: Vec::new(),
        synchronize: false,
        manual_recovery: None,
    }
}

/// `deletegroup -label L`: the group's keys and its HASynchronize/HARecovery entries go.
pub fn deletegroup(args: &[String]) -> VerbResult {
    let o = parse("deletegroup", args)?;
    let label = o.need("label")?;
    let mut e = Edit::open()?;
    let n = e.group(label)?.index;
    for what in ["Label", "SN", "Members", "Standby"] {
        e.remove("VirtualToken", &key(n, what))?;
    }
    e.remove("HASynchronize", label)?;
    e.remove("HARecovery", label)?;
    e.save()?;
    Ok(vec![format!("        The group {label} has been deleted.")])
}

fn edit_list(verb: &'static str, args: &[String], standby: bool, add: bool) -> VerbResult {
    let o = parse(verb, args)?;
    let (label, serial) = (o.need("group")?, o.need("serialnumber")?);
    check_serial(verb, serial)?;
    let mut e = Edit::open()?;
    let g = e.group(label)?.clone();
    let mut list = if standby {
        g.standby.clone()
    } else {
        g.members.clone()
    };
    if add {
        if let Some(other) = e
            .cfg
            .groups
            .iter()
            .find(|x| x.members.iter().chain(&x.standby).any(|m| m == serial))
        {
            return Err(bad(format!(
                "{verb}: {serial} is a member of group {:?} already",
                other.label
            )));
        }
        let pin = pin(
            verb,
            o.value("password"),
            "P11HA_PIN",
            "the group's user PIN",
        )?;
        status::check_member(&e.cfg, &g, serial, &pin).map_err(|m| bad(format!("{verb}: {m}")))?;
        list.push(serial.to_string());
    } else {
        let before = list.len();
        list.retain(|m| m != serial);
        if list.len() == before {
            return Err(bad(format!(
                "{verb}: {serial} is not {} of group {label}",
                if standby {
                    "a standby member"
                } else {
                    "a member"
                }
            )));
        }
    }
    let k = key(g.index, if standby { "Standby" } else { "Members" });
    if list.is_empty() {
        e.remove("VirtualToken", &k)?;
    } else {
        e.set("VirtualToken", &k, &list.join(", "))?;
    }
    e.save()?;
    let what = if standby { "standby member" } else { "member" };
    Ok(vec![if add {
        format!("        {serial} added as {what} of group {label}.")
    } else {
        format!("        {what} {serial} removed from group {label}.")
    }])
}

/// `addmember -group L -serialnumber S`: the token must exist, answer, and match the group's
/// authentication kind (password or PED).
pub fn addmember(args: &[String]) -> VerbResult {
    edit_list("addmember", args, false, true)
}

pub fn removemember(args: &[String]) -> VerbResult {
    edit_list("removemember", args, false, false)
}

pub fn addstandby(args: &[String]) -> VerbResult {
    edit_list("addstandby", args, true, true)
}

pub fn removestandby(args: &[String]) -> VerbResult {
    edit_list("removestandby", args, true, false)
}

/// One `HAConfiguration` number with a range check.
fn set_number(
    verb: &'static str,
    args: &[String],
    opt: &str,
    key: &str,
    min: i64,
    max: i64,
    said: &str,
) -> VerbResult {
    let o = parse(verb, args)?;
    let raw = o.need(opt)?;
    let n: i64 = raw
        .parse()
        .map_err(|_| bad(format!("{verb}: -{opt} {raw:?}: expected a whole number")))?;
    if n < min || n > max {
        return Err(bad(format!(
            "{verb}: -{opt} {n}: out of range {min}..={max}"
        )));
    }
    let mut e = Edit::open()?;
    e.set("HAConfiguration", key, &n.to_string())?;
    e.save()?;
    Ok(vec![format!("        {said} {n}.")])
}

/// `retry -count N`: auto-recovery attempts (0 off, -1 unlimited).
pub fn retry(args: &[String]) -> VerbResult {
    set_number(
        "retry",
        args,
        "count",
        "reconnAtt",
        -1,
        1_000_000,
        "HA auto recovery attempts set to",
    )
}

/// `interval -interval S`: seconds between recovery attempts.
pub fn interval(args: &[String]) -> VerbResult {
    set_number(
        "interval",
        args,
        "interval",
        "AutoReconnectInterval",
        1,
        3600,
        "HA auto recovery interval set to",
    )
}

/// `recoverymode -mode activeBasic|activeEnhanced`.
pub fn recoverymode(args: &[String]) -> VerbResult {
    let o = parse("recoverymode", args)?;
    let mode = o.need("mode")?;
    let mode = ["activeBasic", "activeEnhanced"]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(mode))
        .ok_or_else(|| {
            bad(format!(
                "recoverymode: -mode {mode:?}: expected activeBasic or activeEnhanced"
            ))
        })?;
    let mut e = Edit::open()?;
    e.set("VirtualToken", "VirtualTokenActiveRecovery", mode)?;
    e.save()?;
    Ok(vec![format!("        HA recovery mode set to {mode}.")])
}

/// `haonly -enable | -disable | -show`.
pub fn haonly(args: &[String]) -> VerbResult {
    let o = parse("haonly", args)?;
    let (on, off, show) = (o.flag("enable"), o.flag("disable"), o.flag("show"));
    if [on, off, show].iter().filter(|b| **b).count() != 1 {
        return Err(bad("haonly: give one of -enable, -disable, -show"));
    }
    let mut e = Edit::open()?;
    if show {
        let state = if e.cfg.ha_only { "enabled" } else { "disabled" };
        return Ok(vec![format!("        HA Only mode is {state}.")]);
    }
    e.set("HAConfiguration", "HAOnly", if on { "1" } else { "0" })?;
    e.save()?;
    Ok(vec![format!(
        "        HA Only mode {}.",
        if on { "enabled" } else { "disabled" }
    )])
}

/// `HASynchronize.<label>` on or off (`synchronize -enable | -disable`), checked and saved like
/// every edit; for the synchronize verb.
pub fn set_synchronize(label: &str, on: bool) -> VerbResult {
    let mut e = Edit::open()?;
    e.group(label)?;
    e.set("HASynchronize", label, if on { "1" } else { "0" })?;
    e.save()?;
    Ok(vec![format!(
        "        Synchronization of HA group {label} {}.",
        if on { "enabled" } else { "disabled" }
    )])
}
