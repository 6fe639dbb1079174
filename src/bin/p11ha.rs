//! `p11ha`: the command-line companion of the p11ha PKCS#11 library (the `lunacm hagroup`
//! equivalent). `p11ha <verb> [options]`; each verb edits or shows the configuration file found
//! like the library finds it (`P11HA_CONF`, `$ChrystokiConfigurationPath/Chrystoki.conf`,
//! `/etc/Chrystoki.conf`).
//!
//! Output follows lunacm: the verb's lines, a blank line, then `Command Result : No Error` (exit 0)
//! or, after a message on stderr, `Command Result : 0x00000007 (CKR_ARGUMENTS_BAD)` (exit 2) /
//! `Command Result : 0x00000006 (CKR_FUNCTION_FAILED)` (exit 1). A failed command leaves the
//! configuration file untouched.

use p11ha::cli;
use p11ha::confedit::{locate, ConfFile};
use p11ha::halog::DEFAULT_MAX_LEN;
use p11ha::rv::rv_name;
use std::path::Path;
use std::process::ExitCode;

/// A failed command: message for stderr, the CK_RV shown as the command result, exit status.
type Failure = cli::CliError;

fn bad_args(message: impl Into<String>) -> Failure {
    cli::bad(message)
}

fn failed(message: impl Into<String>) -> Failure {
    cli::failed(message)
}

type Verb = fn(&[String]) -> Result<Vec<String>, Failure>;

/// The verbs; add new ones here.
const VERBS: &[(&str, Verb, &str)] = &[
    (
        "halog",
        halog,
        "halog [-path <dir>] [-maxlength <bytes>] [-enable | -disable] [-show]",
    ),
    ("recover", recover, "recover -group <label>"),
    (
        "listgroups",
        |a| lib(cli::listgroups(a)),
        "listgroups [-json]",
    ),
    (
        "creategroup",
        |a| lib(cli::creategroup(a)),
        "creategroup -label <label> -serialnumber <serial> [-groupserial <serial>]",
    ),
    (
        "deletegroup",
        |a| lib(cli::deletegroup(a)),
        "deletegroup -label <label>",
    ),
    (
        "addmember",
        |a| lib(cli::addmember(a).and_then(|l| Ok(cli::synchronize::after_addmember(a, l)?))),
        "addmember -group <label> -serialnumber <serial>",
    ),
    (
        "removemember",
        |a| lib(cli::removemember(a)),
        "removemember -group <label> -serialnumber <serial>",
    ),
    (
        "addstandby",
        |a| lib(cli::addstandby(a)),
        "addstandby -group <label> -serialnumber <serial>",
    ),
    (
        "removestandby",
        |a| lib(cli::removestandby(a)),
        "removestandby -group <label> -serialnumber <serial>",
    ),
    (
        "retry",
        |a| lib(cli::retry(a)),
        "retry -count <n>  (0: off, -1: unlimited)",
    ),
    (
        "interval",
        |a| lib(cli::interval(a)),
        "interval -interval <seconds>",
    ),
    (
        "recoverymode",
        |a| lib(cli::recoverymode(a)),
        "recoverymode -mode activeBasic|activeEnhanced",
    ),
    (
        "haonly",
        |a| lib(cli::haonly(a)),
        "haonly -enable | -disable | -show",
    ),
    ("audit", |a| lib(cli::audit::run(a)), "audit show|follow|clear|verify|init-key ... (p11ha audit for details)"),
    (
        "addprovider",
        |a| lib(cli::addprovider(a)),
        "addprovider -library <path> [-env NAME=VALUE]...",
    ),
    (
        "removeprovider",
        |a| lib(cli::removeprovider(a)),
        "removeprovider -library <path>",
    ),
    (
        "synchronize",
        |a| lib(cli::synchronize::run(a)),
        "synchronize -group <label> [-init-cloning-key | -show-owed | -prune | -check] (PIN from P11HA_PIN, SO PIN from P11HA_SO_PIN)",
    ),
];

/// Adapts a verb of `p11ha::cli` to this command's result type.
fn lib(r: cli::VerbResult) -> Result<Vec<String>, Failure> {
    r
}

fn usage() -> String {
    let mut s = String::from("usage:");
    for (_, _, u) in VERBS {
        s.push_str(&format!("\n  p11ha {u}"));
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (verb, args, json) = match cli::help::front(&args) {
        cli::help::Front::Print(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        cli::help::Front::Fail(f, json) => return report(Err(f), json),
        cli::help::Front::Run { verb, args, json } => (verb, args, json),
    };
    p11ha::ffi::set_tool_mode(cli::tool_mode(verb));
    let result = match VERBS.iter().find(|(name, _, _)| *name == verb) {
        Some((_, run, _)) => run(&args),
        None => Err(bad_args(format!("unknown command {verb:?}\n{}", usage()))),
    };
    report(result, json)
}

/// Prints a verb's result: its lines, then lunacm's "Command Result" line; with `-json` only
/// one JSON document (the verb's, or an error object).
fn report(result: Result<Vec<String>, Failure>, json: bool) -> ExitCode {
    match result {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            if !json {
                println!();
                println!("Command Result : No Error");
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("p11ha: {}", f.message);
            if json {
                if f.output.is_empty() {
                    println!(
                        "{{\"error\":{{\"rv\":{},\"name\":\"{}\"}}}}",
                        f.rv,
                        rv_name(f.rv)
                    );
                }
                for line in &f.output {
                    println!("{line}");
                }
            } else {
                for line in &f.output {
                    println!("{line}");
                }
                println!();
                println!("Command Result : 0x{:08x} ({})", f.rv, rv_name(f.rv));
            }
            ExitCode::from(f.exit)
        }
    }
}

/// `p11ha recover -group L`: asks every application using group L to attempt recovery of its
/// dropped members now, even after auto-recovery gave up. It increments `HARecovery.L`, the
/// counter Luna clients watch; p11ha re-reads it at every management poll.
fn recover(args: &[String]) -> Result<Vec<String>, Failure> {
    let o = cli::parse("recover", args)?;
    let label = &o.need("group")?.to_string();
    let file = locate();
    let cfg = p11ha::config::load(&file).map_err(|e| failed(e.to_string()))?;
    if !cfg.groups.iter().any(|g| &g.label == label) {
        return Err(bad_args(format!(
            "recover: no HA group labelled {label:?} in {}",
            file.display()
        )));
    }
    let mut conf = ConfFile::load(&file).map_err(|e| failed(e.to_string()))?;
    let current = match conf.get("HARecovery", label) {
        None => 0,
        Some(v) => v.trim().parse::<u64>().map_err(|_| {
            failed(format!(
                "recover: HARecovery.{label} = {v:?} is not a number"
            ))
        })?,
    };
    let next = current + 1;
    conf.set("HARecovery", label, &next.to_string())
        .map_err(|e| bad_args(e.to_string()))?;
    conf.save().map_err(|e| failed(e.to_string()))?;
    Ok(vec![format!(
        "        Recovery of HA group {label} requested (HARecovery {label} = {next}); running applications attempt it at their next poll."
    )])
}

const SECTION: &str = "HAConfiguration";
const KEY_PATH: &str = "haLogPath";
const KEY_STATUS: &str = "haLogStatus";
const KEY_LEN: &str = "logLen";

/// `p11ha halog`: the seed 003 `hagroup halog` command. Every option is checked before the file is
/// changed; the file is written once.
fn halog(args: &[String]) -> Result<Vec<String>, Failure> {
    if args.iter().any(|a| a.eq_ignore_ascii_case("-follow")) {
        return lib(cli::audit::follow_halog());
    }
    let o = cli::parse("halog", args)?;
    let path = o.value("path").map(check_dir).transpose()?;
    let max_len = match o.value("maxlength") {
        None => None,
        Some(n) => match n.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(bad_args(format!(
                    "halog: -maxlength {n:?}: expected a positive number of bytes"
                )))
            }
        },
    };
    let enable = match (o.flag("enable"), o.flag("disable")) {
        (true, true) => return Err(bad_args("halog: -enable and -disable together")),
        (true, false) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    };
    let show = o.flag("show");
    if path.is_none() && max_len.is_none() && enable.is_none() && !show {
        return Err(bad_args(format!("halog: nothing to do\n{}", usage())));
    }

    let file = locate();
    let mut conf = ConfFile::load(&file).map_err(|e| failed(e.to_string()))?;
    let mut out = Vec::new();
    let edit = |conf: &mut ConfFile, key: &str, value: &str| {
        conf.set(SECTION, key, value)
            .map_err(|e| bad_args(e.to_string()))
    };
    if let Some(dir) = &path {
        edit(&mut conf, KEY_PATH, dir)?;
        out.push(format!("        HA Log path successfully set to {dir}."));
    }
    if let Some(n) = max_len {
        edit(&mut conf, KEY_LEN, &n.to_string())?;
        out.push(format!(
            "        HA Log maximum file size was successfully set to {n}."
        ));
    }
    if let Some(on) = enable {
        let value = if on { "enabled" } else { "disabled" };
        edit(&mut conf, KEY_STATUS, value)?;
        out.push(format!("        HA Log was successfully {value}."));
    }
    if path.is_some() || max_len.is_some() || enable.is_some() {
        conf.save().map_err(|e| failed(e.to_string()))?;
    }
    if show {
        out.extend(show_lines(&conf));
    }
    Ok(out)
}

/// `-path`: an existing directory, stored as an absolute path.
fn check_dir(dir: &str) -> Result<String, Failure> {
    let p = Path::new(dir);
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad_args(format!("halog: -path {dir}: not a directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad_args(format!(
                "halog: -path {dir}: directory does not exist; specify an existing directory"
            )))
        }
        Err(e) => return Err(bad_args(format!("halog: -path {dir}: {e}"))),
    }
    let abs = std::path::absolute(p).map_err(|e| bad_args(format!("halog: -path {dir}: {e}")))?;
    let abs = abs
        .to_str()
        .ok_or_else(|| bad_args(format!("halog: -path {dir}: not valid UTF-8")))?;
    // Keep what the user typed when it is absolute already (no trailing-slash games).
    Ok(if p.is_absolute() {
        dir.to_owned()
    } else {
        abs.to_owned()
    })
}

/// The `-show` block, labels right-aligned as lunacm prints them.
fn show_lines(conf: &ConfFile) -> Vec<String> {
    let status = conf
        .get(SECTION, KEY_STATUS)
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_else(|| "enabled".into());
    // As the library reads it (and listgroups shows it): no directory, no log.
    let status = if status == "disabled" || conf.get(SECTION, KEY_PATH).is_none() {
        "disabled"
    } else {
        "enabled"
    };
    let file = match conf.get(SECTION, KEY_PATH) {
        Some(dir) => {
            let sep = if dir.contains('\\') && !dir.contains('/') {
                '\\'
            } else {
                '/'
            };
            let dir = dir.trim_end_matches(sep);
            format!("{dir}{sep}haErrorLog.txt")
        }
        None => "(haLogPath not set)".into(),
    };
    let len = conf
        .get(SECTION, KEY_LEN)
        .unwrap_or_else(|| DEFAULT_MAX_LEN.to_string());
    vec![
        format!("{:>15}: {status}", "HA Log"),
        format!("{:>15}: {file}", "Log File"),
        format!("{:>15}: {len} bytes", "Max File Length"),
    ]
}
