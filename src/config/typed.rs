//! Typed validation: raw sections → [`HaConfig`], with precise errors and warnings.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ConfigError, GroupConfig, HaConfig, LogSettings, ProviderConfig, RawEntry, RawSection,
    RecoveryMode, RecoverySettings,
};

pub(crate) const SEC_VT: &str = "VirtualToken";
pub(crate) const SEC_SYNC: &str = "HASynchronize";
pub(crate) const SEC_RECOVERY: &str = "HARecovery";
pub(crate) const SEC_CONF: &str = "HAConfiguration";
pub(crate) const SEC_PROVIDERS: &str = "HAProviders";
pub(crate) const SEC_LUNASA: &str = "LunaSA Client";

/// Defaults (documented in config/README.md and config/Chrystoki.conf).
pub const DEFAULT_LOG_LEN: u64 = 100_000_000;
pub const DEFAULT_RECONN_ATT: i64 = -1;
pub const DEFAULT_RECONNECT_INTERVAL_S: u64 = 60;
pub const DEFAULT_RECEIVE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// `CK_TOKEN_INFO.serialNumber` and `.label` sizes.
pub const MAX_SERIAL_LEN: usize = 16;
pub const MAX_LABEL_LEN: usize = 32;

const CONF_KEYS: &[&str] = &[
    "HAOnly",
    "haLogPath",
    "haLogStatus",
    "logLen",
    "haLogToStdout",
    "failover_on_deactivation",
    "reconnAtt",
    "AutoReconnectInterval",
    "ReceiveTimeout",
    "ConnectTimeout",
    "haJournalPath",
];

struct Ctx<'a> {
    file: &'a Path,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn err(&self, line: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: (line > 0).then_some(line),
            key: (!key.is_empty()).then(|| key.to_string()),
            message: message.into(),
        }
    }

    fn entry_err(&self, e: &RawEntry, message: impl Into<String>) -> ConfigError {
        self.err(e.line, &e.key, message)
    }

    fn unknown_key(&mut self, e: &RawEntry, section: &str, candidates: &[String]) {
        let mut msg = format!(
            "{}:{}: {}: unknown key in {}",
            self.file.display(),
            e.line,
            e.key,
            section
        );
        match suggest(&e.key, candidates) {
            Some(s) => msg.push_str(&format!(" (did you mean '{s}'?)")),
            None => msg.push_str(" (ignored)"),
        }
        self.warnings.push(msg);
    }

    fn warn(&mut self, line: usize, key: &str, message: &str) {
        self.warnings.push(format!(
            "{}:{}: {}: {}",
            self.file.display(),
            line,
            key,
            message
        ));
    }
}

/// Levenshtein distance, ASCII case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate, if it is close enough to be a plausible misspelling.
pub(crate) fn suggest(key: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (distance(key, c), c))
        .filter(|(d, c)| *d <= 3 && *d * 3 <= c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

/// Entries of every section named `name` (case-insensitive), in file order.
fn section<'a>(sections: &'a [RawSection], name: &str) -> Vec<&'a RawEntry> {
    sections
        .iter()
        .filter(|s| s.name.eq_ignore_ascii_case(name))
        .flat_map(|s| s.entries.iter())
        .collect()
}

/// A key set twice in one HA section is ambiguous: an error.
fn check_duplicates(
    ctx: &Ctx,
    section_name: &str,
    entries: &[&RawEntry],
) -> Result<(), ConfigError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in entries {
        if let Some(first) = seen.insert(e.key.to_ascii_lowercase(), e.line) {
            return Err(ctx.entry_err(
                e,
                format!("duplicate key in {section_name} (already set at line {first})"),
            ));
        }
    }
    Ok(())
}

/// Accepts 0/1/yes/no/true/false/enabled/disabled (case-insensitive).
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "enabled" => Some(true),
        "0" | "no" | "false" | "disabled" => Some(false),
        _ => None,
    }
}

fn bool_value(ctx: &Ctx, e: &RawEntry) -> Result<bool, ConfigError> {
    parse_bool(&e.value).ok_or_else(|| {
        ctx.entry_err(
            e,
            format!(
                "expected 0/1, yes/no, true/false or enabled/disabled, found \"{}\"",
                e.value
            ),
        )
    })
}

fn ranged(ctx: &Ctx, e: &RawEntry, what: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match e.value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ctx.entry_err(
            e,
            format!("expected {what} from {min} to {max}, found \"{}\"", e.value),
        )),
    }
}

/// Splits a comma-separated serial list; empty items and serials with white space are errors.
fn serial_list(ctx: &Ctx, e: &RawEntry) -> Result<Vec<String>, ConfigError> {
    if e.value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in e.value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(ctx.entry_err(
                e,
                format!(
                    "empty item in the serial list \"{}\": expected comma-separated token serial numbers",
                    e.value
                ),
            ));
        }
        if item.contains(char::is_whitespace) {
            return Err(ctx.entry_err(
                e,
                format!("serial \"{item}\" contains white space: expected comma-separated token serial numbers (missing comma?)"),
            ));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

/// The derived group serial: "1" + `first`, or "1" + its last 15 characters when that is too long.
pub fn derive_group_serial(first: &str) -> String {
    let serial = format!("1{first}");
    if serial.chars().count() <= MAX_SERIAL_LEN {
        return serial;
    }
    let chars: Vec<char> = first.chars().collect();
    let tail: String = chars[chars.len() - (MAX_SERIAL_LEN - 1)..].iter().collect();
    format!("1{tail}")
}

/// `<prefix><digits><suffix>` with at least one digit: (digits, lowercased suffix).
fn numbered<'k>(key: &'k str, prefix: &str) -> Option<(&'k str, String)> {
    if key.len() <= prefix.len() || !key.is_char_boundary(prefix.len()) {
        return None;
    }
    if !key[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &key[prefix.len()..];
    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    Some((&rest[..n], rest[n..].to_ascii_lowercase()))
}

fn index_of(ctx: &Ctx, e: &RawEntry, digits: &str, example: &str) -> Result<u32, ConfigError> {
    if digits.len() < 2 {
        return Err(ctx.entry_err(
            e,
            format!("the number in the key must have at least two digits (e.g. {example})"),
        ));
    }
    digits
        .parse::<u32>()
        .map_err(|_| ctx.entry_err(e, format!("number {digits} in the key is too large")))
}

/// The digits in a key, for suggestions (`VirtualToken01Lable` → "01").
fn digits_in(key: &str) -> String {
    let d: String = key
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    if d.len() >= 2 {
        d
    } else {
        "00".into()
    }
}

#[derive(Default)]
struct GroupDraft<'a> {
    label: Option<&'a RawEntry>,
    sn: Option<&'a RawEntry>,
    members: Option<&'a RawEntry>,
    standby: Option<&'a RawEntry>,
}

#[derive(Default)]
struct ProviderDraft<'a> {
    library: Option<&'a RawEntry>,
    env: Option<&'a RawEntry>,
}

pub(crate) fn build(sections: &[RawSection], file: &Path) -> Result<HaConfig, ConfigError> {
    let mut ctx = Ctx {
        file,
        warnings: Vec::new(),
    };
    let vt = section(sections, SEC_VT);
    let sync = section(sections, SEC_SYNC);
    let recovery = section(sections, SEC_RECOVERY);
    let conf = section(sections, SEC_CONF);
    let prov = section(sections, SEC_PROVIDERS);
    let lunasa = section(sections, SEC_LUNASA);
    for (name, entries) in [
        (SEC_VT, &vt),
        (SEC_SYNC, &sync),
        (SEC_RECOVERY, &recovery),
        (SEC_CONF, &conf),
        (SEC_PROVIDERS, &prov),
    ] {
        check_duplicates(&ctx, name, entries)?;
    }

    let (mode, mut groups) = build_groups(&mut ctx, &vt)?;
    apply_group_settings(&ctx, &sync, &recovery, &mut groups)?;
    let providers = build_providers(&mut ctx, &prov)?;
    if !groups.is_empty() && providers.is_empty() {
        let line = vt.first().map_or(0, |e| e.line);
        return Err(ctx.err(
            line,
            SEC_PROVIDERS,
            "no member providers configured: add an HAProviders section with \
             Provider00Library = /path/to/pkcs11-module.so (at least one is needed when a \
             VirtualToken group is configured)",
        ));
    }

    // HAConfiguration.
    let mut ha_only = false;
    let mut log_path: Option<PathBuf> = None;
    let mut journal_path: Option<PathBuf> = None;
    let mut log_status: Option<(bool, &RawEntry)> = None;
    let mut max_len = DEFAULT_LOG_LEN;
    let mut to_stdout = false;
    let mut failover_on_deactivation = true;
    let mut attempts = DEFAULT_RECONN_ATT;
    let mut interval = DEFAULT_RECONNECT_INTERVAL_S;
    let mut receive_ms = DEFAULT_RECEIVE_TIMEOUT_MS;
    let mut connect_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    // Timeouts from `LunaSA Client` first, so HAConfiguration wins.
    for e in &lunasa {
        if e.key.eq_ignore_ascii_case("ReceiveTimeout") {
            receive_ms = ranged(&ctx, e, "a timeout in milliseconds", 100, 600_000)?;
        } else if e.key.eq_ignore_ascii_case("ConnectTimeout") {
            connect_ms = ranged(&ctx, e, "a timeout in milliseconds", 100, 600_000)?;
        }
    }
    for e in &conf {
        let known = CONF_KEYS.iter().find(|k| k.eq_ignore_ascii_case(&e.key));
        match known.copied() {
            Some("HAOnly") => ha_only = bool_value(&ctx, e)?,
            Some("haLogPath") => {
                log_path = (!e.value.is_empty()).then(|| PathBuf::from(&e.value));
            }
            Some("haJournalPath") => {
                journal_path = (!e.value.is_empty()).then(|| PathBuf::from(&e.value));
            }
            Some("haLogStatus") => log_status = Some((bool_value(&ctx, e)?, e)),
            Some("logLen") => {
                max_len = match e.value.parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(ctx.entry_err(
                            e,
                            format!(
                                "expected a number of bytes (a positive integer), found \"{}\"",
                                e.value
                            ),
                        ))
                    }
                }
            }
            Some("haLogToStdout") => to_stdout = bool_value(&ctx, e)?,
            Some("failover_on_deactivation") => failover_on_deactivation = bool_value(&ctx, e)?,
            Some("reconnAtt") => {
                attempts = match e.value.parse::<i64>() {
                    Ok(n) if n >= -1 => n,
                    _ => {
                        return Err(ctx.entry_err(
                            e,
                            format!(
                                "expected a number of recovery attempts (-1 = unlimited, 0 = no \
                                 auto-recovery, N >= 1), found \"{}\"",
                                e.value
                            ),
                        ))
                    }
                }
            }
            Some("AutoReconnectInterval") => {
                interval = ranged(&ctx, e, "a number of seconds", 1, 3600)?;
            }
            Some("ReceiveTimeout") => {
                receive_ms = ranged(&ctx, e, "a timeout in milliseconds", 100, 600_000)?;
            }
            Some("ConnectTimeout") => {
                connect_ms = ranged(&ctx, e, "a timeout in milliseconds", 100, 600_000)?;
            }
            _ => {
                let candidates: Vec<String> = CONF_KEYS.iter().map(|s| s.to_string()).collect();
                ctx.unknown_key(e, SEC_CONF, &candidates);
            }
        }
    }
    if let Some((true, e)) = log_status {
        if log_path.is_none() {
            ctx.warn(
                e.line,
                &e.key,
                "haLogStatus is enabled but haLogPath is not set: no HA log file is written",
            );
        }
    }
    let journal_dir = journal_path.or_else(|| log_path.clone());
    let log = LogSettings {
        enabled: log_path.is_some() && !matches!(log_status, Some((false, _))),
        path: log_path,
        max_len,
        to_stdout,
    };

    Ok(HaConfig {
        path: file.to_path_buf(),
        groups,
        providers,
        ha_only,
        log,
        recovery: RecoverySettings {
            mode,
            attempts,
            interval: Duration::from_secs(interval),
        },
        failover_on_deactivation,
        journal_dir,
        receive_timeout: Duration::from_millis(receive_ms),
        connect_timeout: Duration::from_millis(connect_ms),
        warnings: ctx.warnings,
    })
}

fn build_groups(
    ctx: &mut Ctx,
    vt: &[&RawEntry],
) -> Result<(RecoveryMode, Vec<GroupConfig>), ConfigError> {
    let mut mode = RecoveryMode::Enhanced;
    let mut drafts: BTreeMap<u32, GroupDraft> = BTreeMap::new();
    for e in vt {
        if e.key.eq_ignore_ascii_case("VirtualTokenActiveRecovery") {
            mode = match e.value.to_ascii_lowercase().as_str() {
                "activebasic" => RecoveryMode::Basic,
                "activeenhanced" => RecoveryMode::Enhanced,
                _ => {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "expected activeBasic or activeEnhanced, found \"{}\"",
                            e.value
                        ),
                    ))
                }
            };
            continue;
        }
        if let Some((digits, suffix)) = numbered(&e.key, "VirtualToken") {
            if matches!(suffix.as_str(), "label" | "sn" | "members" | "standby") {
                let example = format!("VirtualToken0{digits}Label");
                let index = index_of(ctx, e, digits, &example)?;
                let d = drafts.entry(index).or_default();
                let slot = match suffix.as_str() {
                    "label" => &mut d.label,
                    "sn" => &mut d.sn,
                    "members" => &mut d.members,
                    _ => &mut d.standby,
                };
                if let Some(first) = slot {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "duplicate key for group {index} (already set at line {} as {})",
                            first.line, first.key
                        ),
                    ));
                }
                *slot = Some(e);
                continue;
            }
        }
        let nn = digits_in(&e.key);
        let candidates: Vec<String> = ["Label", "SN", "Members", "Standby"]
            .iter()
            .map(|s| format!("VirtualToken{nn}{s}"))
            .chain(std::iter::once("VirtualTokenActiveRecovery".to_string()))
            .collect();
        ctx.unknown_key(e, SEC_VT, &candidates);
    }

    let mut groups: Vec<GroupConfig> = Vec::new();
    // serial -> (group label, line, key) for cross-group checks.
    let mut member_owner: HashMap<String, (String, usize)> = HashMap::new();
    let mut serial_owner: HashMap<String, String> = HashMap::new();
    for (index, d) in drafts {
        let Some(label_e) = d.label else {
            let e = [d.sn, d.members, d.standby]
                .into_iter()
                .flatten()
                .min_by_key(|e| e.line)
                .expect("a draft has at least one key");
            return Err(ctx.entry_err(
                e,
                format!(
                    "group {index:02} has no label: add VirtualToken{index:02}Label = <label> \
                     (every group needs a label)"
                ),
            ));
        };
        let label = label_e.value.clone();
        if label.is_empty() {
            return Err(ctx.entry_err(label_e, "empty label: expected the HA group's token label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(ctx.entry_err(
                label_e,
                format!(
                    "label \"{label}\" is {} bytes long: a token label holds at most {MAX_LABEL_LEN}",
                    label.len()
                ),
            ));
        }
        if let Some(other) = groups.iter().find(|g| g.label.eq_ignore_ascii_case(&label)) {
            return Err(ctx.entry_err(
                label_e,
                format!(
                    "duplicate label \"{label}\": group {:02} already uses \"{}\" (labels must \
                     differ, ignoring case)",
                    other.index, other.label
                ),
            ));
        }
        let members = match d.members {
            Some(e) => serial_list(ctx, e)?,
            None => Vec::new(),
        };
        let standby = match d.standby {
            Some(e) => serial_list(ctx, e)?,
            None => Vec::new(),
        };
        if members.is_empty() && standby.is_empty() {
            return Err(ctx.entry_err(
                d.members.unwrap_or(label_e),
                format!(
                    "group \"{label}\" has no members: set VirtualToken{index:02}Members \
                     (comma-separated token serial numbers)"
                ),
            ));
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        let lists = [
            (d.members, &members, "active"),
            (d.standby, &standby, "standby"),
        ];
        for (entry, list, kind) in lists {
            for serial in list.iter() {
                let e = entry.expect("a non-empty list has an entry");
                if let Some(prev) = seen.insert(serial, kind) {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "member {serial} is listed twice in group \"{label}\" (as {prev} and \
                             as {kind} member)"
                        ),
                    ));
                }
                if let Some((other, line)) = member_owner.get(serial.as_str()) {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "member {serial} is already in group \"{other}\" (line {line}): a \
                             token can belong to one group only"
                        ),
                    ));
                }
            }
        }
        for (entry, list) in [(d.members, &members), (d.standby, &standby)] {
            for serial in list.iter() {
                let line = entry.map_or(0, |e| e.line);
                member_owner.insert(serial.clone(), (label.clone(), line));
            }
        }
        let serial = match d.sn {
            Some(e) => {
                let sn = &e.value;
                let printable = sn.bytes().all(|b| (0x21..=0x7e).contains(&b));
                if sn.is_empty() || sn.len() > MAX_SERIAL_LEN || !printable {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "expected 1 to {MAX_SERIAL_LEN} printable ASCII characters without \
                             spaces (CK_TOKEN_INFO.serialNumber holds 16), found \"{sn}\""
                        ),
                    ));
                }
                sn.clone()
            }
            None => derive_group_serial(members.first().or(standby.first()).expect("non-empty")),
        };
        if let Some(other) = serial_owner.insert(serial.clone(), label.clone()) {
            let e = d.sn.unwrap_or(label_e);
            return Err(ctx.entry_err(
                e,
                format!(
                    "group serial {serial} of \"{label}\" is already the serial of group \
                     \"{other}\": set a distinct VirtualToken{index:02}SN"
                ),
            ));
        }
        groups.push(GroupConfig {
            index,
            label,
            serial,
            members,
            standby,
            synchronize: false,
            manual_recovery: None,
        });
    }
    Ok((mode, groups))
}

fn find_group<'g>(
    ctx: &Ctx,
    e: &RawEntry,
    section: &str,
    groups: &'g mut [GroupConfig],
) -> Result<&'g mut GroupConfig, ConfigError> {
    let pos = groups.iter().position(|g| g.label == e.key).or_else(|| {
        groups
            .iter()
            .position(|g| g.label.eq_ignore_ascii_case(&e.key))
    });
    match pos {
        Some(i) => Ok(&mut groups[i]),
        None => {
            let known: Vec<String> = groups.iter().map(|g| format!("\"{}\"", g.label)).collect();
            let known = if known.is_empty() {
                "none is configured in VirtualToken".to_string()
            } else {
                format!("known groups: {}", known.join(", "))
            };
            Err(ctx.entry_err(
                e,
                format!(
                    "unknown HA group label \"{}\" in {section} ({known})",
                    e.key
                ),
            ))
        }
    }
}

fn apply_group_settings(
    ctx: &Ctx,
    sync: &[&RawEntry],
    recovery: &[&RawEntry],
    groups: &mut [GroupConfig],
) -> Result<(), ConfigError> {
    for e in sync {
        let g = find_group(ctx, e, SEC_SYNC, groups)?;
        g.synchronize = match e.value.as_str() {
            "0" => false,
            "1" => true,
            _ => {
                return Err(ctx.entry_err(
                    e,
                    format!(
                        "expected 0 or 1 (1 = replicate objects to every member), found \"{}\"",
                        e.value
                    ),
                ))
            }
        };
    }
    for e in recovery {
        let g = find_group(ctx, e, SEC_RECOVERY, groups)?;
        g.manual_recovery = Some(e.value.parse::<u64>().map_err(|_| {
            ctx.entry_err(
                e,
                format!(
                    "expected a manual-recovery counter (a non-negative integer), found \"{}\"",
                    e.value
                ),
            )
        })?);
    }
    Ok(())
}

/// Parses `NAME=VALUE, NAME2=VALUE2` (split at the first `=` of each item).
pub(crate) fn parse_env(value: &str) -> Result<Vec<(String, String)>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        let Some((name, val)) = item.split_once('=') else {
            return Err(format!(
                "malformed item \"{item}\": expected NAME=VALUE (comma-separated)"
            ));
        };
        let name = name.trim();
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "malformed item \"{item}\": \"{name}\" is not an environment variable name \
                 (letters, digits and '_', not starting with a digit)"
            ));
        }
        out.push((name.to_string(), val.trim().to_string()));
    }
    Ok(out)
}

fn build_providers(ctx: &mut Ctx, prov: &[&RawEntry]) -> Result<Vec<ProviderConfig>, ConfigError> {
    let mut drafts: BTreeMap<u32, ProviderDraft> = BTreeMap::new();
    for e in prov {
        if let Some((digits, suffix)) = numbered(&e.key, "Provider") {
            if matches!(suffix.as_str(), "library" | "env") {
                let index = index_of(ctx, e, digits, &format!("Provider0{digits}Library"))?;
                let d = drafts.entry(index).or_default();
                let slot = if suffix == "library" {
                    &mut d.library
                } else {
                    &mut d.env
                };
                if let Some(first) = slot {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "duplicate key for provider {index} (already set at line {} as {})",
                            first.line, first.key
                        ),
                    ));
                }
                *slot = Some(e);
                continue;
            }
        }
        let nn = digits_in(&e.key);
        let candidates = vec![format!("Provider{nn}Library"), format!("Provider{nn}Env")];
        ctx.unknown_key(e, SEC_PROVIDERS, &candidates);
    }
    let mut out = Vec::new();
    for (index, d) in drafts {
        let Some(lib) = d.library else {
            let e = d.env.expect("a draft has at least one key");
            return Err(ctx.entry_err(
                e,
                format!(
                    "Provider{index:02}Env without Provider{index:02}Library: add \
                     Provider{index:02}Library = /path/to/pkcs11-module.so"
                ),
            ));
        };
        if lib.value.is_empty() {
            return Err(ctx.entry_err(
                lib,
                "empty library path: expected the path of a PKCS#11 module",
            ));
        }
        let library = PathBuf::from(&lib.value);
        if !library.is_file() {
            return Err(ctx.entry_err(
                lib,
                format!(
                    "missing provider library: \"{}\" does not exist or is not a file",
                    lib.value
                ),
            ));
        }
        let env = match d.env {
            Some(e) => parse_env(&e.value).map_err(|m| ctx.entry_err(e, m))?,
            None => Vec::new(),
        };
        out.push(ProviderConfig {
            index,
            library,
            env,
        });
    }
    Ok(out)
}
