//! Object synchronization (`HASynchronize.<label> = 1`): every token object of a group on every
//! member, with standard PKCS#11 only (docs/SYNC.md has the security model).
//!
//! - Public objects (certificates, data objects, public keys) are copied by value.
//! - Secret and private keys travel only wrapped, under cloning keys labelled [`policy::CLONING_LABEL`]
//!   that the SO provisions (`p11ha synchronize -group L -init-cloning-key`): with
//!   `CKM_AES_KEY_WRAP_PAD` under an AES-256 key identical on every member, or, where a member
//!   or its transport refuses that (p11-kit's RPC does), secret keys with RSA-OAEP under the
//!   receiving member's own key pair (`copy::Carrier`).
//! - A key the application asked to be non-extractable is held by the members as
//!   CKA_EXTRACTABLE = true with CKA_WRAP_WITH_TRUSTED = true ("p11ha-managed"): only trusted keys
//!   can wrap it. p11ha shows it to the application as CKA_EXTRACTABLE = false and refuses to
//!   wrap it ([`policy::is_managed`]).
//! - Destroys, attribute changes and creations made while a member was down are remembered
//!   (`ha::sync_state::SyncState`, in a journal shared by every process when there is one: `journal.rs`) and
//!   caught up with when it is reintroduced ([`catchup::reintroduce`]), before it takes work, or, when
//!   another process's changes are owed to a member that is up here, by [`catchup::catch_up`].

//!
//! - [`policy`]: how keys are held on members, and p11ha's own (cloning) objects.
//! - [`copy`]: one object from one member to another.
//! - [`catchup`]: a member that was down (or is owed another process's changes) catches up.
//! - [`synchronize`]: `p11ha synchronize`, everything everywhere.
//! - [`provision`]: the cloning keys.
//!
//! The group's state (enabled, the ledger of what is owed) is `ha::sync_state`.

pub mod catchup;
pub mod copy;
mod opened;
pub mod policy;
pub mod provision;
pub mod synchronize;
