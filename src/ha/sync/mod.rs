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
//! - Destroys, attribute changes and creations made while a member was down are written as
//!   records on every live member ([`records`], [`owed`]) before the call returns, and settled
//!   by any process that sees the member ([`catchup`]): at its reintroduction, before it takes
//!   work, and for members that are up in every management round, at C_Login and in
//!   `p11ha synchronize`.

//!
//! - [`policy`]: how keys are held on members, and p11ha's own (cloning) objects.
//! - [`copy`]: one object from one member to another.
//! - [`records`]: what a member is owed, as hidden token objects on the members.
//! - [`owed`]: writing records when a change happens; reading them back from every member.
//! - [`catchup`]: a member that was down (or is owed another process's changes) catches up.
//! - [`synchronize`]: `p11ha synchronize`, everything everywhere.
//! - [`provision`]: the cloning keys, for a new group or for members added later.
//! - [`check`]: `p11ha synchronize -check`, which key classes can travel between which members.
//!
//! The group's state in this process (enabled, records no member took yet) is `ha::sync_state`.

pub mod catchup;
pub mod check;
pub mod copy;
mod entropy;
mod opened;
pub mod owed;
pub mod policy;
pub mod provision;
pub mod records;
pub mod synchronize;
