//! The member-module boundary: one configured module (`HAProviders.ProviderNN`), its
//! initialized instances and the calls p11ha makes into them.
//!
//! - [`load`]: loading the library and its environment, [`Provider::connect`].
//! - [`instance`]: one initialized instance, the gate that keeps C_Finalize away from calls
//!   inside it, and the one way in (`Instance::call`: a pool thread, ReceiveTimeout).
//! - [`calls`]: the PKCS#11 calls themselves, on owned and bounded data.
//! - [`table`]: a module's function table and the macro that calls into it.
//! - [`outcome`]: what a call can come back with ([`Fault`]) and what that means for HA: the
//!   one place that tells a member's failure from a caller's error.
//!
//! A provider gives a fresh instance per connect: p11-kit-client makes a new, independent
//! remote instance per `C_GetFunctionList`, and a dead one never reconnects, so recovery makes
//! a new instance. Libraries are never unloaded: a hung call may still be running inside one.

pub mod calls;
pub mod instance;
pub mod load;
pub mod outcome;
pub mod table;

pub use calls::{AttributeValues, Begin, Data, Input, OpKind, Output, Secret};
pub use instance::Instance;
pub use load::{Connected, Initializing, LoadError, Provider, ENV_GRACE};
pub use outcome::{is_deactivation, Fault, MemberResult};

pub(crate) use load::after_fork_in_child;
