//! The `verify` command: every chosen implementation against the CPU reference.

use crate::cli::VerifyArgs;

pub fn run(_args: &VerifyArgs) -> anyhow::Result<()> {
    anyhow::bail!("verify is not written yet")
}
