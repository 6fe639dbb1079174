//! The message catalogue of `haErrorLog.txt`: one [`Event`] per HALOG message and the text it
//! shows, the record prefix, and [`Clean`] for text that comes from outside.

use crate::rv::rv_code;
use chrono::{DateTime, TimeZone};
use cryptoki_sys::CK_RV;
use std::fmt;

/// Text from outside the log module, shown with every control character escaped as `\xNN`
/// (`\u{NNNN}` for the Unicode line/paragraph separators), so it cannot break a line.
pub struct Clean<'a>(pub &'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let escape = c.is_control() || c == '\u{2028}' || c == '\u{2029}';
            if escape {
                f.write_str(&s[start..i])?;
                if (c as u32) < 0x100 {
                    write!(f, "\\x{:02x}", c as u32)?;
                } else {
                    write!(f, "\\u{{{:04x}}}", c as u32)?;
                }
                start = i + c.len_utf8();
            }
        }
        f.write_str(&s[start..])
    }
}

/// `CK_RV` as the seed prints it: `0x00000030 : CKR_DEVICE_ERROR`.
struct Code(CK_RV);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rv_code(self.0))
    }
}

/// One HA log message: the catalogue of seed 003 (one variant per message ID) plus p11ha's own
/// `ConfigError`. `Display` writes the text that follows the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// HALOG_CONFIGURED_AS_PASSWORD
    ConfiguredAsPassword,
    /// HALOG_CONFIGURED_AS_PED
    ConfiguredAsPed,
    /// HALOG_DROPMEMBER
    DropMember { member: &'a str },
    /// HALOG_DROPUNRECOVERABLE
    DropUnrecoverable { member: &'a str },
    /// HALOG_LOGINFAILED: a member refuses the group's PIN (one the others accepted, or at
    /// recovery); auto-recovery is disabled for it.
    LoginFailed { member: &'a str, rv: CK_RV },
    /// p11ha's own: the application's C_Login was refused by the member that judged it (the
    /// first to answer). The application gets the code; no member is dropped and auto-recovery
    /// is unchanged, so this is not [`Event::LoginFailed`]. Never shows the PIN.
    LoginRefused { member: &'a str, rv: CK_RV },
    /// HALOG_MEMBER_DEACTIVATED
    MemberDeactivated { member: &'a str },
    /// HALOG_MEMBER_NOW_ACTIVATED
    MemberNowActivated { attempt: u64, member: &'a str },
    /// HALOG_MEMBER_REVOKED
    MemberRevoked { member: &'a str },
    /// HALOG_MEMBERS_OFFLINE
    MembersOffline,
    /// HALOG_MGMT_THREAD_START
    MgmtThreadStart,
    /// HALOG_MGMT_THREAD_TERMINATE
    MgmtThreadTerminate,
    /// HALOG_NEWMEMBER
    NewMember { member: &'a str },
    /// HALOG_RECOVERED
    Recovered { attempt: u64, member: &'a str },
    /// HALOG_RECOVERY_ATTEMPT_#_REINTRODUCING
    Reintroducing {
        attempt: u64,
        count: u64,
        member: &'a str,
    },
    /// HALOG_RECOVERYFAILED
    RecoveryFailed {
        attempt: u64,
        member: &'a str,
        rv: CK_RV,
    },
    /// HALOG_RECOVERYFAILED, second message (auto-recovery attempts exhausted)
    RecoveryExhausted { member: &'a str },
    /// HALOG_RENABLEMEMBER (deprecated)
    RenableMember { member: &'a str },
    /// HALOG_UNRECOVERABLE (deprecated)
    Unrecoverable {
        attempt: u64,
        member: &'a str,
        rv: CK_RV,
    },
    /// No ID: member not activated at C_Initialize.
    MemberNotActivated { member: &'a str },
    /// No ID: recovery failed (member still not activated).
    RecoveryNotActivated { member: &'a str },
    /// No ID: recovery succeeded (member now activated).
    RecoveryNowActivated { member: &'a str },
    /// p11ha's own: a member left the group's configuration (seed 003: the log shows
    /// "add-member and delete-member events"; it gives a text for the first only).
    MemberRemoved { member: &'a str },
    /// p11ha's own: a configuration error.
    ConfigError { message: &'a str },
    /// p11ha's own: the log or journal directory lets other users interfere (see
    /// [`crate::safe_file::check_dir`]).
    UnsafeDirectory { message: &'a str },
    /// p11ha's own: a multi-part operation of a failed member could not be replayed on another.
    MultipartNotReplayed { member: &'a str, why: &'a str },
    /// p11ha's own: objects a reintroduction could not copy to the member (synchronized groups).
    NotCopied {
        attempt: u64,
        count: u64,
        member: &'a str,
        reason: &'a str,
    },
    /// p11ha's own: a key could not be replicated because a member (or its transport) refused
    /// every mechanism it could travel by (synchronized groups).
    CarrierRefused { member: &'a str, carrier: &'a str },
    /// p11ha's own: the group's audit trail file could not be written (`path`); its records
    /// are held in memory until it can.
    AuditWriteFailed { path: &'a str, why: &'a str },
    /// p11ha's own: the audit trail file is written again after [`Event::AuditWriteFailed`].
    AuditWriteResumed {
        path: &'a str,
        written: u64,
        lost: u64,
    },
    /// p11ha's own: audit records this process could not write before it ended.
    AuditRecordsLost {
        path: &'a str,
        count: u64,
        why: &'a str,
    },
}

impl Event<'_> {
    /// The seed's message ID (`"No ID"` for the three development messages, `"P11HA_CONFIG_ERROR"`
    /// for ours).
    pub fn id(&self) -> &'static str {
        match self {
            Event::ConfiguredAsPassword => "HALOG_CONFIGURED_AS_PASSWORD",
            Event::ConfiguredAsPed => "HALOG_CONFIGURED_AS_PED",
            Event::DropMember { .. } => "HALOG_DROPMEMBER",
            Event::DropUnrecoverable { .. } => "HALOG_DROPUNRECOVERABLE",
            Event::LoginFailed { .. } => "HALOG_LOGINFAILED",
            Event::LoginRefused { .. } => "P11HA_LOGIN_REFUSED",
            Event::MemberDeactivated { .. } => "HALOG_MEMBER_DEACTIVATED",
            Event::MemberNowActivated { .. } => "HALOG_MEMBER_NOW_ACTIVATED",
            Event::MemberRevoked { .. } => "HALOG_MEMBER_REVOKED",
            Event::MembersOffline => "HALOG_MEMBERS_OFFLINE",
            Event::MgmtThreadStart => "HALOG_MGMT_THREAD_START",
            Event::MgmtThreadTerminate => "HALOG_MGMT_THREAD_TERMINATE",
            Event::NewMember { .. } => "HALOG_NEWMEMBER",
            Event::Recovered { .. } => "HALOG_RECOVERED",
            Event::Reintroducing { .. } => "HALOG_RECOVERY_ATTEMPT_#_REINTRODUCING",
            Event::RecoveryFailed { .. } | Event::RecoveryExhausted { .. } => {
                "HALOG_RECOVERYFAILED"
            }
            Event::RenableMember { .. } => "HALOG_RENABLEMEMBER",
            Event::Unrecoverable { .. } => "HALOG_UNRECOVERABLE",
            Event::MemberNotActivated { .. }
            | Event::RecoveryNotActivated { .. }
            | Event::RecoveryNowActivated { .. } => "No ID",
            Event::MemberRemoved { .. } => "P11HA_MEMBER_REMOVED",
            Event::ConfigError { .. } => "P11HA_CONFIG_ERROR",
            Event::UnsafeDirectory { .. } => "P11HA_UNSAFE_DIRECTORY",
            Event::MultipartNotReplayed { .. } => "P11HA_MULTIPART_NOT_REPLAYED",
            Event::NotCopied { .. } => "P11HA_NOT_COPIED",
            Event::CarrierRefused { .. } => "P11HA_CARRIER_REFUSED",
            Event::AuditWriteFailed { .. } => "P11HA_AUDIT_WRITE_FAILED",
            Event::AuditWriteResumed { .. } => "P11HA_AUDIT_WRITE_RESUMED",
            Event::AuditRecordsLost { .. } => "P11HA_AUDIT_RECORDS_LOST",
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Event::ConfiguredAsPassword => {
                write!(f, "configured as a \"PASSWORD Based\" virtual device")
            }
            Event::ConfiguredAsPed => write!(f, "configured as a \"PED Based\" virtual device"),
            Event::DropMember { member } => write!(f, "has dropped member: {}", Clean(member)),
            Event::DropUnrecoverable { member } => write!(
                f,
                "unable to reach member: {}. Manual Recover or Auto Recovery will be able to \
                 recover this member",
                Clean(member)
            ),
            Event::LoginFailed { member, rv } => write!(
                f,
                "can not login to member: {}, autorecovery will be disabled. Code: {}",
                Clean(member),
                Code(rv)
            ),
            Event::LoginRefused { member, rv } => write!(
                f,
                "application login refused by member: {} (the application gets the code; no \
                 member dropped, auto-recovery unchanged). Code: {}",
                Clean(member),
                Code(rv)
            ),
            Event::MemberDeactivated { member } => {
                write!(f, "member: {} deactivated", Clean(member))
            }
            Event::MemberNowActivated { attempt, member } => write!(
                f,
                "recovery attempt {attempt} member {} is now activated and will be reintroduce \
                 back into the HA group.",
                Clean(member)
            ),
            Event::MemberRevoked { member } => write!(f, "member: {} revoked", Clean(member)),
            Event::MembersOffline => write!(f, "all members gone offline."),
            Event::MgmtThreadStart => write!(f, "management thread started"),
            Event::MgmtThreadTerminate => write!(f, "management thread terminated"),
            Event::NewMember { member } => {
                write!(f, "detected new member member: {}", Clean(member))
            }
            Event::Recovered { attempt, member } => write!(
                f,
                "recovery attempt {attempt} succeeded for member: {}",
                Clean(member)
            ),
            Event::Reintroducing {
                attempt,
                count,
                member,
            } => write!(
                f,
                "recovery attempt {attempt} reintroducing {count} token objects to recovered \
                 token {}",
                Clean(member)
            ),
            Event::RecoveryFailed {
                attempt,
                member,
                rv,
            } => write!(
                f,
                "recovery attempt {attempt} failed for member: {}. Code: {}.",
                Clean(member),
                Code(rv)
            ),
            Event::RecoveryExhausted { member } => write!(
                f,
                "exceeded maximum number of autorecovery attempts for member: {}. Autorecovery \
                 will be disabled",
                Clean(member)
            ),
            Event::RenableMember { member } => write!(
                f,
                "Re-enable auto recovery process for member: {}",
                Clean(member)
            ),
            Event::Unrecoverable {
                attempt,
                member,
                rv,
            } => write!(
                f,
                "recovery attempt {attempt} failed for member: {}. Manual Recover or Auto \
                 Recovery will not be able to recover this member. Code: {}",
                Clean(member),
                Code(rv)
            ),
            Event::MemberNotActivated { member } => write!(
                f,
                "member {} is not activated and is excluded from the HA group",
                Clean(member)
            ),
            Event::RecoveryNotActivated { member } => write!(
                f,
                "recovery attempt {} is not activated and cannot be reintroduced back into the \
                 HA group",
                Clean(member)
            ),
            Event::RecoveryNowActivated { member } => write!(
                f,
                "recovery attempt {} is now activated and will be reintroduce back into the HA \
                 group.",
                Clean(member)
            ),
            Event::MemberRemoved { member } => write!(
                f,
                "removed member: {} (no longer in the configuration)",
                Clean(member)
            ),
            Event::ConfigError { message } => {
                write!(f, "configuration error: {}", Clean(message))
            }
            Event::UnsafeDirectory { message } => write!(f, "warning: {}", Clean(message)),
            Event::MultipartNotReplayed { member, why } => write!(
                f,
                "multi-part operation of failed member: {} not replayed ({}); the application gets CKR_DEVICE_ERROR",
                Clean(member),
                Clean(why)
            ),
            Event::NotCopied {
                attempt,
                count,
                member,
                reason,
            } => write!(
                f,
                "recovery attempt {attempt} could not copy {count} token objects to recovered \
                 token {}. First: {}",
                Clean(member),
                Clean(reason)
            ),
            Event::CarrierRefused { member, carrier } => write!(
                f,
                "member: {} refused {}, the only mechanism a private key travels by: key \
                 generation refused (see p11ha synchronize -check)",
                Clean(member),
                Clean(carrier)
            ),
            Event::AuditWriteFailed { path, why } => write!(
                f,
                "audit trail write failed: {}: {}; its records are held in memory and written \
                 when the file can be written again",
                Clean(path),
                Clean(why)
            ),
            Event::AuditWriteResumed {
                path,
                written,
                lost,
            } => write!(
                f,
                "audit trail written again: {}: {written} records written, {lost} lost while \
                 it could not be (recorded as AUDIT_RECORDS_LOST)",
                Clean(path)
            ),
            Event::AuditRecordsLost { path, count, why } => write!(
                f,
                "audit trail: {count} records could not be written to {}: {}",
                Clean(path),
                Clean(why)
            ),
        }
    }
}

/// The seed prefix: `Wed Oct  4 16:29:21 2017 : [17469] HA group: 11234840370164 ` (ctime layout,
/// day of month space-padded to two columns, trailing space included). A record about no group
/// (`group` empty: a configuration error, a warning about the log directory) reads
/// `Wed Oct  4 16:29:21 2017 : [17469] HA configuration error: ...` instead of showing an empty
/// group serial.
pub fn prefix<Tz: TimeZone>(time: &DateTime<Tz>, pid: u32, group: &str) -> String
where
    Tz::Offset: fmt::Display,
{
    let time = time.format("%a %b %e %H:%M:%S %Y");
    if group.is_empty() {
        return format!("{time} : [{pid}] HA ");
    }
    format!("{time} : [{pid}] HA group: {} ", Clean(group))
}

/// One complete record: prefix, event text and the terminating `\n`.
pub fn format_line<Tz: TimeZone>(
    time: &DateTime<Tz>,
    pid: u32,
    group: &str,
    event: &Event<'_>,
) -> String
where
    Tz::Offset: fmt::Display,
{
    let mut line = prefix(time, pid, group);
    use fmt::Write as _;
    let _ = writeln!(line, "{event}");
    line
}
