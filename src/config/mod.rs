//! Configuration: where the file is, how it is parsed (Luna brace format or crystoki.ini), and the
//! typed [`HaConfig`] the rest of p11ha uses. Every error names file, line and key.
//!
//! INTERFACE CONTRACT (used by ffi/ha/halog/cli): the types below and `locate`, `load`.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod brace;
mod ini;
#[cfg(test)]
mod tests;
mod typed;

pub use typed::{
    derive_group_serial, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_LOG_LEN, DEFAULT_RECEIVE_TIMEOUT_MS,
    DEFAULT_RECONNECT_INTERVAL_S, DEFAULT_RECONN_ATT, MAX_LABEL_LEN, MAX_SERIAL_LEN,
};

/// Everything p11ha reads from Chrystoki.conf / crystoki.ini.
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    /// The file this was read from.
    pub path: PathBuf,
    pub groups: Vec<GroupConfig>,
    pub providers: Vec<ProviderConfig>,
    /// `HAConfiguration.HAOnly`: list only the virtual slots.
    pub ha_only: bool,
    pub log: LogSettings,
    pub recovery: RecoverySettings,
    /// `HAConfiguration.failover_on_deactivation`.
    pub failover_on_deactivation: bool,
    /// `haJournalPath`, else the `haLogPath` directory: where synchronized groups keep what
    /// members that were down are owed, shared by every process. `None`: in each process only.
    pub journal_dir: Option<PathBuf>,
    /// `ReceiveTimeout` (ms in the file): a member silent this long is declared failed.
    pub receive_timeout: Duration,
    /// `ConnectTimeout` (ms in the file): bound on loading/initializing one member module.
    pub connect_timeout: Duration,
    /// Non-fatal findings (misspelled keys, ...), already formatted with file:line.
    pub warnings: Vec<String>,
}

/// One HA group (`VirtualTokenNN*`).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// NN of `VirtualTokenNNLabel`.
    pub index: u32,
    pub label: String,
    /// Group serial: configured `VirtualTokenNNSN`, else derived from the first member (at most 16 chars).
    pub serial: String,
    /// Active members' token serials, in file order.
    pub members: Vec<String>,
    /// Standby members' token serials (`VirtualTokenNNStandby`).
    pub standby: Vec<String>,
    /// `HASynchronize.<label> = 1`.
    pub synchronize: bool,
    /// `HARecovery.<label>` counter, if present.
    pub manual_recovery: Option<u64>,
}

/// One member module instance (`HAProviders.ProviderNN*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub index: u32,
    pub library: PathBuf,
    /// `ProviderNNEnv`: set while calling C_GetFunctionList and C_Initialize.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    /// `haLogPath`: directory of haErrorLog.txt; `None` = no log.
    pub path: Option<PathBuf>,
    /// `haLogStatus = enabled|disabled`.
    pub enabled: bool,
    /// `logLen`: rotate after a record takes the file to this many bytes.
    pub max_len: u64,
    /// `haLogToStdout = enabled`.
    pub to_stdout: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// `activeBasic`: a recovered member serves sessions opened after its return.
    Basic,
    /// `activeEnhanced`: a recovered member also gets sessions and login of open virtual sessions.
    Enhanced,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecoverySettings {
    pub mode: RecoveryMode,
    /// `reconnAtt`: 0 = no auto-recovery, -1 = unlimited, N = N attempts.
    pub attempts: i64,
    /// `AutoReconnectInterval` (seconds in the file).
    pub interval: Duration,
}

/// A configuration error: what and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One `Key = Value` as written, with its 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawEntry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// One section (`Name = { ... }` or `[Name]`) with its entries in file order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawSection {
    pub name: String,
    pub line: usize,
    pub entries: Vec<RawEntry>,
}

/// The configuration file: `P11HA_CONF`, else `$ChrystokiConfigurationPath/Chrystoki.conf`,
/// else `/etc/Chrystoki.conf`.
pub fn locate() -> PathBuf {
    locate_from(
        std::env::var_os("P11HA_CONF"),
        std::env::var_os("ChrystokiConfigurationPath"),
    )
}

fn locate_from(conf: Option<std::ffi::OsString>, dir: Option<std::ffi::OsString>) -> PathBuf {
    match (conf, dir) {
        (Some(conf), _) if !conf.is_empty() => PathBuf::from(conf),
        (_, Some(dir)) if !dir.is_empty() => PathBuf::from(dir).join("Chrystoki.conf"),
        _ => PathBuf::from("/etc/Chrystoki.conf"),
    }
}

/// True when `path` is read as crystoki.ini (extension `.ini`, any case).
pub fn is_ini(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ini"))
}

/// Read and validate `path` (`.ini` = crystoki.ini, anything else = brace format).
pub fn load(path: &Path) -> Result<HaConfig, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read the configuration file: {e}"),
    })?;
    // Lossy: a stray Latin-1 byte in a comment must not make the whole file unreadable.
    let text = String::from_utf8_lossy(&bytes);
    parse_str(&text, path)
}

/// Parse and validate configuration text as if read from `path` (the format follows `path`'s
/// extension, as in [`load`]). Provider libraries are still checked on the file system.
pub fn parse_str(text: &str, path: &Path) -> Result<HaConfig, ConfigError> {
    let sections = if is_ini(path) {
        ini::parse(text, path)?
    } else {
        brace::parse(text, path)?
    };
    typed::build(&sections, path)
}

/// The HA log settings of a file that failed validation, so the error can still be logged:
/// `None` when the file cannot be read, does not parse, or sets no usable `haLogPath`.
pub fn log_settings_best_effort(path: &Path) -> Option<LogSettings> {
    let text = String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned();
    let sections = if is_ini(path) {
        ini::parse(&text, path)
    } else {
        brace::parse(&text, path)
    }
    .ok()?;
    let get = |key: &str| {
        sections
            .iter()
            .filter(|s| s.name.eq_ignore_ascii_case("HAConfiguration"))
            .flat_map(|s| s.entries.iter())
            .find(|e| e.key.eq_ignore_ascii_case(key))
            .map(|e| e.value.trim().to_string())
    };
    let path = get("haLogPath").filter(|p| !p.is_empty())?;
    let on = |v: Option<String>, default: bool| {
        v.map_or(default, |v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "enabled" | "1" | "yes" | "true"
            )
        })
    };
    Some(LogSettings {
        path: Some(PathBuf::from(path)),
        enabled: on(get("haLogStatus"), true),
        max_len: get("logLen")
            .and_then(|v| v.parse().ok())
            .unwrap_or(typed::DEFAULT_LOG_LEN),
        to_stdout: on(get("haLogToStdout"), false),
    })
}
