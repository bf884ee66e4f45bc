//! The CPU backend: the reference semantics, run in parallel over cache blocks. It makes
//! `--implementation cpu` a complete benchmark on any machine, and is the baseline the GPU
//! backends are checked against.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use crate::error::{Error, Result};
use crate::problem::{Layout, Problem};
use crate::reference;
use crate::timing::{self, Protocol, Sampling, Stats};
use crate::workload::{self, fill_random, CacheFill, Caches, Inputs};

/// Bytes written to evict the CPU's caches before a cold call: larger than any last-level
/// cache of current server CPUs.
const FLUSH_BYTES: usize = 512 << 20;

/// Bytes of each buffer of the copy ceiling: 16 times a 32 MiB last-level cache, so that the
/// copy streams from and to memory as large rows do.
const COPY_BYTES: usize = 512 << 20;

/// The copy ceiling's work items and pieces: one cache block and one head's row of the default
/// shape (16 slots x 128 heads x 128 bf16 elements; 128 bf16 elements). Rows hand rayon one
/// cache block per work item and copy a head's row at a time, and the ceiling copies the same
/// way, so that it differs from a large row only in where the rows land. The old ceiling, five
/// passes of 4 MiB `memcpy` calls, took glibc's large-copy path (up to a third slower than
/// 256-byte pieces on the AMD EPYC development machine) and too few samples for a machine whose
/// bandwidth moves with its neighbours': large rows read as 105-143% of it.
const COPY_ITEM_BYTES: usize = 512 << 10;
const COPY_PIECE_BYTES: usize = 256;

/// Both caches together hold at most this by default (`--num-blocks` not given): vLLM's
/// 65536 blocks are 2 x 32 GiB in the default shape, which few machines without a GPU have,
/// and rows that large take minutes each on a few cores (the latency loop alone runs 103
/// calls). 512 MiB is still 16 times a 32 MiB last-level cache, so rows stream from memory as
/// on a GPU, and its 8192 slots keep the default sweep on 2 cores within two minutes.
pub const DEFAULT_CACHE_BYTES: u64 = 512 << 20;

/// `--max-time` when not given: a host clock timing rows that stream from memory rarely gets
/// under 1% on a shared machine (on the 2-core development VM, whose memory bandwidth moves
/// with its neighbours', rows of 16 tokens and more stayed at 3-10%, and each spent the whole
/// 5 s). 2 s still takes a dozen samples or more in every default row, and keeps the default
/// sweep within two minutes there.
pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(2);

/// The largest power of two of blocks (of `block_bytes` each) whose two caches fit
/// [`DEFAULT_CACHE_BYTES`], at least one and at most vLLM's default: 512 in the default shape.
/// Also the default of backends that compute on the CPU (wgpu on a software adapter).
pub fn default_num_blocks(block_bytes: u64) -> usize {
    let blocks = (DEFAULT_CACHE_BYTES / 2 / block_bytes.max(1)).max(1);
    (1usize << (63 - blocks.leading_zeros())).min(crate::sweep::DEFAULT_NUM_BLOCKS)
}

/// Caches live in host memory and are kept between calls of the same size.
pub struct CpuBackend {
    caches: Caches,
    /// The seed of the random fill the caches hold, if they hold one unchanged in size (but
    /// for `written`).
    random_fill: Option<u64>,
    /// Byte ranges of both caches (whole cache blocks) that calls prepared since the fill may
    /// have written: the next call that asks for the fill gets them back from it, so that a
    /// row's cache holds the same bytes whatever rows ran before it.
    written: Vec<std::ops::Range<usize>>,
    /// Written before each cold call to evict the caches (allocated on first use).
    flush_buffer: Vec<u8>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self {
            caches: Caches {
                key: Vec::new(),
                value: Vec::new(),
            },
            random_fill: None,
            written: Vec::new(),
            flush_buffer: Vec::new(),
        }
    }
}

/// The byte ranges of the cache blocks that `slot_mapping` writes (padding and slots outside
/// the cache write nothing).
fn written_blocks(problem: &Problem, slot_mapping: &[i64]) -> Vec<std::ops::Range<usize>> {
    let block_bytes = problem.strides().block as usize * problem.cache_element_size();
    slot_mapping
        .iter()
        .filter(|&&slot| slot >= 0 && (slot as u64) < problem.num_slots())
        .map(|&slot| {
            let start = (slot as usize / problem.block_size) * block_bytes;
            start..start + block_bytes
        })
        .collect()
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> Kind {
        Kind::Cpu
    }

    fn device(&self) -> DeviceInfo {
        DeviceInfo {
            name: format!("{} CPU threads", rayon::current_num_threads()),
            details: format!("{}, host memory", cpu_model()),
        }
    }

    fn supports(&self, _layout: Layout) -> bool {
        true
    }

    fn footprint(&self, cache_bytes: u64, _input_bytes: u64, _num_tokens: usize) -> Footprint {
        // The inputs are read in place from the host copy.
        Footprint {
            host: 2 * cache_bytes,
            device: 0,
        }
    }

    fn default_num_blocks(&self, block_bytes: u64) -> usize {
        default_num_blocks(block_bytes)
    }

    fn default_max_time(&self) -> Duration {
        DEFAULT_MAX_TIME
    }

    fn device_memory(&self) -> Option<u64> {
        None
    }

    fn mode_note(&self) -> String {
        "--mode does not apply: plain calls, timed with the host clock".into()
    }

    fn mode_summary(&self) -> String {
        "host clock".into()
    }

    /// Timed as the rows are ([`timing::warm_samples`]: warm-up calls, then batches of
    /// back-to-back copies on the host clock until the noise is small, the median), on buffers
    /// the warm-up has faulted in, with the rows' thread pool and granularity.
    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        let mut copy = CopyCall {
            source: vec![1u8; COPY_BYTES],
            target: vec![0u8; COPY_BYTES],
        };
        let protocol = Protocol {
            sampling: Sampling {
                max_time: Duration::from_secs(2),
                ..Sampling::default()
            },
            ..Protocol::new(3)
        };
        let latency_us = timing::wall_clock_latency_us(&protocol, || copy.run())?;
        let run = timing::warm_samples(
            &mut copy,
            &protocol,
            Duration::from_secs_f64(latency_us * 1e-6),
        )?;
        let median_us = Stats::from_samples(&run.samples).median;
        Ok((median_us > 0.0).then(|| 2.0 * COPY_BYTES as f64 / (median_us * 1e-6) / 1e9))
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        inputs.validate_for(problem)?;
        let bytes = problem.cache_bytes() as usize;
        match fill {
            CacheFill::Copy(caches) => {
                if caches.key.len() != bytes || caches.value.len() != bytes {
                    return Err(Error::InvalidConfig(format!(
                        "initial caches hold {} and {} bytes, the problem needs {bytes}",
                        caches.key.len(),
                        caches.value.len()
                    )));
                }
                self.caches.key.clone_from(&caches.key);
                self.caches.value.clone_from(&caches.value);
                self.random_fill = None;
            }
            CacheFill::Random { seed } => {
                if self.random_fill == Some(seed) && self.caches.key.len() == bytes {
                    workload::restore_random(&mut self.caches.key, seed, &self.written);
                    let value_seed = seed.wrapping_add(1);
                    workload::restore_random(&mut self.caches.value, value_seed, &self.written);
                } else {
                    self.random_fill = None;
                    if self.caches.key.len() != bytes {
                        // Dropped before allocating, and allocated zeroed rather than resized:
                        // fresh pages cost nothing until the parallel fill touches them,
                        // where a resize would write every byte once more on one core.
                        self.caches = Caches {
                            key: Vec::new(),
                            value: Vec::new(),
                        };
                        self.caches = Caches {
                            key: vec![0; bytes],
                            value: vec![0; bytes],
                        };
                    }
                    fill_random(&mut self.caches.key, seed);
                    fill_random(&mut self.caches.value, seed.wrapping_add(1));
                    self.random_fill = Some(seed);
                }
            }
        }
        self.written = written_blocks(problem, inputs.slot_mapping);
        Ok(Box::new(CpuCall {
            problem: *problem,
            inputs,
            copies: Vec::new(),
            caches: &mut self.caches,
            written: &mut self.written,
            flush_buffer: &mut self.flush_buffer,
            flush_pass: 0,
            pattern: false,
        }))
    }
}

struct CpuCall<'a> {
    problem: Problem,
    inputs: Inputs<'a>,
    /// Rotating inputs: further copies of the keys and values, each with its own slots.
    copies: Vec<(Vec<u8>, Vec<u8>, Vec<i64>)>,
    caches: &'a mut Caches,
    /// The backend's record of what calls may have written (rotation copies add theirs).
    written: &'a mut Vec<std::ops::Range<usize>>,
    flush_buffer: &'a mut Vec<u8>,
    /// Changes the flush's byte each time, so that no write can be skipped as a no-op.
    flush_pass: u8,
    /// `--ceiling pattern`: calls write [`crate::pattern`]'s bytes.
    pattern: bool,
}

/// Bytes that one rayon task moves at least (keys and values read, cache written). Handing a
/// few tokens to another thread costs more than it saves: on the 2-core development machine a
/// call of 2 tokens took 16 us over two threads and 5 us on one, 32 tokens 98 us and 80 us;
/// 1 MiB is about 50 us of one core's copying, several times a thread's wake-up.
const MIN_TASK_BYTES: usize = 1 << 20;

/// One call: tokens sorted by slot, grouped by cache block; each touched block is a disjoint
/// part of both caches, so blocks are written in parallel (a task taking at least
/// [`MIN_TASK_BYTES`] of them).
///
/// `pattern`: each token's [`crate::pattern::write_token`] rather than the reference's, the
/// same tokens on the same threads (`--ceiling pattern`).
fn write_all(problem: &Problem, inputs: &Inputs, caches: &mut Caches, pattern: bool) {
    let block_size = problem.block_size as u64;
    let mut order: Vec<(u64, usize)> = inputs
        .slot_mapping
        .iter()
        .enumerate()
        .filter(|(_, slot)| **slot >= 0 && (**slot as u64) < problem.num_slots())
        .map(|(token, slot)| (*slot as u64, token))
        .collect();
    order.sort_unstable();

    let block_elements = problem.strides().block;
    let block_bytes = block_elements as usize * problem.cache_element_size();
    let mut key_rest = &mut caches.key[..];
    let mut value_rest = &mut caches.value[..];
    let mut next_block = 0;
    let mut work = Vec::new();
    for group in order.chunk_by(|a, b| a.0 / block_size == b.0 / block_size) {
        let block = group[0].0 / block_size;
        let skip = (block - next_block) as usize * block_bytes;
        let (key_block, rest) = std::mem::take(&mut key_rest)[skip..].split_at_mut(block_bytes);
        key_rest = rest;
        let (value_block, rest) = std::mem::take(&mut value_rest)[skip..].split_at_mut(block_bytes);
        value_rest = rest;
        next_block = block + 1;
        work.push((block * block_elements, key_block, value_block, group));
    }
    let token_bytes =
        2 * problem.token_elements() * (problem.dtype.size() + problem.cache_element_size());
    let item_bytes = (order.len() * token_bytes / work.len().max(1)).max(1);
    work.into_par_iter()
        .with_min_len(MIN_TASK_BYTES.div_ceil(item_bytes))
        .for_each(|(first_element, key_block, value_block, group)| {
            let write_token: reference::WriteToken = if pattern {
                crate::pattern::write_token
            } else {
                reference::write_token
            };
            for &(_, token) in group {
                write_token(
                    problem,
                    inputs,
                    key_block,
                    value_block,
                    first_element,
                    token,
                );
            }
        });
}

impl Prepared for CpuCall<'_> {
    fn run(&mut self) -> Result<()> {
        write_all(&self.problem, &self.inputs, self.caches, self.pattern);
        Ok(())
    }

    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
        for slots in slot_mappings {
            self.written.extend(written_blocks(&self.problem, slots));
        }
        self.copies = slot_mappings
            .iter()
            .map(|slots| {
                (
                    self.inputs.key.to_vec(),
                    self.inputs.value.to_vec(),
                    slots.clone(),
                )
            })
            .collect();
        Ok(())
    }

    fn batch_unit(&self) -> usize {
        1 + self.copies.len()
    }

    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        let problem = &self.problem;
        let mut rotation = vec![self.inputs];
        rotation.extend(self.copies.iter().map(|(key, value, slots)| Inputs {
            key,
            value,
            slot_mapping: slots,
            ..self.inputs
        }));
        let start = Instant::now();
        for inputs in rotation.iter().cycle().take(calls) {
            write_all(problem, inputs, self.caches, self.pattern);
        }
        Ok(start.elapsed().as_secs_f64() * 1e6)
    }

    fn flush_cache(&mut self) -> Result<()> {
        if self.flush_buffer.is_empty() {
            self.flush_buffer.resize(FLUSH_BYTES, 0);
        }
        self.flush_pass = self.flush_pass.wrapping_add(1);
        let pass = self.flush_pass;
        self.flush_buffer
            .par_chunks_mut(1 << 20)
            .for_each(|c| c.fill(pass));
        Ok(())
    }

    fn read_back(&mut self) -> Result<Caches> {
        Ok(self.caches.clone())
    }

    fn pattern(&mut self) -> Result<bool> {
        self.pattern = true;
        Ok(true)
    }
}

/// The copy ceiling as a call, so that the timing protocol drives it as it drives the rows.
struct CopyCall {
    source: Vec<u8>,
    target: Vec<u8>,
}

impl CopyCall {
    fn copy(&mut self) {
        self.target
            .par_chunks_mut(COPY_ITEM_BYTES)
            .zip(self.source.par_chunks(COPY_ITEM_BYTES))
            .for_each(|(to, from)| {
                for (to, from) in to
                    .chunks_mut(COPY_PIECE_BYTES)
                    .zip(from.chunks(COPY_PIECE_BYTES))
                {
                    to.copy_from_slice(from);
                }
            });
    }
}

impl Prepared for CopyCall {
    fn run(&mut self) -> Result<()> {
        self.copy();
        Ok(())
    }

    fn rotate(&mut self, _slot_mappings: &[Vec<i64>]) -> Result<()> {
        Err(Error::InvalidConfig(
            "the copy ceiling does not rotate".into(),
        ))
    }

    fn batch_unit(&self) -> usize {
        1
    }

    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        let start = Instant::now();
        for _ in 0..calls {
            self.copy();
        }
        Ok(start.elapsed().as_secs_f64() * 1e6)
    }

    fn flush_cache(&mut self) -> Result<()> {
        Ok(())
    }

    fn read_back(&mut self) -> Result<Caches> {
        Err(Error::InvalidConfig(
            "the copy ceiling has no caches to read back".into(),
        ))
    }
}

/// The CPU's model name, where the OS tells it.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
