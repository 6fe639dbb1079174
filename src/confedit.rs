//! In-place editing of the configuration file (Chrystoki.conf brace format or crystoki.ini), for the
//! `p11ha` command-line verbs.
//!
//! An edit changes only the bytes of the affected value (or inserts/removes one entry); comments
//! (including `// comment` after a value), order, whitespace, line endings (CRLF kept) and every other
//! section stay byte for byte. Section and key names match ASCII case-insensitively. Values are
//! written verbatim (backslashes literal); a value that could break the file's syntax (line breaks,
//! control characters, and in the brace format `;`, `{`, `}`, `//`) is refused. [`ConfFile::save`]
//! is atomic: a temporary file in the same directory, fsync, rename over the original, keeping the
//! original mode.
//!
//! ```no_run
//! # use p11ha::confedit::ConfFile;
//! let mut conf = ConfFile::load(&p11ha::confedit::locate()).unwrap();
//! conf.set("HAConfiguration", "logLen", "500000").unwrap();
//! conf.save().unwrap();
//! ```

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The configuration file: `P11HA_CONF`, else `$ChrystokiConfigurationPath/Chrystoki.conf`, else
/// `/etc/Chrystoki.conf` (the same order as the library).
pub fn locate() -> PathBuf {
    if let Some(p) = std::env::var_os("P11HA_CONF").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("ChrystokiConfigurationPath").filter(|p| !p.is_empty()) {
        return Path::new(&d).join("Chrystoki.conf");
    }
    PathBuf::from("/etc/Chrystoki.conf")
}

/// The two file syntaxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Chrystoki.conf: `Section = { key = value; // comment }`.
    Brace,
    /// crystoki.ini: `[Section]` / `key=value`.
    Ini,
}

/// What went wrong, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct EditError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for EditError {}

#[derive(Debug)]
struct Entry {
    key: Range<usize>,
    value: Range<usize>,
    /// Brace: up to and including the `;`. Ini: end of the line's content (before the line end).
    end: usize,
}

#[derive(Debug)]
struct Section {
    name: Range<usize>,
    /// Brace: index of the closing `}`. Ini: end of the header line (after its line end).
    close: usize,
    entries: Vec<Entry>,
}

/// A configuration file loaded for editing.
pub struct ConfFile {
    path: PathBuf,
    text: Vec<u8>,
    format: Format,
    eol: &'static str,
}

fn eq_ci(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(text: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && text[r.start].is_ascii_whitespace() {
        r.start += 1;
    }
    while r.end > r.start && text[r.end - 1].is_ascii_whitespace() {
        r.end -= 1;
    }
    r
}

fn line_start(text: &[u8], pos: usize) -> usize {
    text[..pos]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

/// Index just after the line end of the line containing `pos` (or the end of the text).
fn after_line(text: &[u8], pos: usize) -> usize {
    text[pos..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |i| pos + i + 1)
}

impl ConfFile {
    /// Reads `path`; `*.ini` is crystoki.ini, anything else the brace format.
    pub fn load(path: &Path) -> Result<ConfFile, EditError> {
        Self::read(path, false)
    }

    /// Like [`ConfFile::load`]; a missing file is an empty one (saved, it is created 0644).
    pub fn load_or_empty(path: &Path) -> Result<ConfFile, EditError> {
        Self::read(path, true)
    }

    fn read(path: &Path, missing_ok: bool) -> Result<ConfFile, EditError> {
        let text = match std::fs::read(path) {
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            r => r.map_err(|e| EditError {
                file: path.to_path_buf(),
                line: None,
                message: e.to_string(),
            })?,
        };
        let is_ini = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ini"));
        let conf = ConfFile {
            path: path.to_path_buf(),
            eol: if text.windows(2).any(|w| w == b"\r\n") {
                "\r\n"
            } else {
                "\n"
            },
            text,
            format: if is_ini { Format::Ini } else { Format::Brace },
        };
        conf.parse()?;
        Ok(conf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The file's bytes as they would be saved.
    /// Whether the file holds no section at all (empty, blank or only comments).
    pub fn is_blank(&self) -> bool {
        self.parse().is_ok_and(|s| s.is_empty())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.text
    }

    /// Value of `key` in `section` (the last one if the key is repeated).
    pub fn get(&self, section: &str, key: &str) -> Option<String> {
        let sections = self.parse().ok()?;
        sections
            .iter()
            .filter(|s| eq_ci(&self.text[s.name.clone()], section))
            .flat_map(|s| s.entries.iter())
            .rfind(|e| eq_ci(&self.text[e.key.clone()], key))
            .map(|e| String::from_utf8_lossy(&self.text[e.value.clone()]).into_owned())
    }

    /// Sets `key` in `section`: replaces the value of every occurrence, else adds the key at the end
    /// of the (last) section, else adds the section at the end of the file.
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> Result<(), EditError> {
        self.check_name(section)?;
        self.check_name(key)?;
        self.check_value(value)?;
        let sections = self.parse()?;
        let matching: Vec<&Section> = sections
            .iter()
            .filter(|s| eq_ci(&self.text[s.name.clone()], section))
            .collect();
        let mut values: Vec<Range<usize>> = matching
            .iter()
            .flat_map(|s| s.entries.iter())
            .filter(|e| eq_ci(&self.text[e.key.clone()], key))
            .map(|e| e.value.clone())
            .collect();
        if !values.is_empty() {
            values.sort_by_key(|r| std::cmp::Reverse(r.start));
            for r in values {
                self.text.splice(r, value.bytes());
            }
            return Ok(());
        }
        let eol = self.eol;
        match (matching.last(), self.format) {
            (Some(s), Format::Brace) => {
                let close = s.close;
                let start = line_start(&self.text, close);
                if self.text[start..close].iter().all(|&b| is_blank(b)) {
                    // `}` on its own line: a new line before it, indented like the last entry.
                    let indent = s
                        .entries
                        .last()
                        .map(|e| {
                            let ls = line_start(&self.text, e.key.start);
                            let pre = &self.text[ls..e.key.start];
                            if pre.iter().all(|&b| is_blank(b)) {
                                String::from_utf8_lossy(pre).into_owned()
                            } else {
                                String::new()
                            }
                        })
                        .unwrap_or_default();
                    let line = format!("{indent}{key} = {value};{eol}");
                    self.text.splice(start..start, line.bytes());
                } else {
                    let entry = format!("{key} = {value}; ");
                    self.text.splice(close..close, entry.bytes());
                }
            }
            (Some(s), Format::Ini) => {
                let (pos, sep) = match s.entries.last() {
                    Some(e) => (
                        after_line(&self.text, e.end),
                        String::from_utf8_lossy(&self.text[e.key.end..e.value.start]).into_owned(),
                    ),
                    None => (s.close, "=".to_owned()),
                };
                let mut line = String::new();
                if pos > 0 && self.text[pos - 1] != b'\n' {
                    line.push_str(eol);
                }
                line.push_str(&format!("{key}{sep}{value}{eol}"));
                self.text.splice(pos..pos, line.bytes());
            }
            (None, format) => {
                if !self.text.is_empty() && !self.text.ends_with(b"\n") {
                    self.text.extend_from_slice(eol.as_bytes());
                }
                let block = match format {
                    Format::Brace => format!("{section} = {{{eol}{key} = {value};{eol}}}{eol}"),
                    Format::Ini => format!("[{section}]{eol}{key}={value}{eol}"),
                };
                self.text.extend_from_slice(block.as_bytes());
            }
        }
        Ok(())
    }

    /// Removes every occurrence of `key` in `section` (its whole line when the entry has a line of
    /// its own, with its comment). Returns whether anything was removed.
    pub fn remove(&mut self, section: &str, key: &str) -> Result<bool, EditError> {
        let sections = self.parse()?;
        let mut cuts: Vec<Range<usize>> = Vec::new();
        for s in sections
            .iter()
            .filter(|s| eq_ci(&self.text[s.name.clone()], section))
        {
            for e in s
                .entries
                .iter()
                .filter(|e| eq_ci(&self.text[e.key.clone()], key))
            {
                let ls = line_start(&self.text, e.key.start);
                let alone_before = self.text[ls..e.key.start].iter().all(|&b| is_blank(b));
                let next = after_line(&self.text, e.end);
                let rest = trim(&self.text, e.end..next);
                let alone_after = rest.is_empty() || self.text[rest.clone()].starts_with(b"//");
                if self.format == Format::Ini || (alone_before && alone_after) {
                    cuts.push(ls..next);
                } else {
                    let mut end = e.end;
                    while end < self.text.len() && is_blank(self.text[end]) {
                        end += 1;
                    }
                    cuts.push(e.key.start..end);
                }
            }
        }
        cuts.sort_by_key(|r| std::cmp::Reverse(r.start));
        let removed = !cuts.is_empty();
        for r in cuts {
            self.text.drain(r);
        }
        Ok(removed)
    }

    /// Writes the file atomically (temp file in the same directory, fsync, rename), keeping the
    /// original file's mode (and owner, when permitted). A symlink is followed: its target is
    /// replaced.
    pub fn save(&self) -> Result<(), EditError> {
        let err = |message: String| EditError {
            file: self.path.clone(),
            line: None,
            message,
        };
        // A new file (addprovider on a missing one): readable by the application's user.
        let (target, owner, mode) = match std::fs::canonicalize(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (self.path.clone(), None, 0o644),
            r => {
                let target = r.map_err(|e| err(e.to_string()))?;
                let meta = std::fs::metadata(&target).map_err(|e| err(e.to_string()))?;
                (target, Some((meta.uid(), meta.gid())), meta.mode() & 0o7777)
            }
        };
        let dir = target.parent().unwrap_or(Path::new("/"));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.p11ha-{}.tmp", std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&self.text)?;
            // Same owner and mode as before (chown is allowed to fail for non-root users).
            if let Some((uid, gid)) = owner {
                let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
            }
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &target)?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e.to_string()));
        }
        Ok(())
    }

    fn error(&self, pos: Option<usize>, message: impl Into<String>) -> EditError {
        EditError {
            file: self.path.clone(),
            line: pos.map(|p| self.text[..p].iter().filter(|&&b| b == b'\n').count() + 1),
            message: message.into(),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), EditError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err(self.error(None, format!("invalid name {name:?}")));
        }
        Ok(())
    }

    fn check_value(&self, value: &str) -> Result<(), EditError> {
        if value.chars().any(char::is_control) {
            return Err(self.error(
                None,
                format!("value {value:?} contains a control character"),
            ));
        }
        if value.trim() != value || value.is_empty() {
            return Err(self.error(None, format!("value {value:?} is empty or padded")));
        }
        if self.format == Format::Brace && (value.contains([';', '{', '}']) || value.contains("//"))
        {
            return Err(self.error(
                None,
                format!("value {value:?} cannot contain ';', '{{', '}}' or '//' in this file"),
            ));
        }
        Ok(())
    }

    fn parse(&self) -> Result<Vec<Section>, EditError> {
        match self.format {
            Format::Brace => self.parse_brace(),
            Format::Ini => self.parse_ini(),
        }
    }

    /// Skips whitespace and `//` / `#` comments.
    fn skip(&self, mut i: usize) -> usize {
        let t = &self.text;
        loop {
            while i < t.len() && t[i].is_ascii_whitespace() {
                i += 1;
            }
            if t[i..].starts_with(b"//") || t.get(i) == Some(&b'#') {
                i = after_line(t, i);
            } else {
                return i;
            }
        }
    }

    fn parse_brace(&self) -> Result<Vec<Section>, EditError> {
        let t = &self.text;
        let mut sections = Vec::new();
        let mut i = self.skip(0);
        while i < t.len() {
            let start = i;
            while i < t.len() && !matches!(t[i], b'=' | b'{' | b'}' | b';' | b'\n') {
                i += 1;
            }
            if t.get(i) != Some(&b'=') {
                return Err(self.error(Some(start), "expected `Section = {`"));
            }
            let name = trim(t, start..i);
            if name.is_empty() {
                return Err(self.error(Some(start), "section without a name"));
            }
            i = self.skip(i + 1);
            if t.get(i) != Some(&b'{') {
                return Err(self.error(Some(start), "expected `{` after the section name"));
            }
            i += 1;
            let mut entries = Vec::new();
            let close = loop {
                i = self.skip(i);
                match t.get(i) {
                    None => return Err(self.error(Some(start), "section without a closing `}`")),
                    Some(b'}') => break i,
                    _ => {}
                }
                let kstart = i;
                while i < t.len() && !matches!(t[i], b'=' | b';' | b'{' | b'}' | b'\n') {
                    i += 1;
                }
                if t.get(i) != Some(&b'=') {
                    return Err(self.error(Some(kstart), "expected `key = value;`"));
                }
                let key = trim(t, kstart..i);
                let vstart = i + 1;
                i = vstart;
                while i < t.len() && !matches!(t[i], b';' | b'\n' | b'}') {
                    i += 1;
                }
                if t.get(i) != Some(&b';') {
                    return Err(self.error(Some(kstart), "value without a terminating `;`"));
                }
                let mut value = trim(t, vstart..i);
                if value.is_empty() {
                    value = vstart..vstart;
                }
                entries.push(Entry {
                    key,
                    value,
                    end: i + 1,
                });
                i += 1;
            };
            sections.push(Section {
                name,
                close,
                entries,
            });
            i = self.skip(close + 1);
        }
        Ok(sections)
    }

    fn parse_ini(&self) -> Result<Vec<Section>, EditError> {
        let t = &self.text;
        let mut sections: Vec<Section> = Vec::new();
        let mut pos = 0;
        while pos < t.len() {
            let next = after_line(t, pos);
            let line = trim(t, pos..next);
            let content = &t[line.clone()];
            if content.is_empty() || content[0] == b';' || content[0] == b'#' {
                // blank or comment
            } else if content[0] == b'[' {
                let Some(close) = content.iter().position(|&b| b == b']') else {
                    return Err(self.error(Some(pos), "section header without `]`"));
                };
                sections.push(Section {
                    name: trim(t, line.start + 1..line.start + close),
                    close: next,
                    entries: Vec::new(),
                });
            } else if let Some(eq) = content.iter().position(|&b| b == b'=') {
                let key = trim(t, line.start..line.start + eq);
                let mut value = trim(t, line.start + eq + 1..line.end);
                if value.is_empty() {
                    value = line.end..line.end;
                }
                match sections.last_mut() {
                    Some(s) => s.entries.push(Entry {
                        key,
                        value,
                        end: line.end,
                    }),
                    None => return Err(self.error(Some(pos), "key outside of any [section]")),
                }
            } else {
                return Err(self.error(Some(pos), "expected `key=value`"));
            }
            pos = next;
        }
        Ok(sections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(name: &str, text: &str) -> (tempfile::TempDir, ConfFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let c = ConfFile::load(&path).unwrap();
        (dir, c)
    }

    fn s(c: &ConfFile) -> &str {
        std::str::from_utf8(c.bytes()).unwrap()
    }

    #[test]
    fn brace_replace_keeps_comment() {
        let text = "A = {\n  haLogPath = /tmp/halog; // c; x\n  logLen = 1;}\n";
        let (_d, mut c) = conf("x.conf", text);
        assert_eq!(c.get("hacONFIG", "x"), None);
        assert_eq!(c.get("A", "HALOGPATH").as_deref(), Some("/tmp/halog"));
        c.set("A", "haLogPath", "/var/log/ha").unwrap();
        c.set("A", "logLen", "500000").unwrap();
        assert_eq!(
            s(&c),
            "A = {\n  haLogPath = /var/log/ha; // c; x\n  logLen = 500000;}\n"
        );
    }

    #[test]
    fn brace_insert_and_append() {
        let text = "B = { x = 1; }\nA = {\n\tk = v; // c\n}\n// end";
        let (_d, mut c) = conf("x.conf", text);
        c.set("A", "n", "2").unwrap();
        c.set("B", "y", "z").unwrap();
        c.set("New", "k", "v").unwrap();
        assert_eq!(
            s(&c),
            "B = { x = 1; y = z; }\nA = {\n\tk = v; // c\n\tn = 2;\n}\n// end\nNew = {\nk = v;\n}\n"
        );
        assert!(c.remove("B", "x").unwrap());
        assert!(c.remove("A", "k").unwrap());
        assert!(!c.remove("A", "k").unwrap());
        assert_eq!(
            s(&c),
            "B = { y = z; }\nA = {\n\tn = 2;\n}\n// end\nNew = {\nk = v;\n}\n"
        );
    }

    #[test]
    fn brace_refuses_bad_values_and_syntax() {
        let (_d, mut c) = conf("x.conf", "A = { k = v; }\n");
        assert!(c.set("A", "k", "a;b").is_err());
        assert!(c.set("A", "k", "a\nb").is_err());
        assert!(c.set("A", "k", "//x").is_err());
        assert!(c.set("A", "k w", "x").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.conf");
        std::fs::write(&p, "A = {\n k = v\n}\n").unwrap();
        let e = ConfFile::load(&p).err().unwrap();
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn ini_crlf_backslashes() {
        let text = "; top\r\n[VirtualToken]\r\nVirtualToken00Label=g\r\n\r\n[HAConfiguration]\r\nhaLogPath=C:\\x\\y\r\nHAOnly = 1\r\n\r\n[Misc]\r\nA=1\r\n";
        let (_d, mut c) = conf("crystoki.ini", text);
        assert_eq!(
            c.get("HAConfiguration", "haLogPath").as_deref(),
            Some("C:\\x\\y")
        );
        c.set("HAConfiguration", "haLogPath", "D:\\Program Files\\ha")
            .unwrap();
        c.set("HAConfiguration", "logLen", "5").unwrap();
        c.set("Other", "k", "v").unwrap();
        assert_eq!(
            s(&c),
            "; top\r\n[VirtualToken]\r\nVirtualToken00Label=g\r\n\r\n[HAConfiguration]\r\nhaLogPath=D:\\Program Files\\ha\r\nHAOnly = 1\r\nlogLen = 5\r\n\r\n[Misc]\r\nA=1\r\n[Other]\r\nk=v\r\n"
        );
        c.remove("HAConfiguration", "HAOnly").unwrap();
        assert!(!s(&c).contains("HAOnly"));
    }

    #[test]
    fn save_is_atomic_and_keeps_mode() {
        let (d, mut c) = conf("x.conf", "A = { k = v; }\n");
        let p = d.path().join("x.conf");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        c.set("A", "k", "w").unwrap();
        c.save().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A = { k = w; }\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
