//! One side of the comparison: a module (SoftHSM directly, or p11ha) driven through its raw
//! function list, with its own table from the sequence's names to its handles.
//!
//! Both sides run exactly this code, so whatever differs in what they record is the modules'.
//! Every call records observations (return value, lengths, values) for [`super::compare`].
//!
//! Handles follow the application's rules, not the module's luck. After C_Logout, handles to
//! private objects are invalid (PKCS#11, C_Logout: "even if a user is later logged back into
//! the token"): the first use of each such handle is made with the old handle, which both
//! sides must refuse; later uses find the object again, by its identity, as an application
//! would. When the last session closes, every handle may change (PKCS#11 promises them only
//! while a session exists; SoftHSM does renumber): objects are found again before their next
//! use.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ptr::null_mut;

use cryptoki_sys::*;

use super::call::*;
use super::names::attr_name;
use super::obs::{Obs, Val};

/// A session handle no module gave out.
const BOGUS_SESSION: CK_SESSION_HANDLE = 0x7fff_ff01;
/// An object handle no module gave out.
const BOGUS_OBJECT: CK_OBJECT_HANDLE = 0x7fff_ff02;
/// A slot ID neither module has.
const BOGUS_SLOT: CK_SLOT_ID = 0x7fff_ff03;
/// Byte every output buffer is filled with before a call.
const FILL: u8 = 0xa5;
/// Stand-in for an output this side never produced (the producing call failed here).
const MISSING_BLOB: [u8; 16] = [0xee; 16];

/// How an object is found again: its class and one attribute that is unique to it (CKA_ID,
/// or CKA_APPLICATION for data objects, which have no CKA_ID).
pub type Identity = (CK_OBJECT_CLASS, CK_ATTRIBUTE_TYPE, Vec<u8>);

/// Attributes whose values differ between tokens when the object was generated on each.
const RANDOM_VALUED: [CK_ATTRIBUTE_TYPE; 11] = [
    CKA_VALUE,
    CKA_MODULUS,
    CKA_EC_POINT,
    CKA_CHECK_VALUE,
    CKA_PUBLIC_KEY_INFO,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
];

macro_rules! ck {
    ($side:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        match $side.f.$f {
            // SAFETY: every pointer argument is NULL on purpose or points at memory owned by
            // this frame, valid for the length passed with it.
            Some(f) => unsafe { f($($a),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

pub struct Side {
    /// "softhsm" or "p11ha".
    pub name: &'static str,
    f: &'static CK_FUNCTION_LIST,
    slot: CK_SLOT_ID,
    sessions: HashMap<Step, CK_SESSION_HANDLE>,
    /// Sessions this side has open (successful opens minus closes).
    open: usize,
    objects: HashMap<Obj, CK_OBJECT_HANDLE>,
    /// Objects whose handle the module may have forgotten (see the module docs).
    stale: HashSet<Obj>,
    /// Private objects whose handle a C_Logout invalidated, not yet used since.
    dead: HashSet<Obj>,
    /// Objects that are CKA_PRIVATE.
    private: HashSet<Obj>,
    identities: HashMap<Obj, Identity>,
    blobs: HashMap<Step, Blob>,
    /// Per session and operation kind: the step of the last Init that succeeded, and whether
    /// its outputs are alike on both tokens (see [`Det`]).
    ops: HashMap<(CK_SESSION_HANDLE, Op), (Step, bool)>,
    /// Per session: names found so far by the active search.
    found: HashMap<CK_SESSION_HANDLE, BTreeSet<String>>,
}

/// An output a call produced, for later calls to read.
#[derive(Clone, Debug)]
pub struct Blob {
    pub bytes: Vec<u8>,
    /// Alike on both tokens.
    pub det: bool,
    /// The Init step of the operation that produced it.
    pub origin: Option<Step>,
}

/// Output buffer of one call: prefilled, with its length word.
struct OutBuf {
    kind: Out,
    buf: Vec<u8>,
    len: CK_ULONG,
}

impl OutBuf {
    fn new(kind: Out) -> Self {
        let cap = match kind {
            Out::Query => 0,
            Out::Short(n) => usize::from(n),
            Out::Big | Out::NullLen => BIG,
        };
        OutBuf {
            kind,
            buf: vec![FILL; cap.max(1)],
            len: cap as CK_ULONG,
        }
    }
    fn ptr(&mut self) -> *mut u8 {
        match self.kind {
            Out::Query => null_mut(),
            _ => self.buf.as_mut_ptr(),
        }
    }
    fn len_ptr(&mut self) -> *mut CK_ULONG {
        match self.kind {
            Out::NullLen => null_mut(),
            _ => &mut self.len,
        }
    }
    /// Records the length word and, on success into a buffer, the output (its bytes when
    /// `det`, else its length) and whether the bytes past it were left alone. Returns the
    /// output.
    fn record(&self, obs: &mut Vec<Obs>, rv: CK_RV, det: bool) -> Option<Vec<u8>> {
        if self.kind != Out::NullLen {
            obs.push(Obs::new("len", Val::U(self.len)));
        }
        if rv != CKR_OK || self.kind == Out::Query {
            return None;
        }
        let n = usize::try_from(self.len)
            .ok()
            .filter(|&n| n <= self.buf.len());
        let Some(n) = n else {
            obs.push(Obs::new("len within buffer", Val::Bool(false)));
            return None;
        };
        let out = self.buf[..n].to_vec();
        obs.push(Obs::new(
            "out",
            if det {
                Val::Bytes(out.clone())
            } else {
                Val::Len(n)
            },
        ));
        let tail_clean = self.buf[n..].iter().all(|&b| b == FILL);
        obs.push(Obs::new("bytes past len untouched", Val::Bool(tail_clean)));
        Some(out)
    }
}

/// A template as C wants it, with the memory it points at.
struct RawTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    _values: Vec<Vec<u8>>,
}

impl RawTemplate {
    fn new(t: &[A]) -> Self {
        let mut values: Vec<Vec<u8>> = t
            .iter()
            .map(|a| match &a.val {
                AVal::Bool(b) => vec![u8::from(*b)],
                AVal::Ulong(v) => (*v as CK_ULONG).to_ne_bytes().to_vec(),
                AVal::Bytes(b) => b.clone(),
                AVal::Null(_) => Vec::new(),
            })
            .collect();
        let attrs = t
            .iter()
            .zip(values.iter_mut())
            .map(|(a, v)| match a.val {
                AVal::Null(n) => CK_ATTRIBUTE {
                    type_: a.ty,
                    pValue: null_mut(),
                    ulValueLen: n as CK_ULONG,
                },
                _ => CK_ATTRIBUTE {
                    type_: a.ty,
                    pValue: if v.is_empty() {
                        null_mut()
                    } else {
                        v.as_mut_ptr() as *mut _
                    },
                    ulValueLen: v.len() as CK_ULONG,
                },
            })
            .collect();
        RawTemplate {
            attrs,
            _values: values,
        }
    }
    /// (pointer, count); `null` passes NULL with the count (at least 1).
    fn ptr(&mut self, null: bool) -> (*mut CK_ATTRIBUTE, CK_ULONG) {
        if null {
            (null_mut(), self.attrs.len().max(1) as CK_ULONG)
        } else if self.attrs.is_empty() {
            (null_mut(), 0)
        } else {
            (self.attrs.as_mut_ptr(), self.attrs.len() as CK_ULONG)
        }
    }
}

/// A mechanism as C wants it, with its parameter block.
struct RawMech {
    m: CK_MECHANISM,
    _bytes: Vec<u8>,
    _oaep: Box<CK_RSA_PKCS_OAEP_PARAMS>,
    _pss: Box<CK_RSA_PKCS_PSS_PARAMS>,
}

impl RawMech {
    fn new(m: &Mech) -> Self {
        let mut oaep = Box::new(CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: null_mut(),
            ulSourceDataLen: 0,
        });
        let mut pss = Box::new(CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: 32,
        });
        let mut bytes = Vec::new();
        let (p, n): (*mut std::ffi::c_void, usize) = match m.param {
            Param::None => (null_mut(), 0),
            Param::Bytes(n, fill) => {
                bytes = vec![fill; usize::from(n)];
                (bytes.as_mut_ptr() as *mut _, bytes.len())
            }
            Param::NullLen(n) => (null_mut(), usize::from(n)),
            Param::OaepSha1 => (
                &mut *oaep as *mut _ as *mut _,
                std::mem::size_of::<CK_RSA_PKCS_OAEP_PARAMS>(),
            ),
            Param::PssSha256 => (
                &mut *pss as *mut _ as *mut _,
                std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>(),
            ),
        };
        RawMech {
            m: CK_MECHANISM {
                mechanism: m.ty,
                pParameter: p,
                ulParameterLen: n as CK_ULONG,
            },
            _bytes: bytes,
            _oaep: oaep,
            _pss: pss,
        }
    }
}

/// Where empty input points: a valid address the module must not read.
static EMPTY: [u8; 1] = [0];

/// Input bytes as C wants them, with what is known of where they came from.
struct RawInput {
    bytes: Vec<u8>,
    null: Option<u16>,
    /// Alike on both tokens.
    det: bool,
    origin: Option<Step>,
}

impl RawInput {
    fn ptr(&mut self) -> (*mut u8, CK_ULONG) {
        match self.null {
            Some(n) => (null_mut(), CK_ULONG::from(n)),
            // Empty data still has an address (NULL is Input::Null(0)).
            None if self.bytes.is_empty() => (EMPTY.as_ptr() as *mut u8, 0),
            None => (self.bytes.as_mut_ptr(), self.bytes.len() as CK_ULONG),
        }
    }
}

fn pin_bytes(p: Pin) -> Option<Vec<u8>> {
    match p {
        Pin::User => Some(crate::USER_PIN.as_bytes().to_vec()),
        Pin::So => Some(crate::SO_PIN.as_bytes().to_vec()),
        Pin::Wrong => Some(b"9999".to_vec()),
        Pin::Empty => Some(Vec::new()),
        Pin::NullZero | Pin::NullLen => None,
        Pin::Long => Some(vec![b'7'; 300]),
    }
}

/// (pointer, length) of a PIN; `bytes` must outlive the call.
fn pin_ptr(p: Pin, bytes: &mut Option<Vec<u8>>) -> (*mut u8, CK_ULONG) {
    match (p, bytes) {
        (Pin::NullLen, _) => (null_mut(), 4),
        (_, Some(b)) if b.is_empty() => (b"".as_ptr() as *mut u8, 0),
        (_, Some(b)) => (b.as_mut_ptr(), b.len() as CK_ULONG),
        (_, None) => (null_mut(), 0),
    }
}

fn text(b: &[u8]) -> Val {
    Val::Text(String::from_utf8_lossy(b).trim_end().to_string())
}

fn version(v: CK_VERSION) -> Val {
    Val::Text(format!("{}.{}", v.major, v.minor))
}

/// One observation per flag bit (so an allow-list entry can name one flag).
fn flag_bits(obs: &mut Vec<Obs>, prefix: &str, flags: CK_FLAGS, names: &[(CK_FLAGS, &str)]) {
    let mut rest = flags;
    for (bit, name) in names {
        obs.push(Obs::new(
            format!("{prefix}.{name}"),
            Val::Bool(flags & bit != 0),
        ));
        rest &= !bit;
    }
    obs.push(Obs::new(format!("{prefix}.others"), Val::U(rest)));
}

const TOKEN_FLAGS: &[(CK_FLAGS, &str)] = &[
    (CKF_RNG, "CKF_RNG"),
    (CKF_WRITE_PROTECTED, "CKF_WRITE_PROTECTED"),
    (CKF_LOGIN_REQUIRED, "CKF_LOGIN_REQUIRED"),
    (CKF_USER_PIN_INITIALIZED, "CKF_USER_PIN_INITIALIZED"),
    (CKF_RESTORE_KEY_NOT_NEEDED, "CKF_RESTORE_KEY_NOT_NEEDED"),
    (CKF_CLOCK_ON_TOKEN, "CKF_CLOCK_ON_TOKEN"),
    (
        CKF_PROTECTED_AUTHENTICATION_PATH,
        "CKF_PROTECTED_AUTHENTICATION_PATH",
    ),
    (CKF_DUAL_CRYPTO_OPERATIONS, "CKF_DUAL_CRYPTO_OPERATIONS"),
    (CKF_TOKEN_INITIALIZED, "CKF_TOKEN_INITIALIZED"),
    (CKF_SECONDARY_AUTHENTICATION, "CKF_SECONDARY_AUTHENTICATION"),
    (CKF_USER_PIN_COUNT_LOW, "CKF_USER_PIN_COUNT_LOW"),
    (CKF_USER_PIN_FINAL_TRY, "CKF_USER_PIN_FINAL_TRY"),
    (CKF_USER_PIN_LOCKED, "CKF_USER_PIN_LOCKED"),
    (CKF_USER_PIN_TO_BE_CHANGED, "CKF_USER_PIN_TO_BE_CHANGED"),
    (CKF_SO_PIN_COUNT_LOW, "CKF_SO_PIN_COUNT_LOW"),
    (CKF_SO_PIN_FINAL_TRY, "CKF_SO_PIN_FINAL_TRY"),
    (CKF_SO_PIN_LOCKED, "CKF_SO_PIN_LOCKED"),
    (CKF_SO_PIN_TO_BE_CHANGED, "CKF_SO_PIN_TO_BE_CHANGED"),
];

const SLOT_FLAGS: &[(CK_FLAGS, &str)] = &[
    (CKF_TOKEN_PRESENT, "CKF_TOKEN_PRESENT"),
    (CKF_REMOVABLE_DEVICE, "CKF_REMOVABLE_DEVICE"),
    (CKF_HW_SLOT, "CKF_HW_SLOT"),
];

/// A CK_ULONG count or size, with CK_UNAVAILABLE_INFORMATION and CK_EFFECTIVELY_INFINITE named.
fn count(v: CK_ULONG) -> Val {
    match v {
        CK_UNAVAILABLE_INFORMATION => Val::Text("CK_UNAVAILABLE_INFORMATION".into()),
        _ => Val::U(v),
    }
}

impl Side {
    /// A side over an initialized module, testing the token in `slot`. Every provisioned
    /// object is found on first use.
    pub fn new(name: &'static str, f: &'static CK_FUNCTION_LIST, slot: CK_SLOT_ID) -> Self {
        let mut identities = HashMap::new();
        let mut stale = HashSet::new();
        let private = [Pre::RsaPriv, Pre::EcPriv, Pre::Aes, Pre::Hmac]
            .into_iter()
            .map(Obj::Pre)
            .collect();
        for p in Pre::ALL {
            let (class, id) = p.identity();
            identities.insert(Obj::Pre(p), (class, CKA_ID, id));
            stale.insert(Obj::Pre(p));
        }
        Side {
            name,
            f,
            slot,
            sessions: HashMap::new(),
            open: 0,
            objects: HashMap::new(),
            stale,
            dead: HashSet::new(),
            private,
            identities,
            blobs: HashMap::new(),
            ops: HashMap::new(),
            found: HashMap::new(),
        }
    }

    /// Closes every session (between sequences and before C_Finalize).
    pub fn close_all(&mut self) {
        ck!(self, C_CloseAllSessions(self.slot));
        self.open = 0;
    }

    fn slot(&self, s: Slot) -> CK_SLOT_ID {
        match s {
            Slot::Good => self.slot,
            Slot::Bogus => BOGUS_SLOT,
        }
    }

    fn sess(&self, s: Sess) -> CK_SESSION_HANDLE {
        match s {
            Sess::Made(n) => self.sessions.get(&n).copied().unwrap_or(BOGUS_SESSION),
            Sess::Bogus => BOGUS_SESSION,
        }
    }

    /// The handle of `o` now, found again first if the module may have forgotten it.
    fn obj(&mut self, o: Obj) -> CK_OBJECT_HANDLE {
        if self.dead.remove(&o) {
            // The handle C_Logout invalidated, once; found again from now on.
            self.stale.insert(o);
            return self.objects.get(&o).copied().unwrap_or(BOGUS_OBJECT);
        }
        if self.stale.contains(&o) {
            if let Some(h) = self.refind(o) {
                self.objects.insert(o, h);
                self.stale.remove(&o);
            } else {
                return BOGUS_OBJECT;
            }
        }
        self.objects.get(&o).copied().unwrap_or(BOGUS_OBJECT)
    }

    /// Finds `o` by its identity in a session of its own, as an application would after a
    /// logout; None when it is not visible (or there is no session to look in).
    fn refind(&mut self, o: Obj) -> Option<CK_OBJECT_HANDLE> {
        let (class, attr, value) = self.identities.get(&o)?.clone();
        if self.open == 0 {
            return None;
        }
        let mut h = 0;
        let rv = ck!(
            self,
            C_OpenSession(
                self.slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                null_mut(),
                None,
                &mut h
            )
        );
        if rv != CKR_OK {
            return None;
        }
        let mut t = RawTemplate::new(&[A::ulong(CKA_CLASS, class), A::bytes(attr, value)]);
        let (p, n) = t.ptr(false);
        let mut found = [0; 4];
        let mut count = 0;
        if ck!(self, C_FindObjectsInit(h, p, n)) == CKR_OK {
            ck!(self, C_FindObjects(h, found.as_mut_ptr(), 4, &mut count));
            ck!(self, C_FindObjectsFinal(h));
        }
        ck!(self, C_CloseSession(h));
        (count == 1).then_some(found[0])
    }

    /// Every handle may now be forgotten by the module.
    fn all_stale(&mut self) {
        self.stale.extend(self.identities.keys().copied());
        self.dead.clear();
    }

    /// C_Logout succeeded: handles to private objects are invalid.
    fn logged_out(&mut self) {
        for o in self.private.clone() {
            if self.objects.contains_key(&o) && !self.stale.contains(&o) {
                self.dead.insert(o);
            }
        }
    }

    /// Names a handle a call just returned (made in session `s`).
    fn register(
        &mut self,
        s: CK_SESSION_HANDLE,
        o: Obj,
        h: CK_OBJECT_HANDLE,
        identity: Option<Identity>,
    ) {
        self.objects.insert(o, h);
        self.stale.remove(&o);
        self.dead.remove(&o);
        if self.read(s, h, CKA_PRIVATE).as_deref() == Some(&[CK_TRUE]) {
            self.private.insert(o);
        }
        if let Some(i) = identity {
            self.identities.insert(o, i);
        }
    }

    /// The name of a handle a search returned.
    fn name_of(&self, s: CK_SESSION_HANDLE, h: CK_OBJECT_HANDLE) -> String {
        let known = self
            .objects
            .iter()
            .find(|(o, v)| **v == h && !self.stale.contains(o))
            .map(|(o, _)| *o);
        if let Some(o) = known {
            return o.to_string();
        }
        // Not seen since it was made (or since the module forgot it): recognise it by identity.
        let class = self.read(s, h, CKA_CLASS);
        let class = class
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .map(CK_ULONG::from_ne_bytes);
        let attr = if class == Some(CKO_DATA) {
            CKA_APPLICATION
        } else {
            CKA_ID
        };
        let value = self.read(s, h, attr);
        let found = self
            .identities
            .iter()
            .find(|(_, (c, a, v))| Some(*c) == class && *a == attr && Some(v) == value.as_ref())
            .map(|(o, _)| *o);
        match found {
            // Naming changes nothing: searches return objects in each token's own order, so
            // what a partial search saw must not decide which handle the next call uses.
            Some(o) => o.to_string(),
            None => {
                let label = self.read(s, h, CKA_LABEL).unwrap_or_default();
                format!(
                    "unknown object (class {:?}, label {:?})",
                    class,
                    String::from_utf8_lossy(&label)
                )
            }
        }
    }

    /// One attribute value (two-phase), None when unreadable.
    fn read(
        &self,
        s: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Option<Vec<u8>> {
        let mut a = CK_ATTRIBUTE {
            type_: ty,
            pValue: null_mut(),
            ulValueLen: 0,
        };
        if ck!(self, C_GetAttributeValue(s, h, &mut a, 1)) != CKR_OK
            || a.ulValueLen == CK_UNAVAILABLE_INFORMATION
            || a.ulValueLen > 65536
        {
            return None;
        }
        let mut v = vec![0u8; a.ulValueLen as usize];
        a.pValue = v.as_mut_ptr() as *mut _;
        (ck!(self, C_GetAttributeValue(s, h, &mut a, 1)) == CKR_OK).then_some(v)
    }

    fn input(&self, i: &Input, other: &HashMap<Step, Blob>) -> RawInput {
        match i {
            Input::Bytes(n, fill) => RawInput {
                bytes: Input::bytes(*n, *fill),
                null: None,
                det: true,
                origin: None,
            },
            Input::Null(n) => RawInput {
                bytes: Vec::new(),
                null: Some(*n),
                det: true,
                origin: None,
            },
            Input::Blob {
                step,
                other: from_other,
                corrupt,
            } => {
                let store = if *from_other { other } else { &self.blobs };
                let blob = store.get(step).cloned().unwrap_or(Blob {
                    bytes: MISSING_BLOB.to_vec(),
                    det: true,
                    origin: None,
                });
                let mut bytes = blob.bytes;
                if *corrupt && !bytes.is_empty() {
                    let i = bytes.len() / 2;
                    bytes[i] ^= 0x10;
                }
                RawInput {
                    bytes,
                    null: None,
                    det: blob.det,
                    origin: blob.origin,
                }
            }
        }
    }

    /// The blobs this side produced (the other side may read them: [`Input::Blob`]).
    pub fn blobs(&self) -> &HashMap<Step, Blob> {
        &self.blobs
    }

    /// Whether the output of `op` in session `h` must be alike on both tokens, and the Init
    /// step of the operation that makes it (see [`Det`]).
    fn output_det(
        &self,
        h: CK_SESSION_HANDLE,
        op: Op,
        det: Det,
        inputs: &[&RawInput],
    ) -> (bool, Option<Step>) {
        let active = self.ops.get(&(h, op)).copied();
        let origin = active.map(|(step, _)| step);
        let alike = match det {
            Det::No => false,
            Det::Yes => active.is_some_and(|(_, d)| d) && inputs.iter().all(|i| i.det),
            Det::Decrypts { enc, dec } => {
                origin == Some(dec) && inputs.iter().all(|i| i.origin == Some(enc))
            }
        };
        (alike, origin)
    }

    fn keep(&mut self, step: Step, out: Option<Vec<u8>>, det: bool, origin: Option<Step>) {
        if let Some(bytes) = out {
            self.blobs.insert(step, Blob { bytes, det, origin });
        }
    }

    /// Runs call `step` and returns what it observed. `other` holds the other side's outputs.
    pub fn run(&mut self, step: Step, call: &Call, other: &HashMap<Step, Blob>) -> Vec<Obs> {
        let mut obs = Vec::new();
        let rv = self.exec(step, call, other, &mut obs);
        obs.insert(0, Obs::new("rv", Val::Rv(rv)));
        obs
    }

    fn exec(
        &mut self,
        step: Step,
        call: &Call,
        other: &HashMap<Step, Blob>,
        obs: &mut Vec<Obs>,
    ) -> CK_RV {
        match call {
            Call::GetInfo => {
                // SAFETY: plain C struct.
                let mut info: CK_INFO = unsafe { std::mem::zeroed() };
                let rv = ck!(self, C_GetInfo(&mut info));
                if rv == CKR_OK {
                    obs.push(Obs::new("cryptokiVersion", version(info.cryptokiVersion)));
                    obs.push(Obs::new("manufacturerID", text(&info.manufacturerID)));
                    obs.push(Obs::new("flags", Val::U(info.flags)));
                    obs.push(Obs::new(
                        "libraryDescription",
                        text(&info.libraryDescription),
                    ));
                    obs.push(Obs::new("libraryVersion", version(info.libraryVersion)));
                }
                rv
            }
            Call::InitializeAgain { bad } => {
                let mut reserved = 0u8;
                let mut args = CK_C_INITIALIZE_ARGS {
                    CreateMutex: None,
                    DestroyMutex: None,
                    LockMutex: None,
                    UnlockMutex: None,
                    flags: CKF_OS_LOCKING_OK,
                    pReserved: if *bad {
                        &mut reserved as *mut u8 as *mut _
                    } else {
                        null_mut()
                    },
                };
                ck!(self, C_Initialize(&mut args as *mut _ as *mut _))
            }
            Call::WaitForSlotEvent => {
                let mut slot = 0;
                ck!(
                    self,
                    C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut())
                )
            }
            Call::GetSlotList { present, out } => {
                let mut list = vec![0 as CK_SLOT_ID; 64];
                let (cap, p) = match out {
                    Out::Query => (0, null_mut()),
                    Out::Short(n) => (CK_ULONG::from(*n), list.as_mut_ptr()),
                    _ => (64, list.as_mut_ptr()),
                };
                let mut n = cap;
                let pn: *mut CK_ULONG = if *out == Out::NullLen {
                    null_mut()
                } else {
                    &mut n
                };
                let rv = ck!(self, C_GetSlotList(CK_BBOOL::from(*present), p, pn));
                if *out != Out::NullLen {
                    obs.push(Obs::new("count", Val::U(n)));
                }
                if rv == CKR_OK && !p.is_null() {
                    let got = &list[..(n as usize).min(64)];
                    obs.push(Obs::new(
                        "lists the token's slot",
                        Val::Bool(got.contains(&self.slot)),
                    ));
                }
                rv
            }
            Call::GetSlotInfo { slot } => {
                // SAFETY: plain C struct.
                let mut info: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
                let rv = ck!(self, C_GetSlotInfo(self.slot(*slot), &mut info));
                if rv == CKR_OK {
                    obs.push(Obs::new("slotDescription", text(&info.slotDescription)));
                    obs.push(Obs::new("manufacturerID", text(&info.manufacturerID)));
                    flag_bits(obs, "flags", info.flags, SLOT_FLAGS);
                    obs.push(Obs::new("hardwareVersion", version(info.hardwareVersion)));
                    obs.push(Obs::new("firmwareVersion", version(info.firmwareVersion)));
                }
                rv
            }
            Call::GetTokenInfo { slot } => {
                // SAFETY: plain C struct.
                let mut t: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
                let rv = ck!(self, C_GetTokenInfo(self.slot(*slot), &mut t));
                if rv == CKR_OK {
                    obs.push(Obs::new("label", text(&t.label)));
                    obs.push(Obs::new("manufacturerID", text(&t.manufacturerID)));
                    obs.push(Obs::new("model", text(&t.model)));
                    obs.push(Obs::new("serialNumber", text(&t.serialNumber)));
                    flag_bits(obs, "flags", t.flags, TOKEN_FLAGS);
                    for (n, v) in [
                        ("ulMaxSessionCount", t.ulMaxSessionCount),
                        ("ulSessionCount", t.ulSessionCount),
                        ("ulMaxRwSessionCount", t.ulMaxRwSessionCount),
                        ("ulRwSessionCount", t.ulRwSessionCount),
                        ("ulMaxPinLen", t.ulMaxPinLen),
                        ("ulMinPinLen", t.ulMinPinLen),
                        ("ulTotalPublicMemory", t.ulTotalPublicMemory),
                        ("ulFreePublicMemory", t.ulFreePublicMemory),
                        ("ulTotalPrivateMemory", t.ulTotalPrivateMemory),
                        ("ulFreePrivateMemory", t.ulFreePrivateMemory),
                    ] {
                        obs.push(Obs::new(n, count(v)));
                    }
                    obs.push(Obs::new("hardwareVersion", version(t.hardwareVersion)));
                    obs.push(Obs::new("firmwareVersion", version(t.firmwareVersion)));
                    let clock = t.flags & CKF_CLOCK_ON_TOKEN != 0;
                    // A clock's reading differs by the second; only its presence is compared.
                    obs.push(Obs::new(
                        "utcTime",
                        if clock {
                            Val::Len(t.utcTime.len())
                        } else {
                            text(&t.utcTime)
                        },
                    ));
                }
                rv
            }
            Call::GetMechanismList { slot, out } => {
                let mut list = vec![0 as CK_MECHANISM_TYPE; 512];
                let (cap, p) = match out {
                    Out::Query => (0, null_mut()),
                    Out::Short(n) => (CK_ULONG::from(*n), list.as_mut_ptr()),
                    _ => (512, list.as_mut_ptr()),
                };
                let mut n = cap;
                let pn: *mut CK_ULONG = if *out == Out::NullLen {
                    null_mut()
                } else {
                    &mut n
                };
                let rv = ck!(self, C_GetMechanismList(self.slot(*slot), p, pn));
                if *out != Out::NullLen {
                    obs.push(Obs::new("count", Val::U(n)));
                }
                if rv == CKR_OK && !p.is_null() {
                    let got: Vec<String> = list[..(n as usize).min(512)]
                        .iter()
                        .map(|m| super::names::mech_name(*m))
                        .collect();
                    obs.push(Obs::new("mechanisms", Val::Set(got)));
                }
                rv
            }
            Call::GetMechanismInfo { slot, mech } => {
                // SAFETY: plain C struct; zeroed because SoftHSM ORs flags into what it gets.
                let mut info: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
                let rv = ck!(self, C_GetMechanismInfo(self.slot(*slot), *mech, &mut info));
                if rv == CKR_OK {
                    obs.push(Obs::new("ulMinKeySize", Val::U(info.ulMinKeySize)));
                    obs.push(Obs::new("ulMaxKeySize", Val::U(info.ulMaxKeySize)));
                    obs.push(Obs::new("flags", Val::U(info.flags)));
                }
                rv
            }
            Call::OpenSession {
                slot,
                flags,
                null_out,
            } => {
                let mut h = 0;
                let ph: *mut CK_SESSION_HANDLE = if *null_out { null_mut() } else { &mut h };
                let rv = ck!(
                    self,
                    C_OpenSession(self.slot(*slot), *flags, null_mut(), None, ph)
                );
                if rv == CKR_OK && !*null_out {
                    self.sessions.insert(step, h);
                    self.open += 1;
                }
                rv
            }
            Call::CloseSession { s } => {
                let h = self.sess(*s);
                let rv = ck!(self, C_CloseSession(h));
                if rv == CKR_OK {
                    self.open = self.open.saturating_sub(1);
                    self.found.remove(&h);
                    if self.open == 0 {
                        self.all_stale();
                    }
                }
                rv
            }
            Call::CloseAllSessions { slot } => {
                let rv = ck!(self, C_CloseAllSessions(self.slot(*slot)));
                if rv == CKR_OK {
                    self.open = 0;
                    self.found.clear();
                    self.all_stale();
                }
                rv
            }
            Call::GetSessionInfo { s, null_out } => {
                // SAFETY: plain C struct.
                let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
                let p: *mut CK_SESSION_INFO = if *null_out { null_mut() } else { &mut info };
                let rv = ck!(self, C_GetSessionInfo(self.sess(*s), p));
                if rv == CKR_OK && !*null_out {
                    obs.push(Obs::new(
                        "slotID is the token's",
                        Val::Bool(info.slotID == self.slot),
                    ));
                    obs.push(Obs::new("state", Val::U(info.state)));
                    obs.push(Obs::new("flags", Val::U(info.flags)));
                    obs.push(Obs::new("ulDeviceError", Val::U(info.ulDeviceError)));
                }
                rv
            }
            Call::GetOperationState { s } => {
                let mut n: CK_ULONG = 0;
                let rv = ck!(self, C_GetOperationState(self.sess(*s), null_mut(), &mut n));
                obs.push(Obs::new("len", Val::U(n)));
                rv
            }
            Call::Login { s, user, pin } => {
                let mut b = pin_bytes(*pin);
                let (p, n) = pin_ptr(*pin, &mut b);
                ck!(self, C_Login(self.sess(*s), *user, p, n))
            }
            Call::Logout { s } => {
                let rv = ck!(self, C_Logout(self.sess(*s)));
                if rv == CKR_OK {
                    self.logged_out();
                }
                rv
            }
            Call::InitPin { s } => {
                let mut b = pin_bytes(Pin::User);
                let (p, n) = pin_ptr(Pin::User, &mut b);
                ck!(self, C_InitPIN(self.sess(*s), p, n))
            }
            Call::SetPin { s, old } => {
                let mut a = pin_bytes(*old);
                let mut b = pin_bytes(*old);
                let (p1, n1) = pin_ptr(*old, &mut a);
                let (p2, n2) = pin_ptr(*old, &mut b);
                ck!(self, C_SetPIN(self.sess(*s), p1, n1, p2, n2))
            }
            Call::CreateObject { s, tmpl, null_tmpl } => {
                let mut t = RawTemplate::new(tmpl);
                let (p, n) = t.ptr(*null_tmpl);
                let mut h = 0;
                let rv = ck!(self, C_CreateObject(self.sess(*s), p, n, &mut h));
                if rv == CKR_OK {
                    self.register(
                        self.sess(*s),
                        Obj::Made(step, 0),
                        h,
                        identity(tmpl, CKO_DATA),
                    );
                }
                rv
            }
            Call::CopyObject { s, o, tmpl } => {
                let src = self.obj(*o);
                let mut t = RawTemplate::new(tmpl);
                let (p, n) = t.ptr(false);
                let mut h = 0;
                let rv = ck!(self, C_CopyObject(self.sess(*s), src, p, n, &mut h));
                if rv == CKR_OK {
                    let class = self.identities.get(o).map_or(CKO_DATA, |i| i.0);
                    self.register(self.sess(*s), Obj::Made(step, 0), h, identity(tmpl, class));
                }
                rv
            }
            Call::DestroyObject { s, o } => {
                let h = self.obj(*o);
                ck!(self, C_DestroyObject(self.sess(*s), h))
            }
            Call::GetObjectSize { s, o } => {
                let h = self.obj(*o);
                let mut n: CK_ULONG = 0;
                let rv = ck!(self, C_GetObjectSize(self.sess(*s), h, &mut n));
                if rv == CKR_OK {
                    obs.push(Obs::new("size", count(n)));
                }
                rv
            }
            Call::GetAttributes {
                s,
                o,
                query,
                det,
                null_tmpl,
            } => {
                let h = self.obj(*o);
                let mut bufs: Vec<Vec<u8>> = query
                    .iter()
                    .map(|(_, b)| match b {
                        AttrOut::Null => Vec::new(),
                        AttrOut::Short(n) => vec![FILL; usize::from(*n).max(1)],
                        AttrOut::Big | AttrOut::Huge => vec![FILL; BIG],
                    })
                    .collect();
                let mut t: Vec<CK_ATTRIBUTE> = query
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|((ty, b), buf)| CK_ATTRIBUTE {
                        type_: *ty,
                        pValue: if *b == AttrOut::Null {
                            null_mut()
                        } else {
                            buf.as_mut_ptr() as *mut _
                        },
                        ulValueLen: match b {
                            AttrOut::Null => 0xdead,
                            AttrOut::Short(n) => CK_ULONG::from(*n),
                            AttrOut::Big => BIG as CK_ULONG,
                            AttrOut::Huge => 1 << 40,
                        },
                    })
                    .collect();
                let p = if *null_tmpl {
                    null_mut()
                } else {
                    t.as_mut_ptr()
                };
                let rv = ck!(
                    self,
                    C_GetAttributeValue(self.sess(*s), h, p, t.len() as CK_ULONG)
                );
                if !*null_tmpl {
                    for (i, a) in t.iter().enumerate() {
                        let name = attr_name(a.type_);
                        obs.push(Obs::new(format!("{name}.len"), count(a.ulValueLen)));
                        let cap = match query[i].1 {
                            AttrOut::Null => 0,
                            AttrOut::Short(n) => usize::from(n),
                            _ => BIG,
                        };
                        let n = a.ulValueLen as usize;
                        if a.pValue.is_null()
                            || a.ulValueLen == CK_UNAVAILABLE_INFORMATION
                            || n > cap
                        {
                            continue;
                        }
                        let v = bufs[i][..n].to_vec();
                        let same = *det || !RANDOM_VALUED.contains(&a.type_);
                        obs.push(Obs::new(
                            format!("{name}.value"),
                            if same { Val::Bytes(v) } else { Val::Len(n) },
                        ));
                    }
                }
                rv
            }
            Call::SetAttributes { s, o, tmpl } => {
                let h = self.obj(*o);
                let mut t = RawTemplate::new(tmpl);
                let (p, n) = t.ptr(false);
                let rv = ck!(self, C_SetAttributeValue(self.sess(*s), h, p, n));
                if rv == CKR_OK {
                    // A new CKA_ID / CKA_APPLICATION is the object's new identity.
                    if let Some(old) = self.identities.get(o).cloned() {
                        if let Some(new) = identity(tmpl, old.0) {
                            if new.1 == old.1 {
                                self.identities.insert(*o, new);
                            }
                        }
                    }
                }
                rv
            }
            Call::FindInit { s, tmpl, null_tmpl } => {
                let h = self.sess(*s);
                let mut t = RawTemplate::new(tmpl);
                let (p, n) = t.ptr(*null_tmpl);
                let rv = ck!(self, C_FindObjectsInit(h, p, n));
                if rv == CKR_OK {
                    self.found.insert(h, BTreeSet::new());
                }
                rv
            }
            Call::Find {
                s,
                max,
                null_buf,
                null_count,
            } => {
                let h = self.sess(*s);
                let mut buf = vec![0 as CK_OBJECT_HANDLE; 512];
                let mut n: CK_ULONG = 0;
                let p = if *null_buf {
                    null_mut()
                } else {
                    buf.as_mut_ptr()
                };
                let pn: *mut CK_ULONG = if *null_count { null_mut() } else { &mut n };
                let rv = ck!(self, C_FindObjects(h, p, *max as CK_ULONG, pn));
                if !*null_count {
                    obs.push(Obs::new("count", Val::U(n)));
                }
                if rv == CKR_OK && !*null_buf && !*null_count {
                    let got = &buf[..(n as usize).min(512)];
                    let names: Vec<String> = got.iter().map(|&o| self.name_of(h, o)).collect();
                    let acc = self.found.entry(h).or_default();
                    acc.extend(names);
                    if n < *max as CK_ULONG {
                        // The search is exhausted: what it found, in any order.
                        let all = std::mem::take(acc);
                        obs.push(Obs::new("found", Val::Set(all.into_iter().collect())));
                    }
                }
                rv
            }
            Call::FindFinal { s } => {
                let h = self.sess(*s);
                let rv = ck!(self, C_FindObjectsFinal(h));
                if rv == CKR_OK {
                    self.found.remove(&h);
                }
                rv
            }
            Call::GenerateKey { s, mech, tmpl } => {
                let mut m = mech.as_ref().map(RawMech::new);
                let pm = m.as_mut().map_or(null_mut(), |m| &mut m.m as *mut _);
                let mut t = RawTemplate::new(tmpl);
                let (p, n) = t.ptr(false);
                let mut h = 0;
                let rv = ck!(self, C_GenerateKey(self.sess(*s), pm, p, n, &mut h));
                if rv == CKR_OK {
                    self.register(
                        self.sess(*s),
                        Obj::Made(step, 0),
                        h,
                        identity(tmpl, CKO_SECRET_KEY),
                    );
                }
                rv
            }
            Call::GenerateKeyPair {
                s,
                mech,
                public,
                private,
            } => {
                let mut m = RawMech::new(mech);
                let mut tpu = RawTemplate::new(public);
                let mut tpr = RawTemplate::new(private);
                let (p1, n1) = tpu.ptr(false);
                let (p2, n2) = tpr.ptr(false);
                let (mut hpu, mut hpr) = (0, 0);
                let rv = ck!(
                    self,
                    C_GenerateKeyPair(self.sess(*s), &mut m.m, p1, n1, p2, n2, &mut hpu, &mut hpr)
                );
                if rv == CKR_OK {
                    self.register(
                        self.sess(*s),
                        Obj::Made(step, 0),
                        hpu,
                        identity(public, CKO_PUBLIC_KEY),
                    );
                    self.register(
                        self.sess(*s),
                        Obj::Made(step, 1),
                        hpr,
                        identity(private, CKO_PRIVATE_KEY),
                    );
                }
                rv
            }
            Call::WrapKey {
                s,
                mech,
                wrapping,
                key,
                out,
                det,
            } => {
                let (hw, hk) = (self.obj(*wrapping), self.obj(*key));
                let mut m = RawMech::new(mech);
                let mut o = OutBuf::new(*out);
                let (po, pl) = (o.ptr(), o.len_ptr());
                let rv = ck!(self, C_WrapKey(self.sess(*s), &mut m.m, hw, hk, po, pl));
                let out = o.record(obs, rv, *det);
                self.keep(step, out, *det, None);
                rv
            }
            Call::UnwrapKey {
                s,
                mech,
                unwrapping,
                blob,
                tmpl,
            } => {
                let hu = self.obj(*unwrapping);
                let mut m = RawMech::new(mech);
                let mut b = self.input(blob, other);
                let (pb, nb) = b.ptr();
                let mut t = RawTemplate::new(tmpl);
                let (p, n) = t.ptr(false);
                let mut h = 0;
                let rv = ck!(
                    self,
                    C_UnwrapKey(self.sess(*s), &mut m.m, hu, pb, nb, p, n, &mut h)
                );
                if rv == CKR_OK {
                    self.register(
                        self.sess(*s),
                        Obj::Made(step, 0),
                        h,
                        identity(tmpl, CKO_SECRET_KEY),
                    );
                }
                rv
            }
            Call::GenerateRandom { s, len, null } => {
                let mut buf = vec![0u8; usize::from(*len) + 16];
                let p = if *null { null_mut() } else { buf.as_mut_ptr() };
                let rv = ck!(
                    self,
                    C_GenerateRandom(self.sess(*s), p, CK_ULONG::from(*len))
                );
                if rv == CKR_OK && !*null {
                    let n = usize::from(*len);
                    if n >= 16 {
                        obs.push(Obs::new(
                            "output is not all zero",
                            Val::Bool(buf[..n].iter().any(|&b| b != 0)),
                        ));
                    }
                    obs.push(Obs::new(
                        "bytes past len untouched",
                        Val::Bool(buf[n..].iter().all(|&b| b == 0)),
                    ));
                }
                rv
            }
            Call::SeedRandom { s, len, null } => {
                let mut seed = Input::bytes(*len, 3);
                let p = if *null || seed.is_empty() {
                    null_mut()
                } else {
                    seed.as_mut_ptr()
                };
                ck!(self, C_SeedRandom(self.sess(*s), p, CK_ULONG::from(*len)))
            }
            Call::Init {
                s,
                op,
                mech,
                key,
                det,
            } => {
                let h = self.sess(*s);
                let k = if *op == Op::Digest { 0 } else { self.obj(*key) };
                let mut m = mech.as_ref().map(RawMech::new);
                let pm = m.as_mut().map_or(null_mut(), |m| &mut m.m as *mut _);
                let rv = match op {
                    Op::Sign => ck!(self, C_SignInit(h, pm, k)),
                    Op::Verify => ck!(self, C_VerifyInit(h, pm, k)),
                    Op::Encrypt => ck!(self, C_EncryptInit(h, pm, k)),
                    Op::Decrypt => ck!(self, C_DecryptInit(h, pm, k)),
                    Op::Digest => ck!(self, C_DigestInit(h, pm)),
                };
                if rv == CKR_OK {
                    self.ops.insert((h, *op), (step, *det));
                }
                rv
            }
            Call::Single {
                s,
                op,
                data,
                out,
                det,
            } => {
                let h = self.sess(*s);
                let mut d = self.input(data, other);
                let (pd, nd) = d.ptr();
                let (alike, origin) = self.output_det(h, *op, *det, &[&d]);
                let mut o = OutBuf::new(*out);
                let (po, pl) = (o.ptr(), o.len_ptr());
                let rv = match op {
                    Op::Sign => ck!(self, C_Sign(h, pd, nd, po, pl)),
                    Op::Encrypt => ck!(self, C_Encrypt(h, pd, nd, po, pl)),
                    Op::Decrypt => ck!(self, C_Decrypt(h, pd, nd, po, pl)),
                    Op::Digest => ck!(self, C_Digest(h, pd, nd, po, pl)),
                    Op::Verify => unreachable!("C_Verify is Call::Verify"),
                };
                let out = o.record(obs, rv, alike);
                self.keep(step, out, alike, origin);
                rv
            }
            Call::Update {
                s,
                op,
                data,
                out,
                det,
            } => {
                let h = self.sess(*s);
                let mut d = self.input(data, other);
                let (pd, nd) = d.ptr();
                match op {
                    Op::Sign => ck!(self, C_SignUpdate(h, pd, nd)),
                    Op::Verify => ck!(self, C_VerifyUpdate(h, pd, nd)),
                    Op::Digest => ck!(self, C_DigestUpdate(h, pd, nd)),
                    Op::Encrypt | Op::Decrypt => {
                        let (alike, origin) = self.output_det(h, *op, *det, &[&d]);
                        let mut o = OutBuf::new(*out);
                        let (po, pl) = (o.ptr(), o.len_ptr());
                        let rv = if *op == Op::Encrypt {
                            ck!(self, C_EncryptUpdate(h, pd, nd, po, pl))
                        } else {
                            ck!(self, C_DecryptUpdate(h, pd, nd, po, pl))
                        };
                        let out = o.record(obs, rv, alike);
                        self.keep(step, out, alike, origin);
                        rv
                    }
                }
            }
            Call::Final { s, op, out, det } => {
                let h = self.sess(*s);
                // The parts fed (their origins) were checked by the updates that fed them.
                let (alike, origin) = match det {
                    Det::Decrypts { dec, .. } => {
                        let origin = self.ops.get(&(h, *op)).map(|(s, _)| *s);
                        (origin == Some(*dec), origin)
                    }
                    _ => self.output_det(h, *op, *det, &[]),
                };
                let mut o = OutBuf::new(*out);
                let (po, pl) = (o.ptr(), o.len_ptr());
                let rv = match op {
                    Op::Sign => ck!(self, C_SignFinal(h, po, pl)),
                    Op::Encrypt => ck!(self, C_EncryptFinal(h, po, pl)),
                    Op::Decrypt => ck!(self, C_DecryptFinal(h, po, pl)),
                    Op::Digest => ck!(self, C_DigestFinal(h, po, pl)),
                    Op::Verify => unreachable!("C_VerifyFinal is Call::VerifyFinal"),
                };
                let out = o.record(obs, rv, alike);
                self.keep(step, out, alike, origin);
                rv
            }
            Call::Verify { s, data, sig } => {
                let h = self.sess(*s);
                let mut d = self.input(data, other);
                let mut g = self.input(sig, other);
                let (pd, nd) = d.ptr();
                let (pg, ng) = g.ptr();
                ck!(self, C_Verify(h, pd, nd, pg, ng))
            }
            Call::VerifyFinal { s, sig } => {
                let h = self.sess(*s);
                let mut g = self.input(sig, other);
                let (pg, ng) = g.ptr();
                ck!(self, C_VerifyFinal(h, pg, ng))
            }
            Call::DigestKey { s, o, det } => {
                let k = self.obj(*o);
                let h = self.sess(*s);
                let rv = ck!(self, C_DigestKey(h, k));
                if rv == CKR_OK && !*det {
                    if let Some(op) = self.ops.get_mut(&(h, Op::Digest)) {
                        op.1 = false;
                    }
                }
                rv
            }
        }
    }
}

/// The identity an object made from `tmpl` has (class `default` unless the template says).
fn identity(tmpl: &[A], default: CK_OBJECT_CLASS) -> Option<Identity> {
    let class = tmpl
        .iter()
        .find_map(|a| match (a.ty, &a.val) {
            (CKA_CLASS, AVal::Ulong(c)) => Some(*c as CK_OBJECT_CLASS),
            _ => None,
        })
        .unwrap_or(default);
    let attr = if class == CKO_DATA {
        CKA_APPLICATION
    } else {
        CKA_ID
    };
    tmpl.iter().find_map(|a| match (&a.val, a.ty == attr) {
        (AVal::Bytes(v), true) => Some((class, attr, v.clone())),
        _ => None,
    })
}
