//! One prepared call on the device: its launches (plain, programmatic, or replayed from a
//! captured graph, as `Options::mode` says), and the primitives the timing protocol drives.
//! The built-in kernels and users' kernels (`--kernel`) share all of it: a [`Kernel`] says
//! which function a call launches, in what grid, and how it takes its arguments.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::result::DriverError;
use cudarc::driver::sys::{self, CUstreamCaptureMode};
use cudarc::driver::{
    CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::shape;
use super::user::PagedKvParams;
use super::{Context, CudaBackend, FLUSH_BYTES, GRAPH_BATCH_CALLS};
use crate::backend::Prepared;
use crate::error::{Error, Result};
use crate::options::Mode;
use crate::problem::Problem;
use crate::workload::Caches;

/// The device buffers of one call (rotation gives each copy of the inputs its own set).
#[derive(Clone)]
pub(super) struct Args {
    pub(super) key: u64,
    pub(super) value: u64,
    pub(super) key_cache: u64,
    pub(super) value_cache: u64,
    pub(super) slots: u64,
    pub(super) k_scale: u64,
    pub(super) v_scale: u64,
}

/// How a kernel takes its arguments.
#[derive(Debug, Clone, Copy)]
pub(super) enum Abi {
    /// The built-in kernels: the seven pointers of [`Args`] in order, then `shape::Params`.
    BuiltIn(shape::Params),
    /// A user's kernel: one `PagedKvParams` by value, into which each set's pointers go.
    User(PagedKvParams),
}

/// Which kernel a call launches, and how.
pub(super) struct Kernel<'a> {
    pub(super) function: &'a CudaFunction,
    pub(super) grid: (u32, u32, u32),
    pub(super) block: u32,
    pub(super) abi: Abi,
    /// Launch with programmatic dependent launch: only for kernels that wait for the previous
    /// grid themselves (`griddepcontrol.wait`), as the built-in ones do.
    pub(super) programmatic: bool,
    /// The kernel in error messages: `reshape_and_cache_flash`, or a user's kernel and file.
    pub(super) label: String,
    /// A call not finished after this long is an error rather than a wait without end (users'
    /// kernels, which may hang); `None` waits as long as it takes.
    pub(super) timeout: Option<Duration>,
}

pub(super) struct CudaCall<'a> {
    backend: &'a CudaBackend,
    problem: Problem,
    kernel: Kernel<'a>,
    /// The call's own arguments first, then one per rotation copy.
    sets: Vec<Args>,
    /// The buffers of the rotation copies, freed with the call.
    rotation: Option<RotationBuffers>,
    /// cudagraph mode: a graph holding one call (for `run`, latency and cold samples), and one
    /// holding `batch_unit()` back-to-back calls cycling over `sets` (for batches); captured
    /// on first use.
    single: Option<CudaGraph>,
    batch: Option<CudaGraph>,
    /// `--ceiling pattern`: the pattern kernel and its launch, until [`Prepared::pattern`]
    /// swaps them in.
    pattern: Option<Kernel<'a>>,
    /// Whether the pattern kernel has taken the call's place.
    patterned: bool,
}

/// Device copies of a call's inputs for rotating timing.
struct RotationBuffers {
    _keys: CudaSlice<u8>,
    _values: CudaSlice<u8>,
    _slots: CudaSlice<i64>,
}

impl<'a> CudaCall<'a> {
    /// A call of `problem` launching `kernel` on `args`' buffers.
    pub(super) fn new(
        backend: &'a CudaBackend,
        problem: Problem,
        kernel: Kernel<'a>,
        args: Args,
        pattern: Option<Kernel<'a>>,
    ) -> Self {
        Self {
            backend,
            problem,
            kernel,
            sets: vec![args],
            rotation: None,
            single: None,
            batch: None,
            pattern,
            patterned: false,
        }
    }
}

impl CudaCall<'_> {
    fn stream(&self) -> &Arc<CudaStream> {
        &self.backend.stream
    }

    /// Enqueues one call with the given buffers.
    fn enqueue_with(&self, args: &Args) -> Result<()> {
        let kernel = &self.kernel;
        let config = LaunchConfig {
            grid_dim: kernel.grid,
            block_dim: (kernel.block, 1, 1),
            shared_mem_bytes: 0,
        };
        let params = match kernel.abi {
            Abi::BuiltIn(params) => params,
            Abi::User(template) => {
                let params = template.with_buffers(args);
                let mut launch = self.stream().launch_builder(kernel.function);
                launch.arg(&params);
                // SAFETY: the parameter block's pointers are live buffers of the sizes its
                // fields describe (set up in `prepare` or `rotate`); the kernel's signature is
                // the one the contract's header declares for it.
                unsafe { launch.launch(config) }.during(&format!("launching {}", kernel.label))?;
                return Ok(());
            }
        };
        if kernel.programmatic {
            return self.enqueue_programmatic(args, &params, config);
        }
        let a = args;
        let mut launch = self.stream().launch_builder(kernel.function);
        launch
            .arg(&a.key)
            .arg(&a.value)
            .arg(&a.key_cache)
            .arg(&a.value_cache)
            .arg(&a.slots)
            .arg(&a.k_scale)
            .arg(&a.v_scale)
            .arg(&params);
        // SAFETY: the pointers are live buffers of the sizes `params` describes (set up in
        // `prepare` or `rotate`, owned by the backend this call borrows or by the call).
        unsafe { launch.launch(config) }.during("launching reshape_and_cache_flash")?;
        Ok(())
    }

    /// One call through `cuLaunchKernelEx` with programmatic stream serialization allowed
    /// (cudarc's launch builder takes no launch attributes).
    fn enqueue_programmatic(
        &self,
        a: &Args,
        params: &shape::Params,
        config: LaunchConfig,
    ) -> Result<()> {
        let stream = self.stream();
        self.backend
            .ctx
            .bind_to_thread()
            .during("binding the context")?;
        // SAFETY: all-zero is a valid bit pattern for this plain C struct and union.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id =
            sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let launch_config = sys::CUlaunchConfig {
            gridDimX: config.grid_dim.0,
            gridDimY: config.grid_dim.1,
            gridDimZ: config.grid_dim.2,
            blockDimX: config.block_dim.0,
            blockDimY: config.block_dim.1,
            blockDimZ: config.block_dim.2,
            sharedMemBytes: config.shared_mem_bytes,
            hStream: stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: 1,
        };
        let mut params: [*mut std::ffi::c_void; 8] = [
            &a.key as *const u64 as *mut _,
            &a.value as *const u64 as *mut _,
            &a.key_cache as *const u64 as *mut _,
            &a.value_cache as *const u64 as *mut _,
            &a.slots as *const u64 as *mut _,
            &a.k_scale as *const u64 as *mut _,
            &a.v_scale as *const u64 as *mut _,
            params as *const shape::Params as *mut _,
        ];
        // SAFETY: the parameter array points at live values of the kernel's parameter types,
        // in its order (the driver copies them before returning); the pointers inside are live
        // buffers of the sizes `params` describes, as for the plain launch.
        unsafe {
            sys::cuLaunchKernelEx(
                &launch_config,
                self.kernel.function.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .during("launching reshape_and_cache_flash (programmatic dependent launch)")
    }

    /// Waits until everything enqueued has finished: as long as it takes, or for a kernel with
    /// a timeout, polling until then.
    fn synchronize(&self) -> Result<()> {
        let stream = self.stream();
        if self.kernel.timeout.is_none() {
            return stream
                .synchronize()
                .during(&format!("running {}", self.kernel.label));
        }
        // SAFETY: the stream is live; the query only reads its state.
        self.poll(|| unsafe { sys::cuStreamQuery(stream.cu_stream()) }.result())
    }

    /// Polls `query` (a stream or event query: `Ok` when done, `CUDA_ERROR_NOT_READY` while
    /// not) until it is done, fails, or the kernel's timeout passes. It spins for the first
    /// millisecond (most calls take microseconds, and the latency is timed around this wait),
    /// then sleeps between polls.
    fn poll(&self, query: impl Fn() -> std::result::Result<(), DriverError>) -> Result<()> {
        let kernel = &self.kernel;
        let timeout = kernel.timeout.unwrap_or(Duration::MAX);
        self.backend
            .ctx
            .bind_to_thread()
            .during("binding the context")?;
        let start = Instant::now();
        loop {
            match query() {
                Ok(()) => return Ok(()),
                Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => {}
                Err(error) => {
                    return Err(error).during(&format!(
                        "running {} (a fault leaves the GPU context unusable: every later CUDA \
                         call of this process fails)",
                        kernel.label
                    ))
                }
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Cuda {
                    what: format!("running {}", kernel.label),
                    source: format!(
                        "not finished after {} s (timed out); CUDA cannot stop a running kernel, \
                         so the GPU stays busy until this process ends",
                        timeout.as_secs()
                    )
                    .into(),
                });
            }
            if waited < Duration::from_millis(1) {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// A graph holding `calls` back-to-back calls that cycle through `sets`, uploaded.
    fn capture(&self, calls: usize, sets: &[Args]) -> Result<CudaGraph> {
        let stream = self.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .during("starting a graph capture")?;
        let mut enqueued = Ok(());
        for call in 0..calls {
            enqueued = self.enqueue_with(&sets[call % sets.len()]);
            if enqueued.is_err() {
                break;
            }
        }
        // End the capture whatever happened, so that the stream is usable again.
        let graph = stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .during("capturing a CUDA graph");
        enqueued?;
        let graph = graph?.ok_or_else(|| Error::Cuda {
            what: "capturing a CUDA graph".into(),
            source: "the captured graph is empty".into(),
        })?;
        graph.upload().during("uploading a CUDA graph")?;
        Ok(graph)
    }

    /// Enqueues one call as the mode issues it.
    fn enqueue_one(&mut self) -> Result<()> {
        match self.backend.mode {
            Mode::NoGraph => self.enqueue_with(&self.sets[0]),
            Mode::Cudagraph => {
                if self.single.is_none() {
                    // The call itself, whatever rotation says.
                    self.single = Some(self.capture(1, &self.sets[..1])?);
                }
                let graph = self.single.as_ref().expect("captured above");
                graph.launch().during("replaying a CUDA graph")
            }
        }
    }

    /// Enqueues `calls` back-to-back calls (1, or a whole number of `batch_unit()`s).
    fn enqueue_batch(&mut self, calls: usize) -> Result<()> {
        if calls == 1 {
            return self.enqueue_one();
        }
        match self.backend.mode {
            Mode::NoGraph => {
                for call in 0..calls {
                    self.enqueue_with(&self.sets[call % self.sets.len()])?;
                }
                Ok(())
            }
            Mode::Cudagraph => {
                let unit = self.batch_unit();
                if self.batch.is_none() {
                    self.batch = Some(self.capture(unit, &self.sets)?);
                }
                let graph = self.batch.as_ref().expect("captured above");
                for _ in 0..calls.div_ceil(unit) {
                    graph.launch().during("replaying a CUDA graph")?;
                }
                Ok(())
            }
        }
    }

    /// The buffer written before each cold call.
    fn flush_buffer(&self) -> Result<&CudaSlice<u8>> {
        if self.backend.flush_buffer.get().is_none() {
            let buffer = self
                .backend
                .alloc::<u8>(FLUSH_BYTES, "the L2 flush buffer")?;
            let _ = self.backend.flush_buffer.set(buffer);
        }
        Ok(self.backend.flush_buffer.get().expect("set above"))
    }
}

impl Prepared for CudaCall<'_> {
    fn run(&mut self) -> Result<()> {
        self.enqueue_one()?;
        self.synchronize()
    }

    /// Copies of the inputs made on the device, each starting on a 256-byte boundary as the
    /// originals do (for the 16-byte loads), with the given slots.
    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
        self.sets.truncate(1);
        self.batch = None;
        self.rotation = None;
        let copies = slot_mappings.len();
        if copies == 0 {
            return Ok(());
        }
        let input_bytes = self.problem.input_bytes() as usize;
        let stride = input_bytes.next_multiple_of(256);
        let tokens = self.problem.num_tokens;
        let backend = self.backend;
        let mut keys = backend.alloc::<u8>(copies * stride, "copies of the keys (--rotate)")?;
        let mut values = backend.alloc::<u8>(copies * stride, "copies of the values (--rotate)")?;
        let mut slots = backend.alloc::<i64>(copies * tokens, "copies of the slots (--rotate)")?;
        let stream = self.stream().clone();
        let originals = backend.inputs.as_ref().expect("set in prepare");
        for (copy, shifted) in slot_mappings.iter().enumerate() {
            let (at, slot_at) = (copy * stride, copy * tokens);
            stream
                .memcpy_dtod(
                    &originals.key.slice(..input_bytes),
                    &mut keys.slice_mut(at..at + input_bytes),
                )
                .and_then(|_| {
                    stream.memcpy_dtod(
                        &originals.value.slice(..input_bytes),
                        &mut values.slice_mut(at..at + input_bytes),
                    )
                })
                .and_then(|_| {
                    stream.memcpy_htod(shifted, &mut slots.slice_mut(slot_at..slot_at + tokens))
                })
                .during("copying the inputs (--rotate)")?;
            let args = Args {
                key: keys.slice(at..).device_ptr(&stream).0,
                value: values.slice(at..).device_ptr(&stream).0,
                slots: slots.slice(slot_at..).device_ptr(&stream).0,
                ..self.sets[0].clone()
            };
            self.sets.push(args);
        }
        self.synchronize()?;
        self.rotation = Some(RotationBuffers {
            _keys: keys,
            _values: values,
            _slots: slots,
        });
        Ok(())
    }

    fn batch_unit(&self) -> usize {
        let sets = self.sets.len();
        match self.backend.mode {
            // Whole rotations, and at least GRAPH_BATCH_CALLS calls, per graph.
            Mode::Cudagraph => sets * GRAPH_BATCH_CALLS.div_ceil(sets),
            Mode::NoGraph => sets,
        }
    }

    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        let start = self.backend.timing_event()?;
        let end = self.backend.timing_event()?;
        let stream = self.stream().clone();
        start.record(&stream).during("recording an event")?;
        self.enqueue_batch(calls)?;
        end.record(&stream).during("recording an event")?;
        if self.kernel.timeout.is_some() {
            // SAFETY: the event is live and recorded; the query only reads its state.
            self.poll(|| unsafe { cudarc::driver::result::event::query(end.cu_event()) })?;
        }
        let ms = start.elapsed_ms(&end).during("timing calls")? as f64;
        Ok(ms * 1000.0)
    }

    fn flush_cache(&mut self) -> Result<()> {
        let flush = self.flush_buffer()?;
        let stream = self.stream();
        // SAFETY: `flush` is a live device buffer of FLUSH_BYTES owned by the backend.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                flush.device_ptr(stream).0,
                0x5a,
                FLUSH_BYTES,
                stream.cu_stream(),
            )
        }
        .during("flushing L2")?;
        // Waiting keeps the flush out of the next call's events.
        self.synchronize()
    }

    fn read_back(&mut self) -> Result<Caches> {
        let caches = self.backend.caches.as_ref().expect("set in prepare");
        let len = self.problem.cache_bytes() as usize;
        let stream = self.stream();
        let key = stream
            .clone_dtoh(&caches.key.slice(..len))
            .during("reading the key cache")?;
        let value = stream
            .clone_dtoh(&caches.value.slice(..len))
            .during("reading the value cache")?;
        self.synchronize()?;
        Ok(Caches { key, value })
    }

    /// The pattern kernel takes the call's place: the same buffers (rotation copies included),
    /// its own grid and items per thread; graphs are captured anew on their next use, as the
    /// call's were, so that the pattern is issued exactly as the call was.
    fn pattern(&mut self) -> Result<bool> {
        if self.patterned {
            return Ok(true);
        }
        let Some(kernel) = self.pattern.take() else {
            return Ok(false);
        };
        self.patterned = true;
        self.kernel = kernel;
        self.single = None;
        self.batch = None;
        Ok(true)
    }
}
