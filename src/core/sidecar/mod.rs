//! The Envoy sidecar: its configuration, rendered by a pure function.

pub mod envoy;

pub use envoy::*;
