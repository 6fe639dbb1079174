//! SoftHSM member tokens with identical keys: key material made once with openssl, then per
//! token `softhsm2-util --init-token`, its serial read back, keys written with pkcs11-tool and
//! the secret keys imported with PyKCS11.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::clients::checked;
use crate::{SOFTHSM_LIB, SO_PIN, USER_PIN};

/// Key material generated once and imported into every token, and `n` tokens `m0..m(n-1)`
/// made from it under `dir` (`keys/`, `tokens/`, `m<i>.softhsm2.conf`), in parallel.
pub fn tokens(dir: &Path, n: usize) -> (KeyMaterial, Vec<Member>) {
    let keys = KeyMaterial::generate(&dir.join("keys"));
    let members = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let k = &keys;
                s.spawn(move || provision(dir, i, k))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("provisioning"))
            .collect()
    });
    (keys, members)
}

/// Key material generated once per cluster and imported into every member.
#[derive(Debug, Clone)]
pub struct KeyMaterial {
    pub dir: PathBuf,
    /// RSA-2048 private key, PKCS#8 PEM.
    pub rsa_pem: PathBuf,
    /// RSA public key, SubjectPublicKeyInfo PEM / DER.
    pub rsa_pub_pem: PathBuf,
    pub rsa_pub_der: PathBuf,
    /// Self-signed certificate (CN=p11ha-test) for the RSA key, DER.
    pub rsa_cert_der: PathBuf,
    /// EC P-256 private key, PKCS#8 PEM.
    pub ec_pem: PathBuf,
    pub ec_pub_pem: PathBuf,
    pub ec_pub_der: PathBuf,
    /// AES-256 key and HMAC key (32 random bytes each).
    pub aes: Vec<u8>,
    pub hmac: Vec<u8>,
}

impl KeyMaterial {
    /// RSA-2048 and EC P-256 keys (PEM and DER), a certificate, AES and HMAC keys in `dir`.
    pub fn generate(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let p = |n: &str| dir.join(n);
        let openssl = |args: &[&str]| {
            let mut c = Command::new("openssl");
            c.args(args).current_dir(dir);
            checked(c);
        };
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ]);
        openssl(&["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub.pem"]);
        openssl(&[
            "pkey",
            "-in",
            "rsa.pem",
            "-pubout",
            "-outform",
            "DER",
            "-out",
            "rsa.pub.der",
        ]);
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            "rsa.pem",
            "-subj",
            "/CN=p11ha-test",
            "-days",
            "3650",
            "-outform",
            "DER",
            "-out",
            "rsa.crt.der",
        ]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ]);
        openssl(&["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub.pem"]);
        openssl(&[
            "pkey",
            "-in",
            "ec.pem",
            "-pubout",
            "-outform",
            "DER",
            "-out",
            "ec.pub.der",
        ]);
        let random = |n: usize| {
            let mut b = vec![0u8; n];
            fs::File::open("/dev/urandom")
                .unwrap()
                .read_exact(&mut b)
                .unwrap();
            b
        };
        let (aes, hmac) = (random(32), random(32));
        fs::write(p("aes.bin"), &aes).unwrap();
        fs::write(p("hmac.bin"), &hmac).unwrap();
        KeyMaterial {
            dir: dir.to_path_buf(),
            rsa_pem: p("rsa.pem"),
            rsa_pub_pem: p("rsa.pub.pem"),
            rsa_pub_der: p("rsa.pub.der"),
            rsa_cert_der: p("rsa.crt.der"),
            ec_pem: p("ec.pem"),
            ec_pub_pem: p("ec.pub.pem"),
            ec_pub_der: p("ec.pub.der"),
            aes,
            hmac,
        }
    }
}

/// One member token.
#[derive(Debug)]
pub struct Member {
    pub index: usize,
    /// Token label, `m<index>`.
    pub label: String,
    /// Token serial (16 hex characters): how p11ha identifies the member.
    pub serial: String,
    /// SoftHSM slot ID of the token (last 8 hex digits of the serial).
    pub slot_id: u64,
    pub token_dir: PathBuf,
    /// This member's softhsm2.conf (set as SOFTHSM2_CONF for anything opening it).
    pub conf: PathBuf,
    /// Socket of its p11-kit server.
    pub sock: PathBuf,
}

impl Member {
    /// `P11_KIT_SERVER_ADDRESS` value for this member's server.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.sock.display())
    }
}

/// Python/PyKCS11 snippet importing the AES and HMAC secret keys (pkcs11-tool 0.23 cannot
/// write CKK_GENERIC_SECRET objects). argv: module label pin aes.bin hmac.bin
const IMPORT_SECRETS_PY: &str = r#"
import sys, PyKCS11
from PyKCS11 import *
lib = PyKCS11Lib(); lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == sys.argv[2]][0]
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(sys.argv[3])
for path, kt, kid, label in ((sys.argv[4], CKK_AES, 3, "aes"), (sys.argv[5], CKK_GENERIC_SECRET, 4, "hmac")):
    value = open(path, "rb").read()
    s.createObject([
        (CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, kt), (CKA_TOKEN, CK_TRUE), (CKA_PRIVATE, CK_TRUE),
        (CKA_SENSITIVE, CK_TRUE), (CKA_EXTRACTABLE, CK_FALSE), (CKA_ID, (kid,)), (CKA_LABEL, label),
        (CKA_VALUE, tuple(value)), (CKA_SIGN, CK_TRUE), (CKA_VERIFY, CK_TRUE),
        (CKA_ENCRYPT, CK_TRUE), (CKA_DECRYPT, CK_TRUE),
    ])
s.logout(); s.closeSession()
"#;

/// Create, initialize and fill token `m<i>` under `dir` with `keys`.
pub fn provision(dir: &Path, i: usize, keys: &KeyMaterial) -> Member {
    let label = format!("m{i}");
    let token_dir = dir.join("tokens").join(&label);
    fs::create_dir_all(&token_dir).unwrap();
    let conf = dir.join(format!("{label}.softhsm2.conf"));
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            token_dir.display()
        ),
    )
    .unwrap();
    let util = |args: &[&str]| {
        let mut c = Command::new("softhsm2-util");
        c.args(args).env("SOFTHSM2_CONF", &conf);
        checked(c)
    };
    util(&[
        "--init-token",
        "--free",
        "--label",
        &label,
        "--so-pin",
        SO_PIN,
        "--pin",
        USER_PIN,
    ]);
    let serial = parse_serial(&util(&["--show-slots"]), &label)
        .unwrap_or_else(|| panic!("no serial for token {label}"));
    let slot_id = u64::from_str_radix(&serial[serial.len().saturating_sub(8)..], 16).unwrap();

    let write = |file: &Path, ty: &str, id: &str, usage: &[&str]| {
        let mut c = Command::new("pkcs11-tool");
        c.args([
            "--module",
            SOFTHSM_LIB,
            "--token-label",
            &label,
            "--login",
            "--pin",
            USER_PIN,
        ])
        .arg("--write-object")
        .arg(file)
        .args(["--type", ty, "--id", id, "--label"])
        .arg(match id {
            "01" => "rsa",
            _ => "ec",
        })
        .args(usage)
        .env("SOFTHSM2_CONF", &conf);
        checked(c);
    };
    let priv_usage = [
        "--usage-sign",
        "--usage-decrypt",
        "--private",
        "--sensitive",
    ];
    write(&keys.rsa_pem, "privkey", "01", &priv_usage);
    write(&keys.rsa_pub_der, "pubkey", "01", &[]);
    write(&keys.rsa_cert_der, "cert", "01", &[]);
    write(&keys.ec_pem, "privkey", "02", &priv_usage);
    write(&keys.ec_pub_der, "pubkey", "02", &[]);

    let mut py = Command::new("/usr/bin/python3");
    py.args(["-c", IMPORT_SECRETS_PY, SOFTHSM_LIB, &label, USER_PIN])
        .arg(keys.dir.join("aes.bin"))
        .arg(keys.dir.join("hmac.bin"))
        .env("SOFTHSM2_CONF", &conf);
    checked(py);

    Member {
        index: i,
        sock: dir.join(format!("{label}.sock")),
        label,
        serial,
        slot_id,
        token_dir,
        conf,
    }
}

/// Serial of the token labelled `label` in `softhsm2-util --show-slots` output.
pub fn parse_serial(out: &str, label: &str) -> Option<String> {
    let mut last_serial = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Serial number:") {
            last_serial = Some(v.trim().to_string());
        } else if let Some(v) = t.strip_prefix("Label:") {
            if v.trim() == label {
                return last_serial.filter(|s| !s.is_empty());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::parse_serial;

    const SHOW_SLOTS: &str = "Available slots:\n\
Slot 1234\n    Slot info:\n        Token present:    yes\n    Token info:\n\
        Label:            m0\n        Serial number:    ignored\n\
Slot 5678\n    Token info:\n        Serial number:    a1b2c3d4e5f60718\n\
        Label:            m1\n\
Slot 9\n    Token info:\n        Serial number:    \n        Label:            m2\n";

    #[test]
    fn the_serial_is_the_one_listed_before_the_label() {
        // softhsm2-util prints "Serial number:" before "Label:" within one token.
        assert_eq!(parse_serial(SHOW_SLOTS, "m0"), None);
        assert_eq!(
            parse_serial(SHOW_SLOTS, "m1").as_deref(),
            Some("a1b2c3d4e5f60718")
        );
        assert_eq!(parse_serial(SHOW_SLOTS, "m2"), None, "empty serial");
        assert_eq!(parse_serial(SHOW_SLOTS, "m3"), None);
    }
}
