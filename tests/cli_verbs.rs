//! The lunacm-style verbs of `p11ha`: each runs the binary on a copy of a commented Luna-style
//! file and checks its output and the resulting file byte for byte (expected files written by
//! hand). Bad requests leave the file untouched.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const BASE: &str = "\
Chrystoki2 = {
   LibUNIX64 = /usr/safenet/lunaclient/lib/libCryptoki2_64.so;
}
VirtualToken = {
   VirtualToken00Label = payments; // card payments
   VirtualToken00SN = 1700;
   VirtualToken00Members = 111, 222; // two HSMs
   VirtualToken00Standby = 333;
   VirtualTokenActiveRecovery = activeEnhanced;
}
HASynchronize = {
   payments = 1;
}
HAConfiguration = {
   HAOnly = 1; // only virtual slots
   reconnAtt = 10;
   AutoReconnectInterval = 60;
}
HAProviders = {
   Provider00Library = /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so;
}
";

fn copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-cli")
        .tempdir_in("/tmp")
        .unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, BASE).unwrap();
    (dir, p)
}

/// Runs `p11ha args...` on `conf`; returns (exit code, stdout, stderr).
fn p11ha(conf: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_p11ha"))
        .args(args)
        .env("P11HA_CONF", conf)
        .env("P11HA_PIN", USER_PIN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(line: &str) -> String {
    format!("        {line}\n\nCommand Result : No Error\n")
}

/// Runs a verb that must succeed; checks its one output line and the whole resulting file.
fn check(args: &[&str], said: &str, expected_file: &str) {
    let (_d, conf) = copy("Chrystoki.conf");
    let (code, out, err) = p11ha(&conf, args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    assert_eq!(out, ok(said), "{args:?}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        expected_file,
        "{args:?}"
    );
}

/// Runs a verb that must fail; the file stays as it was.
fn refused(args: &[&str], why: &str) {
    let (_d, conf) = copy("Chrystoki.conf");
    let (code, out, err) = p11ha(&conf, args);
    assert_ne!(code, 0, "{args:?} was accepted: {out}");
    assert!(err.contains(why), "{args:?}: expected {why:?} in {err}");
    assert!(out.contains("Command Result : 0x"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        BASE,
        "{args:?} changed the file"
    );
}

/// creategroup's success (the token checked, the group serial written) is in cli_day2.rs,
/// with real tokens.
#[test]
fn creategroup_refusals_leave_the_file() {
    refused(
        &["creategroup", "-label", "web", "-serialnumber", "444"],
        "token 444 was not found",
    );
    refused(
        &["creategroup", "-label", "payments", "-serialnumber", "444"],
        "exists already",
    );
    refused(
        &["creategroup", "-label", "web", "-serialnumber", "222"],
        "member of group \"payments\" already",
    );
    refused(
        &["creategroup", "-label", "web"],
        "-serialnumber is required",
    );
}

#[test]
fn deletegroup_removes_its_keys_and_sections_entries() {
    let expected = BASE
        .replace("   VirtualToken00Label = payments; // card payments\n", "")
        .replace("   VirtualToken00SN = 1700;\n", "")
        .replace("   VirtualToken00Members = 111, 222; // two HSMs\n", "")
        .replace("   VirtualToken00Standby = 333;\n", "")
        .replace("   payments = 1;\n", "");
    check(
        &["deletegroup", "-label", "payments"],
        "The group payments has been deleted.",
        &expected,
    );
    refused(
        &["deletegroup", "-label", "nosuch"],
        "no HA group labelled \"nosuch\"",
    );
}

#[test]
fn member_lists_are_edited_in_place() {
    let expected = BASE.replace(
        "Members = 111, 222; // two HSMs",
        "Members = 111; // two HSMs",
    );
    check(
        &["removemember", "-group", "payments", "-serialnumber", "222"],
        "member 222 removed from group payments.",
        &expected,
    );
    let expected = BASE.replace("   VirtualToken00Standby = 333;\n", "");
    check(
        &[
            "removestandby",
            "-group",
            "payments",
            "-serialnumber",
            "333",
        ],
        "standby member 333 removed from group payments.",
        &expected,
    );
    refused(
        &["removemember", "-group", "payments", "-serialnumber", "999"],
        "999 is not a member of group payments",
    );
    refused(
        &["removemember", "-group", "nosuch", "-serialnumber", "111"],
        "no HA group labelled",
    );
    // A token that no provider shows cannot join.
    refused(
        &["addmember", "-group", "payments", "-serialnumber", "999"],
        "was not found",
    );
    refused(
        &["addstandby", "-group", "payments", "-serialnumber", "111"],
        "member of group \"payments\" already",
    );
}

#[test]
fn settings_verbs_change_one_value_each() {
    check(
        &["retry", "-count", "-1"],
        "HA auto recovery attempts set to -1.",
        &BASE.replace("reconnAtt = 10;", "reconnAtt = -1;"),
    );
    check(
        &["interval", "-interval", "5"],
        "HA auto recovery interval set to 5.",
        &BASE.replace("AutoReconnectInterval = 60;", "AutoReconnectInterval = 5;"),
    );
    check(
        &["recoverymode", "-mode", "activebasic"],
        "HA recovery mode set to activeBasic.",
        &BASE.replace(
            "VirtualTokenActiveRecovery = activeEnhanced;",
            "VirtualTokenActiveRecovery = activeBasic;",
        ),
    );
    check(
        &["haonly", "-disable"],
        "HA Only mode disabled.",
        &BASE.replace("HAOnly = 1; // only", "HAOnly = 0; // only"),
    );
    check(&["haonly", "-show"], "HA Only mode is enabled.", BASE);
    refused(&["retry", "-count", "-2"], "out of range");
    refused(&["interval", "-interval", "0"], "out of range");
    refused(
        &["interval", "-interval", "soon"],
        "expected a whole number",
    );
    refused(
        &["recoverymode", "-mode", "lazy"],
        "expected activeBasic or activeEnhanced",
    );
    refused(&["haonly", "-enable", "-disable"], "give one of");
}

#[test]
fn a_read_only_file_is_refused_and_untouched() {
    let (d, conf) = copy("Chrystoki.conf");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let (code, _, err) = p11ha(&conf, &["retry", "-count", "3"]);
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // root may write anyway; then the edit must be exactly the requested one.
    let now = std::fs::read_to_string(&conf).unwrap();
    if code == 0 {
        assert_eq!(now, BASE.replace("reconnAtt = 10;", "reconnAtt = 3;"));
    } else {
        assert!(!err.is_empty());
        assert_eq!(now, BASE);
    }
}

#[test]
fn addmember_and_listgroups_with_real_tokens() {
    let cluster = Cluster::started(3);
    let conf = cluster.write_config(&ConfigOpts {
        members: Some(vec![0, 1]),
        ..Default::default()
    });
    let before = std::fs::read_to_string(&conf).unwrap();
    let (m0, m1, m2) = (
        &cluster.members[0].serial,
        &cluster.members[1].serial,
        &cluster.members[2].serial,
    );

    let (code, out, err) = p11ha(
        &conf,
        &["addmember", "-group", GROUP_LABEL, "-serialnumber", m2],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        ok(&format!("{m2} added as member of group {GROUP_LABEL}."))
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        before.replace(
            &format!("Members = {m0}, {m1};"),
            &format!("Members = {m0}, {m1}, {m2};")
        )
    );

    // An application signs through the group the whole time (C client, default SIGPIPE).
    let exe = cluster.build_c_client();
    let mut app = c_client_cmd(
        &exe,
        &p11ha_lib(),
        GROUP_LABEL,
        &["-n", "2", "-d", "6", "-i", "5", "-q"],
    );
    app.env("P11HA_CONF", &conf);
    let app = run_cmd_bg(app, std::time::Duration::from_secs(30));

    // Live state: all alive, then member 1 down.
    let (code, out, err) = p11ha(&conf, &["listgroups", "-json"]);
    assert_eq!(code, 0, "{out}{err}");
    for m in [m0, m1, m2] {
        assert!(
            out.contains(&format!(
                "{{\"serial\":\"{m}\",\"standby\":false,\"alive\":true"
            )),
            "{out}"
        );
    }
    cluster.kill(1);
    let (code, out, _) = p11ha(&conf, &["listgroups"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.contains(m1.as_str()) && l.contains("active"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("down"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(m0.as_str()) && l.contains("alive")),
        "{out}"
    );
    assert!(out.contains("     HA Group Label:  hagroup"), "{out}");
    cluster.restart(1);
    // Each listgroups is a fresh C_Initialize, and SoftHSM's C_Initialize misses a token whose
    // files another process is rewriting (the application's re-login on the returned member:
    // measured 3 of 200 with pkcs11-tool). So the member must show alive soon, not at once.
    let mut out = String::new();
    let alive = wait_until(std::time::Duration::from_secs(15), || {
        out = p11ha(&conf, &["listgroups", "-json"]).1;
        out.contains(&format!(
            "{{\"serial\":\"{m1}\",\"standby\":false,\"alive\":true"
        ))
    });
    assert!(alive, "{out}");
    let app = app.join().unwrap();
    let (ok, failed) = c_client_counts(&app.stdout).unwrap_or((0, u64::MAX));
    assert!(
        app.success() && failed == 0 && ok > 0,
        "the application through it all: {}",
        app.describe()
    );
}
