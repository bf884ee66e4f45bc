//! A backend that gets one thing wrong, to check that the sweep and the verifier notice. All
//! delegation to the wrapped backend is in the one `impl Backend` and the one `impl Prepared`
//! below, so that a change to either trait is made here once.

use paged_kv_bench::backend::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use paged_kv_bench::problem::{Layout, Problem};
use paged_kv_bench::workload::{CacheFill, Caches, Inputs};
use paged_kv_bench::{Error, Result};

/// Which cache a flipped byte is in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cache {
    Key,
    Value,
}

/// What a [`Faulty`] backend gets wrong, in every call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Preparing a call of `num_tokens` tokens fails as a GPU allocation would.
    FailAt { num_tokens: usize },
    /// One byte of (head, element) of a token's slot is flipped: a wrong value.
    FlipWritten {
        cache: Cache,
        token: usize,
        head: usize,
        element: usize,
    },
    /// One byte of (head, element) of a slot that no token targets is flipped: a stray write.
    FlipUntouched {
        cache: Cache,
        slot: u64,
        head: usize,
        element: usize,
    },
    /// The token's keys and values are never written.
    DropToken { token: usize },
}

/// Another backend with one [`Fault`] injected.
pub struct Faulty {
    inner: Box<dyn Backend>,
    fault: Fault,
    /// Reported instead of the inner backend's kind.
    kind: Option<Kind>,
    /// Supported instead of the inner backend's layouts.
    layouts: Option<Vec<Layout>>,
    /// The slot mapping passed on when a token is dropped: it must outlive the call.
    slots: Vec<i64>,
}

impl Faulty {
    pub fn new(inner: Box<dyn Backend>, fault: Fault) -> Self {
        Self {
            inner,
            fault,
            kind: None,
            layouts: None,
            slots: Vec::new(),
        }
    }

    /// Poses as `implementation`, so that errors and reports name it (a CPU backend posing as
    /// CUDA fails the way a GPU runs out of memory).
    pub fn posing_as(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Claims only `layouts`, as the wgpu backend implements only NHD.
    pub fn only(mut self, layouts: &[Layout]) -> Self {
        self.layouts = Some(layouts.to_vec());
        self
    }
}

impl Backend for Faulty {
    fn kind(&self) -> Kind {
        self.kind.unwrap_or_else(|| self.inner.kind())
    }

    fn device(&self) -> DeviceInfo {
        self.inner.device()
    }

    fn supports(&self, layout: Layout) -> bool {
        match &self.layouts {
            Some(layouts) => layouts.contains(&layout),
            None => self.inner.supports(layout),
        }
    }

    fn footprint(&self, cache_bytes: u64, input_bytes: u64, num_tokens: usize) -> Footprint {
        self.inner.footprint(cache_bytes, input_bytes, num_tokens)
    }

    fn default_num_blocks(&self, block_bytes: u64) -> usize {
        self.inner.default_num_blocks(block_bytes)
    }

    fn default_max_time(&self) -> std::time::Duration {
        self.inner.default_max_time()
    }

    fn device_memory(&self) -> Option<u64> {
        self.inner.device_memory()
    }

    fn mode_note(&self) -> String {
        self.inner.mode_note()
    }

    fn mode_summary(&self) -> String {
        self.inner.mode_summary()
    }

    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        self.inner.copy_bandwidth_gbps()
    }

    fn reserve(&mut self, largest: &Problem) -> Result<()> {
        self.inner.reserve(largest)
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        mut inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        let Faulty {
            inner,
            fault,
            slots,
            ..
        } = self;
        // Flips address the element where the token's slot (or the given slot) lives.
        let flip = match *fault {
            Fault::FailAt { num_tokens } => {
                if problem.num_tokens == num_tokens {
                    return Err(Error::Cuda {
                        what: "allocating the key cache".into(),
                        source: "out of memory (CUDA_ERROR_OUT_OF_MEMORY)".into(),
                    });
                }
                None
            }
            Fault::FlipWritten {
                cache,
                token,
                head,
                element,
            } => Some((cache, inputs.slot_mapping[token] as u64, head, element)),
            Fault::FlipUntouched {
                cache,
                slot,
                head,
                element,
            } => Some((cache, slot, head, element)),
            Fault::DropToken { token } => {
                *slots = inputs.slot_mapping.to_vec();
                slots[token] = -1;
                inputs.slot_mapping = slots;
                None
            }
        };
        let call = inner.prepare(problem, inputs, fill)?;
        Ok(Box::new(FaultyCall {
            call,
            problem: *problem,
            flip,
        }))
    }
}

struct FaultyCall<'a> {
    call: Box<dyn Prepared + 'a>,
    problem: Problem,
    /// Cache, slot, head and element of the byte flipped on read-back.
    flip: Option<(Cache, u64, usize, usize)>,
}

impl Prepared for FaultyCall<'_> {
    fn run(&mut self) -> Result<()> {
        self.call.run()
    }

    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
        self.call.rotate(slot_mappings)
    }

    fn batch_unit(&self) -> usize {
        self.call.batch_unit()
    }

    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        self.call.time_batch(calls)
    }

    fn flush_cache(&mut self) -> Result<()> {
        self.call.flush_cache()
    }

    fn read_back(&mut self) -> Result<Caches> {
        let mut caches = self.call.read_back()?;
        if let Some((cache, slot, head, element)) = self.flip {
            let size = self.problem.cache_element_size();
            let index = (self.problem.cache_offset(slot, head) as usize + element) * size;
            let bytes = match cache {
                Cache::Key => &mut caches.key,
                Cache::Value => &mut caches.value,
            };
            // The element's last byte holds its sign and exponent: any flip changes the value.
            bytes[index + size - 1] ^= 0x41;
        }
        Ok(caches)
    }
}
