//! Issue 15: why the WGSL path slows down with large caches. A raw Vulkan probe (ash, no wgpu
//! in the way) that writes the benchmark's scatter pattern (one contiguous row per token, at a
//! pseudo-random distinct slot, keys and values into two caches) under several allocation
//! strategies, next to a plain copy, plus the small-call floor of a dispatch chain in raw
//! Vulkan and in wgpu.
//!
//! Experiments (tables on stdout, CSV lines to `--out`):
//! 1. the device: driver, allocation and binding limits, heaps and types, extensions;
//! 2. the scatter under strategies a (wgpu's: buffer + memory per window), b (4 GiB buffers
//!    with 2 GiB windows), w (whole 4 GiB bindings, if the range allows), c (one memory per
//!    cache), d (dedicated allocations), f / f0 (memory priority 1.0 / none, on a device with
//!    `VK_EXT_pageable_device_local_memory`); the rate against the copy of a 4 GiB buffer pair;
//! 3. the floor: chains of one-workgroup dispatches, empty or writing 16 bytes, with and
//!    without barriers, raw and through wgpu.
//!
//! Strategy e (one buffer addressed by a 64-bit device address) is not here: naga cannot emit
//! PhysicalStorageBuffer64 from WGSL, and hand-assembling SPIR-V was out of this probe's scope.
//!
//! On lavapipe (small): `cargo run --release --example vulkan_probe -- --row-bytes 4096
//! --cache-mib 64,256 --tokens 64,256 --window-mib 32 --big-mib 64 --copy-mib 64`.

mod floor;
mod scatter;
mod shaders;
mod vk;
mod wgpu_dedicated;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use scatter::{Geometry, Inputs, Row, Strategy};
use std::io::Write as _;
use std::process::ExitCode;

const MIB: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    about = "Raw Vulkan allocation probe for the WGSL path's large-cache slowdown (issue 15)"
)]
struct Args {
    /// Bytes per token row (128 heads x 128 x 2 bytes = 32768); a multiple of 16.
    #[arg(long, default_value_t = 32768)]
    row_bytes: u64,
    /// Cache sizes per cache, MiB (keys and values each get one).
    #[arg(long, value_delimiter = ',', default_value = "2048,8192,32768")]
    cache_mib: Vec<u64>,
    /// Tokens per call.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,8192,65536")]
    tokens: Vec<u32>,
    /// Strategies: a, b, w, c, d, f, f0 (f and f0 need VK_EXT_memory_priority and
    /// VK_EXT_pageable_device_local_memory; they are skipped, with a note, where missing).
    #[arg(long, value_delimiter = ',', default_value = "a,b,w,c,d,f,f0")]
    strategies: Vec<String>,
    /// Window (binding) size, MiB; default: the largest whole number of 16-row blocks of at
    /// most maxStorageBufferRange, two of which fit one big buffer.
    #[arg(long)]
    window_mib: Option<u64>,
    /// Big buffer size for b and w, MiB; default: maxMemoryAllocationSize (and maxBufferSize)
    /// rounded down to 2 MiB.
    #[arg(long)]
    big_mib: Option<u64>,
    /// Copy reference size (each of the two buffers), MiB; default: the big buffer size.
    #[arg(long)]
    copy_mib: Option<u64>,
    /// Timed calls per configuration (at least 50 for calls up to 4096 tokens).
    #[arg(long, default_value_t = 20)]
    calls: u32,
    /// Verify the rows of calls of up to this many tokens (random rows, poisoned caches).
    #[arg(long, default_value_t = 1024)]
    check_tokens: u32,
    /// Dispatch chain lengths of the floor experiment.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    floor_n: Vec<u32>,
    /// Chains per floor measurement (median kept).
    #[arg(long, default_value_t = 20)]
    floor_reps: u32,
    /// Scatter calls per timestamp: 1 times each call on its own; a chain (say 100) times
    /// dependent calls back to back, as the benchmark's wgpu passes do (small calls).
    #[arg(long, default_value_t = 1)]
    chain: u32,
    /// Skip experiment 2 (scatter), 3 (floor) or the wgpu floor.
    #[arg(long)]
    no_scatter: bool,
    #[arg(long)]
    no_floor: bool,
    #[arg(long)]
    no_wgpu: bool,
    /// Vulkan physical device index (default: first discrete GPU, else device 0).
    #[arg(long)]
    device: Option<usize>,
    /// Memory type index for the caches (default: the first DEVICE_LOCAL type allowed).
    #[arg(long)]
    memory_type: Option<u32>,
    /// Run only experiment 4: the scatter through wgpu with plain and dedicated cache windows.
    #[arg(long)]
    wgpu_scatter: bool,
    /// CSV output file (one line per measurement).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// The rows of a small-call floor table (raw Vulkan or wgpu), on stdout and in the CSV.
fn floor_rows(rows: &[floor::FloorRow], csv: &mut Csv) {
    for r in rows {
        println!(
            "| {} | {} | {:.3} | {:.4} |",
            r.variant, r.n, r.chain_us, r.per_dispatch_us
        );
        csv.line(&format!(
            "floor,{},{},{},{:.4},{:.5},,,",
            r.api,
            r.variant.replace(',', ";"),
            r.n,
            r.chain_us,
            r.per_dispatch_us
        ));
    }
}

struct Csv(Option<std::fs::File>);

impl Csv {
    fn line(&mut self, s: &str) {
        if let Some(f) = &mut self.0 {
            let _ = writeln!(f, "{s}");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn geometry(args: &Args, f: &vk::Facts) -> Result<Geometry> {
    if args.row_bytes == 0 || !args.row_bytes.is_multiple_of(16) {
        bail!("--row-bytes must be a positive multiple of 16");
    }
    let block = 16 * args.row_bytes;
    let alloc_cap = f
        .max_memory_allocation_size
        .min(f.max_buffer_size.unwrap_or(u64::MAX));
    let big = match args.big_mib {
        Some(m) => m * MIB,
        None => alloc_cap / (2 * MIB) * (2 * MIB),
    };
    let window = match args.window_mib {
        Some(m) => m * MIB,
        None => (f.max_storage_buffer_range as u64).min(big / 2) / block * block,
    };
    if window == 0 || window % block != 0 || window > f.max_storage_buffer_range as u64 {
        bail!("window of {window} bytes: not whole 16-row blocks, or above maxStorageBufferRange");
    }
    if window % f.min_storage_offset_alignment != 0 {
        bail!("window of {window} bytes is not a multiple of minStorageBufferOffsetAlignment");
    }
    Ok(Geometry {
        row: args.row_bytes,
        window,
        big,
        memory_type: args.memory_type,
        chain: args.chain,
    })
}

fn print_row(csv: &mut Csv, r: &Row, copy_gbs: f64) {
    let pct = 100.0 * r.gbs / copy_gbs;
    println!(
        "| {:<44} | {:>7} | {:>6} | {:>10.2} | {:>10.2} | {:>8.1} | {:>6.1} | {} |",
        r.strategy, r.cache_mib, r.tokens, r.median_us, r.min_us, r.gbs, pct, r.note
    );
    csv.line(&format!(
        "scatter,{},{},{},{:.3},{:.3},{:.2},{:.2},{}",
        r.strategy.split(':').next().unwrap_or("?"),
        r.cache_mib,
        r.tokens,
        r.median_us,
        r.min_us,
        r.gbs,
        pct,
        r.note.replace(',', ";")
    ));
    let _ = std::io::stdout().flush();
}

fn run(args: &Args) -> Result<()> {
    let strategies: Vec<Strategy> = args
        .strategies
        .iter()
        .map(|s| Strategy::parse(s))
        .collect::<Result<_>>()?;
    let mut csv = Csv(match &args.out {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    });
    csv.line("experiment,strategy_or_api,cache_mib_or_variant,tokens_or_n,median_us,min_us_or_per_dispatch_us,gbs,pct_copy,note");

    if args.wgpu_scatter {
        let window = args.window_mib.map_or(2047 * MIB, |m| m * MIB);
        let (name, rows) = wgpu_dedicated::run(
            args.row_bytes,
            window,
            &args.cache_mib,
            &args.tokens,
            args.calls.max(3),
            args.check_tokens,
        )?;
        println!("## 4. Scatter through wgpu ({name}), cache windows plain or dedicated\n");
        println!(
            "| windows | cache MiB | T | median us | GB/s | checked |\n|---|---|---|---|---|---|"
        );
        for r in rows {
            let kind = if r.dedicated {
                "dedicated (create_buffer_from_hal)"
            } else {
                "wgpu create_buffer"
            };
            println!(
                "| {kind} | {} | {} | {:.2} | {:.1} | {} |",
                r.cache_mib, r.tokens, r.median_us, r.gbs, r.checked
            );
            csv.line(&format!(
                "wgpu_scatter,{},{},{},{:.3},,{:.2},,",
                if r.dedicated { "dedicated" } else { "plain" },
                r.cache_mib,
                r.tokens,
                r.median_us,
                r.gbs
            ));
        }
        return Ok(());
    }
    let base = vk::Ctx::new(args.device, vk::DeviceOptions::default())?;
    println!("## 1. Device\n\n{}", vk::describe(&base.facts));
    let g = geometry(args, &base.facts)?;
    println!(
        "geometry: row {} B, window {} MiB ({} rows), big buffer {} MiB\n",
        g.row,
        g.window / MIB,
        g.window / g.row,
        g.big / MIB
    );
    csv.line(&format!(
        "device,{},,,,,,,{}",
        base.facts.name.replace(',', ";"),
        base.facts.driver.replace(',', ";")
    ));

    if !args.no_floor {
        println!("## 3a. Small-call floor, raw Vulkan (chain of N 1-workgroup dispatches between two timestamps)\n");
        println!("| variant | N | chain us | per dispatch us |\n|---|---|---|---|");
        floor_rows(
            &floor::raw(&base, &args.floor_n, args.floor_reps)?,
            &mut csv,
        );
        println!();
    }

    if args.no_scatter {
        drop(base);
        return wgpu_floor(args, &mut csv);
    }
    let copy_g = Geometry {
        big: args.copy_mib.map_or(g.big, |m| m * MIB),
        ..g
    };
    let copy = scatter::copy_reference(&base, &copy_g, args.calls.max(10))?;
    println!(
        "## 2. Scatter\n\ncopy reference: 2 x {} MiB, {:.2} us median, {:.1} GB/s (read + write)\n",
        copy.cache_mib, copy.median_us, copy.gbs
    );
    csv.line(&format!(
        "copy,copy,{},0,{:.3},{:.3},{:.2},100,{}",
        copy.cache_mib, copy.median_us, copy.min_us, copy.gbs, copy.note
    ));
    println!("| strategy | cache MiB | T | median us | min us | GB/s | % copy | note |\n|---|---|---|---|---|---|---|---|");
    let max_t = *args.tokens.iter().max().unwrap_or(&1);
    let check = args.check_tokens.min(max_t);

    let mut device_runs: Vec<(vk::DeviceOptions, Vec<Strategy>)> = vec![(
        vk::DeviceOptions::default(),
        strategies
            .iter()
            .copied()
            .filter(|s| !matches!(s, Strategy::F | Strategy::F0))
            .collect(),
    )];
    let extra: Vec<Strategy> = strategies
        .iter()
        .copied()
        .filter(|s| matches!(s, Strategy::F | Strategy::F0))
        .collect();
    if !extra.is_empty() {
        if base.facts.has_memory_priority && base.facts.has_pageable {
            device_runs.push((
                vk::DeviceOptions {
                    memory_priority: true,
                    pageable: true,
                },
                extra,
            ));
        } else {
            println!("| f, f0: skipped: VK_EXT_memory_priority / VK_EXT_pageable_device_local_memory missing |||||||");
            csv.line("scatter,f,,,,,,,skipped: extensions missing");
        }
    }
    let mut base = Some(base);
    for (opts, list) in device_runs {
        if list.is_empty() {
            continue;
        }
        let ctx = match base.take() {
            Some(b) if b.opts.memory_priority == opts.memory_priority => b,
            other => {
                drop(other);
                vk::Ctx::new(args.device, opts)?
            }
        };
        let inputs = Inputs::new(&ctx, &g, max_t, check)?;
        for &s in &list {
            if s == Strategy::W && g.big > ctx.facts.max_storage_buffer_range as u64 {
                println!(
                    "| {} | skipped: big buffer {} MiB > maxStorageBufferRange |||||||",
                    s.name(),
                    g.big / MIB
                );
                csv.line(&format!(
                    "scatter,{},,,,,,,skipped: big buffer above maxStorageBufferRange",
                    s.tag()
                ));
                continue;
            }
            for &c in &args.cache_mib {
                let mut log = |r: Row| print_row(&mut csv, &r, copy.gbs);
                if let Err(e) = scatter::run_strategy(
                    &ctx,
                    &inputs,
                    s,
                    c * MIB,
                    &args.tokens,
                    &g,
                    args.calls,
                    check,
                    &mut log,
                ) {
                    let msg = format!("{e:#}");
                    println!("| {} | {} | | failed: {} |||||", s.name(), c, msg);
                    csv.line(&format!(
                        "scatter,{},{},,,,,,failed: {}",
                        s.tag(),
                        c,
                        msg.replace(',', ";")
                    ));
                    if msg.contains("check failed") || msg.contains("device lost") {
                        inputs.free(&ctx);
                        bail!("{msg}");
                    }
                }
            }
        }
        inputs.free(&ctx);
    }
    println!();
    wgpu_floor(args, &mut csv)
}

fn wgpu_floor(args: &Args, csv: &mut Csv) -> Result<()> {
    if args.no_floor || args.no_wgpu {
        return Ok(());
    }
    let (name, rows) = floor::wgpu(&args.floor_n, args.floor_reps)?;
    println!("## 3b. Small-call floor through wgpu ({name}): one compute pass, pass-boundary timestamps\n");
    println!("| variant | N | pass us | per dispatch us |\n|---|---|---|---|");
    floor_rows(&rows, csv);
    Ok(())
}
