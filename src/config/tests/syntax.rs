//! Where the file is, and its syntax: brace format, INI, syntax errors.

use super::*;

// ---------------------------------------------------------------- locate

#[test]
fn locate_order() {
    use std::ffi::OsString;
    let s = |v: &str| Some(OsString::from(v));
    assert_eq!(
        locate_from(s("/x/p.conf"), s("/dir")),
        PathBuf::from("/x/p.conf")
    );
    assert_eq!(
        locate_from(s(""), s("/dir")),
        PathBuf::from("/dir/Chrystoki.conf")
    );
    assert_eq!(
        locate_from(None, s("/dir")),
        PathBuf::from("/dir/Chrystoki.conf")
    );
    assert_eq!(
        locate_from(None, s("")),
        PathBuf::from("/etc/Chrystoki.conf")
    );
    assert_eq!(
        locate_from(None, None),
        PathBuf::from("/etc/Chrystoki.conf")
    );
}

// ---------------------------------------------------------------- brace syntax

#[test]
fn seed_003_parses_as_is() {
    let sections = brace::parse(SEED_003, Path::new(CONF)).unwrap();
    let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "VirtualToken",
            "HASynchronize",
            "HAConfiguration",
            "HARecovery"
        ]
    );
    let vt = &sections[0].entries;
    assert_eq!(vt.len(), 4);
    assert_eq!(
        (vt[0].key.as_str(), vt[0].value.as_str(), vt[0].line),
        ("VirtualToken00Label", "haGroup1", 2)
    );
    assert_eq!(vt[2].value, "1234840370164, 1234924189183");
    let conf = &sections[2].entries;
    let kv: Vec<(&str, &str, usize)> = conf
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
        .collect();
    assert_eq!(
        kv,
        [
            ("HAOnly", "1", 11),
            ("haLogPath", "/tmp/halog", 12),
            ("haLogStatus", "enabled", 13),
            ("logLen", "100000000", 14),
            ("failover_on_deactivation", "1", 15),
            ("reconnAtt", "120", 18),
        ]
    );
    assert_eq!(sections[3].entries[0].line, 21);
}

#[test]
fn seed_003_without_providers_is_an_error() {
    let e = parse(SEED_003).unwrap_err();
    assert_err(&e, 2, "HAProviders", "no member providers configured");
}

// ---------------------------------------------------------------- syntax errors

#[test]
fn error_unclosed_brace() {
    let e = parse("Misc = { A = 1; }\nVirtualToken = {\n  VirtualToken00Label = g;\n").unwrap_err();
    assert_err(&e, 2, "VirtualToken", "unclosed brace");
}

#[test]
fn error_missing_closing_brace_before_next_section() {
    let e = parse("VirtualToken = {\n  VirtualToken00Label = g;\nHASynchronize = {\n g = 1; }\n")
        .unwrap_err();
    assert_err(&e, 3, "HASynchronize", "nested sections are not supported");
}

#[test]
fn error_missing_equals() {
    let e = parse("VirtualToken = {\n  VirtualToken00Label g1;\n}\n").unwrap_err();
    assert_err(&e, 2, "VirtualToken00Label g1", "missing '='");
    let e = parse("\n\nVirtualToken {\n}\n").unwrap_err();
    assert_err(&e, 3, "VirtualToken", "missing '='");
}

#[test]
fn error_key_outside_section() {
    let e = parse("// comment\nHAOnly = 1;\n").unwrap_err();
    assert_err(&e, 2, "HAOnly", "key outside a section");
    let e = parse("A = { }\n\nstray\n").unwrap_err();
    assert_err(&e, 3, "stray", "key outside a section");
    let e = parse("A = { }\n}\n").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("unexpected '}'"), "{e}");
}

#[test]
fn error_missing_key() {
    let e = parse("Misc = {\n = 3;\n}\n").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert_eq!(e.key, None);
    assert!(e.message.contains("missing key"), "{e}");
}

#[test]
fn display_names_file_line_key() {
    let e = parse("VirtualToken = {\n  VirtualToken00Label g1;\n}\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/Chrystoki.conf:2: VirtualToken00Label g1: missing '=' in section VirtualToken: \
         expected 'Key = Value;'"
    );
}

// ---------------------------------------------------------------- INI

#[test]
fn ini_with_backslash_paths() {
    let f = fixture();
    // Backslashes and spaces are literal; the directory exists, so no warning is expected.
    let halog = f.subdir("Safe Net\\halog");
    let text = format!(
        "; crystoki.ini\r\n\
         [Chrystoki2]\r\n\
         LibNT=C:\\Program Files\\SafeNet\\LunaClient\\cryptoki.dll\r\n\
         \r\n\
         [VirtualToken]\r\n\
         VirtualToken00Label=haGroup1\r\n\
         VirtualToken00SN=11234840370164\r\n\
         VirtualToken00Members=1234840370164, 1234924189183\r\n\
         VirtualTokenActiveRecovery=activeBasic\r\n\
         [HASynchronize]\r\n\
         haGroup1=1\r\n\
         [HAConfiguration]\r\n\
         haLogPath={halog}\r\n\
         reconnAtt=7\r\n\
         [HAProviders]\r\n\
         Provider00Library={lib}\r\n\
         Provider00Env=P11_KIT_SERVER_ADDRESS=unix:path=C:\\tmp\\a.sock\r\n",
        lib = f.lib
    );
    let path = Path::new("C:\\Windows\\crystoki.ini");
    let c = parse_str(&text, path).unwrap();
    assert_eq!(c.groups[0].label, "haGroup1");
    assert_eq!(c.groups[0].serial, "11234840370164");
    assert_eq!(c.groups[0].members, ["1234840370164", "1234924189183"]);
    assert!(c.groups[0].synchronize);
    assert_eq!(c.recovery.mode, RecoveryMode::Basic);
    assert_eq!(c.recovery.attempts, 7);
    assert!(halog.ends_with("/Safe Net\\halog"), "{halog}");
    assert_eq!(c.log.path, Some(PathBuf::from(&halog)));
    assert_eq!(
        c.providers[0].env,
        [(
            "P11_KIT_SERVER_ADDRESS".to_string(),
            "unix:path=C:\\tmp\\a.sock".to_string()
        )]
    );

    // Errors and warnings in INI files still name the line.
    let bad = text.replace("reconnAtt=7", "logLen=abc\r\nreconAtt=1");
    let e = parse_str(&bad, path).unwrap_err();
    assert_eq!(e.line, Some(14), "{e}");
    assert_eq!(e.key.as_deref(), Some("logLen"));
    let warn = text.replace("reconnAtt=7", "reconAtt=7");
    let c = parse_str(&warn, path).unwrap();
    assert_eq!(
        c.warnings,
        ["C:\\Windows\\crystoki.ini:14: reconAtt: unknown key in HAConfiguration (did you mean 'reconnAtt'?)"]
    );
    let dup = text.replace("haGroup1=1", "haGroup1=1\r\nhaGroup2=1");
    let e = parse_str(&dup, path).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(12), Some("haGroup2")));
}

#[test]
fn ini_key_outside_section() {
    let e = parse_str("\nHAOnly=1\n[Misc]\n", Path::new("x.INI")).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("HAOnly")));
    assert!(e.message.contains("outside a section"), "{e}");
}

#[test]
fn ini_lines_are_read_one_by_one() {
    let path = Path::new("/etc/crystoki.ini");
    let sections = ini::parse(
        "[HAConfiguration]\r\nhaLogPath=/opt/x\\\r\nlogLen = 5 // five\r\n  ; indented comment\r\n\
         Key=a=b\r\n[ Misc ] trailing\r\nUrl=//server/share\r\n",
        path,
    )
    .unwrap();
    let kv: Vec<(&str, &str, usize)> = sections[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
        .collect();
    // A trailing backslash is literal: it does not join the next line.
    assert_eq!(
        kv,
        [
            ("haLogPath", "/opt/x\\", 2),
            ("logLen", "5", 3),
            ("Key", "a=b", 5)
        ]
    );
    assert_eq!((sections[1].name.as_str(), sections[1].line), ("Misc", 6));
    assert_eq!(sections[1].entries[0].value, "//server/share");

    let e = ini::parse("[A]\nno equals sign\n", path).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("no equals sign"))
    );
    assert!(e.message.contains("expected 'Key=Value'"), "{e}");
    // ':' is no separator (as for the command-line editor and Windows' profile API).
    let e = ini::parse("[A]\nKey: value\n", path).unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = ini::parse("[A]\n = 1\n", path).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(2), None));
    let e = ini::parse("\n[Unclosed\n", path).unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("without ']'"), "{e}");
}
