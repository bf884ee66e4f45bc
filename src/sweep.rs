//! The benchmark sweep: fit the cache to the memory at hand, then time every chosen backend at
//! every (layout, num_tokens) row, as vLLM's `benchmark_reshape_and_cache_flash.py` does.

use std::ops::ControlFlow;

use crate::backend::{Backend, Prepared};
use crate::error::{Bytes, Error, Result};
use crate::options::Ceiling;
use crate::problem::{CacheDtype, Dtype, Layout, Problem};
use crate::timing::{self, Protocol, Samples};
use crate::workload::{self, CacheFill, Caches, HostInputs, Scaling, WorkloadConfig};

/// vLLM's default number of cache blocks.
pub const DEFAULT_NUM_BLOCKS: usize = 65536;

/// Why the CPU's defaults are smaller than vLLM's (the default reason of
/// [`Backend::default_num_blocks_reason`]).
pub const QUICK: &str = "so that a first run is quick and light";

/// The token counts vLLM's script sweeps: 2, 4, ..., 65536.
pub fn default_token_counts() -> Vec<usize> {
    (1..=16).map(|i| 1usize << i).collect()
}

/// How many cache blocks to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumBlocks {
    /// Not given: the smallest of the backends' defaults ([`Backend::default_num_blocks`]:
    /// vLLM's [`DEFAULT_NUM_BLOCKS`] on GPUs, less on the CPU), shrunk to the largest power of
    /// two that fits, with a note either way. It never grows with the token counts, so that a
    /// row's cache and slots do not depend on the other rows of the sweep.
    Default,
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
    /// `num_tokens` is the default list ([`default_token_counts`]) rather than the user's:
    /// counts beyond the cache's slots are left out, with a note, rather than refused.
    pub default_num_tokens: bool,
    pub protocol: Protocol,
    /// `--max-time` was not given: `protocol`'s is the protocol's default, which a backend
    /// may lower ([`Backend::default_max_time`]), never below `--min-time`.
    pub default_max_time: bool,
    pub seed: u64,
    /// Bytes of host memory the sweep may plan for, at most.
    pub host_memory_limit: Option<u64>,
    /// Fused QKV inputs, per-head scales, the slot pattern (default: vLLM's benchmark).
    pub workload: WorkloadConfig,
    /// `--ceiling pattern`: each row's pattern kernel ([`Prepared::pattern`]) is timed right
    /// after the row, with the same protocol on the same prepared call.
    pub ceiling: Ceiling,
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
}

/// The sizes a sweep will use, decided before anything is allocated.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub num_blocks: usize,
    /// The token counts to sweep, in order: the config's, less default ones that do not fit.
    pub num_tokens: Vec<usize>,
    /// One line each for the report: a backend's defaults that differ from vLLM's and the
    /// protocol's, or a cache reduced to fit memory.
    pub notes: Vec<String>,
    /// The timing protocol the rows run: the config's, with the backends' default
    /// `--max-time` where none was given.
    pub protocol: Protocol,
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
    let block_bytes = config.problem(1, config.layouts[0], 1).cache_bytes();
    let (requested, default_owner) = match config.num_blocks {
        NumBlocks::Explicit(n) => (n, None),
        NumBlocks::Default => backends
            .iter()
            .map(|b| {
                let n = b.default_num_blocks(block_bytes);
                (n, Some((b.name(), b.default_num_blocks_reason())))
            })
            .min_by_key(|(n, _)| *n)
            .unwrap_or((DEFAULT_NUM_BLOCKS, None)),
    };
    // Why the defaults are smaller than vLLM's, said once in the header.
    let mut reasons: Vec<&'static str> = Vec::new();
    let is_default = matches!(config.num_blocks, NumBlocks::Default);
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
                Err(Error::TooManyTokens { .. }) if is_default => {}
                other => other?,
            }
            if let NumBlocks::Explicit(n) = config.num_blocks {
                config
                    .workload
                    .slots
                    .check_fits(num_tokens, config.block_size, n)?;
            }
            for backend in backends.iter().filter(|b| b.supports(layout)) {
                match backend.check_support(&problem, config.workload.scale) {
                    // A user's kernel declares what it implements: the rest is n/a.
                    Err(Error::Unsupported { .. }) if backend.user_kernel().is_some() => {}
                    other => other?,
                }
            }
        }
    }
    let fitting = |num_blocks: usize| -> Vec<usize> {
        let slots = num_blocks as u64 * config.block_size as u64;
        config
            .num_tokens
            .iter()
            .copied()
            .filter(|&n| !config.default_num_tokens || n as u64 <= slots)
            .collect()
    };
    // Memory is planned for the rows that can run in the requested cache.
    let max_tokens = fitting(requested).into_iter().max().unwrap_or(0);

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
    let mut notes = Vec::new();
    // (backend, setting) for each default a backend lowered: one line says why.
    let mut smaller_defaults: Vec<(String, String)> = Vec::new();
    let num_blocks = match config.num_blocks {
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
            n
        }
        NumBlocks::Default => {
            if requested as u64 <= fits {
                if requested < DEFAULT_NUM_BLOCKS {
                    if let Some((name, reason)) = default_owner.clone() {
                        reasons.push(reason);
                        smaller_defaults.push((
                            name,
                            format!(
                                "num_blocks={requested} (not vLLM's {DEFAULT_NUM_BLOCKS}: {} of \
                                 caches)",
                                Bytes(2 * block_bytes * requested as u64)
                            ),
                        ));
                    }
                }
                requested
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
                // Memory, not a backend's smaller default, sets the size: the note says so
                // against vLLM's default, the size a reader compares with.
                let reduced = 1usize << (63 - fits.leading_zeros());
                notes.push(format!(
                    "num_blocks reduced from {DEFAULT_NUM_BLOCKS} to {reduced}: {} need {}, {} \
                     available on {}",
                    what(DEFAULT_NUM_BLOCKS),
                    Bytes(tightest.need(DEFAULT_NUM_BLOCKS)),
                    Bytes(tightest.available),
                    tightest.device
                ));
                reduced
            }
        }
    };
    let mut protocol = config.protocol;
    if config.default_max_time {
        let sampling = &mut protocol.sampling;
        if let Some((max_time, kind)) = backends
            .iter()
            .map(|b| (b.default_max_time(), b.name()))
            .min_by_key(|(t, _)| *t)
            .filter(|(t, _)| *t < sampling.max_time)
        {
            sampling.max_time = max_time.max(sampling.min_time);
            reasons.push(QUICK);
            smaller_defaults.push((
                kind,
                format!(
                    "--max-time {} (not {})",
                    sampling.max_time.as_secs_f64(),
                    config.protocol.sampling.max_time.as_secs_f64()
                ),
            ));
        }
    }
    if let Some((kind, _)) = smaller_defaults.first() {
        let settings: Vec<&str> = smaller_defaults.iter().map(|(_, s)| s.as_str()).collect();
        reasons.dedup();
        notes.insert(
            0,
            format!(
                "{kind} defaults: {}, {}",
                settings.join(" and "),
                reasons.join("; ")
            ),
        );
    }
    let num_tokens = fitting(num_blocks);
    let slots = num_blocks as u64 * config.block_size as u64;
    if num_tokens.len() < config.num_tokens.len() {
        notes.push(format!(
            "num_tokens stops at {}: the {slots} slots of the cache hold no more",
            num_tokens.iter().max().copied().unwrap_or(0)
        ));
    }
    if num_tokens.is_empty() {
        return Err(Error::TooManyTokens {
            num_tokens: config.num_tokens.iter().copied().min().unwrap_or(0),
            num_slots: slots,
            num_blocks,
            block_size: config.block_size,
        });
    }
    for &layout in &config.layouts {
        for &n in &num_tokens {
            match config.problem(n, layout, num_blocks).validate() {
                Err(Error::TooManyTokens { .. }) if is_default => {
                    let needed = n.div_ceil(config.block_size).next_power_of_two();
                    return Err(Error::TooManyTokensForDefault {
                        num_tokens: n,
                        num_slots: slots,
                        num_blocks,
                        block_size: config.block_size,
                        needed_blocks: needed,
                    });
                }
                other => other?,
            }
            config
                .workload
                .slots
                .check_fits(n, config.block_size, num_blocks)?;
        }
    }
    Ok(Plan {
        num_blocks,
        num_tokens,
        notes,
        protocol,
    })
}

/// One row of the results: one (layout, num_tokens), one entry per backend (`None` where the
/// backend does not implement the layout).
#[derive(Debug, Clone)]
pub struct Row {
    pub problem: Problem,
    pub results: Vec<Option<Samples>>,
}

/// What a sweep tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// `backend` (an implementation's name) starts on `problem`; `done` steps (one backend
    /// at one row) came before.
    Step {
        problem: &'a Problem,
        backend: &'a str,
        done: usize,
    },
    /// Every backend has measured this row.
    Row(&'a Row),
}

/// How a sweep ended.
#[derive(Debug)]
pub enum End {
    /// Every row was measured.
    Complete,
    /// The stop check said stop, or the caller declined further rows; `at` is the row that was
    /// not measured (its implementation's name, where one had started on it).
    Stopped {
        at: Option<(Problem, Option<String>)>,
    },
    /// A row failed ([`Error::Row`], naming it); the sweep went no further.
    Failed(Error),
}

/// The rows a sweep measured, and how it ended.
#[derive(Debug)]
pub struct Sweep {
    pub rows: Vec<Row>,
    pub end: End,
}

impl Sweep {
    /// The rows if every one was measured, else why not (a stop is [`Error::Stopped`]).
    pub fn into_result(self) -> Result<Vec<Row>> {
        match self.end {
            End::Complete => Ok(self.rows),
            End::Stopped { .. } => Err(Error::Stopped),
            End::Failed(error) => Err(error),
        }
    }
}

/// Runs the sweep: layouts in order, token counts in order, every backend at each row.
///
/// `on_event` hears of each step as it starts and of each row as soon as it is measured, so
/// that a caller can show rows while later ones run; `ControlFlow::Break` ends the sweep there
/// (a reader that went away). `stop` is asked between rows and between a row's samples and
/// calls; once it says true the sweep ends, dropping the row under way. A row that fails ends
/// the sweep too. Either way the rows measured so far are returned, with how it ended.
pub fn run(
    config: &SweepConfig,
    plan: &Plan,
    backends: &mut [Box<dyn Backend>],
    mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>,
    stop: impl Fn() -> bool,
) -> Sweep {
    let max_tokens = plan.num_tokens.iter().copied().max().unwrap_or(0);
    // Inputs are generated in fixed-size streams: a row's tokens are the same whatever the
    // largest row of the sweep.
    let host = HostInputs::for_workload(
        config.dtype,
        config.num_heads,
        config.head_size,
        &config.workload,
        max_tokens,
        config.seed,
    );
    for backend in backends.iter_mut() {
        if let Some(&layout) = config.layouts.iter().find(|&&l| backend.supports(l)) {
            let largest = config.problem(max_tokens, layout, plan.num_blocks);
            if let Err(error) = backend.reserve(&largest) {
                return Sweep {
                    rows: Vec::new(),
                    end: End::Failed(row_error(backend.name(), &largest, error)),
                };
            }
        }
    }
    let mut rows = Vec::new();
    let mut done = 0;
    for &layout in &config.layouts {
        for &num_tokens in &plan.num_tokens {
            let problem = config.problem(num_tokens, layout, plan.num_blocks);
            if stop() {
                let at = Some((problem, None));
                return Sweep {
                    rows,
                    end: End::Stopped { at },
                };
            }
            let slots = match workload::slot_mapping(
                config.workload.slots,
                problem.num_blocks,
                problem.block_size,
                num_tokens,
                0.0,
                config.seed ^ num_tokens as u64,
            ) {
                Ok(slots) => slots,
                // Planning checked that every row's pattern fits; this is a last guard.
                Err(error) => {
                    return Sweep {
                        rows,
                        end: End::Failed(error),
                    }
                }
            };
            let scales = host.scales(&problem, config.workload.scale);
            let inputs = host.inputs_with(&problem, &slots, &scales);
            let mut results = Vec::new();
            for backend in backends.iter_mut() {
                let name = backend.name();
                let step = Event::Step {
                    problem: &problem,
                    backend: &name,
                    done,
                };
                if on_event(step).is_break() {
                    let at = Some((problem, Some(name)));
                    return Sweep {
                        rows,
                        end: End::Stopped { at },
                    };
                }
                done += 1;
                // n/a: a layout the backend lacks, or a call a user's kernel does not declare.
                let declined = backend.user_kernel().is_some()
                    && backend
                        .check_support(&problem, config.workload.scale)
                        .is_err();
                if !backend.supports(layout) || declined {
                    results.push(None);
                    continue;
                }
                let measured = backend
                    .prepare(&problem, inputs, CacheFill::Random { seed: config.seed })
                    .and_then(|call| {
                        let mut call = Stoppable { call, stop: &stop };
                        let protocol = &plan.protocol;
                        let mut samples = timing::measure(&mut call, &problem, &slots, protocol)?;
                        if config.ceiling == Ceiling::Pattern {
                            samples.pattern =
                                timing::measure_pattern(&mut call, &problem, &slots, protocol)?;
                        }
                        Ok(samples)
                    });
                match measured {
                    Ok(samples) => results.push(Some(samples)),
                    Err(Error::Stopped) => {
                        let at = Some((problem, Some(name)));
                        return Sweep {
                            rows,
                            end: End::Stopped { at },
                        };
                    }
                    Err(error) => {
                        return Sweep {
                            rows,
                            end: End::Failed(row_error(name, &problem, error)),
                        }
                    }
                }
            }
            rows.push(Row { problem, results });
            let row = rows.last().expect("just pushed");
            if on_event(Event::Row(row)).is_break() {
                let last = rows.len() == config.layouts.len() * plan.num_tokens.len();
                let end = if last {
                    End::Complete
                } else {
                    End::Stopped { at: None }
                };
                return Sweep { rows, end };
            }
        }
    }
    Sweep {
        rows,
        end: End::Complete,
    }
}

/// A prepared call that asks `stop` before each of its primitives, so that a stop request ends
/// a row between two samples (or two latency calls) instead of after the row's whole time
/// budget; the timing protocol itself knows nothing of it.
struct Stoppable<'a, 's, S: Fn() -> bool> {
    call: Box<dyn Prepared + 'a>,
    stop: &'s S,
}

impl<S: Fn() -> bool> Stoppable<'_, '_, S> {
    fn go_on(&self) -> Result<()> {
        if (self.stop)() {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }
}

impl<S: Fn() -> bool> Prepared for Stoppable<'_, '_, S> {
    fn run(&mut self) -> Result<()> {
        self.go_on()?;
        self.call.run()
    }

    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
        self.go_on()?;
        self.call.rotate(slot_mappings)
    }

    fn batch_unit(&self) -> usize {
        self.call.batch_unit()
    }

    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        self.go_on()?;
        self.call.time_batch(calls)
    }

    fn flush_cache(&mut self) -> Result<()> {
        self.go_on()?;
        self.call.flush_cache()
    }

    fn read_back(&mut self) -> Result<Caches> {
        self.call.read_back()
    }

    fn pattern(&mut self) -> Result<bool> {
        self.go_on()?;
        self.call.pattern()
    }
}

/// Names the row and backend where a sweep stopped, keeping the cause.
fn row_error(backend: String, problem: &Problem, error: Error) -> Error {
    Error::Row {
        backend,
        num_tokens: problem.num_tokens,
        layout: problem.layout,
        source: Box::new(error),
    }
}
