//! The PKCS#11 calls p11ha makes into a member instance. Each one copies what it needs into
//! owned memory, runs through `Instance::call` (a pool thread, ReceiveTimeout) and comes back
//! as a [`MemberResult`].
//!
//! Sizes are never taken on trust: an output buffer is sized by what the call can produce, not
//! by the capacity a caller claims (a `*pulSignatureLen` of `ULONG_MAX` must not make p11ha
//! allocate it), every allocation whose size comes from outside is fallible (CKR_HOST_MEMORY),
//! and counts a member reports are bounded.

use super::instance::Instance;
use super::outcome::{check, Fault, MemberResult};
use super::table::{ck, Fns};
use crate::mechanism::{raw_template, Attr, OwnedMechanism};
use cryptoki_sys::*;
use std::sync::Arc;
use zeroize::Zeroizing;

mod objects;

/// Bytes an application hands to an operation, shared by every attempt (failover reuses them)
/// and wiped when the last attempt lets go.
pub type Data = Arc<Input>;

/// An application's input buffer as it gave it: its bytes, and whether the pointer was NULL
/// (only possible with length 0), which members answer differently from an empty buffer.
pub struct Input {
    bytes: Secret,
    null: bool,
}

impl Input {
    pub fn new(bytes: impl Into<Secret>) -> Data {
        Arc::new(Input {
            bytes: bytes.into(),
            null: false,
        })
    }

    /// A NULL pointer (with length 0).
    pub fn null() -> Data {
        Arc::new(Input {
            bytes: Secret::default(),
            null: true,
        })
    }

    /// The pointer a member call gets: NULL when the application gave NULL.
    fn ptr(&self) -> *mut u8 {
        if self.null {
            std::ptr::null_mut()
        } else {
            self.bytes.as_ptr() as *mut u8
        }
    }

    fn ulen(&self) -> CK_ULONG {
        self.bytes.len() as CK_ULONG
    }
}

/// Bytes that pass through p11ha on their way between the application and a member (data to
/// sign or encrypt, a decrypted plaintext, a signature, a wrapped key): wiped when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl From<Vec<u8>> for Secret {
    fn from(v: Vec<u8>) -> Secret {
        Secret(v)
    }
}

impl std::ops::Deref for Secret {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Clears a buffer's whole capacity as C's `explicit_bzero` does: at `memset` speed, and never
/// left out by the compiler. `zeroize` writes a byte at a time, which measured 0.4 µs for the
/// 1 KiB input of one AES-GCM encryption (a sixth of p11ha's cost per call there).
pub fn wipe(v: &mut Vec<u8>) {
    if v.capacity() > 0 {
        // SAFETY: the pointer is valid for writes of the vector's whole capacity.
        unsafe { libc::explicit_bzero(v.as_mut_ptr().cast(), v.capacity()) };
    }
}

impl std::ops::Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// C_GetAttributeValue's answer: the call's CK_RV and, per attribute, the length the member
/// reported and the value when it was copied.
pub type AttributeValues = (CK_RV, Vec<(CK_ULONG, Option<Vec<u8>>)>);

/// Room set aside for an output beyond the input that produces it (padding, a tag, an RSA
/// block, a signature). An output that needs more is read again at its real size (see
/// [`with_out`]), so this bounds memory, not what can be returned.
const OUTPUT_SLACK: usize = 64 * 1024;
/// Room set aside for one attribute value before its real size is asked for.
const ATTRIBUTE_ROOM: usize = 64 * 1024;
/// Largest attribute value p11ha reads for itself (identities, copies between members).
const MAX_READ_ATTRIBUTE: usize = 64 << 20;
/// Most slots or mechanisms a member may report: more is a broken member, not a big one.
const MAX_LIST: usize = 1 << 16;
/// Most objects one search may find on a member.
const MAX_FOUND: usize = 1 << 22;

/// Output of a call that fills a caller buffer: CKR_OK or CKR_BUFFER_TOO_SMALL, the length the
/// member reported, and the bytes (when a buffer was given and the call succeeded). Any other
/// answer is a [`Fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub rv: CK_RV,
    pub len: CK_ULONG,
    pub data: Option<Secret>,
}

/// Which cryptographic operation a generic init/update/final call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    SignRecover,
    Verify,
    VerifyRecover,
}

/// A zero-filled buffer of `n` bytes, or CKR_HOST_MEMORY.
pub fn buffer(n: usize) -> MemberResult<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Fault::Rv(CKR_HOST_MEMORY))?;
    v.resize(n, 0);
    Ok(v)
}

fn ulen(v: &[u8]) -> CK_ULONG {
    v.len() as CK_ULONG
}

fn ulen_of<T>(v: &[T]) -> CK_ULONG {
    v.len() as CK_ULONG
}

fn usize_of(n: CK_ULONG) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Runs `f` with an output buffer for a caller offering `cap` bytes (`None`: a length query),
/// setting aside at most `room`. When the member says a bigger output would still fit the
/// caller's buffer, the call is made again with a buffer of that size (CKR_BUFFER_TOO_SMALL
/// leaves the operation active, so asking again is what any caller could do).
fn with_out(
    cap: Option<CK_ULONG>,
    room: usize,
    mut f: impl FnMut(*mut u8, *mut CK_ULONG) -> CK_RV,
) -> MemberResult<Output> {
    let Some(cap) = cap else {
        let mut len = 0;
        let rv = f(std::ptr::null_mut(), &mut len);
        return output(rv, len, None);
    };
    let mut buf = buffer(usize_of(cap).min(room))?;
    let mut len = ulen(&buf);
    let mut rv = f(buf.as_mut_ptr(), &mut len);
    if rv == CKR_BUFFER_TOO_SMALL && usize_of(len) > buf.len() && len <= cap {
        buf = buffer(usize_of(len))?;
        len = ulen(&buf);
        rv = f(buf.as_mut_ptr(), &mut len);
    }
    output(rv, len, Some(buf))
}

fn output(rv: CK_RV, len: CK_ULONG, buf: Option<Vec<u8>>) -> MemberResult<Output> {
    // Wiped whatever the answer: a member may have written part of an output before it failed.
    let buf = buf.map(Secret);
    match rv {
        CKR_OK => {
            let data = buf.map(|mut b| {
                b.0.truncate(usize_of(len).min(b.len()));
                b
            });
            Ok(Output { rv, len, data })
        }
        CKR_BUFFER_TOO_SMALL => Ok(Output {
            rv,
            len,
            data: None,
        }),
        rv => Err(Fault::Rv(rv)),
    }
}

/// A two-call list (count, then items), bounded; retried when it grew in between.
fn list<T: Copy + Default>(
    mut f: impl FnMut(*mut T, *mut CK_ULONG) -> CK_RV,
) -> MemberResult<Vec<T>> {
    for _ in 0..3 {
        let mut n: CK_ULONG = 0;
        check(f(std::ptr::null_mut(), &mut n))?;
        let count = usize_of(n);
        if count > MAX_LIST {
            // A member that claims this many is broken; failing it beats allocating it.
            return Err(Fault::Rv(CKR_DEVICE_ERROR));
        }
        let mut v = vec![T::default(); count];
        match f(v.as_mut_ptr(), &mut n) {
            CKR_BUFFER_TOO_SMALL => continue,
            rv => check(rv)?,
        }
        v.truncate(usize_of(n).min(count));
        return Ok(v);
    }
    Err(Fault::Rv(CKR_DEVICE_ERROR))
}

/// Calls that only answer a CK_RV.
macro_rules! plain_calls {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $f:ident($($a:expr),*); )*) => {
        impl Instance {
            $(
                $(#[$doc])*
                pub fn $name(&self, $($arg: $ty),*) -> MemberResult<()> {
                    self.try_call(move |f| check(ck!(f, $f($($a),*))))
                }
            )*
        }
    };
}

/// Calls that answer one value through their last (out) argument.
macro_rules! value_calls {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty => $f:ident($($a:expr),*); )*) => {
        impl Instance {
            $(
                $(#[$doc])*
                pub fn $name(&self, $($arg: $ty),*) -> MemberResult<$out> {
                    self.try_call(move |f| {
                        // SAFETY: PKCS#11 info structs and handles are plain data; all zero is valid.
                        let mut out: $out = unsafe { std::mem::zeroed() };
                        check(ck!(f, $f($($a,)* &mut out))).map(|_| out)
                    })
                }
            )*
        }
    };
}

plain_calls! {
    fn close_session(h: CK_SESSION_HANDLE) => C_CloseSession(h);
    fn logout(h: CK_SESSION_HANDLE) => C_Logout(h);
    fn destroy_object(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) => C_DestroyObject(h, obj);
    fn digest_key(h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) => C_DigestKey(h, key);
}

value_calls! {
    fn slot_info(slot: CK_SLOT_ID) -> CK_SLOT_INFO => C_GetSlotInfo(slot);
    fn token_info(slot: CK_SLOT_ID) -> CK_TOKEN_INFO => C_GetTokenInfo(slot);
    fn mechanism_info(slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE) -> CK_MECHANISM_INFO
        => C_GetMechanismInfo(slot, mech);
    fn session_info(h: CK_SESSION_HANDLE) -> CK_SESSION_INFO => C_GetSessionInfo(h);
    fn object_size(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> CK_ULONG
        => C_GetObjectSize(h, obj);
    fn open_session(slot: CK_SLOT_ID, flags: CK_FLAGS) -> CK_SESSION_HANDLE
        => C_OpenSession(slot, flags, std::ptr::null_mut(), None);
}

impl Instance {
    pub fn slot_list(&self, token_present: bool) -> MemberResult<Vec<CK_SLOT_ID>> {
        let present = if token_present { CK_TRUE } else { CK_FALSE };
        self.try_call(move |f| list(|p, n| ck!(f, C_GetSlotList(present, p, n))))
    }

    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> MemberResult<Vec<CK_MECHANISM_TYPE>> {
        self.try_call(move |f| list(|p, n| ck!(f, C_GetMechanismList(slot, p, n))))
    }

    pub fn login(
        &self,
        h: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<Arc<Zeroizing<Vec<u8>>>>,
    ) -> MemberResult<()> {
        self.try_call(move |f| {
            let (p, n) = match &pin {
                Some(pin) => (pin.as_ptr() as *mut u8, ulen(pin)),
                None => (std::ptr::null_mut(), 0),
            };
            check(ck!(f, C_Login(h, user, p, n)))
        })
    }

    pub fn op_init(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        mech: Option<OwnedMechanism>,
        key: CK_OBJECT_HANDLE,
    ) -> MemberResult<()> {
        self.try_call(move |f| {
            let mut raw = mech.as_ref().map(|m| m.raw());
            let mut ckm = raw.as_mut().map(|r| r.ck());
            let m = ckm.as_mut().map_or(std::ptr::null_mut(), |m| m as *mut _);
            check(init(f, kind, h, m, key))
        })
    }

    /// The single-part call of an operation that produces output (all but Verify).
    pub fn op_single(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        data: Data,
        cap: Option<CK_ULONG>,
        begin: Option<Begin>,
    ) -> MemberResult<Output> {
        self.try_call(move |f| {
            begin_first(f, kind, h, begin)?;
            let room = data.len().saturating_add(OUTPUT_SLACK);
            with_out(cap, room, |out, len| {
                let (d, n) = (data.ptr(), data.ulen());
                match kind {
                    OpKind::Encrypt => ck!(f, C_Encrypt(h, d, n, out, len)),
                    OpKind::Decrypt => ck!(f, C_Decrypt(h, d, n, out, len)),
                    OpKind::Digest => ck!(f, C_Digest(h, d, n, out, len)),
                    OpKind::Sign => ck!(f, C_Sign(h, d, n, out, len)),
                    OpKind::SignRecover => ck!(f, C_SignRecover(h, d, n, out, len)),
                    OpKind::VerifyRecover => ck!(f, C_VerifyRecover(h, d, n, out, len)),
                    OpKind::Verify => CKR_FUNCTION_FAILED,
                }
            })
        })
    }

    /// Update calls: Encrypt/Decrypt produce output, Digest/Sign/Verify do not (`cap` ignored).
    pub fn op_update(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        data: Data,
        cap: Option<CK_ULONG>,
        begin: Option<Begin>,
    ) -> MemberResult<Output> {
        self.try_call(move |f| {
            begin_first(f, kind, h, begin)?;
            let (d, n) = (data.ptr(), data.ulen());
            let room = data.len().saturating_add(OUTPUT_SLACK);
            match kind {
                OpKind::Encrypt => with_out(cap, room, |out, len| {
                    ck!(f, C_EncryptUpdate(h, d, n, out, len))
                }),
                OpKind::Decrypt => with_out(cap, room, |out, len| {
                    ck!(f, C_DecryptUpdate(h, d, n, out, len))
                }),
                OpKind::Digest => plain(ck!(f, C_DigestUpdate(h, d, n))),
                OpKind::Sign => plain(ck!(f, C_SignUpdate(h, d, n))),
                OpKind::Verify => plain(ck!(f, C_VerifyUpdate(h, d, n))),
                OpKind::SignRecover | OpKind::VerifyRecover => {
                    Err(Fault::Rv(CKR_OPERATION_NOT_INITIALIZED))
                }
            }
        })
    }

    pub fn op_final(
        &self,
        kind: OpKind,
        h: CK_SESSION_HANDLE,
        cap: Option<CK_ULONG>,
        begin: Option<Begin>,
    ) -> MemberResult<Output> {
        self.try_call(move |f| {
            begin_first(f, kind, h, begin)?;
            with_out(cap, OUTPUT_SLACK, |out, len| match kind {
                OpKind::Encrypt => ck!(f, C_EncryptFinal(h, out, len)),
                OpKind::Decrypt => ck!(f, C_DecryptFinal(h, out, len)),
                OpKind::Digest => ck!(f, C_DigestFinal(h, out, len)),
                OpKind::Sign => ck!(f, C_SignFinal(h, out, len)),
                _ => CKR_OPERATION_NOT_INITIALIZED,
            })
        })
    }

    /// C_Verify: CKR_OK is a valid signature; CKR_SIGNATURE_INVALID and the like are faults
    /// the caller gets as they are.
    pub fn verify(
        &self,
        h: CK_SESSION_HANDLE,
        data: Data,
        sig: Data,
        begin: Option<Begin>,
    ) -> MemberResult<()> {
        self.try_call(move |f| {
            begin_first(f, OpKind::Verify, h, begin)?;
            check(ck!(
                f,
                C_Verify(h, data.ptr(), data.ulen(), sig.ptr(), sig.ulen())
            ))
        })
    }

    pub fn verify_final(
        &self,
        h: CK_SESSION_HANDLE,
        sig: Data,
        begin: Option<Begin>,
    ) -> MemberResult<()> {
        self.try_call(move |f| {
            begin_first(f, OpKind::Verify, h, begin)?;
            check(ck!(f, C_VerifyFinal(h, sig.ptr(), sig.ulen())))
        })
    }

    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.try_call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut raw = raw_template(&t);
            let mut o = 0;
            check(ck!(
                f,
                C_GenerateKey(h, &mut m, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            ))
            .map(|_| o)
        })
    }

    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        public: Vec<Attr>,
        private: Vec<Attr>,
    ) -> MemberResult<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        self.try_call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut pu = raw_template(&public);
            let mut pr = raw_template(&private);
            let (mut a, mut b) = (0, 0);
            check(ck!(
                f,
                C_GenerateKeyPair(
                    h,
                    &mut m,
                    pu.as_mut_ptr(),
                    pu.len() as CK_ULONG,
                    pr.as_mut_ptr(),
                    pr.len() as CK_ULONG,
                    &mut a,
                    &mut b
                )
            ))
            .map(|_| (a, b))
        })
    }

    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        cap: Option<CK_ULONG>,
    ) -> MemberResult<Output> {
        self.try_call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            with_out(cap, OUTPUT_SLACK, |out, len| {
                ck!(f, C_WrapKey(h, &mut m, wrapping, key, out, len))
            })
        })
    }

    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: Data,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.try_call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut raw = raw_template(&t);
            let mut o = 0;
            check(ck!(
                f,
                C_UnwrapKey(
                    h,
                    &mut m,
                    unwrapping,
                    wrapped.ptr(),
                    wrapped.ulen(),
                    raw.as_mut_ptr(),
                    raw.len() as CK_ULONG,
                    &mut o
                )
            ))
            .map(|_| o)
        })
    }

    pub fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: OwnedMechanism,
        base: CK_OBJECT_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.try_call(move |f| {
            let mut raw_m = mech.raw();
            let mut m = raw_m.ck();
            let mut raw = raw_template(&t);
            let mut o = 0;
            check(ck!(
                f,
                C_DeriveKey(
                    h,
                    &mut m,
                    base,
                    raw.as_mut_ptr(),
                    raw.len() as CK_ULONG,
                    &mut o
                )
            ))
            .map(|_| o)
        })
    }

    pub fn seed_random(&self, h: CK_SESSION_HANDLE, seed: Data) -> MemberResult<()> {
        self.try_call(move |f| check(ck!(f, C_SeedRandom(h, seed.ptr(), seed.ulen()))))
    }

    /// `n` random bytes; callers ask for large amounts in pieces (see `ffi::functions`). For
    /// `n` = 0 the member sees a NULL buffer when the caller gave one (`null`): members differ
    /// on that case, and the caller gets the member's own answer.
    pub fn generate_random(
        &self,
        h: CK_SESSION_HANDLE,
        n: usize,
        null: bool,
    ) -> MemberResult<Vec<u8>> {
        self.try_call(move |f| {
            let mut v = buffer(n)?;
            let p = if n == 0 && null {
                std::ptr::null_mut()
            } else {
                v.as_mut_ptr()
            };
            check(ck!(f, C_GenerateRandom(h, p, ulen(&v)))).map(|_| v)
        })
    }

    pub fn set_pin(
        &self,
        h: CK_SESSION_HANDLE,
        old: Arc<Zeroizing<Vec<u8>>>,
        new: Arc<Zeroizing<Vec<u8>>>,
    ) -> MemberResult<()> {
        self.try_call(move |f| {
            check(ck!(
                f,
                C_SetPIN(
                    h,
                    old.as_ptr() as *mut u8,
                    ulen(&old),
                    new.as_ptr() as *mut u8,
                    ulen(&new)
                )
            ))
        })
    }

    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: Arc<Zeroizing<Vec<u8>>>) -> MemberResult<()> {
        self.try_call(move |f| check(ck!(f, C_InitPIN(h, pin.as_ptr() as *mut u8, ulen(&pin)))))
    }
}

/// An operation's Init that travels with its first data call, in the same bounded call: one
/// thread hand-off for both instead of two. Only for a mechanism without parameter whose Init
/// this member accepted before for this key (`crate::ha::accepted`), so that an Init error
/// still reaches the application at its Init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub mechanism: CK_MECHANISM_TYPE,
    /// The key's handle on the member; 0 for a digest.
    pub key: CK_OBJECT_HANDLE,
}

/// Makes the Init of `begin`, if any, before a data call; a refusal is [`Fault::NotBegun`].
fn begin_first(
    f: Fns,
    kind: OpKind,
    h: CK_SESSION_HANDLE,
    begin: Option<Begin>,
) -> MemberResult<()> {
    let Some(b) = begin else {
        return Ok(());
    };
    let mut m = CK_MECHANISM {
        mechanism: b.mechanism,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    match init(f, kind, h, &mut m, b.key) {
        CKR_OK => Ok(()),
        rv => Err(Fault::NotBegun(rv)),
    }
}

/// The Init call of an operation kind.
fn init(
    f: Fns,
    kind: OpKind,
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    match kind {
        OpKind::Encrypt => ck!(f, C_EncryptInit(h, m, key)),
        OpKind::Decrypt => ck!(f, C_DecryptInit(h, m, key)),
        OpKind::Digest => ck!(f, C_DigestInit(h, m)),
        OpKind::Sign => ck!(f, C_SignInit(h, m, key)),
        OpKind::SignRecover => ck!(f, C_SignRecoverInit(h, m, key)),
        OpKind::Verify => ck!(f, C_VerifyInit(h, m, key)),
        OpKind::VerifyRecover => ck!(f, C_VerifyRecoverInit(h, m, key)),
    }
}

fn plain(rv: CK_RV) -> MemberResult<Output> {
    check(rv).map(|_| Output {
        rv,
        len: 0,
        data: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_clears_the_whole_capacity_not_only_the_length() {
        let mut v = vec![7u8; 48];
        v.truncate(5);
        wipe(&mut v);
        // SAFETY: every byte of the capacity was initialized (to 7) above.
        let all = unsafe { std::slice::from_raw_parts(v.as_ptr(), v.capacity()) };
        assert_eq!(all.len(), 48);
        assert!(all.iter().all(|&b| b == 0), "{all:?}");
    }

    #[test]
    fn an_absurd_capacity_sets_aside_only_what_the_call_can_produce() {
        let mut seen = 0;
        let out = with_out(Some(CK_ULONG::MAX), 1024, |_, len| {
            seen = unsafe { *len };
            unsafe { *len = 10 };
            CKR_OK
        })
        .unwrap();
        assert_eq!(
            seen, 1024,
            "the member was offered p11ha's room, not ULONG_MAX"
        );
        assert_eq!((out.len, out.data.map(|d| d.len())), (10, Some(10)));
    }

    #[test]
    fn an_output_bigger_than_the_room_but_within_the_caller_s_buffer_is_read_again() {
        let mut calls = 0;
        let out = with_out(Some(5000), 1024, |_, len| {
            calls += 1;
            // SAFETY: `len` points at with_out's local.
            unsafe {
                if *len < 3000 {
                    *len = 3000;
                    return CKR_BUFFER_TOO_SMALL;
                }
                *len = 3000;
            }
            CKR_OK
        })
        .unwrap();
        assert_eq!((calls, out.rv, out.len), (2, CKR_OK, 3000));
        // A caller buffer that is really too small gets the member's answer as it is.
        let out = with_out(Some(100), 1024, |_, len| {
            unsafe { *len = 3000 };
            CKR_BUFFER_TOO_SMALL
        })
        .unwrap();
        assert_eq!(
            (out.rv, out.len, out.data),
            (CKR_BUFFER_TOO_SMALL, 3000, None)
        );
    }

    #[test]
    fn a_member_claiming_absurd_counts_is_failed_not_believed() {
        let r: MemberResult<Vec<CK_SLOT_ID>> = list(|_, n| {
            unsafe { *n = 1 << 40 };
            CKR_OK
        });
        assert_eq!(r, Err(Fault::Rv(CKR_DEVICE_ERROR)));
        assert_eq!(buffer(usize::MAX), Err(Fault::Rv(CKR_HOST_MEMORY)));
    }
}
