//! Shared fixtures for p11ha integration tests (`mod support;` from a test file).
//!
//! - [`cluster`]: SoftHSM member tokens with identical keys, `p11-kit server` processes in their
//!   own process groups (kill / restart / stop / cont), the p11ha configuration file, the HA log.
//! - [`member`]: direct (non-HA) cryptoki sessions to one member, for cross-checks.
//! - [`clients`]: the real-client scripts of `tests/clients/` and the C client of `tests/c/`.
//! - [`proc`]: bounded waits, process-group helpers, locating `libp11ha.so`.
//!
//! Everything cleans up after itself: `Cluster`'s Drop kills every process group it started
//! (by PGID, never by name) and removes its temporary directory, also when a test panics.
#![allow(dead_code)]

pub mod clients;
pub mod cluster;
pub mod member;
pub mod proc;

#[allow(unused_imports)]
pub use clients::{
    build_c_client, c_client_cmd, c_client_counts, run_client, run_client_env, run_cmd, run_cmd_bg,
    ClientRun,
};
#[allow(unused_imports)]
pub use cluster::{Cluster, ConfigOpts, KeyMaterial, Member};
#[allow(unused_imports)]
pub use member::{with_env_lock, MemberClient};
#[allow(unused_imports)]
pub use proc::{live_pids_in_group, p11ha_lib, pid_alive, wait_until};

/// User PIN of every member token (and so of the HA group).
pub const USER_PIN: &str = "1234";
/// Security officer PIN of every member token.
pub const SO_PIN: &str = "12345678";
/// The SoftHSM module as installed by Debian's `softhsm2` package.
pub const SOFTHSM_LIB: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The p11-kit remote client module (`p11-kit-modules`).
pub const P11KIT_CLIENT_LIB: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
/// Label of the HA group written by [`Cluster::write_config`] unless overridden.
pub const GROUP_LABEL: &str = "hagroup";

/// CKA_ID / label of the provisioned keys.
pub const RSA_ID: u8 = 1;
pub const EC_ID: u8 = 2;
pub const AES_ID: u8 = 3;
pub const HMAC_ID: u8 = 4;
