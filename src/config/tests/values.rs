//! Typed values, defaults, and the errors and warnings of each section.

use super::*;

#[test]
fn seed_003_typed_values() {
    let f = fixture();
    let halog = f.subdir("halog");
    let c = ok(&SEED_003.replace("/tmp/halog", &halog));
    assert_eq!(c.path, PathBuf::from(CONF));
    assert_eq!(c.groups.len(), 1);
    let g = &c.groups[0];
    assert_eq!(g.index, 0);
    assert_eq!(g.label, "haGroup1");
    assert_eq!(g.serial, "11234840370164");
    assert_eq!(g.members, ["1234840370164", "1234924189183"]);
    assert!(g.standby.is_empty());
    assert!(g.synchronize);
    assert_eq!(g.manual_recovery, Some(1));
    assert!(c.ha_only);
    assert_eq!(c.log.path, Some(PathBuf::from(&halog)));
    assert!(c.log.enabled);
    assert_eq!(c.log.max_len, 100_000_000);
    assert!(!c.log.to_stdout);
    assert!(c.failover_on_deactivation);
    assert_eq!(c.recovery.mode, RecoveryMode::Enhanced);
    assert_eq!(c.recovery.attempts, 120);
    assert_eq!(c.recovery.interval, Duration::from_secs(60));
    assert_eq!(c.receive_timeout, Duration::from_millis(10_000));
    assert_eq!(c.connect_timeout, Duration::from_millis(5_000));
    assert_eq!(c.providers.len(), 1);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn reference_one_line_form() {
    let f = fixture();
    let c = ok(&REFERENCE_ONE_LINE.replace("/tmp/halog", &f.subdir("halog")));
    let g = &c.groups[0];
    assert_eq!(
        (g.label.as_str(), g.serial.as_str()),
        ("haGroup1", "11234840370164")
    );
    assert!(g.synchronize);
    assert_eq!(g.manual_recovery, Some(1));
    assert!(c.ha_only);
    assert_eq!(c.recovery.attempts, 120);
    assert_eq!(c.recovery.interval, Duration::from_secs(60));
    assert_eq!(c.log.max_len, 100_000_000);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn missing_final_semicolon_and_unusual_values() {
    let f = fixture();
    let text = format!(
        "VirtualToken = {{\n\
         VirtualToken00Label = g1\n\
         VirtualToken00Members = 111, 222 // no semicolon, comment\n\
         }}\n\
         HASynchronize = {{ g1 = 1 }}\n\
         HAConfiguration = {{ haLogPath = /srv/Program Files\\x; reconnAtt = 3 }}\n\
         # hash comment line\n\
         HAProviders = {{\n\
         Provider00Library = {lib};\n\
         Provider00Env = P11_KIT_SERVER_ADDRESS=unix:path=/run/a.sock, X=a=b:c/d, EMPTY=\n\
         }}\n",
        lib = f.lib
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.groups[0].label, "g1");
    assert_eq!(c.groups[0].members, ["111", "222"]);
    assert!(c.groups[0].synchronize);
    assert_eq!(c.log.path, Some(PathBuf::from("/srv/Program Files\\x")));
    assert_eq!(c.recovery.attempts, 3);
    assert_eq!(
        c.providers[0].env,
        [
            (
                "P11_KIT_SERVER_ADDRESS".to_string(),
                "unix:path=/run/a.sock".to_string()
            ),
            ("X".to_string(), "a=b:c/d".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]
    );
    assert_eq!(c.providers[0].library, PathBuf::from(&f.lib));
}

#[test]
fn url_like_values_keep_double_slash() {
    let c = ok("HAConfiguration = { haLogPath = //server/share/halog; }\n\
                Misc = { Url = http://example.com/x; }\n");
    assert_eq!(c.log.path, Some(PathBuf::from("//server/share/halog")));
}

#[test]
fn real_world_conf_with_unrelated_sections() {
    let text = r#"Chrystoki2 = {
   LibUNIX = /usr/safenet/lunaclient/lib/libCryptoki2.so;
   LibUNIX64 = /usr/safenet/lunaclient/lib/libCryptoki2_64.so;
}
Luna = {
  DefaultTimeOut = 500000;
  PEDTimeout1 = 100000;
  KeypairGenTimeOut = 2700000;
  CloningCommandTimeOut = 300000;
  CommandTimeOutPedSet = 720000;
}
CardReader = {
  RemoteCommand = 1;
}
Misc = {
  PE1746Enabled = 0;
  ToolsDir = /usr/safenet/lunaclient/bin;
  MutexFolder = /usr/safenet/lunaclient/lock;
}
LunaSA Client = {
   ReceiveTimeout = 20000;
   SSLConfigFile = /usr/safenet/lunaclient/bin/openssl.cnf;
   ClientPrivKeyFile = /usr/safenet/lunaclient/cert/client/myhostKey.pem;
   ClientCertFile = /usr/safenet/lunaclient/cert/client/myhost.pem;
   ServerCAFile = /usr/safenet/lunaclient/cert/server/CAFile.pem;
   NetClient = 1;
   TCPKeepAlive = 1;
   ServerName00 = 10.0.0.5;
   ServerPort00 = 1792;
   ServerHtl00 = 0;
}
Secure Trusted Channel = {
   ClientTokenLib = /usr/safenet/lunaclient/lib/libSoftToken.so;
   SoftTokenDir = /usr/safenet/lunaclient/configData/token;
}
VirtualToken = {
   VirtualToken00Label = prod;
   VirtualToken00Members = 1234840370164;
}
"#;
    let c = ok(text);
    assert_eq!(c.groups[0].label, "prod");
    assert_eq!(c.groups[0].serial, "11234840370164");
    // LunaSA Client's ReceiveTimeout is honoured; unrelated keys raise no warning.
    assert_eq!(c.receive_timeout, Duration::from_millis(20_000));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn ha_configuration_timeouts_win_over_lunasa_client() {
    let c = ok(
        "LunaSA Client = { ReceiveTimeout = 20000; ConnectTimeout = 7000; }\n\
                HAConfiguration = { ReceiveTimeout = 3000; }\n",
    );
    assert_eq!(c.receive_timeout, Duration::from_millis(3000));
    assert_eq!(c.connect_timeout, Duration::from_millis(7000));
}

#[test]
fn defaults_and_case_insensitive_keys() {
    let c = ok(GROUP);
    assert!(!c.ha_only);
    assert_eq!(c.log.path, None);
    assert!(!c.log.enabled);
    assert_eq!(c.log.max_len, 100_000_000);
    assert!(c.failover_on_deactivation);
    assert_eq!(c.recovery.mode, RecoveryMode::Enhanced);
    assert_eq!(c.recovery.attempts, -1);
    assert_eq!(c.recovery.interval, Duration::from_secs(60));
    assert_eq!(c.receive_timeout, Duration::from_millis(10_000));
    assert_eq!(c.connect_timeout, Duration::from_millis(5_000));
    assert!(!c.groups[0].synchronize);
    assert_eq!(c.groups[0].manual_recovery, None);

    let c = ok(&format!(
        "{GROUP}haconfiguration = {{ haonly = yes; HALOGPATH = /var/log/ha; halogstatus = Disabled; \
         HaLogToStdout = TRUE; FAILOVER_ON_DEACTIVATION = no; RECONNATT = 0; \
         autoreconnectinterval = 1; receivetimeout = 100; connecttimeout = 600000; }}\n\
         virtualtoken = {{ virtualtokenactiverecovery = ACTIVEBASIC; }}\n"
    ));
    assert!(c.ha_only);
    assert_eq!(c.log.path, Some(PathBuf::from("/var/log/ha")));
    assert!(!c.log.enabled);
    assert!(c.log.to_stdout);
    assert!(!c.failover_on_deactivation);
    assert_eq!(c.recovery.attempts, 0);
    assert_eq!(c.recovery.mode, RecoveryMode::Basic);
    assert_eq!(c.recovery.interval, Duration::from_secs(1));
    assert_eq!(c.receive_timeout, Duration::from_millis(100));
    assert_eq!(c.connect_timeout, Duration::from_millis(600_000));
}

#[test]
fn groups_standby_and_order() {
    let c = ok("VirtualToken = {\n\
                VirtualToken01Label = b;\n\
                VirtualToken01Members = 5;\n\
                VirtualToken00Label = a;\n\
                VirtualToken00Members = 1 , 2;\n\
                VirtualToken00Standby = 3,4;\n\
                VirtualToken02Label = c;\n\
                VirtualToken02Standby = 9;\n\
                }\n");
    let labels: Vec<&str> = c.groups.iter().map(|g| g.label.as_str()).collect();
    assert_eq!(labels, ["a", "b", "c"]);
    assert_eq!(c.groups[0].members, ["1", "2"]);
    assert_eq!(c.groups[0].standby, ["3", "4"]);
    assert_eq!(c.groups[1].index, 1);
    // Standby-only group: serial derived from the first standby member.
    assert_eq!(c.groups[2].serial, "19");
    assert!(c.groups[2].members.is_empty());
}

#[test]
fn no_groups_no_providers_is_a_warning() {
    // A Luna Chrystoki.conf without p11ha's sections may be pointed at: it loads, and says that
    // nothing is served.
    let c = parse("Misc = { ToolsDir = /x; }\n").unwrap();
    assert!(c.groups.is_empty());
    assert!(c.providers.is_empty());
    assert_eq!(
        c.warnings,
        [
            "/etc/Chrystoki.conf: no HA group and no provider are configured (no \
          VirtualToken00Label, no Provider00Library): p11ha lists no slot"
        ]
    );
}

// ---------------------------------------------------------------- serials

#[test]
fn derived_serial_rule() {
    assert_eq!(derive_group_serial("1234840370164"), "11234840370164");
    // 15 characters: "1" + 15 = 16 fits.
    assert_eq!(derive_group_serial("123456789012345"), "1123456789012345");
    // SoftHSM serials are 16 hex characters: "1" + the last 15.
    assert_eq!(derive_group_serial("a1b2c3d4e5f60718"), "11b2c3d4e5f60718");
    assert_eq!(derive_group_serial("a1b2c3d4e5f60718").len(), 16);
    let c = ok("VirtualToken = { VirtualToken00Label = s; VirtualToken00Members = a1b2c3d4e5f60718, 9; }\n");
    assert_eq!(c.groups[0].serial, "11b2c3d4e5f60718");
}

#[test]
fn configured_serial_wins_and_is_validated() {
    let c = ok("VirtualToken = { VirtualToken00Label = s; VirtualToken00SN = ABCDEF0123456789; VirtualToken00Members = 77; }\n");
    assert_eq!(c.groups[0].serial, "ABCDEF0123456789");
    let e = err("VirtualToken = {\nVirtualToken00Label = s;\nVirtualToken00SN = 12345678901234567;\nVirtualToken00Members = 77; }\n");
    assert_err(&e, 3, "VirtualToken00SN", "1 to 16 printable ASCII");
    let e = err("VirtualToken = {\nVirtualToken00Label = s;\nVirtualToken00SN = 12 34;\nVirtualToken00Members = 77; }\n");
    assert_err(&e, 3, "VirtualToken00SN", "\"12 34\"");
    let e = err("VirtualToken = {\nVirtualToken00Label = s;\nVirtualToken00SN = ;\nVirtualToken00Members = 77; }\n");
    assert_err(&e, 3, "VirtualToken00SN", "printable");
}

// ---------------------------------------------------------------- group errors

#[test]
fn error_member_twice_in_group() {
    let e =
        err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = 1, 2, 1;\n}\n");
    assert_err(&e, 3, "VirtualToken00Members", "member 1 is listed twice");
}

#[test]
fn error_member_active_and_standby() {
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = 1, 2;\nVirtualToken00Standby = 2;\n}\n");
    assert_err(&e, 4, "VirtualToken00Standby", "as active and as standby");
}

#[test]
fn error_member_in_two_groups() {
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = 1;\nVirtualToken01Label = h;\nVirtualToken01Members = 1;\n}\n");
    assert_err(&e, 5, "VirtualToken01Members", "already in group \"g\"");
}

#[test]
fn error_duplicate_labels() {
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = 1;\nVirtualToken01Label = G;\nVirtualToken01Members = 2;\n}\n");
    assert_err(&e, 4, "VirtualToken01Label", "duplicate label");
}

#[test]
fn error_sn_or_members_without_label() {
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = 1;\nVirtualToken01SN = 99;\nVirtualToken01Members = 2;\n}\n");
    assert_err(&e, 4, "VirtualToken01SN", "group 01 has no label");
    let e = err("VirtualToken = {\nVirtualToken03Members = 2;\n}\n");
    assert_err(&e, 2, "VirtualToken03Members", "VirtualToken03Label");
}

#[test]
fn error_empty_label_and_no_members() {
    let e = err("VirtualToken = {\nVirtualToken00Label = ;\nVirtualToken00Members = 1;\n}\n");
    assert_err(&e, 2, "VirtualToken00Label", "empty label");
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\n}\n");
    assert_err(&e, 2, "VirtualToken00Label", "has no members");
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = ;\n}\n");
    assert_err(&e, 3, "VirtualToken00Members", "has no members");
    let e = err("VirtualToken = {\nVirtualToken00Label = 123456789012345678901234567890123;\nVirtualToken00Members = 1;\n}\n");
    assert_err(&e, 2, "VirtualToken00Label", "at most 32");
}

#[test]
fn error_bad_member_lists() {
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = 1,,2;\n}\n");
    assert_err(&e, 3, "VirtualToken00Members", "empty item");
    let e = err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Members = 1 2;\n}\n");
    assert_err(&e, 3, "VirtualToken00Members", "missing comma");
    // Found by tests/config_props.rs: a member "¡" gave the group serial "1¡", which is not the
    // printable ASCII of CK_TOKEN_INFO.serialNumber (and a longer one would be cut mid-character).
    let e =
        err("VirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00Standby = 1, \u{a1};\n}\n");
    assert_err(
        &e,
        3,
        "VirtualToken00Standby",
        "serial \"\u{a1}\" is not printable ASCII",
    );
}

#[test]
fn error_one_digit_group_number_and_bad_mode() {
    let e = err("VirtualToken = {\nVirtualToken0Label = g;\n}\n");
    assert_err(&e, 2, "VirtualToken0Label", "at least two digits");
    let e = err("VirtualToken = {\nVirtualTokenActiveRecovery = fast;\n}\n");
    assert_err(
        &e,
        2,
        "VirtualTokenActiveRecovery",
        "activeBasic or activeEnhanced",
    );
}

#[test]
fn error_duplicate_key() {
    let e = err(&format!(
        "{GROUP}HAConfiguration = {{\nlogLen = 5;\nLOGLEN = 6;\n}}\n"
    ));
    assert_err(&e, 7, "LOGLEN", "already set at line 6");
}

#[test]
fn error_hasynchronize() {
    let e = err(&format!("{GROUP}HASynchronize = {{\n  g2 = 1;\n}}\n"));
    assert_err(
        &e,
        6,
        "g2",
        "unknown HA group label \"g2\" in HASynchronize",
    );
    assert!(e.message.contains("\"g1\""), "{e}");
    let e = err(&format!("{GROUP}HASynchronize = {{ g1 = 2; }}\n"));
    assert_err(&e, 5, "g1", "expected 0 or 1");
    // Labels match case-insensitively when there is no exact match.
    let c = ok(&format!("{GROUP}HASynchronize = {{ G1 = 1; }}\n"));
    assert!(c.groups[0].synchronize);
}

#[test]
fn error_harecovery() {
    let e = err(&format!("{GROUP}HARecovery = {{ nope = 1; }}\n"));
    assert_err(&e, 5, "nope", "unknown HA group label");
    let e = err(&format!("{GROUP}HARecovery = {{ g1 = -1; }}\n"));
    assert_err(&e, 5, "g1", "non-negative integer");
    let c = ok(&format!("{GROUP}HARecovery = {{ g1 = 42; }}\n"));
    assert_eq!(c.groups[0].manual_recovery, Some(42));
}

// ---------------------------------------------------------------- providers

#[test]
fn error_missing_provider_library() {
    let e = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = /nonexistent/libx.so;\n}}\n"
    ))
    .unwrap_err();
    assert_err(&e, 6, "Provider00Library", "missing provider library");
}

#[test]
fn error_provider_env() {
    let f = fixture();
    let e = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = {};\n Provider00Env = A=1, B;\n}}\n",
        f.lib
    ))
    .unwrap_err();
    assert_err(&e, 7, "Provider00Env", "malformed item \"B\"");
    let e = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = {};\n Provider01Env = A=1;\n}}\n",
        f.lib
    ))
    .unwrap_err();
    assert_err(&e, 7, "Provider01Env", "without Provider01Library");
    let e = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = {};\n Provider00Env = =1;\n}}\n",
        f.lib
    ))
    .unwrap_err();
    assert_err(&e, 7, "Provider00Env", "not an environment variable name");
}

#[test]
fn provider_bounded_calls() {
    let f = fixture();
    let conf = |v: &str| {
        format!(
            "{GROUP}HAProviders = {{\n Provider00Library = {};\n Provider00BoundedCalls = {v};\n}}\n",
            f.lib
        )
    };
    let bounded = |v: &str| parse(&conf(v)).unwrap().providers[0].bounded_calls;
    assert!(ok("").providers[0].bounded_calls, "the default");
    assert!(bounded("1"));
    assert!(!bounded("0"));
    assert!(!bounded("no"));
    let e = parse(&conf("sometimes")).unwrap_err();
    assert_err(&e, 7, "Provider00BoundedCalls", "expected 1 (calls bounded");
    let e = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = {};\n Provider01BoundedCalls = 0;\n}}\n",
        f.lib
    ))
    .unwrap_err();
    assert_err(&e, 7, "Provider01BoundedCalls", "without Provider01Library");
    // p11-kit-client blocks for ever when its server stops: its calls keep the bound.
    let client = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
    let e = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = {client};\n Provider00BoundedCalls = 0;\n}}\n"
    ))
    .unwrap_err();
    assert_err(
        &e,
        7,
        "Provider00BoundedCalls",
        "refused for p11-kit-client",
    );
    let c = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider00Library = {client};\n Provider00BoundedCalls = 1;\n}}\n"
    ))
    .unwrap();
    assert!(c.providers[0].bounded_calls);
}

#[test]
fn error_no_provider_with_groups() {
    let e = parse(GROUP).unwrap_err();
    assert_err(&e, 2, "HAProviders", "no member providers configured");
}

#[test]
fn several_providers() {
    let f = fixture();
    let c = parse(&format!(
        "{GROUP}HAProviders = {{\n Provider01Library = {lib};\n Provider01Env = SOFTHSM2_CONF=/etc/b.conf;\n Provider00Library = {lib}; }}\n",
        lib = f.lib
    ))
    .unwrap();
    assert_eq!(c.providers.len(), 2);
    assert_eq!(c.providers[0].index, 0);
    assert!(c.providers[0].env.is_empty());
    assert_eq!(c.providers[1].index, 1);
    assert_eq!(
        c.providers[1].env,
        [("SOFTHSM2_CONF".to_string(), "/etc/b.conf".to_string())]
    );
}

// ---------------------------------------------------------------- HAConfiguration

#[test]
fn error_ha_configuration_values() {
    let cases: &[(&str, &str)] = &[
        (
            "logLen = abc",
            "expected a number of bytes (a positive integer), found \"abc\"",
        ),
        ("logLen = 0", "positive integer"),
        ("reconnAtt = -2", "-1 = unlimited"),
        ("reconnAtt = many", "found \"many\""),
        (
            "AutoReconnectInterval = 0",
            "expected a number of seconds from 1 to 3600",
        ),
        ("AutoReconnectInterval = 3601", "from 1 to 3600"),
        ("ReceiveTimeout = 99", "milliseconds from 100 to 600000"),
        ("ConnectTimeout = 600001", "from 100 to 600000"),
        ("HAOnly = 2", "expected 0/1"),
        ("haLogStatus = on", "enabled/disabled"),
        ("haLogToStdout = maybe", "found \"maybe\""),
        ("failover_on_deactivation = x", "expected 0/1"),
    ];
    for (line, needle) in cases {
        let e = err(&format!("{GROUP}HAConfiguration = {{\n  {line};\n}}\n"));
        let key = line.split(" =").next().unwrap();
        assert_err(&e, 6, key, needle);
    }
}

#[test]
fn error_lunasa_client_timeout() {
    let e = err("LunaSA Client = {\n ReceiveTimeout = fast;\n}\n");
    assert_err(&e, 2, "ReceiveTimeout", "milliseconds");
}

#[test]
fn log_status_default_follows_path() {
    let c = ok("HAConfiguration = { haLogPath = /tmp/h; }\n");
    assert!(c.log.enabled);
    let c = ok("HAConfiguration = { haLogPath = /tmp/h; haLogStatus = disabled; }\n");
    assert!(!c.log.enabled);
    let c = ok("HAConfiguration = { haLogPath = ; haLogStatus = enabled; }\n");
    assert_eq!(c.log.path, None);
    assert!(!c.log.enabled);
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("haLogPath is not set"),
        "{:?}",
        c.warnings
    );
}

// ---------------------------------------------------------------- warnings

#[test]
fn warnings_for_misspelled_keys() {
    let c = ok(&format!(
        "{GROUP}HAConfiguration = {{\n reconAtt = 5;\n haLogPth = /x;\n frobnicate = 1;\n}}\n\
         VirtualToken = {{\n VirtualToken01Lable = x;\n}}\n\
         HAProviders = {{ Provider00Libary = /x; }}\n"
    ));
    assert_eq!(
        c.warnings,
        [
            "/etc/Chrystoki.conf:11: VirtualToken01Lable: unknown key in VirtualToken (did you mean 'VirtualToken01Label'?)",
            "/etc/Chrystoki.conf:13: Provider00Libary: unknown key in HAProviders (did you mean 'Provider00Library'?)",
            "/etc/Chrystoki.conf:6: reconAtt: unknown key in HAConfiguration (did you mean 'reconnAtt'?)",
            "/etc/Chrystoki.conf:7: haLogPth: unknown key in HAConfiguration (did you mean 'haLogPath'?)",
            "/etc/Chrystoki.conf:8: frobnicate: unknown key in HAConfiguration (ignored)",
        ]
    );
    // The misspelled keys had no effect.
    assert_eq!(c.recovery.attempts, -1);
    assert_eq!(c.log.path, None);
}

// ---------------------------------------------------------------- files

#[test]
fn load_reads_a_file_and_reports_missing_ones() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Chrystoki.conf");
    std::fs::write(&path, with_provider(SEED_003, &f)).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.path, path);
    assert_eq!(c.groups[0].serial, "11234840370164");

    let missing = dir.path().join("nope.conf");
    let e = load(&missing).unwrap_err();
    assert_eq!((e.file.as_path(), e.line), (missing.as_path(), None));
    assert!(
        e.message.contains("cannot read the configuration file"),
        "{e}"
    );
}

/// The shipped examples parse (their provider libraries are the installed p11-kit-client and
/// SoftHSM modules), with their log and journal directories replaced by existing ones.
fn shipped(name: &str, text: &str, f: &Fixture) -> HaConfig {
    let mut text = text.to_string();
    for dir in ["/var/log/p11ha", "/var/lib/p11ha"] {
        assert!(text.contains(dir), "{name} lacks {dir}");
        text = text.replace(dir, &f.subdir(&dir[1..]));
    }
    match parse_str(&text, Path::new(name)) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn shipped_examples_parse() {
    let f = fixture();
    let conf = shipped(
        "Chrystoki.conf",
        include_str!("../../../config/Chrystoki.conf"),
        &f,
    );
    let ini = shipped(
        "crystoki.ini",
        include_str!("../../../config/crystoki.ini"),
        &f,
    );
    for c in [&conf, &ini] {
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.groups.len(), 1);
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.groups[0].label, "haGroup1");
    }
    // Both files say the same thing (apart from the file name).
    let log = f.dir.path().join("var/log/p11ha");
    assert_eq!(conf.log.path, Some(log));
    assert_eq!(conf.journal_dir, Some(f.dir.path().join("var/lib/p11ha")));
    assert_eq!(conf.recovery.attempts, -1);
    assert_eq!(conf.groups[0].standby, ["0a1b2c3d4e5f6071"]);
    let mut ini = ini;
    ini.path = conf.path.clone();
    assert_eq!(conf, ini);
}
