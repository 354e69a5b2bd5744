//! Command-line subcommands other than `run`.

pub mod check;
pub mod crd;
pub mod docs;
pub mod graph;
pub mod manifest;
pub mod output;
pub mod plugin;
pub mod schema;
pub mod suggest;
