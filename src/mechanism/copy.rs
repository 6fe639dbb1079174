//! The deep copy of a caller's mechanism parameter into owned blocks, following
//! [`layouts`](super::layouts), and its relay as a fresh, self-contained C structure for one
//! member call.

use super::layouts::{Field, Layout, Len, Used};
use super::table::{self, Param};
use cryptoki_sys::*;
use std::mem::{offset_of, size_of};
use zeroize::Zeroizing;

/// A parameter (block 0) or a buffer one of its pointers points to.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Block {
    /// The caller's bytes, with every followed pointer field set to 0: no caller address is
    /// kept. Zeroized on drop: parameters carry passwords and secrets (PBKDF2, PBE).
    pub bytes: Zeroizing<Vec<u8>>,
    /// (offset of a pointer field in `bytes`, index of the block it points to).
    pub links: Vec<(usize, usize)>,
}

/// Bounds on one copy, so that a caller's wild length cannot exhaust memory.
const MAX_BYTES: usize = 16 << 20;
const MAX_BLOCKS: usize = 4096;
const MAX_DEPTH: usize = 4;

/// Copies the parameter of `mechanism`; an empty vector when it has none.
///
/// # Safety
/// `p` must point to `len` readable bytes (or be NULL), and every pointer field the table
/// follows must point to as many bytes as its length says.
pub(super) unsafe fn copy(
    mechanism: CK_MECHANISM_TYPE,
    p: *const u8,
    len: CK_ULONG,
) -> Result<Vec<Block>, CK_RV> {
    let mut c = Copier::default();
    // SAFETY: forwarded from this function's own contract.
    unsafe { c.parameter(mechanism, p, len, 0) }?;
    Ok(c.blocks)
}

#[derive(Default)]
struct Copier {
    blocks: Vec<Block>,
    total: usize,
}

fn length(n: CK_ULONG) -> Result<usize, CK_RV> {
    usize::try_from(n).map_err(|_| CKR_MECHANISM_PARAM_INVALID)
}

fn ulong_at(bytes: &[u8], at: usize) -> Result<CK_ULONG, CK_RV> {
    let raw = bytes
        .get(at..at + size_of::<CK_ULONG>())
        .ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    Ok(CK_ULONG::from_ne_bytes(raw.try_into().expect("sized")))
}

fn ptr_at(bytes: &[u8], at: usize) -> Result<*const u8, CK_RV> {
    let raw = bytes
        .get(at..at + size_of::<usize>())
        .ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    Ok(usize::from_ne_bytes(raw.try_into().expect("sized")) as *const u8)
}

impl Copier {
    /// Copies one mechanism's parameter as the table says; returns the index of its block,
    /// None when it is empty.
    unsafe fn parameter(
        &mut self,
        mechanism: CK_MECHANISM_TYPE,
        p: *const u8,
        len: CK_ULONG,
        depth: usize,
    ) -> Result<Option<usize>, CK_RV> {
        let kind = table::param(mechanism);
        if matches!(kind, Param::Refused) {
            return Err(CKR_MECHANISM_INVALID);
        }
        let len = length(len)?;
        if p.is_null() || len == 0 {
            // The member judges a missing parameter; there is nothing to copy.
            return Ok(None);
        }
        if depth > MAX_DEPTH {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let candidates = match kind {
            // SAFETY: `p` and `len` are the caller's parameter (see `copy`).
            Param::Bytes => return unsafe { self.bytes(p, len) }.map(Some),
            Param::Struct(c) | Param::StructOrBytes(c) => c,
            Param::Refused | Param::Unknown => return Err(CKR_MECHANISM_PARAM_INVALID),
        };
        // SAFETY: as above.
        let idx = unsafe { self.bytes(p, len) }?;
        let bytes = &self.blocks[idx].bytes;
        match candidates
            .iter()
            .find(|l| l.size == len && l.fits.is_none_or(|fits| fits(bytes)))
        {
            // SAFETY: the struct's pointer fields are the caller's (see `copy`).
            Some(layout) => unsafe { self.fields(idx, 0, layout, depth) }?,
            None if matches!(kind, Param::StructOrBytes(_)) => {}
            None => return Err(CKR_MECHANISM_PARAM_INVALID),
        }
        Ok(Some(idx))
    }

    /// Copies `n` bytes at `p` into a new block.
    unsafe fn bytes(&mut self, p: *const u8, n: usize) -> Result<usize, CK_RV> {
        self.total = self.total.saturating_add(n);
        if self.total > MAX_BYTES || self.blocks.len() >= MAX_BLOCKS {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let bytes = if n == 0 {
            Vec::new()
        } else {
            // SAFETY: the caller of this fn vouches for `n` readable bytes at `p`.
            unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
        };
        self.blocks.push(Block {
            bytes: Zeroizing::new(bytes),
            links: Vec::new(),
        });
        Ok(self.blocks.len() - 1)
    }

    /// Makes the pointer field at `at` of block `from` point to block `to`.
    fn link(&mut self, from: usize, at: usize, to: usize) {
        let b = &mut self.blocks[from];
        b.bytes[at..at + size_of::<usize>()].fill(0);
        b.links.push((at, to));
    }

    /// Follows the fields of the struct `layout` that starts at `base` in block `idx`.
    unsafe fn fields(
        &mut self,
        idx: usize,
        base: usize,
        layout: &Layout,
        depth: usize,
    ) -> Result<(), CK_RV> {
        for field in layout.fields {
            let block = &self.blocks[idx].bytes;
            match *field {
                Field::Bytes { at, len } => {
                    let p = ptr_at(block, base + at)?;
                    let n = match len {
                        Len::Ulong(l) => length(ulong_at(block, base + l)?)?,
                        Len::Bits(l) => length(ulong_at(block, base + l)?.div_ceil(8))?,
                        Len::Fixed(n) => n,
                        Len::Pointed(l) => self.pointed_ulong(idx, base + l)?,
                        Len::CString if p.is_null() => 0,
                        // SAFETY: a non-NULL string field of the caller's struct (see `copy`).
                        Len::CString => unsafe { self.c_string_len(p) }?,
                    };
                    if p.is_null() {
                        if n != 0 {
                            return Err(CKR_MECHANISM_PARAM_INVALID);
                        }
                        continue;
                    }
                    // SAFETY: a pointer field and its length, from the caller (see `copy`).
                    let to = unsafe { self.bytes(p, n) }?;
                    self.link(idx, base + at, to);
                }
                Field::Struct { at, layout } => {
                    let p = ptr_at(block, base + at)?;
                    if !p.is_null() {
                        // SAFETY: a nested struct of the caller's (see `copy`).
                        let to = unsafe { self.bytes(p, layout.size) }?;
                        // SAFETY: as above.
                        unsafe { self.fields(to, 0, layout, depth + 1) }?;
                        self.link(idx, base + at, to);
                    }
                }
                Field::Array { at, count, layout } => {
                    let p = ptr_at(block, base + at)?;
                    let count = length(ulong_at(block, base + count)?)?;
                    if p.is_null() {
                        if count != 0 {
                            return Err(CKR_MECHANISM_PARAM_INVALID);
                        }
                        continue;
                    }
                    let n = count
                        .checked_mul(layout.size)
                        .ok_or(CKR_MECHANISM_PARAM_INVALID)?;
                    // SAFETY: an array of the caller's (see `copy`).
                    let to = unsafe { self.bytes(p, n) }?;
                    for i in 0..count {
                        // SAFETY: as above.
                        unsafe { self.fields(to, i * layout.size, layout, depth + 1) }?;
                    }
                    self.link(idx, base + at, to);
                }
                Field::Mechanism { at } => {
                    let p = ptr_at(block, base + at)?;
                    if !p.is_null() {
                        // SAFETY: a nested CK_MECHANISM of the caller's (see `copy`).
                        let to = unsafe { self.bytes(p, size_of::<CK_MECHANISM>()) }?;
                        let m = &self.blocks[to].bytes;
                        let (kind, param, param_len) = (
                            ulong_at(m, offset_of!(CK_MECHANISM, mechanism))?,
                            ptr_at(m, offset_of!(CK_MECHANISM, pParameter))?,
                            ulong_at(m, offset_of!(CK_MECHANISM, ulParameterLen))?,
                        );
                        let at_param = offset_of!(CK_MECHANISM, pParameter);
                        // A nested refusal is about the outer parameter.
                        // SAFETY: the nested mechanism's parameter, the caller's (see `copy`).
                        let inner = unsafe { self.parameter(kind, param, param_len, depth + 1) }
                            .map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
                        match inner {
                            Some(inner) => self.link(to, at_param, inner),
                            // An empty parameter is relayed as NULL with its length as given.
                            None => self.blocks[to].bytes[at_param..at_param + size_of::<usize>()]
                                .fill(0),
                        }
                        self.link(idx, base + at, to);
                    }
                }
                Field::Handle { at, used } => {
                    let in_use = match used {
                        Used::Always => true,
                        Used::IfTrue(flag) => {
                            *block.get(base + flag).ok_or(CKR_MECHANISM_PARAM_INVALID)? != CK_FALSE
                        }
                        Used::IfEquals(f, v) => ulong_at(block, base + f)? == v,
                    };
                    if in_use && ulong_at(block, base + at)? != CK_INVALID_HANDLE {
                        return Err(CKR_MECHANISM_PARAM_INVALID);
                    }
                }
                Field::Output { at } => {
                    if !ptr_at(block, base + at)?.is_null() {
                        return Err(CKR_MECHANISM_PARAM_INVALID);
                    }
                }
            }
        }
        Ok(())
    }

    /// The value of the CK_ULONG that the (already followed) pointer field at `at` of block
    /// `idx` points to: the copy, never the caller's memory read a second time.
    fn pointed_ulong(&self, idx: usize, at: usize) -> Result<usize, CK_RV> {
        let &(_, to) = self.blocks[idx]
            .links
            .iter()
            .find(|(a, _)| *a == at)
            .ok_or(CKR_MECHANISM_PARAM_INVALID)?;
        length(ulong_at(&self.blocks[to].bytes, 0)?)
    }

    /// The length of the NUL-terminated string at `p`, NUL included, within the bounds.
    unsafe fn c_string_len(&self, p: *const u8) -> Result<usize, CK_RV> {
        let room = MAX_BYTES.saturating_sub(self.total);
        (0..room)
            // SAFETY: the caller of this fn vouches for a NUL-terminated string at `p`, read
            // no further than its NUL.
            .find(|&i| unsafe { *p.add(i) } == 0)
            .map(|i| i + 1)
            .ok_or(CKR_MECHANISM_PARAM_INVALID)
    }
}

/// Lays `blocks` out for one call: one aligned, zeroized buffer per block, every link set to
/// the address of its target. Returns the buffers (block 0 first).
pub(super) fn relay(blocks: &[Block]) -> Vec<Zeroizing<Vec<u64>>> {
    // At least one word each, so that an empty buffer still has an address of its own (a
    // non-NULL pointer with length 0 stays non-NULL).
    let mut out: Vec<Zeroizing<Vec<u64>>> = blocks
        .iter()
        .map(|b| {
            let mut words = Zeroizing::new(vec![0u64; b.bytes.len().div_ceil(8).max(1)]);
            as_bytes(&mut words)[..b.bytes.len()].copy_from_slice(&b.bytes);
            words
        })
        .collect();
    let addresses: Vec<usize> = out.iter().map(|w| w.as_ptr() as usize).collect();
    for (b, words) in blocks.iter().zip(out.iter_mut()) {
        for &(at, to) in &b.links {
            as_bytes(words)[at..at + size_of::<usize>()]
                .copy_from_slice(&addresses[to].to_ne_bytes());
        }
    }
    out
}

fn as_bytes(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers the same memory.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
}
