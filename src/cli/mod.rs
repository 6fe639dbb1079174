//! The `p11ha` command's group verbs, the `lunacm hagroup` equivalents. Every edit goes through
//! [`crate::confedit`] (in place, comments and layout kept, atomic save) and is checked by loading
//! the edited text with the library's own configuration reader before it is saved: a verb never
//! writes a file that would make the next C_Initialize fail.

pub mod audit;
mod status;
pub mod synchronize;

pub use status::listgroups;

use crate::confedit::{locate, ConfFile};
use crate::config::{self, GroupConfig, HaConfig};
use cryptoki_sys::{CKR_ARGUMENTS_BAD, CKR_FUNCTION_FAILED, CK_RV};

/// Lines to print, or the CK_RV shown as the command result with a message for stderr.
pub type VerbResult = Result<Vec<String>, (CK_RV, String)>;

fn bad(msg: impl Into<String>) -> (CK_RV, String) {
    (CKR_ARGUMENTS_BAD, msg.into())
}

fn failed(msg: impl Into<String>) -> (CK_RV, String) {
    (CKR_FUNCTION_FAILED, msg.into())
}

/// `-name value` options and `-flag`s, names compared without case.
struct Opts<'a> {
    verb: &'static str,
    args: &'a [String],
}

impl<'a> Opts<'a> {
    fn new(
        verb: &'static str,
        args: &'a [String],
        allowed: &[&str],
    ) -> Result<Self, (CK_RV, String)> {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix('-')
                .ok_or_else(|| bad(format!("{verb}: unexpected argument {a:?}")))?;
            match allowed
                .iter()
                .find(|o| o.trim_end_matches('=').eq_ignore_ascii_case(name))
            {
                Some(o) if o.ends_with('=') => {
                    it.next()
                        .ok_or_else(|| bad(format!("{verb}: -{name} needs a value")))?;
                }
                Some(_) => {}
                None => return Err(bad(format!("{verb}: unknown option {a:?}"))),
            }
        }
        Ok(Opts { verb, args })
    }

    fn value(&self, name: &str) -> Option<&'a str> {
        let i = self.args.iter().position(|a| {
            a.strip_prefix('-')
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })?;
        self.args.get(i + 1).map(String::as_str)
    }

    fn need(&self, name: &str) -> Result<&'a str, (CK_RV, String)> {
        self.value(name)
            .ok_or_else(|| bad(format!("{}: -{name} is required", self.verb)))
    }

    fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| {
            a.strip_prefix('-')
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    }
}

/// The file, its typed reading, and the path it came from.
struct Edit {
    conf: ConfFile,
    cfg: HaConfig,
}

impl Edit {
    fn open() -> Result<Edit, (CK_RV, String)> {
        let path = locate();
        let cfg = config::load(&path).map_err(|e| failed(e.to_string()))?;
        let conf = ConfFile::load(&path).map_err(|e| failed(e.to_string()))?;
        Ok(Edit { conf, cfg })
    }

    fn group(&self, label: &str) -> Result<&GroupConfig, (CK_RV, String)> {
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

    fn set(&mut self, section: &str, key: &str, value: &str) -> Result<(), (CK_RV, String)> {
        self.conf
            .set(section, key, value)
            .map_err(|e| bad(e.to_string()))
    }

    fn remove(&mut self, section: &str, key: &str) -> Result<(), (CK_RV, String)> {
        self.conf
            .remove(section, key)
            .map(|_| ())
            .map_err(|e| failed(e.to_string()))
    }

    /// Checks the edited text with the library's reader, then saves atomically.
    fn save(self) -> Result<(), (CK_RV, String)> {
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

fn check_serial(verb: &str, s: &str) -> Result<(), (CK_RV, String)> {
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

/// `creategroup -label L -serialnumber S [-groupserial G]`: a new group with S as its first member.
pub fn creategroup(args: &[String]) -> VerbResult {
    let o = Opts::new(
        "creategroup",
        args,
        &["label=", "serialnumber=", "groupserial="],
    )?;
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
    e.set("VirtualToken", &key(n, "Label"), label)?;
    if let Some(gs) = o.value("groupserial") {
        e.set("VirtualToken", &key(n, "SN"), gs)?;
    }
    e.set("VirtualToken", &key(n, "Members"), serial)?;
    e.save()?;
    let shown = match o.value("groupserial") {
        Some(gs) => gs.to_string(),
        None => config::derive_group_serial(serial),
    };
    Ok(vec![format!(
        "        New group with label \"{label}\" created with group number {shown}."
    )])
}

/// `deletegroup -label L`: the group's keys and its HASynchronize/HARecovery entries go.
pub fn deletegroup(args: &[String]) -> VerbResult {
    let o = Opts::new("deletegroup", args, &["label="])?;
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
    let o = Opts::new(verb, args, &["group=", "serialnumber="])?;
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
        status::check_member(&e.cfg, &g, serial).map_err(|m| bad(format!("{verb}: {m}")))?;
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
    let o = Opts::new(verb, args, &[&format!("{opt}=")])?;
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
    let o = Opts::new("recoverymode", args, &["mode="])?;
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
    let o = Opts::new("haonly", args, &["enable", "disable", "show"])?;
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
