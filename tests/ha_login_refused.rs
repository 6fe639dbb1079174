//! The application's wrong PIN is the application's error, not a member's: C_Login answers
//! CKR_PIN_INCORRECT each time, every member stays up with auto-recovery on (a member killed
//! and restored comes back), the right PIN then logs in, and the HA log says what happened
//! (`P11HA_LOGIN_REFUSED`), never `HALOG_LOGINFAILED`'s "autorecovery will be disabled" and
//! never the PIN. That line stays for a member that refuses the PIN the others accepted (its
//! PIN changed on its own): it is dropped and its auto-recovery is off.
//!
//! Every scenario runs with HASynchronize off and on, in every set-up of testkit's `setup`
//! (members through p11-kit servers or direct, HAOnly = 1 and 0).

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::status::StatusApi;
use support::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wrong PINs the application tries, each of SoftHSM's accepted length; none may reach the log.
const WRONG: [&str; 3] = ["wrongpin-a", "wrongpin-b", "wrongpin-c"];

fn wrong_pin_sync_off(setup: Setup) {
    wrong_pins_then_the_right_one(setup, false)
}
fn wrong_pin_sync_on(setup: Setup) {
    wrong_pins_then_the_right_one(setup, true)
}
fn changed_pin_sync_off(setup: Setup) {
    a_member_with_its_own_pin_is_dropped_for_good(setup, false)
}
fn changed_pin_sync_on(setup: Setup) {
    a_member_with_its_own_pin_is_dropped_for_good(setup, true)
}

in_every_setup!(
    wrong_pin_sync_off,
    wrong_pin_sync_on,
    changed_pin_sync_off,
    changed_pin_sync_on
);

fn group(setup: Setup, sync: bool) -> Group {
    Group::new(
        setup,
        2,
        ConfigOpts {
            ha_synchronize: Some(sync),
            reconn_att: -1,
            auto_reconnect_interval: 1,
            ..Default::default()
        },
    )
}

/// Per member of the group in `slot`: (serial, alive, auto-recovery on).
fn states(status: &StatusApi, slot: u64) -> Vec<(String, bool, bool)> {
    let st = status.group(slot).expect("p11ha_group_status");
    let members = status.members(slot).expect("p11ha_group_status");
    members
        .into_iter()
        .zip(st.members.iter())
        .map(|(m, raw)| (m.serial, m.alive, raw.auto_recovery != 0))
        .collect()
}

fn all_up_and_recoverable(status: &StatusApi, slot: u64, n: usize) -> bool {
    let s = states(status, slot);
    s.len() == n && s.iter().all(|(_, alive, auto)| *alive && *auto)
}

fn login(s: &Session, pin: &str) -> cryptoki::error::Result<()> {
    s.login(UserType::User, Some(&AuthPin::new(pin.into())))
}

fn sign(ha: &MemberClient, s: &Session) -> cryptoki::error::Result<Vec<u8>> {
    let key = ha.find(s, ObjectClass::PRIVATE_KEY, RSA_ID)?;
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"login")
}

/// Member `i` dies and comes back: the HA log shows it dropped (a call finds it dead) and then
/// recovered.
fn kill_and_restore(group: &Group, ha: &MemberClient, i: usize) {
    let serial = group.members[i].serial.clone();
    let dropped = format!("has dropped member: {serial}");
    let before = group
        .ha_log_lines()
        .iter()
        .filter(|l| l.contains(&dropped))
        .count();
    group.die(i);
    let gone = wait_until(Duration::from_secs(20), || {
        // Calls on fresh sessions reach every member in turn; one finds it dead.
        if let Ok(s) = ha.session() {
            let _ = sign(ha, &s);
        }
        group
            .ha_log_lines()
            .iter()
            .filter(|l| l.contains(&dropped))
            .count()
            > before
    });
    assert!(gone, "m{i} never dropped; log: {:#?}", group.ha_log_lines());
    group.revive(i);
    let recovered = format!("succeeded for member: {serial}");
    let before = group
        .ha_log_lines()
        .iter()
        .filter(|l| l.contains(&recovered))
        .count();
    let back = wait_until(Duration::from_secs(30), || {
        group
            .ha_log_lines()
            .iter()
            .filter(|l| l.contains(&recovered))
            .count()
            > before
    });
    assert!(
        back,
        "m{i} not recovered: auto-recovery off? log: {:#?}",
        group.ha_log_lines()
    );
}

fn wrong_pins_then_the_right_one(setup: Setup, sync: bool) {
    let _g = serial();
    let group = group(setup, sync);
    let ha = group.ha().unwrap();
    let status = StatusApi::load(&p11ha_lib()).unwrap();
    let slot = ha.slot.id();
    let serials: Vec<String> = group.members.iter().map(|m| m.serial.clone()).collect();
    assert!(wait_until(Duration::from_secs(10), || {
        all_up_and_recoverable(&status, slot, 2)
    }));

    let s = ha.pkcs11.open_rw_session(ha.slot).unwrap();
    for pin in WRONG {
        match login(&s, pin) {
            Err(Error::Pkcs11(RvError::PinIncorrect, _)) => {}
            r => panic!("C_Login with a wrong PIN: {r:?}"),
        }
        assert!(
            all_up_and_recoverable(&status, slot, 2),
            "after a wrong PIN: {:?}",
            states(&status, slot)
        );
    }
    login(&s, USER_PIN).expect("the right PIN after wrong ones");
    sign(&ha, &s).expect("a signature once logged in");
    assert!(
        all_up_and_recoverable(&status, slot, 2),
        "after the login: {:?}",
        states(&status, slot)
    );

    // What the log says about the refusals: one line each, naming a member of ours, and none
    // saying auto-recovery will be disabled.
    // (The log is written by a background thread.)
    let refusal = "application login refused by member: ";
    wait_until(Duration::from_secs(5), || {
        group
            .ha_log_lines()
            .iter()
            .filter(|l| l.contains(refusal))
            .count()
            >= WRONG.len()
    });
    let log = group.ha_log_lines();
    let refused: Vec<&String> = log.iter().filter(|l| l.contains(refusal)).collect();
    assert_eq!(refused.len(), WRONG.len(), "log: {log:#?}");
    for l in &refused {
        assert!(
            serials.iter().any(|s| l.contains(&format!("member: {s} ")))
                && l.contains("CKR_PIN_INCORRECT"),
            "{l}"
        );
    }
    for l in &log {
        assert!(
            !l.contains("can not login to member") && !l.contains("has dropped member"),
            "a wrong PIN of the application taken for a member failure: {l}\nlog: {log:#?}"
        );
        assert!(
            !WRONG.iter().any(|p| l.contains(p)),
            "a PIN in the HA log: {l}"
        );
    }

    // Auto-recovery is on for each member: killed and restored, it comes back and serves.
    for i in 0..2 {
        kill_and_restore(&group, &ha, i);
        assert!(
            wait_until(Duration::from_secs(10), || all_up_and_recoverable(
                &status, slot, 2
            )),
            "after m{i} came back: {:?}",
            states(&status, slot)
        );
    }
    // The old session is still logged in and signs.
    sign(&ha, &s).expect("a signature after both members came back");
}

/// `member`'s user PIN becomes `new` (through its p11-kit server, or on its token files before
/// p11ha loads the member's module).
fn change_member_pin(group: &Group, i: usize, new: &str) {
    let m = &group.members[i];
    let mut cmd = Command::new("pkcs11-tool");
    if group.setup.direct {
        cmd.args(["--module", SOFTHSM_LIB])
            .env("SOFTHSM2_CONF", &m.conf);
    } else {
        cmd.args(["--module", P11KIT_CLIENT_LIB])
            .env("P11_KIT_SERVER_ADDRESS", m.address());
    }
    let out = cmd
        .args(["--token-label", &m.label, "--login", "--pin", USER_PIN])
        .args(["--change-pin", "--new-pin", new])
        .output()
        .expect("pkcs11-tool");
    assert!(
        out.status.success(),
        "pkcs11-tool --change-pin on m{i}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn a_member_with_its_own_pin_is_dropped_for_good(setup: Setup, sync: bool) {
    let _g = serial();
    let group = group(setup, sync);
    change_member_pin(&group, 1, "otherpin-1");
    let ha = group.ha().unwrap();
    let status = StatusApi::load(&p11ha_lib()).unwrap();
    let slot = ha.slot.id();
    let (s0, s1) = (
        group.members[0].serial.clone(),
        group.members[1].serial.clone(),
    );
    let s = ha.pkcs11.open_rw_session(ha.slot).unwrap();
    // Members take turns at answering first: while m1 does, the application's (right) PIN is
    // refused, m1 named, nothing dropped; once m0 answers first it is accepted and m1, which
    // refuses it, is dropped with auto-recovery off.
    let mut refused_by_m1 = 0;
    let mut logged_in = false;
    for _ in 0..10 {
        match login(&s, USER_PIN) {
            Ok(()) => {
                logged_in = true;
                break;
            }
            Err(Error::Pkcs11(RvError::PinIncorrect, _)) => {
                refused_by_m1 += 1;
                assert!(all_up_and_recoverable(&status, slot, 2));
            }
            Err(e) => panic!("C_Login: {e}"),
        }
    }
    assert!(
        logged_in,
        "never logged in; log: {:#?}",
        group.ha_log_lines()
    );
    sign(&ha, &s).expect("a signature on m0");
    let st = states(&status, slot);
    assert_eq!(st[0], (s0.clone(), true, true), "{st:?}");
    assert_eq!(st[1], (s1.clone(), false, false), "{st:?}");

    let failed = format!("can not login to member: {s1}, autorecovery will be disabled. Code: ");
    group.wait_ha_log(&failed, Duration::from_secs(5));
    let log = group.ha_log_lines();
    assert_eq!(
        log.iter().filter(|l| l.contains(&failed)).count(),
        1,
        "log: {log:#?}"
    );
    let refused = format!("application login refused by member: {s1} ");
    assert_eq!(
        log.iter().filter(|l| l.contains(&refused)).count(),
        refused_by_m1,
        "log: {log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains(&format!("member: {s0} "))
            || l.contains(&format!("member: {s0},"))),
        "m0 accepted the PIN: {log:#?}"
    );
    // m1 stays out: auto-recovery does not try the PIN it refused again.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !states(&status, slot)[1].1,
        "m1 came back with a PIN it refuses"
    );
}
