//! p11ha: a high-availability PKCS#11 client.
//!
//! Data path, top to bottom: application → [`ffi`] (C ABI) → [`ha`] (pick member, call, fail over)
//! → [`provider`] (one loaded member module) → member token. [`config`], [`halog`] and [`rv`] are
//! leaves everyone may call and that call no one back; [`bounded`] and [`mechanism`] carry member
//! calls to other threads safely; [`confedit`] edits the configuration for the command line;
//! [`safe_file`] opens and locks the files p11ha writes (HA log, journals).
//!
//! The rlib serves this package's binary, tests and test kit only; modules they do not need are
//! `pub(crate)`. Its documentation is for the developers of p11ha and is built with
//! `--document-private-items` (scripts/test.sh), where links into private modules resolve.

#![allow(rustdoc::private_intra_doc_links)]

pub mod audit;
pub mod bounded;
pub mod cli;
pub mod confedit;
pub mod config;
pub(crate) mod diag;
pub mod ffi;
pub mod ha;
pub mod halog;
pub(crate) mod mechanism;
pub(crate) mod provider;
pub mod rv;
pub(crate) mod safe_file;
