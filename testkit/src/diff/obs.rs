//! What a call showed the application: one named value per return value, length, flag or
//! output. Two sides agree on a call when their observations are equal, field by field.

use std::fmt;

use cryptoki_sys::CK_RV;

use super::call::hex;
use super::names::rv_name;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Rv(CK_RV),
    U(u64),
    Bool(bool),
    Text(String),
    /// Bytes both tokens must produce alike.
    Bytes(Vec<u8>),
    /// An output compared by its length only (random by nature, or made from a key each token
    /// generated itself).
    Len(usize),
    /// A collection in which order does not matter (sorted).
    Set(Vec<String>),
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Rv(rv) => write!(f, "{}", rv_name(*rv)),
            Val::U(v) if *v > 0xffff => write!(f, "{v:#x}"),
            Val::U(v) => write!(f, "{v}"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Text(t) => write!(f, "{t:?}"),
            Val::Bytes(b) => write!(f, "{}", hex(b)),
            Val::Len(n) => write!(f, "({n} bytes)"),
            Val::Set(v) => {
                let mut v = v.clone();
                v.sort();
                write!(f, "{{{}}}", v.join(", "))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obs {
    pub field: String,
    pub val: Val,
}

impl Obs {
    pub fn new(field: impl Into<String>, val: Val) -> Self {
        let val = match val {
            Val::Set(mut v) => {
                v.sort();
                Val::Set(v)
            }
            v => v,
        };
        Obs {
            field: field.into(),
            val,
        }
    }
}
