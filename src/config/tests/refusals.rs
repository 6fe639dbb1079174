//! What is refused or warned about because it used to be accepted silently or to hang (issue 10,
//! item 7): files that are not regular or too long, provider libraries that are no PKCS#11
//! module or are p11ha itself, unbounded echoes, control characters and invalid UTF-8, files
//! without any configuration, log and journal directories that cannot work.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc;

use super::*;

const LIBZ: &str = "/usr/lib/x86_64-linux-gnu/libz.so.1";

/// `load` on another thread, failing the test (instead of hanging it) after 20 s.
fn load_bounded(path: &Path) -> Result<HaConfig, ConfigError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(load(&p));
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("load({}) did not return within 20 s", path.display()))
}

#[track_caller]
fn assert_file_err(r: Result<HaConfig, ConfigError>, path: &Path, needle: &str) {
    let e = r.expect_err("expected an error");
    assert_eq!(
        (e.file.as_path(), e.line, e.key.as_deref()),
        (path, None, None),
        "{e}"
    );
    assert!(e.message.contains(needle), "{e}\nlacks {needle:?}");
}

// ---------------------------------------------------------------- the file

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("Chrystoki.conf");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_file_err(load_bounded(&fifo), &fifo, "it is a FIFO (named pipe)");
    // Through a symlink too: what is checked is what the link points at.
    let link = dir.path().join("link.conf");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    assert_file_err(load_bounded(&link), &link, "FIFO");
}

#[test]
fn devices_and_directories_are_refused() {
    // /dev/zero and /dev/urandom never end; they are refused like /dev/null, before any read
    // (tests/config_errors.rs runs them through C_Initialize under a memory limit).
    for (path, what) in [
        ("/dev/null", "a character device"),
        ("/dev/zero", "a character device"),
        ("/dev/urandom", "a character device"),
        ("/tmp", "a directory"),
    ] {
        let path = Path::new(path);
        assert_file_err(load_bounded(path), path, &format!("it is {what}"));
    }
}

#[test]
fn a_file_over_one_mib_is_refused_one_of_one_mib_is_read() {
    let f = fixture();
    let path = f.dir.path().join("Chrystoki.conf");
    let text = with_provider(GROUP, &f);
    let pad = |n: usize| format!("{text}//{}\n", "x".repeat(n - text.len() - 3));
    let max = MAX_FILE_LEN as usize;
    std::fs::write(&path, pad(max)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MAX_FILE_LEN);
    load(&path).unwrap();
    std::fs::write(&path, pad(max + 1)).unwrap();
    assert_file_err(
        load(&path),
        &path,
        "it is 1048577 bytes long: a configuration file is at most 1048576 bytes (1 MiB)",
    );
}

#[test]
fn a_symlink_to_a_regular_file_is_read() {
    let f = fixture();
    let real = f.dir.path().join("real.conf");
    std::fs::write(&real, with_provider(GROUP, &f)).unwrap();
    let link = f.dir.path().join("Chrystoki.conf");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_eq!(load(&link).unwrap().groups[0].label, "g1");
}

#[test]
fn load_for_init_gives_the_log_settings_of_a_file_it_refuses() {
    let f = fixture();
    let log = f.subdir("log");
    let path = f.dir.path().join("Chrystoki.conf");
    let text = format!("{GROUP}HAConfiguration = {{ haLogPath = {log}; logLen = lots; }}\n");
    std::fs::write(&path, with_provider(&text, &f)).unwrap();
    let failure = load_for_init(&path).unwrap_err();
    assert_eq!(
        failure.error.key.as_deref(),
        Some("logLen"),
        "{}",
        failure.error
    );
    let settings = failure.log.expect("log settings");
    assert_eq!(settings.path, Some(PathBuf::from(&log)));
    assert!(settings.enabled);
    assert_eq!(settings.max_len, DEFAULT_LOG_LEN);
    assert_eq!(log_settings_best_effort(&path), Some(settings));
    // A relative haLogPath is not used, even to log an error.
    std::fs::write(&path, "HAConfiguration = { haLogPath = log; }\n").unwrap();
    assert_eq!(load_for_init(&path).unwrap_err().log, None);
}

// ---------------------------------------------------------------- provider libraries

fn provider_err(library: &str) -> ConfigError {
    parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = {library};\n}}\n"
    ))
    .unwrap_err()
}

#[test]
fn a_provider_must_be_a_loadable_pkcs11_module() {
    let f = fixture();
    let text = f.dir.path().join("notes.txt");
    std::fs::write(&text, "not a module\n").unwrap();
    let e = provider_err(text.to_str().unwrap());
    assert_err(
        &e,
        6,
        "Provider00Library",
        "cannot be a member module: cannot load it as a shared library:",
    );
    assert!(Path::new(LIBZ).exists(), "{LIBZ} is needed");
    let e = provider_err(LIBZ);
    assert_err(
        &e,
        6,
        "Provider00Library",
        "cannot be a member module: it does not export C_GetFunctionList: it is not a PKCS#11 \
         module",
    );
    // A bare name would be looked up by the loader, not where the check looked.
    let e = provider_err("libsofthsm2.so");
    assert_err(&e, 6, "Provider00Library", "expected the absolute path");
    // The real module loads (and is not initialized: SoftHSM would need SOFTHSM2_CONF).
    let c = parse(&with_provider(GROUP, &f)).unwrap();
    assert_eq!(c.providers[0].library, PathBuf::from(MODULE));
}

// ---------------------------------------------------------------- bounded output

#[test]
fn a_10_mb_value_is_echoed_bounded() {
    let big = "x".repeat(10_000_000);
    let e = err(&format!(
        "VirtualToken = {{\nVirtualToken00Label = {big};\nVirtualToken00Members = 1;\n}}\n"
    ));
    assert_err(
        &e,
        2,
        "VirtualToken00Label",
        "(10000000 bytes) is 10000000 bytes long",
    );
    assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
    let e = err(&format!(
        "{GROUP}HAConfiguration = {{\n logLen = {big};\n}}\n"
    ));
    assert_err(&e, 6, "logLen", "(10000000 bytes)");
    assert!(e.to_string().len() < 300, "{e}");
    // A huge key, with and without '='.
    let e = parse(&format!("Misc = {{\n {big} 1;\n}}\n")).unwrap_err();
    assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
    let c = ok(&format!("HAConfiguration = {{\n {big} = 1;\n}}\n"));
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].len() < 300, "{}", c.warnings[0].len());
    assert!(c.warnings[0].ends_with("(10000000 bytes): unknown key in HAConfiguration (ignored)"));
}

#[test]
fn warnings_are_capped() {
    let keys: String = (0..100).map(|i| format!("unknown{i} = 1;\n")).collect();
    let c = ok(&format!("HAConfiguration = {{\n{keys}}}\n"));
    assert_eq!(c.warnings.len(), MAX_WARNINGS + 1);
    assert_eq!(
        c.warnings[MAX_WARNINGS],
        "/etc/Chrystoki.conf: 80 more warning(s) not shown (at most 20 are)"
    );
}

#[test]
fn an_unknown_label_lists_a_few_groups() {
    let groups: String = (0..1000)
        .map(|i| format!("VirtualToken{i:04}Label = g{i};\nVirtualToken{i:04}Members = m{i};\n"))
        .collect();
    let e = err(&format!(
        "VirtualToken = {{\n{groups}}}\nHASynchronize = {{ nope = 1; }}\n"
    ));
    assert!(
        e.message
            .ends_with("(known groups: \"g0\", \"g1\", \"g2\", \"g3\", \"g4\", … (1000 groups))"),
        "{e}"
    );
}

// ---------------------------------------------------------------- control characters, UTF-8

#[test]
fn control_characters_in_keys_and_values_are_refused() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "VirtualToken00Label = a\0b",
            2,
            "VirtualToken00Label",
            "\"a\\0b\" holds the control or invisible character U+0000 at character 2",
        ),
        (
            "VirtualToken00Label = a\u{1b}[31mb",
            2,
            "VirtualToken00Label",
            "U+001B at character 2",
        ),
        (
            "VirtualToken00Label = a\u{202e}b",
            2,
            "VirtualToken00Label",
            "U+202E",
        ),
        ("VirtualToken00SN = ab\tc", 2, "VirtualToken00SN", "U+0009"),
        (
            "VirtualToken00Members = 11\u{7}1",
            2,
            "VirtualToken00Members",
            "U+0007",
        ),
        (
            "VirtualToken00\u{1}Label = g",
            2,
            "VirtualToken00\\u{1}Label",
            "the key \"VirtualToken00\\u{1}Label\" holds",
        ),
    ];
    for (line, at, key, needle) in cases {
        let e = err(&format!(
            "VirtualToken = {{\n{line};\nVirtualToken01Label = h; VirtualToken01Members = 9;\n}}\n"
        ));
        assert_err(&e, *at, key, needle);
        assert!(
            !e.to_string().contains(['\0', '\u{1b}', '\u{7}', '\t']),
            "{e:?}"
        );
    }
    let e = err(&format!(
        "{GROUP}HAConfiguration = {{\n haLogPath = /tmp/a\u{8}b;\n}}\n"
    ));
    assert_err(&e, 6, "haLogPath", "U+0008");
    let e = err(&format!("{GROUP}HASynchronize = {{\n g1\u{0} = 1;\n}}\n"));
    assert_err(&e, 6, "g1\\0", "U+0000");
    let e = parse_str(
        "[VirtualToken]\nVirtualToken00Label=a\u{1}\n",
        Path::new("/etc/crystoki.ini"),
    )
    .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("VirtualToken00Label")),
        "{e}"
    );
    // Sections p11ha does not read are not its business.
    let c = ok(&format!("{GROUP}Misc = {{ Banner = a\u{1b}b; }}\n"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn invalid_utf8_is_refused_in_a_value_accepted_in_a_comment() {
    let f = fixture();
    let path = f.dir.path().join("Chrystoki.conf");
    let write = |label: &[u8], comment: &[u8], misc: &[u8]| {
        let mut b = b"VirtualToken = {\n VirtualToken00Label = ".to_vec();
        b.extend_from_slice(label);
        b.extend_from_slice(b"; // ");
        b.extend_from_slice(comment);
        b.extend_from_slice(b"\n VirtualToken00Members = 1;\n}\nMisc = { Owner = ");
        b.extend_from_slice(misc);
        b.extend_from_slice(
            format!("; }}\nHAProviders = {{ Provider00Library = {}; }}\n", f.lib).as_bytes(),
        );
        std::fs::write(&path, b).unwrap();
    };
    write(b"caf\xe9", b"ok", b"x");
    let e = load(&path).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("VirtualToken00Label")),
        "{e}"
    );
    assert!(
        e.message
            .contains("is not valid UTF-8 (character 4 stands for bytes that are not UTF-8"),
        "{e}"
    );
    write(b"cafe", b"caf\xe9 (Latin-1)", b"Fran\xe7ois");
    assert_eq!(load(&path).unwrap().groups[0].label, "cafe");
    write("café".as_bytes(), b"ok", b"x");
    assert_eq!(load(&path).unwrap().groups[0].label, "café");
}

// ---------------------------------------------------------------- files without configuration

#[test]
fn an_empty_or_comment_only_file_is_an_error() {
    for (text, name) in [
        ("", CONF),
        ("\n  \n\t\n", CONF),
        ("// only comments\n# and more\n", CONF),
        ("; only a comment\r\n", "/etc/crystoki.ini"),
    ] {
        let e = parse_str(text, Path::new(name)).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (None, None), "{e}");
        assert!(
            e.message.starts_with(
                "the file holds no configuration (it is empty or only comments): add a \
                 VirtualToken section"
            ),
            "{e}"
        );
    }
}

#[test]
fn ha_only_without_any_group_is_a_warning() {
    let c = ok("HAConfiguration = {\n HAOnly = 1;\n}\n");
    assert_eq!(
        c.warnings,
        [
            "/etc/Chrystoki.conf:2: HAOnly: HAOnly is set and no HA group is configured (no \
          VirtualToken00Label): p11ha lists no slot"
        ]
    );
    // Without HAOnly the member slots are listed: nothing to warn about.
    assert!(ok("HAConfiguration = { HAOnly = 0; }\n")
        .warnings
        .is_empty());
}

// ---------------------------------------------------------------- directories

#[test]
fn log_and_journal_directories_are_checked() {
    let f = fixture();
    let file = f.dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    let existing = f.subdir("existing");
    let under_file = format!("{file}/sub");
    for key in ["haLogPath", "haJournalPath"] {
        let conf = |value: &str| format!("{GROUP}HAConfiguration = {{\n {key} = {value};\n}}\n");
        for (value, needle) in [
            (
                "halog",
                "expected an absolute directory path (starting with '/'), found \"halog\"",
            ),
            ("C:\\halog", "found \"C:\\halog\""),
            (file, "is not a directory: expected the path of a directory"),
            (
                &under_file,
                "is not a directory (a part of the path is a file)",
            ),
            (
                "/proc",
                "\"/proc\" is on procfs, where no file can be created",
            ),
            ("/sys/kernel", "is on sysfs"),
        ] {
            assert_err(&err(&conf(value)), 6, key, needle);
        }
        let missing = format!("{existing}/missing");
        let c = ok(&conf(&missing));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with(&format!(
                "/etc/Chrystoki.conf:6: {key}: directory \"{missing}\" does not exist: "
            )),
            "{:?}",
            c.warnings
        );
        assert!(ok(&conf(&existing)).warnings.is_empty());
    }
}

// ---------------------------------------------------------------- the HAConfiguration table

#[test]
fn every_ha_configuration_key_is_documented_once() {
    let readme = include_str!("../../../config/README.md");
    let example = include_str!("../../../config/Chrystoki.conf");
    for k in ha_configuration::KEYS {
        let section = if k.lunasa {
            "HAConfiguration, `LunaSA Client`"
        } else {
            "HAConfiguration"
        };
        let row = format!("| `{}` | {section} |", k.name);
        assert!(
            readme.contains(&row),
            "config/README.md lacks the row {row}"
        );
        assert!(
            example.contains(&format!("   {} = ", k.name)),
            "config/Chrystoki.conf does not show {}",
            k.name
        );
        assert!(!k.doc.is_empty() && !k.doc.contains('\n'), "{}", k.name);
    }
    let rows = readme
        .lines()
        .filter(|l| l.contains("| HAConfiguration"))
        .count();
    assert_eq!(
        rows,
        ha_configuration::KEYS.len(),
        "README rows vs the table"
    );
}
