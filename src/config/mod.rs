//! Configuration: where the file is, how it is read (a bounded regular file) and parsed (Luna
//! brace format or crystoki.ini), and the typed [`HaConfig`] the rest of p11ha uses. Every error
//! names file, line and key, and echoes at most [`ECHO_CHARS`] characters of the input.
//!
//! INTERFACE CONTRACT (used by ffi/ha/halog/cli): the types below and `locate`, `load`,
//! `load_for_init`, `parse_str`.
//!
//! Files: `read` (the file), `brace` and `ini` (syntax), `validate` (the order of the checks and
//! the rules for every HA section), `groups`, `providers` with `module_check`,
//! `ha_configuration` with `dirs` (one file per section family), `keys` (numbered keys,
//! suggestions), `echo` (input in messages).

use std::path::{Path, PathBuf};
use std::time::Duration;

mod brace;
mod dirs;
mod echo;
mod groups;
mod ha_configuration;
mod ini;
mod keys;
mod module_check;
mod providers;
pub use providers::is_p11kit_client;
mod read;
#[cfg(test)]
mod tests;
mod validate;

pub use echo::ECHO_CHARS;
pub use groups::{derive_group_serial, MAX_LABEL_LEN, MAX_SERIAL_LEN};
pub use ha_configuration::{
    DEFAULT_AUDIT_LEN, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_LOG_LEN, DEFAULT_RECEIVE_TIMEOUT_MS,
    DEFAULT_RECONNECT_INTERVAL_S, DEFAULT_RECONN_ATT, DEFAULT_REPLAY_LIMIT, DEFAULT_SYSLOG_SOCKET,
};
pub use module_check::P11HA_SYMBOL;
pub use read::MAX_FILE_LEN;
pub use validate::MAX_WARNINGS;

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
    /// The HA groups' audit trail (`haAuditLog`, ...; see `crate::audit`).
    pub audit: AuditSettings,
    pub recovery: RecoverySettings,
    /// `HAConfiguration.failover_on_deactivation`.
    pub failover_on_deactivation: bool,
    /// `haJournalPath`: where synchronized groups keep records of what down members are owed
    /// that no live member could take (the members hold all others), shared by every process on
    /// the host. `None`: in each process only.
    pub journal_dir: Option<PathBuf>,
    /// `ReceiveTimeout` (ms in the file): a member silent this long is declared failed.
    pub receive_timeout: Duration,
    /// `ConnectTimeout` (ms in the file): bound on loading/initializing one member module.
    pub connect_timeout: Duration,
    /// `MultipartReplayLimit`: input bytes kept per multi-part operation for a replay.
    pub multipart_replay_limit: u64,
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
    /// `ProviderNNBoundedCalls` (default on): calls run on p11ha's threads, bounded by
    /// ReceiveTimeout; off, on the application's thread (C_Initialize stays bounded).
    pub bounded_calls: bool,
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
    /// `haLogRetain`: rotated files kept; older ones are deleted (0 = keep every one).
    pub retain: u64,
    /// `haLogToSyslog = enabled`: records also go to syslog.
    pub to_syslog: bool,
    /// `haSyslogSocket`: the socket they go to (default `/dev/log`).
    pub syslog_socket: PathBuf,
}

/// The HA groups' audit trail (`crate::audit`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    /// `haAuditLog = enabled` and a directory to write in.
    pub enabled: bool,
    /// `haAuditPath`, else `haLogPath`.
    pub dir: Option<PathBuf>,
    /// `haAuditLen`: rotate after a record takes a group's file to this many bytes.
    pub max_len: u64,
    /// `haLogRetain`: rotated files kept per group (0 = every one).
    pub retain: u64,
    /// `haAuditKeyUse = enabled`: every key use is a record too.
    pub key_use: bool,
    /// `haLogToSyslog = enabled`.
    pub to_syslog: bool,
    /// `haSyslogSocket` (default `/dev/log`).
    pub syslog_socket: PathBuf,
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
        // An error about no file at all (no configuration found) names the places in its text.
        if self.file.as_os_str().is_empty() {
            return f.write_str(&self.message);
        }
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

/// `Some` when there is no configuration at all: `P11HA_CONF` is not set and nothing (not even a
/// dangling link) is where [`locate`] looks. With the package installed, every p11-kit consumer
/// loads libp11ha.so whether or not anyone configured it, so that case is no error for the
/// library (it serves no slots, quietly); the `p11ha` command says it plainly and where it
/// looked. A file named by `P11HA_CONF`, or one that exists but cannot be read, is an error.
pub fn no_configuration() -> Option<ConfigError> {
    no_configuration_from(
        std::env::var_os("P11HA_CONF"),
        std::env::var_os("ChrystokiConfigurationPath"),
    )
}

fn no_configuration_from(
    conf: Option<std::ffi::OsString>,
    dir: Option<std::ffi::OsString>,
) -> Option<ConfigError> {
    if conf.as_ref().is_some_and(|c| !c.is_empty()) {
        return None;
    }
    let path = locate_from(None, dir.clone());
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        _ => return None,
    }
    let why = match dir.filter(|d| !d.is_empty()) {
        Some(d) => format!(
            "ChrystokiConfigurationPath is {}, P11HA_CONF is not set",
            Path::new(&d).display()
        ),
        None => "neither P11HA_CONF nor ChrystokiConfigurationPath is set".into(),
    };
    Some(ConfigError {
        file: PathBuf::new(),
        line: None,
        key: None,
        message: format!(
            "no configuration found: {} does not exist ({why}). Write one (an annotated \
             example: config/Chrystoki.conf in the sources, /usr/share/doc/p11ha/examples/ \
             when installed; `p11ha addprovider` starts one) or set P11HA_CONF to its path",
            path.display()
        ),
    })
}

/// The configuration the library runs with when there is none ([`no_configuration`]): no
/// group, no provider, so no slot. (A file with nothing in it is refused, as one an
/// administrator forgot to fill; an empty HAProviders section is the same as no file.)
pub fn empty() -> Result<HaConfig, ConfigError> {
    let mut cfg = parse_str("HAProviders = {\n}\n", &locate())?;
    cfg.warnings.clear();
    Ok(cfg)
}

/// True when `path` is read as crystoki.ini (extension `.ini`, any case).
pub fn is_ini(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ini"))
}

/// Read and validate `path` (`.ini` = crystoki.ini, anything else = brace format).
pub fn load(path: &Path) -> Result<HaConfig, ConfigError> {
    load_for_init(path).map_err(|f| f.error)
}

/// Why [`load_for_init`] failed, and where the HA log is, when the file says so usably.
#[derive(Debug)]
pub struct LoadFailure {
    pub error: ConfigError,
    /// The HA log settings of the refused file (`None`: no usable `haLogPath`, or the file
    /// could not be read or parsed), so the error can be written to the HA log too.
    pub log: Option<LogSettings>,
}

/// [`load`], and on failure the HA log settings of the refused file. The file is read once.
pub fn load_for_init(path: &Path) -> Result<HaConfig, Box<LoadFailure>> {
    let fail = |error, log| Box::new(LoadFailure { error, log });
    if path == locate() {
        if let Some(none) = no_configuration() {
            return Err(fail(none, None));
        }
    }
    let bytes = read::read(path).map_err(|e| fail(e, None))?;
    // Lossy: a stray Latin-1 byte in a comment must not make the whole file unreadable; in a
    // value p11ha reads, the U+FFFD it becomes is refused (`validate::check_text`).
    let text = String::from_utf8_lossy(&bytes);
    let sections = parse_sections(&text, path).map_err(|e| fail(e, None))?;
    validate::build(&sections, path).map_err(|e| fail(e, log_settings_of(&sections, path)))
}

fn parse_sections(text: &str, path: &Path) -> Result<Vec<RawSection>, ConfigError> {
    if is_ini(path) {
        ini::parse(text, path)
    } else {
        brace::parse(text, path)
    }
}

/// Parse and validate configuration text as if read from `path` (the format follows `path`'s
/// extension, as in [`load`]). Provider libraries are still checked on the file system (and
/// loaded, see `module_check`), directories of the HA log and journal by their metadata.
pub fn parse_str(text: &str, path: &Path) -> Result<HaConfig, ConfigError> {
    validate::build(&parse_sections(text, path)?, path)
}

fn log_settings_of(sections: &[RawSection], path: &Path) -> Option<LogSettings> {
    let conf = validate::section(sections, validate::SEC_CONF);
    ha_configuration::log_settings_lenient(&mut validate::Ctx::new(path), &conf)
}

/// The HA log settings of a file that failed validation, so the error can still be logged:
/// `None` when the file cannot be read, does not parse, or sets no usable `haLogPath`. Reads the
/// file again: [`load_for_init`] gives the same from the one read.
pub fn log_settings_best_effort(path: &Path) -> Option<LogSettings> {
    let bytes = read::read(path).ok()?;
    let sections = parse_sections(&String::from_utf8_lossy(&bytes), path).ok()?;
    log_settings_of(&sections, path)
}
