//! `p11ha audit ...` (the audit trail, docs/AUDIT.md) and `p11ha halog -follow`.
//!
//! - `audit show [-group L] [-since T] [-until T] [-session CID] [-member SERIAL] [-json]`
//! - `audit follow [-group L] [-json]`: until interrupted
//! - `audit clear [-group L]`: archives the stream (P11HA_PIN, if set, seals the first record)
//! - `audit verify [-group L] [FILES...]`: needs P11HA_PIN (the MACs are computed by a member)
//! - `audit init-key -group L`: creates the group's audit key (P11HA_PIN)
//!
//! `T` is UTC: `2026-07-14`, `2026-07-14T09:31`, `2026-07-14T09:31:05[.123456][Z]` (a space
//! instead of `T` works too); `-until` includes the whole day, minute or second it names.
//! `-group` may be left out when the configuration has one HA group.

use super::{bad, failed, CliError, VerbResult};
use crate::audit::follow::follow;
use crate::audit::record::{self, to_json};
use crate::audit::seal::{find_key, generate_template, Sealer};
use crate::audit::stream::{self, current_name, Stream};
use crate::audit::verify::{self, Filter};
use crate::config::{self, GroupConfig, HaConfig};
use crate::ha::group::Group;
use crate::ha::Runtime;
use crate::halog::HaLog;
use crate::mechanism::OwnedMechanism;
use cryptoki_sys::*;
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

const USAGE: &str = "audit show [-group L] [-since T] [-until T] [-session CID] [-member SERIAL] [-json] | \
     audit follow [-group L] [-json] | audit clear [-group L] | audit verify [-group L] [FILES...] | \
     audit init-key -group L (PIN from P11HA_PIN for verify, init-key, and to seal a clear)";

/// `p11ha audit <what> ...`.
pub fn run(args: &[String]) -> VerbResult {
    let Some((what, rest)) = args.split_first() else {
        return Err(bad(format!(
            "audit: expected a subcommand\nusage: p11ha {USAGE}"
        )));
    };
    match what.as_str() {
        "show" => show(rest),
        "follow" => follow_audit(rest),
        "clear" => clear(rest),
        "verify" => verify_cmd(rest),
        "init-key" => init_key(rest),
        _ => Err(bad(format!(
            "audit: unknown subcommand {what:?}\nusage: p11ha {USAGE}"
        ))),
    }
}

/// Options: `-name value` pairs, flags, and the rest (file names).
struct Args {
    values: Vec<(String, String)>,
    flags: Vec<String>,
    rest: Vec<String>,
}

fn parse_args(
    verb: &str,
    args: &[String],
    with_value: &[&str],
    flags: &[&str],
    files: bool,
) -> Result<Args, CliError> {
    let mut out = Args {
        values: Vec::new(),
        flags: Vec::new(),
        rest: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.strip_prefix('-').map(str::to_ascii_lowercase) {
            Some(n) if with_value.contains(&n.as_str()) => {
                let v = it
                    .next()
                    .ok_or_else(|| bad(format!("audit {verb}: -{n} needs a value")))?;
                out.values.push((n, v.clone()));
            }
            Some(n) if flags.contains(&n.as_str()) => out.flags.push(n),
            None if files => out.rest.push(a.clone()),
            _ => {
                return Err(bad(format!(
                    "audit {verb}: unexpected argument {a:?}\nusage: p11ha {USAGE}"
                )))
            }
        }
    }
    Ok(out)
}

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

/// The configuration, the group chosen and its audit directory.
struct Target {
    cfg: HaConfig,
    group: GroupConfig,
    dir: PathBuf,
}

fn target(verb: &str, label: Option<&str>) -> Result<Target, CliError> {
    let path = config::locate();
    let cfg = config::load(&path).map_err(|e| failed(e.to_string()))?;
    let group = match label {
        Some(l) => cfg
            .groups
            .iter()
            .find(|g| g.label == l)
            .cloned()
            .ok_or_else(|| {
                bad(format!(
                    "audit {verb}: no HA group labelled {l:?} in {}",
                    path.display()
                ))
            })?,
        None => match cfg.groups.as_slice() {
            [g] => g.clone(),
            [] => {
                return Err(bad(format!(
                    "audit {verb}: no HA group in {}",
                    path.display()
                )))
            }
            _ => {
                return Err(bad(format!(
                    "audit {verb}: {} HA groups are configured: say which with -group <label>",
                    cfg.groups.len()
                )))
            }
        },
    };
    let dir = cfg.audit.dir.clone().ok_or_else(|| {
        failed(format!(
            "audit {verb}: no audit directory: set haAuditPath (or haLogPath) in {}",
            path.display()
        ))
    })?;
    Ok(Target { cfg, group, dir })
}

/// A UTC time given on the command line: its first microsecond and how many it spans.
fn parse_when(s: &str) -> Option<(i64, i64)> {
    use chrono::{NaiveDate, NaiveDateTime};
    let s = s.trim().trim_end_matches('Z').replace(' ', "T");
    if let Ok(d) = NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
        let t = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
        return Some((t, 86_400_000_000));
    }
    for (fmt, span) in [
        ("%Y-%m-%dT%H:%M", 60_000_000),
        ("%Y-%m-%dT%H:%M:%S", 1_000_000),
        ("%Y-%m-%dT%H:%M:%S%.f", 1),
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&s, fmt) {
            return Some((t.and_utc().timestamp_micros(), span));
        }
    }
    None
}

fn when(verb: &str, a: &Args, name: &str, end: bool) -> Result<Option<i64>, CliError> {
    let Some(v) = a.value(name) else {
        return Ok(None);
    };
    let (t, span) = parse_when(v).ok_or_else(|| {
        bad(format!(
            "audit {verb}: -{name} {v:?}: expected a UTC time like 2026-07-14, \
             2026-07-14T09:31 or 2026-07-14T09:31:05"
        ))
    })?;
    Ok(Some(if end { t + span - 1 } else { t }))
}

fn show(args: &[String]) -> VerbResult {
    let a = parse_args(
        "show",
        args,
        &["group", "since", "until", "session", "member"],
        &["json"],
        false,
    )?;
    let t = target("show", a.value("group"))?;
    let cid = match a.value("session") {
        Some(c) => Some(u32::from_str_radix(c, 16).map_err(|_| {
            bad(format!(
                "audit show: -session {c:?}: expected a correlation id (8 hex digits)"
            ))
        })?),
        None => None,
    };
    let filter = Filter {
        since: when("show", &a, "since", false)?,
        until: when("show", &a, "until", true)?,
        cid,
        member: a.value("member").map(str::to_string),
    };
    let files = stream::stream_files(&t.dir, &t.group.serial)
        .map_err(|e| failed(format!("audit show: {}: {e}", t.dir.display())))?;
    let records = verify::records(&files).map_err(|e| failed(format!("audit show: {e}")))?;
    let json = a.flag("json");
    Ok(records
        .iter()
        .filter(|l| filter.keeps(&l.record))
        .map(|l| {
            if json {
                to_json(&l.record)
            } else {
                record::line(&l.record.body, &l.record.mac_text)
                    .trim_end()
                    .to_string()
            }
        })
        .collect())
}

fn print_live(json: bool) -> impl FnMut(&str) -> bool {
    move |line: &str| {
        use std::io::Write;
        let text = if json {
            match record::parse(line) {
                Ok(r) => to_json(&r),
                Err(e) => format!("{{\"unreadable\":{:?},\"why\":{:?}}}", line, e),
            }
        } else {
            line.to_string()
        };
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the command.
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    }
}

fn follow_audit(args: &[String]) -> VerbResult {
    let a = parse_args("follow", args, &["group"], &["json"], false)?;
    let t = target("follow", a.value("group"))?;
    follow(
        &t.dir,
        &current_name(&t.group.serial),
        &mut print_live(a.flag("json")),
    )
    .map_err(|e| failed(format!("audit follow: {e}")))?;
    Ok(Vec::new())
}

/// `p11ha halog -follow`: haErrorLog.txt, live, across rotations.
pub fn follow_halog() -> VerbResult {
    let path = config::locate();
    let cfg = config::load(&path).map_err(|e| failed(e.to_string()))?;
    let dir = cfg.log.path.clone().ok_or_else(|| {
        failed(format!(
            "halog -follow: haLogPath is not set in {}",
            path.display()
        ))
    })?;
    follow(&dir, crate::halog::LOG_FILE_NAME, &mut print_live(false))
        .map_err(|e| failed(format!("halog -follow: {e}")))?;
    Ok(Vec::new())
}

/// The library run in this process (the code applications load), logged in as the user.
struct InProcess {
    rt: Runtime,
    session: CK_SESSION_HANDLE,
    group: Arc<Group>,
}

impl InProcess {
    fn start(verb: &str, t: &Target) -> Result<InProcess, CliError> {
        let pin = std::env::var("P11HA_PIN").map_err(|_| {
            bad(format!(
                "audit {verb}: set P11HA_PIN to the group's user PIN"
            ))
        })?;
        let pin = Arc::new(Zeroizing::new(pin.into_bytes()));
        let rt = Runtime::start(t.cfg.clone(), HaLog::open(&t.cfg.log));
        let slot = CK_SLOT_ID::from(t.group.index);
        let session = rt
            .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .map_err(|rv| {
                (
                    rv,
                    format!(
                        "audit {verb}: cannot open a session on group {}",
                        t.group.label
                    ),
                )
            })?;
        let lib = InProcess {
            group: rt
                .group(slot)
                .map_err(|rv| (rv, "no such slot".to_string()))?
                .clone(),
            rt,
            session,
        };
        lib.rt
            .session(session)
            .and_then(|s| s.login(CKU_USER, Some(pin)))
            .map_err(|rv| {
                (
                    rv,
                    format!("audit {verb}: login to group {} failed", t.group.label),
                )
            })?;
        Ok(lib)
    }

    /// A MAC function for `verify`: a member of the group computes it.
    fn macs(&self) -> impl FnMut(&[u8; 32]) -> Result<[u8; 32], String> + '_ {
        let mut sealer = Sealer::new(&self.group.serial);
        let group = &self.group;
        move |h: &[u8; 32]| {
            let m = sealer.mac(Some(&group.members()), h);
            m.ok_or_else(|| {
                sealer.end_batch();
                "no member could compute a MAC: none is up, or none holds the audit key \
                 (p11ha audit init-key), or the login was refused"
                    .to_string()
            })
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.rt.close_session(self.session);
        self.rt.stop();
    }
}

fn clear(args: &[String]) -> VerbResult {
    let a = parse_args("clear", args, &["group"], &[], false)?;
    let t = target("clear", a.value("group"))?;
    // With a PIN, this process seals the record it writes; without, the next sealed record does.
    let lib = match std::env::var_os("P11HA_PIN") {
        Some(_) => Some(InProcess::start("clear", &t)?),
        None => None,
    };
    let mut stream = Stream::open(
        &t.dir,
        &t.group.serial,
        t.cfg.audit.max_len,
        t.cfg.audit.retain,
    )
    .map_err(|e| failed(format!("audit clear: {}: {e}", t.dir.display())))?;
    if let Some(l) = &lib {
        l.group.audit.flush();
    }
    let mut sealer = Sealer::new(&t.group.serial);
    let pool = lib.as_ref().map(|l| l.group.members());
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let name = crate::safe_file::user(uid);
    let by = match std::env::var("SUDO_USER") {
        Ok(s) if !s.is_empty() => format!("{name}, sudo from {s}"),
        _ => name,
    };
    let report = stream
        .clear(&by, uid, std::process::id(), &mut |h| {
            sealer.mac(pool.as_ref(), h)
        })
        .map_err(|e| failed(format!("audit clear: {e}")))?;
    sealer.end_batch();
    drop(lib);
    Ok(vec![
        format!(
            "        Audit trail of HA group {} cleared: {} files moved to {}.",
            t.group.label,
            report.files,
            report.archive.display()
        ),
        format!(
            "        The new stream starts with an AUDIT_CLEARED record (last archived seq {}, MAC {}).",
            report.last_seq.map_or("none".into(), |s| format!("{s:#x}")),
            report.last_mac
        ),
    ])
}

fn verify_cmd(args: &[String]) -> VerbResult {
    let a = parse_args("verify", args, &["group"], &[], true)?;
    let t = target("verify", a.value("group"))?;
    let lib = InProcess::start("verify", &t)?;
    // This process's own login record seals what other processes left unsealed.
    lib.group.audit.flush();
    let files: Vec<PathBuf> = if a.rest.is_empty() {
        stream::stream_files(&t.dir, &t.group.serial)
            .map_err(|e| failed(format!("audit verify: {}: {e}", t.dir.display())))?
    } else {
        a.rest.iter().map(PathBuf::from).collect()
    };
    if files.is_empty() {
        return Err(failed(format!(
            "audit verify: no audit file of group {} in {}",
            t.group.label,
            t.dir.display()
        )));
    }
    let report = {
        let mut mac = lib.macs();
        verify::verify(&files, &mut mac)
    };
    drop(lib);
    let lines = report.lines();
    match report.exit_code() {
        0 => Ok(lines),
        code => {
            for l in &lines {
                println!("{l}");
            }
            Err(CliError::from((
                CKR_SIGNATURE_INVALID,
                if code == 1 {
                    format!("audit verify: {} problems", report.problems.len())
                } else {
                    "audit verify: records at the end are not sealed yet".into()
                },
            )))
        }
    }
}

fn init_key(args: &[String]) -> VerbResult {
    let a = parse_args("init-key", args, &["group"], &[], false)?;
    let label = a
        .value("group")
        .ok_or_else(|| bad("audit init-key: -group <label> is required"))?;
    let t = target("init-key", Some(label))?;
    let lib = InProcess::start("init-key", &t)?;
    let holders = |g: &Group| -> Result<(usize, usize), CliError> {
        let (mut up, mut with) = (0, 0);
        for m in g.members().iter() {
            let Some(b) = m.binding() else { continue };
            up += 1;
            let s = b
                .instance
                .open_session(b.slot, CKF_SERIAL_SESSION)
                .map_err(|f| (f.rv(), format!("audit init-key: member {}", m.serial)))?;
            let found = find_key(&b.instance, s, &g.serial);
            let _ = b.instance.close_session(s);
            if found
                .map_err(|f| (f.rv(), format!("audit init-key: member {}", m.serial)))?
                .is_some()
            {
                with += 1;
            }
        }
        Ok((up, with))
    };
    let (_, existing) = holders(&lib.group)?;
    if existing > 0 {
        return Err(CliError::from((
            CKR_FUNCTION_REJECTED,
            format!(
                "audit init-key: group {label} already has an audit key on {existing} members; \
                 it is never overwritten"
            ),
        )));
    }
    let session = lib
        .rt
        .session(lib.session)
        .map_err(|rv| (rv, "session".to_string()))?;
    session
        .generate_key(
            OwnedMechanism::new(CKM_GENERIC_SECRET_KEY_GEN),
            generate_template(&lib.group.serial),
        )
        .map_err(|rv| {
            (
                rv,
                format!("audit init-key: the key could not be created in group {label}"),
            )
        })?;
    let (up, with) = holders(&lib.group)?;
    Ok(vec![format!(
        "        Audit key created for HA group {label}: held by {with} of {up} members up{}.",
        if with < up {
            " (the group is not synchronized: records are sealed while a member holding it is up)"
        } else {
            ""
        }
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_name_their_whole_span() {
        let (day, span) = parse_when("2026-07-14").unwrap();
        assert_eq!(
            day,
            record::parse_time("2026-07-14T00:00:00.000000Z").unwrap()
        );
        assert_eq!(span, 86_400_000_000);
        assert_eq!(parse_when("2026-07-14 09:31").unwrap().1, 60_000_000);
        assert_eq!(
            parse_when("2026-07-14T09:31:05.5Z").unwrap().0,
            record::parse_time("2026-07-14T09:31:05.500000Z").unwrap()
        );
        assert!(parse_when("yesterday").is_none());
    }
}
