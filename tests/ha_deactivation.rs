//! Deactivated members (the module answers, its token cannot serve), made deterministic with
//! the fault-injection pass-through module tests/c/fault_module.c around a real SoftHSM member,
//! and members that die and come back changed. Every scenario runs in every set-up: with
//! p11-kit members the fault module runs inside member 0's server (the HSM's side of the
//! connection) and death is a real kill; with direct members it sits in front of member 0's
//! SoftHSM copy and death is every call failing (testkit's `setup`).

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Two members in `setup`, member 0 behind the fault module (inside its p11-kit server, or in
/// front of its direct SoftHSM copy).
fn faulty_group(setup: Setup, failover_on_deactivation: bool) -> Group {
    Group::with_fault_module(
        setup,
        2,
        ConfigOpts {
            extra_ha_lines: vec![format!(
                "failover_on_deactivation = {};",
                u8::from(failover_on_deactivation)
            )],
            ..Default::default()
        },
        &[0],
    )
}

in_every_setup!(
    a_deactivated_member_is_logged_and_failed_over_by_default,
    without_failover_on_deactivation_the_caller_sees_it_once,
    a_connection_error_is_still_a_drop,
    a_member_of_the_other_authentication_kind_is_refused,
    a_member_that_refuses_the_credential_on_return_is_revoked,
);

fn a_deactivated_member_is_logged_and_failed_over_by_default(setup: Setup) {
    let _g = serial();
    let cluster = faulty_group(setup, true);
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"warm up").unwrap();
    cluster.set_faults(0, "C_SignInit 0xE0\n"); // CKR_TOKEN_NOT_PRESENT
    for n in 0..6u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n])
            .expect("failed over to the active member");
    }
    let needle = format!("member: {} deactivated", cluster.members[0].serial);
    assert!(
        cluster
            .wait_ha_log(&needle, Duration::from_secs(3))
            .is_some(),
        "{:#?}",
        cluster.ha_log_lines()
    );
    assert!(!cluster
        .ha_log_lines()
        .iter()
        .any(|l| l.contains("has dropped member")));
}

fn without_failover_on_deactivation_the_caller_sees_it_once(setup: Setup) {
    let _g = serial();
    let cluster = faulty_group(setup, false);
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"warm up").unwrap();
    cluster.set_faults(0, "C_SignInit 0xE0\n");
    let results: Vec<_> = (0..6u8)
        .map(|n| s.sign(&Mechanism::Sha256RsaPkcs, key, &[n]))
        .collect();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        refused.len(),
        1,
        "exactly the call that met the deactivation fails: {results:?}"
    );
    assert!(
        matches!(refused[0], Error::Pkcs11(RvError::TokenNotPresent, _)),
        "{refused:?}"
    );
    assert!(cluster
        .ha_log_lines()
        .iter()
        .any(|l| l.contains("deactivated")));
}

fn a_connection_error_is_still_a_drop(setup: Setup) {
    let _g = serial();
    let cluster = faulty_group(setup, false);
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    // Not a death (the member answers everything else), but the error of one: CKR_DEVICE_ERROR,
    // which p11ha must take as the connection gone, as from a member whose server died.
    cluster.set_faults(0, "C_SignInit 0x30\n"); // CKR_DEVICE_ERROR
    for n in 0..6u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n])
            .expect("a dead member is always failed over");
    }
    let needle = format!("has dropped member: {}", cluster.members[0].serial);
    assert!(
        cluster.ha_log_lines().iter().any(|l| l.contains(&needle)),
        "{:#?}",
        cluster.ha_log_lines()
    );
}

fn a_member_of_the_other_authentication_kind_is_refused(setup: Setup) {
    let _g = serial();
    let cluster = faulty_group(setup, true);
    let ha = cluster.ha().unwrap();
    assert!(cluster
        .wait_ha_log(
            "configured as a \"PASSWORD Based\" virtual device",
            Duration::from_secs(2)
        )
        .is_some());
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    // Member 0 dies, and comes back as a PED-authenticated token.
    cluster.die(0);
    for n in 0..4u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n]).unwrap();
    }
    cluster.set_faults(0, "C_GetTokenInfo ped\n");
    cluster.revive(0);
    let m0 = &cluster.members[0].serial;
    let refused = format!("failed for member: {m0}. Manual Recover or Auto Recovery will not be able to recover this member");
    assert!(
        cluster
            .wait_ha_log(&refused, Duration::from_secs(4))
            .is_some(),
        "{:#?}",
        cluster.ha_log_lines()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let lines = cluster.ha_log_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&format!("succeeded for member: {m0}"))),
        "{lines:#?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(&refused)).count(),
        1,
        "refused once, then never retried"
    );
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"still served")
        .unwrap();
}

fn a_member_that_refuses_the_credential_on_return_is_revoked(setup: Setup) {
    let _g = serial();
    let cluster = faulty_group(setup, true);
    let ha = cluster.ha().unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    cluster.die(0);
    for n in 0..4u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n]).unwrap();
    }
    // It answers again, but its token now says the user PIN is locked (CKR_PIN_LOCKED).
    cluster.set_faults(0, "C_Login 0xA4\n");
    cluster.revive(0);
    let m0 = &cluster.members[0].serial;
    let revoked = format!("member: {m0} revoked");
    assert!(
        cluster
            .wait_ha_log(&revoked, Duration::from_secs(4))
            .is_some(),
        "{:#?}",
        cluster.ha_log_lines()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let lines = cluster.ha_log_lines();
    assert_eq!(
        lines.iter().filter(|l| l.contains(&revoked)).count(),
        1,
        "the PIN was tried once: {lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&format!("succeeded for member: {m0}"))),
        "{lines:#?}"
    );
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"still served")
        .unwrap();
}
