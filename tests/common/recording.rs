//! A backend that records what each row was handed and what the protocol asked of it, to check
//! that a row does not depend on the rows run before it in a sweep. It passes every call on to
//! the wrapped backend, but reports a made-up device time (a fixed time per call, by the row's
//! size) so that the batch sizes the protocol chooses are the same from run to run: what is
//! compared is structure, never speed.

use std::cell::RefCell;
use std::rc::Rc;

use paged_kv_bench::backend::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use paged_kv_bench::problem::{Layout, Problem};
use paged_kv_bench::workload::{CacheFill, Caches, Inputs};
use paged_kv_bench::Result;

/// What one row was given and did.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRecord {
    pub problem: Problem,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub slots: Vec<i64>,
    /// Keys' and values' scales of head 0 (per-tensor scales, in these tests).
    pub scales: (f32, f32),
    /// Both caches as the call found them, before it ran.
    pub caches_before: Caches,
    /// Calls per timed batch, in order (the first sized from the wall-clock latency).
    pub batches: Vec<usize>,
    /// The wrapped backend's resource count (see [`Recording::new`]) when the row was
    /// prepared.
    pub resources_before: usize,
}

/// Everything recorded, shared with the test (the sweep owns the backend).
#[derive(Debug, Default)]
pub struct Log {
    /// The resource count after `Backend::reserve`, if the sweep called it.
    pub reserved: Option<usize>,
    pub rows: Vec<RowRecord>,
    /// The resource count when the backend was dropped, after the last row.
    pub resources_at_end: Option<usize>,
}

impl Log {
    /// Resources the wrapped backend acquired while row `index` was prepared and run.
    pub fn acquired_by(&self, index: usize) -> usize {
        let next = match self.rows.get(index + 1) {
            Some(row) => row.resources_before,
            None => self.resources_at_end.expect("the backend was dropped"),
        };
        next - self.rows[index].resources_before
    }
}

/// Wraps `B`, counting its resources with `resources` (e.g. input buffers allocated).
pub struct Recording<B: Backend> {
    inner: B,
    resources: fn(&B) -> usize,
    log: Rc<RefCell<Log>>,
}

impl<B: Backend> Recording<B> {
    pub fn new(inner: B, resources: fn(&B) -> usize) -> (Self, Rc<RefCell<Log>>) {
        let log = Rc::new(RefCell::new(Log::default()));
        let recording = Self {
            inner,
            resources,
            log: log.clone(),
        };
        (recording, log)
    }
}

impl<B: Backend> Drop for Recording<B> {
    fn drop(&mut self) {
        self.log.borrow_mut().resources_at_end = Some((self.resources)(&self.inner));
    }
}

impl<B: Backend> Backend for Recording<B> {
    fn kind(&self) -> Kind {
        self.inner.kind()
    }

    fn device(&self) -> DeviceInfo {
        self.inner.device()
    }

    fn supports(&self, layout: Layout) -> bool {
        self.inner.supports(layout)
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
        self.inner.reserve(largest)?;
        self.log.borrow_mut().reserved = Some((self.resources)(&self.inner));
        Ok(())
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        let resources_before = (self.resources)(&self.inner);
        let Recording { inner, log, .. } = self;
        let mut call = inner.prepare(problem, inputs, fill)?;
        let caches_before = call.read_back()?;
        log.borrow_mut().rows.push(RowRecord {
            problem: *problem,
            key: inputs.key.to_vec(),
            value: inputs.value.to_vec(),
            slots: inputs.slot_mapping.to_vec(),
            scales: (inputs.k_scale.of_head(0), inputs.v_scale.of_head(0)),
            caches_before,
            batches: Vec::new(),
            resources_before,
        });
        Ok(Box::new(RecordingCall {
            call,
            per_call_us: 50.0 + problem.num_tokens as f64,
            log: log.clone(),
        }))
    }
}

struct RecordingCall<'a> {
    call: Box<dyn Prepared + 'a>,
    /// The made-up device time of one call.
    per_call_us: f64,
    log: Rc<RefCell<Log>>,
}

impl Prepared for RecordingCall<'_> {
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
        self.call.time_batch(calls)?;
        let mut log = self.log.borrow_mut();
        log.rows
            .last_mut()
            .expect("prepare recorded the row")
            .batches
            .push(calls);
        Ok(calls as f64 * self.per_call_us)
    }

    fn flush_cache(&mut self) -> Result<()> {
        self.call.flush_cache()
    }

    fn read_back(&mut self) -> Result<Caches> {
        self.call.read_back()
    }
}
