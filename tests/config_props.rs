//! Randomized tests of the configuration reader (issue 10): whatever a file holds, reading it
//! never panics, every error names `file:line: key:` (the file alone only when the file as a
//! whole is refused: unreadable, not a regular file, too long, no configuration at all), and
//! what is printed (the error, or the warnings) stays bounded whatever the size of the input.
//!
//! Inputs: raw noise (random bytes mixed with the syntax's characters and real key names),
//! near-valid files in both formats (a valid configuration whose values are replaced by random
//! ones, with random extra keys and sections, comments, Latin-1 bytes in comments), the same
//! files mangled (bytes inserted and deleted, stray braces, nesting), and huge values.
//!
//! The default 256 cases per property take a few seconds; for a longer run:
//! `PROPTEST_CASES=20000 cargo test --release --test config_props`.

use std::path::{Path, PathBuf};

use p11ha::config::{self, ConfigError, HaConfig, ECHO_CHARS, MAX_WARNINGS};
use proptest::prelude::*;
use proptest::sample::select;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
const LIBZ: &str = "/usr/lib/x86_64-linux-gnu/libz.so.1";

/// The longest message: an echo is at most ECHO_CHARS characters of up to 10 bytes each
/// (`\u{10ffff}`) plus its length; a message has the key and at most three echoes, plus text.
const MAX_MESSAGE: usize = 4 * (ECHO_CHARS * 10 + 40) + 600;

// ------------------------------------------------------------------------------------ checks

/// Files a case may point at, made fresh for each case.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::Builder::new()
            .prefix("p11ha-props")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        std::fs::write(dir.path().join("notes.so"), "not a module\n").unwrap();
        Scene { dir }
    }

    /// Replaces the placeholders generators use for paths that exist only in this case.
    fn resolve(&self, text: &str) -> String {
        let d = self.dir.path().display().to_string();
        text.replace("@LOG@", &format!("{d}/log"))
            .replace("@FILE@", &format!("{d}/file"))
            .replace("@TEXTMOD@", &format!("{d}/notes.so"))
            .replace("@MISSING@", &format!("{d}/missing"))
    }

    fn path(&self, ini: bool) -> PathBuf {
        self.dir.path().join(if ini {
            "crystoki.ini"
        } else {
            "Chrystoki.conf"
        })
    }
}

fn printable_line(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Errors that concern the file as a whole and so have no line.
fn whole_file(e: &ConfigError) -> bool {
    e.message
        .starts_with("cannot read the configuration file: ")
        || e.message
            .starts_with("the file holds no configuration (it is empty or only comments)")
}

/// The properties every result has. `intact`: the generator kept the syntax valid, so any
/// error is about a key and names it.
fn check(
    result: Result<HaConfig, ConfigError>,
    file: &Path,
    intact: bool,
) -> Result<(), TestCaseError> {
    let bound = MAX_MESSAGE + file.as_os_str().len();
    match result {
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(shown.len() <= bound, "{} bytes: {shown}", shown.len());
            prop_assert!(printable_line(&shown), "{shown:?}");
            prop_assert_eq!(&e.file, file);
            match e.line {
                Some(line) => {
                    let place = match &e.key {
                        Some(key) => format!("{}:{line}: {key}: ", file.display()),
                        None => format!("{}:{line}: ", file.display()),
                    };
                    prop_assert!(shown.starts_with(&place), "{shown}");
                    if intact {
                        prop_assert!(e.key.is_some(), "no key: {shown}");
                    }
                }
                None => {
                    prop_assert!(whole_file(&e), "no line: {shown}");
                    prop_assert!(e.key.is_none(), "{shown}");
                }
            }
        }
        Ok(c) => {
            prop_assert!(c.warnings.len() <= MAX_WARNINGS + 1, "{}", c.warnings.len());
            for w in &c.warnings {
                prop_assert!(w.len() <= bound, "{} bytes: {w}", w.len());
                prop_assert!(printable_line(w), "{w:?}");
                prop_assert!(w.starts_with(&file.display().to_string()), "{w}");
            }
            for g in &c.groups {
                prop_assert!((1..=config::MAX_LABEL_LEN).contains(&g.label.len()));
                prop_assert!(
                    printable_line(&g.label) && !g.label.contains(char::REPLACEMENT_CHARACTER)
                );
                prop_assert!((1..=config::MAX_SERIAL_LEN).contains(&g.serial.len()));
                prop_assert!(
                    g.serial.bytes().all(|b| b.is_ascii_graphic()),
                    "{:?}",
                    g.serial
                );
                prop_assert!(!(g.members.is_empty() && g.standby.is_empty()));
                for m in g.members.iter().chain(&g.standby) {
                    prop_assert!(!m.is_empty() && printable_line(m) && !m.contains(' '));
                }
            }
            for p in &c.providers {
                prop_assert!(p.library.is_absolute(), "{:?}", p.library);
            }
            for dir in [&c.log.path, &c.journal_dir].into_iter().flatten() {
                prop_assert!(dir.is_absolute(), "{dir:?}");
            }
        }
    }
    Ok(())
}

/// Writes `bytes` as the case's file and loads it (the bounded read and the lossy decoding).
fn load_bytes(scene: &Scene, ini: bool, bytes: &[u8]) -> (PathBuf, Result<HaConfig, ConfigError>) {
    let path = scene.path(ini);
    std::fs::write(&path, bytes).unwrap();
    let r = config::load(&path);
    (path, r)
}

// ---------------------------------------------------------------------------------- pieces

const SECTIONS: &[&str] = &[
    "VirtualToken",
    "HASynchronize",
    "HARecovery",
    "HAConfiguration",
    "HAProviders",
    "LunaSA Client",
    "Misc",
    "Chrystoki2",
    "haconfiguration",
    "virtualtoken",
];

const CONF_KEYS: &[&str] = &[
    "HAOnly",
    "haLogPath",
    "haLogStatus",
    "logLen",
    "haLogToStdout",
    "failover_on_deactivation",
    "reconnAtt",
    "AutoReconnectInterval",
    "ReceiveTimeout",
    "ConnectTimeout",
    "haJournalPath",
    "reconAtt",
    "HALOGPATH",
];

const LABELS: &[&str] = &["g0", "g1", "G1", "haGroup1", "prod"];

fn section_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(SECTIONS).prop_map(str::to_string),
        1 => "[A-Za-z][A-Za-z0-9 _]{0,15}",
    ]
}

/// Keys that neither format reads as syntax (no `=`, `;`, braces, brackets, comment starts).
fn key() -> impl Strategy<Value = String> {
    let nn = "[0-9]{1,3}";
    prop_oneof![
        (
            nn,
            select(&["Label", "SN", "Members", "Standby", "Lable", ""][..])
        )
            .prop_map(|(n, s)| format!("VirtualToken{n}{s}")),
        Just("VirtualTokenActiveRecovery".to_string()),
        select(CONF_KEYS).prop_map(str::to_string),
        (nn, select(&["Library", "Env", "Libary"][..]))
            .prop_map(|(n, s)| format!("Provider{n}{s}")),
        select(LABELS).prop_map(str::to_string),
        "[A-Za-z_][A-Za-z0-9_ .-]{0,20}",
        // Any other characters, controls and U+FFFD included.
        "[A-Za-z][^=;{}\\[\\]\n\r#/]{0,10}",
    ]
}

/// Values that neither format reads as syntax (no `;`, `}`, `{`, line breaks).
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        (-3i64..700_001).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        select(&["0", "1", "yes", "no", "enabled", "disabled", "on", "maybe", "", "TRUE"][..])
            .prop_map(str::to_string),
        select(&["activeBasic", "activeEnhanced", "fast"][..]).prop_map(str::to_string),
        select(LABELS).prop_map(str::to_string),
        "[a-zA-Z0-9 _.-]{0,40}",
        prop::collection::vec("[0-9a-f]{1,18}", 1..4).prop_map(|v| v.join(", ")),
        select(&["1,,2", "1 2", " , ", "a1b2c3d4e5f60718, 9"][..]).prop_map(str::to_string),
        select(
            &[
                "@LOG@",
                "@FILE@",
                "@MISSING@",
                "/proc",
                "/sys/kernel",
                "relative/x",
                "C:\\halog",
                "//server/share",
                "@FILE@/sub",
                "/tmp",
                "",
            ][..]
        )
        .prop_map(str::to_string),
        select(
            &[
                SOFTHSM,
                P11KIT_CLIENT,
                LIBZ,
                "@TEXTMOD@",
                "/nonexistent/lib.so",
                "libsofthsm2.so",
            ][..]
        )
        .prop_map(str::to_string),
        select(
            &[
                "A=1, B=x",
                "bad",
                "=1",
                "P11_KIT_SERVER_ADDRESS=unix:path=/x",
                "1A=2"
            ][..]
        )
        .prop_map(str::to_string),
        // Any characters, controls and U+FFFD included.
        "[^;{}\n\r]{0,24}",
    ]
}

/// A comment on its own line: anything.
fn comment() -> impl Strategy<Value = String> {
    "[^\n\r]{0,30}"
}

/// A comment after a value: after an empty value `//` is value text, not a comment, so it holds
/// nothing a value cannot.
fn trailing_comment() -> impl Strategy<Value = String> {
    "[^\n\r;{}]{0,30}"
}

#[derive(Debug, Clone)]
enum Item {
    Entry {
        key: String,
        value: String,
        semicolon: bool,
        trailing: Option<String>,
    },
    Comment(String),
}

#[derive(Debug, Clone)]
struct Section {
    name: String,
    items: Vec<Item>,
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        5 => (key(), value(), any::<bool>(), prop::option::weighted(0.2, trailing_comment())).prop_map(
            |(key, value, semicolon, trailing)| Item::Entry { key, value, semicolon, trailing }
        ),
        1 => comment().prop_map(Item::Comment),
    ]
}

fn random_sections() -> impl Strategy<Value = Vec<Section>> {
    prop::collection::vec(
        (section_name(), prop::collection::vec(item(), 0..8))
            .prop_map(|(name, items)| Section { name, items }),
        0..6,
    )
}

fn entry(key: &str, value: &str) -> Item {
    Item::Entry {
        key: key.into(),
        value: value.into(),
        semicolon: true,
        trailing: None,
    }
}

/// A configuration that loads, to be changed by [`near_valid`].
fn valid_base() -> Vec<Section> {
    let s = |name: &str, items: Vec<Item>| Section {
        name: name.into(),
        items,
    };
    vec![
        s(
            "Chrystoki2",
            vec![entry("LibUNIX64", "/usr/safenet/lib/libCryptoki2_64.so")],
        ),
        s(
            "VirtualToken",
            vec![
                entry("VirtualToken00Label", "g0"),
                entry("VirtualToken00Members", "a1b2c3d4e5f60718, 1234"),
                entry("VirtualToken00Standby", "99"),
                entry("VirtualToken01Label", "g1"),
                entry("VirtualToken01SN", "1000000000000001"),
                entry("VirtualToken01Members", "5678"),
                entry("VirtualTokenActiveRecovery", "activeBasic"),
            ],
        ),
        s("HASynchronize", vec![entry("g0", "1")]),
        s("HARecovery", vec![entry("g1", "3")]),
        s(
            "HAConfiguration",
            vec![
                entry("HAOnly", "1"),
                entry("haLogPath", "@LOG@"),
                entry("logLen", "500000"),
                entry("reconnAtt", "-1"),
                entry("AutoReconnectInterval", "60"),
                entry("ReceiveTimeout", "10000"),
            ],
        ),
        s(
            "HAProviders",
            vec![
                entry("Provider00Library", P11KIT_CLIENT),
                entry(
                    "Provider00Env",
                    "P11_KIT_SERVER_ADDRESS=unix:path=/run/a.sock",
                ),
                entry("Provider01Library", SOFTHSM),
            ],
        ),
    ]
}

/// The valid base with some values replaced, some entries and sections added.
fn near_valid() -> impl Strategy<Value = Vec<Section>> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), value()), 0..4),
        prop::collection::vec((any::<prop::sample::Index>(), item()), 0..4),
        random_sections(),
    )
        .prop_map(|(changes, extra, more)| {
            let mut sections = valid_base();
            let n: usize = sections.iter().map(|s| s.items.len()).sum();
            for (at, v) in changes {
                let mut i = at.index(n);
                for s in &mut sections {
                    if i < s.items.len() {
                        if let Item::Entry { value, .. } = &mut s.items[i] {
                            *value = v;
                        }
                        break;
                    }
                    i -= s.items.len();
                }
            }
            for (at, it) in extra {
                let k = sections.len();
                let s = &mut sections[at.index(k)];
                let pos = at.index(s.items.len() + 1);
                s.items.insert(pos, it);
            }
            sections.extend(more);
            sections
        })
}

fn brace(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        out.push_str(&format!("{} = {{\n", s.name));
        for it in &s.items {
            match it {
                Item::Entry {
                    key,
                    value,
                    semicolon,
                    trailing,
                } => {
                    out.push_str(&format!("   {key} = {value}"));
                    if *semicolon {
                        out.push(';');
                    }
                    if let Some(c) = trailing {
                        out.push_str(&format!(" // {c}"));
                    }
                    out.push('\n');
                }
                Item::Comment(c) => out.push_str(&format!("   // {c}\n")),
            }
        }
        out.push_str("}\n");
    }
    out
}

fn ini(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        out.push_str(&format!("[{}]\r\n", s.name));
        for it in &s.items {
            match it {
                Item::Entry {
                    key,
                    value,
                    trailing,
                    ..
                } => {
                    out.push_str(&format!("{key}={value}"));
                    if let Some(c) = trailing {
                        out.push_str(&format!(" // {c}"));
                    }
                    out.push_str("\r\n");
                }
                Item::Comment(c) => out.push_str(&format!("; {c}\r\n")),
            }
        }
    }
    out
}

/// Bytes or pieces of syntax, for noise and for mangling.
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        select(&["{", "}", "=", ";", "//", "#", "[", "]", "\n", "\r\n", " ", ",", "\\", "\0"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        select(SECTIONS).prop_map(|s| format!("{s} = {{").into_bytes()),
        select(CONF_KEYS).prop_map(|s| format!("{s} = ").into_bytes()),
        Just(b"\xe9".to_vec()),
        Just("é".as_bytes().to_vec()),
    ]
}

fn mangle(text: String, edits: &[(prop::sample::Index, usize, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = text.into_bytes();
    for (at, delete, insert) in edits {
        let pos = at.index(bytes.len() + 1);
        let end = (pos + delete).min(bytes.len());
        bytes.splice(pos..end, insert.iter().copied());
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, usize, Vec<u8>)>> {
    prop::collection::vec((any::<prop::sample::Index>(), 0usize..4, token()), 1..6)
}

// ------------------------------------------------------------------------------ properties

proptest! {
    #[test]
    fn noise_is_refused_or_read_never_a_panic(
        tokens in prop::collection::vec(token(), 0..300),
        ini_format in any::<bool>(),
    ) {
        let scene = Scene::new();
        let (path, r) = load_bytes(&scene, ini_format, &tokens.concat());
        check(r, &path, false)?;
    }

    #[test]
    fn near_valid_brace_files(sections in near_valid(), latin1 in any::<bool>()) {
        let scene = Scene::new();
        let mut text = scene.resolve(&brace(&sections)).into_bytes();
        if latin1 {
            // A Latin-1 byte in a comment is harmless.
            text.extend_from_slice(b"// Fran\xe7ois\n");
        }
        let (path, r) = load_bytes(&scene, false, &text);
        check(r, &path, true)?;
    }

    #[test]
    fn near_valid_ini_files(sections in near_valid(), latin1 in any::<bool>()) {
        let scene = Scene::new();
        let mut text = scene.resolve(&ini(&sections)).into_bytes();
        if latin1 {
            text.extend_from_slice(b"; Fran\xe7ois\r\n");
        }
        let (path, r) = load_bytes(&scene, true, &text);
        check(r, &path, true)?;
    }

    #[test]
    fn mangled_files(sections in near_valid(), edits in edits(), ini_format in any::<bool>()) {
        let scene = Scene::new();
        let text = if ini_format { ini(&sections) } else { brace(&sections) };
        let bytes = mangle(scene.resolve(&text), &edits);
        let (path, r) = load_bytes(&scene, ini_format, &bytes);
        check(r, &path, false)?;
    }

    #[test]
    fn huge_keys_and_values_give_bounded_output(
        sections in near_valid(),
        at in any::<prop::sample::Index>(),
        len in 1_000usize..300_000,
        c in prop_oneof![Just('x'), Just('\u{1}'), Just('é'), Just(' ')],
        in_key in any::<bool>(),
        ini_format in any::<bool>(),
    ) {
        let mut sections = sections;
        let big: String = format!("a{}", std::iter::repeat_n(c, len).collect::<String>());
        let entries: Vec<&mut Item> = sections
            .iter_mut()
            .flat_map(|s| s.items.iter_mut())
            .filter(|i| matches!(i, Item::Entry { .. }))
            .collect();
        let n = entries.len();
        if let Some(Item::Entry { key, value, .. }) = entries.into_iter().nth(at.index(n)) {
            if in_key { *key = big } else { *value = big }
        }
        let scene = Scene::new();
        let text = if ini_format { ini(&sections) } else { brace(&sections) };
        // parse_str: no file-size bound, so the input can be as large as wanted.
        let path = scene.path(ini_format);
        let r = config::parse_str(&scene.resolve(&text), &path);
        check(r, &path, true)?;
    }
}
