//! p11ha's test kit: real member tokens for the integration tests, the benchmark and the demo.
//!
//! One set-up, used three ways: the integration tests (`mod support;`, whose
//! `tests/support/mod.rs` re-exports this crate), `p11ha-bench` (this crate's binary) and the
//! failover demo (this crate's example). It is a workspace member of its own so that the
//! library's `[dependencies]` stay what `libp11ha.so` needs: nothing here is linked into it.
//!
//! - [`provision`]: SoftHSM tokens with identical keys (serial parsing, the secret-key import).
//! - [`cluster`]: those tokens behind `p11-kit server` processes in their own process groups
//!   (kill / restart / stop / cont) and the p11ha configuration file and HA log.
//! - [`member`]: direct (non-HA) cryptoki sessions to one member, for cross-checks.
//! - [`raw`]: a PKCS#11 client over the raw function table, without per-call allocation.
//! - [`status`]: p11ha's status API (`p11ha_group_status`) read into Rust values.
//! - [`diff`]: the differential tester (a seeded call sequence run on SoftHSM and on p11ha).
//! - [`clients`]: bounded commands: the real-client scripts of `tests/clients/`, the C client.
//! - [`load`]: a signing load whose signatures are counted as they happen (failover tests).
//! - [`proc`]: bounded waits, process-group helpers, locating `libp11ha.so`.
//! - [`setup`]: the configuration space failover tests run over (p11-kit or direct members,
//!   `HAOnly` 1 or 0), with member death and hangs that mean the same in each.
//!
//! Everything cleans up after itself: [`Cluster`]'s Drop kills every process group it started
//! (by PGID, never by name) and removes its temporary directory, also when the caller panics.

use std::path::{Path, PathBuf};

pub mod clients;
pub mod cluster;
pub mod diff;
pub mod load;
pub mod member;
pub mod proc;
pub mod provision;
pub mod raw;
pub mod setup;
pub mod status;

pub use clients::{
    build_c_client, build_c_program, build_fault_module, c_client_cmd, c_client_counts, run_client,
    run_client_env, run_cmd, run_cmd_bg, ClientRun,
};
pub use cluster::{Cluster, ConfigOpts};
pub use member::{data_object, with_env_lock, MemberClient};
pub use proc::{live_pids_in_group, p11ha_lib, pid_alive, wait_until};
pub use provision::{KeyMaterial, Member};
pub use setup::{Group, Setup};
pub use status::{MemberState, StatusApi};

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

/// CKA_ID (one byte) of the provisioned RSA key pair and certificate, label `rsa`.
pub const RSA_ID: u8 = 1;
/// CKA_ID of the provisioned EC P-256 key pair, label `ec`.
pub const EC_ID: u8 = 2;
/// CKA_ID of the provisioned AES-256 key, label `aes`.
pub const AES_ID: u8 = 3;
/// CKA_ID of the provisioned HMAC (generic secret) key, label `hmac`.
pub const HMAC_ID: u8 = 4;

/// The p11ha repository (the client scripts in `tests/clients/`, the C sources in `tests/c/`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lives inside the p11ha repository")
        .to_path_buf()
}
