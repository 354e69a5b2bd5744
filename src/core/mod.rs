//! The pure decision core: no client, no I/O. Every function here is deterministic and tested
//! beside its code.

pub mod budget;
pub mod build;
pub mod fair;
pub mod graph;
pub mod plan;
pub mod policy;
pub mod settings;
pub mod sidecar;
pub mod signal;
pub mod status;
