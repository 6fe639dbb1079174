//! MACs from the members: the audit key, and computing `HMAC-SHA256(key, h)` with it.
//!
//! The audit key is a generic secret of 32 bytes on every member, labelled
//! [`KEY_LABEL`] with CKA_ID = the group serial: a token object, private (a user login is
//! needed to use it), sensitive, asked non-extractable, sign and verify only. `p11ha audit
//! init-key` creates it through the group, so in a synchronized group it is replicated like every
//! token key (docs/SYNC.md) and reaches a member that was down at its reintroduction; it is never
//! shown to applications (their searches skip it).
//!
//! The sealer never logs in itself: it opens a session on a member where this process is logged
//! in already (PKCS#11 login state belongs to the application, so a new session shares it) and
//! closes it when done. Without such a member, records stay unsealed until one exists.

use crate::diag::diag;
use crate::ha::member::Member;
use crate::mechanism::Attr;
use crate::provider::{Fault, Instance, OpKind};
use cryptoki_sys::*;
use std::collections::HashMap;
use std::sync::Arc;

/// CKA_LABEL of the audit key.
pub const KEY_LABEL: &[u8] = b"p11ha-audit-key";

/// The group's members as a record carries them (a cheap snapshot).
pub type Pool = Arc<Vec<Arc<Member>>>;

/// Whether an object's label is the audit key's: never shown to applications.
pub fn is_key_label(label: &[u8]) -> bool {
    label == KEY_LABEL
}

/// The search template of a group's audit key.
pub fn key_template(group_serial: &str) -> Vec<Attr> {
    vec![
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        Attr::new(CKA_LABEL, KEY_LABEL.to_vec()),
        Attr::new(CKA_ID, group_serial.as_bytes().to_vec()),
        Attr::bool(CKA_TOKEN, true),
    ]
}

/// The template `p11ha audit init-key` generates the key with.
pub fn generate_template(group_serial: &str) -> Vec<Attr> {
    let mut t = key_template(group_serial);
    t.extend([
        Attr::ulong(CKA_VALUE_LEN, 32),
        Attr::bool(CKA_PRIVATE, true),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, false),
        Attr::bool(CKA_SIGN, true),
        Attr::bool(CKA_VERIFY, true),
        Attr::bool(CKA_ENCRYPT, false),
        Attr::bool(CKA_DECRYPT, false),
        Attr::bool(CKA_WRAP, false),
        Attr::bool(CKA_UNWRAP, false),
        Attr::bool(CKA_DERIVE, false),
    ]);
    t
}

/// Why nothing could be sealed (said once per change on stderr, at info level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsealed {
    NoMemberUp,
    NotLoggedIn,
    NoKey,
    Failed(CK_RV),
}

impl std::fmt::Display for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsealed::NoMemberUp => write!(f, "no member is up"),
            Unsealed::NotLoggedIn => write!(f, "no member is logged in by this process"),
            Unsealed::NoKey => write!(
                f,
                "no member holds the audit key (create it: p11ha audit init-key -group <label>)"
            ),
            Unsealed::Failed(rv) => write!(f, "the member answered {}", crate::rv::rv_name(*rv)),
        }
    }
}

/// Computes MACs on members for one group, one batch of records at a time: a batch keeps one
/// member session open ([`Sealer::end_batch`] closes it).
pub struct Sealer {
    group_serial: String,
    /// The audit key's handle per module instance (by instance id).
    keys: HashMap<u64, CK_OBJECT_HANDLE>,
    /// Instances that failed on their connection while sealing: skipped (they are the HA
    /// core's to drop and recover; a new binding is a new instance, tried again).
    failed: Vec<u64>,
    /// Instances tried in this batch that could not seal.
    tried: Vec<u64>,
    open: Option<Open>,
    /// Why the last record of the batch could not be sealed.
    why: Option<Unsealed>,
    /// What was said on stderr last.
    said: Option<Unsealed>,
}

struct Open {
    inst: Arc<Instance>,
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
}

impl Sealer {
    pub fn new(group_serial: &str) -> Sealer {
        Sealer {
            group_serial: group_serial.to_string(),
            keys: HashMap::new(),
            failed: Vec::new(),
            tried: Vec::new(),
            open: None,
            why: None,
            said: None,
        }
    }

    /// `HMAC-SHA256(audit key, h)` from a member of `pool` that can compute it, or `None`
    /// (never a wrong MAC: a member's error means no MAC). Once no member could, the rest of
    /// the batch is `None` without asking again.
    pub fn mac(&mut self, pool: Option<&Pool>, h: &[u8; 32]) -> Option<[u8; 32]> {
        if self.why.is_some() {
            return None;
        }
        loop {
            if self.open.is_none() {
                match self.open_any(pool) {
                    Ok(o) => self.open = Some(o),
                    Err(why) => {
                        self.why = Some(why);
                        return None;
                    }
                }
            }
            let o = self.open.as_ref().expect("opened above");
            match mac_with(&o.inst, o.session, o.key, h) {
                Ok(m) => return Some(m),
                Err(f) => {
                    let id = o.inst.id;
                    self.close();
                    self.keys.remove(&id);
                    self.tried.push(id);
                    if f.fails_member() {
                        self.failed.push(id);
                    }
                }
            }
        }
    }

    /// Closes the batch's member session; says once on stderr (info level) why records are
    /// written unsealed, when that changed.
    pub fn end_batch(&mut self) {
        self.close();
        self.tried.clear();
        let why = self.why.take();
        if why != self.said {
            if let Some(w) = &why {
                diag!(
                    Info,
                    "audit trail of group {}: records written unsealed: {w}; the next record \
                     sealed seals them",
                    self.group_serial
                );
            }
            self.said = why;
        }
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            let _ = o.inst.close_session(o.session);
        }
    }

    /// A session on the first member (active ones first) that is up and shows the audit key.
    fn open_any(&mut self, pool: Option<&Pool>) -> Result<Open, Unsealed> {
        let mut why = Unsealed::NoMemberUp;
        let Some(pool) = pool else { return Err(why) };
        let mut order: Vec<&Arc<Member>> = pool.iter().filter(|m| m.is_up()).collect();
        order.sort_by_key(|m| m.standby);
        for m in order {
            let Some(b) = m.binding() else { continue };
            let inst = b.instance.clone();
            if self.failed.contains(&inst.id) || self.tried.contains(&inst.id) {
                continue;
            }
            self.tried.push(inst.id);
            let session = match inst.open_session(b.slot, CKF_SERIAL_SESSION) {
                Ok(s) => s,
                Err(f) => {
                    if f.fails_member() {
                        self.failed.push(inst.id);
                    }
                    why = Unsealed::Failed(f.rv());
                    continue;
                }
            };
            match self.key(&inst, session) {
                Ok(key) => return Ok(Open { inst, session, key }),
                Err(w) => {
                    let _ = inst.close_session(session);
                    why = w;
                }
            }
        }
        Err(why)
    }

    fn key(
        &mut self,
        inst: &Instance,
        session: CK_SESSION_HANDLE,
    ) -> Result<CK_OBJECT_HANDLE, Unsealed> {
        if let Some(k) = self.keys.get(&inst.id) {
            return Ok(*k);
        }
        let failed = |f: Fault| Unsealed::Failed(f.rv());
        match find_key(inst, session, &self.group_serial).map_err(failed)? {
            Some(k) => {
                self.keys.insert(inst.id, k);
                Ok(k)
            }
            None => {
                // A private key is invisible without a login: say which it is.
                let state = inst.session_info(session).map_err(failed)?.state;
                if matches!(state, CKS_RO_PUBLIC_SESSION | CKS_RW_PUBLIC_SESSION) {
                    Err(Unsealed::NotLoggedIn)
                } else {
                    Err(Unsealed::NoKey)
                }
            }
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The audit key of the group on this member, if this session can see it.
pub fn find_key(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    group_serial: &str,
) -> Result<Option<CK_OBJECT_HANDLE>, Fault> {
    Ok(inst
        .find_all(session, key_template(group_serial))?
        .first()
        .copied())
}

/// One MAC: C_SignInit(CKM_SHA256_HMAC) + C_Sign of the 32 bytes of `h`.
fn mac_with(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    h: &[u8; 32],
) -> Result<[u8; 32], Fault> {
    // Init and sign in one member call (one thread hand-off).
    let begin = crate::provider::Begin {
        mechanism: CKM_SHA256_HMAC,
        key,
    };
    let out = inst
        .op_single(
            OpKind::Sign,
            session,
            crate::provider::Input::new(h.to_vec()),
            Some(32),
            Some(begin),
        )
        .map_err(|f| match f {
            Fault::NotBegun(rv) => Fault::Rv(rv),
            f => f,
        })?;
    out.data
        .as_deref()
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .ok_or(Fault::Rv(CKR_FUNCTION_FAILED))
}
