//! Comparing the two sides' observations of one call, and the allow-list: the differences
//! that are p11ha's by design (`tests/differential_allow.txt`, one entry a line:
//! `function | field | SoftHSM's answer | p11ha's answer | set-ups | reason`, `*` matching
//! anything).

use std::fmt;
use std::path::Path;

use super::obs::Obs;

/// One field two sides answered differently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub function: &'static str,
    pub field: String,
    pub reference: String,
    pub p11ha: String,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: SoftHSM {}, p11ha {}",
            self.function, self.field, self.reference, self.p11ha
        )
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub function: String,
    pub field: String,
    pub reference: String,
    pub p11ha: String,
    pub setups: Vec<String>,
    pub reason: String,
    pub line: usize,
}

impl Entry {
    fn matches(&self, d: &Diff, setup: &str) -> bool {
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        m(&self.function, d.function)
            && m(&self.field, &d.field)
            && m(&self.reference, &d.reference)
            && m(&self.p11ha, &d.p11ha)
            && (self.setups.iter().any(|s| s == "*" || s == setup))
    }
}

#[derive(Clone, Debug, Default)]
pub struct AllowList {
    pub entries: Vec<Entry>,
}

impl AllowList {
    /// Reads the allow-list; a malformed line is an error naming it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = t.splitn(6, '|').map(str::trim).collect();
            if parts.len() != 6 || parts[5].is_empty() {
                return Err(format!(
                    "line {}: want `function | field | SoftHSM | p11ha | set-ups | reason`",
                    i + 1
                ));
            }
            entries.push(Entry {
                function: parts[0].to_string(),
                field: parts[1].to_string(),
                reference: parts[2].to_string(),
                p11ha: parts[3].to_string(),
                setups: parts[4].split(',').map(|s| s.trim().to_string()).collect(),
                reason: parts[5].to_string(),
                line: i + 1,
            });
        }
        Ok(AllowList { entries })
    }

    /// The entry that allows `d` in `setup`, if any.
    pub fn allows(&self, d: &Diff, setup: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.matches(d, setup))
    }
}

/// Every field in which the two sides' observations of one call differ, in the order the call
/// recorded them (a field one side lacks is "(absent)").
pub fn differences(function: &'static str, reference: &[Obs], p11ha: &[Obs]) -> Vec<Diff> {
    let mut fields: Vec<&str> = reference.iter().map(|o| o.field.as_str()).collect();
    for o in p11ha {
        if !fields.contains(&o.field.as_str()) {
            fields.push(&o.field);
        }
    }
    let get = |obs: &[Obs], f: &str| {
        obs.iter()
            .find(|o| o.field == f)
            .map_or("(absent)".to_string(), |o| o.val.to_string())
    };
    fields
        .into_iter()
        .filter_map(|f| {
            let (a, b) = (get(reference, f), get(p11ha, f));
            (a != b).then(|| Diff {
                function,
                field: f.to_string(),
                reference: a,
                p11ha: b,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::obs::Val;
    use cryptoki_sys::*;

    #[test]
    fn a_difference_is_allowed_only_by_a_matching_entry() {
        let list = AllowList::parse(
            "# comment\nC_Logout | rv | CKR_OK | CKR_USER_NOT_LOGGED_IN | * | spec\n\
             C_GetTokenInfo | label | * | * | direct, sync | p11ha's own\n",
        )
        .unwrap();
        let d = differences(
            "C_Logout",
            &[Obs::new("rv", Val::Rv(CKR_OK))],
            &[Obs::new("rv", Val::Rv(CKR_USER_NOT_LOGGED_IN))],
        );
        assert_eq!(d.len(), 1);
        assert!(list.allows(&d[0], "p11kit").is_some());
        let other = differences(
            "C_Logout",
            &[Obs::new("rv", Val::Rv(CKR_OK))],
            &[Obs::new("rv", Val::Rv(CKR_DEVICE_ERROR))],
        );
        assert!(list.allows(&other[0], "direct").is_none());
        let label = differences(
            "C_GetTokenInfo",
            &[Obs::new("label", Val::Text("m3".into()))],
            &[Obs::new("label", Val::Text("hagroup".into()))],
        );
        assert!(list.allows(&label[0], "sync").is_some());
        assert!(list.allows(&label[0], "p11kit").is_none());
        assert!(AllowList::parse("C_Logout | rv | CKR_OK\n").is_err());
    }

    #[test]
    fn a_field_one_side_lacks_is_a_difference() {
        let d = differences(
            "C_Sign",
            &[Obs::new("rv", Val::Rv(CKR_OK)), Obs::new("len", Val::U(32))],
            &[Obs::new("rv", Val::Rv(CKR_OK))],
        );
        assert_eq!(d[0].field, "len");
        assert_eq!(d[0].p11ha, "(absent)");
    }
}
