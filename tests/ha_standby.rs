//! Standby members: logged in, but no cryptographic operation while an active member lives;
//! they take over when every active member is down and hand work back when one returns.
//! Calls reaching the standby are counted at the member boundary with OpenSC's pkcs11-spy
//! wrapped around its p11-kit-client.

mod support;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use std::path::Path;
use std::time::Duration;
use support::*;

const SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so";

fn sign_calls(spy_log: &Path) -> usize {
    std::fs::read_to_string(spy_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("C_Sign"))
        .count()
}

#[test]
fn a_standby_serves_only_while_every_active_member_is_down() {
    let cluster = Cluster::started(3);
    let conf = cluster.write_config(&ConfigOpts {
        members: Some(vec![0, 1]),
        ..Default::default()
    });
    let spy_log = cluster.dir().join("standby-spy.log");
    let m2 = &cluster.members[2];
    // m2 becomes a standby reached through pkcs11-spy.
    let text = std::fs::read_to_string(&conf).unwrap().replace(
        "   VirtualTokenActiveRecovery",
        &format!(
            "   VirtualToken00Standby = {};\n   VirtualTokenActiveRecovery",
            m2.serial
        ),
    );
    let text = text.replace(
        &format!("Provider02Library = {P11KIT_CLIENT_LIB};\n   Provider02Env = P11_KIT_SERVER_ADDRESS={};", m2.address()),
        &format!(
            "Provider02Library = {SPY};\n   Provider02Env = PKCS11SPY={P11KIT_CLIENT_LIB}, PKCS11SPY_OUTPUT={}, P11_KIT_SERVER_ADDRESS={};",
            spy_log.display(),
            m2.address()
        ),
    );
    assert!(
        text.contains("Standby") && text.contains(SPY),
        "config rewrite failed:\n{text}"
    );
    std::fs::write(&conf, text).unwrap();

    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    for n in 0..10u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n]).unwrap();
    }
    assert!(spy_log.exists(), "the standby's module was never loaded");
    assert_eq!(
        sign_calls(&spy_log),
        0,
        "no signature may reach a standby while actives live"
    );
    let logged_in = std::fs::read_to_string(&spy_log)
        .unwrap()
        .contains("C_Login");
    assert!(logged_in, "the standby is logged in with the group");

    // Every active member down: the standby takes over, with the same session and handle.
    cluster.kill(0);
    cluster.kill(1);
    for n in 0..5u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n])
            .expect("the standby takes over");
    }
    let while_down = sign_calls(&spy_log);
    assert!(
        while_down >= 5,
        "the standby served {while_down} C_Sign calls"
    );

    // An active member returns: work goes back to it.
    cluster.restart(0);
    let back = format!("succeeded for member: {}", cluster.members[0].serial);
    assert!(
        cluster.wait_ha_log(&back, Duration::from_secs(5)).is_some(),
        "{:#?}",
        cluster.ha_log_lines()
    );
    for n in 0..10u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[n]).unwrap();
    }
    assert_eq!(
        sign_calls(&spy_log),
        while_down,
        "work went back to the active member"
    );
}
