//! `p11ha halog` on a copy of a commented Chrystoki.conf and on a crystoki.ini: the seed outputs, and
//! the file unchanged byte for byte except the edited values.

use std::path::Path;
use std::process::{Command, Output};

const LUNA: &str = "\
Chrystoki2 = {
   LibUNIX64 = /usr/safenet/lunaclient/lib/libCryptoki2_64.so;
}
VirtualToken = {
VirtualToken00Label = haGroup1; // The label of the HA group.
VirtualToken00SN = 11234840370164; // The pseudo serial number of the HA group.
VirtualToken00Members = 1234840370164, 1234924189183; // The serial number of the members.
}
HASynchronize = { haGroup1 = 1; }
HAConfiguration = {
HAOnly = 1; // Enable listing HA groups only via PKCS#11 library.
haLogPath = /tmp/halog; // Base path of the HA log file; i.e., \u{201c}/tmp/halog/haErrorLog.txt\u{201d}.
haLogStatus = enabled; // Enable HA log.
logLen = 100000000; // Maximum size of HA log file in bytes.
failover_on_deactivation = 1; // if a partition becomes deactivated then the client will immediately
                              // failover and resume its operation on the other HA partitions.
reconnAtt = 120; // Number of recovery attempts.
}
UnknownSection = { something = x;   other=y; } // trailing
";

fn run(conf: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p11ha"))
        .args(args)
        .env("P11HA_CONF", conf)
        .env_remove("ChrystokiConfigurationPath")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn luna_file_edits_only_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("Chrystoki.conf");
    std::fs::write(&conf, LUNA).unwrap();
    let logdir = dir.path().join("halog");
    std::fs::create_dir(&logdir).unwrap();
    let logdir = logdir.to_str().unwrap();

    let o = run(&conf, &["halog", "-path", logdir]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o),
        format!("        HA Log path successfully set to {logdir}.\n\nCommand Result : No Error\n")
    );
    let o = run(&conf, &["halog", "-maxlength", "500000"]);
    assert_eq!(
        stdout(&o),
        "        HA Log maximum file size was successfully set to 500000.\n\nCommand Result : No Error\n"
    );
    let o = run(&conf, &["halog", "-disable"]);
    assert_eq!(
        stdout(&o),
        "        HA Log was successfully disabled.\n\nCommand Result : No Error\n"
    );
    let expected = LUNA
        .replace("haLogPath = /tmp/halog;", &format!("haLogPath = {logdir};"))
        .replace("logLen = 100000000;", "logLen = 500000;")
        .replace("haLogStatus = enabled;", "haLogStatus = disabled;");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), expected);

    let o = run(&conf, &["halog", "-show"]);
    assert_eq!(
        stdout(&o),
        format!(
            "         HA Log: disabled\n       Log File: {logdir}/haErrorLog.txt\nMax File Length: 500000 bytes\n\nCommand Result : No Error\n"
        )
    );
    let o = run(&conf, &["halog", "-enable"]);
    assert_eq!(
        stdout(&o),
        "        HA Log was successfully enabled.\n\nCommand Result : No Error\n"
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        expected.replace("haLogStatus = disabled;", "haLogStatus = enabled;")
    );
}

#[test]
fn missing_directory_refused_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("Chrystoki.conf");
    std::fs::write(&conf, LUNA).unwrap();
    let missing = dir.path().join("nope");
    let o = run(&conf, &["halog", "-path", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stdout(&o),
        "\nCommand Result : 0x00000007 (CKR_ARGUMENTS_BAD)\n"
    );
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), LUNA);

    // Bad size, unknown option, a file path instead of a directory: refused, file unchanged.
    for args in [
        &["halog", "-maxlength", "12x"][..],
        &["halog", "-maxlength", "0"],
        &["halog", "-bogus"],
        &["halog"],
        &["halog", "-path", conf.to_str().unwrap()],
        &["halog", "-enable", "-disable"],
    ] {
        let o = run(&conf, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            stdout(&o).contains("Command Result : 0x00000007"),
            "{args:?}"
        );
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), LUNA, "{args:?}");
    }
    // A configuration file that does not exist: non-zero, nothing created.
    let o = run(&dir.path().join("none.conf"), &["halog", "-show"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!dir.path().join("none.conf").exists());
}

#[test]
fn crystoki_ini_crlf_and_backslashes() {
    let ini = "[Chrystoki2]\r\nLibNT=C:\\Program Files\\SafeNet\\LunaClient\\cryptoki.dll\r\n\r\n[HAConfiguration]\r\n; comment\r\nHAOnly=1\r\nhaLogPath=C:\\halog\r\n\r\n[Misc]\r\nX=1\r\n";
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("crystoki.ini");
    std::fs::write(&conf, ini).unwrap();
    let o = run(&conf, &["halog", "-show"]);
    assert_eq!(
        stdout(&o),
        "         HA Log: enabled\n       Log File: C:\\halog\\haErrorLog.txt\nMax File Length: 100000000 bytes\n\nCommand Result : No Error\n"
    );
    let o = run(&conf, &["halog", "-maxlength", "500000", "-disable"]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "[Chrystoki2]\r\nLibNT=C:\\Program Files\\SafeNet\\LunaClient\\cryptoki.dll\r\n\r\n[HAConfiguration]\r\n; comment\r\nHAOnly=1\r\nhaLogPath=C:\\halog\r\nlogLen=500000\r\nhaLogStatus=disabled\r\n\r\n[Misc]\r\nX=1\r\n"
    );
    let logdir = dir.path().to_str().unwrap();
    let o = run(&conf, &["halog", "-path", logdir]);
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&conf)
        .unwrap()
        .contains(&format!("\r\nhaLogPath={logdir}\r\n")));
}

#[test]
fn section_created_when_absent() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("Chrystoki.conf");
    let text = "Misc = {\n  A = 1; // keep\n}";
    std::fs::write(&conf, text).unwrap();
    let o = run(&conf, &["halog", "-maxlength", "4096"]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "Misc = {\n  A = 1; // keep\n}\nHAConfiguration = {\nlogLen = 4096;\n}\n"
    );
}
