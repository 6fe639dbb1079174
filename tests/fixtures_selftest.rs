//! Tests of the test fixtures themselves, against SoftHSM directly and through p11-kit-client.

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use support::clients::CLIENTS;
use support::*;

fn is_device_error<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Pkcs11(RvError::DeviceError, _)))
}

#[test]
fn tokens_have_distinct_serials_and_identical_keys() {
    let c = Cluster::started(2);
    let s = c.serials();
    assert_eq!(s.len(), 2);
    assert_ne!(s[0], s[1]);
    for (m, serial) in c.members.iter().zip(&s) {
        assert_eq!(serial.len(), 16, "{serial}");
        assert!(serial.chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_eq!(m.slot_id, u64::from_str_radix(&serial[8..], 16).unwrap());
    }
    let (m0, m1) = (c.client(0), c.client(1));
    assert_eq!(m0.token_serial().unwrap(), s[0]);
    assert_eq!(m1.token_serial().unwrap(), s[1]);
    // rsa priv/pub/cert, ec priv/pub, aes, hmac
    assert_eq!(m0.count_objects().unwrap(), 7);
    assert_eq!(m1.count_objects().unwrap(), 7);

    // RSA: sign on m0, verify with m1's public key.
    let data = b"p11ha fixture self-test";
    let sig = m0.sign_rsa(data).unwrap();
    assert!(c.verify_rsa_on(1, data, &sig));
    assert!(!m1.verify_rsa(b"other data", &sig));

    let (s0, s1) = (m0.session().unwrap(), m1.session().unwrap());
    // Private and secret keys are private, sensitive, usable.
    for (class, id) in [
        (ObjectClass::PRIVATE_KEY, RSA_ID),
        (ObjectClass::PRIVATE_KEY, EC_ID),
        (ObjectClass::SECRET_KEY, AES_ID),
        (ObjectClass::SECRET_KEY, HMAC_ID),
    ] {
        let k = m0.find(&s0, class, id).unwrap();
        let a = s0
            .get_attributes(
                k,
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                ],
            )
            .unwrap();
        for attr in a {
            match attr {
                Attribute::Token(b) | Attribute::Private(b) | Attribute::Sensitive(b) => {
                    assert!(b, "{class:?} {id}: {attr:?}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    // EC: CKM_ECDSA over a SHA-256 digest on m0, verified on m1.
    let digest = m0
        .session()
        .unwrap()
        .digest(&Mechanism::Sha256, data)
        .unwrap();
    let k0 = m0.find(&s0, ObjectClass::PRIVATE_KEY, EC_ID).unwrap();
    let esig = s0.sign(&Mechanism::Ecdsa, k0, &digest).unwrap();
    let p1 = m1.find(&s1, ObjectClass::PUBLIC_KEY, EC_ID).unwrap();
    s1.verify(&Mechanism::Ecdsa, p1, &digest, &esig).unwrap();

    // HMAC: same key, same MAC.
    let h0 = m0.find(&s0, ObjectClass::SECRET_KEY, HMAC_ID).unwrap();
    let h1 = m1.find(&s1, ObjectClass::SECRET_KEY, HMAC_ID).unwrap();
    let mac0 = s0.sign(&Mechanism::Sha256Hmac, h0, data).unwrap();
    assert_eq!(mac0, s1.sign(&Mechanism::Sha256Hmac, h1, data).unwrap());

    // AES: encrypt on m0, decrypt on m1. ECB, because p11-kit-client 0.24 cannot carry
    // mechanism parameters: CBC/CBC-PAD/GCM give CKR_MECHANISM_INVALID through it.
    let a0 = m0.find(&s0, ObjectClass::SECRET_KEY, AES_ID).unwrap();
    let a1 = m1.find(&s1, ObjectClass::SECRET_KEY, AES_ID).unwrap();
    let block = [0x5au8; 32];
    let ct = s0.encrypt(&Mechanism::AesEcb, a0, &block).unwrap();
    assert_ne!(ct, block);
    assert_eq!(s1.decrypt(&Mechanism::AesEcb, a1, &ct).unwrap(), block);
    let r = s0.encrypt(&Mechanism::AesCbcPad([7u8; 16]), a0, data);
    assert!(
        matches!(r, Err(Error::Pkcs11(RvError::MechanismInvalid, _))),
        "p11-kit-client now carries AES-CBC-PAD IVs? {r:?}"
    );

    // Public key and certificate are the generated ones.
    let cert = std::fs::read(&c.keys.rsa_cert_der).unwrap();
    assert_eq!(m1.value_of(ObjectClass::CERTIFICATE, RSA_ID).unwrap(), cert);
}

#[test]
fn kill_gives_device_error_and_restart_recovers() {
    let c = Cluster::started(1);
    let m = c.client(0);
    let serial = m.token_serial().unwrap();
    let s = m.session().unwrap();
    c.kill(0);
    assert!(!c.is_running(0));
    let t = Instant::now();
    let r = m.pkcs11.get_token_info(m.slot);
    assert!(is_device_error(&r), "{r:?}");
    let r = s.find_objects(&[]);
    assert!(is_device_error(&r), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(s);
    drop(m);

    c.restart(0);
    assert!(c.is_running(0));
    let m = c.client(0);
    assert_eq!(m.token_serial().unwrap(), serial);
    let sig = m.sign_rsa(b"x").unwrap();
    assert!(m.verify_rsa(b"x", &sig));
}

#[test]
fn stop_blocks_and_cont_releases() {
    let c = Cluster::started(1);
    let m = c.client(0);
    m.token_serial().unwrap();
    c.stop(0);
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let r = m.token_serial();
        let _ = tx.send(r);
        m
    });
    assert!(
        matches!(
            rx.recv_timeout(Duration::from_millis(1500)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ),
        "call to a SIGSTOPped member returned"
    );
    c.cont(0);
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("call not released by SIGCONT");
    assert_eq!(r.unwrap(), c.members[0].serial);
    drop(h.join().unwrap());
}

#[test]
fn drop_leaves_no_process_and_no_dir() {
    let c = Cluster::started(2);
    {
        // Connections make the servers fork p11-kit-remote children.
        let (a, b) = (c.client(0), c.client(1));
        a.count_objects().unwrap();
        b.count_objects().unwrap();
    }
    let _held = c.client(0); // a connection still open at drop time
    c.restart(1);
    c.stop(1); // a stopped group must be killed too
    let pgids = c.started_pgids();
    assert_eq!(pgids.len(), 3);
    let dir = c.dir().to_path_buf();
    let running: Vec<i32> = pgids.iter().copied().filter(|&p| pid_alive(p)).collect();
    assert_eq!(running.len(), 2, "two servers alive before drop");
    drop(c);
    for pg in pgids {
        assert!(live_pids_in_group(pg).is_empty(), "group {pg} left behind");
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn write_config_luna_format() {
    let c = Cluster::new(2);
    let p = c.write_config(&ConfigOpts::default());
    assert!(p.starts_with(c.dir()));
    let t = std::fs::read_to_string(&p).unwrap();
    let s = c.serials();
    assert!(
        t.contains(&format!("VirtualToken00Members = {}, {};", s[0], s[1])),
        "{t}"
    );
    assert!(t.contains("VirtualToken00Label = hagroup;"));
    assert!(!t.contains("VirtualToken00SN"));
    assert!(t.contains("HAOnly = 1;"));
    assert!(t.contains(&format!(
        "Provider01Env = P11_KIT_SERVER_ADDRESS=unix:path={}/m1.sock;",
        c.dir().display()
    )));
    assert!(c.log_dir().is_dir());
    assert_eq!(c.ha_log_path(), c.dir().join("log/haErrorLog.txt"));
    assert!(c.ha_log_lines().is_empty());

    let o = ConfigOpts {
        direct: true,
        group_serial: Some("1234".into()),
        ha_only: false,
        members: Some(vec![1]),
        extra_lines: vec!["HASynchronize = { hagroup = 1; }".into()],
        file_name: "direct.conf".into(),
        ..Default::default()
    };
    let t = std::fs::read_to_string(c.write_config(&o)).unwrap();
    assert!(t.contains("VirtualToken00SN = 1234;"));
    assert!(t.contains(&format!("VirtualToken00Members = {};", s[1])));
    assert!(t.contains("HAOnly = 0;"));
    assert!(t.contains(&format!(
        "Provider00Library = {}/lib/softhsm-m0.so;",
        c.dir().display()
    )));
    assert!(t.contains(&format!(
        "Provider01Env = SOFTHSM2_CONF={};",
        c.members[1].conf.display()
    )));
    assert!(t.trim_end().ends_with("HASynchronize = { hagroup = 1; }"));
    assert!(c.softhsm_copy(1).exists());
}

#[test]
fn direct_softhsm_copies_are_independent_instances() {
    let c = Cluster::new(2);
    let (a, b) = (c.direct_client(0), c.direct_client(1));
    assert_eq!(a.token_serial().unwrap(), c.members[0].serial);
    assert_eq!(b.token_serial().unwrap(), c.members[1].serial);
    let sig = a.sign_rsa(b"direct").unwrap();
    assert!(b.verify_rsa(b"direct", &sig));
    // Directly, SoftHSM takes AES-CBC-PAD with an IV (unlike through p11-kit-client).
    let (sa, sb) = (a.session().unwrap(), b.session().unwrap());
    let ka = a.find(&sa, ObjectClass::SECRET_KEY, AES_ID).unwrap();
    let kb = b.find(&sb, ObjectClass::SECRET_KEY, AES_ID).unwrap();
    let iv = [9u8; 16];
    let ct = sa
        .encrypt(&Mechanism::AesCbcPad(iv), ka, b"direct data")
        .unwrap();
    assert_eq!(
        sb.decrypt(&Mechanism::AesCbcPad(iv), kb, &ct).unwrap(),
        b"direct data"
    );
}

#[test]
fn p11ha_lib_is_found() {
    let p = p11ha_lib();
    assert!(p.exists(), "{}", p.display());
    assert!(p.ends_with("libp11ha.so"));
}

#[test]
fn c_client_signs_via_p11kit_client() {
    let c = Cluster::started(1);
    let exe = c.build_c_client();
    let mut cmd = c_client_cmd(
        &exe,
        Path::new(P11KIT_CLIENT_LIB),
        "m0",
        &["-n", "2", "-d", "2"],
    );
    cmd.env("P11_KIT_SERVER_ADDRESS", c.members[0].address());
    let r = run_cmd(cmd, Duration::from_secs(30));
    r.assert_ok();
    let (ok, failed) = c_client_counts(&r.stdout).expect("summary");
    eprintln!("C client, 2 threads, 2 s via p11-kit-client: ok={ok} failed={failed}");
    assert!(ok > 0);
    assert_eq!(failed, 0);
}

#[test]
fn real_clients_against_softhsm_directly() {
    let c = Cluster::new(1);
    let conf = c.members[0].conf.clone();
    for name in CLIENTS {
        let r = run_client_env(
            name,
            Path::new(SOFTHSM_LIB),
            "m0",
            &[("SOFTHSM2_CONF", conf.as_os_str())],
        );
        eprintln!("{name} against SoftHSM: {:?} in {:?}", r.status, r.elapsed);
        r.assert_ok();
    }
}

#[test]
fn real_clients_via_p11kit_client() {
    let c = Cluster::started(1);
    let addr = c.members[0].address();
    for name in CLIENTS {
        let r = run_client_env(
            name,
            Path::new(P11KIT_CLIENT_LIB),
            "m0",
            &[("P11_KIT_SERVER_ADDRESS", OsStr::new(&addr))],
        );
        eprintln!(
            "{name} via p11-kit-client: {:?} in {:?}",
            r.status, r.elapsed
        );
        r.assert_ok();
    }
}

#[test]
fn real_client_failure_is_reported() {
    let c = Cluster::new(1);
    let conf = c.members[0].conf.clone();
    let r = run_client_env(
        "pkcs11-tool",
        Path::new(SOFTHSM_LIB),
        "no-such-token",
        &[("SOFTHSM2_CONF", conf.as_os_str())],
    );
    assert!(!r.success());
    assert!(r.stderr.contains("FAIL"), "{}", r.describe());
}
