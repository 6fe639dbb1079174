//! The HA virtual token end to end: libp11ha.so loaded through the cryptoki crate over real
//! SoftHSM members behind p11-kit servers.

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::sync::{Mutex, MutexGuard};
use support::*;

/// p11ha is one library per process: tests that load it in-process take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn pin() -> AuthPin {
    AuthPin::new(USER_PIN.into())
}

#[test]
fn virtual_slot_token_and_crypto_over_two_members() {
    let _g = serial();
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts {
        group_serial: Some("4242".into()),
        ..Default::default()
    });
    let ha = cluster
        .ha_client(&conf, GROUP_LABEL)
        .expect("open the HA token");

    // HAOnly: exactly one slot, the group's, with the configured serial.
    let slots = ha.pkcs11.get_all_slots().unwrap();
    assert_eq!(slots.len(), 1);
    let info = ha.pkcs11.get_token_info(ha.slot).unwrap();
    assert_eq!(info.label(), GROUP_LABEL);
    assert_eq!(info.serial_number(), "4242");

    let s = ha.session().unwrap();
    // RSA: sign through the group, verify on each member directly.
    let data = b"p11ha signs this";
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, data).unwrap();
    for i in 0..2 {
        assert!(cluster.verify_rsa_on(i, data, &sig), "member {i} verifies");
    }
    let pubkey = ha.find(&s, ObjectClass::PUBLIC_KEY, RSA_ID).unwrap();
    s.verify(&Mechanism::Sha256RsaPkcs, pubkey, data, &sig)
        .unwrap();
    let mut bad = sig.clone();
    bad[0] ^= 1;
    let err = s
        .verify(&Mechanism::Sha256RsaPkcs, pubkey, data, &bad)
        .unwrap_err();
    assert!(
        matches!(err, Error::Pkcs11(RvError::SignatureInvalid, _)),
        "a bad signature is the caller's error: {err}"
    );

    // ECDSA over a digest (SoftHSM has no CKM_ECDSA_SHA256).
    let digest = s.digest(&Mechanism::Sha256, data).unwrap();
    assert_eq!(digest.len(), 32);
    let ec = ha.find(&s, ObjectClass::PRIVATE_KEY, EC_ID).unwrap();
    let ec_pub = ha.find(&s, ObjectClass::PUBLIC_KEY, EC_ID).unwrap();
    let ec_sig = s.sign(&Mechanism::Ecdsa, ec, &digest).unwrap();
    s.verify(&Mechanism::Ecdsa, ec_pub, &digest, &ec_sig)
        .unwrap();

    // HMAC with the shared generic secret: same MAC whichever member computes it.
    let hmac = ha.find(&s, ObjectClass::SECRET_KEY, HMAC_ID).unwrap();
    let mac1 = s.sign(&Mechanism::Sha256Hmac, hmac, data).unwrap();
    let mac2 = s.sign(&Mechanism::Sha256Hmac, hmac, data).unwrap();
    assert_eq!(mac1, mac2);
    s.verify(&Mechanism::Sha256Hmac, hmac, data, &mac1).unwrap();

    // AES: ECB is what p11-kit 0.24 passes through (it drops IV parameters).
    let aes = ha.find(&s, ObjectClass::SECRET_KEY, AES_ID).unwrap();
    let block = [7u8; 32];
    let ct = s.encrypt(&Mechanism::AesEcb, aes, &block).unwrap();
    assert_ne!(ct.as_slice(), &block[..]);
    assert_eq!(
        s.decrypt(&Mechanism::AesEcb, aes, &ct).unwrap(),
        block.to_vec()
    );

    // Random, attributes, multi-part digest.
    let r = s.generate_random_vec(32).unwrap();
    assert_eq!(r.len(), 32);
    let label = s.get_attributes(key, &[AttributeType::Label]).unwrap();
    assert_eq!(label, vec![Attribute::Label(b"rsa".to_vec())]);
    s.digest_init(&Mechanism::Sha256).unwrap();
    s.digest_update(b"p11ha ").unwrap();
    s.digest_update(b"signs this").unwrap();
    assert_eq!(s.digest_final().unwrap(), digest);
}

#[test]
fn virtual_handles_name_the_same_object_on_every_member() {
    let _g = serial();
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts::default());
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    // Each signature may run on either member (least busy, ties rotated); every one verifies
    // with member 1's key, so the handle resolved to the same key on both.
    for n in 0..6u8 {
        let data = [n; 16];
        let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, &data).unwrap();
        assert!(cluster.verify_rsa_on(1, &data, &sig));
    }
    // A search finds each object once, not once per member.
    let all = s.find_objects(&[Attribute::Id(vec![RSA_ID])]).unwrap();
    assert_eq!(all.len(), 3, "RSA private key, public key and certificate");
}

#[test]
fn wrong_pin_is_reported_once_and_never_retried() {
    let _g = serial();
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts::default());
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.pkcs11.open_ro_session(ha.slot).unwrap();
    let err = s
        .login(UserType::User, Some(&AuthPin::new("9999".into())))
        .unwrap_err();
    assert!(
        matches!(err, Error::Pkcs11(RvError::PinIncorrect, _)),
        "{err}"
    );
    // Only the first member saw the wrong PIN: the other still has its full retry budget.
    // SoftHSM marks a token after a failed login with CKF_USER_PIN_COUNT_LOW.
    let low = (0..2)
        .filter(|&i| {
            let c = cluster.client(i);
            c.pkcs11
                .get_token_info(c.slot)
                .unwrap()
                .user_pin_count_low()
        })
        .count();
    assert!(low <= 1, "the wrong PIN reached {low} members");
    s.login(UserType::User, Some(&pin())).unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"x").unwrap();
}
