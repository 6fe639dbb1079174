//! Issue 16's day-2 findings about the `p11ha` command, each checked on the command's exact
//! output and the exact resulting file (expected texts written by hand): help and version,
//! lunacm's habits (prefixes, `hagroup`, any case, "did you mean"), `-json` as one document,
//! providers added from nothing, a stable group serial, the PIN checked on addmember, and the
//! HA log left alone by the command; removals tracked by a running application (CA_GetHAState,
//! HA log), providers that would share one module instance, seed 003 fidelity of the recovery
//! lines, a quiet stderr, and the PIN asked on a terminal without echo.

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
               \"found\":false,\"unused_provider\":null,\"last_error\":48,\"last_error_name\":\"CKR_DEVICE_ERROR\",\
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

/// Tests that load `libp11ha.so` into this process take turns: one library instance per process.
static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
fn in_process() -> std::sync::MutexGuard<'static, ()> {
    IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The member serials `CA_GetHAState` lists for slot 0 of the library loaded in this process
/// (Luna's layout: groupSerial[20], 32 x { memberSerial[20], CK_RV }, listSize).
fn ha_state_members() -> Vec<String> {
    // SAFETY: the library is loaded already (the caller's client); CA_GetHAState takes a slot
    // and a writable CK_HA_STATUS.
    unsafe {
        let lib = libloading::Library::new(p11ha_lib()).unwrap();
        let get: libloading::Symbol<unsafe extern "C" fn(libc::c_ulong, *mut u8) -> libc::c_ulong> =
            lib.get(b"CA_GetHAState\0").unwrap();
        let mut st = [0u8; 24 + 32 * 32 + 8];
        assert_eq!(get(0, st.as_mut_ptr()), 0, "CA_GetHAState");
        let n = u64::from_ne_bytes(st[24 + 32 * 32..].try_into().unwrap());
        (0..n as usize)
            .map(|i| {
                let raw = &st[24 + 32 * i..24 + 32 * i + 20];
                let end = raw.iter().position(|b| *b == 0).unwrap_or(20);
                String::from_utf8_lossy(&raw[..end]).into_owned()
            })
            .collect()
    }
}

/// The HA log lines after their prefix (`<date> : [<pid>] `), of this process only.
fn ha_log_texts(cluster: &Cluster) -> Vec<String> {
    let me = format!(" : [{}] ", std::process::id());
    cluster
        .ha_log_lines()
        .iter()
        .filter_map(|l| l.split_once(&me).map(|(_, t)| t.to_string()))
        .collect()
}

fn wait_listed(want: &[&String]) {
    let mut seen = Vec::new();
    let ok = wait_until(std::time::Duration::from_secs(10), || {
        seen = ha_state_members();
        seen.iter().collect::<Vec<_>>() == want
    });
    assert!(ok, "CA_GetHAState lists {seen:?}, expected {want:?}");
}

/// Issue 16 item 9: a running application sees removemember/removestandby and the member's
/// return, in CA_GetHAState (listed once) and in its HA log.
#[test]
fn removal_is_tracked_by_ca_get_ha_state_and_the_ha_log() {
    let _one = in_process();
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts {
        group_serial: Some("4711".into()),
        ..Default::default()
    });
    let (m0, m1) = (&cluster.members[0].serial, &cluster.members[1].serial);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let _s = ha.session().unwrap();
    wait_listed(&[m0, m1]);
    let pin = [("P11HA_PIN", USER_PIN)];
    let edit = |verb: &str, said: String| {
        let (code, out, err) = p11ha_env(
            &conf,
            &[verb, "-group", GROUP_LABEL, "-serialnumber", m1],
            &pin,
        );
        assert_eq!(
            (code, out.as_str()),
            (0, ok(&said).as_str()),
            "{verb}: {err}"
        );
    };
    let removed = format!("HA group: 4711 removed member: {m1} (no longer in the configuration)");
    let added = format!("HA group: 4711 detected new member member: {m1}");
    // The HA log is written by its own thread: wait for the line, then count exactly.
    let count = |text: &str, n: usize| {
        let count = || {
            ha_log_texts(&cluster)
                .iter()
                .filter(|l| l.as_str() == text)
                .count()
        };
        wait_until(std::time::Duration::from_secs(5), || count() >= n);
        assert_eq!(count(), n, "{text:?}: {:#?}", cluster.ha_log_lines());
    };

    edit(
        "removemember",
        format!("member {m1} removed from group {GROUP_LABEL}."),
    );
    wait_listed(&[m0]);
    count(&removed, 1);

    edit(
        "addstandby",
        format!("{m1} added as standby member of group {GROUP_LABEL}."),
    );
    wait_listed(&[m0, m1]);
    count(&added, 1);
    // Two more management rounds: still listed once.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(ha_state_members(), [m0.clone(), m1.clone()]);

    edit(
        "removestandby",
        format!("standby member {m1} removed from group {GROUP_LABEL}."),
    );
    wait_listed(&[m0]);
    count(&removed, 2);

    edit(
        "addmember",
        format!("{m1} added as member of group {GROUP_LABEL}."),
    );
    wait_listed(&[m0, m1]);
    count(&added, 2);
}

/// Issue 16 item 10: SoftHSM keeps one instance per process, so two providers on its one file
/// cannot both serve. addprovider refuses the second and says what to do; a file written by
/// hand gets the same advice on the application's stderr; followed, both members are live.
#[test]
fn two_providers_on_one_softhsm_file_are_refused_with_what_to_do() {
    let cluster = Cluster::new(2);
    let (m0, m1) = (&cluster.members[0], &cluster.members[1]);
    let conf = cluster.dir().join("Chrystoki.conf");
    let group = format!(
        "VirtualToken = {{\n   VirtualToken00Label = g;\n   VirtualToken00SN = 4242;\n   \
         VirtualToken00Members = {}, {};\n}}\n",
        m0.serial, m1.serial
    );
    let provider = |n: u32, lib: &Path, m: &Member| {
        format!(
            "   Provider{n:02}Library = {};\n   Provider{n:02}Env = SOFTHSM2_CONF={};\n",
            lib.display(),
            m.conf.display()
        )
    };
    let first = format!(
        "{group}HAProviders = {{\n{}}}\n",
        provider(0, Path::new(SOFTHSM_LIB), m0)
    );
    std::fs::write(&conf, &first).unwrap();
    let env1 = format!("SOFTHSM2_CONF={}", m1.conf.display());

    let (code, out, err) = p11ha(
        &conf,
        &["addprovider", "-library", SOFTHSM_LIB, "-env", &env1],
    );
    assert_eq!(code, 2, "{out}");
    assert_eq!(
        err,
        format!(
            "p11ha: addprovider: {SOFTHSM_LIB} handed Provider01 the module instance of \
             Provider00 (this module keeps one instance per process), so this provider's -env \
             would not take effect and its tokens would not be seen. Give this provider a \
             private copy of the library, e.g. cp {SOFTHSM_LIB} \
             /usr/local/lib/p11ha/provider01.so, and add that path instead\n"
        )
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), first);

    // Written by hand: the application starts, one member is down, and stderr says why.
    let log = cluster.dir().join("log");
    std::fs::create_dir(&log).unwrap();
    std::fs::write(
        &conf,
        format!(
            "{group}HAProviders = {{\n{}{}}}\nHAConfiguration = {{\n   haLogPath = {};\n   \
             haLogStatus = enabled;\n}}\n",
            provider(0, Path::new(SOFTHSM_LIB), m0),
            provider(1, Path::new(SOFTHSM_LIB), m1),
            log.display()
        ),
    )
    .unwrap();
    let list = || {
        let mut app = Command::new("pkcs11-tool");
        app.arg("--module")
            .arg(p11ha_lib())
            .arg("-L")
            .env("P11HA_CONF", &conf);
        run_cmd(app, std::time::Duration::from_secs(30))
    };
    let run = list();
    assert!(run.success(), "{}", run.describe());
    assert_eq!(
        run.stderr,
        format!(
            "p11ha: Provider01 is not used: {SOFTHSM_LIB} handed it the same module instance as \
             Provider00 (this module keeps one instance per process, so only one of the two \
             ProviderNNEnv settings took effect and the other provider's tokens are not seen). \
             Give each such provider a private copy of the library, e.g. cp {SOFTHSM_LIB} \
             /usr/local/lib/p11ha/provider01.so and set Provider01Library to the copy. \
             p11-kit-client.so needs no copy: it makes a new instance for every provider.\n"
        )
    );
    // The member behind the unused provider is not "down, a recovery will bring it back":
    // the HA log and listgroups say which provider hides it and what to do.
    let note = format!(
        "Provider01 is not used: it duplicates Provider00's library file {SOFTHSM_LIB} (that \
         module keeps one instance per process), so the tokens only Provider01 would show are \
         not seen. Give Provider01 a private copy of the library (cp {SOFTHSM_LIB} \
         /usr/local/lib/p11ha/provider01.so) and set Provider01Library to the copy"
    );
    let logged = std::fs::read_to_string(log.join("haErrorLog.txt")).unwrap();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains(&*m1.serial))
        .map(|l| l.split_once("] HA group: 4242 ").map_or(l, |(_, t)| t))
        .collect();
    assert_eq!(
        lines,
        [format!(
            "configuration error: member: {} was not found in the providers in use. {note}",
            m1.serial
        )],
        "{logged}"
    );
    let (_, out, _) = p11ha(&conf, &["listgroups", "-json"]);
    assert!(out.contains("\"members_down\":1,"), "{out}");
    assert!(
        out.contains(&format!(
            "{{\"serial\":\"{}\",\"standby\":false,\"alive\":false,\"found\":false,\
             \"unused_provider\":{{\"provider\":1,\"duplicates\":0,\"note\":\"{note}\"}},",
            m1.serial
        )),
        "{out}"
    );
    let (_, out, _) = p11ha(&conf, &["listgroups"]);
    assert!(
        out.contains(&format!(
            "\n    {:<20} active   down    only on Provider01, not used     0\n\n    {note}.\n",
            m1.serial
        )),
        "{out}"
    );

    // The advice followed: a private copy for the second provider, and both members serve.
    std::fs::write(&conf, &first).unwrap();
    let copy = cluster.softhsm_copy(1);
    let copy_s = copy.to_str().unwrap();
    let (code, out, err) = p11ha(&conf, &["addprovider", "-library", copy_s, "-env", &env1]);
    assert_eq!(
        (code, out.as_str()),
        (0, ok(&format!("Provider01 added: {copy_s}.")).as_str()),
        "{err}"
    );
    let (code, out, err) = p11ha(&conf, &["listgroups", "-json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"degraded\":false,\"members_down\":0,"),
        "{out}"
    );
    for m in [m0, m1] {
        assert!(
            out.contains(&format!(
                "{{\"serial\":\"{}\",\"standby\":false,\"alive\":true,",
                m.serial
            )),
            "{out}"
        );
    }
    let run = list();
    assert!(run.success(), "{}", run.describe());
    assert_eq!(run.stderr, "", "{}", run.describe());
}

/// Issue 16 item 11: `halog -show` and `listgroups` say the same about the HA log, and a
/// refused file's HA log line names no empty group.
#[test]
fn halog_show_and_listgroups_agree_and_config_errors_read_well() {
    let d = dir();
    let log = d.path().join("log");
    std::fs::create_dir(&log).unwrap();
    let file = log.join("haErrorLog.txt");
    for (status, logging, show) in [
        (
            "enabled",
            format!("enabled ({})", file.display()),
            "enabled",
        ),
        ("disabled", "disabled".to_string(), "disabled"),
    ] {
        let conf = written(
            &d,
            &format!(
                "{LONELY}HAConfiguration = {{\n   haLogPath = {};\n   haLogStatus = {status};\n}}\n",
                log.display()
            ),
        );
        let (_, out, _) = p11ha(&conf, &["listgroups"]);
        assert!(
            out.contains(&format!("\n         HA logging:  {logging}\n")),
            "{status}: {out}"
        );
        let (code, out, _) = p11ha(&conf, &["halog", "-show"]);
        assert_eq!(
            (code, out),
            (
                0,
                format!(
                    "         HA Log: {show}\n       Log File: {}\nMax File Length: 100000000 \
                     bytes\n\nCommand Result : No Error\n",
                    file.display()
                )
            ),
            "{status}"
        );
    }

    let text = format!(
        "{LONELY}HAConfiguration = {{\n   haLogPath = {};\n   reconnAtt = abc;\n}}\n",
        log.display()
    );
    let conf = written(&d, &text);
    let mut app = Command::new("pkcs11-tool");
    app.arg("--module")
        .arg(p11ha_lib())
        .arg("-L")
        .env("P11HA_CONF", &conf);
    let run = run_cmd(app, std::time::Duration::from_secs(30));
    assert!(!run.success(), "{}", run.describe());
    let line = text.lines().position(|l| l.contains("abc")).unwrap() + 1;
    let why = format!(
        "configuration error: {}:{line}: reconnAtt: expected a number of recovery attempts (-1 = \
         unlimited, 0 = no auto-recovery, N >= 1), found \"abc\"",
        conf.display()
    );
    assert!(
        run.stderr.starts_with(&format!("p11ha: {why}\n")),
        "{}",
        run.describe()
    );
    let logged = std::fs::read_to_string(&file).unwrap();
    let pid = logged
        .split_once(" : [")
        .unwrap()
        .1
        .split_once(']')
        .unwrap()
        .0;
    assert_eq!(
        logged.split_once(" : [").unwrap().1,
        format!("{pid}] HA {why}\n"),
        "{logged}"
    );
}

/// Issue 16 item 11: one `p11ha recover` is one attempt (reconnAtt = 2 is not spent at once);
/// a member that died and came back is "recovery attempt N succeeded", never "is now activated"
/// (seed 003 keeps that for a deactivated partition); "reintroducing N token objects" only
/// when N > 0.
#[test]
fn one_recover_is_one_attempt_and_recovery_lines_follow_seed_003() {
    let _one = in_process();
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts {
        group_serial: Some("4712".into()),
        reconn_att: 2,
        auto_reconnect_interval: 2,
        ha_synchronize: Some(true),
        ..Default::default()
    });
    let m1 = &cluster.members[1].serial;
    let (code, out, err) = p11ha_env(
        &conf,
        &["synchronize", "-group", GROUP_LABEL, "-init-cloning-key"],
        &[("P11HA_SO_PIN", SO_PIN)],
    );
    assert_eq!(code, 0, "{out}{err}");
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let note = |label: &str| data_object(&s, label, label.as_bytes());
    let g = "HA group: 4712";
    let failed = |n: u32| format!("{g} recovery attempt {n} failed for member: {m1}. Code: 0x");
    let exhausted = format!(
        "{g} exceeded maximum number of autorecovery attempts for member: {m1}. Autorecovery \
         will be disabled"
    );
    let texts = || ha_log_texts(&cluster);
    let wait_count = |text: &str, n: usize| {
        let ok = wait_until(std::time::Duration::from_secs(20), || {
            texts().iter().filter(|l| l.as_str() == text).count() >= n
        });
        assert!(
            ok,
            "waiting for {n} x {text:?}: {:#?}",
            cluster.ha_log_lines()
        );
    };
    let recover = || {
        let (code, out, err) = p11ha(&conf, &["recover", "-group", GROUP_LABEL]);
        assert_eq!(code, 0, "{out}{err}");
    };

    cluster.kill(1);
    note("while-m1-down");
    wait_count(&exhausted, 1);
    recover();
    wait_count(
        &format!("{g} Re-enable auto recovery process for member: {m1}"),
        1,
    );
    wait_count(&exhausted, 2);
    // The two attempts after the request: in two rounds (2 s apart), not in one.
    let lines = cluster.ha_log_lines();
    let renable = lines
        .iter()
        .position(|l| l.contains("Re-enable auto recovery"))
        .unwrap();
    let at = |text: &str| {
        let l = lines[renable..]
            .iter()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} after the request: {lines:#?}"));
        chrono::NaiveDateTime::parse_from_str(&l[..24], "%a %b %e %H:%M:%S %Y").unwrap()
    };
    let gap = at(&failed(2)) - at(&failed(1));
    assert!(
        gap.num_seconds() >= 1,
        "one recover request spent two attempts at once: {lines:#?}"
    );

    // Back with one object owed: reintroducing 1, then succeeded, and no "now activated".
    cluster.restart(1);
    recover();
    let reintroduced =
        format!("{g} recovery attempt 1 reintroducing 1 token objects to recovered token {m1}");
    let succeeded = format!("{g} recovery attempt 1 succeeded for member: {m1}");
    wait_count(&succeeded, 1);
    let t = texts();
    let pos = |text: &str| t.iter().position(|l| l.as_str() == text);
    assert!(
        pos(&reintroduced).is_some_and(|r| Some(r + 1) == pos(&succeeded)),
        "{t:#?}"
    );

    // Dropped and back with nothing owed: no "reintroducing 0".
    let before = t.len();
    cluster.kill(1);
    cluster.restart(1);
    let ok = wait_until(std::time::Duration::from_secs(20), || {
        // Calls find out that m1's connection died.
        let _ = s.generate_random_vec(16);
        texts()[before..].iter().any(|l| {
            l.starts_with(&format!("{g} recovery attempt "))
                && l.ends_with(&format!("succeeded for member: {m1}"))
        })
    });
    assert!(ok, "{:#?}", cluster.ha_log_lines());
    let t = texts();
    assert!(!t.iter().any(|l| l.contains("reintroducing 0 ")), "{t:#?}");
    assert!(!t.iter().any(|l| l.contains("is now activated")), "{t:#?}");
}

/// Issue 16 item 11: a normal start writes nothing on the application's stderr, not even for an
/// application that forbids threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS: that note used to be
/// printed at every start) or a synchronized group without haJournalPath; P11HA_DEBUG shows it.
#[test]
fn a_normal_start_is_quiet_on_stderr() {
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts {
        ha_synchronize: Some(true),
        ..Default::default()
    });
    let mut app = Command::new("pkcs11-tool");
    app.arg("--module")
        .arg(p11ha_lib())
        .arg("-L")
        .env("P11HA_CONF", &conf)
        .env_remove("P11HA_DEBUG");
    let run = run_cmd(app, std::time::Duration::from_secs(30));
    assert!(run.success(), "{}", run.describe());
    assert_eq!(run.stderr, "", "{}", run.describe());

    let exe = cluster.build_c_client();
    let no_threads = |debug: Option<&str>| {
        let mut cmd = c_client_cmd(
            &exe,
            &p11ha_lib(),
            GROUP_LABEL,
            &["-T", "-n", "1", "-c", "20", "-q"],
        );
        cmd.env("P11HA_CONF", &conf).env_remove("P11HA_DEBUG");
        if let Some(d) = debug {
            cmd.env("P11HA_DEBUG", d);
        }
        let run = run_cmd(cmd, std::time::Duration::from_secs(60));
        assert!(run.success(), "{}", run.describe());
        run
    };
    let quiet = no_threads(None);
    assert!(!quiet.stderr.contains("p11ha:"), "{}", quiet.describe());
    let told = no_threads(Some("info"));
    assert!(
        told.stderr.contains(
            "p11ha: the application forbids threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS): \
             members are recovered during application calls\n"
        ),
        "{}",
        told.describe()
    );
}

/// Issue 16 item 12: no -password and no P11HA_PIN, on a terminal: the PIN is asked for with
/// echo off, and the command goes on with it.
#[test]
fn the_pin_is_asked_on_a_terminal_without_echo() {
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts {
        members: Some(vec![0]),
        ..Default::default()
    });
    let m1 = &cluster.members[1].serial;
    // A pseudo-terminal: the child's stdin, stdout and stderr, and its controlling terminal.
    // The script types the PIN after the prompt and prints the whole transcript.
    let script = r#"
import os, pty, sys, select, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
typed = False
deadline = time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if not r:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    if not typed and out.endswith(b"PIN: "):
        os.write(fd, sys.stdin.buffer.read())
        typed = True
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script, env!("CARGO_BIN_EXE_p11ha")])
        .args(["addmember", "-group", GROUP_LABEL, "-serialnumber", m1])
        .env("P11HA_CONF", &conf)
        .env_remove("P11HA_PIN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{USER_PIN}\n").as_bytes())
        .unwrap();
    let done = child.wait_with_output().unwrap();
    let transcript = String::from_utf8_lossy(&done.stdout);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{transcript}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // The terminal turns "\n" into "\r\n"; with echo off the PIN never shows.
    assert_eq!(
        transcript.replace("\r\n", "\n"),
        format!(
            "Enter the group's user PIN: \n{}",
            ok(&format!("{m1} added as member of group {GROUP_LABEL}."))
        )
    );
    assert!(!transcript.contains(USER_PIN));
}

/// Issue 16 item 11, the other half: a member taken down by a deactivation (the fault module
/// answers C_SignInit with CKR_TOKEN_NOT_PRESENT) gets seed 003's HALOG_MEMBER_NOW_ACTIVATED
/// right after its "succeeded" line when it comes back.
#[test]
fn a_deactivated_member_that_returns_is_now_activated() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::ObjectClass;
    let _one = in_process();
    let group = Group::with_fault_module(
        Setup::DIRECT_HA_ONLY_1,
        2,
        ConfigOpts {
            group_serial: Some("4713".into()),
            ..Default::default()
        },
        &[0],
    );
    let m0 = &group.members[0].serial;
    let ha = group.ha().unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    group.set_faults(0, "C_SignInit 0xE0\n");
    for n in 0..6u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n])
            .expect("failed over to the active member");
    }
    group.set_faults(0, "");
    let g = "HA group: 4713";
    let deactivated = format!("{g} member: {m0} deactivated");
    let activated = format!(
        "{g} recovery attempt 1 member {m0} is now activated and will be reintroduce back into \
         the HA group."
    );
    let ok = wait_until(std::time::Duration::from_secs(10), || {
        ha_log_texts(&group).contains(&activated)
    });
    let t = ha_log_texts(&group);
    assert!(ok, "{t:#?}");
    let at = |text: &str| t.iter().position(|l| l == text);
    assert!(at(&deactivated) < at(&activated), "{t:#?}");
    assert_eq!(
        at(&format!(
            "{g} recovery attempt 1 succeeded for member: {m0}"
        ))
        .map(|i| i + 1),
        at(&activated),
        "{t:#?}"
    );
}

/// Issue 16: with no configuration file where the command looks, a verb that needs one says so
/// plainly and where it looked, and fails; addprovider starts one.
#[test]
fn no_configuration_is_said_plainly() {
    let d = dir();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_p11ha"))
            .args(args)
            .env_remove("P11HA_CONF")
            .env("ChrystokiConfigurationPath", d.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let said = format!(
        "p11ha: no configuration found: {}/Chrystoki.conf does not exist \
         (ChrystokiConfigurationPath is {}, P11HA_CONF is not set). Write one (an annotated \
         example: config/Chrystoki.conf in the sources, /usr/share/doc/p11ha/examples/ when \
         installed; `p11ha addprovider` starts one) or set P11HA_CONF to its path\n",
        d.path().display(),
        d.path().display()
    );
    let failed = "\nCommand Result : 0x00000006 (CKR_FUNCTION_FAILED)\n";
    for args in [
        &["listgroups"][..],
        &["haonly", "-show"],
        &["creategroup", "-label", "g", "-serialnumber", "1"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (1, failed, said.as_str()),
            "{args:?}"
        );
    }
    let (code, out, _) = run(&["listgroups", "-json"]);
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "{\"error\":{\"rv\":6,\"name\":\"CKR_FUNCTION_FAILED\"}}\n"
        )
    );
    let (code, _, err) = run(&["addprovider", "-library", "/usr/lib/softhsm/libsofthsm2.so"]);
    assert_eq!(code, 0, "{err}");
    assert!(d.path().join("Chrystoki.conf").exists());
}
