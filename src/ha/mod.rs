//! The HA core in safe Rust: groups of members, virtual sessions and objects, failover.

pub(crate) mod credential;
pub mod discovery;
#[cfg(test)]
pub(crate) mod fake_member;
pub mod group;
pub mod journal;
pub mod library;
pub mod member;
pub mod mgmt;
pub mod objects;
pub mod recovery;
pub mod runtime;
pub mod session;
pub mod sync;
pub mod sync_state;

pub use group::Pin;
pub use library::Ha;
pub use runtime::Runtime;
