//! Issue 16's day-2 findings about the `p11ha` command, each checked on the command's exact
//! output and the exact resulting file (expected texts written by hand): help and version,
//! lunacm's habits (prefixes, `hagroup`, any case, "did you mean"), `-json` as one document,
//! providers added from nothing, a stable group serial, the PIN checked on addmember, and the
//! HA log left alone by the command.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// One group whose only member no provider shows (SoftHSM with a configuration that does not
/// exist has no token at all).
const LONELY: &str = "\
VirtualToken = {
   VirtualToken00Label = payments;
   VirtualToken00SN = 1700;
   VirtualToken00Members = 111;
}
HAProviders = {
   Provider00Library = /usr/lib/softhsm/libsofthsm2.so;
   Provider00Env = SOFTHSM2_CONF=/nonexistent/softhsm2.conf;
}
";

fn dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("p11ha-day2")
        .tempdir_in("/tmp")
        .unwrap()
}

fn p11ha_env(conf: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11ha"));
    cmd.args(args)
        .env("P11HA_CONF", conf)
        .env_remove("P11HA_PIN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn p11ha(conf: &Path, args: &[&str]) -> (i32, String, String) {
    p11ha_env(conf, args, &[])
}

fn ok(line: &str) -> String {
    format!("        {line}\n\nCommand Result : No Error\n")
}

fn written(d: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = d.path().join("Chrystoki.conf");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn help_version_and_lunacm_habits() {
    let d = dir();
    let conf = written(&d, LONELY);
    let version = format!("p11ha {}\n", env!("CARGO_PKG_VERSION"));
    for v in ["--version", "-version", "version"] {
        assert_eq!(
            p11ha(&conf, &[v]),
            (0, version.clone(), String::new()),
            "{v}"
        );
    }
    for h in ["--help", "-h", "help"] {
        let (code, out, _) = p11ha(&conf, &[h]);
        assert_eq!(code, 0, "{h}");
        assert!(
            out.starts_with("usage: p11ha [hagroup] <verb> [options] "),
            "{out}"
        );
        for verb in [
            "addprovider",
            "removeprovider",
            "listgroups",
            "halog",
            "recover",
        ] {
            assert!(
                out.contains(&format!("\n  {verb} ")),
                "{h} lists {verb}: {out}"
            );
        }
    }
    let (code, out, _) = p11ha(&conf, &["addmember", "-help"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(
            "usage: p11ha addmember -group <label> -serialnumber <serial> -password <pin>\n"
        ),
        "{out}"
    );
    assert!(out.contains("\nexamples:\n  p11ha addmember -group payments -serialnumber 7654321\n"));
    assert_eq!(
        p11ha(&conf, &["help", "retry"]).1,
        p11ha(&conf, &["retry", "-h"]).1
    );

    // Prefixes, `hagroup`, any case: the same edit as the full spelling.
    let (code, out, err) = p11ha(&conf, &["hagroup", "Retry", "-c", "3"]);
    assert_eq!(
        (code, out.as_str()),
        (0, ok("HA auto recovery attempts set to 3.").as_str()),
        "{err}"
    );
    let (code, out, err) = p11ha(&conf, &["INTERVAL", "-INT", "7"]);
    assert_eq!(
        (code, out.as_str()),
        (0, ok("HA auto recovery interval set to 7.").as_str()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        format!("{LONELY}HAConfiguration = {{\nreconnAtt = 3;\nAutoReconnectInterval = 7;\n}}\n"),
    );

    let (code, _, err) = p11ha(&conf, &["listgroup"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown command \"listgroup\"; did you mean listgroups?"),
        "{err}"
    );
    let (code, _, err) = p11ha(&conf, &["retry", "-cont", "3"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("retry: unknown option -cont; did you mean -count?"),
        "{err}"
    );
    let (code, _, err) = p11ha(&conf, &["retry", "-count", "1", "-c", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("retry: -count given twice"), "{err}");
}

#[test]
fn json_is_one_document_and_a_degraded_group_shows() {
    let d = dir();
    let conf = written(&d, LONELY);
    let doc = "{\"auto_recovery\":true,\"recovery_mode\":\"activeEnhanced\",\"max_retries\":-1,\
               \"interval_s\":60,\"ha_log\":\"disabled\",\"ha_only\":false,\"groups\":[{\"label\":\
               \"payments\",\"serial\":\"1700\",\"slot\":0,\"synchronize\":false,\"degraded\":true,\
               \"members_down\":1,\"members\":[{\"serial\":\"111\",\"standby\":false,\"alive\":false,\
               \"found\":false,\"last_error\":48,\"last_error_name\":\"CKR_DEVICE_ERROR\",\
               \"recovery_attempts\":0}]}]}\n";
    let (code, out, _) = p11ha(&conf, &["listgroups", "-json"]);
    assert_eq!((code, out.as_str()), (0, doc));
    // -check: the same document, exit 3.
    let (code, out, err) = p11ha(&conf, &["listgroups", "-j", "-ch"]);
    assert_eq!((code, out.as_str()), (3, doc));
    assert!(err.contains("listgroups: degraded: payments"), "{err}");
    // A JSON error is JSON too.
    let (code, out, _) = p11ha(&conf, &["listgroups", "-json", "-json"]);
    assert_eq!(
        (code, out.as_str()),
        (2, "{\"error\":{\"rv\":7,\"name\":\"CKR_ARGUMENTS_BAD\"}}\n")
    );

    let (code, out, _) = p11ha(&conf, &["listgroups"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\n       Group Status:  degraded (1 of 1 members down)\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "\n    111                  active   down    not found in any provider        0\n"
        ),
        "{out}"
    );
    // halog -show agrees with listgroups: no haLogPath, no log.
    let (_, out, _) = p11ha(&conf, &["halog", "-show"]);
    assert!(out.starts_with("         HA Log: disabled\n"), "{out}");
}

#[test]
fn providers_are_added_to_a_missing_file_and_removed() {
    let d = dir();
    let conf = d.path().join("Chrystoki.conf");
    let (code, out, err) = p11ha(
        &conf,
        &[
            "addprovider",
            "-library",
            SOFTHSM_LIB,
            "-env",
            "SOFTHSM2_CONF=/etc/a.conf",
            "-e",
            "X=1",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, ok(&format!("Provider00 added: {SOFTHSM_LIB}.")).as_str()),
        "{err}"
    );
    let (code, out, err) = p11ha(&conf, &["addprovider", "-l", P11KIT_CLIENT_LIB]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            ok(&format!("Provider01 added: {P11KIT_CLIENT_LIB}.")).as_str()
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        format!(
            "HAProviders = {{\nProvider00Library = {SOFTHSM_LIB};\nProvider00Env = \
             SOFTHSM2_CONF=/etc/a.conf, X=1;\nProvider01Library = {P11KIT_CLIENT_LIB};\n}}\n"
        )
    );
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o777, 0o644);
    let (code, out, _) = p11ha(&conf, &["removeprovider", "-library", SOFTHSM_LIB]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            ok(&format!("Provider00 removed: {SOFTHSM_LIB}.")).as_str()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        format!("HAProviders = {{\nProvider01Library = {P11KIT_CLIENT_LIB};\n}}\n")
    );
    let (code, _, err) = p11ha(&conf, &["addprovider", "-library", "libsofthsm2.so"]);
    assert_eq!(code, 2);
    assert!(err.contains("give an absolute path"), "{err}");
}

/// Changes member `i`'s user PIN to `new` on the token itself.
fn change_pin(cluster: &Cluster, i: usize, new: &str) {
    use cryptoki::types::AuthPin;
    let c = cluster.client(i);
    let s = c.session().unwrap();
    s.set_pin(&AuthPin::new(USER_PIN.into()), &AuthPin::new(new.into()))
        .unwrap();
}

#[test]
fn creategroup_and_addmember_check_the_token_and_its_pin() {
    let cluster = Cluster::started(3);
    let conf = cluster.write_config(&ConfigOpts {
        members: Some(vec![0]),
        group_serial: Some("5150".into()),
        ..Default::default()
    });
    let before = std::fs::read_to_string(&conf).unwrap();
    let (m0, m1, m2) = (
        &cluster.members[0].serial,
        &cluster.members[1].serial,
        &cluster.members[2].serial,
    );
    change_pin(&cluster, 2, "9999");
    let pin = [("P11HA_PIN", USER_PIN)];

    // A token with another PIN, and a wrong group PIN, are refused; the file stays.
    let (code, _, err) = p11ha_env(
        &conf,
        &["addmember", "-group", GROUP_LABEL, "-serialnumber", m2],
        &pin,
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "token {m2} refused the group's PIN (CKR_PIN_INCORRECT)"
        )),
        "{err}"
    );
    let (code, _, err) = p11ha(
        &conf,
        &[
            "addmember",
            "-g",
            GROUP_LABEL,
            "-se",
            m1,
            "-password",
            "0000",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "member {m0} of the group refused the PIN (CKR_PIN_INCORRECT)"
        )),
        "{err}"
    );
    // No PIN and no terminal: say how to give one.
    let (code, _, err) = p11ha(&conf, &["addmember", "-g", GROUP_LABEL, "-se", m1]);
    assert_eq!(code, 2);
    assert!(
        err.contains("give -password, set P11HA_PIN, or run on a terminal"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), before);

    // creategroup: a serial no provider has is refused; a good one gets its serial written.
    let (code, _, err) = p11ha_env(
        &conf,
        &["creategroup", "-label", "web", "-serialnumber", "424242"],
        &pin,
    );
    assert_eq!(code, 2);
    assert!(err.contains("token 424242 was not found"), "{err}");
    let (code, _, err) = p11ha_env(
        &conf,
        &["creategroup", "-label", "web", "-serialnumber", m2],
        &pin,
    );
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = p11ha_env(
        &conf,
        &[
            "creategroup",
            "-label",
            "web",
            "-serialnumber",
            m2,
            "-password",
            "9999",
        ],
        &[],
    );
    // Luna's rule: "1" and the first member's serial, at most 16 characters (its last ones).
    let serial = &format!("1{}", &m2[m2.len().saturating_sub(15)..]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            ok(&format!(
                "New group with label \"web\" created with group number {serial}."
            ))
            .as_str()
        ),
        "{err}"
    );
    let (code, out, err) = p11ha_env(
        &conf,
        &["addmember", "-group", GROUP_LABEL, "-serialnumber", m1],
        &pin,
    );
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            ok(&format!("{m1} added as member of group {GROUP_LABEL}.")).as_str()
        ),
        "{err}"
    );
    let after = std::fs::read_to_string(&conf).unwrap();
    let recovery = "   VirtualTokenActiveRecovery = activeEnhanced;\n";
    assert_eq!(
        after,
        before
            .replacen(
                &format!("VirtualToken00Members = {m0};"),
                &format!("VirtualToken00Members = {m0}, {m1};"),
                1
            )
            .replacen(
                recovery,
                &format!(
                    "{recovery}   VirtualToken01Label = web;\n   VirtualToken01SN = {serial};\n   \
                     VirtualToken01Members = {m2};\n"
                ),
                1
            ),
        "before:\n{before}"
    );
    // The group serial stays when its first member leaves.
    let (code, _, err) = p11ha(
        &conf,
        &["removemember", "-group", GROUP_LABEL, "-serialnumber", m0],
    );
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = p11ha(&conf, &["listgroups"]);
    assert!(
        out.contains(&format!(
            "     HA Group Label:  {GROUP_LABEL}\n    HA Group Number:  5150\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "     HA Group Label:  web\n    HA Group Number:  {serial}\n"
        )),
        "{out}"
    );
}

/// A system user for one test, deleted at the end.
struct TempUser(String);

impl TempUser {
    fn create() -> TempUser {
        let name = format!("p11ha{}", std::process::id());
        let st = Command::new("useradd")
            .args(["-r", "-M", "-s", "/usr/sbin/nologin", &name])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
        TempUser(name)
    }
    fn uid(&self) -> u32 {
        let out = Command::new("id").args(["-u", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

#[test]
fn the_command_run_as_root_leaves_the_ha_log_to_the_application_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the application as another user");
        return;
    }
    let user = TempUser::create();
    let d = dir();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = d.path().join("log");
    std::fs::create_dir(&log).unwrap();
    std::os::unix::fs::chown(&log, Some(user.uid()), None).unwrap();
    let conf = written(
        &d,
        &format!(
            "{LONELY}HAConfiguration = {{\n   haLogPath = {};\n   haLogStatus = enabled;\n}}\n",
            log.display()
        ),
    );
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();

    for args in [
        &["listgroups"][..],
        &["listgroups", "-json"],
        &["haonly", "-show"],
        &["retry", "-count", "2"],
    ] {
        let (code, out, err) = p11ha(&conf, args);
        assert!(code == 0, "{args:?}: {out}{err}");
        let left: Vec<_> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{args:?} run as root wrote {left:?} into the HA log directory"
        );
    }
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o777, 0o644);

    // The application, as its own user, then has its HA log.
    let mut app = Command::new("runuser");
    app.args(["-u", &user.0, "--", "pkcs11-tool", "--module"])
        .arg(p11ha_lib())
        .arg("-L")
        .env("P11HA_CONF", &conf);
    let run = run_cmd(app, std::time::Duration::from_secs(30));
    assert!(run.success(), "{}", run.describe());
    let file = log.join("haErrorLog.txt");
    let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(meta.uid(), user.uid());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("HA group: 1700 management thread started"),
        "{text}"
    );
}
