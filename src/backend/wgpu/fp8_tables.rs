//! fp8 helpers around the shader's encoder: scales split for it, the passes that build the
//! threshold tables and the lookup table in a call, and the encoder alone on given elements
//! (how the tests prove it bit-exact against `fp8::quantize`).

use super::abi::{
    input_kind, GpuEncodeParams, GpuLutParams, GpuScale, GpuTableParams, ENCODE_IN_BINDING,
    ENCODE_OUT_BINDING, ENCODE_PARAMS_BINDING, FAST_HIGHEST_EXPONENT, FAST_LOWEST_EXPONENT_E4M3,
    FAST_LOWEST_EXPONENT_E5M2, FP8_THRESHOLDS_BINDING, LUT_BYTES, LUT_OUT_BINDING,
    LUT_PARAMS_BINDING, LUT_SCALES_BINDING, SCALE_FINITE, SCALE_INFINITE, SCALE_NAN, SCALE_ZERO,
    TABLE_BYTES, TABLE_OUT_BINDING, TABLE_PARAMS_BINDING,
};
use super::call::{record_dispatches, Dispatch};
use super::device::Gpu;
use super::WgpuBackend;
use crate::error::{Error, Result};
use crate::problem::{Dtype, Fp8Format};

/// The fp8 sign bit of the NaN of an invalid division (0 / 0, inf / inf): the reference fixes it
/// as negative (`fp8::quantize`), whatever the host processor does.
pub(super) fn host_nan_sign() -> u32 {
    0x80
}

impl GpuScale {
    /// Whether the threshold-table encoder handles this scale for `format` (see the shader):
    /// finite, with an exponent in [-116, 125] for e4m3, [-109, 125] for e5m2 (whose smaller
    /// codes reach further down: f32 subnormals the estimate flushes to zero must still
    /// encode as 0).
    pub fn table_applies(&self, format: Fp8Format) -> bool {
        let lowest = match format {
            Fp8Format::E4m3 => FAST_LOWEST_EXPONENT_E4M3,
            Fp8Format::E5m2 => FAST_LOWEST_EXPONENT_E5M2,
        };
        self.kind == SCALE_FINITE && (lowest..=FAST_HIGHEST_EXPONENT).contains(&self.exponent)
    }

    /// Splits `scale` into a normalised 24-bit significand and exponent (subnormals included),
    /// so that the shader never divides by anything but an exact integer-valued f32.
    pub fn new(scale: f32) -> Self {
        let bits = scale.to_bits();
        let magnitude = bits & 0x7fff_ffff;
        let sign = (bits >> 24) & 0x80;
        let (kind, significand, exponent) = if magnitude > 0x7f80_0000 {
            (SCALE_NAN, 0, 0)
        } else if magnitude == 0x7f80_0000 {
            (SCALE_INFINITE, 0, 0)
        } else if magnitude == 0 {
            (SCALE_ZERO, 0, 0)
        } else if magnitude < 0x80_0000 {
            let normalise = magnitude.leading_zeros() - 8;
            (
                SCALE_FINITE,
                magnitude << normalise,
                -126 - normalise as i32,
            )
        } else {
            (
                SCALE_FINITE,
                (magnitude & 0x7f_ffff) | 0x80_0000,
                (magnitude >> 23) as i32 - 127,
            )
        };
        let reciprocal = if significand == 0 {
            0.0
        } else {
            1.0 / significand as f32
        };
        Self {
            significand,
            exponent,
            reciprocal,
            sign,
            kind,
            _pad: [0; 3],
        }
    }
}

/// A table the encoder reads, built on the device by a dispatch of its own in the same pass as
/// the kernel that reads it. (The build writes it as storage and the kernel reads it as
/// read-only storage or uniform: wgpu orders the two dispatches of the pass by that change of
/// use.)
pub(super) struct Fp8Table {
    pub table: wgpu::Buffer,
    pub build: Dispatch,
    /// The build's parameters.
    pub params: wgpu::Buffer,
    /// Any other buffer the build reads (the lookup table's scales).
    pub extra: Option<wgpu::Buffer>,
}

/// Which of the shader's encoders `WgpuBackend::encode_with` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoder {
    /// `quantize_exact`: the short encoder where it handles the scale, else the long one.
    Short,
    /// `quantize` alone.
    Long,
    /// `quantize_table`, from tables built on the device.
    Tables,
}

/// The override constants of a pipeline that encodes `format`, by the short encoder where it
/// applies (`fast`) or by the long one alone: only those that differ from the shader's
/// defaults (none for e4m3 with the short encoder), so that the default pipelines are compiled
/// as they always were. Every fp8 pipeline takes its encoder's constants from here.
pub(super) fn encoder_constants(format: Fp8Format, fast: bool) -> Vec<(&'static str, f64)> {
    let mut constants = Vec::new();
    if format == Fp8Format::E5m2 {
        constants.push(("E5M2", 1.0));
    }
    if !fast {
        constants.push(("FP8_FAST", 0.0));
    }
    constants
}

impl Fp8Table {
    /// The threshold tables of two scales (keys and values), built by one workgroup.
    pub fn thresholds(
        gpu: &mut Gpu,
        format: Fp8Format,
        k_scale: GpuScale,
        v_scale: GpuScale,
    ) -> Result<Self> {
        let pipeline = gpu.pipeline("fp8_table_build", &encoder_constants(format, true))?;
        let params = GpuTableParams { k_scale, v_scale };
        gpu.scoped("allocating the fp8 tables", || {
            let table = gpu.buffer(
                "fp8 tables",
                TABLE_BYTES,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
            );
            let uniform = gpu.uniform("fp8 table params", &params);
            let bind_group = gpu.bind_group(
                &pipeline,
                &[
                    (TABLE_PARAMS_BINDING, &uniform),
                    (TABLE_OUT_BINDING, &table),
                ],
            );
            Fp8Table {
                table,
                build: Dispatch {
                    pipeline,
                    bind_group,
                    grid: (1, 1),
                },
                params: uniform,
                extra: None,
            }
        })
    }

    /// The lookup table of two scales (keys, values) for 16-bit inputs of `dtype`; or, with
    /// `head_scales` (the keys' heads, then the values'), one table per head and tensor. Built
    /// by the short encoder where the scales allow and `fast`, else by the long one.
    pub fn lookup(
        gpu: &mut Gpu,
        dtype: Dtype,
        format: Fp8Format,
        [k_scale, v_scale]: [GpuScale; 2],
        head_scales: &[GpuScale],
        nan_sign: u32,
        fast: bool,
    ) -> Result<Self> {
        let per_head = !head_scales.is_empty();
        let mut constants = vec![("IN_KIND", input_kind(dtype))];
        constants.extend(encoder_constants(format, fast));
        if per_head {
            constants.extend([("PER_HEAD", 1.0), ("HEADS", (head_scales.len() / 2) as f64)]);
        }
        let pipeline = gpu.pipeline("fp8_lut_build", &constants)?;
        let params = GpuLutParams {
            nan_sign,
            _pad: [0; 3],
            k_scale,
            v_scale,
        };
        // Two tables of LUT_BYTES / 2, or one per head and tensor.
        let bytes = if per_head {
            head_scales.len() as u64 * LUT_BYTES / 2
        } else {
            LUT_BYTES
        };
        let grid = gpu.grid(bytes / 4)?;
        gpu.scoped("allocating the fp8 lookup table", || {
            let table = gpu.buffer("fp8 lookup table", bytes, wgpu::BufferUsages::STORAGE);
            let uniform = gpu.uniform("fp8 lookup table params", &params);
            // (A per-tensor build reads no scale from here: a placeholder.)
            let scales: &[GpuScale] = if per_head { head_scales } else { &[k_scale] };
            let scales = gpu.storage("fp8 lookup table scales", bytemuck::cast_slice(scales));
            let bind_group = gpu.bind_group(
                &pipeline,
                &[
                    (LUT_PARAMS_BINDING, &uniform),
                    (LUT_OUT_BINDING, &table),
                    (LUT_SCALES_BINDING, &scales),
                ],
            );
            // The scales go with the parameters: freed when the call is.
            Fp8Table {
                table,
                build: Dispatch {
                    pipeline,
                    bind_group,
                    grid,
                },
                params: uniform,
                extra: Some(scales),
            }
        })
    }
}

impl WgpuBackend {
    /// Runs the shader's fp8 encoder alone on `elements` (f32 bits for `Dtype::Float`, else the
    /// 16-bit pattern in the low half of each word) divided by `scale`: one e4m3 code per
    /// element. This is how the tests prove the encoder bit-exact over every 16-bit input.
    ///
    /// The encoder is the one the kernels use without tables: the short one where it handles
    /// `scale`, else the long one ([`WgpuBackend::encode_fp8_long_as`]: the long one alone).
    /// `estimate_skew_ulps` is 0 in normal use; tests set it to move the encoder's first
    /// estimate of the quotient by that many f32 ULP, as a GPU whose division is that far off
    /// would, to show the result stays exact (up to 255 ULP) regardless.
    pub fn encode_fp8(
        &mut self,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Vec<u8>> {
        self.encode_fp8_as(Fp8Format::E4m3, dtype, elements, scale, estimate_skew_ulps)
    }

    /// As [`WgpuBackend::encode_fp8`], in `format` (e4m3 or e5m2: `Fp8Format::quantize`).
    pub fn encode_fp8_as(
        &mut self,
        format: Fp8Format,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Vec<u8>> {
        self.encode_with(
            Encoder::Short,
            format,
            dtype,
            elements,
            scale,
            estimate_skew_ulps,
        )
    }

    /// As [`WgpuBackend::encode_fp8_as`], by the long encoder alone (`quantize`, which the
    /// short one falls back to near rounding boundaries and for the scales it does not handle).
    pub fn encode_fp8_long_as(
        &mut self,
        format: Fp8Format,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Vec<u8>> {
        self.encode_with(
            Encoder::Long,
            format,
            dtype,
            elements,
            scale,
            estimate_skew_ulps,
        )
    }

    /// As [`WgpuBackend::encode_fp8`], through the threshold-table encoder that the cache
    /// kernels use for large fp8 calls (tables built on the device from `scale`, as in a
    /// call), or `None` where that encoder does not handle `scale` (the kernels then use the
    /// plain one). `estimate_skew_ulps` moves its first estimate likewise.
    pub fn encode_fp8_table(
        &mut self,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Option<Vec<u8>>> {
        self.encode_fp8_table_as(Fp8Format::E4m3, dtype, elements, scale, estimate_skew_ulps)
    }

    /// As [`WgpuBackend::encode_fp8_table`], in `format`.
    pub fn encode_fp8_table_as(
        &mut self,
        format: Fp8Format,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Option<Vec<u8>>> {
        if !GpuScale::new(scale).table_applies(format) {
            return Ok(None);
        }
        self.encode_with(
            Encoder::Tables,
            format,
            dtype,
            elements,
            scale,
            estimate_skew_ulps,
        )
        .map(Some)
    }

    fn encode_with(
        &mut self,
        encoder: Encoder,
        format: Fp8Format,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Vec<u8>> {
        if elements.is_empty() {
            return Ok(Vec::new());
        }
        let gpu = &mut self.gpu;
        let mut constants = vec![
            ("IN_KIND", input_kind(dtype)),
            ("ESTIMATE_SKEW", estimate_skew_ulps as f64),
        ];
        constants.extend(encoder_constants(format, encoder != Encoder::Long));
        let pipeline = match encoder {
            Encoder::Tables => {
                constants.push(("FP8_TABLE", 1.0));
                gpu.pipeline("encode_fp8_table", &constants)?
            }
            Encoder::Short | Encoder::Long => gpu.pipeline("encode_fp8", &constants)?,
        };
        let bytes = 4 * elements.len() as u64;
        if bytes > self.max_binding {
            return Err(Error::InvalidConfig(format!(
                "encode at most {} elements at a time",
                self.max_binding / 4
            )));
        }
        let params = GpuEncodeParams {
            count: elements.len() as u32,
            nan_sign: self.nan_sign,
            _pad: [0; 2],
            scale: GpuScale::new(scale),
        };
        let grid = gpu.grid(elements.len() as u64)?;
        let (input, output) = gpu.scoped("allocating the encoder test buffers", || {
            (
                gpu.buffer(
                    "encode input",
                    bytes,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                ),
                gpu.buffer(
                    "encode output",
                    bytes,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                ),
            )
        })?;
        gpu.upload(&input, bytemuck::cast_slice(elements))?;
        // The threshold tables, built in the same pass as in a cache call.
        let tables = if encoder == Encoder::Tables {
            Some(Fp8Table::thresholds(
                gpu,
                format,
                params.scale,
                params.scale,
            )?)
        } else {
            None
        };
        let gpu = &*gpu;
        let uniform = gpu.scoped("running the fp8 encoder", || {
            let uniform = gpu.uniform("encode params", &params);
            let mut entries = vec![
                (ENCODE_PARAMS_BINDING, &uniform),
                (ENCODE_IN_BINDING, &input),
                (ENCODE_OUT_BINDING, &output),
            ];
            if let Some(tables) = &tables {
                entries.push((FP8_THRESHOLDS_BINDING, &tables.table));
            }
            let group = gpu.bind_group(&pipeline, &entries);
            gpu.submit_pass(|pass| {
                if let Some(tables) = &tables {
                    record_dispatches(pass, std::slice::from_ref(&tables.build));
                }
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, 1);
            });
            uniform
        })?;
        gpu.wait()?;
        let words = gpu.download(&output, bytes)?;
        for buffer in [input, output, uniform] {
            buffer.destroy();
        }
        if let Some(tables) = tables {
            tables.table.destroy();
            tables.params.destroy();
        }
        Ok(words
            .chunks_exact(4)
            .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as u8)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_split_exactly() {
        let s = GpuScale::new(0.07);
        let rebuilt = s.significand as f64 * 2f64.powi(s.exponent - 23);
        assert_eq!(rebuilt as f32, 0.07);
        assert_eq!((s.kind, s.sign), (SCALE_FINITE, 0));
        let tiny = GpuScale::new(f32::from_bits(3));
        assert_eq!((tiny.significand, tiny.exponent), (0xc0_0000, -148));
        assert_eq!(GpuScale::new(-2.0).sign, 0x80);
        assert_eq!(GpuScale::new(0.0).kind, SCALE_ZERO);
        assert_eq!(GpuScale::new(f32::INFINITY).kind, SCALE_INFINITE);
        assert_eq!(GpuScale::new(f32::NAN).kind, SCALE_NAN);
    }
}
