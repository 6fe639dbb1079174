//! Directory keys (`haLogPath`, `haJournalPath`) and `haSyslogSocket`: what can be known from the path and its
//! metadata when the file is read. Opening files there (symlinks, owners, modes) is the HA log
//! writer's and the journal's business, at C_Initialize.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::echo::quoted;
use super::validate::Ctx;
use super::{ConfigError, RawEntry};

/// File systems where a directory exists but no file can be created: (f_type, name).
const PSEUDO_FS: &[(i64, &str)] = &[
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
];

fn pseudo_fs(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let f_type = st.f_type as i64;
    PSEUDO_FS
        .iter()
        .find(|(t, _)| *t == f_type)
        .map(|(_, name)| *name)
}

/// `None` for an empty value (not set). Errors: a relative path (the application's working
/// directory is not known), something that is not a directory, a pseudo file system. A
/// directory that does not exist (yet) is a warning saying `if_missing`.
pub(crate) fn check(
    ctx: &mut Ctx,
    e: &RawEntry,
    if_missing: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some((path, shown)) = absolute(ctx, e, "absolute directory path")? else {
        return Ok(None);
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {
            if let Some(fs) = pseudo_fs(&path) {
                return Err(ctx.entry_err(
                    e,
                    format!(
                        "{shown} is on {fs}, where no file can be created: expected a directory \
                         on a real file system"
                    ),
                ));
            }
        }
        Ok(_) => {
            return Err(ctx.entry_err(
                e,
                format!("{shown} is not a directory: expected the path of a directory"),
            ))
        }
        Err(err) if err.kind() == ErrorKind::NotFound => ctx.warn(
            e.line,
            &e.key,
            &format!(
                "directory {shown} does not exist: {if_missing} (it is looked for again at \
                 each C_Initialize)"
            ),
        ),
        Err(err) if err.kind() == ErrorKind::NotADirectory => {
            return Err(ctx.entry_err(
                e,
                format!(
                    "{shown} is not a directory (a part of the path is a file): expected the \
                     path of a directory"
                ),
            ))
        }
        // Permission denied and the like: the process that writes there may be allowed to.
        Err(err) => ctx.warn(
            e.line,
            &e.key,
            &format!("directory {shown} cannot be checked: {err}"),
        ),
    }
    Ok(Some(path))
}

/// A path key that names a socket or file (`haSyslogSocket`): `None` for an empty value. It
/// must be absolute and not a directory; it need not exist yet (a syslog daemon may start
/// later).
pub(crate) fn check_path(ctx: &mut Ctx, e: &RawEntry) -> Result<Option<PathBuf>, ConfigError> {
    let Some((path, shown)) = absolute(ctx, e, "absolute path")? else {
        return Ok(None);
    };
    if path.is_dir() {
        return Err(ctx.entry_err(
            e,
            format!("{shown} is a directory: expected the path of a socket"),
        ));
    }
    Ok(Some(path))
}

/// The path of a path key and how messages show it; `None` for an empty value (not set). A
/// relative path is an error: the application's working directory is not known.
fn absolute(
    ctx: &mut Ctx,
    e: &RawEntry,
    expected: &str,
) -> Result<Option<(PathBuf, String)>, ConfigError> {
    if e.value.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(&e.value);
    let shown = quoted(&e.value);
    if !path.is_absolute() {
        return Err(ctx.entry_err(
            e,
            format!(
                "expected an {expected} (starting with '/'), found {shown}: a relative path \
                 would depend on the application's working directory"
            ),
        ));
    }
    Ok(Some((path, shown.to_string())))
}
