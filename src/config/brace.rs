//! Parser for the Luna brace format of Chrystoki.conf:
//!
//! ```text
//! Section = {
//!    Key = Value;          // comment
//!    Key2 = Value2; Key3 = Value3;
//! }
//! Other = { Key = Value; }
//! ```
//!
//! Rules (see config/README.md):
//! - `//` and `#` start a comment where a section name or key is expected (own line, or after a `;`).
//!   Inside a value, `//` starts a comment only when preceded by white space after some value text,
//!   so `http://x` and `//server/share` survive.
//! - A value runs to `;`, to a `}` that closes the section, or to the end of the line: the final `;`
//!   may be omitted (Luna files in the field sometimes do). A value cannot contain `;` or `}`.
//! - Values may contain spaces, commas, `=`, `:`, `/` and `\`; surrounding white space is trimmed.
//! - Every key keeps its line number. Nested sections are not supported.

use std::path::Path;

use super::echo::plain;
use super::{ConfigError, RawEntry, RawSection};

struct Scanner {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Scanner {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn bump(&mut self) {
        if self.peek() == Some('\n') {
            self.line += 1;
        }
        self.pos += 1;
    }

    fn at_comment(&self) -> bool {
        match self.peek() {
            Some('#') => true,
            Some('/') => self.peek_at(1) == Some('/'),
            _ => false,
        }
    }

    /// Skips to the end of the line (the newline itself is left for `skip_blank`).
    fn skip_to_eol(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == '\u{feff}' {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn skip_blank_and_comments(&mut self) {
        loop {
            self.skip_blank();
            if self.at_comment() {
                self.skip_to_eol();
            } else {
                break;
            }
        }
    }

    fn take_until(&mut self, stop: impl Fn(char) -> bool) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if stop(c) {
                break;
            }
            s.push(c);
            self.bump();
        }
        s
    }

    /// Reads a value: up to `;`, `}`, end of line, or a white-space-preceded `//` comment.
    fn take_value(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if matches!(c, ';' | '}' | '\n') {
                break;
            }
            if c == '/'
                && self.peek_at(1) == Some('/')
                && !s.trim().is_empty()
                && s.ends_with(char::is_whitespace)
            {
                self.skip_to_eol();
                break;
            }
            s.push(c);
            self.bump();
        }
        s
    }
}

fn error(file: &Path, line: usize, key: &str, message: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: Some(line),
        key: (!key.is_empty()).then(|| plain(key).to_string()),
        message,
    }
}

/// Parses brace-format text into sections, in file order.
pub(crate) fn parse(text: &str, file: &Path) -> Result<Vec<RawSection>, ConfigError> {
    let mut p = Scanner {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut sections = Vec::new();
    let mut current: Option<RawSection> = None;

    loop {
        p.skip_blank();
        let Some(c) = p.peek() else { break };
        if p.at_comment() {
            p.skip_to_eol();
            continue;
        }
        let line = p.line;
        match current.as_mut() {
            None => {
                if c == ';' {
                    p.bump();
                    continue;
                }
                if c == '}' {
                    return Err(error(
                        file,
                        line,
                        "",
                        "unexpected '}' outside a section (no section is open)".into(),
                    ));
                }
                let raw = p.take_until(|c| matches!(c, '=' | '{' | '}' | ';' | '\n'));
                let name = raw.trim().to_string();
                match p.peek() {
                    Some('=') => p.bump(),
                    Some('{') => {
                        return Err(error(
                            file,
                            line,
                            &name,
                            "missing '=' between the section name and '{' (expected 'Name = {')"
                                .into(),
                        ))
                    }
                    _ => {
                        return Err(error(
                            file,
                            line,
                            &name,
                            "key outside a section: expected 'Name = { Key = Value; }'".into(),
                        ))
                    }
                }
                if name.is_empty() {
                    return Err(error(
                        file,
                        line,
                        "",
                        "missing section name before '='".into(),
                    ));
                }
                p.skip_blank_and_comments();
                if p.peek() == Some('{') {
                    p.bump();
                    current = Some(RawSection {
                        name,
                        line,
                        entries: Vec::new(),
                    });
                } else {
                    return Err(error(
                        file,
                        line,
                        &name,
                        "key outside a section: expected '{' after 'Name =' \
                         (every 'Key = Value;' must be inside a 'Section = { ... }' block)"
                            .into(),
                    ));
                }
            }
            Some(section) => {
                if c == ';' {
                    p.bump();
                    continue;
                }
                if c == '}' {
                    p.bump();
                    sections.extend(current.take());
                    continue;
                }
                if c == '{' {
                    return Err(nested(file, line, section, ""));
                }
                let raw = p.take_until(|c| matches!(c, '=' | ';' | '{' | '}' | '\n'));
                let key = raw.trim().to_string();
                if p.peek() != Some('=') {
                    if p.peek() == Some('{') {
                        return Err(nested(file, line, section, &key));
                    }
                    return Err(error(
                        file,
                        line,
                        &key,
                        format!(
                            "missing '=' in section {}: expected 'Key = Value;'",
                            plain(&section.name)
                        ),
                    ));
                }
                if key.is_empty() {
                    return Err(error(
                        file,
                        line,
                        "",
                        format!(
                            "missing key before '=' in section {}: expected 'Key = Value;'",
                            plain(&section.name)
                        ),
                    ));
                }
                p.bump();
                let value = p.take_value().trim().to_string();
                if value.starts_with('{') {
                    return Err(nested(file, line, section, &key));
                }
                if p.peek() == Some(';') {
                    p.bump();
                }
                section.entries.push(RawEntry { key, value, line });
            }
        }
    }
    if let Some(section) = current {
        return Err(error(
            file,
            section.line,
            &section.name,
            format!(
                "unclosed brace: section '{}' opened here has no closing '}}'",
                plain(&section.name)
            ),
        ));
    }
    Ok(sections)
}

fn nested(file: &Path, line: usize, section: &RawSection, key: &str) -> ConfigError {
    error(
        file,
        line,
        key,
        format!(
            "unexpected '{{' inside section '{}' (opened at line {}): nested sections are not \
             supported; is a '}}' missing before this line?",
            plain(&section.name),
            section.line
        ),
    )
}
