//! Pins every HA log message and the prefix layout against the seed 003 table (expected texts are
//! written by hand from the seed, typos included).

use chrono::{NaiveDate, TimeZone, Utc};
use p11ha::config::LogSettings;
use p11ha::halog::{format_line, prefix, Event, HaLog};

const GROUP: &str = "11234840370164";
const MEMBER: &str = "1234840370164";

fn settings(dir: &std::path::Path) -> LogSettings {
    LogSettings {
        path: Some(dir.to_path_buf()),
        enabled: true,
        max_len: 0,
        to_stdout: false,
        retain: 0,
        to_syslog: false,
        syslog_socket: p11ha::config::DEFAULT_SYSLOG_SOCKET.into(),
    }
}

#[test]
fn prefix_layout_matches_seed() {
    let t = Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(2017, 10, 4)
            .unwrap()
            .and_hms_opt(16, 29, 21)
            .unwrap(),
    );
    assert_eq!(
        prefix(&t, 17469, GROUP),
        "Wed Oct  4 16:29:21 2017 : [17469] HA group: 11234840370164 "
    );
    // Two-digit day: no padding.
    let t = Utc.with_ymd_and_hms(2017, 10, 14, 6, 2, 3).unwrap();
    assert_eq!(
        prefix(&t, 1, "G"),
        "Sat Oct 14 06:02:03 2017 : [1] HA group: G "
    );
    assert_eq!(
        format_line(&t, 1, "G", &Event::MembersOffline),
        "Sat Oct 14 06:02:03 2017 : [1] HA group: G all members gone offline.\n"
    );
}

/// Every method, and the seed text it must produce after the prefix.
type Case = (&'static str, &'static str, Box<dyn Fn(&HaLog)>);

fn expected() -> Vec<Case> {
    vec![
        ("HALOG_CONFIGURED_AS_PASSWORD", "configured as a \"PASSWORD Based\" virtual device",
            Box::new(|l: &HaLog| l.configured_as_password(GROUP))),
        ("HALOG_CONFIGURED_AS_PED", "configured as a \"PED Based\" virtual device",
            Box::new(|l: &HaLog| l.configured_as_ped(GROUP))),
        ("HALOG_DROPMEMBER", "has dropped member: 1234840370164",
            Box::new(|l: &HaLog| l.drop_member(GROUP, MEMBER))),
        ("HALOG_DROPUNRECOVERABLE", "unable to reach member: 1234840370164. Manual Recover or Auto Recovery will be able to recover this member",
            Box::new(|l: &HaLog| l.drop_unrecoverable(GROUP, MEMBER))),
        ("HALOG_LOGINFAILED", "can not login to member: 1234840370164, autorecovery will be disabled. Code: 0x000000a0 : CKR_PIN_INCORRECT",
            Box::new(|l: &HaLog| l.login_failed(GROUP, MEMBER, 0xA0))),
        ("HALOG_MEMBER_DEACTIVATED", "member: 1234840370164 deactivated",
            Box::new(|l: &HaLog| l.member_deactivated(GROUP, MEMBER))),
        ("HALOG_MEMBER_NOW_ACTIVATED", "recovery attempt 3 member 1234840370164 is now activated and will be reintroduce back into the HA group.",
            Box::new(|l: &HaLog| l.member_now_activated(GROUP, 3, MEMBER))),
        ("HALOG_MEMBER_REVOKED", "member: 1234840370164 revoked",
            Box::new(|l: &HaLog| l.member_revoked(GROUP, MEMBER))),
        ("HALOG_MEMBERS_OFFLINE", "all members gone offline.",
            Box::new(|l: &HaLog| l.members_offline(GROUP))),
        ("HALOG_MGMT_THREAD_START", "management thread started",
            Box::new(|l: &HaLog| l.mgmt_thread_start(GROUP))),
        ("HALOG_MGMT_THREAD_TERMINATE", "management thread terminated",
            Box::new(|l: &HaLog| l.mgmt_thread_terminate(GROUP))),
        ("HALOG_NEWMEMBER", "detected new member member: 1234840370164",
            Box::new(|l: &HaLog| l.new_member(GROUP, MEMBER))),
        ("HALOG_RECOVERED", "recovery attempt 3 succeeded for member: 1234840370164",
            Box::new(|l: &HaLog| l.recovered(GROUP, 3, MEMBER))),
        ("HALOG_RECOVERY_ATTEMPT_#_REINTRODUCING", "recovery attempt 3 reintroducing 7 token objects to recovered token 1234840370164",
            Box::new(|l: &HaLog| l.reintroducing(GROUP, 3, 7, MEMBER))),
        ("HALOG_RECOVERYFAILED", "recovery attempt 3 failed for member: 1234840370164. Code: 0x00000030 : CKR_DEVICE_ERROR.",
            Box::new(|l: &HaLog| l.recovery_failed(GROUP, 3, MEMBER, 0x30))),
        ("HALOG_RECOVERYFAILED", "exceeded maximum number of autorecovery attempts for member: 1234840370164. Autorecovery will be disabled",
            Box::new(|l: &HaLog| l.recovery_exhausted(GROUP, MEMBER))),
        ("HALOG_RENABLEMEMBER", "Re-enable auto recovery process for member: 1234840370164",
            Box::new(|l: &HaLog| l.renable_member(GROUP, MEMBER))),
        ("HALOG_UNRECOVERABLE", "recovery attempt 3 failed for member: 1234840370164. Manual Recover or Auto Recovery will not be able to recover this member. Code: 0x80000104 : CKR_VENDOR_DEFINED",
            Box::new(|l: &HaLog| l.unrecoverable(GROUP, 3, MEMBER, 0x8000_0104))),
        ("No ID", "member 1234840370164 is not activated and is excluded from the HA group",
            Box::new(|l: &HaLog| l.member_not_activated(GROUP, MEMBER))),
        ("No ID", "recovery attempt 1234840370164 is not activated and cannot be reintroduced back into the HA group",
            Box::new(|l: &HaLog| l.recovery_not_activated(GROUP, MEMBER))),
        ("No ID", "recovery attempt 1234840370164 is now activated and will be reintroduce back into the HA group.",
            Box::new(|l: &HaLog| l.recovery_now_activated(GROUP, MEMBER))),
        ("P11HA_CONFIG_ERROR", "configuration error: /etc/Chrystoki.conf:12: logLen: not a number",
            Box::new(|l: &HaLog| l.config_error(GROUP, "/etc/Chrystoki.conf:12: logLen: not a number"))),
        // p11ha's own: the application's wrong PIN is not a member failure (HALOG_LOGINFAILED
        // says auto-recovery will be disabled, which is not done for it).
        ("P11HA_LOGIN_REFUSED", "application login refused by member: 1234840370164 (the application gets the code; no member dropped, auto-recovery unchanged). Code: 0x000000a0 : CKR_PIN_INCORRECT",
            Box::new(|l: &HaLog| l.login_refused(GROUP, MEMBER, 0xA0))),
    ]
}

fn check_lines(content: &str, texts: &[&str]) {
    let lines: Vec<&str> = content.split_inclusive('\n').collect();
    assert_eq!(lines.len(), texts.len(), "{content}");
    let pid_part = format!(" : [{}] HA group: {GROUP} ", std::process::id());
    for (line, text) in lines.iter().zip(texts) {
        let line = line
            .strip_suffix('\n')
            .expect("every record ends with a newline");
        assert!(!line.contains('\r'));
        // ctime layout, parsed back strictly.
        chrono::NaiveDateTime::parse_from_str(&line[..24], "%a %b %e %H:%M:%S %Y")
            .unwrap_or_else(|e| panic!("bad time in {line:?}: {e}"));
        assert_eq!(&line[24..24 + pid_part.len()], pid_part, "{line}");
        assert_eq!(&line[24 + pid_part.len()..], *text, "{line}");
    }
}

#[test]
fn every_seed_message_sync() {
    let dir = tempfile::tempdir().unwrap();
    let log = HaLog::open_sync(&settings(dir.path()));
    assert!(log.is_enabled());
    let cases = expected();
    for (_, _, call) in &cases {
        call(&log);
    }
    log.flush();
    let content = std::fs::read_to_string(dir.path().join("haErrorLog.txt")).unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c.1).collect();
    check_lines(&content, &texts);
}

#[test]
fn every_seed_message_async_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = HaLog::open(&settings(dir.path()));
    let cases = expected();
    for (_, _, call) in &cases {
        call(&log);
    }
    log.flush();
    let content = std::fs::read_to_string(dir.path().join("haErrorLog.txt")).unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c.1).collect();
    check_lines(&content, &texts);
    // Message IDs of the catalogue.
    assert_eq!(Event::DropMember { member: "x" }.id(), "HALOG_DROPMEMBER");
    assert_eq!(
        Event::LoginRefused {
            member: "x",
            rv: 0xA0
        }
        .id(),
        "P11HA_LOGIN_REFUSED"
    );
    assert_eq!(
        Event::LoginFailed {
            member: "x",
            rv: 0xA0
        }
        .id(),
        "HALOG_LOGINFAILED"
    );
    assert_eq!(
        Event::RecoveryExhausted { member: "x" }.id(),
        "HALOG_RECOVERYFAILED"
    );
    assert_eq!(
        Event::Reintroducing {
            attempt: 1,
            count: 1,
            member: "x"
        }
        .id(),
        "HALOG_RECOVERY_ATTEMPT_#_REINTRODUCING"
    );
}

#[test]
fn file_mode_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = HaLog::open_sync(&settings(dir.path()));
    log.mgmt_thread_start(GROUP);
    let mode = std::fs::metadata(dir.path().join("haErrorLog.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn control_characters_cannot_forge_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = HaLog::open_sync(&settings(dir.path()));
    let forged = "1\nWed Oct  4 16:29:21 2017 : [1] HA group: 9 all members gone offline.";
    log.drop_member("G\r\n", forged);
    log.config_error(GROUP, "a\tb\x1b[31m\u{85}c\u{2028}d\x7f");
    log.flush();
    let content = std::fs::read_to_string(dir.path().join("haErrorLog.txt")).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 2, "{content:?}");
    assert!(lines[0].ends_with(
        " HA group: G\\x0d\\x0a has dropped member: 1\\x0aWed Oct  4 16:29:21 2017 : [1] HA group: 9 all members gone offline."
    ), "{}", lines[0]);
    assert!(
        lines[1].ends_with(" configuration error: a\\x09b\\x1b[31m\\x85c\\u{2028}d\\x7f"),
        "{}",
        lines[1]
    );
    assert!(!content.contains('\r'));
}

#[test]
fn disabled_settings_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.enabled = false;
    let log = HaLog::open(&s);
    assert!(!log.is_enabled());
    log.members_offline(GROUP);
    log.flush();
    assert!(!dir.path().join("haErrorLog.txt").exists());
    s.enabled = true;
    s.path = None;
    assert!(!HaLog::open(&s).is_enabled());
    // A missing directory disables the log (one stderr line; see tests/halog_writer.rs).
    s.path = Some(dir.path().join("missing"));
    assert!(!HaLog::open(&s).is_enabled());
}
