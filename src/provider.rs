//! Member module instance.
