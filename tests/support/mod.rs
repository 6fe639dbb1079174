//! Shared fixtures for p11ha integration tests (`mod support;` from a test file): the test kit
//! (`testkit/`, crate `p11ha_testkit`), which the benchmark and the demo use too.
#![allow(unused_imports)]

pub use p11ha_testkit::*;
