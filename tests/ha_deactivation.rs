//! Deactivated members (the module answers, its token cannot serve), made deterministic with
//! the fault-injection pass-through module tests/c/fault_module.c around a real SoftHSM member.

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Two direct SoftHSM members, member 0 behind the fault module; returns (config, control file).
fn faulty_group(cluster: &Cluster, failover_on_deactivation: bool) -> (PathBuf, PathBuf) {
    let fault = cluster.dir().join("fault.so");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fault_module.c");
    let st = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-I/usr/include/p11-kit-1",
            "-o",
        ])
        .arg(&fault)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success(), "building the fault module");
    let control = cluster.dir().join("faults");
    std::fs::write(&control, "").unwrap();
    let conf = cluster.write_config(&ConfigOpts {
        direct: true,
        extra_ha_lines: vec![format!(
            "failover_on_deactivation = {};",
            u8::from(failover_on_deactivation)
        )],
        ..Default::default()
    });
    let m0 = &cluster.members[0];
    let lib0 = cluster.softhsm_copy(0);
    let text = std::fs::read_to_string(&conf).unwrap();
    let from = format!(
        "Provider00Library = {};\n   Provider00Env = SOFTHSM2_CONF={};",
        lib0.display(),
        m0.conf.display()
    );
    assert!(text.contains(&from), "{text}");
    let to = format!(
        "Provider00Library = {};\n   Provider00Env = FAULT_MODULE={}, SOFTHSM2_CONF={}, FAULT_CONTROL={};",
        fault.display(),
        lib0.display(),
        m0.conf.display(),
        control.display()
    );
    std::fs::write(&conf, text.replace(&from, &to)).unwrap();
    (conf, control)
}

#[test]
fn a_deactivated_member_is_logged_and_failed_over_by_default() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let (conf, control) = faulty_group(&cluster, true);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"warm up").unwrap();
    std::fs::write(&control, "C_SignInit 0xE0\n").unwrap(); // CKR_TOKEN_NOT_PRESENT
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

#[test]
fn without_failover_on_deactivation_the_caller_sees_it_once() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let (conf, control) = faulty_group(&cluster, false);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"warm up").unwrap();
    std::fs::write(&control, "C_SignInit 0xE0\n").unwrap();
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

#[test]
fn a_connection_error_is_still_a_drop() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let (conf, control) = faulty_group(&cluster, false);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    std::fs::write(&control, "C_SignInit 0x30\n").unwrap(); // CKR_DEVICE_ERROR
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

#[test]
fn a_member_of_the_other_authentication_kind_is_refused() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let (conf, control) = faulty_group(&cluster, true);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    assert!(cluster
        .wait_ha_log(
            "configured as a \"PASSWORD Based\" virtual device",
            Duration::from_secs(2)
        )
        .is_some());
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    // Member 0 dies, and comes back as a PED-authenticated token.
    std::fs::write(&control, "C_SignInit 0x30\n").unwrap();
    for n in 0..4u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n]).unwrap();
    }
    std::fs::write(&control, "C_GetTokenInfo ped\n").unwrap();
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

#[test]
fn a_member_that_refuses_the_credential_on_return_is_revoked() {
    let _g = serial();
    let cluster = Cluster::new(2);
    let (conf, control) = faulty_group(&cluster, true);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    std::fs::write(&control, "C_SignInit 0x30\n").unwrap();
    for n in 0..4u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n]).unwrap();
    }
    // It answers again, but its token now says the user PIN is locked (CKR_PIN_LOCKED).
    std::fs::write(&control, "C_Login 0xA4\n").unwrap();
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
