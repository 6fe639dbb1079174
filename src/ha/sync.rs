//! Object synchronization (`HASynchronize.<label> = 1`): every token object of a group on every
//! member, with standard PKCS#11 only (docs/SYNC.md has the security model).
//!
//! - Public objects (certificates, data objects, public keys) are copied by value.
//! - Secret and private keys travel only wrapped, under cloning keys labelled [`CLONING_LABEL`]
//!   that the SO provisions (`p11ha synchronize -group L -init-cloning-key`): with
//!   `CKM_AES_KEY_WRAP_PAD` under an AES-256 key identical on every member, or, where a member
//!   or its transport refuses that (p11-kit's RPC does), secret keys with RSA-OAEP under the
//!   receiving member's own key pair (`Carrier`).
//! - A key the application asked to be non-extractable is held by the members as
//!   CKA_EXTRACTABLE = true with CKA_WRAP_WITH_TRUSTED = true ("p11ha-managed"): only trusted keys
//!   can wrap it. p11ha shows it to the application as CKA_EXTRACTABLE = false and refuses to
//!   wrap it ([`is_managed`]).
//! - Destroys, attribute changes and creations made while a member was down are remembered
//!   ([`SyncState`], in a journal shared by every process when there is one: `journal.rs`) and
//!   caught up with when it is reintroduced ([`reintroduce`]), before it takes work, or, when
//!   another process's changes are owed to a member that is up here, by [`catch_up`].

use super::group::{Group, Login};
use super::journal::{Change, Journal, Ledger, Owed};
use super::objects::{find_twin, Identity};
use crate::mechanism::{find, Attr, OwnedMechanism};
use crate::provider::{is_connection_error, Instance, MemberResult};
use cryptoki_sys::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zeroize::{Zeroize, Zeroizing};

/// CKA_LABEL (and CKA_ID) of the group cloning key on every member.
pub const CLONING_LABEL: &[u8] = b"p11ha-cloning-key";
/// The mechanism keys travel under.
pub const CLONING_MECHANISM: CK_MECHANISM_TYPE = CKM_AES_KEY_WRAP_PAD;
/// Bound on generating one receiving key pair at provisioning, whatever ReceiveTimeout says:
/// RSA-3072 generation takes seconds on many HSMs and has a long tail on loaded machines.
const KEYGEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// `p11ha_init_cloning_key` on a group whose members already hold a cloning key.
pub const RV_CLONING_KEY_EXISTS: CK_RV = CKR_FUNCTION_REJECTED;

/// A group's synchronization state.
#[derive(Default)]
pub struct SyncState {
    enabled: AtomicBool,
    /// What members that were down are owed (in memory until [`SyncState::use_journal`]).
    ledger: Ledger,
    /// One comparison at a time: two copying the same object to one member would make two.
    comparing: parking_lot::Mutex<()>,
}

impl SyncState {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    /// Keeps owed changes in a journal file shared with other processes.
    pub fn use_journal(&mut self, journal: Journal) {
        self.ledger = Ledger::with_journal(journal);
    }

    /// Remembers, for the members now down, that a token object was destroyed.
    pub fn remember_destroy(&self, identity: Identity, down: &[String]) {
        if identity.is_token() {
            self.ledger.record(Change::Destroy(identity), down);
        }
    }

    /// Remembers, for the members now down, that attributes of `kinds` changed on an object.
    pub fn remember_set(
        &self,
        before: Identity,
        after: Identity,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
        down: &[String],
    ) {
        if before.is_token() {
            let change = Change::Set {
                before,
                after,
                kinds,
            };
            self.ledger.record(change, down);
        }
    }

    /// Remembers, for the members now down, that token objects were created (once per member
    /// until it catches up: the catching up compares everything anyway).
    pub fn remember_created(&self, down: &[String]) {
        let new: Vec<String> = down
            .iter()
            .filter(|s| {
                !self
                    .ledger
                    .owed(s)
                    .iter()
                    .any(|o| o.change == Change::Created)
            })
            .cloned()
            .collect();
        self.ledger.record(Change::Created, &new);
    }

    /// Serials of the members that are owed anything.
    pub fn owing(&self) -> HashSet<String> {
        if !self.enabled() {
            return HashSet::new();
        }
        self.ledger.owing()
    }

    /// Number of changes still owed to some member (tests and diagnostics).
    pub fn pending(&self) -> usize {
        self.ledger.pending()
    }
}

/// Serials of the group's members that are down (and not removed).
pub fn down_members(g: &Group) -> Vec<String> {
    g.members()
        .iter()
        .filter(|m| !m.is_removed() && !m.is_up())
        .map(|m| m.serial.clone())
        .collect()
}

fn is_key_class(class: Option<CK_OBJECT_CLASS>) -> bool {
    matches!(class, Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY))
}

/// The template p11ha sends a member for a token key the application creates in a synchronized
/// group: a key asked to be non-extractable becomes extractable to trusted keys only; a key
/// that does not say becomes extractable explicitly (tokens differ on the default).
pub fn member_template(class: Option<CK_OBJECT_CLASS>, template: &[Attr]) -> Vec<Attr> {
    let token = find(template, CKA_TOKEN)
        .and_then(Attr::as_bool)
        .unwrap_or(false);
    if !token || !is_key_class(class) {
        return template.to_vec();
    }
    let wanted = find(template, CKA_EXTRACTABLE).and_then(Attr::as_bool);
    let mut out: Vec<Attr> = template
        .iter()
        .filter(|a| {
            a.kind != CKA_EXTRACTABLE && (wanted != Some(false) || a.kind != CKA_WRAP_WITH_TRUSTED)
        })
        .cloned()
        .collect();
    out.push(Attr::bool(CKA_EXTRACTABLE, true));
    if wanted == Some(false) {
        out.push(Attr::bool(CKA_WRAP_WITH_TRUSTED, true));
    }
    out
}

/// A C_SetAttributeValue template for a synchronized group: making a key non-extractable makes
/// it p11ha-managed instead (so it can still be cloned to members).
pub fn member_set_template(template: &[Attr]) -> Vec<Attr> {
    if find(template, CKA_EXTRACTABLE).and_then(Attr::as_bool) != Some(false) {
        return template.to_vec();
    }
    let mut out: Vec<Attr> = template
        .iter()
        .filter(|a| a.kind != CKA_EXTRACTABLE && a.kind != CKA_WRAP_WITH_TRUSTED)
        .cloned()
        .collect();
    out.push(Attr::bool(CKA_WRAP_WITH_TRUSTED, true));
    out
}

/// Whether a member key is p11ha-managed: a secret or private key held as CKA_EXTRACTABLE = true
/// and CKA_WRAP_WITH_TRUSTED = true, which the application sees as non-extractable.
pub fn is_managed(
    inst: &Instance,
    session: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
) -> MemberResult<bool> {
    let v = inst.read_attributes(
        session,
        obj,
        vec![CKA_CLASS, CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED],
    )?;
    let class = v[0].as_ref().map(|b| Attr::new(CKA_CLASS, b.clone()));
    let flag = |i: usize| v[i].as_deref().is_some_and(|b| b == [CK_TRUE]);
    Ok(is_key_class(class.and_then(|a| a.as_ulong())) && flag(1) && flag(2))
}

/// Attributes copied by value for public objects (those a member lets us read and set).
fn value_kinds(class: CK_OBJECT_CLASS) -> &'static [CK_ATTRIBUTE_TYPE] {
    match class {
        CKO_DATA => &[
            CKA_CLASS,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_MODIFIABLE,
            CKA_APPLICATION,
            CKA_OBJECT_ID,
            CKA_VALUE,
        ],
        CKO_CERTIFICATE => &[
            CKA_CLASS,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_MODIFIABLE,
            CKA_CERTIFICATE_TYPE,
            CKA_CERTIFICATE_CATEGORY,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_SUBJECT,
            CKA_ID,
            CKA_ISSUER,
            CKA_SERIAL_NUMBER,
            CKA_VALUE,
            CKA_URL,
        ],
        CKO_PUBLIC_KEY => &[
            CKA_CLASS,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_MODIFIABLE,
            CKA_KEY_TYPE,
            CKA_ID,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_DERIVE,
            CKA_SUBJECT,
            CKA_ENCRYPT,
            CKA_VERIFY,
            CKA_VERIFY_RECOVER,
            CKA_WRAP,
            CKA_MODULUS,
            CKA_PUBLIC_EXPONENT,
            CKA_EC_PARAMS,
            CKA_EC_POINT,
        ],
        _ => &[],
    }
}

/// The unwrap template of a cloned key: its attributes as the source member holds them.
fn key_kinds(class: CK_OBJECT_CLASS) -> &'static [CK_ATTRIBUTE_TYPE] {
    match class {
        CKO_SECRET_KEY => &[
            CKA_CLASS,
            CKA_KEY_TYPE,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_ID,
            CKA_MODIFIABLE,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_DERIVE,
            CKA_SENSITIVE,
            CKA_ENCRYPT,
            CKA_DECRYPT,
            CKA_SIGN,
            CKA_VERIFY,
            CKA_WRAP,
            CKA_UNWRAP,
            CKA_EXTRACTABLE,
            CKA_WRAP_WITH_TRUSTED,
        ],
        CKO_PRIVATE_KEY => &[
            CKA_CLASS,
            CKA_KEY_TYPE,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_ID,
            CKA_MODIFIABLE,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_DERIVE,
            CKA_SUBJECT,
            CKA_SENSITIVE,
            CKA_DECRYPT,
            CKA_SIGN,
            CKA_SIGN_RECOVER,
            CKA_UNWRAP,
            CKA_EXTRACTABLE,
            CKA_WRAP_WITH_TRUSTED,
            CKA_ALWAYS_AUTHENTICATE,
        ],
        _ => &[],
    }
}

/// One side of a copy: a member instance, a session on it, and the cloning keys found on it.
pub struct End<'a> {
    pub inst: &'a Instance,
    pub session: CK_SESSION_HANDLE,
    serial: String,
    found: Vec<((CK_OBJECT_CLASS, Vec<u8>), CK_OBJECT_HANDLE)>,
    /// Carriers this member (or the transport to it) answered CKR_MECHANISM_INVALID.
    refused: Vec<Carrier>,
}

impl<'a> End<'a> {
    pub fn new(inst: &'a Instance, session: CK_SESSION_HANDLE, serial: &str) -> Self {
        End {
            inst,
            session,
            serial: serial.to_string(),
            found: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// The cloning object of `class` with CKA_ID `id`; CKR_FUNCTION_FAILED when there is none
    /// (the group was not provisioned with `-init-cloning-key`).
    fn cloning_object(
        &mut self,
        class: CK_OBJECT_CLASS,
        id: &[u8],
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        if let Some((_, h)) = self.found.iter().find(|(k, _)| k.0 == class && k.1 == id) {
            return Ok(*h);
        }
        let found = self
            .inst
            .find_all(self.session, cloning_search(Some((class, id))))?;
        let h = *found.first().ok_or(CKR_FUNCTION_FAILED)?;
        self.found.push(((class, id.to_vec()), h));
        Ok(h)
    }
}

/// Every cloning object, or the one of a class and CKA_ID.
fn cloning_search(which: Option<(CK_OBJECT_CLASS, &[u8])>) -> Vec<Attr> {
    let mut t = vec![
        Attr::bool(CKA_TOKEN, true),
        Attr::new(CKA_LABEL, CLONING_LABEL.to_vec()),
    ];
    if let Some((class, id)) = which {
        t.push(Attr::ulong(CKA_CLASS, class));
        t.push(Attr::new(CKA_ID, id.to_vec()));
    }
    t
}

/// How a secret or private key travels between two members, in order of preference. A carrier
/// one end refuses with CKR_MECHANISM_INVALID is not tried with that end again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// CKM_AES_KEY_WRAP_PAD under the group's AES cloning key: any secret or private key.
    AesKeyWrap,
    /// CKM_RSA_PKCS_OAEP under the receiving member's own RSA cloning key pair (the private half
    /// made on that member, the public half trusted on every other one): secret keys only, but
    /// p11-kit's RPC carries it where it carries no AES key wrap.
    RsaOaep,
}

impl Carrier {
    const ALL: [Carrier; 2] = [Carrier::AesKeyWrap, Carrier::RsaOaep];

    fn carries(self, class: CK_OBJECT_CLASS) -> bool {
        match self {
            Carrier::AesKeyWrap => true,
            Carrier::RsaOaep => class == CKO_SECRET_KEY,
        }
    }

    fn mechanism(self) -> OwnedMechanism {
        match self {
            Carrier::AesKeyWrap => OwnedMechanism::new(CLONING_MECHANISM),
            Carrier::RsaOaep => OwnedMechanism::rsa_oaep_sha1(),
        }
    }

    /// The wrapping key on `from` and the unwrapping key on `to`.
    fn keys(
        self,
        from: &mut End,
        to: &mut End,
    ) -> CopyResult<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        match self {
            Carrier::AesKeyWrap => Ok((
                src(from.cloning_object(CKO_SECRET_KEY, CLONING_LABEL))?,
                dst(to.cloning_object(CKO_SECRET_KEY, CLONING_LABEL))?,
            )),
            Carrier::RsaOaep => {
                let id = to.serial.clone().into_bytes();
                Ok((
                    src(from.cloning_object(CKO_PUBLIC_KEY, &id))?,
                    dst(to.cloning_object(CKO_PRIVATE_KEY, &id))?,
                ))
            }
        }
    }
}

/// What to tell the user when an object could not be copied with `rv`.
pub fn hint(rv: CK_RV) -> &'static str {
    match rv {
        CKR_FUNCTION_FAILED => {
            " (is the cloning key on every member? see p11ha synchronize -init-cloning-key)"
        }
        CKR_MECHANISM_INVALID => {
            " (no key-wrap mechanism reaches both members for this key: private keys need \
             CKM_AES_KEY_WRAP_PAD, which p11-kit's RPC does not carry; see docs/SYNC.md)"
        }
        _ => "",
    }
}

/// Which side of a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

pub type CopyResult<T> = Result<T, (Side, CK_RV)>;

fn src<T>(r: MemberResult<T>) -> CopyResult<T> {
    r.map_err(|rv| (Side::Source, rv))
}

fn dst<T>(r: MemberResult<T>) -> CopyResult<T> {
    r.map_err(|rv| (Side::Target, rv))
}

/// Copies one token object from `from` to `to`; returns its handle on `to`.
pub fn copy_object(
    from: &mut End,
    obj: CK_OBJECT_HANDLE,
    to: &mut End,
) -> CopyResult<CK_OBJECT_HANDLE> {
    let class = src(from
        .inst
        .read_attributes(from.session, obj, vec![CKA_CLASS]))?
    .pop()
    .flatten()
    .and_then(|b| Attr::new(CKA_CLASS, b).as_ulong())
    .ok_or((Side::Source, CKR_OBJECT_HANDLE_INVALID))?;
    let keyed = is_key_class(Some(class));
    let kinds = if keyed {
        key_kinds(class)
    } else {
        value_kinds(class)
    };
    if kinds.is_empty() {
        return Err((Side::Source, CKR_KEY_NOT_WRAPPABLE));
    }
    let values = src(from.inst.read_attributes(from.session, obj, kinds.to_vec()))?;
    let template: Vec<Attr> = kinds
        .iter()
        .zip(values)
        .filter_map(|(k, v)| v.map(|v| Attr::new(*k, v)))
        .collect();
    if !keyed {
        return dst(to.inst.create_object(to.session, template));
    }
    let mut last = (Side::Source, CKR_MECHANISM_INVALID);
    for carrier in Carrier::ALL {
        if !carrier.carries(class)
            || from.refused.contains(&carrier)
            || to.refused.contains(&carrier)
        {
            continue;
        }
        match carry(carrier, from, obj, to, template.clone()) {
            Err((side, CKR_MECHANISM_INVALID)) => {
                match side {
                    Side::Source => from.refused.push(carrier),
                    Side::Target => to.refused.push(carrier),
                }
                last = (side, CKR_MECHANISM_INVALID);
            }
            done => return done,
        }
    }
    Err(last)
}

/// Wraps `obj` on `from` and unwraps it on `to` with `template`.
fn carry(
    carrier: Carrier,
    from: &mut End,
    obj: CK_OBJECT_HANDLE,
    to: &mut End,
    template: Vec<Attr>,
) -> CopyResult<CK_OBJECT_HANDLE> {
    let (wrapping, unwrapping) = carrier.keys(from, to)?;
    let mech = carrier.mechanism();
    let size = src(from
        .inst
        .wrap_key(from.session, mech.clone(), wrapping, obj, None))?;
    if size.rv != CKR_OK {
        return Err((Side::Source, size.rv));
    }
    let out = src(from
        .inst
        .wrap_key(from.session, mech.clone(), wrapping, obj, Some(size.len)))?;
    let wrapped = Zeroizing::new(match (out.rv, out.data) {
        (CKR_OK, Some(d)) => d,
        (rv, _) => {
            return Err((
                Side::Source,
                if rv == CKR_OK { CKR_GENERAL_ERROR } else { rv },
            ))
        }
    });
    dst(to
        .inst
        .unwrap_key(to.session, mech, unwrapping, wrapped.to_vec(), template))
}

/// Token objects of a member with their identities (the cloning key left out).
fn token_objects(end: &End) -> MemberResult<Vec<(CK_OBJECT_HANDLE, Identity)>> {
    let mut out = Vec::new();
    for h in end
        .inst
        .find_all(end.session, vec![Attr::bool(CKA_TOKEN, true)])?
    {
        let identity = Identity::read(end.inst, end.session, h)?;
        if identity
            .get(CKA_LABEL)
            .is_some_and(|l| l.value == CLONING_LABEL)
        {
            continue;
        }
        out.push((h, identity));
    }
    Ok(out)
}

/// Copies to `to` every token object of `from` that `to` has no twin of; returns how many.
/// Objects that cannot be copied for a reason other than a connection are reported and skipped.
pub fn copy_missing(from: &mut End, to: &mut End, what: &str) -> CopyResult<u64> {
    let theirs = src(token_objects(from))?;
    let mine = dst(token_objects(to))?;
    let mut used = vec![false; mine.len()];
    let mut copied = 0;
    for (h, identity) in theirs {
        let twin = mine
            .iter()
            .enumerate()
            .find(|(i, (_, m))| !used[*i] && m.matches(&identity));
        if let Some((i, _)) = twin {
            used[i] = true;
            continue;
        }
        match copy_object(from, h, to) {
            Ok(_) => copied += 1,
            Err((side, rv)) if is_connection_error(rv) => return Err((side, rv)),
            Err((_, rv)) => eprintln!(
                "p11ha: {what}: object {:?} not copied: {}{}",
                identity
                    .get(CKA_LABEL)
                    .map(|l| String::from_utf8_lossy(&l.value).to_string()),
                crate::rv::rv_name(rv),
                hint(rv)
            ),
        }
    }
    Ok(copied)
}

/// A member session opened for synchronization and logged in like the group, closed on drop.
struct Opened<'a> {
    inst: &'a Instance,
    session: CK_SESSION_HANDLE,
    counter: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl<'a> Opened<'a> {
    fn open(
        inst: &'a Instance,
        slot: CK_SLOT_ID,
        login: &Option<Login>,
        counter: Option<Arc<std::sync::atomic::AtomicUsize>>,
    ) -> MemberResult<Self> {
        let session = inst.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
        if let Some(c) = &counter {
            c.fetch_add(1, Ordering::AcqRel);
        }
        let me = Opened {
            inst,
            session,
            counter,
        };
        if let Some(Login { user, pin }) = login.clone() {
            match inst.login(session, user, pin) {
                Ok(()) | Err(CKR_USER_ALREADY_LOGGED_IN) => {}
                Err(rv) => return Err(rv),
            }
        }
        Ok(me)
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        let _ = self.inst.close_session(self.session);
        if let Some(c) = &self.counter {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Applies to `to` the destroys and attribute changes in `owed`, attribute values read from the
/// changed twin on `from`. Returns the records done with. Without a user login a missing twin
/// may only be invisible (a private object), so that record stays owed.
fn apply_owed(
    owed: &[Owed],
    to: &End,
    from: Option<&End>,
    logged_in: bool,
    what: &str,
) -> CopyResult<Vec<Owed>> {
    let mut done = Vec::new();
    for o in owed {
        let finished = match &o.change {
            Change::Destroy(identity) => match dst(find_twin(to.inst, to.session, identity))? {
                Some(h) => {
                    match to.inst.destroy_object(to.session, h) {
                        Err(rv) if is_connection_error(rv) => return Err((Side::Target, rv)),
                        Err(rv) => eprintln!(
                            "p11ha: {what}: a destroy made while it was down was refused: {}",
                            crate::rv::rv_name(rv)
                        ),
                        Ok(()) => {}
                    }
                    true
                }
                None => logged_in,
            },
            Change::Set {
                before,
                after,
                kinds,
            } => {
                let Some(from) = from else { continue };
                let theirs = src(find_twin(from.inst, from.session, after))?;
                let mine = dst(find_twin(to.inst, to.session, before))?;
                match (theirs, mine) {
                    (Some(t), Some(m)) => {
                        let values =
                            src(from.inst.read_attributes(from.session, t, kinds.clone()))?;
                        let template: Vec<Attr> = kinds
                            .iter()
                            .zip(values)
                            .filter_map(|(k, v)| v.map(|v| Attr::new(*k, v)))
                            .collect();
                        match to.inst.set_attributes(to.session, m, template) {
                            Err(rv) if is_connection_error(rv) => return Err((Side::Target, rv)),
                            Err(rv) => eprintln!(
                                "p11ha: {what}: an attribute change made while it was down was \
                                 refused: {}",
                                crate::rv::rv_name(rv)
                            ),
                            Ok(()) => {}
                        }
                        true
                    }
                    // Destroyed since, or already changed: nothing to do, if we could see.
                    _ => logged_in,
                }
            }
            Change::Created => false,
        };
        if finished {
            done.push(o.clone());
        }
    }
    Ok(done)
}

/// Brings a member up to date: applies the destroys and attribute changes it missed, then copies
/// every token object of an up member it lacks. Returns the number of objects copied. Used for a
/// returning member before it takes work (an error means it should not be bound yet), and for a
/// member up here that another process's changes are owed to ([`catch_up`]).
///
/// The member compared with is an up member that is owed nothing itself (one that is owed a
/// destroy would hand the destroyed object back). What cannot be settled yet stays owed: private
/// objects without a user login, and everything when there is no member to compare with.
pub fn reintroduce(
    g: &Group,
    serial: &str,
    target: &Instance,
    slot: CK_SLOT_ID,
) -> MemberResult<u64> {
    bring_up_to_date(g, serial, target, slot, false).map_err(|(_, rv)| rv)
}

/// [`reintroduce`], saying which side failed; with `only_if_owed`, nothing is compared when the
/// member is no longer owed anything (another thread caught it up meanwhile).
fn bring_up_to_date(
    g: &Group,
    serial: &str,
    target: &Instance,
    slot: CK_SLOT_ID,
    only_if_owed: bool,
) -> CopyResult<u64> {
    let _one = g.sync.comparing.lock();
    let owed = g.sync.ledger.owed(serial);
    if only_if_owed && owed.is_empty() {
        return Ok(0);
    }
    let login = g.login();
    let logged_in = login.as_ref().is_some_and(|l| l.user == CKU_USER);
    let mine = dst(Opened::open(target, slot, &login, None))?;
    let mut to = End::new(target, mine.session, serial);
    let what = format!("group {}: catching up {serial}", g.label);
    let owing = g.sync.owing();
    let source = g
        .candidates(|_, m| m.serial != serial && !owing.contains(&m.serial))
        .first()
        .and_then(|&i| g.member(i).binding().map(|b| (i, b)));
    let Some((idx, b)) = source else {
        let done = apply_owed(&owed, &to, None, logged_in, &what)?;
        g.sync.ledger.settle(&done);
        return Ok(0); // nothing to compare with: the returning member is the group now
    };
    let result = src(Opened::open(
        &b.instance,
        b.slot,
        &login,
        Some(b.open_sessions.clone()),
    ))
    .and_then(|theirs| {
        let mut from = End::new(&b.instance, theirs.session, &g.member(idx).serial);
        let mut done = apply_owed(&owed, &to, Some(&from), logged_in, &what)?;
        // Comparing while a rename is still owed would copy the renamed object a second time:
        // the comparison waits until destroys and changes are settled (at C_Login at the latest).
        let unsettled = owed
            .iter()
            .any(|o| o.change != Change::Created && !done.contains(o));
        if unsettled {
            g.sync.ledger.settle(&done);
            return Ok(0);
        }
        let copied = copy_missing(&mut from, &mut to, &what)?;
        if logged_in {
            done.extend(owed.iter().filter(|o| o.change == Change::Created).cloned());
        }
        g.sync.ledger.settle(&done);
        Ok(copied)
    });
    if let Err((Side::Source, rv)) = result {
        if is_connection_error(rv) {
            g.drop_member(idx, b.instance.id, rv);
        }
    }
    result
}

/// Catches up every member up here that is owed changes (made by another process, or needing
/// the login this group now has). A member that fails on its connection is dropped. Returns the
/// number of objects copied.
pub fn catch_up(g: &Group) -> u64 {
    if !g.sync.enabled() || g.passthrough {
        return 0;
    }
    let owing = g.sync.owing();
    let mut copied = 0;
    for (i, m) in g.members().iter().enumerate() {
        let Some(b) = m.binding().filter(|_| owing.contains(&m.serial)) else {
            continue;
        };
        match bring_up_to_date(g, &m.serial, &b.instance, b.slot, true) {
            Ok(n) => copied += n,
            Err((Side::Target, rv)) if is_connection_error(rv) => {
                g.drop_member(i, b.instance.id, rv)
            }
            Err((_, rv)) => eprintln!(
                "p11ha: group {}: {} could not catch up yet: {}",
                g.label,
                m.serial,
                crate::rv::rv_name(rv)
            ),
        }
    }
    copied
}

/// `p11ha synchronize`: copies every token object any up member has to every up member that
/// lacks it. Returns the number of objects copied.
pub fn synchronize(g: &Group) -> MemberResult<u64> {
    let login = g.login();
    let mut copied = catch_up(g);
    let _one = g.sync.comparing.lock();
    // A member still owed changes would hand back what was destroyed: it is only a target.
    let owing = g.sync.owing();
    let bound: Vec<_> = (0..g.members().len())
        .filter_map(|i| g.member(i).binding().map(|b| (i, b)))
        .collect();
    let mut opened = Vec::new();
    for (i, b) in &bound {
        match Opened::open(&b.instance, b.slot, &login, Some(b.open_sessions.clone())) {
            Ok(o) => opened.push((*i, b, o)),
            Err(rv) if is_connection_error(rv) => g.drop_member(*i, b.instance.id, rv),
            Err(rv) => return Err(rv),
        }
    }
    for a in 0..opened.len() {
        if owing.contains(&g.member(opened[a].0).serial) {
            continue;
        }
        for z in 0..opened.len() {
            if a == z {
                continue;
            }
            let (ia, ba, oa) = &opened[a];
            let (iz, bz, oz) = &opened[z];
            let mut from = End::new(&ba.instance, oa.session, &g.member(*ia).serial);
            let mut to = End::new(&bz.instance, oz.session, &g.member(*iz).serial);
            let what = format!("synchronize {}", g.member(opened[z].0).serial);
            match copy_missing(&mut from, &mut to, &what) {
                Ok(n) => copied += n,
                Err((side, rv)) => {
                    let (i, b, _) = &opened[if side == Side::Source { a } else { z }];
                    if is_connection_error(rv) {
                        g.drop_member(*i, b.instance.id, rv);
                    }
                    return Err(rv);
                }
            }
        }
    }
    Ok(copied)
}

/// Provisions the group's cloning keys on every up member and returns the number of members.
///
/// - The AES-256 cloning key, identical everywhere: 32 random bytes from the operating system,
///   held only in zeroized memory (`Carrier::AesKeyWrap`).
/// - On each member its own RSA-3072 receiving key pair, generated there (the private half never
///   exists anywhere else), and its public half copied to every other member as a trusted key
///   (`Carrier::RsaOaep`).
///
/// Refuses when any member already has a cloning object (nothing is ever overwritten) and
/// destroys what it made when a member refuses. Needs a login that may set CKA_TRUSTED (the SO
/// on SoftHSM, whose SO sessions make only public objects: hence CKA_PRIVATE = false).
pub fn init_cloning_key(g: &Group) -> MemberResult<u64> {
    let login = g.login();
    let members = g.members();
    if members.iter().any(|m| !m.is_removed() && !m.is_up()) {
        eprintln!(
            "p11ha: every member of {} must be up to create the cloning key",
            g.label
        );
        return Err(CKR_DEVICE_ERROR);
    }
    let bound: Vec<_> = members
        .iter()
        .filter_map(|m| m.binding().map(|b| (m.serial.clone(), b)))
        .collect();
    let mut opened = Vec::new();
    for (serial, b) in &bound {
        let o = Opened::open(&b.instance, b.slot, &login, Some(b.open_sessions.clone()))?;
        if !b
            .instance
            .find_all(o.session, cloning_search(None))?
            .is_empty()
        {
            return Err(RV_CLONING_KEY_EXISTS);
        }
        opened.push((serial.as_str(), b.instance.as_ref(), o));
    }
    let mut made: Vec<(&Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)> = Vec::new();
    match provision(&opened, &mut made) {
        Ok(()) => Ok(opened.len() as u64),
        Err(rv) => {
            for (inst, session, h) in made {
                let _ = inst.destroy_object(session, h);
            }
            Err(rv)
        }
    }
}

/// The work of [`init_cloning_key`]; every object made is pushed on `made`.
fn provision<'a>(
    opened: &[(&str, &'a Instance, Opened)],
    made: &mut Vec<(&'a Instance, CK_SESSION_HANDLE, CK_OBJECT_HANDLE)>,
) -> MemberResult<()> {
    let cloning = |class: CK_OBJECT_CLASS, id: &[u8]| {
        vec![
            Attr::ulong(CKA_CLASS, class),
            Attr::bool(CKA_TOKEN, true),
            Attr::bool(CKA_PRIVATE, false),
            Attr::bool(CKA_MODIFIABLE, false),
            Attr::new(CKA_LABEL, CLONING_LABEL.to_vec()),
            Attr::new(CKA_ID, id.to_vec()),
        ]
    };
    // A receiving member's public key: for wrapping keys to it, nothing else.
    let wrapping_rsa = |id: &[u8]| {
        let mut t = cloning(CKO_PUBLIC_KEY, id);
        t.extend([
            Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
            Attr::bool(CKA_WRAP, true),
            Attr::bool(CKA_ENCRYPT, false),
            Attr::bool(CKA_VERIFY, false),
        ]);
        t
    };
    let mut key = Zeroizing::new(vec![0u8; 32]);
    fill_random(&mut key)?;
    for (_, inst, o) in opened {
        let mut t = cloning(CKO_SECRET_KEY, CLONING_LABEL);
        t.extend([
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::bool(CKA_TRUSTED, true),
            Attr::bool(CKA_WRAP, true),
            Attr::bool(CKA_UNWRAP, true),
            Attr::bool(CKA_ENCRYPT, false),
            Attr::bool(CKA_DECRYPT, false),
            Attr::bool(CKA_SIGN, false),
            Attr::bool(CKA_VERIFY, false),
            Attr::bool(CKA_DERIVE, false),
            Attr::bool(CKA_SENSITIVE, true),
            Attr::bool(CKA_EXTRACTABLE, false),
            Attr::new(CKA_VALUE, key.to_vec()),
        ]);
        made.push((inst, o.session, inst.create_object_zeroized(o.session, t)?));
    }
    key.zeroize();
    for (serial, inst, o) in opened {
        let id = serial.as_bytes();
        let mut public = wrapping_rsa(id);
        public.extend([
            Attr::ulong(CKA_MODULUS_BITS, 3072),
            Attr::new(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]),
        ]);
        let mut private = cloning(CKO_PRIVATE_KEY, id);
        private.extend([
            Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
            Attr::bool(CKA_UNWRAP, true),
            Attr::bool(CKA_DECRYPT, false),
            Attr::bool(CKA_SIGN, false),
            Attr::bool(CKA_SENSITIVE, true),
            Attr::bool(CKA_EXTRACTABLE, false),
        ]);
        let mech = OwnedMechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN);
        let (pu, pr) = inst
            .with_timeout(KEYGEN_TIMEOUT)
            .generate_key_pair(o.session, mech, public, private)?;
        made.push((inst, o.session, pu));
        made.push((inst, o.session, pr));
        let mut v = inst.read_attributes(o.session, pu, vec![CKA_MODULUS, CKA_PUBLIC_EXPONENT])?;
        let (Some(exponent), Some(modulus)) = (v.pop().flatten(), v.pop().flatten()) else {
            return Err(CKR_FUNCTION_FAILED);
        };
        for (other, inst2, o2) in opened {
            if other == serial {
                continue;
            }
            let mut t = wrapping_rsa(id);
            t.extend([
                Attr::new(CKA_MODULUS, modulus.clone()),
                Attr::new(CKA_PUBLIC_EXPONENT, exponent.clone()),
                Attr::bool(CKA_TRUSTED, true),
            ]);
            made.push((inst2, o2.session, inst2.create_object(o2.session, t)?));
        }
    }
    Ok(())
}

fn fill_random(buf: &mut [u8]) -> MemberResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
                0,
            )
        };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CKR_FUNCTION_FAILED);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_extractable_token_keys_become_managed() {
        let t = vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::bool(CKA_EXTRACTABLE, false),
        ];
        let m = member_template(Some(CKO_SECRET_KEY), &t);
        assert_eq!(
            find(&m, CKA_EXTRACTABLE).and_then(Attr::as_bool),
            Some(true)
        );
        assert_eq!(
            find(&m, CKA_WRAP_WITH_TRUSTED).and_then(Attr::as_bool),
            Some(true)
        );
        // Session keys and public objects are left as asked.
        let s = vec![Attr::bool(CKA_EXTRACTABLE, false)];
        assert_eq!(member_template(Some(CKO_SECRET_KEY), &s), s);
        assert_eq!(member_template(Some(CKO_DATA), &t), t);
        // Extractable by default: made explicit, not managed.
        let d = member_template(Some(CKO_PRIVATE_KEY), &[Attr::bool(CKA_TOKEN, true)]);
        assert_eq!(
            find(&d, CKA_EXTRACTABLE).and_then(Attr::as_bool),
            Some(true)
        );
        assert!(find(&d, CKA_WRAP_WITH_TRUSTED).is_none());
    }

    #[test]
    fn making_a_key_non_extractable_makes_it_managed() {
        let t = member_set_template(&[Attr::bool(CKA_EXTRACTABLE, false)]);
        assert!(find(&t, CKA_EXTRACTABLE).is_none());
        assert_eq!(
            find(&t, CKA_WRAP_WITH_TRUSTED).and_then(Attr::as_bool),
            Some(true)
        );
    }
}
