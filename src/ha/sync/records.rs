//! What a member is owed, kept on the members themselves: one hidden token object per record,
//! so that any process on any host can see it and settle it (docs/SYNC.md, "What a member that
//! was down is owed").
//!
//! A record is a CKO_DATA token object labelled [`OWED_LABEL`] (CKA_LABEL and CKA_APPLICATION),
//! CKA_MODIFIABLE false, whose CKA_VALUE is one line of ASCII:
//!
//! ```text
//! p11ha-owed 1 <id> <order> <target> D <identity>                      destroy
//! p11ha-owed 1 <id> <order> <target> S <before> <after> <types>        attribute change
//! p11ha-owed 1 <id> <order> <target> C <u|p>                           objects were created
//! p11ha-owed 1 <id> <order> <target> F <id>,<id>,...                   those records are settled
//! p11ha-owed 1 <id> <order> <target> L                                 a settler is at work
//! ```
//!
//! `<id>` is 128 random bits in hex, the same on every member that holds a copy; `<order>` the
//! writer's clock in nanoseconds since 1970 (hex); `<target>` the serial of the member owed (hex).
//! `<identity>` is `type=value,...` in hex (`-` when empty): class, key type, CKA_ID, label, token
//! flag and public fingerprints ([`Identity`]), never a value an application set and never key
//! material; `<types>` attribute types in hex. `C p` asks for a comparison with a user login
//! (private objects may be missing), `C u` for one without. `F` names records a settler applied
//! (a member that was down while they were settled still holds copies); `L` is a settler's claim
//! on its target, held on the target itself.
//!
//! A record is private (CKA_PRIVATE true) when the object it is about is: then only the user
//! who could destroy that object can see, write or settle it. A public record never acts on a
//! private object (anyone who can open a session could have written it).
//!
//! Records are never modified: each is written whole and settled by destroying it, so writers
//! on several hosts never conflict.

use crate::ha::objects::Identity;
use crate::mechanism::Attr;
use crate::provider::{Fault, Instance, MemberResult};
use cryptoki_sys::*;

/// CKA_LABEL and CKA_APPLICATION of every record.
pub const OWED_LABEL: &[u8] = b"p11ha-owed";
const MAGIC: &str = "p11ha-owed";
const VERSION: &str = "1";
/// Room given to a record's value on the first read: one call when it fits (almost always).
const VALUE_ROOM: CK_ULONG = 4096;

/// What a record says.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The object was destroyed.
    Destroy(Identity),
    /// Attributes of these types changed; `after` finds the changed object on a member that has
    /// the change, `before` its twin on the member that missed it.
    Set {
        before: Identity,
        after: Identity,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
    },
    /// Token objects were created: the member needs a comparison with a member that has them,
    /// with a user login when `login` (the creator was logged in, so they may be private).
    Created { login: bool },
    /// These records were settled; a copy of one is dropped wherever it is found.
    Forget(Vec<String>),
    /// A settler's claim on its target (see `catchup`): held on the target, for a short lease.
    Claim,
}

impl Change {
    /// A destroy or attribute change: a member owed one would hand back stale objects, so it is
    /// never the source of a copy.
    pub fn is_change(&self) -> bool {
        matches!(self, Change::Destroy(_) | Change::Set { .. })
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    /// The writer's clock, nanoseconds since 1970: records owed to one member apply in this order.
    pub order: u64,
    /// Serial of the member the record is about.
    pub target: String,
    /// CKA_PRIVATE of the record object (not part of the encoding).
    pub private: bool,
    pub change: Change,
}

impl Record {
    pub fn new(target: &str, change: Change, private: bool) -> Record {
        Record {
            id: new_id(),
            order: now_ns(),
            target: target.to_string(),
            private,
            change,
        }
    }

    /// The record as a person reads it: identities by label and CKA_ID, never a value.
    pub fn describe(&self) -> String {
        match &self.change {
            Change::Destroy(i) => format!("destroy {}", i.describe()),
            Change::Set {
                before,
                after,
                kinds,
            } => {
                let types: Vec<String> = kinds.iter().map(|k| attr_name(*k)).collect();
                if before.describe() == after.describe() {
                    format!("change {} ({})", before.describe(), types.join(", "))
                } else {
                    format!(
                        "change {} into {} ({})",
                        before.describe(),
                        after.describe(),
                        types.join(", ")
                    )
                }
            }
            Change::Created { login: true } => "objects created while it was down".into(),
            Change::Created { login: false } => "public objects created while it was down".into(),
            Change::Forget(ids) => format!("drop {} settled records", ids.len()),
            Change::Claim => "being caught up".into(),
        }
    }

    /// The CKA_VALUE of the record object.
    pub fn encode(&self) -> String {
        let head = format!(
            "{MAGIC} {VERSION} {} {:x} {}",
            self.id,
            self.order,
            hex(self.target.as_bytes())
        );
        match &self.change {
            Change::Destroy(i) => format!("{head} D {}", identity_text(i)),
            Change::Set {
                before,
                after,
                kinds,
            } => format!(
                "{head} S {} {} {}",
                identity_text(before),
                identity_text(after),
                kinds
                    .iter()
                    .map(|k| format!("{k:x}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Change::Created { login } => format!("{head} C {}", if *login { "p" } else { "u" }),
            Change::Forget(ids) => format!("{head} F {}", ids.join(",")),
            Change::Claim => format!("{head} L"),
        }
    }

    /// Reads a record back; `None` for anything else (another version, a torn write).
    pub fn decode(text: &str, private: bool) -> Option<Record> {
        let f: Vec<&str> = text.split(' ').collect();
        if f.len() < 6 || f[0] != MAGIC || f[1] != VERSION {
            return None;
        }
        let id = f[2];
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let change = match (f[5], f.len()) {
            ("D", 7) => Change::Destroy(parse_identity(f[6])?),
            ("S", 9) => Change::Set {
                before: parse_identity(f[6])?,
                after: parse_identity(f[7])?,
                kinds: f[8]
                    .split(',')
                    .map(|k| CK_ATTRIBUTE_TYPE::from_str_radix(k, 16).ok())
                    .collect::<Option<Vec<_>>>()?,
            },
            ("C", 7) => Change::Created {
                login: match f[6] {
                    "p" => true,
                    "u" => false,
                    _ => return None,
                },
            },
            ("F", 7) => Change::Forget(
                f[6].split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            ("L", 6) => Change::Claim,
            _ => return None,
        };
        Some(Record {
            id: id.to_string(),
            order: u64::from_str_radix(f[3], 16).ok()?,
            target: unhex_str(f[4])?,
            private,
            change,
        })
    }
}

/// A record found on a member, with its handle there.
#[derive(Debug, Clone)]
pub struct Held {
    pub handle: CK_OBJECT_HANDLE,
    pub rec: Record,
}

/// The search template that finds every record.
fn search() -> Vec<Attr> {
    vec![
        Attr::ulong(CKA_CLASS, CKO_DATA),
        Attr::bool(CKA_TOKEN, true),
        Attr::new(CKA_LABEL, OWED_LABEL.to_vec()),
        Attr::new(CKA_APPLICATION, OWED_LABEL.to_vec()),
    ]
}

/// Every record a member holds that this session can see (private ones only with a user
/// login). Objects that do not decode are left alone.
pub fn read(inst: &Instance, session: CK_SESSION_HANDLE) -> MemberResult<Vec<Held>> {
    let mut out = Vec::new();
    for h in inst.find_all(session, search())? {
        let (rv, values) = inst.get_attributes(
            session,
            h,
            vec![(CKA_PRIVATE, Some(1)), (CKA_VALUE, Some(VALUE_ROOM))],
        )?;
        let value = match (rv, &values[1].1) {
            (CKR_OK, Some(v)) => Some(v.clone()),
            // Settled by someone else meanwhile.
            (CKR_OBJECT_HANDLE_INVALID, _) => continue,
            // Too long for the first read (many names in a Forget): read it whole.
            _ => inst
                .read_attributes(session, h, vec![CKA_VALUE])?
                .pop()
                .flatten(),
        };
        let private = values[0].1.as_deref() != Some(&[CK_FALSE]);
        let Some(rec) = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|t| Record::decode(&t, private))
        else {
            continue;
        };
        out.push(Held { handle: h, rec });
    }
    Ok(out)
}

/// Writes `rec` on a member; returns its handle there.
pub fn write(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    rec: &Record,
) -> MemberResult<CK_OBJECT_HANDLE> {
    inst.create_object(
        session,
        vec![
            Attr::ulong(CKA_CLASS, CKO_DATA),
            Attr::bool(CKA_TOKEN, true),
            Attr::bool(CKA_PRIVATE, rec.private),
            Attr::bool(CKA_MODIFIABLE, false),
            Attr::new(CKA_LABEL, OWED_LABEL.to_vec()),
            Attr::new(CKA_APPLICATION, OWED_LABEL.to_vec()),
            Attr::new(CKA_VALUE, rec.encode().into_bytes()),
        ],
    )
}

/// Destroys a record on a member; one already gone (settled by someone else) is fine.
pub fn destroy(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    h: CK_OBJECT_HANDLE,
) -> MemberResult<()> {
    match inst.destroy_object(session, h) {
        Ok(()) | Err(Fault::Rv(CKR_OBJECT_HANDLE_INVALID)) => Ok(()),
        Err(f) => Err(f),
    }
}

/// 128 random bits in hex: unique across hosts without any coordination, and not guessable
/// (a public record cannot name a private one it has not seen).
fn new_id() -> String {
    let mut b = [0u8; 16];
    if super::entropy::fill_random(&mut b).is_err() {
        // getrandom does not fail on Linux with a buffer this small; should it, the clock and
        // the process keep the id unique (only unguessability is lost).
        let t = now_ns().to_le_bytes();
        b[..8].copy_from_slice(&t);
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex(&b)
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn attr_name(k: CK_ATTRIBUTE_TYPE) -> String {
    match k {
        CKA_LABEL => "CKA_LABEL".into(),
        CKA_ID => "CKA_ID".into(),
        CKA_VALUE => "CKA_VALUE".into(),
        CKA_APPLICATION => "CKA_APPLICATION".into(),
        CKA_EXTRACTABLE => "CKA_EXTRACTABLE".into(),
        CKA_WRAP_WITH_TRUSTED => "CKA_WRAP_WITH_TRUSTED".into(),
        CKA_SUBJECT => "CKA_SUBJECT".into(),
        CKA_START_DATE => "CKA_START_DATE".into(),
        CKA_END_DATE => "CKA_END_DATE".into(),
        other => format!("attribute 0x{other:x}"),
    }
}

pub(crate) fn identity_text(i: &Identity) -> String {
    if i.attrs().is_empty() {
        return "-".into();
    }
    i.attrs()
        .iter()
        .map(|a| format!("{:x}={}", a.kind, hex(&a.value)))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn parse_identity(s: &str) -> Option<Identity> {
    if s == "-" {
        return Some(Identity::from_attrs(Vec::new()));
    }
    s.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some(Attr::new(
                CK_ATTRIBUTE_TYPE::from_str_radix(k, 16).ok()?,
                unhex(v)?,
            ))
        })
        .collect::<Option<Vec<_>>>()
        .map(Identity::from_attrs)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unhex_str(s: &str) -> Option<String> {
    String::from_utf8(unhex(s)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(label: &str) -> Identity {
        Identity::from_attrs(vec![
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::new(CKA_LABEL, label.as_bytes().to_vec()),
            Attr::new(CKA_ID, Vec::new()),
        ])
    }

    #[test]
    fn every_kind_of_record_survives_its_encoding() {
        let changes = vec![
            Change::Destroy(key("gone")),
            Change::Set {
                before: key("old"),
                after: key("new"),
                kinds: vec![CKA_LABEL, CKA_VALUE],
            },
            Change::Created { login: true },
            Change::Created { login: false },
            Change::Forget(vec!["ab".into(), "cd".into()]),
            Change::Claim,
        ];
        for c in changes {
            let r = Record::new("m 1/x", c, true);
            let text = r.encode();
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(Record::decode(&text, true), Some(r.clone()), "{text}");
            let public = Record::decode(&text, false).unwrap();
            assert!(!public.private, "privacy is the object's, not the text's");
        }
    }

    #[test]
    fn ids_are_unique_and_order_follows_the_clock() {
        let a = Record::new("m", Change::Claim, false);
        let b = Record::new("m", Change::Claim, false);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert!(b.order >= a.order);
    }

    #[test]
    fn foreign_and_torn_values_are_not_records() {
        let good = Record::new("m", Change::Destroy(key("k")), false).encode();
        for bad in [
            "",
            "p11ha-owed 2 ab 1 6d L",
            "p11ha-owed 1 zz 1 6d L",
            "p11ha-owed 1 ab 1 6d C x",
            "p11ha-owed 1 ab 1 6d S - -",
        ] {
            assert!(Record::decode(bad, false).is_none(), "{bad:?}");
        }
        // A torn identity (odd hex) does not decode either.
        let torn = format!("{}0", good);
        assert!(Record::decode(&torn, false).is_none(), "{torn}");
    }

    #[test]
    fn a_record_holds_no_attribute_value() {
        let r = Record::new(
            "m",
            Change::Set {
                before: key("k"),
                after: key("k"),
                kinds: vec![CKA_VALUE],
            },
            true,
        );
        let text = r.encode();
        assert!(text.ends_with(&format!(" {CKA_VALUE:x}")), "{text}");
        assert_eq!(r.describe(), "change object \"k\" (CKA_VALUE)");
    }
}
