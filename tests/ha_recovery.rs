//! Recovery with real members: members return without an application restart, reconnAtt
//! limits, manual recovery (HARecovery counter and `p11ha recover`), members joining and
//! leaving through the configuration file while the application runs. Every scenario runs in
//! every set-up (members through p11-kit servers killed and restarted for real, or reached
//! directly behind the fault module; HAOnly = 1 and 0: see testkit's `setup`).

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;
use support::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn rsa(ha: &MemberClient, s: &Session) -> ObjectHandle {
    ha.find(s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap()
}

fn sign(s: &Session, key: ObjectHandle) -> cryptoki::error::Result<Vec<u8>> {
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"recovery")
}

fn log_has(cluster: &Cluster, needle: &str, within: Duration) -> bool {
    cluster.wait_ha_log(needle, within).is_some()
}

in_every_setup!(
    a_member_returns_under_load_and_old_sessions_use_it_again,
    reconn_att_zero_never_retries_until_asked_by_the_cli,
    reconn_att_n_gives_up_after_n_attempts_and_a_counter_bump_rearms,
    members_join_and_leave_through_the_file_while_running,
    a_restarted_member_comes_back_for_the_group_and_its_own_slot,
    a_member_that_flaps_comes_back_after_its_last_return,
);

fn a_member_returns_under_load_and_old_sessions_use_it_again(setup: Setup) {
    let _g = serial();
    let cluster = Group::new(setup, 2, ConfigOpts::default());
    let ha = Arc::new(cluster.ha().unwrap());
    let s = ha.session().unwrap();
    let key = rsa(&ha, &s);
    sign(&s, key).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (ha, stop) = (ha.clone(), stop.clone());
            thread::spawn(move || {
                let s = ha.session().unwrap();
                let key = rsa(&ha, &s);
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    match sign(&s, key) {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    cluster.die(0);
    let m0 = cluster.members[0].serial.clone();
    assert!(log_has(
        &cluster,
        &format!("has dropped member: {m0}"),
        Duration::from_secs(5)
    ));
    cluster.revive(0);
    // AutoReconnectInterval = 1: back within an interval or two.
    assert!(
        log_has(
            &cluster,
            &format!("succeeded for member: {m0}"),
            Duration::from_secs(4)
        ),
        "{:#?}",
        cluster.ha_log_lines()
    );
    stop.store(true, Ordering::Relaxed);
    for h in load {
        let (ok, failed) = h.join().unwrap();
        assert_eq!(failed, 0);
        assert!(ok > 0);
    }
    // The session and key handle from before the outage now run on member 0 alone.
    cluster.die(1);
    sign(&s, key).expect("the returned member serves the old session and handle");
    // Seed 003: "is now activated" is for a member that was deactivated; a member that died
    // and came back is "recovery attempt N succeeded".
    assert!(cluster
        .ha_log_lines()
        .iter()
        .any(|l| l.contains("succeeded for member: ") && l.ends_with(m0.as_str())));
}

fn reconn_att_zero_never_retries_until_asked_by_the_cli(setup: Setup) {
    let _g = serial();
    let cluster = Group::new(
        setup,
        2,
        ConfigOpts {
            reconn_att: 0,
            ..Default::default()
        },
    );
    let conf = &cluster.conf;
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = rsa(&ha, &s);
    cluster.die(0);
    cluster.die(1);
    assert!(sign(&s, key).is_err());
    cluster.revive(0);
    cluster.revive(1);
    thread::sleep(Duration::from_millis(2500));
    assert!(
        !cluster
            .ha_log_lines()
            .iter()
            .any(|l| l.contains("recovery attempt")),
        "reconnAtt = 0 must not retry: {:#?}",
        cluster.ha_log_lines()
    );
    assert!(matches!(
        sign(&s, key),
        Err(Error::Pkcs11(RvError::DeviceError, _))
    ));

    let out = Command::new(env!("CARGO_BIN_EXE_p11ha"))
        .args(["recover", "-group", GROUP_LABEL])
        .env("P11HA_CONF", conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("Command Result : No Error\n"), "{stdout}");
    assert!(std::fs::read_to_string(conf)
        .unwrap()
        .contains("hagroup = 1"));
    assert!(log_has(
        &cluster,
        "Re-enable auto recovery process for member",
        Duration::from_secs(4)
    ));
    assert!(
        wait_until(Duration::from_secs(4), || sign(&s, key).is_ok()),
        "{:#?}",
        cluster.ha_log_lines()
    );
}

fn reconn_att_n_gives_up_after_n_attempts_and_a_counter_bump_rearms(setup: Setup) {
    let _g = serial();
    let cluster = Group::new(
        setup,
        2,
        ConfigOpts {
            reconn_att: 2,
            ..Default::default()
        },
    );
    let conf = &cluster.conf;
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = rsa(&ha, &s);
    cluster.die(0);
    let m0 = cluster.members[0].serial.clone();
    // Force the drop with traffic, then let two attempts fail.
    for _ in 0..4 {
        sign(&s, key).unwrap();
    }
    assert!(log_has(
        &cluster,
        &format!("recovery attempt 2 failed for member: {m0}"),
        Duration::from_secs(6)
    ));
    assert!(log_has(
        &cluster,
        &format!("exceeded maximum number of autorecovery attempts for member: {m0}. Autorecovery will be disabled"),
        Duration::from_secs(2)
    ));
    cluster.revive(0);
    thread::sleep(Duration::from_millis(2000));
    assert!(!cluster
        .ha_log_lines()
        .iter()
        .any(|l| l.contains("recovery attempt 3")));

    // Luna's manual recovery: increment the group's HARecovery counter in the file.
    let text = std::fs::read_to_string(conf).unwrap();
    std::fs::write(
        conf,
        format!("{text}\nHARecovery = {{\n  {GROUP_LABEL} = 7;\n}}\n"),
    )
    .unwrap();
    assert!(
        log_has(
            &cluster,
            &format!("succeeded for member: {m0}"),
            Duration::from_secs(4)
        ),
        "{:#?}",
        cluster.ha_log_lines()
    );
}

fn members_join_and_leave_through_the_file_while_running(setup: Setup) {
    let _g = serial();
    let only0 = ConfigOpts {
        members: Some(vec![0]),
        ..Default::default()
    };
    let cluster = Group::new(setup, 2, only0);
    let conf = &cluster.conf;
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = rsa(&ha, &s);
    sign(&s, key).unwrap();

    // Add member 1 (the provider for it is already in the file).
    let text = std::fs::read_to_string(conf).unwrap();
    let (m0, m1) = (
        cluster.members[0].serial.clone(),
        cluster.members[1].serial.clone(),
    );
    std::fs::write(
        conf,
        text.replace(
            &format!("Members = {m0};"),
            &format!("Members = {m0}, {m1};"),
        ),
    )
    .unwrap();
    assert!(
        log_has(
            &cluster,
            &format!("detected new member member: {m1}"),
            Duration::from_secs(4)
        ),
        "{:#?}",
        cluster.ha_log_lines()
    );
    assert!(log_has(
        &cluster,
        &format!("succeeded for member: {m1}"),
        Duration::from_secs(4)
    ));
    // Member 1 now carries the group alone when member 0 dies.
    cluster.die(0);
    sign(&s, key).expect("the new member serves");

    // Remove member 1: nothing is left to serve.
    cluster.revive(0);
    assert!(log_has(
        &cluster,
        &format!("succeeded for member: {m0}"),
        Duration::from_secs(4)
    ));
    let text = std::fs::read_to_string(conf).unwrap();
    std::fs::write(
        conf,
        text.replace(
            &format!("Members = {m0}, {m1};"),
            &format!("Members = {m0};"),
        ),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(2500));
    cluster.die(0);
    assert!(
        matches!(sign(&s, key), Err(Error::Pkcs11(RvError::DeviceError, _))),
        "a removed member must not serve"
    );
}

/// A member that died and returned must come back for the HA group, and then carry the group
/// when the other member dies. HAOnly = 0 (Luna's and p11ha's default) also lists every
/// member's own slot, which shares its provider's module instance with the HA group's member:
/// that slot must serve again too (with HAOnly = 1 there is no such slot to check).
fn a_restarted_member_comes_back_for_the_group_and_its_own_slot(setup: Setup) {
    let _g = serial();
    let cluster = Group::new(setup, 2, ConfigOpts::default());
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = rsa(&ha, &s);
    sign(&s, key).unwrap();
    let own_slot = |label: &str| {
        ha.pkcs11
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|slot| ha.pkcs11.get_token_info(*slot).unwrap().label() == label)
            .unwrap_or_else(|| panic!("no slot of member {label} with HAOnly = 0"))
    };
    let m0_slot = (!setup.ha_only).then(|| own_slot("m0"));
    let (m0, m1) = (
        cluster.members[0].serial.clone(),
        cluster.members[1].serial.clone(),
    );

    cluster.die(0);
    // Calls through the group find out that m0 is gone.
    for _ in 0..4 {
        sign(&s, key).expect("m1 serves while m0 is down");
    }
    assert!(log_has(
        &cluster,
        &format!("has dropped member: {m0}"),
        Duration::from_secs(10)
    ));
    cluster.revive(0);
    assert!(
        log_has(
            &cluster,
            &format!("succeeded for member: {m0}"),
            Duration::from_secs(15)
        ),
        "m0 never came back: {:#?}",
        cluster.ha_log_lines()
    );

    // m0 now carries the group alone.
    cluster.die(1);
    for _ in 0..4 {
        sign(&s, key).expect("the returned m0 serves the group after m1 died");
    }
    assert!(log_has(
        &cluster,
        &format!("has dropped member: {m1}"),
        Duration::from_secs(10)
    ));

    // And m0's own slot works again (on the new connection).
    let Some(m0_slot) = m0_slot else {
        cluster.revive(1);
        return;
    };
    let own = wait_until(Duration::from_secs(15), || {
        let Ok(s0) = ha.pkcs11.open_ro_session(m0_slot) else {
            return false;
        };
        s0.get_session_info().is_ok()
            && s0
                .find_objects(&[cryptoki::object::Attribute::Label(b"rsa".to_vec())])
                .is_ok()
    });
    assert!(own, "m0's own slot never served again after its restart");
    cluster.revive(1);
}

/// A member that dies again soon after it returned, several times (the chaos test's schedule
/// kills and restarts p11-kit servers within half a second: once a member never came back in
/// any client), must still come back after its last return, and then carry the group alone.
/// The pauses fall before, around and after the recovery round (AutoReconnectInterval = 1 s).
fn a_member_that_flaps_comes_back_after_its_last_return(setup: Setup) {
    let _g = serial();
    let cluster = Group::new(setup, 2, ConfigOpts::default());
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = rsa(&ha, &s);
    let m1 = cluster.members[1].serial.clone();
    for pause_ms in [300, 700, 1100, 500, 1500] {
        cluster.die(1);
        // Calls through the group find out that m1 is gone.
        for _ in 0..4 {
            sign(&s, key).expect("m0 serves while m1 flaps");
        }
        cluster.revive(1);
        thread::sleep(Duration::from_millis(pause_ms));
    }
    let back = wait_until(Duration::from_secs(15), || {
        ha.pkcs11
            .get_slots_with_token()
            .ok()
            .and_then(|slots| slots.into_iter().next())
            .and_then(|slot| ha.pkcs11.get_token_info(slot).ok())
            .is_some()
            && cluster
                .ha_log_lines()
                .last_member_event(&m1)
                .is_some_and(|l| l.contains("succeeded"))
    });
    assert!(
        back,
        "m1 did not come back after flapping: {:#?}",
        cluster.ha_log_lines()
    );
    cluster.die(0);
    for _ in 0..4 {
        sign(&s, key).expect("m1 carries the group after m0 died");
    }
    cluster.revive(0);
}

/// The last HA log line about a member's drop or recovery.
trait LastMemberEvent {
    fn last_member_event(&self, serial: &str) -> Option<&String>;
}

impl LastMemberEvent for Vec<String> {
    fn last_member_event(&self, serial: &str) -> Option<&String> {
        self.iter().rev().find(|l| {
            l.contains(serial)
                && (l.contains("has dropped member")
                    || l.contains("succeeded for member")
                    || l.contains("failed for member"))
        })
    }
}
