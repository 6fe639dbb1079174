//! The layout of one audit record: one line,
//!
//! ```text
//! 2026-07-14T09:31:05.123456Z 4242 0000a1b2 000000000000002a 00000003 5f3e9a01 C_Login(0x0012) 1234 m1serial,m2serial CKR_OK(0x00000000)|user=CKU_USER|mac=<64 hex digits, or ->
//! ```
//!
//! UTC time with microseconds, process id (decimal), thread id (8 hex), sequence number (16 hex),
//! restart counter (8 hex), correlation id (8 hex; `00000000` outside a session), opcode name and
//! number, group serial, member serials (`,`-separated, `-` for none), result (CK_RV name and
//! value), then `|`, the event's fields ([`super::event::Event::fields`]), then `|mac=` and the
//! record's MAC ([`super::chain`]). Everything before `|mac=` is the record's *body*, what the
//! chain hashes.

use super::event::{escape, escape_into, parse_hex32, Event, Op};
use crate::rv::rv_name;
use chrono::{DateTime, NaiveDateTime, Utc};
use cryptoki_sys::CK_RV;
use std::fmt::Write as _;

/// What separates the body from the MAC.
pub const MAC_SEP: &str = "|mac=";
/// The MAC field of a record written without a MAC of its own ("not sealed").
pub const UNSEALED: &str = "-";

/// A record as the application's thread hands it over: everything but what the writer adds
/// under the stream lock (sequence number, restart counter) and the text.
#[derive(Debug, Clone)]
pub struct Raw {
    /// Microseconds since the epoch (UTC).
    pub micros: i64,
    pub tid: u32,
    pub cid: u32,
    pub op: Op,
    pub rv: CK_RV,
    pub members: Vec<String>,
    pub event: Event,
}

impl Raw {
    /// A record of now, on this thread.
    pub fn now(op: Op, rv: CK_RV, cid: u32, members: Vec<String>, event: Event) -> Raw {
        Raw {
            micros: now_micros(),
            tid: thread_id(),
            cid,
            op,
            rv,
            members,
            event,
        }
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The kernel's id of this thread (what `ps -L` and `top -H` show), low 32 bits.
pub fn thread_id() -> u32 {
    thread_local! {
        static TID: u32 = {
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() as u32 }
        };
    }
    TID.with(|t| *t)
}

/// The time field: `2026-07-14T09:31:05.123456Z`.
pub fn time_text(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Microseconds since the epoch of a time field.
pub fn parse_time(s: &str) -> Option<i64> {
    let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.6fZ").ok()?;
    Some(t.and_utc().timestamp_micros())
}

/// The body of a record: the line without `|mac=...`.
pub fn body(raw: &Raw, pid: u32, seq: u64, restart: u32, group: &str) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "{} {pid} {:08x} {seq:016x} {restart:08x} {:08x} {}(0x{:04x}) ",
        time_text(raw.micros),
        raw.tid,
        raw.cid,
        raw.op.name(),
        raw.op.code()
    );
    escape_into(group.as_bytes(), &mut s);
    s.push(' ');
    if raw.members.is_empty() {
        s.push('-');
    }
    for (i, m) in raw.members.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        escape_into(m.as_bytes(), &mut s);
    }
    let _ = write!(
        s,
        " {}(0x{:08x})|{}",
        rv_name(raw.rv),
        raw.rv,
        raw.event.fields()
    );
    s
}

/// The whole line for a body and its MAC field.
pub fn line(body: &str, mac: &str) -> String {
    let mut l = String::with_capacity(body.len() + MAC_SEP.len() + mac.len() + 1);
    l.push_str(body);
    l.push_str(MAC_SEP);
    l.push_str(mac);
    l.push('\n');
    l
}

/// A record read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub micros: i64,
    pub pid: u32,
    pub tid: u32,
    pub seq: u64,
    pub restart: u32,
    pub cid: u32,
    /// Opcode name as written (an unknown one is kept: it is still a record to show).
    pub op: String,
    pub op_code: u16,
    pub group: String,
    pub members: Vec<String>,
    pub rv_name: String,
    pub rv: CK_RV,
    /// `key=value` pairs, values still escaped.
    pub fields: Vec<(String, String)>,
    /// The MAC field: 32 bytes, or `None` when written without one.
    pub mac: Option<[u8; 32]>,
    /// The MAC field as written (`-` or 64 hex digits).
    pub mac_text: String,
    /// What the chain hashes.
    pub body: String,
}

impl Record {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn opcode(&self) -> Option<Op> {
        Op::from_name(&self.op).filter(|o| o.code() == self.op_code)
    }
}

fn hex_u64(s: &str, digits: usize) -> Option<u64> {
    (s.len() == digits && s.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// `NAME(0xHEX)`.
fn named(s: &str) -> Option<(&str, u64)> {
    let (name, rest) = s.split_once("(0x")?;
    let v = u64::from_str_radix(rest.strip_suffix(')')?, 16).ok()?;
    Some((name, v))
}

/// Parses one line (without its `\n`). The error says which field is wrong.
pub fn parse(line: &str) -> Result<Record, String> {
    let (body, mac_text) = line
        .rsplit_once(MAC_SEP)
        .ok_or("no |mac= field (the record is cut short)")?;
    let mac = if mac_text == UNSEALED {
        None
    } else {
        Some(parse_hex32(mac_text).ok_or("the MAC is neither - nor 64 hex digits")?)
    };
    let (prefix, fields) = body.split_once('|').ok_or("no | after the result")?;
    let t: Vec<&str> = prefix.split(' ').collect();
    if t.len() != 10 {
        return Err(format!("{} fields before the |, expected 10", t.len()));
    }
    let micros = parse_time(t[0]).ok_or("bad time")?;
    let pid = t[1].parse().map_err(|_| "bad process id")?;
    let tid = hex_u64(t[2], 8).ok_or("bad thread id")? as u32;
    let seq = hex_u64(t[3], 16).ok_or("bad sequence number")?;
    let restart = hex_u64(t[4], 8).ok_or("bad restart counter")? as u32;
    let cid = hex_u64(t[5], 8).ok_or("bad correlation id")? as u32;
    let (op, op_code) = named(t[6]).ok_or("bad opcode")?;
    let (rv_text, rv) = named(t[9]).ok_or("bad result")?;
    let members = if t[8] == "-" {
        Vec::new()
    } else {
        t[8].split(',').map(str::to_string).collect()
    };
    let fields = fields
        .split(' ')
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("field {f:?} has no ="))
        })
        .collect::<Result<_, _>>()?;
    Ok(Record {
        time: t[0].to_string(),
        micros,
        pid,
        tid,
        seq,
        restart,
        cid,
        op: op.to_string(),
        op_code: op_code as u16,
        group: t[7].to_string(),
        members,
        rv_name: rv_text.to_string(),
        rv: rv as CK_RV,
        fields,
        mac,
        mac_text: mac_text.to_string(),
        body: body.to_string(),
    })
}

/// The record as one JSON object (values unescaped; bytes that are not UTF-8 shown as U+FFFD).
pub fn to_json(r: &Record) -> String {
    let s = |v: &str| json_str(&String::from_utf8_lossy(&super::event::unescape(v)));
    let mut out = format!(
        "{{\"time\":{},\"pid\":{},\"tid\":\"{:08x}\",\"seq\":{},\"restart\":{},\"cid\":\"{:08x}\",\
         \"op\":{},\"opcode\":{},\"group\":{},\"members\":[{}],\"rv\":{},\"rv_code\":{},\"fields\":{{",
        json_str(&r.time),
        r.pid,
        r.tid,
        r.seq,
        r.restart,
        r.cid,
        json_str(&r.op),
        r.op_code,
        s(&r.group),
        r.members.iter().map(|m| s(m)).collect::<Vec<_>>().join(","),
        json_str(&r.rv_name),
        r.rv
    );
    for (i, (k, v)) in r.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:{}", json_str(k), s(v));
    }
    let _ = write!(out, "}},\"mac\":{}}}", json_str(&r.mac_text));
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An escaped copy of a value for a field, for callers outside this module.
pub fn escaped(value: &str) -> String {
    escape(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::*;

    #[test]
    fn a_record_round_trips() {
        let raw = Raw {
            micros: 1_784_021_465_123_456,
            tid: 0xa1b2,
            cid: 0x5f3e9a01,
            op: Op::Login,
            rv: CKR_PIN_INCORRECT,
            members: vec!["m1".into(), "m 2".into()],
            event: Event::Login { user: CKU_USER },
        };
        let b = body(&raw, 4242, 42, 3, "1234");
        assert_eq!(
            b,
            "2026-07-14T09:31:05.123456Z 4242 0000a1b2 000000000000002a 00000003 5f3e9a01 \
             C_Login(0x0012) 1234 m1,m\\x202 CKR_PIN_INCORRECT(0x000000a0)|user=CKU_USER"
        );
        let l = line(&b, UNSEALED);
        let r = parse(l.trim_end()).unwrap();
        assert_eq!(
            (r.pid, r.tid, r.seq, r.restart, r.cid, r.rv),
            (4242, 0xa1b2, 42, 3, 0x5f3e9a01, CKR_PIN_INCORRECT)
        );
        assert_eq!(r.opcode(), Some(Op::Login));
        assert_eq!(r.micros, raw.micros);
        assert_eq!(r.members, vec!["m1", "m\\x202"]);
        assert_eq!(r.field("user"), Some("CKU_USER"));
        assert_eq!((r.mac, r.body.as_str()), (None, b.as_str()));
        let j = to_json(&r);
        assert!(j.contains("\"members\":[\"m1\",\"m 2\"]"), "{j}");
        assert!(j.contains("\"fields\":{\"user\":\"CKU_USER\"}"), "{j}");
    }

    #[test]
    fn broken_lines_say_what_is_wrong() {
        assert!(parse("2026-07-14T09:31:05.123456Z 1 2").is_err());
        let l = "2026-07-14T09:31:05.123456Z 1 0000000x 0000000000000000 00000000 00000000 \
                 C_Login(0x0012) g - CKR_OK(0x00000000)||mac=-";
        assert_eq!(parse(l).unwrap_err(), "bad thread id");
    }
}
