//! One call of the kernel: its buffers, bind groups and dispatches, built step by step from
//! the plan; recording and running it; measuring it.
//!
//! A call is one compute pass: the fp8 table build if the call has one, then per batch of
//! tokens the slot-order passes if it takes them, and one kernel dispatch per group of cache
//! chunks.

use super::abi::{
    GpuOrderParams, GpuParams, GpuScale, BUCKET_COUNTS_BINDING, BUCKET_STARTS_BINDING,
    FP8_LUT_BINDING, FP8_THRESHOLDS_BINDING, KEY_CACHE_WORDS_BINDING, KEY_CHUNK0_BINDING,
    KEY_IN_BINDING, KEY_IN_HI_BINDING, KEY_WORDS_BINDING, ORDER_BINDING, ORDER_OUT_BINDING,
    ORDER_PARAMS_BINDING, PARAMS_BINDING, SCAN_COUNTS_BINDING, SCATTER_RANKS_BINDING,
    SCATTER_STARTS_BINDING, SLOTS_BINDING, TABLE_BYTES, TOKEN_RANKS_BINDING,
    VALUE_CACHE_WORDS_BINDING, VALUE_CHUNK0_BINDING, VALUE_IN_BINDING, VALUE_IN_HI_BINDING,
    VALUE_WORDS_BINDING,
};
use super::caches::DeviceCaches;
use super::device::{Gpu, Window};
use super::fp8_tables::Fp8Table;
use super::inputs::{self, Input, InputPool, Role};
use super::plan::{input_token_bytes, Batch, Fp8Path, Kernel, Plan};
use super::WgpuBackend;
use crate::backend::Prepared;
use crate::error::{Error, Result};
use crate::problem::{Fp8Format, Problem};
use crate::workload::{Caches, Inputs};

/// One dispatch of a call.
pub(super) struct Dispatch {
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub grid: (u32, u32),
}

/// Records dispatches into a pass, in order.
pub(super) fn record_dispatches(pass: &mut wgpu::ComputePass, dispatches: &[Dispatch]) {
    for dispatch in dispatches {
        pass.set_pipeline(&dispatch.pipeline);
        pass.set_bind_group(0, &dispatch.bind_group, &[]);
        pass.dispatch_workgroups(dispatch.grid.0, dispatch.grid.1, 1);
    }
}

/// The dispatches of one call, in order, and the buffers they use: inputs, slots, tables and
/// parameters, freed with it.
#[derive(Default)]
pub(super) struct CallWork {
    pub dispatches: Vec<Dispatch>,
    buffers: Vec<wgpu::Buffer>,
}

impl CallWork {
    /// The table the kernel reads, and its binding: its build goes first in the call's pass.
    /// Without one, a dummy nothing reads.
    fn add_encoder_table(
        &mut self,
        gpu: &Gpu,
        table: Option<(u32, Fp8Table)>,
    ) -> Result<(u32, wgpu::Buffer)> {
        let Some((binding, table)) = table else {
            let dummy = gpu.scoped("allocating a buffer", || {
                gpu.buffer("no fp8 tables", TABLE_BYTES, wgpu::BufferUsages::UNIFORM)
            })?;
            return Ok((FP8_THRESHOLDS_BINDING, dummy));
        };
        self.dispatches.push(table.build);
        self.buffers.push(table.params);
        self.buffers.extend(table.extra);
        Ok((binding, table.table))
    }
}

impl Drop for CallWork {
    fn drop(&mut self) {
        for buffer in &self.buffers {
            buffer.destroy();
        }
    }
}

impl WgpuBackend {
    /// Builds the dispatches of one call of `problem` on the current caches: the encoder's
    /// table, then batch by batch the inputs' upload, the token order and the kernel's bind
    /// groups.
    /// The main call (`kept`) takes its input buffers from the backend's pool; rotation copies
    /// allocate their own.
    pub(super) fn build_call(
        &mut self,
        problem: &Problem,
        plan: &Plan,
        inputs: &Inputs,
        kept: bool,
        pattern: bool,
    ) -> Result<CallWork> {
        // Per-tensor scales in the parameters; per-head ones (both tensors' given per head,
        // a per-tensor one repeated) after the slots, and in the lookup table's build.
        let (k_scale, v_scale) = (
            GpuScale::new(inputs.k_scale.of_head(0)),
            GpuScale::new(inputs.v_scale.of_head(0)),
        );
        let per_head = inputs.per_head_scales() && problem.cache_dtype.is_fp8();
        let head_scales: Vec<GpuScale> = if per_head {
            let heads = 0..problem.num_heads;
            heads
                .clone()
                .map(|h| GpuScale::new(inputs.k_scale.of_head(h)))
                .chain(heads.map(|h| GpuScale::new(inputs.v_scale.of_head(h))))
                .collect()
        } else {
            Vec::new()
        };
        let format = problem.cache_dtype.fp8().unwrap_or(Fp8Format::E4m3);
        // The pattern kernel reads no scale and builds no table.
        let fp8 = if pattern {
            Fp8Path::Plain
        } else {
            plan.fp8_path(
                problem,
                k_scale.table_applies(format) && v_scale.table_applies(format),
                per_head,
                (
                    self.limits.max_storage_buffers_per_shader_stage,
                    self.max_binding,
                ),
                &self.tuning,
            )
        };
        let gpu = &mut self.gpu;
        let kernel = if pattern {
            gpu.pipeline(
                plan.pattern_entry_point(),
                &plan.constants(problem, fp8, false),
            )?
        } else {
            gpu.pipeline(
                plan.entry_point(fp8),
                &plan.constants(problem, fp8, per_head),
            )?
        };
        let order_passes = match plan.order {
            Some(_) => Some([
                gpu.pipeline("order_count", &[])?,
                gpu.pipeline("order_scan", &[])?,
                gpu.pipeline("order_scatter", &[])?,
            ]),
            None => None,
        };
        let mut work = CallWork::default();
        let encoder_table = match fp8 {
            Fp8Path::Lut => Some((
                FP8_LUT_BINDING,
                Fp8Table::lookup(
                    gpu,
                    problem.dtype,
                    format,
                    [k_scale, v_scale],
                    &head_scales,
                    self.nan_sign,
                    plan.fp8_fast,
                )?,
            )),
            Fp8Path::Thresholds => Some((
                FP8_THRESHOLDS_BINDING,
                Fp8Table::thresholds(gpu, format, k_scale, v_scale)?,
            )),
            Fp8Path::Plain => None,
        };
        let encoder_table = work.add_encoder_table(gpu, encoder_table)?;
        let mut builder = CallBuilder {
            gpu: &self.gpu,
            caches: self.caches.as_ref().expect("prepare allocated the caches"),
            problem,
            plan,
            inputs,
            head_scales: bytemuck::cast_slice(&head_scales).to_vec(),
            kernel,
            order_passes,
            encoder_table,
            params: GpuParams {
                num_tokens: 0,
                num_slots: problem.num_slots() as u32,
                first_chunk: 0,
                num_units: 0,
                nan_sign: self.nan_sign,
                split_input: u32::MAX,
                scales_at: 0,
                in_token_stride: plan.in_token_stride(problem),
                k_scale,
                v_scale,
            },
            work,
            pool: kept.then_some(&mut self.input_pool),
            pattern,
        };
        for (index, batch) in plan.batches(problem).iter().enumerate() {
            builder.add_batch(index, batch)?;
        }
        let CallBuilder {
            mut work,
            encoder_table: (_, table),
            ..
        } = builder;
        work.buffers.push(table);
        Ok(work)
    }
}

/// A call under construction.
struct CallBuilder<'a> {
    gpu: &'a Gpu,
    caches: &'a DeviceCaches,
    problem: &'a Problem,
    plan: &'a Plan,
    inputs: &'a Inputs<'a>,
    /// Per-head scales as the kernel reads them after the slots (empty for per-tensor ones).
    head_scales: Vec<u8>,
    kernel: wgpu::ComputePipeline,
    /// `order_count`, `order_scan`, `order_scatter`, if the call takes them.
    order_passes: Option<[wgpu::ComputePipeline; 3]>,
    /// The kernel's fp8 table and its binding.
    encoder_table: (u32, wgpu::Buffer),
    /// The kernel's parameters but those of a batch and a group.
    params: GpuParams,
    work: CallWork,
    /// The backend's kept input buffers; `None` for a rotation copy, which uploads its own.
    pool: Option<&'a mut InputPool>,
    /// `--ceiling pattern`: the kernel is the pattern kernel, which binds no fp8 table.
    pattern: bool,
}

/// A batch's inputs on the device: keys and values in two parts (the second unused when the
/// batch has one range), and the slots.
struct BatchInputs {
    key: Input,
    value: Input,
    key_hi: Input,
    value_hi: Input,
    slots: Input,
    split_input: u32,
}

impl CallBuilder<'_> {
    /// The dispatches of one batch (the `index`th of the call): its token order's passes, then
    /// one kernel dispatch per group of chunks.
    fn add_batch(&mut self, index: usize, batch: &Batch) -> Result<()> {
        let inputs = self.upload_inputs(index, batch)?;
        let order = self.token_order(batch, &inputs.slots)?;
        let grid = self
            .gpu
            .grid(self.plan.threads(self.problem, batch.tokens))?;
        let num_units = batch.tokens as u64 * self.plan.units_per_token(self.problem);
        for first_chunk in self.plan.groups() {
            let params = GpuParams {
                num_tokens: batch.tokens as u32,
                first_chunk: first_chunk as u32,
                num_units: num_units as u32,
                split_input: inputs.split_input,
                // In (lo, hi) pairs: one per slot.
                scales_at: batch.tokens as u32,
                ..self.params
            };
            let bind_group = self.bind_kernel(&params, &inputs, &order)?;
            self.work.dispatches.push(Dispatch {
                pipeline: self.kernel.clone(),
                bind_group,
                grid,
            });
        }
        let BatchInputs {
            key,
            value,
            key_hi,
            value_hi,
            slots,
            ..
        } = inputs;
        // Kept buffers belong to the pool; the call frees only its own.
        for input in [key, value, key_hi, value_hi, slots] {
            if !input.kept {
                self.work.buffers.push(input.buffer);
            }
        }
        self.work.buffers.push(order);
        Ok(())
    }

    /// A buffer for `role` of batch `index`: from the backend's pool for the main call, a new
    /// one (freed with the call) for a rotation copy, which must not share the main call's.
    fn input_buffer(&mut self, index: usize, role: Role, size: u64) -> Result<Input> {
        let gpu = self.gpu;
        match self.pool.as_deref_mut() {
            Some(pool) => pool.get(gpu, index, role, size),
            None => {
                let size = size.max(16).next_multiple_of(16);
                let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
                let buffer = gpu.scoped("allocating the input buffers", || {
                    gpu.buffer("rotation input", size, usage)
                })?;
                Ok(Input {
                    buffer,
                    size,
                    kept: false,
                })
            }
        }
    }

    /// Uploads the batch's keys, values and slots (int64, which the shader reads as (lo, hi)
    /// pairs), and after the slots the per-head scales if any. A token range of strided
    /// inputs is uploaded from its first token's keys to its last's: its span, what lies
    /// between the rows (a fused tensor's other parts) included, as the kernel reads it.
    fn upload_inputs(&mut self, index: usize, batch: &Batch) -> Result<BatchInputs> {
        let (gpu, problem) = (self.gpu, self.problem);
        let input_row = input_token_bytes(problem) as usize;
        let row_bytes = problem.token_elements() * problem.dtype.size();
        // The same buffers and sizes that `Backend::reserve` allocates for the largest call.
        let mut buffers = Vec::new();
        let scale_bytes = self.head_scales.len() as u64;
        for (role, bytes) in inputs::batch_buffers(problem, batch, scale_bytes) {
            buffers.push(self.input_buffer(index, role, bytes)?);
        }
        let [key, value, key_hi, value_hi, slots]: [Input; 5] = buffers
            .try_into()
            .map_err(|_| Error::wgpu("splitting the inputs", "not five buffers"))?;
        for (part, (start, count)) in batch.parts().enumerate() {
            let begin = batch.first_token + start;
            let first = begin * input_row;
            let bytes = first..first + (count - 1) * input_row + row_bytes;
            let (key, value) = if part == 0 {
                (&key, &value)
            } else {
                (&key_hi, &value_hi)
            };
            gpu.upload(&key.buffer, &self.inputs.key[bytes.clone()])?;
            gpu.upload(&value.buffer, &self.inputs.value[bytes])?;
        }
        let mut slot_bytes: Vec<u8> = self.inputs.slot_mapping
            [batch.first_token..batch.first_token + batch.tokens]
            .iter()
            .flat_map(|slot| slot.to_le_bytes())
            .collect();
        slot_bytes.extend_from_slice(&self.head_scales);
        gpu.upload(&slots.buffer, &slot_bytes)?;
        Ok(BatchInputs {
            key,
            value,
            key_hi,
            value_hi,
            slots,
            split_input: batch.split_input(input_row),
        })
    }

    /// The batch's token order: the output of the slot-order passes (added to the call), or
    /// a dummy nothing reads.
    fn token_order(&mut self, batch: &Batch, slots: &Input) -> Result<wgpu::Buffer> {
        let gpu = self.gpu;
        let (Some(order_plan), Some([count, scan, scatter])) =
            (self.plan.order, &self.order_passes)
        else {
            return gpu.scoped("allocating a buffer", || {
                gpu.buffer("no token order", 16, wgpu::BufferUsages::STORAGE)
            });
        };
        let order_params = GpuOrderParams {
            num_tokens: batch.tokens as u32,
            num_slots: self.problem.num_slots() as u32,
            slots_per_bucket: order_plan.slots_per_bucket,
            buckets: order_plan.buckets,
        };
        let bucket_bytes = 4 * (order_plan.buckets as u64 + 1);
        let token_grid = gpu.grid(batch.tokens as u64)?;
        let (order, passes, buffers) = gpu.scoped("allocating the slot-order buffers", || {
            let storage = wgpu::BufferUsages::STORAGE;
            let uniform = gpu.uniform("order params", &order_params);
            // Zero on creation; the scan pass clears them again for the next call.
            let counts = gpu.buffer("bucket counts", bucket_bytes, storage);
            let starts = gpu.buffer("bucket starts", bucket_bytes, storage);
            let ranks = gpu.buffer("token ranks", 4 * batch.tokens as u64, storage);
            let order = gpu.buffer("token order", 4 * batch.tokens as u64, storage);
            let passes = [
                Dispatch {
                    pipeline: count.clone(),
                    bind_group: gpu.bind_windows(
                        count,
                        &[
                            (SLOTS_BINDING, slots.window()),
                            (ORDER_PARAMS_BINDING, Window::whole(&uniform)),
                            (BUCKET_COUNTS_BINDING, Window::whole(&counts)),
                            (TOKEN_RANKS_BINDING, Window::whole(&ranks)),
                        ],
                    ),
                    grid: token_grid,
                },
                Dispatch {
                    pipeline: scan.clone(),
                    bind_group: gpu.bind_group(
                        scan,
                        &[
                            (ORDER_PARAMS_BINDING, &uniform),
                            (SCAN_COUNTS_BINDING, &counts),
                            (BUCKET_STARTS_BINDING, &starts),
                        ],
                    ),
                    grid: (1, 1),
                },
                Dispatch {
                    pipeline: scatter.clone(),
                    bind_group: gpu.bind_windows(
                        scatter,
                        &[
                            (SLOTS_BINDING, slots.window()),
                            (ORDER_PARAMS_BINDING, Window::whole(&uniform)),
                            (SCATTER_RANKS_BINDING, Window::whole(&ranks)),
                            (SCATTER_STARTS_BINDING, Window::whole(&starts)),
                            (ORDER_OUT_BINDING, Window::whole(&order)),
                        ],
                    ),
                    grid: token_grid,
                },
            ];
            (order, passes, [uniform, counts, starts, ranks])
        })?;
        self.work.dispatches.extend(passes);
        self.work.buffers.extend(buffers);
        Ok(order)
    }

    /// The kernel's bind group for one group of chunks, and its parameters' buffer (added to
    /// the call).
    fn bind_kernel(
        &mut self,
        params: &GpuParams,
        inputs: &BatchInputs,
        order: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        let (gpu, caches) = (self.gpu, self.caches);
        let first_chunk = params.first_chunk as usize;
        let (group, mut buffers) = gpu.scoped("binding the caches", || {
            let uniform = gpu.uniform("params", params);
            if self.plan.kernel == Kernel::Words {
                let group = gpu.bind_windows(
                    &self.kernel,
                    &[
                        (PARAMS_BINDING, Window::whole(&uniform)),
                        (SLOTS_BINDING, inputs.slots.window()),
                        (KEY_WORDS_BINDING, inputs.key.window()),
                        (VALUE_WORDS_BINDING, inputs.value.window()),
                        (KEY_CACHE_WORDS_BINDING, caches.chunk(false, first_chunk)),
                        (VALUE_CACHE_WORDS_BINDING, caches.chunk(true, first_chunk)),
                    ],
                );
                return (group, vec![uniform]);
            }
            let (table_binding, table) = &self.encoder_table;
            let mut entries: Vec<(u32, Window)> = vec![
                (PARAMS_BINDING, Window::whole(&uniform)),
                (KEY_IN_BINDING, inputs.key.window()),
                (VALUE_IN_BINDING, inputs.value.window()),
                (SLOTS_BINDING, inputs.slots.window()),
                (ORDER_BINDING, Window::whole(order)),
                (KEY_IN_HI_BINDING, inputs.key_hi.window()),
                (VALUE_IN_HI_BINDING, inputs.value_hi.window()),
            ];
            if !self.pattern {
                entries.push((*table_binding, Window::whole(table)));
            }
            // Chunks past the end of the cache (the one-chunk kernel binds a group of one) are
            // bound to small distinct buffers no thread writes (writable bindings must not
            // alias): two for each.
            let group_size = self.plan.kernel.chunks();
            let chunks = caches.chunk_bytes.len();
            let missing = (first_chunk + group_size).saturating_sub(chunks);
            let mut buffers: Vec<wgpu::Buffer> = (0..2 * missing)
                .map(|_| gpu.buffer("unused chunk", 16, wgpu::BufferUsages::STORAGE))
                .collect();
            let mut spare = buffers.iter();
            for slot in 0..group_size {
                let chunk = first_chunk + slot;
                let (k, v) = if chunk < chunks {
                    (caches.chunk(false, chunk), caches.chunk(true, chunk))
                } else {
                    let mut next =
                        || Window::whole(spare.next().expect("two spares per missing chunk"));
                    (next(), next())
                };
                entries.push((KEY_CHUNK0_BINDING + slot as u32, k));
                entries.push((VALUE_CHUNK0_BINDING + slot as u32, v));
            }
            let group = gpu.bind_windows(&self.kernel, &entries);
            buffers.push(uniform);
            (group, buffers)
        })?;
        self.work.buffers.append(&mut buffers);
        Ok(group)
    }
}

pub(super) struct WgpuCall<'a> {
    pub backend: &'a mut WgpuBackend,
    pub problem: Problem,
    pub plan: Plan,
    /// The host inputs, from which rotating timing builds its copies.
    pub inputs: Inputs<'a>,
    pub work: CallWork,
    /// Rotating inputs: further calls built like this one, each with its own upload of the
    /// inputs and its own slots, recorded in turn after it.
    pub copies: Vec<CallWork>,
    /// The slots of the rotation copies, for rebuilding them as pattern calls.
    pub rotation: Vec<Vec<i64>>,
    /// `--ceiling pattern`: the call and its copies run the pattern kernel.
    pub pattern: bool,
}

impl WgpuCall<'_> {
    fn record(&self, pass: &mut wgpu::ComputePass) {
        record_dispatches(pass, &self.work.dispatches);
    }

    /// The call and its rotation copies, one after another.
    fn record_rotation(&self, pass: &mut wgpu::ComputePass) {
        self.record(pass);
        for copy in &self.copies {
            record_dispatches(pass, &copy.dispatches);
        }
    }

    /// One call: record, submit, wait. Errors land in the uncaptured-error list, which the
    /// wait checks: no error scopes here, so that the latency loop times only the call.
    fn call(&self) -> Result<()> {
        self.backend.gpu.run_pass(|pass| self.record(pass))
    }
}

impl Prepared for WgpuCall<'_> {
    fn run(&mut self) -> Result<()> {
        self.call()
    }

    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
        // The old copies' buffers go first: copies of a large call are large.
        self.copies.clear();
        self.rotation = slot_mappings.to_vec();
        for slots in slot_mappings {
            let inputs = Inputs {
                slot_mapping: slots,
                ..self.inputs
            };
            let copy =
                self.backend
                    .build_call(&self.problem, &self.plan, &inputs, false, self.pattern)?;
            self.copies.push(copy);
        }
        Ok(())
    }

    fn batch_unit(&self) -> usize {
        1 + self.copies.len()
    }

    /// The calls in one compute pass between timestamp queries at its boundaries (wgpu puts a
    /// barrier between dispatches that write the same buffers, so they run one after
    /// another), whole rotations at a time.
    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        let this = &*self;
        if calls == 1 {
            return this.backend.time_pass(1, &|pass| this.record(pass));
        }
        let units = calls.div_ceil(this.batch_unit());
        let per_unit = this
            .backend
            .time_pass(units, &|pass| this.record_rotation(pass))?;
        Ok(per_unit * units as f64)
    }

    fn flush_cache(&mut self) -> Result<()> {
        self.backend.ensure_flush()?;
        self.backend.flush_caches()
    }

    /// The call rebuilt with the pattern entry point (the same plan, dispatches, kept input
    /// buffers and cache chunks; no fp8 table build), its rotation copies too.
    fn pattern(&mut self) -> Result<bool> {
        if !self.pattern {
            self.pattern = true;
            self.work =
                self.backend
                    .build_call(&self.problem, &self.plan, &self.inputs, true, true)?;
            let rotation = std::mem::take(&mut self.rotation);
            self.rotate(&rotation)?;
        }
        Ok(true)
    }

    fn read_back(&mut self) -> Result<Caches> {
        let backend = &*self.backend;
        backend
            .caches
            .as_ref()
            .expect("prepare allocated the caches")
            .download(&backend.gpu, self.problem.cache_bytes())
    }
}
