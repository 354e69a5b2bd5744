//! Command-line subcommands other than `run`.

pub mod crd;
