//! Random, seeded sequences of calls. A loose model of the token (sessions, login, objects,
//! active operations, outputs) keeps most calls meaningful: keys are used with mechanisms that
//! fit them, outputs are verified or decrypted later, searches are run to their end. The model
//! never sees a result, so a sequence depends on its seed alone and any prefix of it is a
//! sequence too (the shrinker replays prefixes). Where the model guesses wrong, the call simply
//! fails alike on both sides.
//!
//! A sequence is made of episodes (a session change, a login, a signature and its verification,
//! a search, ...), some of them deliberately wrong: bad handles, wrong key types, operations not
//! initialized or already active, NULL pointers, length queries and short buffers.

use cryptoki_sys::*;

use super::call::*;
use super::rng::Rng;

/// Families of episodes, by name (`P11HA_DIFF_SKIP` takes a comma-separated list of them),
/// and two kinds of mistakes found across families: `overlap` (an operation started while
/// another is active in the session, or left unfinished) and `misuse` (keys of the wrong type
/// for a mechanism, data lengths it refuses), and `sessionobjects` (without it every object
/// made is a token object).
pub const FAMILIES: &[&str] = &[
    "session",
    "login",
    "create",
    "find",
    "attributes",
    "sign",
    "crypt",
    "digest",
    "wrap",
    "destroy",
    "random",
    "info",
    "overlap",
    "misuse",
    "sessionobjects",
];

const ENC: u8 = 1;
const DEC: u8 = 2;
const SIGN: u8 = 4;
const VERIFY: u8 = 8;
const WRAP: u8 = 16;
const UNWRAP: u8 = 32;

const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// An attribute type no token knows.
const BAD_ATTR: CK_ATTRIBUTE_TYPE = CKA_VENDOR_DEFINED | 0x0bad;
/// A mechanism no token knows.
const BAD_MECH: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED | 0x0bad;
/// A NULL data pointer with a length.
fn nulls(d: &Input) -> bool {
    matches!(d, Input::Null(n) if *n > 0)
}

/// Labels made objects choose from, so that searches by label find subsets.
const LABELS: [&[u8]; 4] = [b"L0", b"L1", b"L2", b"L3"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Data,
    Aes,
    Generic,
    Des,
    Des3,
    RsaPriv,
    RsaPub,
    EcPriv,
    EcPub,
    Cert,
}

impl Kind {
    fn is_secret(self) -> bool {
        matches!(self, Kind::Aes | Kind::Generic | Kind::Des | Kind::Des3)
    }
    fn class(self) -> CK_OBJECT_CLASS {
        match self {
            Kind::Data => CKO_DATA,
            Kind::RsaPriv | Kind::EcPriv => CKO_PRIVATE_KEY,
            Kind::RsaPub | Kind::EcPub => CKO_PUBLIC_KEY,
            Kind::Cert => CKO_CERTIFICATE,
            _ => CKO_SECRET_KEY,
        }
    }
}

#[derive(Clone, Debug)]
struct MObj {
    o: Obj,
    kind: Kind,
    token: bool,
    private: bool,
    sensitive: bool,
    extractable: bool,
    /// Same value on both tokens (provisioned, or made from a given value).
    det: bool,
    usage: u8,
    alive: bool,
    /// The session a session object belongs to.
    session: Option<Step>,
    /// The other half of a key pair.
    pair: Option<Obj>,
}

#[derive(Clone, Debug)]
struct MSess {
    step: Step,
    rw: bool,
    open: bool,
}

pub struct Gen {
    rng: Rng,
    calls: Vec<Call>,
    sessions: Vec<MSess>,
    objs: Vec<MObj>,
    login: Option<CK_USER_TYPE>,
    /// Wrong PINs given since the last correct one (kept low: tokens lock out).
    wrong: u32,
    uid: u32,
    /// RSA key pairs generated (slow: one per 1500 calls).
    rsa_made: usize,
    skip: Vec<String>,
}

/// `count` calls from `seed`, without the episode families in `skip`.
pub fn generate(seed: u64, count: usize, skip: &[String]) -> Vec<Call> {
    let mut g = Gen::new(seed, skip);
    g.prologue();
    while g.calls.len() < count {
        g.episode();
    }
    g.calls.truncate(count);
    g.calls
}

impl Gen {
    fn new(seed: u64, skip: &[String]) -> Self {
        let pre = |p: Pre, kind: Kind, private: bool, usage: u8, pair: Option<Pre>| MObj {
            o: Obj::Pre(p),
            kind,
            token: true,
            private,
            sensitive: private,
            extractable: false,
            det: true,
            usage,
            alive: true,
            session: None,
            pair: pair.map(Obj::Pre),
        };
        Gen {
            rng: Rng::new(seed),
            calls: Vec::new(),
            sessions: Vec::new(),
            objs: vec![
                pre(
                    Pre::RsaPriv,
                    Kind::RsaPriv,
                    true,
                    SIGN | DEC,
                    Some(Pre::RsaPub),
                ),
                pre(Pre::RsaPub, Kind::RsaPub, false, VERIFY | ENC | WRAP, None),
                pre(Pre::RsaCert, Kind::Cert, false, 0, None),
                pre(Pre::EcPriv, Kind::EcPriv, true, SIGN, Some(Pre::EcPub)),
                pre(Pre::EcPub, Kind::EcPub, false, VERIFY, None),
                pre(Pre::Aes, Kind::Aes, true, ENC | DEC | SIGN | VERIFY, None),
                pre(
                    Pre::Hmac,
                    Kind::Generic,
                    true,
                    ENC | DEC | SIGN | VERIFY,
                    None,
                ),
            ],
            login: None,
            wrong: 0,
            uid: 0,
            rsa_made: 0,
            skip: skip.to_vec(),
        }
    }

    fn emit(&mut self, c: Call) -> Step {
        let ends_session = match &c {
            Call::Single { s, data, out, .. } | Call::Update { s, data, out, .. } => {
                (nulls(data) || *out == Out::NullLen).then_some(*s)
            }
            Call::Final { s, out, .. } => (*out == Out::NullLen).then_some(*s),
            Call::Verify { s, data, sig } => (nulls(data) || nulls(sig)).then_some(*s),
            Call::VerifyFinal { s, sig } => nulls(sig).then_some(*s),
            _ => None,
        };
        self.calls.push(c);
        let step = self.calls.len() - 1;
        if let Some(Sess::Made(n)) = ends_session {
            // A NULL pointer refused in an operation: p11ha ends the operation (PKCS#11: any
            // error but CKR_BUFFER_TOO_SMALL does), SoftHSM 2.6.1 and p11-kit-client keep some
            // active. The sessions would differ from here on and every later answer in them
            // would follow from that one known difference, so the session ends here.
            if self.sessions.iter().any(|x| x.step == n && x.open) {
                self.calls.push(Call::CloseSession { s: Sess::Made(n) });
                self.close_model(n);
            }
        }
        step
    }

    fn chance(&mut self, p: u32) -> bool {
        self.rng.chance(p)
    }

    fn allows(&self, family: &str) -> bool {
        !self.skip.iter().any(|s| s == family)
    }

    /// Leave an operation unfinished (if `overlap` is not skipped).
    fn abandon(&mut self) -> bool {
        let p = self.chance(4);
        p && self.allows("overlap")
    }

    fn fresh_id(&mut self) -> Vec<u8> {
        self.uid += 1;
        vec![0x55, (self.uid >> 8) as u8, self.uid as u8]
    }

    fn fresh_app(&mut self) -> Vec<u8> {
        self.uid += 1;
        format!("app{}", self.uid).into_bytes()
    }

    fn label(&mut self) -> Vec<u8> {
        self.rng.pick(&LABELS).to_vec()
    }

    // ---- sessions and login -------------------------------------------------------------

    fn open_sessions(&self) -> Vec<&MSess> {
        self.sessions.iter().filter(|s| s.open).collect()
    }

    fn open(&mut self, rw: bool) -> Sess {
        let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
        let step = self.emit(Call::OpenSession {
            slot: Slot::Good,
            flags,
            null_out: false,
        });
        let so = self.login == Some(CKU_SO);
        self.sessions.push(MSess {
            step,
            rw,
            open: rw || !so,
        });
        Sess::Made(step)
    }

    /// An open session (read-write if `rw`), opened if there is none.
    fn session(&mut self, rw: bool) -> Sess {
        let open: Vec<Step> = self
            .open_sessions()
            .into_iter()
            .filter(|s| s.rw || !rw)
            .map(|s| s.step)
            .collect();
        if open.is_empty() || self.chance(3) {
            let rw = rw || self.login == Some(CKU_SO) || self.chance(70);
            return self.open(rw);
        }
        Sess::Made(self.rng.pick(&open))
    }

    /// Mostly an open session; sometimes a closed one or one that never existed.
    fn some_session(&mut self, rw: bool) -> Sess {
        let closed: Vec<Step> = self
            .sessions
            .iter()
            .filter(|s| !s.open)
            .map(|s| s.step)
            .collect();
        match self.rng.below(100) {
            0..=2 if !closed.is_empty() => Sess::Made(self.rng.pick(&closed)),
            3..=4 => Sess::Bogus,
            _ => self.session(rw),
        }
    }

    fn login_user(&mut self, s: Sess) {
        self.emit(Call::Login {
            s,
            user: CKU_USER,
            pin: Pin::User,
        });
        self.login = Some(CKU_USER);
        self.wrong = 0;
    }

    /// Mostly logged in as the user when an episode needs private objects.
    fn maybe_user(&mut self, s: Sess, percent: u32) {
        if self.login.is_none() && self.chance(percent) {
            self.login_user(s);
        } else if self.login == Some(CKU_SO) && self.chance(percent / 2) {
            self.logout(s);
            self.login_user(s);
        }
    }

    /// C_Logout, which destroys the private session objects (PKCS#11, C_Logout).
    fn logout(&mut self, s: Sess) {
        self.emit(Call::Logout { s });
        if self.login.take().is_some() {
            for o in self.objs.iter_mut() {
                if o.private && o.session.is_some() {
                    o.alive = false;
                }
            }
        }
    }

    fn close_model(&mut self, step: Step) {
        if let Some(m) = self.sessions.iter_mut().find(|m| m.step == step) {
            m.open = false;
        }
        for o in self.objs.iter_mut() {
            if o.session == Some(step) {
                o.alive = false;
            }
        }
        if self.open_sessions().is_empty() {
            self.login = None;
        }
    }

    fn prologue(&mut self) {
        let rw = self.rng.chance(80);
        let s = self.open(rw);
        if self.chance(70) {
            self.login_user(s);
        }
    }

    fn episode(&mut self) {
        let families: Vec<(u32, &str)> = [
            (6, "session"),
            (6, "login"),
            (10, "create"),
            (8, "find"),
            (10, "attributes"),
            (12, "sign"),
            (10, "crypt"),
            (8, "digest"),
            (6, "wrap"),
            (4, "destroy"),
            (3, "random"),
            (5, "info"),
        ]
        .into_iter()
        .filter(|(_, f)| !self.skip.iter().any(|s| s == f))
        .collect();
        if families.is_empty() {
            self.info();
            return;
        }
        match self.rng.weighted(&families) {
            "session" => self.sessions_ep(),
            "login" => self.login_ep(),
            "create" => self.create_ep(),
            "find" => self.find_ep(),
            "attributes" => self.attributes_ep(),
            "sign" => self.sign_ep(None),
            "crypt" => self.crypt_ep(None),
            "digest" => self.digest_ep(),
            "wrap" => self.wrap_ep(),
            "destroy" => self.destroy_ep(),
            "random" => self.random_ep(),
            _ => self.info(),
        }
    }

    fn sessions_ep(&mut self) {
        match self.rng.below(100) {
            0..=29 => {
                let rw = self.chance(60);
                self.open(rw);
            }
            30..=39 => {
                let (slot, flags, null_out) = match self.rng.below(3) {
                    0 => (Slot::Good, 0, false),
                    1 => (Slot::Bogus, CKF_SERIAL_SESSION, false),
                    _ => (Slot::Good, CKF_SERIAL_SESSION | CKF_RW_SESSION, true),
                };
                self.emit(Call::OpenSession {
                    slot,
                    flags,
                    null_out,
                });
            }
            40..=59 => {
                let s = self.some_session(false);
                self.emit(Call::CloseSession { s });
                if let Sess::Made(n) = s {
                    self.close_model(n);
                }
            }
            60..=64 => {
                let slot = if self.chance(80) {
                    Slot::Good
                } else {
                    Slot::Bogus
                };
                self.emit(Call::CloseAllSessions { slot });
                if slot == Slot::Bogus {
                    // p11-kit-client answers CKR_OK to a slot that does not exist and closes
                    // every session of its token (the allow-list has the answer); the sessions
                    // meet again once all are closed on both sides.
                    self.emit(Call::CloseAllSessions { slot: Slot::Good });
                }
                {
                    let all: Vec<Step> = self.sessions.iter().map(|s| s.step).collect();
                    for n in all {
                        self.close_model(n);
                    }
                }
            }
            65..=94 => {
                let s = self.some_session(false);
                let null_out = self.chance(5);
                self.emit(Call::GetSessionInfo { s, null_out });
            }
            _ => {
                let s = self.some_session(false);
                self.emit(Call::GetOperationState { s });
            }
        }
    }

    fn token_info(&mut self) {
        self.emit(Call::GetTokenInfo { slot: Slot::Good });
    }

    fn login_ep(&mut self) {
        let s = self.some_session(false);
        match self.login {
            None => match self.rng.below(100) {
                0..=44 => self.login_user(s),
                45..=59 => {
                    self.emit(Call::Login {
                        s,
                        user: CKU_SO,
                        pin: Pin::So,
                    });
                    let all_rw = self.open_sessions().iter().all(|m| m.rw);
                    if all_rw {
                        self.login = Some(CKU_SO);
                        self.wrong = 0;
                    }
                }
                60..=79 if self.wrong < 2 => {
                    // A wrong PIN, the token's flags, then the right PIN (which resets the count).
                    let user = if self.chance(75) { CKU_USER } else { CKU_SO };
                    let pin = self.rng.pick(&[
                        Pin::Wrong,
                        Pin::Wrong,
                        Pin::Empty,
                        Pin::Long,
                        Pin::NullZero,
                    ]);
                    self.emit(Call::Login { s, user, pin });
                    self.wrong += 1;
                    if self.chance(60) {
                        self.token_info();
                    }
                    if user == CKU_USER || self.chance(30) {
                        self.login_user(s);
                        if self.chance(50) {
                            self.token_info();
                        }
                    }
                }
                80..=84 => {
                    self.emit(Call::Login {
                        s,
                        user: CKU_USER,
                        pin: Pin::NullLen,
                    });
                }
                85..=92 => {
                    let user = if self.chance(50) {
                        99
                    } else {
                        CKU_CONTEXT_SPECIFIC
                    };
                    self.emit(Call::Login {
                        s,
                        user,
                        pin: Pin::User,
                    });
                }
                _ => {
                    self.emit(Call::Logout { s });
                }
            },
            Some(user) => match self.rng.below(100) {
                0..=39 => {
                    self.logout(s);
                }
                40..=54 => {
                    let again = if self.chance(50) {
                        user
                    } else {
                        CKU_USER + CKU_SO - user
                    };
                    let pin = if again == CKU_SO { Pin::So } else { Pin::User };
                    self.emit(Call::Login {
                        s,
                        user: again,
                        pin,
                    });
                }
                55..=69 => {
                    let old = if user == CKU_SO { Pin::So } else { Pin::User };
                    if self.wrong == 0 && self.chance(20) {
                        // A wrong old PIN counts too: log in again right after to reset it.
                        self.emit(Call::SetPin { s, old: Pin::Wrong });
                        self.logout(s);
                        self.login_user(s);
                    } else {
                        self.emit(Call::SetPin { s, old });
                    }
                }
                70..=79 => {
                    self.emit(Call::InitPin { s });
                }
                80..=89 => self.token_info(),
                _ => {
                    self.emit(Call::GetSessionInfo { s, null_out: false });
                }
            },
        }
    }

    // ---- objects ------------------------------------------------------------------------

    fn usable(&self, o: &MObj) -> bool {
        o.alive && (!o.private || self.login == Some(CKU_USER))
    }

    /// An object `f` accepts (preferring usable ones); sometimes a wrong one instead.
    fn pick(&mut self, f: impl Fn(&MObj) -> bool) -> Option<Obj> {
        let good: Vec<Obj> = self
            .objs
            .iter()
            .filter(|o| f(o) && self.usable(o))
            .map(|o| o.o)
            .collect();
        let any: Vec<Obj> = self.objs.iter().filter(|o| f(o)).map(|o| o.o).collect();
        let misuse = self.allows("misuse");
        match self.rng.below(100) {
            0..=1 => Some(Obj::Bogus),
            2..=4 if misuse && !self.objs.is_empty() => {
                let all: Vec<Obj> = self.objs.iter().map(|o| o.o).collect();
                Some(self.rng.pick(&all))
            }
            _ if !good.is_empty() => Some(self.rng.pick(&good)),
            _ if !any.is_empty() => Some(self.rng.pick(&any)),
            _ => None,
        }
    }

    fn model(&self, o: Obj) -> Option<&MObj> {
        self.objs.iter().find(|m| m.o == o)
    }

    fn det(&self, o: Obj) -> bool {
        self.model(o).is_none_or(|m| m.det)
    }

    /// Whether the model expects a creation with these properties to succeed.
    fn may_create(&self, s: Sess, token: bool, private: bool) -> bool {
        let Sess::Made(n) = s else { return false };
        let Some(m) = self.sessions.iter().find(|m| m.step == n && m.open) else {
            return false;
        };
        (!token || m.rw) && (!private || self.login == Some(CKU_USER))
    }

    #[allow(clippy::too_many_arguments)]
    fn add_obj(
        &mut self,
        s: Sess,
        o: Obj,
        kind: Kind,
        token: bool,
        private: bool,
        det: bool,
        usage: u8,
        flags: (bool, bool),
    ) {
        if !self.may_create(s, token, private) {
            return;
        }
        let session = match (token, s) {
            (false, Sess::Made(n)) => Some(n),
            _ => None,
        };
        self.objs.push(MObj {
            o,
            kind,
            token,
            private,
            sensitive: flags.0,
            extractable: flags.1,
            det,
            usage,
            alive: true,
            session,
            pair: None,
        });
    }

    fn usage_attrs(usage: u8) -> Vec<A> {
        [
            (ENC, CKA_ENCRYPT),
            (DEC, CKA_DECRYPT),
            (SIGN, CKA_SIGN),
            (VERIFY, CKA_VERIFY),
            (WRAP, CKA_WRAP),
            (UNWRAP, CKA_UNWRAP),
        ]
        .into_iter()
        .map(|(bit, ty)| A::bool(ty, usage & bit != 0))
        .collect()
    }

    /// Token / private / sensitive / extractable choices for a new key.
    fn key_flags(&mut self) -> (bool, bool, bool, bool) {
        let token = self.chance(30) || !self.allows("sessionobjects");
        (token, self.chance(60), self.chance(50), self.chance(60))
    }

    fn create_ep(&mut self) {
        let rw = !self.chance(15);
        let s = self.session(rw);
        self.maybe_user(s, 70);
        let step = self.calls.len();
        let made = Obj::Made(step, 0);
        match self.rng.below(100) {
            0..=34 => {
                let token = self.chance(40) || !self.allows("sessionobjects");
                let private = self.chance(30);
                let label = self.label();
                let app = self.fresh_app();
                let len = self.rng.pick(&[0u16, 1, 16, 40]);
                let fill = self.rng.byte();
                self.emit(Call::CreateObject {
                    s,
                    tmpl: vec![
                        A::ulong(CKA_CLASS, CKO_DATA),
                        A::bool(CKA_TOKEN, token),
                        A::bool(CKA_PRIVATE, private),
                        A::bytes(CKA_LABEL, label),
                        A::bytes(CKA_APPLICATION, app),
                        A::bytes(CKA_VALUE, Input::bytes(len, fill)),
                    ],
                    null_tmpl: false,
                });
                self.add_obj(s, made, Kind::Data, token, private, true, 0, (false, true));
            }
            35..=64 => {
                let aes = self.chance(70);
                let (token, private, sensitive, extractable) = self.key_flags();
                let usage = if aes {
                    ENC | DEC
                        | if self.chance(50) { WRAP | UNWRAP } else { 0 }
                        | if self.chance(20) { SIGN | VERIFY } else { 0 }
                } else {
                    SIGN | VERIFY
                };
                let len = if aes {
                    self.rng.pick(&[16u16, 32, 32, 7])
                } else {
                    32
                };
                let fill = self.rng.byte();
                let label = self.label();
                let id = self.fresh_id();
                let mut tmpl = vec![
                    A::ulong(CKA_CLASS, CKO_SECRET_KEY),
                    A::ulong(CKA_KEY_TYPE, if aes { CKK_AES } else { CKK_GENERIC_SECRET }),
                    A::bool(CKA_TOKEN, token),
                    A::bool(CKA_PRIVATE, private),
                    A::bool(CKA_SENSITIVE, sensitive),
                    A::bool(CKA_EXTRACTABLE, extractable),
                    A::bytes(CKA_VALUE, Input::bytes(len, fill)),
                    A::bytes(CKA_LABEL, label),
                    A::bytes(CKA_ID, id),
                ];
                tmpl.extend(Self::usage_attrs(usage));
                self.emit(Call::CreateObject {
                    s,
                    tmpl,
                    null_tmpl: false,
                });
                if len != 7 {
                    let kind = if aes { Kind::Aes } else { Kind::Generic };
                    self.add_obj(
                        s,
                        made,
                        kind,
                        token,
                        private,
                        true,
                        usage,
                        (sensitive, extractable),
                    );
                }
            }
            65..=89 => self.generate_key(s, made),
            90..=94 => self.generate_pair(s, step),
            _ => {
                // Templates a token must refuse.
                let app = self.fresh_app();
                let (tmpl, null_tmpl) = match self.rng.below(6) {
                    0 => (vec![A::bytes(CKA_APPLICATION, app)], false),
                    1 => (
                        vec![A::ulong(CKA_CLASS, CKO_DATA), A::bytes(BAD_ATTR, vec![1])],
                        false,
                    ),
                    2 => (
                        vec![
                            A::ulong(CKA_CLASS, CKO_SECRET_KEY),
                            A::ulong(CKA_KEY_TYPE, CKK_AES),
                            A::bytes(CKA_VALUE, vec![0; 16]),
                            A::bool(CKA_LOCAL, true),
                        ],
                        false,
                    ),
                    3 => (
                        vec![
                            A::ulong(CKA_CLASS, CKO_DATA),
                            A {
                                ty: CKA_VALUE,
                                val: AVal::Null(5),
                            },
                        ],
                        false,
                    ),
                    4 => (vec![A::bytes(CKA_CLASS, vec![0, 0, 0])], false),
                    _ => (vec![A::ulong(CKA_CLASS, CKO_DATA)], true),
                };
                self.emit(Call::CreateObject { s, tmpl, null_tmpl });
            }
        }
    }

    fn generate_key(&mut self, s: Sess, made: Obj) {
        let (token, private, sensitive, extractable) = self.key_flags();
        let (mech, kind, len) = self.rng.pick(&[
            (CKM_AES_KEY_GEN, Kind::Aes, Some(32u64)),
            (CKM_AES_KEY_GEN, Kind::Aes, Some(16)),
            (CKM_AES_KEY_GEN, Kind::Aes, Some(16)),
            (CKM_GENERIC_SECRET_KEY_GEN, Kind::Generic, Some(32)),
            (CKM_DES_KEY_GEN, Kind::Des, None),
            (CKM_DES3_KEY_GEN, Kind::Des3, None),
        ]);
        let usage = match kind {
            Kind::Aes => ENC | DEC | if self.chance(50) { WRAP | UNWRAP } else { 0 },
            Kind::Generic => SIGN | VERIFY,
            _ => ENC | DEC,
        };
        let label = self.label();
        let id = self.fresh_id();
        let mut tmpl = vec![
            A::bool(CKA_TOKEN, token),
            A::bool(CKA_PRIVATE, private),
            A::bool(CKA_SENSITIVE, sensitive),
            A::bool(CKA_EXTRACTABLE, extractable),
            A::bytes(CKA_LABEL, label),
            A::bytes(CKA_ID, id),
        ];
        if let Some(n) = len {
            tmpl.push(A::ulong(CKA_VALUE_LEN, n));
        }
        tmpl.extend(Self::usage_attrs(usage));
        let mut mech = Some(Mech::plain(mech));
        let ok = match self.rng.below(100) {
            0..=2 => {
                mech = None;
                false
            }
            3..=5 => {
                mech = Some(Mech::plain(BAD_MECH));
                false
            }
            6..=8 if len.is_some() => {
                tmpl.retain(|a| a.ty != CKA_VALUE_LEN);
                tmpl.push(A::ulong(CKA_VALUE_LEN, 7));
                false
            }
            9..=10 => {
                tmpl.push(A::ulong(CKA_CLASS, CKO_DATA));
                false
            }
            11..=12 if len.is_some() => {
                tmpl.retain(|a| a.ty != CKA_VALUE_LEN);
                false
            }
            _ => true,
        };
        self.emit(Call::GenerateKey { s, mech, tmpl });
        if ok {
            self.add_obj(
                s,
                made,
                kind,
                token,
                private,
                false,
                usage,
                (sensitive, extractable),
            );
        }
    }

    fn generate_pair(&mut self, s: Sess, step: Step) {
        let rsa = self.rsa_made * 1500 <= self.calls.len() && self.chance(15);
        let (token, private, sensitive, extractable) = self.key_flags();
        let id = self.fresh_id();
        let label = self.label();
        let mut public = vec![
            A::bool(CKA_TOKEN, token),
            A::bool(CKA_VERIFY, true),
            A::bytes(CKA_LABEL, label.clone()),
            A::bytes(CKA_ID, id.clone()),
        ];
        let mut private_t = vec![
            A::bool(CKA_TOKEN, token),
            A::bool(CKA_PRIVATE, private),
            A::bool(CKA_SENSITIVE, sensitive),
            A::bool(CKA_EXTRACTABLE, extractable),
            A::bool(CKA_SIGN, true),
            A::bytes(CKA_LABEL, label),
            A::bytes(CKA_ID, id),
        ];
        let mut ok = true;
        let (mech, kinds) = if rsa {
            self.rsa_made += 1;
            public.extend([
                A::ulong(CKA_MODULUS_BITS, 1024),
                A::bytes(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]),
                A::bool(CKA_ENCRYPT, true),
                A::bool(CKA_WRAP, true),
            ]);
            private_t.extend([A::bool(CKA_DECRYPT, true), A::bool(CKA_UNWRAP, true)]);
            (CKM_RSA_PKCS_KEY_PAIR_GEN, (Kind::RsaPub, Kind::RsaPriv))
        } else {
            let params = match self.rng.below(20) {
                0 => P384.to_vec(),
                1 => {
                    ok = false;
                    vec![0x06, 0x01, 0x00]
                }
                _ => P256.to_vec(),
            };
            public.push(A::bytes(CKA_EC_PARAMS, params));
            (CKM_EC_KEY_PAIR_GEN, (Kind::EcPub, Kind::EcPriv))
        };
        self.emit(Call::GenerateKeyPair {
            s,
            mech: Mech::plain(mech),
            public,
            private: private_t,
        });
        if ok && self.may_create(s, token, private) {
            let (pu, pr) = (Obj::Made(step, 0), Obj::Made(step, 1));
            let pub_usage = if rsa { VERIFY | ENC | WRAP } else { VERIFY };
            let priv_usage = if rsa { SIGN | DEC | UNWRAP } else { SIGN };
            self.add_obj(
                s,
                pu,
                kinds.0,
                token,
                false,
                false,
                pub_usage,
                (false, true),
            );
            self.add_obj(
                s,
                pr,
                kinds.1,
                token,
                private,
                false,
                priv_usage,
                (sensitive, extractable),
            );
            let n = self.objs.len();
            self.objs[n - 2].pair = None;
            self.objs[n - 1].pair = Some(pu);
        }
    }

    fn destroy_ep(&mut self) {
        let s = self.some_session(true);
        self.maybe_user(s, 60);
        let made: Vec<Obj> = self
            .objs
            .iter()
            .filter(|o| matches!(o.o, Obj::Made(..)) && self.usable(o))
            .map(|o| o.o)
            .collect();
        let dead: Vec<Obj> = self.objs.iter().filter(|o| !o.alive).map(|o| o.o).collect();
        let o = match self.rng.below(100) {
            0..=9 if !dead.is_empty() => self.rng.pick(&dead),
            10..=14 => Obj::Bogus,
            _ if !made.is_empty() => self.rng.pick(&made),
            _ => Obj::Bogus,
        };
        self.emit(Call::DestroyObject { s, o });
        if let Some(m) = self.objs.iter_mut().find(|m| m.o == o) {
            m.alive = false;
        }
    }

    // ---- searches and attributes --------------------------------------------------------

    fn find_template(&mut self) -> Vec<A> {
        let class = self.rng.pick(&[
            CKO_DATA,
            CKO_SECRET_KEY,
            CKO_PRIVATE_KEY,
            CKO_PUBLIC_KEY,
            CKO_CERTIFICATE,
        ]);
        let label = self.label();
        match self.rng.below(13) {
            0 => vec![],
            1 => vec![A::ulong(CKA_CLASS, class)],
            2 => vec![
                A::ulong(CKA_CLASS, CKO_SECRET_KEY),
                A::ulong(CKA_KEY_TYPE, CKK_AES),
            ],
            3 => vec![A::bytes(CKA_LABEL, label)],
            4 => vec![A::bytes(CKA_LABEL, label), A::ulong(CKA_CLASS, class)],
            5 => vec![A::bool(CKA_TOKEN, self.rng.chance(50))],
            6 => vec![A::bool(CKA_PRIVATE, self.rng.chance(50))],
            7 => vec![A::bytes(CKA_ID, vec![self.rng.pick(&[1u8, 2, 3, 4])])],
            8 => vec![
                A::ulong(CKA_CLASS, CKO_DATA),
                A::bytes(CKA_LABEL, label),
                A::bool(CKA_TOKEN, false),
            ],
            9 => vec![A::bytes(CKA_LABEL, b"no such label".to_vec())],
            10 => vec![A::bytes(BAD_ATTR, vec![1])],
            11 => vec![A::bytes(
                CKA_LABEL,
                self.rng
                    .pick(&[&b"rsa"[..], b"ec", b"aes", b"hmac"])
                    .to_vec(),
            )],
            _ => vec![
                A::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                A::bytes(CKA_LABEL, label),
            ],
        }
    }

    fn find_ep(&mut self) {
        let s = self.some_session(false);
        self.maybe_user(s, 60);
        match self.rng.below(100) {
            0..=79 => {
                let tmpl = self.find_template();
                self.emit(Call::FindInit {
                    s,
                    tmpl: tmpl.clone(),
                    null_tmpl: false,
                });
                if self.chance(5) {
                    self.emit(Call::FindInit {
                        s,
                        tmpl,
                        null_tmpl: false,
                    });
                }
                // No operation is started while a search is active: SoftHSM 2.6.1 allows one
                // operation per session, searches included, and refuses it; PKCS#11 lets both
                // run and p11ha runs searches itself (docs/CONFORMANCE.md). Every later answer
                // on the session would follow from that one difference.
                let max = self.rng.pick(&[1u64, 2, 3, 5, 100, 100, 1 << 40]);
                let calls = if max >= 100 { 2 } else { 2 + self.rng.below(5) };
                for _ in 0..calls {
                    self.emit(Call::Find {
                        s,
                        max,
                        null_buf: false,
                        null_count: false,
                    });
                }
                if self.chance(90) || !self.allows("overlap") {
                    self.emit(Call::FindFinal { s });
                } else {
                    // A search left active ends with its session (see above for why nothing
                    // else runs in it).
                    self.emit(Call::CloseSession { s });
                    if let Sess::Made(n) = s {
                        self.close_model(n);
                    }
                }
            }
            80..=84 => {
                self.emit(Call::FindInit {
                    s,
                    tmpl: vec![A::ulong(CKA_CLASS, CKO_DATA)],
                    null_tmpl: true,
                });
            }
            85..=89 => {
                self.emit(Call::Find {
                    s,
                    max: 4,
                    null_buf: false,
                    null_count: false,
                });
            }
            90..=94 => {
                self.emit(Call::FindInit {
                    s,
                    tmpl: vec![],
                    null_tmpl: false,
                });
                let (null_buf, null_count) = if self.chance(50) {
                    (true, false)
                } else {
                    (false, true)
                };
                self.emit(Call::Find {
                    s,
                    max: 4,
                    null_buf,
                    null_count,
                });
                self.emit(Call::FindFinal { s });
            }
            _ => {
                self.emit(Call::FindFinal { s });
            }
        }
    }

    fn attrs_for(kind: Kind) -> Vec<CK_ATTRIBUTE_TYPE> {
        let mut v = vec![
            CKA_CLASS,
            CKA_TOKEN,
            CKA_PRIVATE,
            CKA_LABEL,
            CKA_MODIFIABLE,
            CKA_COPYABLE,
            CKA_DESTROYABLE,
        ];
        let key = [
            CKA_KEY_TYPE,
            CKA_ID,
            CKA_LOCAL,
            CKA_KEY_GEN_MECHANISM,
            CKA_DERIVE,
            CKA_START_DATE,
        ];
        let secret = [
            CKA_SENSITIVE,
            CKA_EXTRACTABLE,
            CKA_ALWAYS_SENSITIVE,
            CKA_NEVER_EXTRACTABLE,
            CKA_WRAP_WITH_TRUSTED,
        ];
        match kind {
            Kind::Data => v.extend([CKA_APPLICATION, CKA_VALUE, CKA_OBJECT_ID]),
            Kind::Cert => v.extend([
                CKA_CERTIFICATE_TYPE,
                CKA_SUBJECT,
                CKA_ISSUER,
                CKA_VALUE,
                CKA_ID,
                CKA_TRUSTED,
                CKA_CERTIFICATE_CATEGORY,
            ]),
            Kind::RsaPub => {
                v.extend(key);
                v.extend([
                    CKA_MODULUS,
                    CKA_MODULUS_BITS,
                    CKA_PUBLIC_EXPONENT,
                    CKA_VERIFY,
                    CKA_ENCRYPT,
                    CKA_WRAP,
                    CKA_TRUSTED,
                ]);
            }
            Kind::EcPub => {
                v.extend(key);
                v.extend([CKA_EC_PARAMS, CKA_EC_POINT, CKA_VERIFY]);
            }
            Kind::RsaPriv => {
                v.extend(key);
                v.extend(secret);
                v.extend([
                    CKA_MODULUS,
                    CKA_PUBLIC_EXPONENT,
                    CKA_PRIVATE_EXPONENT,
                    CKA_SIGN,
                    CKA_DECRYPT,
                    CKA_UNWRAP,
                    CKA_ALWAYS_AUTHENTICATE,
                ]);
            }
            Kind::EcPriv => {
                v.extend(key);
                v.extend(secret);
                v.extend([CKA_EC_PARAMS, CKA_VALUE, CKA_SIGN]);
            }
            _ => {
                v.extend(key);
                v.extend(secret);
                v.extend([
                    CKA_ENCRYPT,
                    CKA_DECRYPT,
                    CKA_SIGN,
                    CKA_VERIFY,
                    CKA_WRAP,
                    CKA_UNWRAP,
                    CKA_VALUE,
                    CKA_VALUE_LEN,
                    CKA_CHECK_VALUE,
                    CKA_TRUSTED,
                ]);
            }
        }
        v
    }

    fn attributes_ep(&mut self) {
        let s = self.some_session(false);
        self.maybe_user(s, 70);
        let Some(o) = self.pick(|_| true) else { return };
        let kind = self.model(o).map_or(Kind::Data, |m| m.kind);
        let det = self.det(o);
        match self.rng.below(100) {
            0..=59 => {
                let pool = Self::attrs_for(kind);
                let n = 1 + self.rng.below(4);
                let query = (0..n)
                    .map(|_| {
                        let ty = if self.chance(7) {
                            BAD_ATTR
                        } else {
                            self.rng.pick(&pool)
                        };
                        let out = self.rng.weighted(&[
                            (55, AttrOut::Big),
                            (25, AttrOut::Null),
                            (10, AttrOut::Short(2)),
                            (5, AttrOut::Huge),
                            (5, AttrOut::Short(0)),
                        ]);
                        (ty, out)
                    })
                    .collect();
                let null_tmpl = self.chance(3);
                self.emit(Call::GetAttributes {
                    s,
                    o,
                    query,
                    det,
                    null_tmpl,
                });
            }
            60..=74 => self.set_attributes(s, o, kind),
            75..=84 => {
                self.emit(Call::GetObjectSize { s, o });
            }
            _ => {
                let attr = if kind == Kind::Data {
                    CKA_APPLICATION
                } else {
                    CKA_ID
                };
                let value = if kind == Kind::Data {
                    self.fresh_app()
                } else {
                    self.fresh_id()
                };
                let mut tmpl = vec![A::bytes(attr, value)];
                let mut token = self.model(o).is_some_and(|m| m.token);
                match self.rng.below(5) {
                    0 => {
                        let l = self.label();
                        tmpl.push(A::bytes(CKA_LABEL, l));
                    }
                    1 => {
                        tmpl.push(A::bool(CKA_TOKEN, !token));
                        token = !token;
                    }
                    2 if kind.is_secret() => tmpl.push(A::bool(CKA_SENSITIVE, true)),
                    3 => tmpl.push(A::ulong(CKA_CLASS, CKO_CERTIFICATE)),
                    _ => {}
                }
                let s2 = if token { self.session(true) } else { s };
                let step = self.emit(Call::CopyObject { s: s2, o, tmpl });
                if let Some(m) = self.model(o).cloned() {
                    if m.alive {
                        self.add_obj(
                            s2,
                            Obj::Made(step, 0),
                            m.kind,
                            token,
                            m.private,
                            m.det,
                            m.usage,
                            (m.sensitive, m.extractable),
                        );
                    }
                }
            }
        }
    }

    fn set_attributes(&mut self, s: Sess, o: Obj, kind: Kind) {
        let pre = matches!(o, Obj::Pre(_));
        let label = self.label();
        let tmpl = match self.rng.below(if pre { 2 } else { 10 }) {
            0 => vec![A::bytes(CKA_LABEL, label)],
            1 => vec![A::bytes(BAD_ATTR, vec![1])],
            2 if kind == Kind::Data => vec![A::bytes(CKA_APPLICATION, self.fresh_app())],
            2 => vec![A::bytes(CKA_ID, self.fresh_id())],
            3 if kind == Kind::Data => vec![A::bytes(CKA_VALUE, Input::bytes(9, 1))],
            3 => vec![A::bool(CKA_SENSITIVE, false)],
            4 => vec![A::bool(CKA_SENSITIVE, true)],
            5 => vec![A::bool(CKA_EXTRACTABLE, false)],
            6 => vec![A::bool(CKA_EXTRACTABLE, true)],
            7 => vec![A::ulong(CKA_CLASS, CKO_DATA)],
            8 => vec![A::bool(CKA_TOKEN, true)],
            _ => vec![
                A::bool(CKA_ENCRYPT, self.rng.chance(50)),
                A::bytes(CKA_LABEL, label),
            ],
        };
        let changes_sensitivity = tmpl.iter().any(|a| {
            matches!(
                (a.ty, &a.val),
                (CKA_SENSITIVE, AVal::Bool(true)) | (CKA_EXTRACTABLE, AVal::Bool(false))
            )
        });
        self.emit(Call::SetAttributes { s, o, tmpl });
        if changes_sensitivity {
            if let Some(m) = self.objs.iter_mut().find(|m| m.o == o) {
                m.sensitive = true;
                m.extractable = false;
            }
        }
    }

    // ---- operations ---------------------------------------------------------------------

    /// Data of one of `lens` bytes; the last of several lengths is one the mechanism refuses
    /// when `bad_last` (left out when `misuse` is skipped).
    fn data_of(&mut self, lens: &[u16], bad_last: bool) -> Input {
        let lens = if bad_last && !self.allows("misuse") && lens.len() > 1 {
            &lens[..lens.len() - 1]
        } else {
            lens
        };
        self.data(lens)
    }

    /// Data of one of `lens` bytes; no data is sometimes a NULL pointer (allowed with length
    /// 0).
    fn data(&mut self, lens: &[u16]) -> Input {
        let len = self.rng.pick(lens);
        let fill = self.rng.byte();
        if len == 0 && fill < 64 {
            Input::Null(0)
        } else {
            Input::Bytes(len, fill)
        }
    }

    /// [`Self::outputs`] for a single-part call, without the NULL length pointer: p11ha ends
    /// the operation on it, as PKCS#11 says, where SoftHSM 2.6.1 keeps C_Sign's and
    /// C_Encrypt's active (tests/differential_allow.txt); the sessions would differ from then on
    /// and hide every later difference. Finals keep it: there SoftHSM ends the operation too.
    fn single_outputs(&mut self) -> Vec<Out> {
        let mut v = self.outputs();
        for o in v.iter_mut() {
            if *o == Out::NullLen {
                *o = Out::Big;
            }
        }
        v
    }

    /// The output buffers a single-part call (or a final) is given: sometimes a length query
    /// or a short buffer first (which leave the operation active), then a big one; rarely a
    /// NULL length pointer.
    fn outputs(&mut self) -> Vec<Out> {
        let mut v = Vec::new();
        if self.chance(25) {
            v.push(Out::Query);
        }
        if self.chance(12) {
            v.push(Out::Short(self.rng.pick(&[0u16, 1, 8])));
        }
        v.push(if self.chance(3) {
            Out::NullLen
        } else {
            Out::Big
        });
        v
    }

    /// Init with `mech` and `key` (outputs alike on both tokens when `det`), sometimes
    /// disturbed: initialized twice, or another operation started in the same session.
    /// Returns the step of the Init.
    fn init(&mut self, s: Sess, op: Op, mech: Option<Mech>, key: Obj, det: bool) -> Step {
        let step = self.emit(Call::Init {
            s,
            op,
            mech: mech.clone(),
            key,
            det,
        });
        let overlap = self.allows("overlap");
        match self.rng.below(100) {
            0..=3 if overlap => {
                self.emit(Call::Init {
                    s,
                    op,
                    mech,
                    key,
                    det,
                });
            }
            4..=7 if overlap => {
                let other = if op == Op::Digest {
                    Op::Sign
                } else {
                    Op::Digest
                };
                self.emit(Call::Init {
                    s,
                    op: other,
                    mech: Some(Mech::plain(if other == Op::Digest {
                        CKM_SHA256
                    } else {
                        CKM_SHA256_HMAC
                    })),
                    key: Obj::Pre(Pre::Hmac),
                    det: true,
                });
            }
            _ => {}
        }
        step
    }

    /// A wrong mechanism instead of `m`, sometimes.
    fn disturb_mech(&mut self, m: Mech) -> Option<Mech> {
        match self.rng.below(100) {
            0..=2 => None,
            3..=5 => Some(Mech::plain(BAD_MECH)),
            6..=7 => Some(Mech {
                ty: m.ty,
                param: Param::NullLen(16),
            }),
            _ => Some(m),
        }
    }

    /// A signature (with `key`, or a key and mechanism of a random family), often verified.
    fn sign_ep(&mut self, key: Option<Obj>) {
        let s = self.some_session(false);
        self.maybe_user(s, 85);
        let family = match self.rng.below(100) {
            93.. if !self.allows("misuse") => 0,
            f => f,
        };
        let (key, mech, lens, det_mech, multi): (Option<Obj>, Mech, Vec<u16>, bool, bool) =
            match (key, family) {
                (Some(k), _) => {
                    let kind = self.model(k).map_or(Kind::Generic, |m| m.kind);
                    match kind {
                        Kind::RsaPriv => (
                            Some(k),
                            Mech::plain(CKM_SHA256_RSA_PKCS),
                            vec![0, 5, 100],
                            true,
                            true,
                        ),
                        Kind::EcPriv => (Some(k), Mech::plain(CKM_ECDSA), vec![32], false, false),
                        Kind::Aes => (
                            Some(k),
                            Mech::plain(CKM_AES_CMAC),
                            vec![0, 16, 33],
                            true,
                            true,
                        ),
                        _ => (
                            Some(k),
                            Mech::plain(CKM_SHA256_HMAC),
                            vec![0, 5, 100],
                            true,
                            true,
                        ),
                    }
                }
                (None, 0..=29) => {
                    let k = self.pick(|o| o.kind == Kind::Generic && o.usage & SIGN != 0);
                    let m = self.rng.pick(&[
                        CKM_SHA256_HMAC,
                        CKM_SHA256_HMAC,
                        CKM_SHA_1_HMAC,
                        CKM_SHA512_HMAC,
                    ]);
                    (k, Mech::plain(m), vec![0, 1, 32, 100, 300], true, true)
                }
                (None, 30..=39) => {
                    let k = self.pick(|o| o.kind == Kind::Aes && o.usage & SIGN != 0);
                    (k, Mech::plain(CKM_AES_CMAC), vec![0, 16, 33], true, true)
                }
                (None, 40..=69) => {
                    let k = self.pick(|o| o.kind == Kind::RsaPriv);
                    match self.rng.below(4) {
                        0 => (k, Mech::plain(CKM_RSA_PKCS), vec![0, 20, 100], true, false),
                        1 => (
                            k,
                            Mech {
                                ty: CKM_SHA256_RSA_PKCS_PSS,
                                param: Param::PssSha256,
                            },
                            vec![0, 50],
                            false,
                            true,
                        ),
                        2 => (
                            k,
                            Mech {
                                ty: CKM_RSA_PKCS_PSS,
                                param: Param::PssSha256,
                            },
                            vec![32, 32, 31],
                            false,
                            false,
                        ),
                        _ => (
                            k,
                            Mech::plain(CKM_SHA256_RSA_PKCS),
                            vec![0, 5, 100, 1000],
                            true,
                            true,
                        ),
                    }
                }
                (None, 70..=92) => {
                    let k = self.pick(|o| o.kind == Kind::EcPriv);
                    (
                        k,
                        Mech::plain(CKM_ECDSA),
                        vec![32, 32, 20, 64],
                        false,
                        false,
                    )
                }
                (None, _) => {
                    // A key of the wrong type for the mechanism.
                    let k = self.pick(|o| {
                        matches!(o.kind, Kind::Aes | Kind::RsaPub | Kind::Data | Kind::EcPub)
                    });
                    let m = self
                        .rng
                        .pick(&[CKM_ECDSA, CKM_SHA256_RSA_PKCS, CKM_SHA256_HMAC]);
                    (k, Mech::plain(m), vec![32], false, false)
                }
            };
        let Some(key) = key else { return };
        let det = det_mech && self.det(key);
        let verify_key = self.model(key).and_then(|m| m.pair).unwrap_or(key);
        let m = self.disturb_mech(mech.clone());
        self.init(s, Op::Sign, m, key, det);
        let mut parts = Vec::new();
        let mut last = None;
        if multi && self.chance(40) {
            for _ in 0..1 + self.rng.below(3) {
                let d = self.data(&lens);
                self.emit(Call::Update {
                    s,
                    op: Op::Sign,
                    data: d.clone(),
                    out: Out::Big,
                    det: Det::Yes,
                });
                parts.push(d);
            }
            if self.abandon() {
                return; // left active
            }
            for out in self.outputs() {
                last = Some(self.emit(Call::Final {
                    s,
                    op: Op::Sign,
                    out,
                    det: Det::Yes,
                }));
            }
        } else {
            let bad = mech.ty == CKM_RSA_PKCS_PSS;
            let d = if self.chance(3) {
                Input::Null(4)
            } else {
                self.data_of(&lens, bad)
            };
            parts.push(d.clone());
            for out in self.single_outputs() {
                last = Some(self.emit(Call::Single {
                    s,
                    op: Op::Sign,
                    data: d.clone(),
                    out,
                    det: Det::Yes,
                }));
            }
        }
        if let (Some(step), true) = (last, self.chance(65)) {
            self.verify(s, verify_key, mech, parts, step, det);
        }
    }

    fn verify(
        &mut self,
        s: Sess,
        key: Obj,
        mech: Mech,
        parts: Vec<Input>,
        sig_step: Step,
        det: bool,
    ) {
        self.init(s, Op::Verify, Some(mech), key, true);
        let det_key = self.det(key);
        let sig = match self.rng.below(100) {
            0..=11 => Input::Blob {
                step: sig_step,
                other: false,
                corrupt: true,
            },
            12..=15 => Input::Bytes(3, 1),
            // The other token's signature verifies here when both hold the same key.
            16..=45 if det_key || det => Input::Blob {
                step: sig_step,
                other: true,
                corrupt: false,
            },
            _ => Input::Blob {
                step: sig_step,
                other: false,
                corrupt: false,
            },
        };
        if parts.len() == 1 {
            self.emit(Call::Verify {
                s,
                data: parts[0].clone(),
                sig,
            });
        } else {
            for p in parts {
                self.emit(Call::Update {
                    s,
                    op: Op::Verify,
                    data: p,
                    out: Out::Big,
                    det: Det::Yes,
                });
            }
            self.emit(Call::VerifyFinal { s, sig });
        }
    }

    fn crypt_ep(&mut self, key: Option<Obj>) {
        let s = self.some_session(false);
        self.maybe_user(s, 85);
        let iv = Param::Bytes(16, self.rng.byte());
        let choice = match key {
            Some(k) => match self.model(k).map(|m| m.kind) {
                Some(Kind::RsaPub) => 80,
                Some(Kind::Des3) => 90,
                _ => 0,
            },
            None => match self.rng.below(100) {
                95.. if !self.allows("misuse") => 0,
                c => c,
            },
        };
        let (key, mech, lens, det_mech) = match choice {
            0..=69 => {
                let k = key.or_else(|| self.pick(|o| o.kind == Kind::Aes && o.usage & ENC != 0));
                match self.rng.below(3) {
                    0 => (k, Mech::plain(CKM_AES_ECB), vec![16, 32, 64, 15], true),
                    1 => {
                        let p = if self.chance(5) {
                            Param::Bytes(8, 0)
                        } else {
                            iv
                        };
                        (
                            k,
                            Mech {
                                ty: CKM_AES_CBC,
                                param: p,
                            },
                            vec![16, 48, 0],
                            true,
                        )
                    }
                    _ => (
                        k,
                        Mech {
                            ty: CKM_AES_CBC_PAD,
                            param: iv,
                        },
                        vec![0, 1, 16, 31, 100],
                        true,
                    ),
                }
            }
            70..=89 => {
                let k = key.or_else(|| self.pick(|o| o.kind == Kind::RsaPub));
                if self.chance(50) {
                    (k, Mech::plain(CKM_RSA_PKCS), vec![0, 10, 100], false)
                } else {
                    (
                        k,
                        Mech {
                            ty: CKM_RSA_PKCS_OAEP,
                            param: Param::OaepSha1,
                        },
                        vec![0, 10, 60],
                        false,
                    )
                }
            }
            90..=94 => {
                let k = key.or_else(|| self.pick(|o| o.kind == Kind::Des3));
                (k, Mech::plain(CKM_DES3_ECB), vec![8, 16], true)
            }
            _ => {
                let k = self.pick(|o| {
                    matches!(
                        o.kind,
                        Kind::EcPub | Kind::Generic | Kind::Data | Kind::RsaPriv
                    )
                });
                (k, Mech::plain(CKM_AES_ECB), vec![16], false)
            }
        };
        let Some(key) = key else { return };
        let det = det_mech && self.det(key);
        let m = self.disturb_mech(mech.clone());
        let enc = self.init(s, Op::Encrypt, m, key, det);
        let multi = mech.ty != CKM_RSA_PKCS && mech.ty != CKM_RSA_PKCS_OAEP && self.chance(35);
        let mut pieces = Vec::new();
        if multi {
            for _ in 0..1 + self.rng.below(3) {
                let d = self.data(&[16, 32]);
                let out = if self.chance(15) {
                    Out::Query
                } else {
                    Out::Big
                };
                let step = self.emit(Call::Update {
                    s,
                    op: Op::Encrypt,
                    data: d.clone(),
                    out,
                    det: Det::Yes,
                });
                if out == Out::Query {
                    self.emit(Call::Update {
                        s,
                        op: Op::Encrypt,
                        data: d,
                        out: Out::Big,
                        det: Det::Yes,
                    });
                    pieces.push(step + 1);
                } else {
                    pieces.push(step);
                }
            }
            if self.abandon() {
                return;
            }
            let mut last = None;
            for out in self.outputs() {
                last = Some(self.emit(Call::Final {
                    s,
                    op: Op::Encrypt,
                    out,
                    det: Det::Yes,
                }));
            }
            pieces.extend(last);
        } else {
            let d = self.data_of(&lens, mech.ty == CKM_AES_ECB);
            let mut last = None;
            for out in self.single_outputs() {
                last = Some(self.emit(Call::Single {
                    s,
                    op: Op::Encrypt,
                    data: d.clone(),
                    out,
                    det: Det::Yes,
                }));
            }
            pieces.extend(last);
        }
        if !self.chance(70) {
            return;
        }
        let dkey = match mech.ty {
            CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP => self
                .objs
                .iter()
                .find(|o| o.pair == Some(key))
                .map(|o| o.o)
                .or(match key {
                    Obj::Pre(Pre::RsaPub) => Some(Obj::Pre(Pre::RsaPriv)),
                    _ => None,
                })
                .unwrap_or(key),
            _ => key,
        };
        let other = det && self.chance(30);
        let corrupt = self.chance(8);
        let dec_key = self.det(dkey);
        let dec = self.init(s, Op::Decrypt, Some(mech), dkey, dec_key);
        let det_out = match (det, corrupt) {
            // A ciphertext alike on both tokens decrypts alike with a key alike on both.
            (true, _) => Det::Yes,
            // This side's own ciphertext decrypts to the plaintext.
            (false, false) => Det::Decrypts { enc, dec },
            (false, true) => Det::No,
        };
        let blob = |step| Input::Blob {
            step,
            other,
            corrupt,
        };
        if pieces.len() == 1 {
            for out in self.single_outputs() {
                self.emit(Call::Single {
                    s,
                    op: Op::Decrypt,
                    data: blob(pieces[0]),
                    out,
                    det: det_out,
                });
            }
        } else {
            for p in pieces {
                self.emit(Call::Update {
                    s,
                    op: Op::Decrypt,
                    data: blob(p),
                    out: Out::Big,
                    det: det_out,
                });
            }
            for out in self.outputs() {
                self.emit(Call::Final {
                    s,
                    op: Op::Decrypt,
                    out,
                    det: det_out,
                });
            }
        }
    }

    fn digest_ep(&mut self) {
        let s = self.some_session(false);
        self.maybe_user(s, 60);
        let mech = self.rng.pick(&[
            CKM_MD5, CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA256, CKM_SHA384, CKM_SHA512,
        ]);
        if self.chance(6) {
            self.emit(Call::Update {
                s,
                op: Op::Digest,
                data: Input::Bytes(5, 1),
                out: Out::Big,
                det: Det::Yes,
            });
            return;
        }
        let m = self.disturb_mech(Mech::plain(mech));
        self.init(s, Op::Digest, m, Obj::Bogus, true);
        if self.chance(45) {
            let d = if self.chance(3) {
                Input::Null(4)
            } else {
                self.data(&[0, 1, 55, 64, 1000])
            };
            for out in self.single_outputs() {
                self.emit(Call::Single {
                    s,
                    op: Op::Digest,
                    data: d.clone(),
                    out,
                    det: Det::Yes,
                });
            }
            return;
        }
        for _ in 0..1 + self.rng.below(3) {
            if self.chance(45) {
                let k = if self.chance(80) {
                    self.pick(|o| o.kind.is_secret())
                } else {
                    self.pick(|o| !o.kind.is_secret())
                };
                let Some(k) = k else { continue };
                let det = self.det(k);
                self.emit(Call::DigestKey { s, o: k, det });
            } else {
                let data = self.data(&[0, 3, 64]);
                self.emit(Call::Update {
                    s,
                    op: Op::Digest,
                    data,
                    out: Out::Big,
                    det: Det::Yes,
                });
            }
        }
        if self.abandon() {
            return;
        }
        for out in self.outputs() {
            self.emit(Call::Final {
                s,
                op: Op::Digest,
                out,
                det: Det::Yes,
            });
        }
    }

    fn wrap_ep(&mut self) {
        let s = self.some_session(false);
        self.maybe_user(s, 85);
        let aes = self.chance(75);
        let wrapping = if aes {
            self.pick(|o| o.kind == Kind::Aes && o.usage & WRAP != 0)
        } else {
            self.pick(|o| o.kind == Kind::RsaPub && o.usage & WRAP != 0)
        };
        let Some(wrapping) = wrapping else {
            self.create_ep();
            return;
        };
        let key = if self.chance(80) {
            self.pick(|o| o.kind.is_secret() && o.extractable)
        } else {
            self.pick(|o| matches!(o.kind, Kind::EcPriv | Kind::RsaPriv))
        };
        let Some(key) = key else {
            self.create_ep();
            return;
        };
        let key_kind = self.model(key).map_or(Kind::Aes, |m| m.kind);
        let mech = if aes {
            match self.rng.below(10) {
                0..=4 => Mech::plain(CKM_AES_KEY_WRAP_PAD),
                5..=7 => Mech::plain(CKM_AES_KEY_WRAP),
                8 => Mech::plain(CKM_AES_ECB),
                _ => Mech::plain(BAD_MECH),
            }
        } else if self.chance(50) {
            Mech::plain(CKM_RSA_PKCS)
        } else {
            Mech {
                ty: CKM_RSA_PKCS_OAEP,
                param: Param::OaepSha1,
            }
        };
        let det = aes && self.det(wrapping) && self.det(key);
        let mut last = None;
        for out in self.outputs() {
            last = Some(self.emit(Call::WrapKey {
                s,
                mech: mech.clone(),
                wrapping,
                key,
                out,
                det,
            }));
        }
        let Some(step) = last else { return };
        if !self.chance(70) {
            return;
        }
        let unwrapping = if aes {
            wrapping
        } else {
            self.objs
                .iter()
                .find(|o| o.pair == Some(wrapping))
                .map_or(wrapping, |o| o.o)
        };
        let (token, private, sensitive, extractable) = self.key_flags();
        let id = self.fresh_id();
        let label = self.label();
        let class = key_kind.class();
        let key_type = match key_kind {
            Kind::Aes => CKK_AES,
            Kind::Generic => CKK_GENERIC_SECRET,
            Kind::Des => CKK_DES,
            Kind::Des3 => CKK_DES3,
            Kind::RsaPriv => CKK_RSA,
            _ => CKK_EC,
        };
        let mut tmpl = vec![
            A::ulong(CKA_CLASS, class),
            A::ulong(CKA_KEY_TYPE, key_type),
            A::bool(CKA_TOKEN, token),
            A::bool(CKA_PRIVATE, private),
            A::bool(CKA_SENSITIVE, sensitive),
            A::bool(CKA_EXTRACTABLE, extractable),
            A::bytes(CKA_LABEL, label),
            A::bytes(CKA_ID, id),
        ];
        let usage = match key_kind {
            Kind::Aes => ENC | DEC,
            Kind::Generic => SIGN | VERIFY,
            Kind::Des | Kind::Des3 => ENC | DEC,
            _ => SIGN,
        };
        if key_kind.is_secret() {
            tmpl.extend(Self::usage_attrs(usage));
        } else {
            tmpl.push(A::bool(CKA_SIGN, true));
        }
        let other = det && self.chance(30);
        let corrupt = self.chance(8);
        let ustep = self.emit(Call::UnwrapKey {
            s,
            mech,
            unwrapping,
            blob: Input::Blob {
                step,
                other,
                corrupt,
            },
            tmpl,
        });
        if !corrupt {
            let det_key = self.det(key);
            self.add_obj(
                s,
                Obj::Made(ustep, 0),
                key_kind,
                token,
                private,
                det_key,
                usage,
                (sensitive, extractable),
            );
            if self.chance(50) {
                let k = Obj::Made(ustep, 0);
                match key_kind {
                    Kind::Aes | Kind::Des3 => self.crypt_ep(Some(k)),
                    Kind::Generic | Kind::EcPriv | Kind::RsaPriv => self.sign_ep(Some(k)),
                    _ => {}
                }
            }
        }
    }

    fn random_ep(&mut self) {
        let s = self.some_session(false);
        let null = self.chance(5);
        let len = self.rng.pick(&[0u16, 1, 16, 32, 100, 1000]);
        if self.chance(80) {
            self.emit(Call::GenerateRandom { s, len, null });
        } else {
            self.emit(Call::SeedRandom { s, len, null });
        }
    }

    fn info(&mut self) {
        let slot = if self.chance(90) {
            Slot::Good
        } else {
            Slot::Bogus
        };
        let out = self.rng.weighted(&[
            (50, Out::Big),
            (25, Out::Query),
            (15, Out::Short(1)),
            (10, Out::NullLen),
        ]);
        let mech = self.rng.pick(&[
            CKM_AES_KEY_GEN,
            CKM_AES_CBC,
            CKM_SHA256_HMAC,
            CKM_ECDSA,
            CKM_RSA_PKCS,
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            CKM_EC_KEY_PAIR_GEN,
            CKM_SHA256,
            CKM_AES_KEY_WRAP_PAD,
            CKM_DES3_ECB,
            BAD_MECH,
        ]);
        let call = match self.rng.below(100) {
            0..=7 => Call::GetInfo,
            8..=17 => Call::GetSlotList {
                present: self.rng.chance(70),
                out,
            },
            18..=27 => Call::GetSlotInfo { slot },
            28..=59 => Call::GetTokenInfo { slot },
            60..=69 => Call::GetMechanismList { slot, out },
            70..=89 => Call::GetMechanismInfo { slot, mech },
            90..=94 => Call::InitializeAgain {
                bad: self.rng.chance(50),
            },
            _ => Call::WaitForSlotEvent,
        };
        self.emit(call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_sequence() {
        let a = generate(1, 500, &[]);
        assert_eq!(a.len(), 500);
        assert_eq!(a, generate(1, 500, &[]));
        assert_ne!(a, generate(2, 500, &[]));
        // A shorter run is a prefix of a longer one.
        assert_eq!(generate(1, 100, &[]), a[..100].to_vec());
    }

    #[test]
    fn skipped_families_are_not_generated() {
        let skip: Vec<String> = FAMILIES
            .iter()
            .filter(|f| **f != "random")
            .map(|f| f.to_string())
            .collect();
        let calls = generate(3, 200, &skip);
        assert!(
            calls.iter().all(|c| matches!(
                c,
                Call::GenerateRandom { .. }
                    | Call::SeedRandom { .. }
                    | Call::OpenSession { .. }
                    | Call::Login { .. }
            )),
            "{calls:?}"
        );
    }
}
