//! The CPU backend: the reference semantics, run in parallel over cache blocks. It makes
//! `--implementation cpu` a complete benchmark on any machine, and is the baseline the GPU
//! backends are checked against.

use rayon::prelude::*;

use super::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use crate::error::{Error, Result};
use crate::problem::{Layout, Problem};
use crate::reference;
use crate::workload::{fill_random, CacheFill, Caches, Inputs};

/// Bytes written to evict the CPU's caches before a cold call: larger than any last-level
/// cache of current server CPUs.
const FLUSH_BYTES: usize = 512 << 20;

/// Bytes of each buffer in the copy-bandwidth measurement.
const COPY_BYTES: usize = 512 << 20;

/// Caches live in host memory and are kept between calls of the same size.
pub struct CpuBackend {
    caches: Caches,
    /// The seed of the random fill the caches hold, if they hold one unchanged in size.
    random_fill: Option<u64>,
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
            flush_buffer: Vec::new(),
        }
    }
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

    fn device_memory(&self) -> Option<u64> {
        None
    }

    fn mode_note(&self) -> String {
        "--mode does not apply: plain calls, timed with the host clock".into()
    }

    fn mode_summary(&self) -> String {
        "host clock".into()
    }

    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        let source = vec![1u8; COPY_BYTES];
        let mut target = vec![0u8; COPY_BYTES];
        let chunk = 4 << 20;
        let mut seconds: Vec<f64> = (0..6)
            .map(|_| {
                let start = std::time::Instant::now();
                target
                    .par_chunks_mut(chunk)
                    .zip(source.par_chunks(chunk))
                    .for_each(|(to, from)| to.copy_from_slice(from));
                start.elapsed().as_secs_f64()
            })
            .skip(1) // The first pass also faults the target's pages in.
            .collect();
        seconds.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        Ok(Some(2.0 * COPY_BYTES as f64 / median / 1e9))
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
                if self.random_fill != Some(seed) || self.caches.key.len() != bytes {
                    self.caches.key.resize(bytes, 0);
                    self.caches.value.resize(bytes, 0);
                    fill_random(&mut self.caches.key, seed);
                    fill_random(&mut self.caches.value, seed.wrapping_add(1));
                    self.random_fill = Some(seed);
                }
            }
        }
        Ok(Box::new(CpuCall {
            problem: *problem,
            inputs,
            copies: Vec::new(),
            caches: &mut self.caches,
            flush_buffer: &mut self.flush_buffer,
            flush_pass: 0,
        }))
    }
}

struct CpuCall<'a> {
    problem: Problem,
    inputs: Inputs<'a>,
    /// Rotating inputs: further copies of the keys and values, each with its own slots.
    copies: Vec<(Vec<u8>, Vec<u8>, Vec<i64>)>,
    caches: &'a mut Caches,
    flush_buffer: &'a mut Vec<u8>,
    /// Changes the flush's byte each time, so that no write can be skipped as a no-op.
    flush_pass: u8,
}

/// One call: tokens sorted by slot, grouped by cache block; each touched block is a disjoint
/// part of both caches, so blocks are written in parallel.
fn write_all(problem: &Problem, inputs: &Inputs, caches: &mut Caches) {
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
    work.into_par_iter()
        .for_each(|(first_element, key_block, value_block, group)| {
            for &(_, token) in group {
                reference::write_token(
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
        write_all(&self.problem, &self.inputs, self.caches);
        Ok(())
    }

    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
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
        let start = std::time::Instant::now();
        for inputs in rotation.iter().cycle().take(calls) {
            write_all(problem, inputs, self.caches);
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
