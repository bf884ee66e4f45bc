//! How one call maps onto buffers, kernels and dispatches on an adapter: pure functions of the
//! problem, the adapter's limits and the tuning, so that they are tested here without a
//! device.

use crate::error::{Bytes, Error, Result};
use crate::options::WgpuTuning;
use crate::problem::Problem;

use super::abi::{
    flag, input_kind, storage_bindings, UnitKernel, CHUNKS, NARROW_KERNEL, ONE_KERNEL, WIDE_CHUNKS,
    WIDE_KERNEL, WORKGROUP,
};
pub(super) use super::fp8_plan::Fp8Path;
use super::fp8_tables::encoder_constants;

/// The most 16-byte units per thread the tuning may ask for.
const MAX_UNITS: u32 = 8;
/// Pages of 2 MiB (over both caches) past which calls take their tokens in slot order, where
/// the caches are wgpu's own allocations: on an H100, 2 x 8 GiB caches ran 4096 random tokens
/// (some 5200 pages) at 99% of copy speed as they come and at 91% in slot order, 2 x 32 GiB
/// ones (some 7200 pages) at 66% and 76%. Dedicated allocations do not need it: there 2 x 32
/// GiB ran 2048 to 65536 tokens 1 to 11% faster as they come than in slot order (T = 8192:
/// 404.8 against 419.6 us; BENCHMARKS.md, session 4).
const TRANSLATION_REACH_PAGES: u64 = 6000;
/// Buckets (slot ranges) of the slot-order pass by default.
const ORDER_BUCKETS: u32 = 1024;
/// The most buckets the tuning may ask for: the scan pass's buffers grow with them.
const MAX_ORDER_BUCKETS: u32 = 1 << 20;

/// What a plan needs to know of the adapter.
#[derive(Debug, Clone, Copy)]
pub(super) struct AdapterLimits {
    /// The largest buffer bound to one storage binding (a multiple of 16).
    pub max_binding: u64,
    pub max_storage_bindings: u32,
    pub max_buffer_size: u64,
    pub storage_offset_alignment: u64,
    /// A software rasteriser (lavapipe): no address translation to spare.
    pub software: bool,
    /// The caches are dedicated allocations (translated as well as small caches are).
    pub dedicated_caches: bool,
}

/// Which entry point writes the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// `reshape_and_cache_wide`: 16-byte units, up to `WIDE_CHUNKS` chunks per dispatch.
    Wide,
    /// `reshape_and_cache`: 16-byte units, up to `CHUNKS` chunks per dispatch.
    Multi,
    /// `reshape_and_cache_one`: 16-byte units, one chunk per dispatch.
    One,
    /// `reshape_and_cache_words`: u32 words (rows not a multiple of 16 bytes), one chunk per
    /// dispatch.
    Words,
}

impl Kernel {
    /// The 16-byte kernel this is, if it is one.
    fn unit_kernel(self) -> Option<UnitKernel> {
        match self {
            Kernel::Wide => Some(WIDE_KERNEL),
            Kernel::Multi => Some(NARROW_KERNEL),
            Kernel::One => Some(ONE_KERNEL),
            Kernel::Words => None,
        }
    }

    /// Chunks of each cache bound per dispatch.
    pub fn chunks(self) -> usize {
        self.unit_kernel()
            .map_or(1, |kernel| kernel.chunks as usize)
    }
}

/// How one problem maps onto buffers and dispatches on this adapter.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub kernel: Kernel,
    /// Cache blocks per chunk buffer.
    pub chunk_blocks: u64,
    /// Size of each chunk buffer (a multiple of 4; the last one may be padded).
    pub chunk_bytes: Vec<u64>,
    /// Tokens per input buffer.
    pub tokens_per_range: usize,
    /// Whether each cache is one buffer with the chunks as windows.
    pub one_buffer: bool,
    /// The slot-order pass, if tokens are taken in slot order.
    pub order: Option<OrderPlan>,
    /// 16-byte units per thread (`UNITS` in the shader).
    pub units: u32,
    /// Threads per 16-byte unit (`SPLIT` in the shader): 1, or `FP8_SPLIT` for small fp8 calls.
    pub unit_threads: u32,
    /// fp8 without tables by the short exact encoder where the scales allow (`FP8_FAST` in the
    /// shader), else the long one alone.
    pub fp8_fast: bool,
}

/// The slot-order pass of a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct OrderPlan {
    pub buckets: u32,
    pub slots_per_bucket: u32,
}

/// The tokens of one round of dispatches: up to two token ranges (one input binding each),
/// bound together so that the slot order spans both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Batch {
    pub first_token: usize,
    pub tokens: usize,
    /// Tokens in the first range; the rest are in the second.
    pub lo_tokens: usize,
}

impl Batch {
    /// The two ranges as (first token within the batch, tokens), empty ones left out.
    pub fn parts(&self) -> impl Iterator<Item = (usize, usize)> {
        [
            (0, self.lo_tokens),
            (self.lo_tokens, self.tokens - self.lo_tokens),
        ]
        .into_iter()
        .filter(|&(_, count)| count > 0)
    }

    /// `Params::split_input`: input units (16 bytes) of the first range, or `u32::MAX` when
    /// there is no second one.
    pub fn split_input(&self, input_row: usize) -> u32 {
        if self.tokens > self.lo_tokens {
            (self.lo_tokens * input_row / 16) as u32
        } else {
            u32::MAX
        }
    }
}

impl Plan {
    /// How `problem` runs on an adapter with `limits`: the split of the caches and inputs, then
    /// the choices of buffers, units per thread and token order (the backend's own, or the
    /// tuning's).
    pub fn new(
        problem: &Problem,
        limits: &AdapterLimits,
        tuning: &WgpuTuning,
        device: &str,
    ) -> Result<Self> {
        let mut plan = Self::split(
            problem,
            limits.max_binding,
            tuning
                .max_chunk_blocks
                .filter(|&blocks| blocks > 0)
                .unwrap_or(u64::MAX),
            limits.max_storage_bindings,
            device,
        )?;
        let total: u64 = plan.chunk_bytes.iter().sum();
        let windows_fit = plan.chunk_bytes.len() > 1
            && total <= limits.max_buffer_size
            && plan.chunk_bytes[0].is_multiple_of(limits.storage_offset_alignment.max(1));
        plan.one_buffer = windows_fit && tuning.one_buffer.unwrap_or(false);
        plan.units = tuning.units_per_thread.unwrap_or(1).clamp(1, MAX_UNITS);
        let ordered = plan.kernel != Kernel::Words
            && tuning.slot_order.unwrap_or_else(|| {
                !limits.software
                    && !limits.dedicated_caches
                    && spreads_past_translation_reach(problem)
            });
        plan.unit_threads = plan.fp8_unit_threads(problem, tuning);
        plan.fp8_fast = tuning.fp8_fast.unwrap_or(true);
        if ordered {
            let slots = problem.num_slots();
            let buckets = tuning
                .order_buckets
                .filter(|&buckets| buckets > 0)
                .map_or(ORDER_BUCKETS, |buckets| buckets.min(MAX_ORDER_BUCKETS));
            let slots_per_bucket = slots.div_ceil((buckets as u64).clamp(1, slots));
            plan.order = Some(OrderPlan {
                buckets: slots.div_ceil(slots_per_bucket) as u32,
                slots_per_bucket: slots_per_bucket as u32,
            });
        }
        Ok(plan)
    }

    /// The split alone: chunks of at most `max_chunk_blocks` blocks that fit `max_binding`,
    /// token ranges that fit it too, and the kernel for that many chunks; one buffer per chunk,
    /// tokens as they come, one unit per thread.
    pub(super) fn split(
        problem: &Problem,
        max_binding: u64,
        max_chunk_blocks: u64,
        max_storage_bindings: u32,
        device: &str,
    ) -> Result<Self> {
        let row_elements = problem.token_elements() as u64;
        let row_bytes = row_elements * problem.cache_element_size() as u64;
        let block_bytes = row_bytes * problem.block_size as u64;
        // Input rows of strided keys and values must start on 16-byte units too (fused QKV
        // rows always do: every head size offered is a multiple of 8 elements).
        let vec4_rows = row_bytes.is_multiple_of(16) && input_units_aligned(problem);
        // The shader indexes slots with u32 (slot -1 is 0xffffffff in the high word).
        if problem.num_slots() >= u32::MAX as u64 {
            return Err(Error::InvalidConfig(format!(
                "the wgpu path indexes slots with 32 bits: a cache of {} slots is too large (at most {})",
                problem.num_slots(),
                u32::MAX - 1
            )));
        }
        let mut chunk_blocks = (max_binding / block_bytes)
            .min(max_chunk_blocks)
            .min(problem.num_blocks as u64);
        // Chunks must end on a word boundary (they do whenever rows are 16-byte multiples);
        // a single chunk holding the whole cache is padded to one instead.
        while chunk_blocks > 0
            && chunk_blocks < problem.num_blocks as u64
            && !(chunk_blocks * block_bytes).is_multiple_of(4)
        {
            chunk_blocks -= 1;
        }
        if chunk_blocks == 0 {
            return Err(Error::DoesNotFit {
                what: "one cache block".into(),
                needed: Bytes(block_bytes),
                available: Bytes(max_binding),
                device: format!("{device} (the largest storage binding)"),
                hint: "; use a smaller --block-size, fewer heads or a smaller head size".into(),
            });
        }
        let total = problem.cache_bytes();
        let full = chunk_blocks * block_bytes;
        let mut chunk_bytes = Vec::new();
        let mut offset = 0;
        while offset < total {
            let bytes = full.min(total - offset);
            chunk_bytes.push(bytes.next_multiple_of(4));
            offset += bytes;
        }
        // The bytes from one token's keys to the next's (more than a row for fused inputs).
        let input_row = input_token_bytes(problem);
        // A range's slots (8 bytes a token) must fit a binding too.
        let max_tokens = (max_binding / input_row.max(8)).min(problem.num_tokens as u64) as usize;
        if max_tokens == 0 {
            return Err(Error::DoesNotFit {
                what: "one token's keys".into(),
                needed: Bytes(input_row),
                available: Bytes(max_binding),
                device: format!("{device} (the largest storage binding)"),
                hint: "; use fewer heads or a smaller head size".into(),
            });
        }
        // Equal ranges: 65536 bf16 tokens of 128 x 128 are 4 bytes over a 2 GiB binding, and
        // two halves run better than one range and a range of one token.
        let ranges = problem.num_tokens.div_ceil(max_tokens);
        let tokens_per_range = problem.num_tokens.div_ceil(ranges);
        let kernel = if !vec4_rows {
            Kernel::Words
        } else if chunk_bytes.len() == 1 {
            Kernel::One
        } else if chunk_bytes.len() > CHUNKS as usize
            && max_storage_bindings >= storage_bindings(WIDE_CHUNKS)
        {
            Kernel::Wide
        } else if max_storage_bindings >= storage_bindings(CHUNKS) {
            Kernel::Multi
        } else {
            Kernel::One
        };
        Ok(Self {
            kernel,
            chunk_blocks,
            chunk_bytes,
            tokens_per_range,
            one_buffer: false,
            order: None,
            units: 1,
            unit_threads: 1,
            fp8_fast: true,
        })
    }

    /// `--ceiling pattern`'s entry point: the 16-byte kernel's pattern twin, or the words
    /// kernel itself (it serves auto caches only, and converts nothing).
    pub fn pattern_entry_point(&self) -> &'static str {
        match self.kernel.unit_kernel() {
            Some(kernel) => kernel.pattern_entry,
            None => "reshape_and_cache_words",
        }
    }

    /// The entry point that writes the caches.
    pub fn entry_point(&self, fp8: Fp8Path) -> &'static str {
        match self.kernel.unit_kernel() {
            Some(kernel) => kernel.entry(fp8 == Fp8Path::Lut),
            None => "reshape_and_cache_words",
        }
    }

    /// The kernel's override constants (`per_head`: the call's scales are per head).
    pub fn constants(
        &self,
        problem: &Problem,
        fp8: Fp8Path,
        per_head: bool,
    ) -> Vec<(&'static str, f64)> {
        let block = ("BLOCK_SIZE", problem.block_size as f64);
        let chunk = ("CHUNK_BLOCKS", self.chunk_blocks as f64);
        match self.kernel {
            Kernel::Wide | Kernel::Multi | Kernel::One => {
                let mut constants = vec![
                    block,
                    chunk,
                    ("ROW_UNITS", self.units_per_token(problem) as f64),
                    ("IN_KIND", input_kind(problem.dtype)),
                    ("FP8", flag(problem.cache_dtype.is_fp8())),
                    ("ORDERED", flag(self.order.is_some())),
                    ("UNITS", self.units as f64),
                    ("FP8_TABLE", flag(fp8 == Fp8Path::Thresholds)),
                ];
                // Only where set, so that the default kernels are compiled as they always
                // were.
                if !problem.contiguous_inputs() {
                    constants.push(("STRIDED", 1.0));
                }
                if let Some(format) = problem.cache_dtype.fp8() {
                    constants.extend(encoder_constants(format, self.fp8_fast));
                }
                if self.unit_threads > 1 {
                    constants.push(("SPLIT", self.unit_threads as f64));
                }
                if per_head && problem.cache_dtype.is_fp8() {
                    constants.extend([
                        ("PER_HEAD", 1.0),
                        ("HEADS", problem.num_heads as f64),
                        ("HEAD_UNITS", (problem.head_size / 16) as f64),
                    ]);
                }
                constants
            }
            Kernel::Words => {
                let mut constants = vec![
                    block,
                    chunk,
                    ("ROW_ELEMENTS", problem.token_elements() as f64),
                    ("ELEMENT_BYTES", problem.dtype.size() as f64),
                    ("ROW_WORDS", row_words(problem) as f64),
                ];
                if !problem.contiguous_inputs() {
                    constants.push(("STRIDED", 1.0));
                }
                constants
            }
        }
    }

    /// `Params::in_token_stride`: the input's token stride in 16-byte units, or in elements for
    /// the word kernel (read by the kernels only for strided inputs).
    pub fn in_token_stride(&self, problem: &Problem) -> u32 {
        match self.kernel {
            Kernel::Words => problem.inputs().token as u32,
            _ => (input_token_bytes(problem) / 16) as u32,
        }
    }

    /// Work items per token: 16-byte units of a cache row, or words of its span.
    pub fn units_per_token(&self, problem: &Problem) -> u64 {
        match self.kernel {
            Kernel::Words => row_words(problem),
            _ => problem.token_elements() as u64 * problem.cache_element_size() as u64 / 16,
        }
    }

    /// Threads of a dispatch over `tokens` tokens.
    pub fn threads(&self, problem: &Problem, tokens: usize) -> u64 {
        let units = tokens as u64 * self.units_per_token(problem);
        match self.kernel {
            Kernel::Words => units,
            _ => units.div_ceil(self.units as u64) * self.unit_threads as u64,
        }
    }

    /// The call's tokens, batch by batch: two ranges per batch in the 16-byte kernels (inputs
    /// in two bindings each, so that the slot order spans both: 65536 bf16 tokens of 128 x 128
    /// are one batch), one in the word kernel.
    pub fn batches(&self, problem: &Problem) -> Vec<Batch> {
        let ranges_per_batch = match self.kernel {
            Kernel::Words => 1,
            _ => 2,
        };
        let mut batches = Vec::new();
        let mut first_token = 0;
        while first_token < problem.num_tokens {
            let tokens =
                (ranges_per_batch * self.tokens_per_range).min(problem.num_tokens - first_token);
            batches.push(Batch {
                first_token,
                tokens,
                lo_tokens: self.tokens_per_range.min(tokens),
            });
            first_token += tokens;
        }
        batches
    }

    /// The first chunk of each group that one dispatch binds.
    pub fn groups(&self) -> impl Iterator<Item = usize> {
        (0..self.chunk_bytes.len()).step_by(self.kernel.chunks())
    }
}

/// Workgroups for `threads` threads as a grid of at most `max` per dimension.
pub(super) fn grid(threads: u64, max: u32) -> Result<(u32, u32)> {
    let workgroups = threads.div_ceil(WORKGROUP as u64).max(1);
    let max = max as u64;
    let (x, y) = if workgroups <= max {
        (workgroups, 1)
    } else {
        (max, workgroups.div_ceil(max))
    };
    if y > max {
        return Err(Error::wgpu(
            format!("laying out {threads} threads"),
            format!("more than {max} x {max} workgroups needed"),
        ));
    }
    Ok((x as u32, y as u32))
}

/// Whether a call's rows land on more distinct pages than a GPU's address translation caches
/// hold, so that taking the tokens in slot order pays for its passes. Measured on an H100
/// (docs/perf-log-wgpu.md): random rows over 2 x 2 GiB of cache ran at copy speed at any token
/// count, while those over 2 x 32 GiB fell to 40% of it from 8192 tokens on; the boundary
/// matched a reach of some 5000 to 6000 pages of 2 MiB over both caches.
pub(super) fn spreads_past_translation_reach(problem: &Problem) -> bool {
    const PAGE_BYTES: f64 = (2 << 20) as f64;
    const REACH_PAGES: f64 = TRANSLATION_REACH_PAGES as f64;
    let pages = (problem.cache_bytes() as f64 / PAGE_BYTES).max(1.0);
    // Expected distinct pages among num_tokens random rows, in each of the two caches.
    let touched = 2.0 * pages * (1.0 - (-(problem.num_tokens as f64) / pages).exp());
    touched > REACH_PAGES
}

/// Bytes from one token's keys (or values) to the next token's in the input tensor.
pub(super) fn input_token_bytes(problem: &Problem) -> u64 {
    problem.inputs().token * problem.dtype.size() as u64
}

/// Whether every token's keys start on a 16-byte unit of the input (as the 16-byte kernels
/// read them).
pub(super) fn input_units_aligned(problem: &Problem) -> bool {
    input_token_bytes(problem).is_multiple_of(16)
}

/// u32 words a token row's span touches in the word kernel: rows of an odd number of 16-bit
/// elements start on either half of a word and touch (n + 1) / 2 words.
pub(super) fn row_words(problem: &Problem) -> u64 {
    let elements = problem.token_elements() as u64;
    match problem.dtype.size() {
        2 => elements.div_ceil(2),
        _ => elements,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::problem::{CacheDtype, Dtype, Layout};

    pub(in super::super) fn problem(
        dtype: Dtype,
        cache_dtype: CacheDtype,
        heads: usize,
        head_size: usize,
    ) -> Problem {
        Problem {
            num_tokens: 100,
            num_heads: heads,
            head_size,
            block_size: 16,
            num_blocks: 1000,
            dtype,
            cache_dtype,
            layout: Layout::Nhd,
            input_strides: None,
        }
    }

    pub(in super::super) fn limits(max_binding: u64, max_storage_bindings: u32) -> AdapterLimits {
        AdapterLimits {
            max_binding,
            max_storage_bindings,
            max_buffer_size: 1 << 40,
            storage_offset_alignment: 256,
            software: true,
            dedicated_caches: false,
        }
    }

    #[test]
    fn plans_split_caches_on_block_boundaries() {
        // 16 slots x 2 heads x 128 x 2 bytes = 8 KiB blocks; 20 KiB bindings hold 2 blocks.
        let p = problem(Dtype::Half, CacheDtype::Auto, 2, 128);
        let plan = Plan::split(&p, 20 << 10, u64::MAX, 32, "test").unwrap();
        assert_eq!(plan.chunk_blocks, 2);
        assert_eq!(plan.chunk_bytes.len(), 500);
        assert!(plan.chunk_bytes.iter().all(|&b| b == 16 << 10));
        assert_eq!(plan.kernel, Kernel::Multi);
        // 512 bytes of keys per token: 40 tokens per 20 KiB binding, so 100 tokens take three
        // ranges of 34.
        assert_eq!(plan.tokens_per_range, 34);
        // Kernels by the adapter's storage bindings per stage and the number of chunks.
        let kernel = |bindings, binding_bytes| {
            Plan::split(&p, binding_bytes, u64::MAX, bindings, "test")
                .unwrap()
                .kernel
        };
        assert_eq!(kernel(70, 20 << 10), Kernel::Wide);
        assert_eq!(kernel(69, 20 << 10), Kernel::Multi);
        assert_eq!(kernel(28, 20 << 10), Kernel::Multi);
        assert_eq!(kernel(27, 20 << 10), Kernel::One);
        // 11 chunks or fewer: the narrow kernel binds them all.
        assert_eq!(kernel(1000, 1 << 20), Kernel::Multi);
        // One chunk: the single-chunk kernel.
        let whole = Plan::split(&p, 1 << 30, u64::MAX, 32, "test").unwrap();
        assert_eq!((whole.kernel, whole.chunk_bytes.len()), (Kernel::One, 1));
        assert_eq!(whole.chunk_bytes[0], p.cache_bytes());
        // A block larger than a binding cannot be split.
        assert!(matches!(
            Plan::split(&p, 4 << 10, u64::MAX, 32, "test"),
            Err(Error::DoesNotFit { .. })
        ));
    }

    #[test]
    fn odd_rows_use_words_and_word_aligned_chunks() {
        // 3 heads x 5 x 2 bytes = 30-byte rows: block of 1 slot = 30 bytes; chunks must be
        // whole words, so an even number of blocks.
        let p = Problem {
            block_size: 1,
            ..problem(Dtype::BFloat16, CacheDtype::Auto, 3, 5)
        };
        let plan = Plan::split(&p, 100, u64::MAX, 32, "test").unwrap();
        assert_eq!(plan.kernel, Kernel::Words);
        assert_eq!(plan.chunk_blocks, 2);
        assert!(plan.chunk_bytes.iter().all(|&b| b % 4 == 0));
        assert_eq!(row_words(&p), 8);
        assert_eq!(plan.entry_point(Fp8Path::Plain), "reshape_and_cache_words");
        // One range per batch, one word per thread.
        assert!(plan.batches(&p).iter().all(|b| b.tokens == b.lo_tokens));
        assert_eq!(plan.threads(&p, 3), 3 * 8);
    }

    #[test]
    fn tuning_sets_buffers_units_and_slot_order() {
        let p = problem(Dtype::Half, CacheDtype::Auto, 2, 128);
        let base = Plan::new(&p, &limits(20 << 10, 32), &WgpuTuning::default(), "t").unwrap();
        // Software adapters never take slot order by themselves; one buffer per chunk.
        assert_eq!((base.order, base.one_buffer, base.units), (None, false, 1));
        let tuned = Plan::new(
            &p,
            &limits(20 << 10, 32),
            &WgpuTuning {
                slot_order: Some(true),
                order_buckets: Some(7),
                one_buffer: Some(true),
                units_per_thread: Some(100),
                max_chunk_blocks: Some(1),
                ..WgpuTuning::default()
            },
            "t",
        )
        .unwrap();
        assert_eq!(tuned.chunk_blocks, 1);
        assert_eq!(tuned.units, MAX_UNITS);
        // Chunks of one 8 KiB block start on the 256-byte alignment: windows of one buffer.
        assert!(tuned.one_buffer);
        // 16000 slots in 7 buckets of 2286 (the last one shorter).
        assert_eq!(
            tuned.order,
            Some(OrderPlan {
                buckets: 7,
                slots_per_bucket: 2286
            })
        );
        // Zero means the backend's choice, as an unset value does.
        let zero = WgpuTuning {
            slot_order: Some(true),
            order_buckets: Some(0),
            max_chunk_blocks: Some(0),
            ..WgpuTuning::default()
        };
        let plan = Plan::new(&p, &limits(20 << 10, 32), &zero, "t").unwrap();
        assert_eq!(plan.chunk_blocks, 2);
        assert_eq!(plan.order.unwrap().slots_per_bucket, 16);
        // Windows must start at the adapter's storage offset alignment.
        let misaligned = AdapterLimits {
            storage_offset_alignment: 3 << 10,
            ..limits(20 << 10, 32)
        };
        let one_buffer = WgpuTuning {
            one_buffer: Some(true),
            ..WgpuTuning::default()
        };
        assert!(
            !Plan::new(&p, &misaligned, &one_buffer, "t")
                .unwrap()
                .one_buffer
        );
    }

    #[test]
    fn batches_take_two_ranges_and_cover_every_token() {
        // 100 tokens in ranges of 34: batches of 68 and 32 tokens.
        let p = problem(Dtype::Half, CacheDtype::Auto, 2, 128);
        let plan = Plan::split(&p, 20 << 10, u64::MAX, 32, "test").unwrap();
        let batches = plan.batches(&p);
        assert_eq!(
            batches,
            [
                Batch {
                    first_token: 0,
                    tokens: 68,
                    lo_tokens: 34
                },
                Batch {
                    first_token: 68,
                    tokens: 32,
                    lo_tokens: 32
                }
            ]
        );
        assert_eq!(batches[0].parts().collect::<Vec<_>>(), [(0, 34), (34, 34)]);
        assert_eq!(batches[1].parts().collect::<Vec<_>>(), [(0, 32)]);
        // 512 input bytes a token: the second range starts at unit 34 * 32.
        assert_eq!(batches[0].split_input(512), 34 * 32);
        assert_eq!(batches[1].split_input(512), u32::MAX);
        // 500 chunks in groups of 11.
        let groups: Vec<usize> = plan.groups().collect();
        assert_eq!(groups.len(), 46);
        assert_eq!(groups[1], 11);
    }

    #[test]
    fn grids_fold_into_two_dimensions() {
        assert_eq!(grid(0, 65535).unwrap(), (1, 1));
        assert_eq!(grid(256 * 10, 65535).unwrap(), (10, 1));
        assert_eq!(grid(256 * 10 + 1, 4).unwrap(), (4, 3));
        assert!(grid(256 * 17, 4).is_err());
    }

    #[test]
    fn slot_order_past_the_translation_reach() {
        let p = problem(Dtype::BFloat16, CacheDtype::Auto, 128, 128);
        // 2 x 32 GiB caches at 65536 tokens: most of their 16384 pages each.
        let big = Problem {
            num_blocks: 65536,
            num_tokens: 65536,
            ..p
        };
        assert!(spreads_past_translation_reach(&big));
        assert!(!spreads_past_translation_reach(&Problem {
            num_tokens: 16,
            ..big
        }));
        // By default only a hardware adapter's own (not dedicated) allocations take the order;
        // the tuning forces it either way.
        let hardware = AdapterLimits {
            software: false,
            ..limits(2 << 30, 32)
        };
        let order = |limits: &AdapterLimits, slot_order| {
            let tuning = WgpuTuning {
                slot_order,
                ..WgpuTuning::default()
            };
            Plan::new(&big, limits, &tuning, "t")
                .unwrap()
                .order
                .is_some()
        };
        assert!(order(&hardware, None));
        let dedicated = AdapterLimits {
            dedicated_caches: true,
            ..hardware
        };
        assert!(!order(&dedicated, None));
        assert!(order(&dedicated, Some(true)));
        assert!(!order(&hardware, Some(false)));
        assert!(!order(&limits(2 << 30, 32), None));
    }
}
