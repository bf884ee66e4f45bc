//! The subcommands' glue: flags in, library calls, text out.

pub mod bench;
mod output;
pub mod verify;
