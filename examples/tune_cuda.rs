//! The CUDA tuning table: kernel variants, launch shapes and streaming ceilings on one GPU,
//! with the benchmark's own timing protocol. Run by hand on an NVIDIA machine:
//!
//! ```text
//! cargo run --release --example tune_cuda -- \
//!     --rows "lay=NHD|HND cache=auto|fp8 T=8192 shape=d|256x2" \
//!     --defines ";RCF_STORE=1" --streams "copy;r2:256" --deadline 120
//! ```
//!
//! - `--defines`: `;`-separated sets of space-separated `-D` macros for the kernel source (an
//!   empty set: the built-in source), each compiled in turn; `PDL_LAUNCH=1` (`=0`) in a set
//!   launches that set's calls with (without) programmatic dependent launch; `SHADOW=open`
//!   opens a second backend beside the one timed (as a user kernel's backend sits beside the
//!   built-in one in the benchmark), `SHADOW=call` also stages a call of the set's first row
//!   on it (room for a second set of its buffers: a small `nb`), `SHADOW=timed` times that call
//!   once too; `ALLOC=M` allocates M MiB on the device before the set's rows (their buffers
//!   then land at other addresses);
//! - `--streams`: ceilings measured once, `;`-separated: `copy`, or `rR:B[:H]` (R = 1 or 2
//!   16-byte words read per word written, rows of B bytes at scattered slots, 0: contiguous;
//!   with H heads, a token's H rows spread as HND puts them, block size 16);
//! - `--rows`: `;`-separated groups of space-separated `key=value` fields, where a value may
//!   list alternatives with `|` (every combination is a row). Keys (defaults): `lay` (NHD),
//!   `cache` (auto), `dt` (bfloat16), `T` (8192), `H` (128), `D` (128), `bs` (16), `nb`
//!   (65536), `mode` (w: warm, c: cold, r: rotating), `shape` (`d`: built-in, `dl`: built-in
//!   with the large-call kernels at every size, `TxI`: T threads and I items per thread,
//!   `TxIcB`: the grid capped at B blocks per SM), `set` (0:
//!   the index of the define set to run with);
//! - `--deadline`: seconds after which the remaining rows are skipped.
//!
//! Device time per row: the median of batches, as in the benchmark; `%copy` against the copy
//! ceiling measured here.

use std::collections::HashMap;
use std::fmt::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use paged_kv_bench::backend::cuda::CudaBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::options::{CudaTuning, LaunchOverride, Options};
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::timing::{self, Protocol, Stats};
use paged_kv_bench::workload::{self, CacheFill};

#[derive(Debug, Parser)]
struct Args {
    /// The rows (see the module docs).
    #[arg(long, default_value = "lay=NHD|HND cache=auto|fp8 T=8192 shape=d")]
    rows: String,
    /// `;`-separated sets of `-D` macros.
    #[arg(long, default_value = "")]
    defines: String,
    /// Ceilings measured once.
    #[arg(long, default_value = "copy")]
    streams: String,
    /// Seconds after which the remaining rows are skipped.
    #[arg(long, default_value_t = 120.0)]
    deadline: f64,
}

/// One row of the tuning sweep: a problem and how to cut it.
#[derive(Debug, Clone)]
struct TuneRow {
    problem: Problem,
    cold: bool,
    rotate: bool,
    /// `None`: the built-in shape.
    shape: Option<LaunchOverride>,
    label: String,
    /// The define set the row runs with.
    set: usize,
}

/// `d` (built-in), `dl` (built-in, the large-call kernels at every size), `TxI` (T threads, I
/// items per thread) or `TxIcB` (grid capped at B blocks per SM).
fn parse_shape(text: &str) -> Result<Option<LaunchOverride>, String> {
    if text == "d" {
        return Ok(None);
    }
    if text == "dl" {
        return Ok(Some(LaunchOverride {
            large_kernels: true,
            ..LaunchOverride::default()
        }));
    }
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("shape {text}: TxI[cB]"))
    };
    let (threads, rest) = text
        .split_once('x')
        .ok_or_else(|| format!("shape {text}: TxI[cB]"))?;
    let (items, cap) = rest.split_once('c').unwrap_or((rest, "0"));
    Ok(Some(LaunchOverride {
        threads: number(threads)?,
        items_per_thread: number(items)?,
        blocks_per_sm: number(cap)?,
        ..LaunchOverride::default()
    }))
}

/// Rows from a spec (see the module docs).
fn parse_rows(spec: &str) -> Result<Vec<TuneRow>, String> {
    let mut rows = Vec::new();
    for group in spec.split(';').map(str::trim).filter(|g| !g.is_empty()) {
        let mut fields: Vec<(String, Vec<String>)> = [
            ("lay", "NHD"),
            ("cache", "auto"),
            ("dt", "bfloat16"),
            ("T", "8192"),
            ("H", "128"),
            ("D", "128"),
            ("bs", "16"),
            ("nb", "65536"),
            ("mode", "w"),
            ("shape", "d"),
            ("set", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect();
        for field in group.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("`{field}`: expected key=value"))?;
            let slot = fields
                .iter_mut()
                .find(|(k, _)| k == key)
                .ok_or_else(|| format!("unknown key {key}"))?;
            slot.1 = value.split('|').map(String::from).collect();
        }
        let mut combos: Vec<Vec<String>> = vec![vec![]];
        for (_, values) in &fields {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(v.clone());
                        c
                    })
                })
                .collect();
        }
        for c in combos {
            let layout = match c[0].as_str() {
                "NHD" => Layout::Nhd,
                "HND" => Layout::Hnd,
                other => return Err(format!("layout {other}")),
            };
            let cache_dtype = match c[1].as_str() {
                "auto" => CacheDtype::Auto,
                "fp8" => CacheDtype::Fp8,
                other => return Err(format!("cache dtype {other}")),
            };
            let dtype = match c[2].as_str() {
                "half" => Dtype::Half,
                "bfloat16" | "bf16" => Dtype::BFloat16,
                "float" => Dtype::Float,
                other => return Err(format!("dtype {other}")),
            };
            let n = |i: usize| -> Result<usize, String> {
                c[i].parse()
                    .map_err(|_| format!("`{}`: expected a number", c[i]))
            };
            rows.push(TuneRow {
                problem: Problem {
                    num_tokens: n(3)?,
                    num_heads: n(4)?,
                    head_size: n(5)?,
                    block_size: n(6)?,
                    num_blocks: n(7)?,
                    dtype,
                    cache_dtype,
                    layout,
                    input_strides: None,
                },
                cold: c[8] == "c",
                rotate: c[8] == "r",
                shape: parse_shape(&c[9])?,
                label: c[9].clone(),
                set: n(10)?,
            });
        }
    }
    Ok(rows)
}

/// A streaming ceiling from its spec (`copy` or `rR:B[:H]`), in GB/s.
fn stream_ceiling(backend: &mut CudaBackend, stream: &str) -> Result<f64, String> {
    if stream == "copy" {
        return backend
            .copy_bandwidth_gbps()
            .map_err(|e| e.one_line())?
            .ok_or_else(|| "no room for the copy ceiling".to_string());
    }
    let fields: Vec<u64> = stream
        .strip_prefix('r')
        .ok_or_else(|| format!("stream {stream}: copy or rR:B[:H]"))?
        .split(':')
        .map(|f| f.parse().map_err(|_| format!("stream {stream}: rR:B[:H]")))
        .collect::<Result<_, _>>()?;
    let out_bytes = 1u64 << 30;
    let row = match fields.get(1).copied().unwrap_or(0) {
        0 => out_bytes,
        bytes => bytes,
    };
    let heads = fields.get(2).copied().unwrap_or(1);
    let mut best: f64 = 0.0;
    for _ in 0..2 {
        let gbps = backend
            .measure_stream(fields[0] as u32, out_bytes, row, heads, 5)
            .map_err(|e| e.one_line())?;
        best = best.max(gbps);
    }
    Ok(best)
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(args.deadline);
    let define_sets: Vec<Vec<String>> = args
        .defines
        .split(';')
        .map(|v| v.split_whitespace().map(String::from).collect())
        .collect();
    let rows = parse_rows(&args.rows)?;
    let mut out = String::new();
    let mut copy = f64::NAN;
    let mut inputs: HashMap<(Dtype, usize), workload::HostInputs> = HashMap::new();
    for (set, defines) in define_sets.iter().enumerate() {
        // `PDL_LAUNCH=1` / `=0` in a define set: that set's calls with (without) programmatic
        // dependent launch.
        let programmatic_launch = [("PDL_LAUNCH=1", true), ("PDL_LAUNCH=0", false)]
            .into_iter()
            .find(|(define, _)| defines.iter().any(|d| d == define))
            .map(|(_, on)| on);
        let options = Options {
            cuda: CudaTuning {
                defines: defines.clone(),
                programmatic_launch,
                ..CudaTuning::default()
            },
            ..Options::default()
        };
        let mut backend = CudaBackend::open(&options).map_err(|e| e.one_line())?;
        // Device memory taken before the rows (`ALLOC=M`, MiB), kept until the set ends.
        let _taken = match defines.iter().find_map(|d| d.strip_prefix("ALLOC=")) {
            Some(mib) => {
                let mib: usize = mib.parse().map_err(|_| format!("ALLOC={mib}: MiB"))?;
                let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| e.to_string())?;
                let stream = ctx.default_stream();
                Some(
                    stream
                        .alloc_zeros::<u8>(mib << 20)
                        .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        // A second backend kept open while the set runs (`SHADOW=...`).
        let shadow_kind = defines.iter().find_map(|d| d.strip_prefix("SHADOW="));
        let mut shadow = match shadow_kind {
            Some(_) => Some(CudaBackend::open(&Options::default()).map_err(|e| e.one_line())?),
            None => None,
        };
        // Its call (`call`, `timed`): the set's first row, on inputs of its own (made only then).
        let first = rows.iter().find(|r| r.set == set).map(|r| r.problem);
        let shadow_data = match (shadow_kind, first) {
            (Some("call" | "timed"), Some(p)) => Some((
                p,
                workload::HostInputs::random(p.dtype, p.token_elements(), p.num_tokens, 5),
                workload::random_slot_mapping(p.num_slots(), p.num_tokens, 0.0, 7),
            )),
            _ => None,
        };
        let mut _shadow_call = None;
        if let (Some(other), Some((p, host, slots))) = (shadow.as_mut(), shadow_data.as_ref()) {
            let mut call = other
                .prepare(p, host.inputs(p, slots), CacheFill::Random { seed: 13 })
                .map_err(|e| e.one_line())?;
            if shadow_kind == Some("timed") {
                timing::measure(call.as_mut(), p, slots, &Protocol::new(10))
                    .map_err(|e| e.one_line())?;
            }
            _shadow_call = Some(call);
        }
        if set == 0 {
            let device = backend.device();
            println!("device: {} ({})", device.name, device.details);
            for stream in args.streams.split(';').map(str::trim) {
                if stream.is_empty() {
                    continue;
                }
                let gbps = stream_ceiling(&mut backend, stream)?;
                if stream == "copy" {
                    copy = gbps;
                }
                let line = format!(
                    "stream {stream:>10}: {gbps:6.0} GB/s ({:.1}% of copy)",
                    gbps / copy * 100.0
                );
                println!("{line}");
                writeln!(out, "{line}").expect("writing to a String");
            }
        }
        println!("== set {set}: {defines:?}");
        writeln!(out, "== set {set}: {defines:?}").expect("writing to a String");
        for row in rows.iter().filter(|r| r.set == set) {
            if start.elapsed() > deadline {
                println!("deadline: skipped the rest");
                writeln!(out, "deadline: skipped the rest").expect("writing to a String");
                break;
            }
            let line = tune_row(&mut backend, row, &rows, &mut inputs, copy);
            println!("{line}");
            writeln!(out, "{line}").expect("writing to a String");
        }
    }
    println!(
        "---- summary ({:.0} s): set tokens layout cache dtype HxD block mode shape device_us noise GB/s %copy",
        start.elapsed().as_secs_f64()
    );
    print!("{out}");
    Ok(())
}

/// Times one row; the line to print, or the error in its place.
fn tune_row(
    backend: &mut CudaBackend,
    row: &TuneRow,
    rows: &[TuneRow],
    inputs: &mut HashMap<(Dtype, usize), workload::HostInputs>,
    copy: f64,
) -> String {
    let p = &row.problem;
    let key = (p.dtype, p.token_elements());
    // One set of random inputs per (dtype, token size), as long as its longest row needs.
    let max_tokens = rows
        .iter()
        .filter(|r| (r.problem.dtype, r.problem.token_elements()) == key)
        .map(|r| r.problem.num_tokens)
        .max()
        .unwrap_or(p.num_tokens);
    let host = inputs.entry(key).or_insert_with(|| {
        workload::HostInputs::random(p.dtype, p.token_elements(), max_tokens, 17)
    });
    let slots = workload::random_slot_mapping(p.num_slots(), p.num_tokens, 0.0, 3);
    let call_inputs = host.inputs(p, &slots);
    backend.force_launch(row.shape);
    let mut protocol = Protocol::new(10);
    protocol.cold = row.cold;
    protocol.rotate = row.rotate;
    protocol.sampling.max_time = Duration::from_millis(if row.cold { 600 } else { 400 });
    let result = p
        .validate()
        .and_then(|()| backend.prepare(p, call_inputs, CacheFill::Random { seed: 11 }))
        .and_then(|mut call| timing::measure(call.as_mut(), p, &slots, &protocol));
    match result {
        Ok(samples) => {
            let s: Stats = samples.device_stats();
            let gbps = p.bytes_moved() as f64 / (s.median * 1e-6) / 1e9;
            format!(
                "{} {:>6} {} {:>4} {:>8} {:>3}x{:<3} bs{:<3} {} {:>10} {:>9.3} {:>5.1}% {:>6.0} {:>6.1}%",
                row.set,
                p.num_tokens,
                p.layout.name(),
                p.cache_dtype.name(),
                p.dtype.name(),
                p.num_heads,
                p.head_size,
                p.block_size,
                if row.cold { "c" } else if row.rotate { "r" } else { "w" },
                row.label,
                s.median,
                s.noise_percent,
                gbps,
                gbps / copy * 100.0
            )
        }
        Err(e) => format!(
            "{} {} {}: error: {}",
            row.set,
            p.describe(),
            row.label,
            e.one_line()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_specs_parse() {
        let rows = parse_rows(
            "lay=NHD|HND cache=fp8 T=2|64 shape=d|256x2c4|96x3c1 set=1; dt=half; mode=r|c",
        )
        .unwrap();
        assert_eq!(rows.len(), 2 * 2 * 3 + 3);
        assert!(rows[13].rotate && !rows[13].cold && rows[14].cold && !rows[14].rotate);
        let r = &rows[1];
        assert_eq!(r.problem.layout, Layout::Nhd);
        assert_eq!(r.problem.cache_dtype, CacheDtype::Fp8);
        assert_eq!(r.problem.num_tokens, 2);
        assert_eq!(r.set, 1);
        assert_eq!(
            r.shape,
            Some(LaunchOverride {
                threads: 256,
                items_per_thread: 2,
                scalar: false,
                blocks_per_sm: 4,
                large_kernels: false,
            })
        );
        assert_eq!(rows[2].shape.unwrap().blocks_per_sm, 1);
        assert_eq!(rows[0].shape, None);
        let last = &rows[12];
        assert_eq!(
            (last.problem.dtype, last.set, last.cold),
            (Dtype::Half, 0, false)
        );
        assert!(parse_rows("lay=XYZ").is_err());
        assert!(parse_rows("bogus=1").is_err());
    }
}
