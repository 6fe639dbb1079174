//! Object synchronization (`HASynchronize.<label> = 1`) with 3 SoftHSM members.
//!
//! p11-kit's RPC refuses C_WrapKey/C_UnwrapKey with CKM_AES_KEY_WRAP_PAD (CKR_MECHANISM_INVALID),
//! and SoftHSM wraps private keys with nothing else, so private keys can only be cloned between
//! members reached directly (`ConfigOpts { direct: true }`, per-member copies of libsofthsm2.so):
//! the RSA/EC tests use direct members. Secret keys also travel through p11-kit (RSA-OAEP), and
//! member failure and return use p11-kit servers (kill / restart).

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A cluster with synchronization on and the cloning key made by `p11ha synchronize`.
fn synced(n: usize, direct: bool) -> (Cluster, std::path::PathBuf) {
    let cluster = Cluster::started(n);
    let conf = cluster.write_config(&ConfigOpts {
        ha_synchronize: Some(true),
        direct,
        ..Default::default()
    });
    let out = cli(&conf, &["-init-cloning-key"], &[("P11HA_SO_PIN", SO_PIN)]);
    assert!(
        out.contains("Cloning key created on 3 members") || n != 3,
        "{out}\nHA log: {:#?}",
        cluster.ha_log_lines()
    );
    (cluster, conf)
}

fn cli(conf: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11ha"));
    cmd.args(["synchronize", "-group", GROUP_LABEL]).args(extra);
    cmd.env("P11HA_CONF", conf);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn by_id(s: &Session, class: ObjectClass, id: u8) -> Vec<ObjectHandle> {
    s.find_objects(&[Attribute::Class(class), Attribute::Id(vec![id])])
        .unwrap()
}

fn aes_key(s: &Session, id: u8, extractable: bool) -> cryptoki::error::Result<ObjectHandle> {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(extractable),
            Attribute::ValueLen(32.into()),
            Attribute::Id(vec![id]),
            Attribute::Label(format!("aes-{id}").into_bytes()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    )
}

fn rsa_pair(s: &Session, id: u8) -> cryptoki::error::Result<(ObjectHandle, ObjectHandle)> {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Verify(true),
            Attribute::Id(vec![id]),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Id(vec![id]),
        ],
    )
}

fn ec_pair(s: &Session, id: u8) -> cryptoki::error::Result<(ObjectHandle, ObjectHandle)> {
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Verify(true),
            Attribute::Id(vec![id]),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Id(vec![id]),
        ],
    )
}

const AES: u8 = 0x51;
const RSA: u8 = 0x52;
const EC: u8 = 0x53;
const BLOCK: [u8; 16] = *b"sixteen byte blk";
const DIGEST: [u8; 32] = [7; 32];

/// Signs and encrypts with the three keys in session `s`, verifying with the public halves:
/// returns the AES ciphertext for cross-checks.
fn use_keys(s: &Session) -> Vec<u8> {
    let pr = by_id(s, ObjectClass::PRIVATE_KEY, RSA)[0];
    let pu = by_id(s, ObjectClass::PUBLIC_KEY, RSA)[0];
    let sig = s.sign(&Mechanism::Sha256RsaPkcs, pr, b"sync").unwrap();
    s.verify(&Mechanism::Sha256RsaPkcs, pu, b"sync", &sig)
        .unwrap();
    let pr = by_id(s, ObjectClass::PRIVATE_KEY, EC)[0];
    let pu = by_id(s, ObjectClass::PUBLIC_KEY, EC)[0];
    let sig = s.sign(&Mechanism::Ecdsa, pr, &DIGEST).unwrap();
    s.verify(&Mechanism::Ecdsa, pu, &DIGEST, &sig).unwrap();
    let k = by_id(s, ObjectClass::SECRET_KEY, AES)[0];
    let ct = s.encrypt(&Mechanism::AesEcb, k, &BLOCK).unwrap();
    assert_eq!(s.decrypt(&Mechanism::AesEcb, k, &ct).unwrap(), BLOCK);
    ct
}

fn wait_recovered(cluster: &Cluster, i: usize, after: usize) -> String {
    let serial = &cluster.members[i].serial;
    let needle = format!("token objects to recovered token {serial}");
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = cluster
            .ha_log_lines()
            .into_iter()
            .skip(after)
            .find(|l| l.contains(&needle));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no reintroduction of m{i}: {:#?}", cluster.ha_log_lines()))
}

fn reintroduced_count(line: &str) -> u64 {
    let after = line.split("reintroducing ").nth(1).unwrap();
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn keys_made_on_the_group_are_on_every_member_and_work_there() {
    let _g = serial();
    let (cluster, conf) = synced(3, true);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    aes_key(&s, AES, true).unwrap();
    rsa_pair(&s, RSA).unwrap();
    ec_pair(&s, EC).unwrap();
    let reference = use_keys(&s);
    // The direct clients load the same SoftHSM copies as p11ha: finalize p11ha first.
    drop(s);
    drop(ha);

    // Every member holds exactly one of each and uses it on its own.
    for i in 0..3 {
        let c = cluster.direct_client(i);
        let ms = c.session().unwrap();
        for (class, id) in [
            (ObjectClass::SECRET_KEY, AES),
            (ObjectClass::PRIVATE_KEY, RSA),
            (ObjectClass::PUBLIC_KEY, RSA),
            (ObjectClass::PRIVATE_KEY, EC),
            (ObjectClass::PUBLIC_KEY, EC),
        ] {
            assert_eq!(by_id(&ms, class, id).len(), 1, "m{i} {class:?} {id:#x}");
        }
        assert_eq!(use_keys(&ms), reference, "m{i} holds the same AES key");
    }
}

/// A data object through the group.
fn note(s: &Session, label: &str) -> ObjectHandle {
    data_object(s, label, label.as_bytes())
}

fn notes(s: &Session, label: &str) -> usize {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .unwrap()
    .len()
}

#[test]
fn a_returning_member_gets_what_was_made_and_loses_what_was_destroyed() {
    let _g = serial();
    let (cluster, conf) = synced(3, false);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let doomed = note(&s, "doomed");
    for i in 0..3 {
        assert_eq!(
            notes(&cluster.client(i).session().unwrap(), "doomed"),
            1,
            "m{i}"
        );
    }
    let lines = cluster.ha_log_lines().len();
    cluster.kill(2);
    note(&s, "a");
    note(&s, "b");
    note(&s, "c");
    s.destroy_object(doomed).unwrap();
    cluster.restart(2);
    let line = wait_recovered(&cluster, 2, lines);
    assert_eq!(reintroduced_count(&line), 3, "{line}");
    let c = cluster.client(2);
    let ms = c.session().unwrap();
    assert_eq!(
        notes(&ms, "doomed"),
        0,
        "destroyed while m2 was down: gone after recovery"
    );
    for l in ["a", "b", "c"] {
        assert_eq!(notes(&ms, l), 1, "{l} on m2, once");
    }
    // No duplicates: the provisioned keys m2 always had were recognised as twins.
    assert_eq!(by_id(&ms, ObjectClass::PRIVATE_KEY, RSA_ID).len(), 1);
    // And m2 serves the group alone with what it got.
    cluster.kill(0);
    cluster.kill(1);
    assert_eq!(notes(&s, "b"), 1);
}

#[test]
fn non_extractable_keys_cannot_be_wrapped_through_p11ha() {
    let _g = serial();
    let (cluster, conf) = synced(3, true);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    let key = aes_key(&s, AES, false).unwrap();
    let open = aes_key(&s, 0x61, true).unwrap();
    let kek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Id(vec![0x62]),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )
        .unwrap();
    let attrs = s
        .get_attributes(key, &[AttributeType::Extractable])
        .unwrap();
    assert_eq!(attrs, vec![Attribute::Extractable(false)]);
    match s.wrap_key(&Mechanism::AesKeyWrapPad, kek, key) {
        Err(Error::Pkcs11(RvError::KeyUnextractable, _)) => {}
        other => panic!("wrapping a non-extractable key: {other:?}"),
    }
    // An extractable key still wraps (the refusal is about the application's choice).
    assert!(!s
        .wrap_key(&Mechanism::AesKeyWrapPad, kek, open)
        .unwrap()
        .is_empty());
    // On a member it is extractable only under a trusted key: the app's own key cannot wrap it.
    drop(s);
    drop(ha);
    let c = cluster.direct_client(0);
    let ms = c.session().unwrap();
    let mk = by_id(&ms, ObjectClass::SECRET_KEY, AES)[0];
    let mkek = by_id(&ms, ObjectClass::SECRET_KEY, 0x62)[0];
    assert_eq!(
        ms.get_attributes(mk, &[AttributeType::WrapWithTrusted])
            .unwrap(),
        vec![Attribute::WrapWithTrusted(true)]
    );
    assert!(ms.wrap_key(&Mechanism::AesKeyWrapPad, mkek, mk).is_err());
}

#[test]
fn failed_replication_leaves_no_orphans() {
    let _g = serial();
    let (cluster, conf) = synced(3, true);
    // m2 loses its cloning key: keys cannot reach it, so creating one must fail everywhere.
    {
        let c = cluster.direct_client(2);
        let ms = c.session().unwrap();
        let ck = ms
            .find_objects(&[Attribute::Label(b"p11ha-cloning-key".to_vec())])
            .unwrap();
        // The AES key, m2's own receiving pair, and the receiving keys of m0 and m1.
        assert_eq!(ck.len(), 5);
        for h in ck {
            ms.destroy_object(h).unwrap();
        }
    }
    let before: Vec<usize> = (0..3)
        .map(|i| cluster.direct_client(i).count_objects().unwrap())
        .collect();
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    assert!(aes_key(&s, AES, true).is_err());
    assert!(rsa_pair(&s, RSA).is_err());
    assert!(by_id(&s, ObjectClass::SECRET_KEY, AES).is_empty());
    drop(s);
    drop(ha);
    let after: Vec<usize> = (0..3)
        .map(|i| cluster.direct_client(i).count_objects().unwrap())
        .collect();
    assert_eq!(before, after, "no half-created objects on any member");
    // Public objects need no cloning key and still replicate.
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Label(b"note".to_vec()),
        Attribute::Value(b"hello".to_vec()),
    ])
    .unwrap();
    drop(s);
    drop(ha);
    for (i, n) in before.iter().enumerate() {
        assert_eq!(
            cluster.direct_client(i).count_objects().unwrap(),
            n + 1,
            "m{i}"
        );
    }
}

/// AES-ECB of [`BLOCK`] with the AES key `id`, on member `i` directly (through its p11-kit server).
fn encrypt_on(cluster: &Cluster, i: usize, id: u8) -> Vec<u8> {
    let c = cluster.client(i);
    let ms = c.session().unwrap();
    let k = by_id(&ms, ObjectClass::SECRET_KEY, id);
    assert_eq!(k.len(), 1, "m{i} holds AES key {id:#x} once");
    ms.encrypt(&Mechanism::AesEcb, k[0], &BLOCK).unwrap()
}

/// Behind p11-kit servers: p11-kit's RPC carries no AES key wrap, so secret keys travel with
/// RSA-OAEP to each receiving member's own key pair, on creation and at reintroduction; private
/// keys cannot travel at all, and creating one fails cleanly instead of living on one member.
#[test]
fn behind_p11_kit_secret_keys_replicate_and_private_keys_are_refused_cleanly() {
    let _g = serial();
    let (cluster, conf) = synced(3, false);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    // p11ha's own keys are not the application's.
    let cloning = [Attribute::Label(b"p11ha-cloning-key".to_vec())];
    assert!(s.find_objects(&cloning).unwrap().is_empty());
    assert_eq!(
        cluster
            .client(0)
            .session()
            .unwrap()
            .find_objects(&cloning)
            .unwrap()
            .len(),
        5
    );
    // Non-extractable: the members hold it wrap-with-trusted, which the trusted RSA keys may wrap.
    aes_key(&s, AES, false).unwrap();
    let reference = encrypt_on(&cluster, 0, AES);
    for i in 1..3 {
        assert_eq!(
            encrypt_on(&cluster, i, AES),
            reference,
            "m{i} has the same key"
        );
    }

    let before: Vec<usize> = (0..3)
        .map(|i| cluster.client(i).count_objects().unwrap())
        .collect();
    let lines = cluster.ha_log_lines().len();
    for (what, r) in [("RSA", rsa_pair(&s, RSA)), ("EC", ec_pair(&s, EC))] {
        // Not CKR_MECHANISM_INVALID: the application's mechanism is fine, a member cannot
        // receive the key.
        assert!(
            matches!(r, Err(Error::Pkcs11(RvError::FunctionFailed, _))),
            "{what} key pair that cannot be cloned: {r:?}"
        );
    }
    let after: Vec<usize> = (0..3)
        .map(|i| cluster.client(i).count_objects().unwrap())
        .collect();
    assert_eq!(before, after, "no half-created key pairs on any member");
    // The HA log names the member and the mechanism it refused.
    let refused: Vec<String> = cluster
        .ha_log_lines()
        .into_iter()
        .skip(lines)
        .filter(|l| l.contains("refused CKM_AES_KEY_WRAP_PAD"))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(
        cluster
            .members
            .iter()
            .any(|m| refused[0].contains(&format!("member: {} refused", m.serial))),
        "{refused:#?}"
    );

    // A secret key made while m2 is down reaches it at reintroduction.
    let lines = cluster.ha_log_lines().len();
    cluster.kill(2);
    aes_key(&s, AES + 0x10, true).unwrap();
    let made_while_down = encrypt_on(&cluster, 0, AES + 0x10);
    cluster.restart(2);
    let line = wait_recovered(&cluster, 2, lines);
    assert_eq!(reintroduced_count(&line), 1, "{line}");
    assert_eq!(encrypt_on(&cluster, 2, AES + 0x10), made_while_down);
    // The key m2 already had is recognised as a twin, not copied again.
    assert_eq!(encrypt_on(&cluster, 2, AES), reference);
    // And m2 alone serves both keys through the group.
    cluster.kill(0);
    cluster.kill(1);
    let k = by_id(&s, ObjectClass::SECRET_KEY, AES)[0];
    assert_eq!(s.encrypt(&Mechanism::AesEcb, k, &BLOCK).unwrap(), reference);
}

#[test]
fn synchronize_copies_objects_imported_into_one_member() {
    let _g = serial();
    let (cluster, conf) = synced(3, false);
    {
        let c = cluster.client(1);
        let ms = c.session().unwrap();
        note(&ms, "imported");
    }
    let out = cli(&conf, &[], &[("P11HA_PIN", USER_PIN)]);
    assert!(out.contains("2 objects copied"), "{out}");
    for i in 0..3 {
        let c = cluster.client(i);
        assert_eq!(notes(&c.session().unwrap(), "imported"), 1, "m{i}");
    }
    let out = cli(&conf, &[], &[("P11HA_PIN", USER_PIN)]);
    assert!(out.contains(" 0 objects copied"), "nothing twice: {out}");
    let out = cli(&conf, &["-init-cloning-key"], &[("P11HA_SO_PIN", SO_PIN)]);
    assert!(
        out.contains("never overwritten"),
        "{out}\nHA log: {:#?}",
        cluster.ha_log_lines()
    );
}

/// The values of the records (`p11ha-owed` objects) member `i` holds, read through its server
/// with the user logged in.
fn records_on(cluster: &Cluster, i: usize) -> Vec<String> {
    let c = cluster.client(i);
    let ms = c.session().unwrap();
    ms.find_objects(&[Attribute::Label(b"p11ha-owed".to_vec())])
        .unwrap()
        .into_iter()
        .map(
            |h| match &ms.get_attributes(h, &[AttributeType::Value]).unwrap()[..] {
                [Attribute::Value(v)] => String::from_utf8(v.clone()).unwrap(),
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

/// Three members, synchronization on, no cloning key (data objects need none). A first
/// "process" (C_Initialize to C_Finalize) makes notes "doomed" and "before", kills m2, destroys
/// "doomed" and runs `more` (given "before") while m2 is down. m2 is not restarted.
fn destroyed_while_m2_was_down(
    more: impl FnOnce(&Session, ObjectHandle),
) -> (Cluster, std::path::PathBuf) {
    let cluster = Cluster::started(3);
    let conf = cluster.write_config(&ConfigOpts {
        ha_synchronize: Some(true),
        ..Default::default()
    });
    {
        let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
        let s = ha.session().unwrap();
        let doomed = note(&s, "doomed");
        let before = note(&s, "before");
        cluster.kill(2);
        s.destroy_object(doomed).unwrap();
        more(&s, before);
    } // C_Finalize: what this "process" remembered in memory is gone.
    (cluster, conf)
}

#[test]
fn what_a_down_member_missed_reaches_it_after_the_process_that_made_it_is_gone() {
    let _g = serial();
    let (cluster, conf) = destroyed_while_m2_was_down(|s, before| {
        s.update_attributes(before, &[Attribute::Label(b"after".to_vec())])
            .unwrap();
        note(s, "born");
    });
    // On each live member: the destroy, the change, the creation, written before each call
    // returned. No file anywhere: the log directory holds the HA log only.
    for i in 0..2 {
        let recs = records_on(&cluster, i);
        assert_eq!(
            recs.len(),
            3,
            "destroy, change, creation on m{i}: {recs:#?}"
        );
        let text = recs.join("\n");
        // Identities (labels are part of them) and attribute types, never an object's value.
        assert!(
            text.contains(&hex(b"after")),
            "the changed object's identity: {text}"
        );
        assert!(!text.contains(&hex(b"born")), "{text}");
    }
    let files: Vec<_> = std::fs::read_dir(cluster.log_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("haErrorLog") && !n.starts_with(".haErrorLog"))
        .collect();
    assert!(files.is_empty(), "{files:?}");

    cluster.restart(2);
    {
        let c = cluster.client(2);
        let ms = c.session().unwrap();
        assert_eq!(
            (
                notes(&ms, "doomed"),
                notes(&ms, "before"),
                notes(&ms, "born")
            ),
            (1, 1, 0),
            "m2 as it was when it went down"
        );
    }

    // The next run finds m2 up but owed changes: its C_Login settles them before returning.
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    {
        let c = cluster.client(2);
        let ms = c.session().unwrap();
        assert_eq!(notes(&ms, "doomed"), 0, "destroyed on m2");
        assert_eq!(notes(&ms, "before"), 0, "renamed on m2");
        let after = ms
            .find_objects(&[Attribute::Label(b"after".to_vec())])
            .unwrap();
        assert_eq!(after.len(), 1, "renamed on m2");
        assert_eq!(
            ms.get_attributes(after[0], &[AttributeType::Value])
                .unwrap(),
            vec![Attribute::Value(b"before".to_vec())],
            "the same object, renamed"
        );
        assert_eq!(notes(&ms, "born"), 1, "created on m2, once");
    }
    for i in 0..3 {
        assert_eq!(
            records_on(&cluster, i),
            Vec::<String>::new(),
            "m{i}: everything settled"
        );
    }
    // m2 alone serves what the group has, and nothing it should not.
    cluster.kill(0);
    cluster.kill(1);
    assert_eq!(
        (notes(&s, "doomed"), notes(&s, "after"), notes(&s, "born")),
        (0, 1, 1)
    );
}

#[test]
fn a_member_owed_a_destroy_never_hands_the_object_back() {
    let _g = serial();
    let (cluster, conf) = destroyed_while_m2_was_down(|_, _| {});
    cluster.restart(2);
    // `p11ha synchronize` in another process, all members up: m2 still holds "doomed" but is
    // owed its destroy, so it is caught up, not copied from.
    let out = cli(&conf, &[], &[("P11HA_PIN", USER_PIN)]);
    assert!(out.contains("No Error"), "{out}");
    for i in 0..3 {
        let c = cluster.client(i);
        assert_eq!(notes(&c.session().unwrap(), "doomed"), 0, "m{i}: {out}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A key pair made while only m0 was up cannot travel to a member behind p11-kit (its RPC
/// carries no CKM_AES_KEY_WRAP_PAD): the reintroduction says so in the HA log, with the count
/// and the first object and reason, not only on some process's stderr.
#[test]
fn objects_a_returning_member_cannot_receive_are_counted_in_the_ha_log() {
    let _g = serial();
    let (cluster, conf) = synced(3, false);
    let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
    let s = ha.session().unwrap();
    cluster.kill(1);
    cluster.kill(2);
    // Calls through the group find out that m1 and m2 are gone; m0 alone takes the pair.
    let made = wait_until(Duration::from_secs(10), || rsa_pair(&s, RSA).is_ok());
    assert!(made, "{:#?}", cluster.ha_log_lines());
    let lines = cluster.ha_log_lines().len();
    cluster.restart(2);
    let m2 = cluster.members[2].serial.clone();
    let needle = format!("token objects to recovered token {m2}. First: ");
    let mut line = None;
    wait_until(Duration::from_secs(20), || {
        line = cluster
            .ha_log_lines()
            .into_iter()
            .skip(lines)
            .find(|l| l.contains("could not copy") && l.contains(&needle));
        line.is_some()
    });
    let line = line.unwrap_or_else(|| panic!("no not-copied line: {:#?}", cluster.ha_log_lines()));
    // The private key could not travel; its public half could.
    assert!(line.contains("could not copy 1 token objects"), "{line}");
    assert!(line.contains("(id 52)"), "{line}");
    assert!(line.contains("CKR_MECHANISM_INVALID"), "{line}");
    let public_on_m2 = cluster
        .client(2)
        .session()
        .unwrap()
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Id(vec![RSA]),
        ])
        .unwrap()
        .len();
    assert_eq!(public_on_m2, 1, "{:#?}", cluster.ha_log_lines());
    cluster.restart(1);
}

/// `p11ha synchronize -check` tells in advance, per member pair, what replication then does:
/// behind p11-kit (no CKM_AES_KEY_WRAP_PAD in its RPC) secret keys travel by RSA-OAEP and
/// private keys do not; members reached directly take both by AES key wrap. Checked against
/// what the group then does with each kind of key.
#[test]
fn check_says_in_advance_which_keys_travel_between_which_members() {
    let _g = serial();
    for direct in [false, true] {
        let (cluster, conf) = synced(3, direct);
        let out = cli(&conf, &["-check"], &[("P11HA_PIN", USER_PIN)]);
        let serials: Vec<&String> = cluster.members.iter().map(|m| &m.serial).collect();
        let pairs: Vec<&str> = out.lines().filter(|l| l.contains(" -> ")).collect();
        assert_eq!(pairs.len(), 6, "every ordered pair of 3 members: {out}");
        for a in &serials {
            for b in serials.iter().filter(|b| *b != a) {
                let line = pairs
                    .iter()
                    .find(|l| l.trim_start().starts_with(&format!("{a} -> {b}:")))
                    .unwrap_or_else(|| panic!("no line for {a} -> {b}: {out}"));
                let expected = if direct {
                    "secret keys yes (CKM_AES_KEY_WRAP_PAD); private keys yes (CKM_AES_KEY_WRAP_PAD)."
                } else {
                    "secret keys yes (CKM_RSA_PKCS_OAEP); private keys no ("
                };
                assert!(line.contains(expected), "direct = {direct}: {line}");
            }
        }
        // What the group then does agrees.
        let ha = cluster.ha_client(&conf, GROUP_LABEL).unwrap();
        let s = ha.session().unwrap();
        aes_key(&s, AES, true).unwrap();
        assert_eq!(
            rsa_pair(&s, RSA).is_ok(),
            direct,
            "a key pair replicates exactly where -check said private keys travel"
        );
    }
}
