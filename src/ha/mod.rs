//! HA core.
