//! The calls about objects: creating and copying them, their attributes, and searches. Reads
//! of attributes p11ha makes for itself (identities, copies between members) take two calls in
//! all where the module follows the standard: over p11-kit each call is a round trip.

use super::{buffer, ulen, ulen_of, usize_of, AttributeValues};
use super::{ATTRIBUTE_ROOM, MAX_FOUND, MAX_READ_ATTRIBUTE};
use crate::mechanism::{raw_template, Attr};
use crate::provider::instance::Instance;
use crate::provider::outcome::{check, Fault, MemberResult};
use crate::provider::table::{ck, Fns};
use cryptoki_sys::*;

impl Instance {
    pub fn create_object(
        &self,
        h: CK_SESSION_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.try_call(move |f| {
            let mut raw = raw_template(&t);
            let mut o = 0;
            check(ck!(
                f,
                C_CreateObject(h, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            ))
            .map(|_| o)
        })
    }

    /// C_CreateObject for a template holding secret values: the template is zeroized after
    /// the call (the group cloning key's value, see `ha::sync::init_cloning_key`).
    pub fn create_object_zeroized(
        &self,
        h: CK_SESSION_HANDLE,
        mut t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.try_call(move |f| {
            let mut raw = raw_template(&t);
            let mut o = 0;
            let rv = ck!(
                f,
                C_CreateObject(h, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            );
            drop(raw);
            for a in t.iter_mut() {
                zeroize::Zeroize::zeroize(&mut a.value);
            }
            check(rv).map(|_| o)
        })
    }

    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<CK_OBJECT_HANDLE> {
        self.try_call(move |f| {
            let mut raw = raw_template(&t);
            let mut o = 0;
            check(ck!(
                f,
                C_CopyObject(h, obj, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut o)
            ))
            .map(|_| o)
        })
    }

    /// C_GetAttributeValue with the caller's per-attribute capacities (`None` = length query).
    /// Returns the call's CK_RV and, per attribute, the reported length and the value if copied.
    /// A connection-class CK_RV is a [`Fault`]; the caller's errors (sensitive, invalid type,
    /// buffer too small) come back with the values that could be read.
    pub fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        query: Vec<(CK_ATTRIBUTE_TYPE, Option<CK_ULONG>)>,
    ) -> MemberResult<AttributeValues> {
        self.try_call(move |f| {
            let room: Vec<Option<CK_ULONG>> = query
                .iter()
                .map(|(_, cap)| cap.map(|n| n.min(ATTRIBUTE_ROOM as CK_ULONG)))
                .collect();
            let (rv, out) = get_attributes_once(f, h, obj, &query, &room)?;
            let shortened = |out: &[(CK_ULONG, Option<Vec<u8>>)]| {
                (0..query.len())
                    .any(|i| room[i] != query[i].1 && out[i].0 == CK_UNAVAILABLE_INFORMATION)
            };
            if rv != CKR_BUFFER_TOO_SMALL || !shortened(&out) {
                return Ok((rv, out));
            }
            // p11ha gave some attribute less room than the caller offered: ask the real sizes,
            // then read with exactly as much room as the caller offered or the value needs.
            let lengths: Vec<_> = query.iter().map(|(t, _)| (*t, None)).collect();
            let (_, sizes) = get_attributes_once(f, h, obj, &lengths, &vec![None; query.len()])?;
            let room: Vec<Option<CK_ULONG>> = query
                .iter()
                .zip(&sizes)
                .map(|((_, cap), (len, _))| match cap {
                    Some(cap) if *len != CK_UNAVAILABLE_INFORMATION => Some((*cap).min(*len)),
                    other => other.map(|c| c.min(ATTRIBUTE_ROOM as CK_ULONG)),
                })
                .collect();
            get_attributes_once(f, h, obj, &query, &room)
        })
    }

    /// Reads attributes whole (two-phase); unreadable ones are `None` (also all of them when
    /// the object is gone: the member's answer to the caller's request comes later).
    pub fn read_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
    ) -> MemberResult<Vec<Option<Vec<u8>>>> {
        self.read_attributes_as(h, obj, kinds, false)
    }

    /// [`Instance::read_attributes`] of an object that must exist: one that is gone
    /// (CKR_OBJECT_HANDLE_INVALID, also when another process destroys it between two of these
    /// one-attribute calls) is an error, never a partial answer. Half an identity would make
    /// it a twin of any object of its class.
    pub fn read_existing_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
    ) -> MemberResult<Vec<Option<Vec<u8>>>> {
        self.read_attributes_as(h, obj, kinds, true)
    }

    fn read_attributes_as(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
        must_exist: bool,
    ) -> MemberResult<Vec<Option<Vec<u8>>>> {
        self.try_call(
            move |f| match read_together(f, h, obj, &kinds, must_exist)? {
                Some(values) => Ok(values),
                None => read_one_by_one(f, h, obj, &kinds, must_exist),
            },
        )
    }

    pub fn set_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<()> {
        self.try_call(move |f| {
            let mut raw = raw_template(&t);
            check(ck!(
                f,
                C_SetAttributeValue(h, obj, raw.as_mut_ptr(), raw.len() as CK_ULONG)
            ))
        })
    }

    /// FindObjectsInit + FindObjects until done + FindObjectsFinal, as one bounded call.
    pub fn find_all(
        &self,
        h: CK_SESSION_HANDLE,
        t: Vec<Attr>,
    ) -> MemberResult<Vec<CK_OBJECT_HANDLE>> {
        self.try_call(move |f| {
            let mut raw = raw_template(&t);
            let tp = if raw.is_empty() {
                std::ptr::null_mut()
            } else {
                raw.as_mut_ptr()
            };
            check(ck!(f, C_FindObjectsInit(h, tp, raw.len() as CK_ULONG)))?;
            let mut found = Vec::new();
            let mut page = [0 as CK_OBJECT_HANDLE; 64];
            let rv = loop {
                let mut n: CK_ULONG = 0;
                let rv = ck!(
                    f,
                    C_FindObjects(h, page.as_mut_ptr(), page.len() as CK_ULONG, &mut n)
                );
                if rv != CKR_OK {
                    break rv;
                }
                let n = usize_of(n).min(page.len());
                found.extend_from_slice(&page[..n]);
                if n == 0 {
                    break CKR_OK;
                }
                if found.len() > MAX_FOUND {
                    break CKR_DEVICE_ERROR;
                }
            };
            let final_rv = ck!(f, C_FindObjectsFinal(h));
            check(rv)?;
            check(final_rv)?;
            Ok(found)
        })
    }
}

/// A read that must fail: the member is gone, or (`must_exist`) the object is.
fn read_fails(rv: CK_RV, must_exist: bool) -> bool {
    Fault::Rv(rv).fails_member() || (must_exist && rv == CKR_OBJECT_HANDLE_INVALID)
}

/// Every attribute in two C_GetAttributeValue calls (their sizes, then the values), as the
/// standard allows: over p11-kit each call is a round trip, and p11ha reads 9 to 20 attributes
/// per object it identifies or copies. Unavailable attributes are `None`. `Ok(None)` when the
/// module answered something the standard does not give for such a read, or the values
/// changed size in between: the caller reads one attribute at a time instead.
fn read_together(
    f: Fns,
    h: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    kinds: &[CK_ATTRIBUTE_TYPE],
    must_exist: bool,
) -> MemberResult<Option<Vec<Option<Vec<u8>>>>> {
    let mut sizes: Vec<CK_ATTRIBUTE> = kinds
        .iter()
        .map(|&t| CK_ATTRIBUTE {
            type_: t,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        })
        .collect();
    let rv = ck!(
        f,
        C_GetAttributeValue(h, obj, sizes.as_mut_ptr(), ulen_of(&sizes))
    );
    if read_fails(rv, must_exist) {
        return Err(Fault::Rv(rv));
    }
    if !matches!(
        rv,
        CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID
    ) {
        return Ok(None);
    }
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(kinds.len());
    for a in &sizes {
        let n = usize_of(a.ulValueLen);
        out.push(
            if a.ulValueLen == CK_UNAVAILABLE_INFORMATION || n > MAX_READ_ATTRIBUTE {
                None
            } else {
                Some(buffer(n)?)
            },
        );
    }
    let mut values: Vec<CK_ATTRIBUTE> = kinds
        .iter()
        .zip(out.iter_mut())
        .filter_map(|(&t, v)| {
            v.as_mut().map(|b| CK_ATTRIBUTE {
                type_: t,
                pValue: b.as_mut_ptr() as *mut _,
                ulValueLen: b.len() as CK_ULONG,
            })
        })
        .collect();
    if values.is_empty() {
        return Ok(Some(out));
    }
    let rv = ck!(
        f,
        C_GetAttributeValue(h, obj, values.as_mut_ptr(), ulen_of(&values))
    );
    if read_fails(rv, must_exist) {
        return Err(Fault::Rv(rv));
    }
    if rv != CKR_OK {
        return Ok(None);
    }
    for (v, a) in out.iter_mut().flatten().zip(&values) {
        v.truncate(usize_of(a.ulValueLen));
    }
    Ok(Some(out))
}

/// One C_GetAttributeValue per attribute and phase: for modules that answer a read of several
/// attributes otherwise than the standard says.
fn read_one_by_one(
    f: Fns,
    h: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    kinds: &[CK_ATTRIBUTE_TYPE],
    must_exist: bool,
) -> MemberResult<Vec<Option<Vec<u8>>>> {
    let mut out = Vec::with_capacity(kinds.len());
    for &t in kinds {
        let mut a = CK_ATTRIBUTE {
            type_: t,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        };
        let rv = ck!(f, C_GetAttributeValue(h, obj, &mut a, 1));
        if read_fails(rv, must_exist) {
            return Err(Fault::Rv(rv));
        }
        let n = usize_of(a.ulValueLen);
        if rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION || n > MAX_READ_ATTRIBUTE {
            out.push(None);
            continue;
        }
        let mut buf = buffer(n)?;
        a.pValue = buf.as_mut_ptr() as *mut _;
        let rv = ck!(f, C_GetAttributeValue(h, obj, &mut a, 1));
        if read_fails(rv, must_exist) {
            return Err(Fault::Rv(rv));
        }
        buf.truncate(usize_of(a.ulValueLen).min(n));
        out.push((rv == CKR_OK).then_some(buf));
    }
    Ok(out)
}

/// One C_GetAttributeValue with `room[i]` bytes for attribute i (`None`: length query).
fn get_attributes_once(
    f: Fns,
    h: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    query: &[(CK_ATTRIBUTE_TYPE, Option<CK_ULONG>)],
    room: &[Option<CK_ULONG>],
) -> MemberResult<AttributeValues> {
    let mut bufs: Vec<Option<Vec<u8>>> = room
        .iter()
        .map(|r| r.map(|n| buffer(usize_of(n))).transpose())
        .collect::<MemberResult<_>>()?;
    let mut raw: Vec<CK_ATTRIBUTE> = query
        .iter()
        .zip(bufs.iter_mut())
        .map(|((t, _), b)| CK_ATTRIBUTE {
            type_: *t,
            pValue: b
                .as_mut()
                .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr() as *mut _),
            ulValueLen: b.as_ref().map_or(0, |b| ulen(b)),
        })
        .collect();
    let rv = ck!(
        f,
        C_GetAttributeValue(h, obj, raw.as_mut_ptr(), raw.len() as CK_ULONG)
    );
    if Fault::Rv(rv).fails_member() {
        return Err(Fault::Rv(rv));
    }
    let out = raw
        .iter()
        .zip(bufs)
        .map(|(a, b)| {
            let v = b
                .filter(|_| a.ulValueLen != CK_UNAVAILABLE_INFORMATION)
                .map(|mut b| {
                    b.truncate(usize_of(a.ulValueLen).min(b.len()));
                    b
                });
            (a.ulValueLen, v)
        })
        .collect();
    Ok((rv, out))
}
