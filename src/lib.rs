//! p11ha: a high-availability PKCS#11 client.
//!
//! Data path, top to bottom: application → [`ffi`] (C ABI) → [`ha`] (pick member, call, fail over)
//! → [`provider`] (one loaded member module) → member token. [`config`], [`halog`] and [`rv`] are
//! leaves everyone may call and that call no one back; [`bounded`] and [`mechanism`] carry member
//! calls to other threads safely; [`confedit`] edits the configuration for the command line;
//! [`safe_file`] opens and locks the files p11ha writes (HA log, journals).

pub mod audit;
pub mod bounded;
pub mod cli;
pub mod confedit;
pub mod config;
pub mod diag;
pub mod ffi;
pub mod ha;
pub mod halog;
pub mod mechanism;
pub mod provider;
pub mod rv;
pub mod safe_file;
