//! What an audit record says: its opcode ([`Op`]) and the event's own fields ([`Event`]).
//! Objects appear by identity only ([`ObjectId`]: class, key type, CKA_ID, label) and attribute
//! changes by attribute *type*: no PIN, no key byte and no attribute value ever reaches this
//! module (the types make it impossible: there is no field that could hold one).

use super::names::{attribute_name, class_name, key_type_name, mechanism_name, or_hex, user_name};
use crate::ha::objects::Identity;
use crate::mechanism::{find, Attr};
use cryptoki_sys::*;
use std::fmt::Write as _;

macro_rules! ops {
    ($($variant:ident = $code:literal, $name:literal;)*) => {
        /// The opcode of a record: a PKCS#11 call (its function name) or an event of p11ha's own,
        /// each with a stable number (docs/AUDIT.md lists them).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($variant,)* }

        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$variant,)*];

            pub fn code(self) -> u16 {
                match self { $(Op::$variant => $code,)* }
            }

            pub fn name(self) -> &'static str {
                match self { $(Op::$variant => $name,)* }
            }
        }
    };
}

ops! {
    Initialize = 0x0001, "C_Initialize";
    Finalize = 0x0002, "C_Finalize";
    OpenSession = 0x0010, "C_OpenSession";
    CloseSession = 0x0011, "C_CloseSession";
    Login = 0x0012, "C_Login";
    Logout = 0x0013, "C_Logout";
    CreateObject = 0x0020, "C_CreateObject";
    CopyObject = 0x0021, "C_CopyObject";
    DestroyObject = 0x0022, "C_DestroyObject";
    SetAttributeValue = 0x0023, "C_SetAttributeValue";
    GenerateKey = 0x0024, "C_GenerateKey";
    GenerateKeyPair = 0x0025, "C_GenerateKeyPair";
    UnwrapKey = 0x0026, "C_UnwrapKey";
    DeriveKey = 0x0027, "C_DeriveKey";
    SignInit = 0x0030, "C_SignInit";
    SignRecoverInit = 0x0031, "C_SignRecoverInit";
    DecryptInit = 0x0032, "C_DecryptInit";
    MemberDropped = 0x0040, "HA_MEMBER_DROPPED";
    MemberDeactivated = 0x0041, "HA_MEMBER_DEACTIVATED";
    MembersOffline = 0x0042, "HA_MEMBERS_OFFLINE";
    MemberRecovered = 0x0043, "HA_MEMBER_RECOVERED";
    Reintroduced = 0x0044, "HA_MEMBER_REINTRODUCED";
    MemberAdded = 0x0045, "HA_MEMBER_ADDED";
    MemberRemoved = 0x0046, "HA_MEMBER_REMOVED";
    ConfigReloaded = 0x0050, "CONFIG_RELOADED";
    ConfigRefused = 0x0051, "CONFIG_REFUSED";
    StreamStart = 0x0060, "AUDIT_STREAM_START";
    FileStart = 0x0061, "AUDIT_FILE_START";
    Cleared = 0x0062, "AUDIT_CLEARED";
    RecordsLost = 0x0063, "AUDIT_RECORDS_LOST";
    FileRemoved = 0x0064, "AUDIT_FILE_REMOVED";
}

impl Op {
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|o| o.name() == name)
    }

    /// Records that start a file: the chain state before them is in their fields.
    pub fn is_header(self) -> bool {
        matches!(self, Op::StreamStart | Op::FileStart | Op::Cleared)
    }
}

/// An object as the audit trail names it: class, key type, CKA_ID and label. Nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectId {
    pub class: Option<CK_OBJECT_CLASS>,
    pub key_type: Option<CK_KEY_TYPE>,
    pub id: Option<Vec<u8>>,
    pub label: Option<Vec<u8>>,
}

impl ObjectId {
    pub fn of(identity: &Identity) -> ObjectId {
        Self::from_attrs(identity.attrs(), None)
    }

    /// From a template (what the application asked for), `class` when it does not say.
    pub fn from_attrs(attrs: &[Attr], class: Option<CK_OBJECT_CLASS>) -> ObjectId {
        let bytes = |k| find(attrs, k).map(|a| a.value.clone());
        ObjectId {
            class: find(attrs, CKA_CLASS).and_then(Attr::as_ulong).or(class),
            key_type: find(attrs, CKA_KEY_TYPE).and_then(Attr::as_ulong),
            id: bytes(CKA_ID),
            label: bytes(CKA_LABEL),
        }
    }

    /// `CKO_SECRET_KEY,CKK_AES,0102,label` (`-` for what is unknown).
    fn write(&self, out: &mut String) {
        match self.class {
            Some(c) => out.push_str(&or_hex(class_name(c), c)),
            None => out.push('-'),
        }
        out.push(',');
        match self.key_type {
            Some(k) => out.push_str(&or_hex(key_type_name(k), k)),
            None => out.push('-'),
        }
        out.push(',');
        match &self.id {
            Some(id) if !id.is_empty() => id.iter().for_each(|b| {
                let _ = write!(out, "{b:02x}");
            }),
            _ => out.push('-'),
        }
        out.push(',');
        match &self.label {
            Some(l) => escape_into(l, out),
            None => out.push('-'),
        }
    }
}

/// The event's own fields (after the `|` of a record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// C_Initialize: the library started auditing this group in this process.
    Initialize {
        config: String,
    },
    /// C_Finalize: the sessions it closes are not recorded one by one.
    Finalize {
        sessions: u64,
    },
    OpenSession {
        session: CK_SESSION_HANDLE,
        rw: bool,
    },
    CloseSession {
        session: CK_SESSION_HANDLE,
    },
    Login {
        user: CK_USER_TYPE,
    },
    Logout {
        user: Option<CK_USER_TYPE>,
    },
    /// Object management: the objects made, changed or destroyed, the attribute types the
    /// template named, the mechanism and the key it used (unwrap, derive).
    Object {
        objects: Vec<(&'static str, ObjectId)>,
        attributes: Vec<CK_ATTRIBUTE_TYPE>,
        mechanism: Option<CK_MECHANISM_TYPE>,
        key: Option<ObjectId>,
    },
    /// A key used (`haAuditKeyUse`): the operation's initialization.
    KeyUse {
        mechanism: Option<CK_MECHANISM_TYPE>,
        key: Option<ObjectId>,
    },
    /// HA events about one member (the member is the record's member field).
    Member,
    Recovered {
        attempt: u64,
    },
    Reintroduced {
        objects: u64,
    },
    MemberAdded {
        standby: bool,
    },
    ConfigReloaded {
        file: String,
        changed: Vec<&'static str>,
    },
    ConfigRefused {
        file: String,
        error: String,
    },
    /// The stream's own records.
    StreamStart,
    FileStart {
        prev: ChainPoint,
        prev_file: String,
    },
    Cleared {
        by: String,
        uid: u32,
        pid: u32,
        archive: String,
        prev: ChainPoint,
    },
    RecordsLost {
        count: u64,
        why: String,
    },
    FileRemoved {
        file: String,
        through_seq: u64,
    },
}

/// Where the chain stood before a header record: the last record's sequence number (`None`:
/// there was none), the hash chain value after it and its MAC field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPoint {
    pub seq: Option<u64>,
    pub h: [u8; 32],
    pub mac: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn seq_text(seq: Option<u64>) -> String {
    seq.map_or("-".into(), |s| format!("{s:016x}"))
}

impl Event {
    /// The fields as written: `key=value` separated by single spaces, every value escaped
    /// ([`escape_into`]) so it holds no space, `|`, `,` or `=` of its own.
    pub fn fields(&self) -> String {
        let mut f = Fields::default();
        match self {
            Event::Initialize { config } => {
                f.text("config", config.as_bytes());
                f.raw("version", env!("CARGO_PKG_VERSION"));
            }
            Event::Finalize { sessions } => f.raw("sessions", &sessions.to_string()),
            Event::OpenSession { session, rw } => {
                f.raw("session", &session.to_string());
                f.raw("rw", if *rw { "1" } else { "0" });
            }
            Event::CloseSession { session } => f.raw("session", &session.to_string()),
            Event::Login { user } => f.raw("user", &or_hex(user_name(*user), *user)),
            Event::Logout { user } => {
                if let Some(u) = user {
                    f.raw("user", &or_hex(user_name(*u), *u));
                }
            }
            Event::Object {
                objects,
                attributes,
                mechanism,
                key,
            } => {
                for (name, o) in objects {
                    f.object(name, o);
                }
                if !attributes.is_empty() {
                    let list: Vec<String> = attributes
                        .iter()
                        .map(|a| or_hex(attribute_name(*a), *a))
                        .collect();
                    f.raw("attributes", &list.join(","));
                }
                f.mechanism(*mechanism);
                if let Some(k) = key {
                    f.object("key", k);
                }
            }
            Event::KeyUse { mechanism, key } => {
                f.mechanism(*mechanism);
                if let Some(k) = key {
                    f.object("key", k);
                }
            }
            Event::Member | Event::StreamStart => {}
            Event::Recovered { attempt } => f.raw("attempt", &attempt.to_string()),
            Event::Reintroduced { objects } => f.raw("objects", &objects.to_string()),
            Event::MemberAdded { standby } => f.raw("standby", if *standby { "1" } else { "0" }),
            Event::ConfigReloaded { file, changed } => {
                f.text("file", file.as_bytes());
                f.raw("changed", &changed.join(","));
            }
            Event::ConfigRefused { file, error } => {
                f.text("file", file.as_bytes());
                f.text("error", error.as_bytes());
            }
            Event::FileStart { prev, prev_file } => {
                f.text("prev_file", prev_file.as_bytes());
                f.chain(prev);
            }
            Event::Cleared {
                by,
                uid,
                pid,
                archive,
                prev,
            } => {
                f.text("by", by.as_bytes());
                f.raw("uid", &uid.to_string());
                f.raw("pid", &pid.to_string());
                f.text("archive", archive.as_bytes());
                f.chain(prev);
            }
            Event::RecordsLost { count, why } => {
                f.raw("count", &count.to_string());
                f.text("why", why.as_bytes());
            }
            Event::FileRemoved { file, through_seq } => {
                f.text("file", file.as_bytes());
                f.raw("through_seq", &format!("{through_seq:016x}"));
            }
        }
        f.0
    }
}

#[derive(Default)]
struct Fields(String);

impl Fields {
    fn key(&mut self, key: &str) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(key);
        self.0.push('=');
    }

    /// A value made here (names, numbers): nothing to escape.
    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.push_str(value);
    }

    fn text(&mut self, key: &str, value: &[u8]) {
        self.key(key);
        escape_into(value, &mut self.0);
    }

    fn object(&mut self, key: &str, o: &ObjectId) {
        self.key(key);
        o.write(&mut self.0);
    }

    fn mechanism(&mut self, m: Option<CK_MECHANISM_TYPE>) {
        if let Some(m) = m {
            self.raw("mechanism", &or_hex(mechanism_name(m), m));
        }
    }

    fn chain(&mut self, p: &ChainPoint) {
        self.raw("prev_seq", &seq_text(p.seq));
        self.raw("prev_h", &hex(&p.h));
        self.raw("prev_mac", &p.mac);
    }
}

/// Appends `bytes` with everything but printable ASCII, and the separators `\`, `|`, `,`, `=`
/// and space, written as `\xNN`: a value can never split a record or a field.
pub fn escape_into(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        let plain = b.is_ascii_graphic() && !matches!(b, b'\\' | b'|' | b',' | b'=');
        if plain {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// `escape_into` for a whole value.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    escape_into(bytes, &mut s);
    s
}

/// The bytes an escaped value stands for (`\xNN` decoded; anything else as written).
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The attribute types a template names (never their values).
pub fn attribute_types(template: &[Attr]) -> Vec<CK_ATTRIBUTE_TYPE> {
    template.iter().map(|a| a.kind).collect()
}

/// The 32 bytes of `h` as 64 hex digits.
pub fn hex32(h: &[u8; 32]) -> String {
    hex(h)
}

/// 64 hex digits back to 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_separators_out_and_round_trips() {
        let label = "my key|x=1, y\\z\n\u{e9}".as_bytes();
        let e = escape(label);
        assert!(!e.contains([' ', '|', ',', '=', '\n']), "{e}");
        assert_eq!(e, "my\\x20key\\x7cx\\x3d1\\x2c\\x20y\\x5cz\\x0a\\xc3\\xa9");
        assert_eq!(unescape(&e), label);
    }

    #[test]
    fn objects_are_named_by_identity_only() {
        let t = vec![
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::new(CKA_ID, vec![1, 2]),
            Attr::new(CKA_LABEL, b"k 1".to_vec()),
            Attr::new(CKA_VALUE, b"SECRETVALUE".to_vec()),
        ];
        let e = Event::Object {
            objects: vec![("object", ObjectId::from_attrs(&t, None))],
            attributes: attribute_types(&t),
            mechanism: Some(CKM_AES_KEY_GEN),
            key: None,
        };
        assert_eq!(
            e.fields(),
            "object=CKO_SECRET_KEY,CKK_AES,0102,k\\x201 \
             attributes=CKA_CLASS,CKA_KEY_TYPE,CKA_ID,CKA_LABEL,CKA_VALUE \
             mechanism=CKM_AES_KEY_GEN"
        );
    }

    #[test]
    fn opcodes_are_unique() {
        for (i, a) in Op::ALL.iter().enumerate() {
            for b in &Op::ALL[i + 1..] {
                assert!(a.code() != b.code() && a.name() != b.name(), "{a:?} {b:?}");
            }
            assert_eq!(Op::from_name(a.name()), Some(*a));
        }
    }
}
