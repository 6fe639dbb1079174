//! crystoki.ini (Windows): the same sections and keys as Chrystoki.conf in INI form, read with
//! rust-ini with quotes and escapes disabled so `C:\Program Files\x` stays literal. rust-ini does not
//! report line numbers, so the text is scanned separately to find the line of every key.

use std::collections::HashMap;
use std::path::Path;

use ini::{Ini, ParseOption};

use super::echo::plain;
use super::{ConfigError, RawEntry, RawSection};

/// Lines of keys and section headers, found by scanning the text: (section, key) -> lines in order.
struct LineIndex {
    keys: HashMap<(Option<String>, String), Vec<usize>>,
    sections: HashMap<String, Vec<usize>>,
}

impl LineIndex {
    fn build(text: &str) -> Self {
        let mut keys: HashMap<(Option<String>, String), Vec<usize>> = HashMap::new();
        let mut sections: HashMap<String, Vec<usize>> = HashMap::new();
        let mut current: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim().trim_start_matches('\u{feff}');
            if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
                continue;
            }
            if let Some(rest) = t.strip_prefix('[') {
                let name = rest.split(']').next().unwrap_or("").trim().to_lowercase();
                sections.entry(name.clone()).or_default().push(i + 1);
                current = Some(name);
                continue;
            }
            if let Some(pos) = t.find(['=', ':']) {
                let key = t[..pos].trim().to_lowercase();
                keys.entry((current.clone(), key)).or_default().push(i + 1);
            }
        }
        LineIndex { keys, sections }
    }

    /// The next unused line of `key` in `section` (keys may repeat).
    fn take_key(&mut self, section: Option<&str>, key: &str) -> Option<usize> {
        let lines = self
            .keys
            .get_mut(&(section.map(str::to_lowercase), key.to_lowercase()))?;
        if lines.is_empty() {
            None
        } else {
            Some(lines.remove(0))
        }
    }

    fn take_section(&mut self, section: &str) -> Option<usize> {
        let lines = self.sections.get_mut(&section.to_lowercase())?;
        if lines.is_empty() {
            None
        } else {
            Some(lines.remove(0))
        }
    }
}

/// Parses INI text into sections, in file order.
pub(crate) fn parse(text: &str, file: &Path) -> Result<Vec<RawSection>, ConfigError> {
    let opt = ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..ParseOption::default()
    };
    let ini = Ini::load_from_str_opt(text, opt).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: Some(e.line),
        key: None,
        message: format!("INI syntax error: {}", plain(&e.msg)),
    })?;
    let mut index = LineIndex::build(text);
    let mut sections = Vec::new();
    for (name, props) in ini.iter() {
        let Some(name) = name else {
            if let Some((key, _)) = props.iter().next() {
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    line: index.take_key(None, key),
                    key: Some(plain(key).to_string()),
                    message: "key outside a section: expected a '[Section]' line before it".into(),
                });
            }
            continue;
        };
        let line = index.take_section(name).unwrap_or(0);
        let entries = props
            .iter()
            .map(|(key, value)| RawEntry {
                line: index.take_key(Some(name), key).unwrap_or(0),
                key: key.trim().to_string(),
                value: strip_comment(value).trim().to_string(),
            })
            .collect();
        sections.push(RawSection {
            name: name.to_string(),
            line,
            entries,
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
