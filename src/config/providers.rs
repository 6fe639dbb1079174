//! Member modules: `HAProviders.ProviderNNLibrary` (a loadable PKCS#11 module, not p11ha),
//! `ProviderNNEnv` (the environment set while p11ha calls into it) and `ProviderNNBoundedCalls`
//! (whether its calls run on p11ha's threads, bounded by ReceiveTimeout: the default).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::echo::{plain, quoted};
use super::ha_configuration::parse_bool;
use super::keys::{digits_in, index, numbered};
use super::validate::{Ctx, SEC_PROVIDERS};
use super::{module_check, ConfigError, ProviderConfig, RawEntry};

/// Parses `NAME=VALUE, NAME2=VALUE2` (split at the first `=` of each item).
pub(crate) fn parse_env(value: &str) -> Result<Vec<(String, String)>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        let Some((name, val)) = item.split_once('=') else {
            return Err(format!(
                "malformed item {}: expected NAME=VALUE (comma-separated)",
                quoted(item)
            ));
        };
        let name = name.trim();
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "malformed item {}: {} is not an environment variable name (letters, digits \
                 and '_', not starting with a digit)",
                quoted(item),
                quoted(name)
            ));
        }
        out.push((name.to_string(), val.trim().to_string()));
    }
    Ok(out)
}

#[derive(Default)]
struct Draft<'a> {
    library: Option<&'a RawEntry>,
    env: Option<&'a RawEntry>,
    bounded_calls: Option<&'a RawEntry>,
}

/// Whether `library` is p11-kit-client, or a copy of it (copies keep its name): the module
/// that sends every thread's calls over one socket and blocks for ever when its server stops.
pub fn is_p11kit_client(library: &std::path::Path) -> bool {
    library
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("p11-kit-client"))
}

/// `ProviderNNBoundedCalls`. Off, calls run on the application's thread with no time bound:
/// refused for p11-kit-client, which blocks a thread for ever when its server dies under load
/// or stops (REFERENCE §3), so a bound is the only thing between a dead HSM and a hung
/// application.
fn bounded_calls(ctx: &Ctx, e: &RawEntry, library: &std::path::Path) -> Result<bool, ConfigError> {
    let on = parse_bool(&e.value).ok_or_else(|| {
        ctx.entry_err(
            e,
            format!(
                "expected 1 (calls bounded by ReceiveTimeout, the default) or 0 (calls on the \
                 application's thread, unbounded), found {}",
                quoted(&e.value)
            ),
        )
    })?;
    if !on && is_p11kit_client(library) {
        return Err(ctx.entry_err(
            e,
            format!(
                "{} = 0 is refused for p11-kit-client: its calls block for ever when the server \
                 stops or dies, and only the bound (ReceiveTimeout) gives the application its \
                 thread back. Unbounded calls are for modules loaded in-process that do no I/O \
                 of their own (SoftHSM)",
                plain(&e.key)
            ),
        ));
    }
    Ok(on)
}

fn library(ctx: &Ctx, lib: &RawEntry) -> Result<PathBuf, ConfigError> {
    if lib.value.is_empty() {
        return Err(ctx.entry_err(
            lib,
            "empty library path: expected the path of a PKCS#11 module",
        ));
    }
    let shown = quoted(&lib.value);
    let library = PathBuf::from(&lib.value);
    if !library.is_absolute() {
        return Err(ctx.entry_err(
            lib,
            format!(
                "expected the absolute path of a PKCS#11 module (starting with '/'), found \
                 {shown}: a relative path would depend on the application's working directory \
                 or the loader's search path"
            ),
        ));
    }
    if !library.is_file() {
        return Err(ctx.entry_err(
            lib,
            format!("missing provider library: {shown} does not exist or is not a file"),
        ));
    }
    module_check::check(&library)
        .map_err(|why| ctx.entry_err(lib, format!("{shown} cannot be a member module: {why}")))?;
    Ok(library)
}

/// The providers of HAProviders, ordered by number.
pub(crate) fn build(ctx: &mut Ctx, prov: &[&RawEntry]) -> Result<Vec<ProviderConfig>, ConfigError> {
    let mut drafts: BTreeMap<u32, Draft> = BTreeMap::new();
    for e in prov {
        if let Some((digits, suffix)) = numbered(&e.key, "Provider") {
            if matches!(suffix.as_str(), "library" | "env" | "boundedcalls") {
                let example = format!("Provider0{digits}Library");
                let index = index(digits, &example).map_err(|m| ctx.entry_err(e, m))?;
                let d = drafts.entry(index).or_default();
                let slot = match suffix.as_str() {
                    "library" => &mut d.library,
                    "env" => &mut d.env,
                    _ => &mut d.bounded_calls,
                };
                if let Some(first) = slot {
                    return Err(ctx.entry_err(
                        e,
                        format!(
                            "duplicate key for provider {index} (already set at line {} as {})",
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
        let candidates = vec![
            format!("Provider{nn}Library"),
            format!("Provider{nn}Env"),
            format!("Provider{nn}BoundedCalls"),
        ];
        ctx.unknown_key(e, SEC_PROVIDERS, &candidates);
    }
    let mut out = Vec::new();
    for (index, d) in drafts {
        let Some(lib) = d.library else {
            let e = d
                .env
                .or(d.bounded_calls)
                .expect("a draft has at least one key");
            return Err(ctx.entry_err(
                e,
                format!(
                    "{} without Provider{index:02}Library: add \
                     Provider{index:02}Library = /path/to/pkcs11-module.so",
                    plain(&e.key)
                ),
            ));
        };
        let library = library(ctx, lib)?;
        let env = match d.env {
            Some(e) => parse_env(&e.value).map_err(|m| ctx.entry_err(e, m))?,
            None => Vec::new(),
        };
        let bounded_calls = match d.bounded_calls {
            Some(e) => bounded_calls(ctx, e, &library)?,
            None => true,
        };
        out.push(ProviderConfig {
            index,
            library,
            env,
            bounded_calls,
        });
    }
    Ok(out)
}
