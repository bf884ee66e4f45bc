//! The benchmark sweep: fit the cache to the memory at hand, then time every chosen backend at
//! every (layout, num_tokens) row, as vLLM's `benchmark_reshape_and_cache_flash.py` does.

use crate::backend::{Backend, Kind};
use crate::error::{Bytes, Error, Result};
use crate::problem::{CacheDtype, Dtype, Layout, Problem};
use crate::timing::{self, Protocol, Samples};
use crate::workload::{self, CacheFill, HostInputs, Scaling, WorkloadConfig};

/// vLLM's default number of cache blocks.
pub const DEFAULT_NUM_BLOCKS: usize = 65536;

/// The token counts vLLM's script sweeps: 2, 4, ..., 65536.
pub fn default_token_counts() -> Vec<usize> {
    (1..=16).map(|i| 1usize << i).collect()
}

/// How many cache blocks to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumBlocks {
    /// The default: shrunk to the largest power of two that fits, with a note.
    Default(usize),
    /// Given by the user: used as is, or refused if it does not fit.
    Explicit(usize),
}

/// Everything a sweep needs to know.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub num_heads: usize,
    pub head_size: usize,
    pub block_size: usize,
    pub num_blocks: NumBlocks,
    pub dtype: Dtype,
    pub cache_dtype: CacheDtype,
    pub layouts: Vec<Layout>,
    pub num_tokens: Vec<usize>,
    pub protocol: Protocol,
    pub seed: u64,
    /// Bytes of host memory the sweep may plan for, at most.
    pub host_memory_limit: Option<u64>,
    /// Fused QKV inputs, per-head scales, the slot pattern (default: vLLM's benchmark).
    pub workload: WorkloadConfig,
}

impl SweepConfig {
    fn problem(&self, num_tokens: usize, layout: Layout, num_blocks: usize) -> Problem {
        Problem {
            num_tokens,
            num_heads: self.num_heads,
            head_size: self.head_size,
            block_size: self.block_size,
            num_blocks,
            dtype: self.dtype,
            cache_dtype: self.cache_dtype,
            layout,
            input_strides: self.workload.input_strides(self.num_heads, self.head_size),
        }
    }

    fn max_tokens(&self) -> usize {
        self.num_tokens.iter().copied().max().unwrap_or(0)
    }
}

/// The sizes a sweep will use, decided before anything is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub num_blocks: usize,
    /// Set when the default number of blocks was reduced to fit: one line for the report.
    pub note: Option<String>,
}

/// A memory limit: where, how much is available, and how the need grows with num_blocks.
struct Constraint {
    device: String,
    available: u64,
    /// Bytes needed per cache block (both caches).
    per_block: u64,
    /// Bytes needed whatever the number of blocks (inputs, slots).
    fixed: u64,
    /// How many implementations keep their own caches here.
    sharing: usize,
}

impl Constraint {
    fn need(&self, num_blocks: usize) -> u64 {
        self.fixed + self.per_block * num_blocks as u64
    }

    /// The largest number of blocks that fits, 0 if none does.
    fn max_blocks(&self) -> u64 {
        self.available.saturating_sub(self.fixed) / self.per_block.max(1)
    }
}

/// Bytes the host may use: most of what the OS reports available, keeping a margin for the
/// process itself and the rest of the system, and at most `limit` (the `--host-memory-limit`
/// option). `None` where neither says.
pub fn host_memory_available(limit: Option<u64>) -> Option<u64> {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info
                .lines()
                .find(|line| line.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024 / 10 * 9)
        });
    match (available, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

/// Validates the whole sweep and fits the cache into every backend's memory and the host's.
/// Nothing is allocated; every refusal happens here, before the first row runs.
pub fn plan(config: &SweepConfig, backends: &[Box<dyn Backend>]) -> Result<Plan> {
    if config.num_tokens.is_empty() {
        return Err(Error::InvalidConfig(
            "--num-tokens needs at least one value".into(),
        ));
    }
    if config.layouts.is_empty() {
        return Err(Error::InvalidConfig(
            "--layouts needs at least one value".into(),
        ));
    }
    if config.protocol.iters == 0 {
        return Err(Error::InvalidConfig("--iters must be at least 1".into()));
    }
    let requested = match config.num_blocks {
        NumBlocks::Default(n) | NumBlocks::Explicit(n) => n,
    };
    let max_tokens = config.max_tokens();
    if config.workload.scale == Scaling::PerHead && !config.cache_dtype.is_fp8() {
        return Err(Error::InvalidConfig(
            "--scale per-head needs an fp8 cache (--kv-cache-dtype fp8 or fp8_e5m2): an auto \
             cache stores the inputs unscaled"
                .into(),
        ));
    }
    // Validate every row with the requested size first, so that size-independent mistakes (fp8
    // with head size 120, zero heads) are named as such rather than as a memory problem.
    for &layout in &config.layouts {
        for &num_tokens in &config.num_tokens {
            let problem = config.problem(num_tokens, layout, requested);
            match problem.validate() {
                Err(Error::TooManyTokens { .. })
                    if matches!(config.num_blocks, NumBlocks::Default(_)) => {}
                other => other?,
            }
            if let NumBlocks::Explicit(n) = config.num_blocks {
                config
                    .workload
                    .slots
                    .check_fits(num_tokens, config.block_size, n)?;
            }
            for backend in backends.iter().filter(|b| b.supports(layout)) {
                backend.check_support(&problem, config.workload.scale)?;
            }
        }
    }

    let unit = config.problem(max_tokens, config.layouts[0], 1);
    let cache_per_block = unit.cache_bytes();
    let input_bytes = unit.input_bytes();
    let mut constraints = Vec::new();
    let mut host = Constraint {
        device: "the host".into(),
        available: host_memory_available(config.host_memory_limit).unwrap_or(u64::MAX),
        per_block: 0,
        // The host always holds the generated inputs.
        fixed: 2 * input_bytes + 8 * max_tokens as u64,
        sharing: 0,
    };
    for backend in backends {
        let one = backend.footprint(cache_per_block, input_bytes, max_tokens);
        let none = backend.footprint(0, input_bytes, max_tokens);
        host.per_block += one.host - none.host;
        host.fixed += none.host;
        if one.host > none.host {
            host.sharing += 1;
        }
        if let Some(available) = backend.device_memory() {
            let device = backend.device().name;
            let (per_block, fixed) = (one.device - none.device, none.device);
            // Two backends on one GPU (CUDA and wgpu on the same card) share its memory.
            match constraints
                .iter_mut()
                .find(|c: &&mut Constraint| c.device == device)
            {
                Some(shared) => {
                    shared.available = shared.available.min(available);
                    shared.per_block += per_block;
                    shared.fixed += fixed;
                    shared.sharing += 1;
                }
                None => constraints.push(Constraint {
                    device,
                    available,
                    per_block,
                    fixed,
                    sharing: 1,
                }),
            }
        }
    }
    constraints.push(host);

    let fits = constraints
        .iter()
        .map(Constraint::max_blocks)
        .min()
        .unwrap_or(u64::MAX);
    let tightest = constraints
        .iter()
        .min_by_key(|c| c.max_blocks())
        .expect("the host is always a constraint");
    let what = |num_blocks: usize| {
        let times = if tightest.sharing > 1 {
            format!(", for each of {} implementations", tightest.sharing)
        } else {
            String::new()
        };
        format!(
            "two caches of {num_blocks} block{} ({} each) and inputs for {max_tokens} tokens{times}",
            if num_blocks == 1 { "" } else { "s" },
            Bytes(cache_per_block * num_blocks as u64)
        )
    };
    let too_big = "; even one cache block does not fit: use fewer --num-tokens, fewer --num-heads or a smaller --head-size or --block-size";
    let (num_blocks, note) = match config.num_blocks {
        NumBlocks::Explicit(n) => {
            if n as u64 > fits {
                return Err(Error::DoesNotFit {
                    what: what(n),
                    needed: Bytes(tightest.need(n)),
                    available: Bytes(tightest.available),
                    device: tightest.device.clone(),
                    hint: if fits > 0 {
                        format!("; the largest --num-blocks that fits is {fits}")
                    } else {
                        too_big.into()
                    },
                });
            }
            (n, None)
        }
        NumBlocks::Default(n) => {
            if n as u64 <= fits {
                (n, None)
            } else {
                if fits == 0 {
                    return Err(Error::DoesNotFit {
                        what: what(1),
                        needed: Bytes(tightest.need(1)),
                        available: Bytes(tightest.available),
                        device: tightest.device.clone(),
                        hint: too_big.into(),
                    });
                }
                let reduced = 1usize << (63 - fits.leading_zeros());
                let note = format!(
                    "num_blocks reduced from {n} to {reduced}: {} need {}, {} available on {}",
                    what(n),
                    Bytes(tightest.need(n)),
                    Bytes(tightest.available),
                    tightest.device
                );
                (reduced, Some(note))
            }
        }
    };
    for &layout in &config.layouts {
        for &num_tokens in &config.num_tokens {
            config.problem(num_tokens, layout, num_blocks).validate()?;
            config
                .workload
                .slots
                .check_fits(num_tokens, config.block_size, num_blocks)?;
        }
    }
    Ok(Plan { num_blocks, note })
}

/// One row of the results: one (layout, num_tokens), one entry per backend (`None` where the
/// backend does not implement the layout).
#[derive(Debug, Clone)]
pub struct Row {
    pub problem: Problem,
    pub results: Vec<Option<Samples>>,
}

/// Runs the sweep: layouts in order, token counts in order, every backend at each row.
/// `on_row` is called after each (row, backend) for progress reporting.
pub fn run(
    config: &SweepConfig,
    plan: &Plan,
    backends: &mut [Box<dyn Backend>],
    mut on_step: impl FnMut(&Problem, &str),
) -> Result<Vec<Row>> {
    let max_tokens = config.max_tokens();
    let host = HostInputs::for_workload(
        config.dtype,
        config.num_heads,
        config.head_size,
        &config.workload,
        max_tokens,
        config.seed,
    );
    let mut rows = Vec::new();
    for &layout in &config.layouts {
        for &num_tokens in &config.num_tokens {
            let problem = config.problem(num_tokens, layout, plan.num_blocks);
            let slots = workload::slot_mapping(
                config.workload.slots,
                problem.num_blocks,
                problem.block_size,
                num_tokens,
                0.0,
                config.seed ^ num_tokens as u64,
            )?;
            let scales = host.scales(&problem, config.workload.scale);
            let inputs = host.inputs_with(&problem, &slots, &scales);
            let mut results = Vec::new();
            for backend in backends.iter_mut() {
                let kind = backend.kind();
                on_step(&problem, kind.name());
                if !backend.supports(layout) {
                    results.push(None);
                    continue;
                }
                let samples = backend
                    .prepare(&problem, inputs, CacheFill::Random { seed: config.seed })
                    .and_then(|mut call| {
                        timing::measure(call.as_mut(), &problem, &slots, &config.protocol)
                    })
                    .map_err(|error| row_error(kind, &problem, error))?;
                results.push(Some(samples));
            }
            rows.push(Row { problem, results });
        }
    }
    Ok(rows)
}

/// Names the row and backend where a sweep stopped, keeping the cause.
fn row_error(backend: Kind, problem: &Problem, error: Error) -> Error {
    Error::Row {
        backend,
        num_tokens: problem.num_tokens,
        layout: problem.layout,
        source: Box::new(error),
    }
}
