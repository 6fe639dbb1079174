//! The HAConfiguration section, table-driven: each key is one row of [`KEYS`] (its name, how its
//! value is read, its range and default, its documentation line), so adding a key is adding a
//! row, and the unknown-key suggestions come from the same table.

use std::path::PathBuf;

use super::echo::quoted;
use super::validate::{check_text, Ctx, SEC_CONF};
use super::{dirs, AuditSettings, ConfigError, LogSettings, RawEntry};

/// Defaults (documented in config/README.md and config/Chrystoki.conf).
pub const DEFAULT_LOG_LEN: u64 = 100_000_000;
pub const DEFAULT_RECONN_ATT: i64 = -1;
pub const DEFAULT_RECONNECT_INTERVAL_S: u64 = 60;
pub const DEFAULT_RECEIVE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_AUDIT_LEN: u64 = 10_000_000;
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";
/// `MultipartReplayLimit`: input bytes kept per multi-part operation.
pub const DEFAULT_REPLAY_LIMIT: u64 = 1 << 20;

/// A setting's value and where the file set it (`None`: the default).
#[derive(Debug, Default, Clone)]
pub(crate) struct Set<T> {
    pub value: T,
    /// (line, key as written).
    pub at: Option<(usize, String)>,
}

/// Everything HAConfiguration sets; each field is filled from the row that names it.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    pub ha_only: Set<bool>,
    pub log_path: Set<Option<PathBuf>>,
    /// `true` unless `haLogStatus = disabled`; the log is written only with a `log_path`.
    pub log_status: Set<bool>,
    pub journal_path: Set<Option<PathBuf>>,
    pub log_len: Set<u64>,
    pub log_to_stdout: Set<bool>,
    pub failover_on_deactivation: Set<bool>,
    pub attempts: Set<i64>,
    pub interval: Set<u64>,
    pub receive_timeout: Set<u64>,
    pub multipart_replay_limit: Set<u64>,
    pub connect_timeout: Set<u64>,
    pub log_retain: Set<u64>,
    pub log_to_syslog: Set<bool>,
    pub syslog_socket: Set<Option<PathBuf>>,
    pub audit_log: Set<bool>,
    pub audit_path: Set<Option<PathBuf>>,
    pub audit_len: Set<u64>,
    pub audit_key_use: Set<bool>,
}

type Field<T> = fn(&mut Settings) -> &mut Set<T>;

/// How a key's value is read, with its default.
pub(crate) enum Kind {
    /// 0/1, yes/no, true/false, enabled/disabled.
    Bool { default: bool, field: Field<bool> },
    /// An integer in `min..=max`; `what` names it in the error.
    Unsigned {
        what: &'static str,
        min: u64,
        max: u64,
        default: u64,
        field: Field<u64>,
    },
    Signed {
        what: &'static str,
        min: i64,
        max: i64,
        default: i64,
        field: Field<i64>,
    },
    /// An absolute directory path, checked by [`dirs::check`]; empty = not set.
    /// `if_missing`: what a missing directory means, for the warning.
    Dir {
        if_missing: &'static str,
        field: Field<Option<PathBuf>>,
    },
    /// An absolute path of anything but a directory (it need not exist yet); empty = not set.
    Path { field: Field<Option<PathBuf>> },
}

pub(crate) struct Key {
    pub name: &'static str,
    /// Also read from `LunaSA Client`; HAConfiguration wins.
    pub lunasa: bool,
    pub kind: Kind,
    /// One line for the reference (config/README.md has the long form; a unit test keeps the
    /// two in step).
    #[cfg_attr(not(test), allow(dead_code))]
    pub doc: &'static str,
}

const TIMEOUT_MS: &str = "a timeout in milliseconds";

pub(crate) const KEYS: &[Key] = &[
    Key {
        name: "HAOnly",
        lunasa: false,
        kind: Kind::Bool {
            default: false,
            field: |s| &mut s.ha_only,
        },
        doc: "List only the virtual HA slots; otherwise member slots follow, passed through.",
    },
    Key {
        name: "haLogPath",
        lunasa: false,
        kind: Kind::Dir {
            if_missing: "no HA log file is written",
            field: |s| &mut s.log_path,
        },
        doc: "Directory of haErrorLog.txt (absolute). Empty = no log file.",
    },
    Key {
        name: "haLogStatus",
        lunasa: false,
        kind: Kind::Bool {
            default: true,
            field: |s| &mut s.log_status,
        },
        doc: "Whether the HA log file is written (enabled when haLogPath is set).",
    },
    Key {
        name: "logLen",
        lunasa: false,
        kind: Kind::Unsigned {
            what: "a number of bytes (a positive integer)",
            min: 1,
            max: u64::MAX,
            default: DEFAULT_LOG_LEN,
            field: |s| &mut s.log_len,
        },
        doc: "Rotate the HA log once a record takes the file to this many bytes.",
    },
    Key {
        name: "haLogToStdout",
        lunasa: false,
        kind: Kind::Bool {
            default: false,
            field: |s| &mut s.log_to_stdout,
        },
        doc: "Also write HA log records to standard output.",
    },
    Key {
        name: "failover_on_deactivation",
        lunasa: false,
        kind: Kind::Bool {
            default: true,
            field: |s| &mut s.failover_on_deactivation,
        },
        doc: "Fail over at once when a member partition is deactivated.",
    },
    Key {
        name: "reconnAtt",
        lunasa: false,
        kind: Kind::Signed {
            what: "a number of recovery attempts (-1 = unlimited, 0 = no auto-recovery, N >= 1)",
            min: -1,
            max: i64::MAX,
            default: DEFAULT_RECONN_ATT,
            field: |s| &mut s.attempts,
        },
        doc: "Auto-recovery attempts per failed member: -1 unlimited, 0 none, N attempts.",
    },
    Key {
        name: "AutoReconnectInterval",
        lunasa: false,
        kind: Kind::Unsigned {
            what: "a number of seconds",
            min: 1,
            max: 3600,
            default: DEFAULT_RECONNECT_INTERVAL_S,
            field: |s| &mut s.interval,
        },
        doc: "Seconds between recovery attempts.",
    },
    Key {
        name: "ReceiveTimeout",
        lunasa: true,
        kind: Kind::Unsigned {
            what: TIMEOUT_MS,
            min: 100,
            max: 600_000,
            default: DEFAULT_RECEIVE_TIMEOUT_MS,
            field: |s| &mut s.receive_timeout,
        },
        doc: "A member silent this long (ms) is declared failed and its work moves on.",
    },
    Key {
        name: "MultipartReplayLimit",
        lunasa: false,
        kind: Kind::Unsigned {
            what: "a byte count",
            min: 0,
            max: 1 << 30,
            default: DEFAULT_REPLAY_LIMIT,
            field: |s| &mut s.multipart_replay_limit,
        },
        doc: "Input bytes kept per multi-part operation to replay it on another member when \
              its member fails (0: none; the operation then fails with CKR_DEVICE_ERROR).",
    },
    Key {
        name: "ConnectTimeout",
        lunasa: true,
        kind: Kind::Unsigned {
            what: TIMEOUT_MS,
            min: 100,
            max: 600_000,
            default: DEFAULT_CONNECT_TIMEOUT_MS,
            field: |s| &mut s.connect_timeout,
        },
        doc: "Bound (ms) on loading and initializing one member module.",
    },
    Key {
        name: "haJournalPath",
        lunasa: false,
        kind: Kind::Dir {
            if_missing: "records no member could take stay in each process",
            field: |s| &mut s.journal_path,
        },
        doc: "Directory of the synchronized groups' fallback journals: records of what down members are owed that no live member could take (default: none, kept in each process).",
    },
    Key {
        name: "haLogRetain",
        lunasa: false,
        kind: Kind::Unsigned {
            what: "a number of rotated files (0 = keep every one)",
            min: 0,
            max: 1_000_000,
            default: 0,
            field: |s| &mut s.log_retain,
        },
        doc:
            "Rotated files kept per log (HA log and audit trail); older ones are deleted. 0 = all.",
    },
    Key {
        name: "haLogToSyslog",
        lunasa: false,
        kind: Kind::Bool {
            default: false,
            field: |s| &mut s.log_to_syslog,
        },
        doc: "Also send HA log and audit records to syslog (journald reads it).",
    },
    Key {
        name: "haSyslogSocket",
        lunasa: false,
        kind: Kind::Path {
            field: |s| &mut s.syslog_socket,
        },
        doc: "The local syslog socket haLogToSyslog sends to (absolute path; default /dev/log).",
    },
    Key {
        name: "haAuditLog",
        lunasa: false,
        kind: Kind::Bool {
            default: false,
            field: |s| &mut s.audit_log,
        },
        doc: "Write the HA groups' audit trail (docs/AUDIT.md).",
    },
    Key {
        name: "haAuditPath",
        lunasa: false,
        kind: Kind::Dir {
            if_missing: "no audit trail is written",
            field: |s| &mut s.audit_path,
        },
        doc: "Directory of the audit trail files (default: the haLogPath directory).",
    },
    Key {
        name: "haAuditLen",
        lunasa: false,
        kind: Kind::Unsigned {
            what: "a number of bytes (a positive integer)",
            min: 1,
            max: u64::MAX,
            default: DEFAULT_AUDIT_LEN,
            field: |s| &mut s.audit_len,
        },
        doc: "Rotate a group's audit file once a record takes it to this many bytes.",
    },
    Key {
        name: "haAuditKeyUse",
        lunasa: false,
        kind: Kind::Bool {
            default: false,
            field: |s| &mut s.audit_key_use,
        },
        doc: "Also audit every use of a key (sign, decrypt, ... initializations).",
    },
];

fn row(key: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name.eq_ignore_ascii_case(key))
}

/// Accepts 0/1/yes/no/true/false/enabled/disabled (case-insensitive).
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "enabled" => Some(true),
        "0" | "no" | "false" | "disabled" => Some(false),
        _ => None,
    }
}

fn range_err<T: std::fmt::Display + PartialEq>(
    what: &str,
    min: T,
    max: T,
    unbounded: T,
    value: &str,
) -> String {
    let range = if max == unbounded {
        String::new()
    } else {
        format!(" from {min} to {max}")
    };
    format!("expected {what}{range}, found {}", quoted(value))
}

impl Settings {
    fn defaults() -> Settings {
        let mut s = Settings::default();
        for k in KEYS {
            match k.kind {
                Kind::Bool { default, field } => field(&mut s).value = default,
                Kind::Unsigned { default, field, .. } => field(&mut s).value = default,
                Kind::Signed { default, field, .. } => field(&mut s).value = default,
                Kind::Dir { field, .. } | Kind::Path { field } => field(&mut s).value = None,
            }
        }
        s
    }

    /// Reads `e` per `k` into its field.
    fn apply(&mut self, ctx: &mut Ctx, k: &Key, e: &RawEntry) -> Result<(), ConfigError> {
        let at = Some((e.line, e.key.clone()));
        let v = e.value.trim();
        match k.kind {
            Kind::Bool { field, .. } => {
                let value = parse_bool(v).ok_or_else(|| {
                    ctx.entry_err(
                        e,
                        format!(
                            "expected 0/1, yes/no, true/false or enabled/disabled, found {}",
                            quoted(&e.value)
                        ),
                    )
                })?;
                *field(self) = Set { value, at };
            }
            Kind::Unsigned {
                what,
                min,
                max,
                field,
                ..
            } => {
                let value = v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        ctx.entry_err(e, range_err(what, min, max, u64::MAX, &e.value))
                    })?;
                *field(self) = Set { value, at };
            }
            Kind::Signed {
                what,
                min,
                max,
                field,
                ..
            } => {
                let value = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        ctx.entry_err(e, range_err(what, min, max, i64::MAX, &e.value))
                    })?;
                *field(self) = Set { value, at };
            }
            Kind::Dir { if_missing, field } => {
                let value = dirs::check(ctx, e, if_missing)?;
                *field(self) = Set { value, at };
            }
            Kind::Path { field } => {
                let value = dirs::check_path(ctx, e)?;
                *field(self) = Set { value, at };
            }
        }
        Ok(())
    }

    pub fn log(&self) -> LogSettings {
        LogSettings {
            path: self.log_path.value.clone(),
            enabled: self.log_path.value.is_some() && self.log_status.value,
            max_len: self.log_len.value,
            to_stdout: self.log_to_stdout.value,
            retain: self.log_retain.value,
            to_syslog: self.log_to_syslog.value,
            syslog_socket: self.syslog_socket(),
        }
    }

    /// The audit trail: `haAuditPath`, else the `haLogPath` directory.
    pub fn audit(&self) -> AuditSettings {
        let dir = self
            .audit_path
            .value
            .clone()
            .or_else(|| self.log_path.value.clone());
        AuditSettings {
            enabled: self.audit_log.value && dir.is_some(),
            dir,
            max_len: self.audit_len.value,
            retain: self.log_retain.value,
            key_use: self.audit_key_use.value,
            to_syslog: self.log_to_syslog.value,
            syslog_socket: self.syslog_socket(),
        }
    }

    /// `haSyslogSocket`, else where syslog(3) writes.
    fn syslog_socket(&self) -> PathBuf {
        self.syslog_socket
            .value
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSLOG_SOCKET))
    }

    /// `haJournalPath` (never the log directory: an operator cleaning it must lose nothing).
    pub fn journal_dir(&self) -> Option<PathBuf> {
        self.journal_path.value.clone()
    }
}

/// Reads HAConfiguration, and the rows marked `lunasa` from `LunaSA Client` first (so
/// HAConfiguration wins).
pub(crate) fn read(
    ctx: &mut Ctx,
    conf: &[&RawEntry],
    lunasa: &[&RawEntry],
) -> Result<Settings, ConfigError> {
    let mut s = Settings::defaults();
    for e in lunasa {
        if let Some(k) = row(&e.key).filter(|k| k.lunasa) {
            check_text(ctx, e)?;
            s.apply(ctx, k, e)?;
        }
    }
    for e in conf {
        match row(&e.key) {
            Some(k) => s.apply(ctx, k, e)?,
            None => {
                let names: Vec<String> = KEYS.iter().map(|k| k.name.to_string()).collect();
                ctx.unknown_key(e, SEC_CONF, &names);
            }
        }
    }
    if s.audit_log.value && s.audit_path.value.is_none() && s.log_path.value.is_none() {
        if let Some((line, key)) = &s.audit_log.at {
            ctx.warn(
                *line,
                key,
                "haAuditLog is enabled but neither haAuditPath nor haLogPath is set: no audit \
                 trail is written",
            );
        }
    }
    if s.log_status.value && s.log_path.value.is_none() {
        if let Some((line, key)) = &s.log_status.at {
            ctx.warn(
                *line,
                key,
                "haLogStatus is enabled but haLogPath is not set: no HA log file is written",
            );
        }
    }
    Ok(s)
}

/// The HA log settings of a file that failed validation, each key read on its own: a bad key
/// keeps its default. `None` without a usable (absolute, existing directory) `haLogPath`.
pub(crate) fn log_settings_lenient(ctx: &mut Ctx, conf: &[&RawEntry]) -> Option<LogSettings> {
    let mut s = Settings::defaults();
    for e in conf {
        if let Some(k) = row(&e.key) {
            if check_text(ctx, e).is_ok() {
                let _ = s.apply(ctx, k, e);
            }
        }
    }
    let log = s.log();
    let dir = log.path.as_deref()?;
    std::fs::metadata(dir).ok()?.is_dir().then_some(log)
}
