//! How a call is cut into thread blocks: the kernel's parameter block and the launch shape.
//! Pure arithmetic, so it is tested here without a GPU, down to simulating the kernel's index
//! mapping (every item of every token is visited exactly once).

use crate::error::{Error, Result};
use crate::problem::{CacheDtype, Dtype, Problem};

/// Division by a run-time constant, as the kernel does it: `(umulhi(n, m) + n) >> s` (the
/// round-up method of Granlund and Montgomery), exact for every 32-bit `n`. Mirrors `FastDiv`
/// in the kernel source.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FastDiv {
    pub divisor: u32,
    pub multiplier: u32,
    pub shift: u32,
    pub unused: u32,
}

impl FastDiv {
    /// `divisor` must be at least 1 (every caller passes a validated, non-zero size).
    pub fn new(divisor: u32) -> Self {
        let d = divisor.max(1);
        // shift = ceil(log2(d)), multiplier = floor(2^32 * (2^shift - d) / d) + 1 < 2^32.
        let shift = 32 - (d - 1).leading_zeros();
        let multiplier = ((1u128 << 32) * ((1u128 << shift) - d as u128) / d as u128 + 1) as u32;
        Self {
            divisor: d,
            multiplier,
            shift,
            unused: 0,
        }
    }

    /// The kernel's quotient, computed the kernel's way.
    #[cfg(test)]
    pub fn div(&self, n: u32) -> u32 {
        let high = ((n as u64 * self.multiplier as u64) >> 32) as u32;
        ((high as u64 + n as u64) >> self.shift) as u32
    }
}

/// The kernel's by-value parameter block. Mirrors `Params` in the kernel source: same field
/// order, same types (8-byte fields first, so neither side has padding).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params {
    pub num_tokens: i64,
    pub num_slots: i64,
    pub key_token_stride: i64,
    pub key_head_stride: i64,
    pub value_token_stride: i64,
    pub value_head_stride: i64,
    pub cache_block_stride: i64,
    pub cache_slot_stride: i64,
    pub cache_head_stride: i64,
    pub token_groups: i64,
    pub items_per_token: FastDiv,
    pub items_per_head: FastDiv,
    pub block_size: FastDiv,
    pub segments: FastDiv,
    pub items_per_kv: u32,
    pub tokens_per_block: u32,
    pub items_per_thread: u32,
    pub unused: u32,
}

// SAFETY: plain old data with the C layout the kernel declares.
unsafe impl cudarc::driver::DeviceRepr for Params {}

/// The largest item count per thread the kernels are compiled for (`MAX_ITEMS`).
pub const MAX_ITEMS_PER_THREAD: u32 = 4;
/// The kernels' `__launch_bounds__`.
pub const MAX_THREADS: u32 = 512;

/// Limits of the device that the launch shape depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    pub sm_count: u32,
    pub max_threads_per_sm: u32,
}

// Threads per block, items per thread and the grid's cap, when forced (for tuning), and
// whether to take the one-element-per-item kernels even where 16-byte accesses would do (for
// testing them): an option like every other knob.
pub use crate::options::LaunchOverride;

/// How a call is cut: threads per block, items per thread, and the grid's cap in blocks per
/// SM (0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub threads: u32,
    pub items_per_thread: u32,
    pub blocks_per_sm: u32,
}

/// Everything one launch needs besides the pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Whether the 16-byte kernels apply (else the one-element-per-item fallback).
    pub vector: bool,
    /// Whether the call takes the small-call instances (`_x1_small`): for bfloat16 and float
    /// input the kernel's first warp lets the next grid launch before it waits for the previous
    /// one (fp8 calls of at most `EARLY_MAX_ITEMS_PER_SM`); for half input the first pass is
    /// peeled under a looser register cap (fp8 calls of at most `HALF_SMALL_MAX_ITEMS_PER_SM`).
    pub small: bool,
    pub threads: u32,
    pub grid: (u32, u32, u32),
    pub params: Params,
}

/// Input strides in elements, so that keys and values can be slices of a fused tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputStrides {
    pub key_token: u64,
    pub key_head: u64,
    pub value_token: u64,
    pub value_head: u64,
}

impl InputStrides {
    /// Contiguous `[num_tokens, num_heads, head_size]` keys and values.
    #[cfg(test)]
    pub fn contiguous(problem: &Problem) -> Self {
        let token = problem.token_elements() as u64;
        let head = problem.head_size as u64;
        Self {
            key_token: token,
            key_head: head,
            value_token: token,
            value_head: head,
        }
    }

    /// The problem's own strides (keys and values share them).
    pub fn of(problem: &Problem) -> Self {
        let s = problem.inputs();
        Self {
            key_token: s.token,
            key_head: s.head,
            value_token: s.token,
            value_head: s.head,
        }
    }
}

/// Items (16 bytes of input, 16 fp8 elements, or one element) are kept below 2^30 per token so
/// that the kernel's per-block index arithmetic fits in 32 bits.
const MAX_ITEMS_PER_TOKEN: u64 = 1 << 30;

/// Whether 16-byte accesses are aligned for every item: head rows a whole number of vectors and
/// every stride a multiple of 16 bytes. (Device allocations themselves are 256-byte aligned.)
pub fn vector_path_applies(problem: &Problem, inputs: &InputStrides) -> bool {
    let in_size = problem.dtype.size() as u64;
    let cache_size = problem.cache_element_size() as u64;
    let elements_per_item = match problem.cache_dtype {
        CacheDtype::Auto => 16 / in_size,
        CacheDtype::Fp8 | CacheDtype::Fp8E5m2 => 16,
    };
    let s = problem.strides();
    (problem.head_size as u64).is_multiple_of(elements_per_item)
        && [
            inputs.key_token,
            inputs.key_head,
            inputs.value_token,
            inputs.value_head,
        ]
        .iter()
        .all(|stride| (stride * in_size).is_multiple_of(16))
        && [s.block, s.slot, s.head]
            .iter()
            .all(|stride| (stride * cache_size).is_multiple_of(16))
}

/// Plans the launch of `problem` on a device with `limits`.
pub fn plan(
    problem: &Problem,
    inputs: &InputStrides,
    limits: DeviceLimits,
    forced: Option<LaunchOverride>,
) -> Result<Launch> {
    let vector = vector_path_applies(problem, inputs) && !forced.is_some_and(|o| o.scalar);
    let elements_per_item = match (vector, problem.cache_dtype) {
        (false, _) => 1,
        (true, CacheDtype::Auto) => 16 / problem.dtype.size(),
        (true, CacheDtype::Fp8 | CacheDtype::Fp8E5m2) => 16,
    };
    let items_per_head = (problem.head_size / elements_per_item) as u64;
    let items_per_kv = problem.num_heads as u64 * items_per_head;
    let items_per_token = 2 * items_per_kv;
    if items_per_token > MAX_ITEMS_PER_TOKEN {
        return Err(Error::InvalidConfig(format!(
            "num_heads * head_size = {} is too large for the CUDA kernel (at most {} elements per token)",
            problem.token_elements(),
            MAX_ITEMS_PER_TOKEN / 2 * elements_per_item as u64
        )));
    }
    if problem.num_tokens > i32::MAX as usize || problem.block_size > u32::MAX as usize {
        return Err(Error::InvalidConfig(format!(
            "num_tokens (at most {}) or block_size (at most {}) too large for the CUDA kernel",
            i32::MAX,
            u32::MAX
        )));
    }
    let total = problem.num_tokens as u64 * items_per_token;
    let shape = match forced.filter(|o| o.threads > 0) {
        Some(o) => Shape {
            threads: o.threads,
            items_per_thread: o.items_per_thread,
            blocks_per_sm: o.blocks_per_sm,
        },
        None => default_shape(total, problem.cache_dtype, limits),
    };
    let threads = shape.threads.clamp(32, MAX_THREADS) / 32 * 32;
    let mut items_per_thread = shape.items_per_thread.clamp(1, MAX_ITEMS_PER_THREAD);
    let per_pass = (threads * items_per_thread) as u64;
    let tokens_per_block = if items_per_token >= per_pass {
        1
    } else {
        (per_pass / items_per_token).min(problem.num_tokens as u64)
    };
    if tokens_per_block == 1 && items_per_token <= per_pass {
        // One token per block and fewer items than slots: give each thread only what it needs.
        items_per_thread = items_per_token.div_ceil(threads as u64) as u32;
    }
    let per_pass = (threads * items_per_thread) as u64;
    let segments = (tokens_per_block * items_per_token).div_ceil(per_pass);
    let token_groups = (problem.num_tokens as u64).div_ceil(tokens_per_block);
    // One-dimensional, segment-major; the kernel loops over any blocks beyond the grid: those
    // beyond 2^31 - 1, or beyond the cap.
    let cap = match shape.blocks_per_sm {
        0 => i32::MAX as u64,
        n => (n as u64 * limits.sm_count.max(1) as u64).min(i32::MAX as u64),
    };
    let grid = ((token_groups * segments).min(cap) as u32, 1, 1);
    let s = problem.strides();
    let params = Params {
        num_tokens: problem.num_tokens as i64,
        num_slots: problem.num_slots() as i64,
        key_token_stride: inputs.key_token as i64,
        key_head_stride: inputs.key_head as i64,
        value_token_stride: inputs.value_token as i64,
        value_head_stride: inputs.value_head as i64,
        cache_block_stride: s.block as i64,
        cache_slot_stride: s.slot as i64,
        cache_head_stride: s.head as i64,
        token_groups: token_groups as i64,
        items_per_token: FastDiv::new(items_per_token as u32),
        items_per_head: FastDiv::new(items_per_head as u32),
        block_size: FastDiv::new(problem.block_size as u32),
        segments: FastDiv::new(segments as u32),
        items_per_kv: items_per_kv as u32,
        tokens_per_block: tokens_per_block as u32,
        items_per_thread,
        unused: 0,
    };
    let small = vector
        && items_per_thread == 1
        && problem.cache_dtype.is_fp8()
        && total <= small_max_items_per_sm(problem.dtype) * limits.sm_count.max(1) as u64
        && !forced.is_some_and(|o| o.large_kernels);
    Ok(Launch {
        vector,
        small,
        threads,
        grid,
        params,
    })
}

/// bfloat16 and float fp8 calls of at most this many 16-byte items per SM (one token of 128
/// heads of 128: 2048 items on 132 SMs) take the kernels whose first warp lets the next grid
/// launch before it waits: on an H100 one token took 1.162 against 1.239 us (bfloat16), 8 heads
/// at 2 / 16 tokens 1.164 / 1.159 against 1.255 / 1.241; at 2 and 4 tokens it changed nothing,
/// from 8 tokens on it cost 0.07 us and more (docs/perf-log.md v10).
const EARLY_MAX_ITEMS_PER_SM: u64 = 16;

/// Half-input fp8 calls of at most this many items per SM (512 tokens of the default shape)
/// take the peeled kernels under a 52-register cap: on an H100 (docs/perf-log.md v11) 1 / 2 / 8
/// / 64 / 128 tokens 1.289 / 1.255 / 1.233 / 2.168 / 3.558 us against 1.316 / 1.337 / 1.508 /
/// 2.672 / 3.741 with the unpeeled 48-register kernel, rotating 512 tokens 19.30 against 19.42;
/// level at 1024 (35.90 against 35.99), but from 2048 tokens the lost occupancy costs 0.8 to
/// 1.4% (rotating 2048 70.36 against 69.78, 8192 275.5 against 271.7, 65536 2185 against 2154).
const HALF_SMALL_MAX_ITEMS_PER_SM: u64 = 8192;

/// The most items per SM of an fp8 call that takes the small-call instances (`Launch::small`).
fn small_max_items_per_sm(dtype: Dtype) -> u64 {
    if dtype == Dtype::Half {
        HALF_SMALL_MAX_ITEMS_PER_SM
    } else {
        EARLY_MAX_ITEMS_PER_SM
    }
}

/// Threads per block and items per thread for `total` items (measured on an H100).
///
/// auto: large calls are bandwidth-bound; 256 threads with 2 items each (two independent
/// 16-byte loads in flight per thread, 8 KiB per block) were 0.5 to 1% faster than 4 items per
/// thread from 512 to 65536 tokens (and than 192x2, 256x3, 384x2, 512x2, 512x4 or 128x4), in
/// NHD and HND, for every input dtype. Smaller calls are latency-bound: one item per thread
/// spreads the work over as many warps as possible, so that the call costs about one round trip
/// to memory. 256 x 1 was up to 10% faster than 128 x 2 (the earlier choice) from 16 to 384
/// tokens of the default shape (and for 8 heads, or heads of 80), and level with 256 x 2 at
/// 512; 128-thread blocks remain the fastest below `resident / 4` items (16 tokens of the
/// default shape): since the first pass computes its addresses before the wait
/// (docs/perf-log.md v12), 128 x 1 took 12 / 16 tokens in 1.221 / 1.37 us against 1.28 to 1.30
/// / 1.41 for 256 x 1, and 8 heads at 256 tokens in 1.385 against 1.431; level at 4, 8 and 20
/// tokens, 256 x 1 ahead from 24.
/// fp8: the conversion needs many warps to hide its arithmetic more than it needs loads in
/// flight per thread: one item per thread (the 44- to 48-register instances, 10 or 11 blocks
/// per SM) in 128-thread blocks was the fastest from 8 to 65536 tokens. Calls of 8 to 128 items
/// per SM take smaller blocks, about one per SM: with the one-warp wait (docs/perf-log.md v9),
/// 32-thread blocks took 2 tokens in 1.164 us against 1.286, 64-thread blocks 4 tokens in
/// 1.178 against 1.235, and 8 heads at 32 tokens, 32 heads of 80 (float) at 8 took 0.10 us
/// less; half input's peeled small-call kernels likewise (2 tokens 1.163 us in 32-thread
/// blocks against 1.249 in 128, 4 tokens 1.171 in 64 against 1.238). Below 8 items per SM (8
/// heads at 2 tokens: 256 items) the extra blocks cost 0.03 to 0.05 us: 128 threads there.
/// Capping the grid at a few blocks per SM (each looping over passes, with or without the next
/// pass's loads issued early) was 2 to 8% slower at 8192 tokens, auto and fp8 alike.
fn default_shape(total: u64, cache_dtype: CacheDtype, limits: DeviceLimits) -> Shape {
    let resident = limits.sm_count as u64 * limits.max_threads_per_sm as u64;
    let (threads, items_per_thread) = match cache_dtype {
        CacheDtype::Fp8 | CacheDtype::Fp8E5m2 => {
            let per_sm = total.div_ceil(limits.sm_count.max(1) as u64);
            let threads = if per_sm < 8 {
                128
            } else {
                per_sm.next_multiple_of(32).clamp(32, 128) as u32
            };
            (threads, 1)
        }
        CacheDtype::Auto if total >= 6 * resident => (256, 2),
        CacheDtype::Auto if total >= resident / 4 => (256, 1),
        CacheDtype::Auto => (128, 1),
    };
    Shape {
        threads,
        items_per_thread,
        blocks_per_sm: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Layout;

    #[test]
    fn fast_division_is_exact() {
        let mut divisors: Vec<u32> = (1..=300).collect();
        divisors.extend([
            641,
            1000,
            4096,
            65535,
            65537,
            1 << 20,
            (1 << 30) + 1,
            u32::MAX / 3,
            (1 << 31) - 1,
            1 << 31,
            (1 << 31) + 1,
            u32::MAX - 1,
            u32::MAX,
        ]);
        let mut numerators: Vec<u32> = (0..2000).collect();
        numerators.extend([u32::MAX, u32::MAX - 1, 1 << 31, (1 << 31) - 1, 123_456_789]);
        let mut x = 0x9e37_79b9u32;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            numerators.push(x);
        }
        for &d in &divisors {
            let f = FastDiv::new(d);
            for &n in &numerators {
                assert_eq!(f.div(n), n / d, "{n} / {d}");
            }
            // Just below and at multiples, where rounding errors would show.
            for q in [1u64, 2, 3, 1000, (u32::MAX / d) as u64] {
                for n in [q * d as u64 - 1, q * d as u64] {
                    if n <= u32::MAX as u64 {
                        assert_eq!(f.div(n as u32), n as u32 / d, "{n} / {d}");
                    }
                }
            }
        }
    }

    fn problem(
        layout: Layout,
        dtype: Dtype,
        cache_dtype: CacheDtype,
        heads: usize,
        head_size: usize,
        tokens: usize,
    ) -> Problem {
        Problem {
            num_tokens: tokens,
            num_heads: heads,
            head_size,
            block_size: 16,
            num_blocks: tokens.div_ceil(16) + 1,
            dtype,
            cache_dtype,
            layout,
            input_strides: None,
        }
    }

    const H100: DeviceLimits = DeviceLimits {
        sm_count: 132,
        max_threads_per_sm: 2048,
    };
    /// Few SMs, so that capped grids loop in the small cases of the simulation.
    const SMALL: DeviceLimits = DeviceLimits {
        sm_count: 2,
        max_threads_per_sm: 2048,
    };

    /// Walks the grid exactly as the kernel does and counts the visits of every
    /// (token, key/value, head, item) position.
    fn simulate(launch: &Launch) -> Vec<u32> {
        let p = &launch.params;
        let per_token = p.items_per_token.divisor;
        let per_head = p.items_per_head.divisor;
        let segments = p.segments.divisor;
        let span = p.tokens_per_block * per_token;
        let per_pass = launch.threads * p.items_per_thread;
        let blocks = p.token_groups as u64 * segments as u64;
        let mut visits = vec![0u32; p.num_tokens as usize * per_token as usize];
        for block_index in 0..launch.grid.0 as u64 {
            let mut b = block_index;
            while b < blocks {
                let group = p.segments.div(b as u32) as u64;
                let segment = b as u32 - group as u32 * segments;
                let first_token = group * p.tokens_per_block as u64;
                let start = segment * per_pass;
                for tid in 0..launch.threads {
                    for k in 0..p.items_per_thread {
                        let local = start + k * launch.threads + tid;
                        if local >= span {
                            continue;
                        }
                        let t = if p.tokens_per_block == 1 {
                            0
                        } else {
                            p.items_per_token.div(local)
                        };
                        let token = first_token + t as u64;
                        if token >= p.num_tokens as u64 {
                            continue;
                        }
                        let mut j = local - t * per_token;
                        let v = j >= p.items_per_kv;
                        if v {
                            j -= p.items_per_kv;
                        }
                        let head = p.items_per_head.div(j);
                        let chunk = j - head * per_head;
                        let index = token as usize * per_token as usize
                            + v as usize * p.items_per_kv as usize
                            + (head * per_head + chunk) as usize;
                        visits[index] += 1;
                    }
                }
                b += launch.grid.0 as u64;
            }
        }
        visits
    }

    #[test]
    fn every_item_is_visited_once() {
        let mut cases = Vec::new();
        for layout in [Layout::Nhd, Layout::Hnd] {
            for (dtype, cache_dtype) in [
                (Dtype::BFloat16, CacheDtype::Auto),
                (Dtype::Float, CacheDtype::Auto),
                (Dtype::Half, CacheDtype::Fp8),
                (Dtype::Float, CacheDtype::Fp8),
            ] {
                for (heads, head_size) in [(1, 16), (2, 64), (5, 80), (3, 120), (8, 128), (32, 256)]
                {
                    for tokens in [1, 3, 17, 100, 1000] {
                        cases.push(problem(
                            layout,
                            dtype,
                            cache_dtype,
                            heads,
                            head_size,
                            tokens,
                        ));
                    }
                }
            }
        }
        // Odd head sizes take the scalar path.
        cases.push(problem(
            Layout::Nhd,
            Dtype::Half,
            CacheDtype::Auto,
            3,
            7,
            50,
        ));
        let overrides = [
            None,
            Some(LaunchOverride {
                threads: 64,
                items_per_thread: 3,
                ..LaunchOverride::default()
            }),
            Some(LaunchOverride {
                threads: 512,
                items_per_thread: 4,
                ..LaunchOverride::default()
            }),
            Some(LaunchOverride {
                scalar: true,
                ..LaunchOverride::default()
            }),
            // Capped grids: blocks loop over several passes.
            Some(LaunchOverride {
                threads: 32,
                items_per_thread: 2,
                blocks_per_sm: 1,
                ..LaunchOverride::default()
            }),
            Some(LaunchOverride {
                threads: 96,
                items_per_thread: 1,
                blocks_per_sm: 3,
                ..LaunchOverride::default()
            }),
            Some(LaunchOverride {
                threads: 64,
                items_per_thread: 4,
                blocks_per_sm: 1,
                ..LaunchOverride::default()
            }),
        ];
        for case in &cases {
            for forced in overrides {
                for limits in [H100, SMALL] {
                    let launch =
                        plan(case, &InputStrides::contiguous(case), limits, forced).unwrap();
                    let visits = simulate(&launch);
                    assert!(
                        visits.iter().all(|&v| v == 1),
                        "{} with {forced:?}: {launch:?}",
                        case.describe()
                    );
                    // Within what the kernel instances are compiled for.
                    let p = &launch.params;
                    assert!(launch.threads <= MAX_THREADS && launch.threads.is_multiple_of(32));
                    assert!((1..=MAX_ITEMS_PER_THREAD).contains(&p.items_per_thread));
                }
            }
        }
        assert!(
            !plan(
                &cases[cases.len() - 1],
                &InputStrides::contiguous(&cases[0]),
                H100,
                None
            )
            .unwrap()
            .vector
        );
    }

    #[test]
    fn default_shape_uses_vectors_and_fills_the_gpu() {
        let p = Problem {
            num_tokens: 65536,
            num_heads: 128,
            head_size: 128,
            block_size: 16,
            num_blocks: 65536,
            dtype: Dtype::BFloat16,
            cache_dtype: CacheDtype::Auto,
            layout: Layout::Hnd,
            input_strides: None,
        };
        let launch = plan(&p, &InputStrides::contiguous(&p), H100, None).unwrap();
        assert!(launch.vector);
        assert_eq!(launch.params.items_per_head.divisor, 16);
        assert_eq!(launch.params.items_per_token.divisor, 4096);
        assert_eq!(launch.grid.0, 65536 * launch.params.segments.divisor);
        // More than 65535 tokens: tokens go on the x dimension, which allows 2^31 - 1.
        let small = Problem { num_tokens: 2, ..p };
        let launch = plan(&small, &InputStrides::contiguous(&small), H100, None).unwrap();
        assert!(launch.grid.0 >= 32, "{launch:?}");
        assert_eq!((launch.threads, launch.params.items_per_thread), (128, 1));
        // 128-thread blocks up to 16 tokens, then 256-thread blocks of one item per thread; two
        // items per thread once the call is several times what the GPU holds at once.
        for (num_tokens, shape) in [
            (16, (128, 1)),
            (17, (256, 1)),
            (64, (256, 1)),
            (384, (256, 1)),
            (8192, (256, 2)),
        ] {
            let p = Problem { num_tokens, ..p };
            let launch = plan(&p, &InputStrides::contiguous(&p), H100, None).unwrap();
            assert_eq!(
                (launch.threads, launch.params.items_per_thread),
                shape,
                "{num_tokens}"
            );
        }
    }

    #[test]
    fn small_fp8_calls_spread_over_the_sms() {
        let threads = |dtype, cache_dtype, heads, head_size, tokens| {
            let p = problem(Layout::Nhd, dtype, cache_dtype, heads, head_size, tokens);
            let launch = plan(&p, &InputStrides::contiguous(&p), H100, None).unwrap();
            assert_eq!(launch.params.items_per_thread, 1);
            launch.threads
        };
        // The default shape: 2048 fp8 items per token, 132 SMs: 16 items per SM per token.
        for (tokens, expected) in [(1, 32), (2, 32), (4, 64), (8, 128), (64, 128)] {
            assert_eq!(
                threads(Dtype::BFloat16, CacheDtype::Fp8, 128, 128, tokens),
                expected
            );
            assert_eq!(
                threads(Dtype::Float, CacheDtype::Fp8E5m2, 128, 128, tokens),
                expected
            );
            assert_eq!(
                threads(Dtype::Half, CacheDtype::Fp8, 128, 128, tokens),
                expected
            );
        }
        // Auto caches keep 128-thread blocks.
        assert_eq!(threads(Dtype::BFloat16, CacheDtype::Auto, 128, 128, 2), 128);
        // 8 heads: 128 items per token; under 8 items per SM at 2 tokens, 32 per SM at 32.
        assert_eq!(threads(Dtype::BFloat16, CacheDtype::Fp8, 8, 128, 2), 128);
        assert_eq!(threads(Dtype::BFloat16, CacheDtype::Fp8, 8, 128, 32), 32);
    }

    #[test]
    fn the_smallest_fp8_calls_take_the_small_call_kernels() {
        let small = |dtype, cache_dtype, heads, tokens| {
            let p = problem(Layout::Nhd, dtype, cache_dtype, heads, 128, tokens);
            plan(&p, &InputStrides::contiguous(&p), H100, None)
                .unwrap()
                .small
        };
        // bfloat16 and float (launching the next grid early): 2048 items per token of 128
        // heads, 15.5 per SM at one token, 31 at two.
        assert!(small(Dtype::BFloat16, CacheDtype::Fp8, 128, 1));
        assert!(small(Dtype::Float, CacheDtype::Fp8E5m2, 128, 1));
        assert!(!small(Dtype::BFloat16, CacheDtype::Fp8, 128, 2));
        assert!(!small(Dtype::BFloat16, CacheDtype::Fp8, 128, 65536));
        assert!(!small(Dtype::BFloat16, CacheDtype::Auto, 128, 1));
        // 8 heads: 128 items per token, 16 per SM up to 16 tokens.
        assert!(small(Dtype::Float, CacheDtype::Fp8, 8, 16));
        assert!(!small(Dtype::Float, CacheDtype::Fp8, 8, 17));
        // Half (peeled): up to 8192 items per SM, 528 tokens of 128 heads.
        assert!(small(Dtype::Half, CacheDtype::Fp8, 128, 1));
        assert!(small(Dtype::Half, CacheDtype::Fp8E5m2, 128, 512));
        assert!(small(Dtype::Half, CacheDtype::Fp8, 128, 528));
        assert!(!small(Dtype::Half, CacheDtype::Fp8, 128, 529));
        assert!(!small(Dtype::Half, CacheDtype::Fp8, 128, 8192));
        assert!(!small(Dtype::Half, CacheDtype::Auto, 128, 1));
    }

    #[test]
    fn misaligned_strides_fall_back_to_scalar() {
        let p = problem(Layout::Nhd, Dtype::Half, CacheDtype::Auto, 2, 64, 10);
        let mut strides = InputStrides::contiguous(&p);
        assert!(vector_path_applies(&p, &strides));
        strides.value_token += 1;
        assert!(!vector_path_applies(&p, &strides));
        let fp8 = problem(Layout::Hnd, Dtype::Float, CacheDtype::Fp8, 2, 48, 10);
        assert!(vector_path_applies(&fp8, &InputStrides::contiguous(&fp8)));
    }
}
