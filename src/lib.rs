//! premium-operator: runs a platform's premium features as one self-healing system.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod core;
pub mod runtime;
