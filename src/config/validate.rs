//! Typed validation: raw sections → [`HaConfig`]. The order of the checks, the rules that hold
//! for every HA section (printable UTF-8 text, no key set twice), what an empty file or a file
//! without any p11ha setting means, and how errors and warnings are worded and bounded.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::echo::{first_unprintable, plain, quoted};
use super::keys::suggest;
use super::{
    groups, ha_configuration, providers, ConfigError, HaConfig, RawEntry, RawSection,
    RecoverySettings,
};

pub(crate) const SEC_VT: &str = "VirtualToken";
pub(crate) const SEC_SYNC: &str = "HASynchronize";
pub(crate) const SEC_RECOVERY: &str = "HARecovery";
pub(crate) const SEC_CONF: &str = "HAConfiguration";
pub(crate) const SEC_PROVIDERS: &str = "HAProviders";
pub(crate) const SEC_LUNASA: &str = "LunaSA Client";

/// Warnings kept; the rest are counted in one last line, so a file of a million misspelled keys
/// prints a few lines, not a million.
pub const MAX_WARNINGS: usize = 20;

/// The file being validated, and the warnings found so far.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    warnings: Vec<String>,
    unshown: usize,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a Path) -> Self {
        Ctx {
            file,
            warnings: Vec::new(),
            unshown: 0,
        }
    }

    /// An error at `line` (0: unknown) and `key` (empty: none).
    pub fn err(&self, line: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: (line > 0).then_some(line),
            key: (!key.is_empty()).then(|| plain(key).to_string()),
            message: message.into(),
        }
    }

    pub fn entry_err(&self, e: &RawEntry, message: impl Into<String>) -> ConfigError {
        self.err(e.line, &e.key, message)
    }

    /// A warning formatted as `file[:line][: key]: message`.
    pub fn warn(&mut self, line: usize, key: &str, message: &str) {
        if self.warnings.len() >= MAX_WARNINGS {
            self.unshown += 1;
            return;
        }
        self.warnings.push(self.err(line, key, message).to_string());
    }

    pub fn unknown_key(&mut self, e: &RawEntry, section: &str, candidates: &[String]) {
        let hint = match suggest(&e.key, candidates) {
            Some(s) => format!(" (did you mean '{s}'?)"),
            None => " (ignored)".into(),
        };
        self.warn(e.line, &e.key, &format!("unknown key in {section}{hint}"));
    }

    fn finish(mut self) -> Vec<String> {
        if self.unshown > 0 {
            let more = format!(
                "{} more warning(s) not shown (at most {MAX_WARNINGS} are)",
                self.unshown
            );
            self.warnings.push(self.err(0, "", more).to_string());
        }
        self.warnings
    }
}

/// Entries of every section named `name` (case-insensitive), in file order.
pub(crate) fn section<'a>(sections: &'a [RawSection], name: &str) -> Vec<&'a RawEntry> {
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

/// Keys and values p11ha reads are printable UTF-8 text: a NUL would cut a label short in a C
/// client, and a byte that is not UTF-8 would be read as U+FFFD, silently changing the value.
pub(crate) fn check_text(ctx: &Ctx, e: &RawEntry) -> Result<(), ConfigError> {
    for (what, s) in [("key", &e.key), ("value", &e.value)] {
        if let Some((at, c)) = first_unprintable(s) {
            return Err(ctx.entry_err(
                e,
                format!(
                    "the {what} {} holds the control or invisible character U+{:04X} at \
                     character {at}: labels, serials, paths and every other value must be \
                     printable text",
                    quoted(s),
                    c as u32
                ),
            ));
        }
        if let Some(at) = s.chars().position(|c| c == char::REPLACEMENT_CHARACTER) {
            return Err(ctx.entry_err(
                e,
                format!(
                    "the {what} {} is not valid UTF-8 (character {} stands for bytes that are \
                     not UTF-8, or is U+FFFD itself): save the file as UTF-8",
                    quoted(s),
                    at + 1
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn build(sections: &[RawSection], file: &Path) -> Result<HaConfig, ConfigError> {
    let mut ctx = Ctx::new(file);
    if sections.is_empty() {
        return Err(ctx.err(
            0,
            "",
            "the file holds no configuration (it is empty or only comments): add a \
             VirtualToken section (VirtualToken00Label, VirtualToken00Members) and an \
             HAProviders section (Provider00Library); see config/README.md",
        ));
    }
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
        for e in entries {
            check_text(&ctx, e)?;
        }
        check_duplicates(&ctx, name, entries)?;
    }

    let (mode, mut groups) = groups::build(&mut ctx, &vt)?;
    groups::apply_settings(&ctx, &sync, &recovery, &mut groups)?;
    let providers = providers::build(&mut ctx, &prov)?;
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
    let settings = ha_configuration::read(&mut ctx, &conf, &lunasa)?;
    if groups.is_empty() && providers.is_empty() {
        ctx.warn(
            0,
            "",
            "no HA group and no provider are configured (no VirtualToken00Label, no \
             Provider00Library): p11ha lists no slot",
        );
    } else if groups.is_empty() && settings.ha_only.value {
        let (line, key) = settings.ha_only.at.clone().unwrap_or_default();
        ctx.warn(
            line,
            &key,
            "HAOnly is set and no HA group is configured (no VirtualToken00Label): p11ha lists \
             no slot",
        );
    }

    Ok(HaConfig {
        path: file.to_path_buf(),
        groups,
        providers,
        ha_only: settings.ha_only.value,
        log: settings.log(),
        audit: settings.audit(),
        recovery: RecoverySettings {
            mode,
            attempts: settings.attempts.value,
            interval: Duration::from_secs(settings.interval.value),
        },
        failover_on_deactivation: settings.failover_on_deactivation.value,
        journal_dir: settings.journal_dir(),
        receive_timeout: Duration::from_millis(settings.receive_timeout.value),
        connect_timeout: Duration::from_millis(settings.connect_timeout.value),
        multipart_replay_limit: settings.multipart_replay_limit.value,
        warnings: ctx.finish(),
    })
}
