//! The C ABI and nothing else. `entry` is the one way in (panic guard, initialization check,
//! Result → CK_RV), `args` the one place for pointer checks and length rules, `table` the
//! function tables and the exported symbols, `functions` the PKCS#11 calls, `ca` the status
//! calls, `init` C_Initialize/C_Finalize's work.

#![allow(non_snake_case, non_camel_case_types)]

pub(crate) mod args;
pub mod ca;
mod entry;
mod functions;
mod init;
pub mod sync_api;
pub mod table;

pub use init::{set_tool_mode, ToolMode};
