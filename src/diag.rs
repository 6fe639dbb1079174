//! p11ha's own diagnostics on the application's stderr, in one place.
//!
//! A library has no business filling its host's stderr: by default only errors and warnings an
//! operator must act on are written (a configuration p11ha refused or doubts, a change owed to
//! a member that could not be kept, an internal error). `P11HA_DEBUG` chooses more or less:
//! `P11HA_DEBUG=error|warn|info|debug` (or `0`..`3`, `off`). Events about members belong in the
//! HA log (`halog`), not here.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

fn parse(v: &str) -> Option<Level> {
    Some(match v.trim().to_ascii_lowercase().as_str() {
        "off" | "none" => Level::Off,
        "error" | "0" => Level::Error,
        "warn" | "warning" | "1" => Level::Warn,
        "info" | "2" => Level::Info,
        "debug" | "trace" | "3" | "yes" | "true" | "on" => Level::Debug,
        _ => return None,
    })
}

/// The level chosen by `P11HA_DEBUG` (read once per process), [`Level::Warn`] by default.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        std::env::var("P11HA_DEBUG")
            .ok()
            .and_then(|v| parse(&v))
            .unwrap_or(Level::Warn)
    })
}

pub fn enabled(l: Level) -> bool {
    l != Level::Off && l <= level()
}

/// Writes one line, `p11ha: ` first, in one write so that lines of threads do not interleave.
pub fn emit(l: Level, args: std::fmt::Arguments) {
    use std::io::Write;
    let tag = match l {
        Level::Warn => "warning: ",
        Level::Debug => "debug: ",
        _ => "",
    };
    let line = format!("p11ha: {tag}{args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

macro_rules! diag {
    ($level:ident, $($arg:tt)*) => {
        if $crate::diag::enabled($crate::diag::Level::$level) {
            $crate::diag::emit($crate::diag::Level::$level, format_args!($($arg)*))
        }
    };
}
pub(crate) use diag;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(parse("INFO"), Some(Level::Info));
        assert_eq!(parse("0"), Some(Level::Error));
        assert_eq!(parse("off"), Some(Level::Off));
        assert_eq!(parse("loud"), None);
        assert!(Level::Error < Level::Warn && Level::Warn < Level::Debug);
    }
}
