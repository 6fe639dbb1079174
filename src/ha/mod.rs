//! The HA core in safe Rust: groups of members, virtual sessions and objects, failover.

pub(crate) mod accepted;
pub(crate) mod credential;
pub(crate) mod discovery;
#[cfg(test)]
pub(crate) mod fake_member;
pub(crate) mod group;
pub mod journal;
pub(crate) mod library;
pub(crate) mod member;
pub(crate) mod mgmt;
pub(crate) mod objects;
pub(crate) mod recovery;
pub(crate) mod runtime;
pub(crate) mod session;
pub mod sync;
pub(crate) mod sync_state;

pub use group::Pin;
pub use library::Ha;
pub use runtime::Runtime;
