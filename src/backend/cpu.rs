//! The CPU backend: the reference semantics, run in parallel over cache blocks. It makes
//! `--implementation cpu` a complete benchmark on any machine, and is the baseline the GPU
//! backends are checked against.

use rayon::prelude::*;

use super::{Backend, DeviceInfo, Footprint, Implementation, Prepared};
use crate::error::Result;
use crate::problem::{Layout, Problem};
use crate::reference;
use crate::timing::{self, Mode, Protocol, Samples};
use crate::workload::{fill_random, CacheFill, Caches, Inputs};

/// Caches live in host memory and are kept between calls of the same size.
pub struct CpuBackend {
    caches: Caches,
    /// The seed of the random fill the caches hold, if they hold one unchanged in size.
    random_fill: Option<u64>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self {
            caches: Caches {
                key: Vec::new(),
                value: Vec::new(),
            },
            random_fill: None,
        }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn implementation(&self) -> Implementation {
        Implementation::Cpu
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

    fn mode_note(&self, _mode: Mode) -> String {
        "--mode does not apply: plain calls, timed with the host clock".into()
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        problem.validate()?;
        problem.validate_slots(inputs.slot_mapping)?;
        let bytes = problem.cache_bytes() as usize;
        match fill {
            CacheFill::Copy(caches) => {
                assert_eq!(caches.key.len(), bytes, "key cache size");
                assert_eq!(caches.value.len(), bytes, "value cache size");
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
            caches: &mut self.caches,
        }))
    }
}

struct CpuCall<'a> {
    problem: Problem,
    inputs: Inputs<'a>,
    caches: &'a mut Caches,
}

impl CpuCall<'_> {
    /// One call: tokens sorted by slot, grouped by cache block; each touched block is a
    /// disjoint part of both caches, so blocks are written in parallel.
    fn call(&mut self) {
        let problem = &self.problem;
        let block_size = problem.block_size as u64;
        let mut order: Vec<(u64, usize)> = self
            .inputs
            .slot_mapping
            .iter()
            .enumerate()
            .filter(|(_, slot)| **slot >= 0 && (**slot as u64) < problem.num_slots())
            .map(|(token, slot)| (*slot as u64, token))
            .collect();
        order.sort_unstable();

        let block_elements = problem.strides().block;
        let block_bytes = block_elements as usize * problem.cache_element_size();
        let mut key_rest = &mut self.caches.key[..];
        let mut value_rest = &mut self.caches.value[..];
        let mut next_block = 0;
        let mut work = Vec::new();
        for group in order.chunk_by(|a, b| a.0 / block_size == b.0 / block_size) {
            let block = group[0].0 / block_size;
            let skip = (block - next_block) as usize * block_bytes;
            let (key_block, rest) = std::mem::take(&mut key_rest)[skip..].split_at_mut(block_bytes);
            key_rest = rest;
            let (value_block, rest) =
                std::mem::take(&mut value_rest)[skip..].split_at_mut(block_bytes);
            value_rest = rest;
            next_block = block + 1;
            work.push((block * block_elements, key_block, value_block, group));
        }
        let inputs = &self.inputs;
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
}

impl Prepared for CpuCall<'_> {
    fn run(&mut self) -> Result<()> {
        self.call();
        Ok(())
    }

    fn time(&mut self, protocol: &Protocol) -> Result<Samples> {
        timing::host_timed(protocol, || {
            self.call();
            Ok(())
        })
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
