//! Bad configurations make C_Initialize fail with CKR_GENERAL_ERROR and one message naming
//! file, line and key, on stderr and in the HA log. Checked through a real client (pkcs11-tool)
//! so the library runs in a process of its own.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const GOOD_PROVIDER: &str = "HAProviders = {\n  Provider00Library = /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so;\n}\n";

/// Runs `pkcs11-tool -L` on libp11ha.so with `conf`; returns (success, stderr).
fn list_with(conf: &Path) -> (bool, String) {
    let mut cmd = Command::new("pkcs11-tool");
    cmd.arg("--module")
        .arg(p11ha_lib())
        .arg("-L")
        .env("P11HA_CONF", conf);
    let run = run_cmd(cmd, Duration::from_secs(30));
    (run.success(), format!("{}{}", run.stderr, run.stdout))
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Asserts C_Initialize failed with CKR_GENERAL_ERROR and the message names `file:line: key`.
fn assert_rejected(conf: &Path, line: usize, key: &str, what: &str) -> String {
    let (ok, out) = list_with(conf);
    assert!(!ok, "{what}: accepted\n{out}");
    assert!(
        out.contains("CKR_GENERAL_ERROR") || out.contains("0x5"),
        "{what}: not CKR_GENERAL_ERROR\n{out}"
    );
    let place = format!(
        "p11ha: configuration error: {}:{line}: {key}:",
        conf.display()
    );
    assert!(out.contains(&place), "{what}: expected '{place}' in\n{out}");
    out
}

#[test]
fn each_bad_configuration_is_named_by_file_line_and_key() {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-cfg")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();

    let f = write(d, "dup.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111, 222, 111;\n}}\n{GOOD_PROVIDER}"
    ));
    assert_rejected(&f, 3, "VirtualToken00Members", "member listed twice");

    let f = write(d, "sync.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\nHASynchronize = {{\n  nosuchgroup = 1;\n}}\n{GOOD_PROVIDER}"
    ));
    assert_rejected(&f, 6, "nosuchgroup", "unknown group in HASynchronize");

    let f = write(d, "lib.conf",
        "VirtualToken = {\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}\nHAProviders = {\n  Provider00Library = /nonexistent/libnothing.so;\n}\n");
    assert_rejected(&f, 6, "Provider00Library", "missing provider library");

    // A bad logLen with a usable haLogPath: the error reaches the HA log too.
    let logdir = d.join("log");
    std::fs::create_dir(&logdir).unwrap();
    let f = write(d, "loglen.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\nHAConfiguration = {{\n  haLogPath = {};\n  logLen = lots;\n}}\n{GOOD_PROVIDER}",
        logdir.display()
    ));
    assert_rejected(&f, 7, "logLen", "non-numeric logLen");
    let log = std::fs::read_to_string(logdir.join("haErrorLog.txt")).unwrap_or_default();
    assert!(
        log.contains("configuration error") && log.contains("logLen"),
        "HA log: {log}"
    );
}

#[test]
fn a_syntax_error_names_its_line() {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-cfg")
        .tempdir_in("/tmp")
        .unwrap();
    let f = write(
        dir.path(),
        "syntax.conf",
        "VirtualToken = {\n  VirtualToken00Label = g;\n  VirtualToken00Members 111;\n}\n",
    );
    let (ok, out) = list_with(&f);
    assert!(!ok, "accepted:\n{out}");
    let place = format!("p11ha: configuration error: {}:3", f.display());
    assert!(out.contains(&place), "expected '{place}' in\n{out}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (ok, out) = list_with(Path::new("/nonexistent/Chrystoki.conf"));
    assert!(!ok);
    assert!(
        out.contains("p11ha: configuration error: /nonexistent/Chrystoki.conf: cannot read"),
        "{out}"
    );
}

#[test]
fn a_misspelled_key_is_a_warning_not_an_error() {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-cfg")
        .tempdir_in("/tmp")
        .unwrap();
    let f = write(dir.path(), "typo.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\nHAConfiguration = {{\n  reconAtt = 3;\n}}\n{GOOD_PROVIDER}"
    ));
    let (ok, out) = list_with(&f);
    assert!(ok, "a warning must not fail C_Initialize:\n{out}");
    assert!(
        out.contains("p11ha: warning:") && out.contains("reconAtt") && out.contains("reconnAtt"),
        "{out}"
    );
}
