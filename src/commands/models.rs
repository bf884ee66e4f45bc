//! `--list-models`: the `--model` presets and where their shapes come from.

use std::io::Write;

use anyhow::Context;

use paged_kv_bench::models;

pub fn list() -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", models::table().render_text()).context("writing to stdout")?;
    writeln!(
        stdout,
        "per GPU: heads divided by the tensor-parallel degree; keys and values are slices of \
         the fused QKV tensor (--qkv-fused with the query heads); explicit flags override a preset"
    )
    .context("writing to stdout")?;
    Ok(())
}
