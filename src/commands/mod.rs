//! The subcommands' glue: flags in, library calls, text out.

pub mod bench;
pub mod models;
mod output;
pub mod verify;
