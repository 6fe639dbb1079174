//! The calls of a differential sequence, symbolic: sessions and objects are named by the step
//! that made them (never by a raw handle), buffers by their shape, data by a recipe. The same
//! `Call` is run on both sides, each side mapping the names to its own handles.

use std::fmt;

use cryptoki_sys::*;

use super::names::{attr_name, mech_name};

/// Index of a call in its sequence.
pub type Step = usize;

/// A session: the one step `Made(n)` opened, or a handle no module ever gave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sess {
    Made(Step),
    Bogus,
}

/// A provisioned object (the same on every token, see [`crate::provision`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pre {
    RsaPriv,
    RsaPub,
    RsaCert,
    EcPriv,
    EcPub,
    Aes,
    Hmac,
}

impl Pre {
    pub const ALL: [Pre; 7] = [
        Pre::RsaPriv,
        Pre::RsaPub,
        Pre::RsaCert,
        Pre::EcPriv,
        Pre::EcPub,
        Pre::Aes,
        Pre::Hmac,
    ];

    /// (CKA_CLASS, CKA_ID) that identifies it on every token.
    pub fn identity(self) -> (CK_OBJECT_CLASS, Vec<u8>) {
        use crate::{AES_ID, EC_ID, HMAC_ID, RSA_ID};
        match self {
            Pre::RsaPriv => (CKO_PRIVATE_KEY, vec![RSA_ID]),
            Pre::RsaPub => (CKO_PUBLIC_KEY, vec![RSA_ID]),
            Pre::RsaCert => (CKO_CERTIFICATE, vec![RSA_ID]),
            Pre::EcPriv => (CKO_PRIVATE_KEY, vec![EC_ID]),
            Pre::EcPub => (CKO_PUBLIC_KEY, vec![EC_ID]),
            Pre::Aes => (CKO_SECRET_KEY, vec![AES_ID]),
            Pre::Hmac => (CKO_SECRET_KEY, vec![HMAC_ID]),
        }
    }
}

/// An object: provisioned, the `n`th object step `s` made (a key pair: 0 public, 1 private),
/// or a handle no module ever gave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Obj {
    Pre(Pre),
    Made(Step, u8),
    Bogus,
}

/// The slot under test on that side, or one that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Good,
    Bogus,
}

/// The operation kinds with an Init and a final call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    Digest,
}

/// A mechanism parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    None,
    /// `len` bytes, each `fill` (an IV when 16 long).
    Bytes(u8, u8),
    /// pParameter NULL with ulParameterLen `n`.
    NullLen(u8),
    /// CK_RSA_PKCS_OAEP_PARAMS: SHA-1, MGF1-SHA-1, no label.
    OaepSha1,
    /// CK_RSA_PKCS_PSS_PARAMS: SHA-256, MGF1-SHA-256, salt 32.
    PssSha256,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mech {
    pub ty: CK_MECHANISM_TYPE,
    pub param: Param,
}

impl Mech {
    pub fn plain(ty: CK_MECHANISM_TYPE) -> Self {
        Mech {
            ty,
            param: Param::None,
        }
    }
}

/// An attribute value in a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AVal {
    Bool(bool),
    Ulong(u64),
    Bytes(Vec<u8>),
    /// pValue NULL with ulValueLen `n`.
    Null(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct A {
    pub ty: CK_ATTRIBUTE_TYPE,
    pub val: AVal,
}

impl A {
    pub fn bool(ty: CK_ATTRIBUTE_TYPE, v: bool) -> Self {
        A {
            ty,
            val: AVal::Bool(v),
        }
    }
    pub fn ulong(ty: CK_ATTRIBUTE_TYPE, v: u64) -> Self {
        A {
            ty,
            val: AVal::Ulong(v),
        }
    }
    pub fn bytes(ty: CK_ATTRIBUTE_TYPE, v: impl Into<Vec<u8>>) -> Self {
        A {
            ty,
            val: AVal::Bytes(v.into()),
        }
    }
}

/// Where an output goes (C_Sign, C_Encrypt, C_WrapKey, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// NULL buffer: a length query.
    Query,
    /// A buffer of `n` bytes, too small for most outputs.
    Short(u16),
    /// A buffer of [`BIG`] bytes.
    Big,
    /// NULL length pointer (with a real buffer).
    NullLen,
}

/// Capacity of [`Out::Big`] and [`AttrOut::Big`] buffers.
pub const BIG: usize = 4096;

/// The buffer offered for one attribute in C_GetAttributeValue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrOut {
    /// pValue NULL: a length query.
    Null,
    /// pValue set, ulValueLen `n`.
    Short(u16),
    /// [`BIG`] bytes.
    Big,
    /// [`BIG`] bytes of buffer, but ulValueLen claims 2^40 (absurd, and no value is that long).
    Huge,
}

/// Input data of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// `len` bytes made from `fill` (see [`Input::bytes`]).
    Bytes(u16, u8),
    /// The output step `step` produced on this side, or with `other` on the other side;
    /// `corrupt` flips a bit of it.
    Blob {
        step: Step,
        other: bool,
        corrupt: bool,
    },
    /// A NULL pointer with length `n`.
    Null(u16),
}

impl Input {
    pub fn bytes(len: u16, fill: u8) -> Vec<u8> {
        (0..len)
            .map(|i| fill.wrapping_add((i as u8).wrapping_mul(7)))
            .collect()
    }
}

/// Whether an operation's output must be the same on both tokens.
///
/// The generator cannot know which operation a token has active (a failed call may or may
/// not end one), so the side decides with what it saw: the output of an operation is
/// compared when the Init that started it (the last one that succeeded in that session) said
/// so and its inputs are alike ([`Det::Yes`]); a decryption of this side's own random
/// ciphertext is compared when both were made by the operations the generator meant
/// ([`Det::Decrypts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Det {
    No,
    Yes,
    /// Decrypting the output of the encryption started at step `enc`, in the operation
    /// started at step `dec`: the plaintext is the one encrypted.
    Decrypts {
        enc: Step,
        dec: Step,
    },
}

/// A PIN given to C_Login / C_SetPIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    User,
    So,
    Wrong,
    Empty,
    /// NULL with length 0 (protected authentication path).
    NullZero,
    /// NULL with length 4.
    NullLen,
    /// 300 bytes: longer than SoftHSM takes.
    Long,
}

impl Pin {
    /// Whether this PIN is a wrong one for `user` (counts against the token's retry limit).
    pub fn is_wrong_for(self, user: CK_USER_TYPE) -> bool {
        !matches!(
            (self, user),
            (Pin::User, CKU_USER) | (Pin::So, CKU_SO) | (Pin::NullLen, _)
        )
    }
}

/// One PKCS#11 call of a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    GetInfo,
    /// C_Initialize while initialized (`bad`: pReserved non-NULL).
    InitializeAgain {
        bad: bool,
    },
    GetSlotList {
        present: bool,
        out: Out,
    },
    GetSlotInfo {
        slot: Slot,
    },
    GetTokenInfo {
        slot: Slot,
    },
    GetMechanismList {
        slot: Slot,
        out: Out,
    },
    GetMechanismInfo {
        slot: Slot,
        mech: CK_MECHANISM_TYPE,
    },
    /// C_WaitForSlotEvent with CKF_DONT_BLOCK.
    WaitForSlotEvent,
    OpenSession {
        slot: Slot,
        flags: CK_FLAGS,
        null_out: bool,
    },
    CloseSession {
        s: Sess,
    },
    CloseAllSessions {
        slot: Slot,
    },
    GetSessionInfo {
        s: Sess,
        null_out: bool,
    },
    GetOperationState {
        s: Sess,
    },
    Login {
        s: Sess,
        user: CK_USER_TYPE,
        pin: Pin,
    },
    Logout {
        s: Sess,
    },
    /// C_InitPIN with the user PIN (it stays what it was).
    InitPin {
        s: Sess,
    },
    /// C_SetPIN from `old` to the same PIN (nothing changes when it succeeds).
    SetPin {
        s: Sess,
        old: Pin,
    },
    CreateObject {
        s: Sess,
        tmpl: Vec<A>,
        /// NULL template pointer with this count.
        null_tmpl: bool,
    },
    CopyObject {
        s: Sess,
        o: Obj,
        tmpl: Vec<A>,
    },
    DestroyObject {
        s: Sess,
        o: Obj,
    },
    GetObjectSize {
        s: Sess,
        o: Obj,
    },
    GetAttributes {
        s: Sess,
        o: Obj,
        query: Vec<(CK_ATTRIBUTE_TYPE, AttrOut)>,
        /// Values the two tokens must agree on (the object has the same value on both).
        det: bool,
        null_tmpl: bool,
    },
    SetAttributes {
        s: Sess,
        o: Obj,
        tmpl: Vec<A>,
    },
    FindInit {
        s: Sess,
        tmpl: Vec<A>,
        null_tmpl: bool,
    },
    Find {
        s: Sess,
        max: u64,
        null_buf: bool,
        null_count: bool,
    },
    FindFinal {
        s: Sess,
    },
    GenerateKey {
        s: Sess,
        mech: Option<Mech>,
        tmpl: Vec<A>,
    },
    GenerateKeyPair {
        s: Sess,
        mech: Mech,
        public: Vec<A>,
        private: Vec<A>,
    },
    WrapKey {
        s: Sess,
        mech: Mech,
        wrapping: Obj,
        key: Obj,
        out: Out,
        det: bool,
    },
    UnwrapKey {
        s: Sess,
        mech: Mech,
        unwrapping: Obj,
        blob: Input,
        tmpl: Vec<A>,
    },
    GenerateRandom {
        s: Sess,
        len: u16,
        null: bool,
    },
    SeedRandom {
        s: Sess,
        len: u16,
        null: bool,
    },
    /// C_SignInit, C_VerifyInit, C_EncryptInit, C_DecryptInit, C_DigestInit (key unused).
    Init {
        s: Sess,
        op: Op,
        mech: Option<Mech>,
        key: Obj,
        /// The operation's outputs are the same on both tokens (for the same inputs).
        det: bool,
    },
    /// C_Sign, C_Encrypt, C_Decrypt, C_Digest.
    Single {
        s: Sess,
        op: Op,
        data: Input,
        out: Out,
        det: Det,
    },
    /// C_SignUpdate, C_VerifyUpdate, C_EncryptUpdate, C_DecryptUpdate, C_DigestUpdate.
    Update {
        s: Sess,
        op: Op,
        data: Input,
        out: Out,
        det: Det,
    },
    /// C_SignFinal, C_EncryptFinal, C_DecryptFinal, C_DigestFinal.
    Final {
        s: Sess,
        op: Op,
        out: Out,
        det: Det,
    },
    Verify {
        s: Sess,
        data: Input,
        sig: Input,
    },
    VerifyFinal {
        s: Sess,
        sig: Input,
    },
    DigestKey {
        s: Sess,
        o: Obj,
        /// The key has the same value on both tokens.
        det: bool,
    },
}

impl Call {
    /// The PKCS#11 function this call makes (allow-list entries name it).
    pub fn function(&self) -> &'static str {
        match self {
            Call::GetInfo => "C_GetInfo",
            Call::InitializeAgain { .. } => "C_Initialize",
            Call::GetSlotList { .. } => "C_GetSlotList",
            Call::GetSlotInfo { .. } => "C_GetSlotInfo",
            Call::GetTokenInfo { .. } => "C_GetTokenInfo",
            Call::GetMechanismList { .. } => "C_GetMechanismList",
            Call::GetMechanismInfo { .. } => "C_GetMechanismInfo",
            Call::WaitForSlotEvent => "C_WaitForSlotEvent",
            Call::OpenSession { .. } => "C_OpenSession",
            Call::CloseSession { .. } => "C_CloseSession",
            Call::CloseAllSessions { .. } => "C_CloseAllSessions",
            Call::GetSessionInfo { .. } => "C_GetSessionInfo",
            Call::GetOperationState { .. } => "C_GetOperationState",
            Call::Login { .. } => "C_Login",
            Call::Logout { .. } => "C_Logout",
            Call::InitPin { .. } => "C_InitPIN",
            Call::SetPin { .. } => "C_SetPIN",
            Call::CreateObject { .. } => "C_CreateObject",
            Call::CopyObject { .. } => "C_CopyObject",
            Call::DestroyObject { .. } => "C_DestroyObject",
            Call::GetObjectSize { .. } => "C_GetObjectSize",
            Call::GetAttributes { .. } => "C_GetAttributeValue",
            Call::SetAttributes { .. } => "C_SetAttributeValue",
            Call::FindInit { .. } => "C_FindObjectsInit",
            Call::Find { .. } => "C_FindObjects",
            Call::FindFinal { .. } => "C_FindObjectsFinal",
            Call::GenerateKey { .. } => "C_GenerateKey",
            Call::GenerateKeyPair { .. } => "C_GenerateKeyPair",
            Call::WrapKey { .. } => "C_WrapKey",
            Call::UnwrapKey { .. } => "C_UnwrapKey",
            Call::GenerateRandom { .. } => "C_GenerateRandom",
            Call::SeedRandom { .. } => "C_SeedRandom",
            Call::Init { op, .. } => match op {
                Op::Sign => "C_SignInit",
                Op::Verify => "C_VerifyInit",
                Op::Encrypt => "C_EncryptInit",
                Op::Decrypt => "C_DecryptInit",
                Op::Digest => "C_DigestInit",
            },
            Call::Single { op, .. } => match op {
                Op::Sign => "C_Sign",
                Op::Verify => "C_Verify",
                Op::Encrypt => "C_Encrypt",
                Op::Decrypt => "C_Decrypt",
                Op::Digest => "C_Digest",
            },
            Call::Update { op, .. } => match op {
                Op::Sign => "C_SignUpdate",
                Op::Verify => "C_VerifyUpdate",
                Op::Encrypt => "C_EncryptUpdate",
                Op::Decrypt => "C_DecryptUpdate",
                Op::Digest => "C_DigestUpdate",
            },
            Call::Final { op, .. } => match op {
                Op::Sign => "C_SignFinal",
                Op::Verify => "C_VerifyFinal",
                Op::Encrypt => "C_EncryptFinal",
                Op::Decrypt => "C_DecryptFinal",
                Op::Digest => "C_DigestFinal",
            },
            Call::Verify { .. } => "C_Verify",
            Call::VerifyFinal { .. } => "C_VerifyFinal",
            Call::DigestKey { .. } => "C_DigestKey",
        }
    }
}

impl fmt::Display for Sess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sess::Made(n) => write!(f, "s{n}"),
            Sess::Bogus => write!(f, "s?"),
        }
    }
}

impl fmt::Display for Obj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obj::Pre(p) => write!(f, "{p:?}"),
            Obj::Made(n, k) => write!(f, "o{n}.{k}"),
            Obj::Bogus => write!(f, "o?"),
        }
    }
}

impl fmt::Display for Mech {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", mech_name(self.ty))?;
        match &self.param {
            Param::None => Ok(()),
            Param::Bytes(n, fill) => write!(f, "(param {n}x{fill:02x})"),
            Param::NullLen(n) => write!(f, "(param NULL len {n})"),
            Param::OaepSha1 => write!(f, "(OAEP SHA-1)"),
            Param::PssSha256 => write!(f, "(PSS SHA-256)"),
        }
    }
}

impl fmt::Display for A {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", attr_name(self.ty))?;
        match &self.val {
            AVal::Bool(b) => write!(f, "{b}"),
            AVal::Ulong(v) => match self.ty {
                CKA_CLASS | CKA_KEY_TYPE => write!(f, "{v:#x}"),
                _ => write!(f, "{v}"),
            },
            AVal::Bytes(b) => write!(f, "{}", hex(b)),
            AVal::Null(n) => write!(f, "NULL/{n}"),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Bytes(n, fill) => write!(f, "{n}B/{fill:02x}"),
            Input::Blob {
                step,
                other,
                corrupt,
            } => write!(
                f,
                "out#{step}{}{}",
                if *other { "(other side)" } else { "" },
                if *corrupt { "(corrupted)" } else { "" }
            ),
            Input::Null(n) => write!(f, "NULL/{n}"),
        }
    }
}

/// Short hex: the bytes, or their length and first bytes when long.
pub fn hex(b: &[u8]) -> String {
    let h: String = b.iter().take(24).map(|x| format!("{x:02x}")).collect();
    if b.len() > 24 {
        format!("{h}..({} bytes)", b.len())
    } else if b.is_empty() {
        "''".to_string()
    } else {
        h
    }
}

fn list<T: fmt::Display>(v: &[T]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn det_note(d: Det) -> String {
    match d {
        Det::Yes => String::new(),
        Det::No => " [output by length]".to_string(),
        Det::Decrypts { enc, dec } => {
            format!(" [compared if #{enc} and #{dec} started the operations]")
        }
    }
}

fn mech_opt(m: &Option<Mech>) -> String {
    m.as_ref().map_or("NULL".to_string(), |m| m.to_string())
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Call::*;
        let name = self.function();
        match self {
            GetInfo | WaitForSlotEvent => write!(f, "{name}()"),
            InitializeAgain { bad } => {
                write!(f, "{name}(pReserved {})", if *bad { "set" } else { "NULL" })
            }
            GetSlotList { present, out } => write!(f, "{name}(present={present}, {out:?})"),
            GetSlotInfo { slot } | GetTokenInfo { slot } | CloseAllSessions { slot } => {
                write!(f, "{name}({slot:?})")
            }
            GetMechanismList { slot, out } => write!(f, "{name}({slot:?}, {out:?})"),
            GetMechanismInfo { slot, mech } => write!(f, "{name}({slot:?}, {})", mech_name(*mech)),
            OpenSession {
                slot,
                flags,
                null_out,
            } => write!(
                f,
                "{name}({slot:?}, flags {flags:#x}{})",
                if *null_out { ", phSession NULL" } else { "" }
            ),
            CloseSession { s }
            | GetOperationState { s }
            | Logout { s }
            | InitPin { s }
            | FindFinal { s } => {
                write!(f, "{name}({s})")
            }
            GetSessionInfo { s, null_out } => {
                write!(f, "{name}({s}{})", if *null_out { ", NULL" } else { "" })
            }
            Login { s, user, pin } => write!(f, "{name}({s}, user {user}, {pin:?})"),
            SetPin { s, old } => write!(f, "{name}({s}, {old:?} -> same)"),
            CreateObject { s, tmpl, null_tmpl } => write!(
                f,
                "{name}({s}, {})",
                if *null_tmpl {
                    format!("NULL/{}", tmpl.len())
                } else {
                    list(tmpl)
                }
            ),
            CopyObject { s, o, tmpl } => write!(f, "{name}({s}, {o}, {})", list(tmpl)),
            DestroyObject { s, o } | GetObjectSize { s, o } | DigestKey { s, o, .. } => {
                write!(f, "{name}({s}, {o})")
            }
            GetAttributes {
                s,
                o,
                query,
                det,
                null_tmpl,
            } => {
                let q: Vec<String> = query
                    .iter()
                    .map(|(t, b)| format!("{}:{b:?}", attr_name(*t)))
                    .collect();
                write!(
                    f,
                    "{name}({s}, {o}, {}{}){}",
                    if *null_tmpl { "NULL/" } else { "" },
                    q.join(" "),
                    if *det { "" } else { " [values by length]" }
                )
            }
            SetAttributes { s, o, tmpl } => write!(f, "{name}({s}, {o}, {})", list(tmpl)),
            FindInit { s, tmpl, null_tmpl } => write!(
                f,
                "{name}({s}, {})",
                if *null_tmpl {
                    format!("NULL/{}", tmpl.len().max(1))
                } else {
                    list(tmpl)
                }
            ),
            Find {
                s,
                max,
                null_buf,
                null_count,
            } => write!(
                f,
                "{name}({s}, max {max}{}{})",
                if *null_buf { ", phObject NULL" } else { "" },
                if *null_count { ", pulCount NULL" } else { "" }
            ),
            GenerateKey { s, mech, tmpl } => {
                write!(f, "{name}({s}, {}, {})", mech_opt(mech), list(tmpl))
            }
            GenerateKeyPair {
                s,
                mech,
                public,
                private,
            } => write!(
                f,
                "{name}({s}, {mech}, public {}, private {})",
                list(public),
                list(private)
            ),
            WrapKey {
                s,
                mech,
                wrapping,
                key,
                out,
                det,
            } => write!(
                f,
                "{name}({s}, {mech}, {wrapping}, {key}, {out:?}){}",
                if *det { "" } else { " [output by length]" }
            ),
            UnwrapKey {
                s,
                mech,
                unwrapping,
                blob,
                tmpl,
            } => write!(
                f,
                "{name}({s}, {mech}, {unwrapping}, {blob}, {})",
                list(tmpl)
            ),
            GenerateRandom { s, len, null } | SeedRandom { s, len, null } => {
                write!(f, "{name}({s}, {}{len})", if *null { "NULL/" } else { "" })
            }
            Init {
                s,
                op,
                mech,
                key,
                det,
            } => {
                let note = if *det { "" } else { " [outputs by length]" };
                if *op == Op::Digest {
                    write!(f, "{name}({s}, {}){note}", mech_opt(mech))
                } else {
                    write!(f, "{name}({s}, {}, {key}){note}", mech_opt(mech))
                }
            }
            Single {
                s, data, out, det, ..
            }
            | Update {
                s, data, out, det, ..
            } => {
                if matches!(
                    self,
                    Update {
                        op: Op::Sign | Op::Verify | Op::Digest,
                        ..
                    }
                ) {
                    write!(f, "{name}({s}, {data})")
                } else {
                    write!(f, "{name}({s}, {data}, {out:?}){}", det_note(*det))
                }
            }
            Final { s, out, det, .. } => write!(f, "{name}({s}, {out:?}){}", det_note(*det)),
            Verify { s, data, sig } => write!(f, "{name}({s}, {data}, sig {sig})"),
            VerifyFinal { s, sig } => write!(f, "{name}({s}, sig {sig})"),
        }
    }
}
