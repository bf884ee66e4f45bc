//! What crosses to the shader: the parameter blocks as the shader declares them (`#[repr(C)]`
//! mirrors of its structs), the numbers of [`super::bindings`] (binding numbers among them:
//! no other Rust file writes one as a literal), and the encoding of override constants.

use bytemuck::{Pod, Zeroable};

pub(super) use super::bindings::*;
use crate::problem::Dtype;

/// A scale as the shader takes it (`Scale` in the shader); built by `GpuScale::new`
/// (`fp8_tables.rs`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuScale {
    pub significand: u32,
    pub exponent: i32,
    pub reciprocal: f32,
    pub sign: u32,
    /// `SCALE_FINITE`, `SCALE_ZERO`, `SCALE_INFINITE` or `SCALE_NAN`.
    pub kind: u32,
    pub _pad: [u32; 3],
}

/// `Params` in the shader: the cache kernels' parameters.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuParams {
    pub num_tokens: u32,
    pub num_slots: u32,
    pub first_chunk: u32,
    pub num_units: u32,
    pub nan_sign: u32,
    pub split_input: u32,
    /// `PER_HEAD`: where the per-head scales start in the slots buffer, in 8-byte pairs.
    pub scales_at: u32,
    /// `STRIDED`: 16-byte input units (elements in the word kernel) from one token to the next.
    pub in_token_stride: u32,
    pub k_scale: GpuScale,
    pub v_scale: GpuScale,
}

/// `OrderParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuOrderParams {
    pub num_tokens: u32,
    pub num_slots: u32,
    pub slots_per_bucket: u32,
    pub buckets: u32,
}

/// `EncodeParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuEncodeParams {
    pub count: u32,
    pub nan_sign: u32,
    pub _pad: [u32; 2],
    pub scale: GpuScale,
}

/// `FillParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuFillParams {
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub chunk: u32,
    pub words: u32,
}

/// `TableParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuTableParams {
    pub k_scale: GpuScale,
    pub v_scale: GpuScale,
}

/// `LutParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuLutParams {
    pub nan_sign: u32,
    pub _pad: [u32; 3],
    pub k_scale: GpuScale,
    pub v_scale: GpuScale,
}

/// Bytes of the fp8 threshold tables (`fp8_thresholds` in the shader): one table of
/// `TABLE_CODES` words for the keys and one for the values.
pub(super) const TABLE_BYTES: u64 = 2 * TABLE_CODES as u64 * 4;

/// Bytes of the fp8 lookup tables (`fp8_lut` in the shader): one byte per 16-bit pattern, for
/// the keys and for the values.
pub(super) const LUT_BYTES: u64 = 2 * LUT_VALUES as u64;

/// The shader's `IN_KIND` override for inputs of `dtype`.
pub(super) fn input_kind(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::Half => 0.0,
        Dtype::BFloat16 => 1.0,
        Dtype::Float => 2.0,
    }
}

/// A boolean override constant.
pub(super) fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shader's side of the same check is in build.rs: a field added to one side only
    /// changes a size.
    #[test]
    fn parameter_blocks_are_as_large_as_the_shaders() {
        for (name, bytes) in STRUCT_BYTES {
            let size = match name {
                "Scale" => size_of::<GpuScale>(),
                "Params" => size_of::<GpuParams>(),
                "OrderParams" => size_of::<GpuOrderParams>(),
                "EncodeParams" => size_of::<GpuEncodeParams>(),
                "FillParams" => size_of::<GpuFillParams>(),
                "TableParams" => size_of::<GpuTableParams>(),
                "LutParams" => size_of::<GpuLutParams>(),
                other => panic!("no Rust mirror of `{other}`"),
            };
            assert_eq!(size, bytes as usize, "{name}");
        }
    }
}
