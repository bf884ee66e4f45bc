//! Helpers shared by the integration tests: one builder for problems, so that a test names only
//! the sizes it cares about, and one fault-injecting backend wrapper.
//!
//! Included with `mod common;` by each test crate.

// Each test crate uses a different part of this module, and every crate compiles all of it: what
// one crate leaves unused would otherwise warn there (and clippy denies warnings).
#![allow(dead_code)]

#[cfg(feature = "wgpu")]
pub mod encoders;
pub mod faulty;
pub mod recording;
pub mod user_kernels;

use paged_kv_bench::problem::{CacheDtype, Dtype, InputStrides, Layout, Problem};

/// A problem builder starting from the defaults of [`ProblemBuilder::default`].
pub fn problem() -> ProblemBuilder {
    ProblemBuilder::default()
}

/// Builds a [`Problem`]; each setter replaces one field.
#[derive(Debug, Clone, Copy)]
pub struct ProblemBuilder {
    num_tokens: usize,
    num_heads: usize,
    head_size: usize,
    block_size: usize,
    /// `None`: room for twice the tokens plus one block (see [`ProblemBuilder::build`]).
    num_blocks: Option<usize>,
    dtype: Dtype,
    cache_dtype: CacheDtype,
    layout: Layout,
    input_strides: Option<InputStrides>,
}

impl Default for ProblemBuilder {
    /// The defaults, in one place: the benchmark's own head size, block size and dtypes
    /// (`--head-size 128 --block-size 16 --dtype bfloat16 --cache-dtype auto`), NHD, but 8 heads
    /// rather than 128 and one token, so that a default call stays cheap on the CPU.
    fn default() -> Self {
        Self {
            num_tokens: 1,
            num_heads: 8,
            head_size: 128,
            block_size: 16,
            num_blocks: None,
            dtype: Dtype::BFloat16,
            cache_dtype: CacheDtype::Auto,
            layout: Layout::Nhd,
            input_strides: None,
        }
    }
}

/// Starts from an existing problem, to change a few of its fields.
impl From<Problem> for ProblemBuilder {
    fn from(p: Problem) -> Self {
        Self {
            num_tokens: p.num_tokens,
            num_heads: p.num_heads,
            head_size: p.head_size,
            block_size: p.block_size,
            num_blocks: Some(p.num_blocks),
            dtype: p.dtype,
            cache_dtype: p.cache_dtype,
            layout: p.layout,
            input_strides: p.input_strides,
        }
    }
}

impl ProblemBuilder {
    pub fn tokens(mut self, num_tokens: usize) -> Self {
        self.num_tokens = num_tokens;
        self
    }

    pub fn heads(mut self, num_heads: usize) -> Self {
        self.num_heads = num_heads;
        self
    }

    pub fn head_size(mut self, head_size: usize) -> Self {
        self.head_size = head_size;
        self
    }

    pub fn block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }

    pub fn blocks(mut self, num_blocks: usize) -> Self {
        self.num_blocks = Some(num_blocks);
        self
    }

    pub fn dtype(mut self, dtype: Dtype) -> Self {
        self.dtype = dtype;
        self
    }

    pub fn cache_dtype(mut self, cache_dtype: CacheDtype) -> Self {
        self.cache_dtype = cache_dtype;
        self
    }

    pub fn fp8(self) -> Self {
        self.cache_dtype(CacheDtype::Fp8)
    }

    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    pub fn hnd(self) -> Self {
        self.layout(Layout::Hnd)
    }

    pub fn input_strides(mut self, input_strides: Option<InputStrides>) -> Self {
        self.input_strides = input_strides;
        self
    }

    /// Keys and values as slices of a fused QKV tensor with `query_heads` query heads (the
    /// heads and head size set so far).
    pub fn qkv_fused(self, query_heads: usize) -> Self {
        let strides = InputStrides::qkv_fused(query_heads, self.num_heads, self.head_size);
        self.input_strides(Some(strides))
    }

    /// The problem, not validated: tests also build the problems that must be refused.
    ///
    /// Without [`ProblemBuilder::blocks`], the cache gets
    /// `(2 * num_tokens).div_ceil(block_size) + 1` blocks: twice the slots the tokens need, so
    /// that random slot mappings scatter and leave untouched slots between written ones.
    pub fn build(self) -> Problem {
        Problem {
            num_tokens: self.num_tokens,
            num_heads: self.num_heads,
            head_size: self.head_size,
            block_size: self.block_size,
            num_blocks: self
                .num_blocks
                .unwrap_or_else(|| (2 * self.num_tokens).div_ceil(self.block_size) + 1),
            dtype: self.dtype,
            cache_dtype: self.cache_dtype,
            layout: self.layout,
            input_strides: self.input_strides,
        }
    }
}

/// f32 bit patterns where an fp8 encoder's rounding is decided, for `scale`: the inputs within
/// 40 ULP of each midpoint between neighbouring finite codes of `format` times the scale (both
/// signs), where a division that is not correctly rounded would go wrong; then every exponent
/// with a spread of mantissas (subnormals, zeros, infinities, NaNs).
pub fn float_patterns_near_rounding_boundaries(
    format: paged_kv_bench::problem::Fp8Format,
    scale: f32,
) -> Vec<u32> {
    let largest = (0u8..=0x7f)
        .find(|&code| format.decode(code) == format.max())
        .expect("a code for the largest finite value");
    let mut elements: Vec<u32> = Vec::new();
    for code in 0..largest {
        let midpoint = (format.decode(code) + format.decode(code + 1)) / 2.0;
        for sign in [0u32, 0x8000_0000] {
            let center = (midpoint * scale.abs()).to_bits() as i64;
            for delta in -40i64..=40 {
                let bits = center + delta;
                if (0..0x7f80_0000).contains(&bits) {
                    elements.push(bits as u32 | sign);
                }
            }
        }
    }
    for exponent in 0u32..=255 {
        for mantissa in [0, 1, 0x40_0000, 0x7f_ffff, 0x12_3457, 0x6d_b6db] {
            for sign in [0u32, 0x8000_0000] {
                elements.push(sign | (exponent << 23) | mantissa);
            }
        }
    }
    elements
}
