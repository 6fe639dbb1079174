//! The HA core in safe Rust: groups of members, virtual sessions and objects, failover.

pub mod group;
pub mod journal;
pub mod library;
pub mod member;
pub mod mgmt;
pub mod objects;
pub mod session;
pub mod sync;

pub use library::Ha;
