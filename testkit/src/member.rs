//! Direct (non-HA) cryptoki access to one member, for cross-checks.
//!
//! p11-kit-client reads `P11_KIT_SERVER_ADDRESS` in C_GetFunctionList (cryptoki's `Pkcs11::new`)
//! and SoftHSM reads `SOFTHSM2_CONF` in C_Initialize, so both are opened with the variable set
//! under [`with_env_lock`]. Any test code that sets environment variables for a module it loads
//! in-process (`P11HA_CONF` too) should do it through the same lock.

use std::path::Path;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Result;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::{P11KIT_CLIENT_LIB, RSA_ID, USER_PIN};

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Run `f` with the given environment variables set (None: removed), restoring the previous
/// values afterwards, under a process-wide lock.
pub fn with_env_lock<R>(vars: &[(&str, Option<&str>)], f: impl FnOnce() -> R) -> R {
    let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let saved: Vec<_> = vars
        .iter()
        .map(|(k, _)| (*k, std::env::var_os(k)))
        .collect();
    for (k, v) in vars {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// One initialized module instance with the slot of one token. C_Finalize on drop.
pub struct MemberClient {
    pub pkcs11: Pkcs11,
    pub slot: Slot,
}

impl MemberClient {
    /// Load `module` with `env` set, C_Initialize (OS locking), and find the token `label`.
    pub fn open(module: &Path, label: &str, env: &[(&str, Option<&str>)]) -> Result<Self> {
        let pkcs11 = with_env_lock(env, || -> Result<Pkcs11> {
            let p = Pkcs11::new(module)?;
            p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
            Ok(p)
        })?;
        let mut found = None;
        for s in pkcs11.get_slots_with_token()? {
            if pkcs11.get_token_info(s)?.label() == label {
                found = Some(s);
                break;
            }
        }
        match found {
            Some(slot) => Ok(MemberClient { pkcs11, slot }),
            None => {
                let _ = pkcs11.finalize();
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::TokenNotPresent,
                    cryptoki::context::Function::GetSlotList,
                ))
            }
        }
    }

    /// Through p11-kit-client to the server at `address` (`unix:path=...`).
    pub fn via_p11kit(address: &str, label: &str) -> Result<Self> {
        Self::open(
            Path::new(P11KIT_CLIENT_LIB),
            label,
            &[("P11_KIT_SERVER_ADDRESS", Some(address))],
        )
    }

    /// Through a private copy of libsofthsm2.so with `SOFTHSM2_CONF=conf`.
    pub fn via_softhsm(lib_copy: &Path, conf: &Path, label: &str) -> Result<Self> {
        let conf = conf.to_str().expect("utf-8 path");
        Self::open(lib_copy, label, &[("SOFTHSM2_CONF", Some(conf))])
    }

    pub fn token_serial(&self) -> Result<String> {
        Ok(self
            .pkcs11
            .get_token_info(self.slot)?
            .serial_number()
            .to_string())
    }

    /// A read-write session logged in as user.
    pub fn session(&self) -> Result<Session> {
        let s = self.pkcs11.open_rw_session(self.slot)?;
        match s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => return Err(e),
        }
        Ok(s)
    }

    /// Number of objects visible after login.
    pub fn count_objects(&self) -> Result<usize> {
        Ok(self.session()?.find_objects(&[])?.len())
    }

    /// The object of `class` with CKA_ID `[id]` (panics unless exactly one).
    pub fn find(&self, s: &Session, class: ObjectClass, id: u8) -> Result<ObjectHandle> {
        let v = s.find_objects(&[Attribute::Class(class), Attribute::Id(vec![id])])?;
        assert_eq!(
            v.len(),
            1,
            "expected one {class:?} with id {id:02x}, found {}",
            v.len()
        );
        Ok(v[0])
    }

    /// CKM_SHA256_RSA_PKCS signature with the RSA private key (id 01).
    pub fn sign_rsa(&self, data: &[u8]) -> Result<Vec<u8>> {
        let s = self.session()?;
        let k = self.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID)?;
        s.sign(&Mechanism::Sha256RsaPkcs, k, data)
    }

    /// Verify a CKM_SHA256_RSA_PKCS signature with this member's RSA public key (id 01).
    pub fn verify_rsa(&self, data: &[u8], sig: &[u8]) -> bool {
        let s = self.session().expect("session");
        let k = self
            .find(&s, ObjectClass::PUBLIC_KEY, RSA_ID)
            .expect("rsa public key");
        s.verify(&Mechanism::Sha256RsaPkcs, k, data, sig).is_ok()
    }

    /// CKA_VALUE of the object of `class` with CKA_ID `[id]` (public keys, certificates).
    pub fn value_of(&self, class: ObjectClass, id: u8) -> Result<Vec<u8>> {
        let s = self.session()?;
        let k = self.find(&s, class, id)?;
        let attrs = s.get_attributes(k, &[AttributeType::Value])?;
        match attrs.into_iter().next() {
            Some(Attribute::Value(v)) => Ok(v),
            other => panic!("no CKA_VALUE: {other:?}"),
        }
    }
}

impl Drop for MemberClient {
    fn drop(&mut self) {
        // Errors (dead member) are expected here; a hung member would block: SIGCONT it first.
        let _ = self.pkcs11.clone().finalize();
    }
}

/// A private token data object labelled `label` holding `value`, made through `s` (the sync
/// tests' marker object: what a destroy, a copy or a settling must get right).
pub fn data_object(s: &Session, label: &str, value: &[u8]) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ])
    .unwrap()
}
