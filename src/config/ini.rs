//! crystoki.ini: the same sections and keys as Chrystoki.conf in INI form, read line by line as
//! the command-line editor (`confedit`) reads it, so both agree on every line:
//!
//! - blank lines, and lines whose first non-blank character is `;` or `#`, are comments;
//! - `[Name]` starts a section (text after the `]` is ignored);
//! - `Key = Value` is split at the first `=`; key and value are trimmed, and a `//` preceded by
//!   white space starts a comment in the value, as in the brace format;
//! - nothing is special inside a value: backslashes and quotes are literal (`C:\dir\` stays
//!   `C:\dir\`, and a trailing backslash does not join the next line).
//!
//! Any other line is an error naming its line.

use std::path::Path;

use super::echo::plain;
use super::{ConfigError, RawEntry, RawSection};

fn error(file: &Path, line: usize, key: &str, message: &str) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: Some(line),
        key: (!key.is_empty()).then(|| plain(key).to_string()),
        message: message.to_string(),
    }
}

/// Parses INI text into sections, in file order.
pub(crate) fn parse(text: &str, file: &Path) -> Result<Vec<RawSection>, ConfigError> {
    let mut sections: Vec<RawSection> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let t = raw.trim_start_matches('\u{feff}').trim();
        if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            let Some((name, _)) = rest.split_once(']') else {
                return Err(error(
                    file,
                    line,
                    t,
                    "section header without ']': expected '[Section]'",
                ));
            };
            sections.push(RawSection {
                name: name.trim().to_string(),
                line,
                entries: Vec::new(),
            });
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            return Err(error(
                file,
                line,
                t,
                "expected 'Key=Value', a '[Section]' header or a ';' comment",
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(error(
                file,
                line,
                "",
                "missing key before '=': expected 'Key=Value'",
            ));
        }
        let Some(section) = sections.last_mut() else {
            return Err(error(
                file,
                line,
                key,
                "key outside a section: expected a '[Section]' line before it",
            ));
        };
        section.entries.push(RawEntry {
            key: key.to_string(),
            value: strip_comment(value.trim()).trim().to_string(),
            line,
        });
    }
    Ok(sections)
}

/// Drops a trailing `// comment` (a `//` preceded by white space), as in the brace format.
fn strip_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'/') && bytes[i - 1].is_ascii_whitespace()
        {
            return &value[..i];
        }
    }
    value
}
