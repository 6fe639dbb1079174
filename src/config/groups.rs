//! HA groups: `VirtualTokenNN*` (label, serial, members, standby), the recovery mode, and the
//! per-label sections HASynchronize and HARecovery.

use std::collections::{BTreeMap, HashMap};

use super::echo::{plain, quoted};
use super::keys::{digits_in, index, numbered};
use super::validate::{Ctx, SEC_RECOVERY, SEC_SYNC, SEC_VT};
use super::{ConfigError, GroupConfig, RawEntry, RecoveryMode};

/// `CK_TOKEN_INFO.serialNumber` and `.label` sizes.
pub const MAX_SERIAL_LEN: usize = 16;
pub const MAX_LABEL_LEN: usize = 32;

/// Labels listed in an "unknown HA group label" error; more are counted.
const LABELS_SHOWN: usize = 5;

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

/// Splits a comma-separated serial list; empty items, serials with white space and serials that
/// are not printable ASCII (no token could match them) are errors.
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
                    "empty item in the serial list {}: expected comma-separated token serial \
                     numbers",
                    quoted(&e.value)
                ),
            ));
        }
        if item.contains(char::is_whitespace) {
            return Err(ctx.entry_err(
                e,
                format!(
                    "serial {} contains white space: expected comma-separated token serial \
                     numbers (missing comma?)",
                    quoted(item)
                ),
            ));
        }
        if !item.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ctx.entry_err(
                e,
                format!(
                    "serial {} is not printable ASCII: a token serial number \
                     (CK_TOKEN_INFO.serialNumber) is made of printable ASCII characters",
                    quoted(item)
                ),
            ));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

#[derive(Default)]
struct Draft<'a> {
    label: Option<&'a RawEntry>,
    sn: Option<&'a RawEntry>,
    members: Option<&'a RawEntry>,
    standby: Option<&'a RawEntry>,
}

/// Sorts `VirtualTokenNN*` keys into one draft per NN; reads the recovery mode.
fn drafts<'a>(
    ctx: &mut Ctx,
    vt: &[&'a RawEntry],
) -> Result<(RecoveryMode, BTreeMap<u32, Draft<'a>>), ConfigError> {
    let mut mode = RecoveryMode::Enhanced;
    let mut drafts: BTreeMap<u32, Draft> = BTreeMap::new();
    for e in vt {
        if e.key.eq_ignore_ascii_case("VirtualTokenActiveRecovery") {
            mode = match e.value.to_ascii_lowercase().as_str() {
                "activebasic" => RecoveryMode::Basic,
                "activeenhanced" => RecoveryMode::Enhanced,
                _ => {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "expected activeBasic or activeEnhanced, found {}",
                            quoted(&e.value)
                        ),
                    ))
                }
            };
            continue;
        }
        if let Some((digits, suffix)) = numbered(&e.key, "VirtualToken") {
            if matches!(suffix.as_str(), "label" | "sn" | "members" | "standby") {
                let example = format!("VirtualToken0{digits}Label");
                let index = index(digits, &example).map_err(|m| ctx.entry_err(e, m))?;
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
                            first.line,
                            plain(&first.key)
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
    Ok((mode, drafts))
}

/// Checks across groups: labels, member serials and group serials are each used once.
#[derive(Default)]
struct Owners {
    /// Lowercased label -> (index, label).
    labels: HashMap<String, (u32, String)>,
    /// Member serial -> (group label, line).
    members: HashMap<String, (String, usize)>,
    /// Group serial -> group label.
    serials: HashMap<String, String>,
}

fn label(ctx: &Ctx, owners: &Owners, e: &RawEntry) -> Result<String, ConfigError> {
    let label = e.value.clone();
    if label.is_empty() {
        return Err(ctx.entry_err(e, "empty label: expected the HA group's token label"));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(ctx.entry_err(
            e,
            format!(
                "label {} is {} bytes long: a token label holds at most {MAX_LABEL_LEN}",
                quoted(&label),
                label.len()
            ),
        ));
    }
    if let Some((index, other)) = owners.labels.get(&label.to_lowercase()) {
        return Err(ctx.entry_err(
            e,
            format!(
                "duplicate label {}: group {index:02} already uses {} (labels must differ, \
                 ignoring case)",
                quoted(&label),
                quoted(other)
            ),
        ));
    }
    Ok(label)
}

fn group(ctx: &Ctx, owners: &mut Owners, index: u32, d: Draft) -> Result<GroupConfig, ConfigError> {
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
    let label = label(ctx, owners, label_e)?;
    let shown = quoted(&label);
    let list = |e: Option<&RawEntry>| e.map_or(Ok(Vec::new()), |e| serial_list(ctx, e));
    let members = list(d.members)?;
    let standby = list(d.standby)?;
    if members.is_empty() && standby.is_empty() {
        return Err(ctx.entry_err(
            d.members.unwrap_or(label_e),
            format!(
                "group {shown} has no members: set VirtualToken{index:02}Members \
                 (comma-separated token serial numbers)"
            ),
        ));
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (entry, list, kind) in [
        (d.members, &members, "active"),
        (d.standby, &standby, "standby"),
    ] {
        for serial in list.iter() {
            let e = entry.expect("a non-empty list has an entry");
            let s = plain(serial);
            if let Some(prev) = seen.insert(serial, kind) {
                return Err(ctx.entry_err(
                    e,
                    format!(
                        "member {s} is listed twice in group {shown} (as {prev} and as {kind} \
                         member)"
                    ),
                ));
            }
            if let Some((other, line)) = owners.members.get(serial.as_str()) {
                return Err(ctx.entry_err(
                    e,
                    format!(
                        "member {s} is already in group {} (line {line}): a token can belong to \
                         one group only",
                        quoted(other)
                    ),
                ));
            }
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
                         spaces (CK_TOKEN_INFO.serialNumber holds 16), found {}",
                        quoted(sn)
                    ),
                ));
            }
            sn.clone()
        }
        None => derive_group_serial(members.first().or(standby.first()).expect("non-empty")),
    };
    if let Some(other) = owners.serials.get(&serial) {
        return Err(ctx.entry_err(
            d.sn.unwrap_or(label_e),
            format!(
                "group serial {} of {shown} is already the serial of group {}: set a distinct \
                 VirtualToken{index:02}SN",
                plain(&serial),
                quoted(other)
            ),
        ));
    }
    for (entry, list) in [(d.members, &members), (d.standby, &standby)] {
        for serial in list.iter() {
            let line = entry.map_or(0, |e| e.line);
            owners.members.insert(serial.clone(), (label.clone(), line));
        }
    }
    owners.serials.insert(serial.clone(), label.clone());
    owners
        .labels
        .insert(label.to_lowercase(), (index, label.clone()));
    Ok(GroupConfig {
        index,
        label,
        serial,
        members,
        standby,
        synchronize: false,
        manual_recovery: None,
    })
}

/// The groups of VirtualToken, ordered by number, and the recovery mode.
pub(crate) fn build(
    ctx: &mut Ctx,
    vt: &[&RawEntry],
) -> Result<(RecoveryMode, Vec<GroupConfig>), ConfigError> {
    let (mode, drafts) = drafts(ctx, vt)?;
    let mut owners = Owners::default();
    let groups = drafts
        .into_iter()
        .map(|(index, d)| group(ctx, &mut owners, index, d))
        .collect::<Result<_, _>>()?;
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
    if let Some(i) = pos {
        return Ok(&mut groups[i]);
    }
    let mut known: Vec<String> = groups
        .iter()
        .take(LABELS_SHOWN)
        .map(|g| quoted(&g.label).to_string())
        .collect();
    if groups.len() > LABELS_SHOWN {
        known.push(format!("… ({} groups)", groups.len()));
    }
    let known = if known.is_empty() {
        "none is configured in VirtualToken".to_string()
    } else {
        format!("known groups: {}", known.join(", "))
    };
    Err(ctx.entry_err(
        e,
        format!(
            "unknown HA group label {} in {section} ({known})",
            quoted(&e.key)
        ),
    ))
}

/// HASynchronize (`<label> = 0|1`) and HARecovery (`<label> = counter`).
pub(crate) fn apply_settings(
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
                        "expected 0 or 1 (1 = replicate objects to every member), found {}",
                        quoted(&e.value)
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
                    "expected a manual-recovery counter (a non-negative integer), found {}",
                    quoted(&e.value)
                ),
            )
        })?);
    }
    Ok(())
}
