//! How a call encodes fp8: by the plain encoder, the threshold tables or the lookup table
//! (`Fp8Path`), and with a thread per 16-byte cache unit or four (`Plan::unit_threads`). Pure
//! functions of the problem, the plan and the tuning, tested here without a device.

use crate::options::WgpuTuning;
use crate::problem::{Dtype, Problem};

use super::abi::{storage_bindings, LUT_VALUES};
use super::plan::{Kernel, Plan};

/// fp8 elements (keys and values) per call of 16-bit inputs up to which calls share each 16-byte
/// cache unit among `FP8_SPLIT` threads, encoding with the plain encoder and no table: the
/// lookup table's pass costs a dependent dispatch and its build, and the plain encoder's time
/// on a small call is each thread's chain of exact encodings, which the split cuts to a
/// quarter. On an H100 (bf16, 128 x 128; short encoder, sixth session) 2 / 64 tokens took 3.95
/// / 7.30 us against the table's 7.42 / 8.18, 128 tokens (2^22 elements) 11.50 against 9.90.
const FP8_SPLIT_MAX_ELEMENTS_16: u64 = 1 << 21;
/// The same for float inputs, which take no lookup table: split units against whole ones, both
/// by the short encoder. On an H100 (float, 128 x 128) 1024 tokens (2^25 elements) took 69.3
/// against 74.9 us, 4096 and 8192 tokens 301 / 561 against 269 / 527.
const FP8_SPLIT_MAX_ELEMENTS_FLOAT: u64 = 1 << 25;
/// Threads per 16-byte unit in a split call (`SPLIT` in the shader): one word each.
const FP8_SPLIT: u32 = 4;
/// Per-head scales: the lookup tables (one per head and tensor, 65536 codes each) are taken by
/// default from this many elements per head and tensor on, where building them (65536
/// encodings per table) costs at most what encoding every element would. Not measured on a
/// GPU yet: the break-even by operation counts.
const FP8_HEAD_LUT_MIN_ELEMENTS: u64 = 1 << 16;

/// How a call's kernel encodes fp8 (auto caches: `Plain`, which then encodes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fp8Path {
    /// `quantize` alone.
    Plain,
    /// Threshold tables built in the call (float inputs, or the lookup table turned off).
    Thresholds,
    /// A lookup table of every 16-bit pattern's code, built in the call.
    Lut,
}

impl Plan {
    /// Threads per 16-byte cache unit for `problem`: `FP8_SPLIT` for fp8 calls of at most
    /// `FP8_SPLIT_MAX_ELEMENTS_16` (`_FLOAT`) elements in the 16-byte kernels with one unit per
    /// thread, unless the tuning asks for a table (or sets the split either way), else 1.
    pub(super) fn fp8_unit_threads(&self, problem: &Problem, tuning: &WgpuTuning) -> u32 {
        if !problem.cache_dtype.is_fp8() || self.kernel == Kernel::Words || self.units != 1 {
            return 1;
        }
        let elements = 2 * problem.num_tokens as u64 * problem.token_elements() as u64;
        // A table asked for keeps its default use: the split is for calls without one.
        let table_asked = tuning.fp8_lut == Some(true) || tuning.fp8_table == Some(true);
        let most = match problem.dtype {
            Dtype::Float => FP8_SPLIT_MAX_ELEMENTS_FLOAT,
            Dtype::Half | Dtype::BFloat16 => FP8_SPLIT_MAX_ELEMENTS_16,
        };
        let split = tuning.fp8_split.unwrap_or(!table_asked && elements <= most);
        if split {
            FP8_SPLIT
        } else {
            1
        }
    }

    /// How the call encodes fp8, given whether the threshold tables handle both of its scales.
    ///
    /// The lookup table (16-bit inputs only; on by default: exact, and on an H100 2.1x faster
    /// than the threshold tables at 65536 tokens, 2.9x at 2 tokens, where building the
    /// thresholds costs more: docs/perf-log-wgpu.md) takes a pass of its own (128 workgroups)
    /// in every call, and one more storage binding in the kernel: where the adapter has none
    /// to spare for the plan's kernel (an adapter with the minimum of 8 runs the one-chunk
    /// kernel with all 8), the call keeps the other encoders.
    ///
    /// The threshold tables take a pass of their own (one workgroup of binary searches, about
    /// 12 us on an H100) in every call; since the short encoder (sixth session) they save
    /// nothing: float calls of 512 to 8192 tokens took 61 / 594 us with them against 42.6 /
    /// 527 without (docs/perf-log-wgpu.md), and they handle the same scales as the short
    /// encoder. Taken only when the tuning asks (exact either way: tests/wgpu.rs).
    ///
    /// Per-head scales take no threshold tables (they are per tensor); their lookup tables,
    /// one per head, by default only from `FP8_HEAD_LUT_MIN_ELEMENTS` elements per table on,
    /// and only where they fit one binding of `max_binding` bytes.
    ///
    /// Calls split among four threads per unit (small calls, `FP8_SPLIT_MAX_ELEMENTS_16` and
    /// `_FLOAT`) take neither table by default: each thread encodes four elements with the
    /// plain encoder (the short one where it handles the scales).
    pub fn fp8_path(
        &self,
        problem: &Problem,
        scales_fit_tables: bool,
        per_head: bool,
        limits: (u32, u64),
        tuning: &WgpuTuning,
    ) -> Fp8Path {
        let (max_storage_bindings, max_binding) = limits;
        if !problem.cache_dtype.is_fp8() || self.kernel == Kernel::Words {
            return Fp8Path::Plain;
        }
        let lut_possible = problem.dtype != Dtype::Float
            && storage_bindings(self.kernel.chunks() as u32) < max_storage_bindings;
        if per_head {
            let table_bytes = 2 * problem.num_heads as u64 * LUT_VALUES as u64;
            let elements = problem.num_tokens as u64 * problem.head_size as u64;
            let lut = lut_possible
                && table_bytes <= max_binding
                && tuning
                    .fp8_lut
                    .unwrap_or(self.unit_threads == 1 && elements >= FP8_HEAD_LUT_MIN_ELEMENTS);
            return if lut { Fp8Path::Lut } else { Fp8Path::Plain };
        }
        let lut = lut_possible && tuning.fp8_lut.unwrap_or(self.unit_threads == 1);
        if lut {
            return Fp8Path::Lut;
        }
        if scales_fit_tables && tuning.fp8_table.unwrap_or(false) {
            Fp8Path::Thresholds
        } else {
            Fp8Path::Plain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{limits, problem};
    use super::*;
    use crate::problem::CacheDtype;

    #[test]
    fn fp8_paths_by_dtype_size_bindings_and_tuning() {
        let default = WgpuTuning::default();
        let p = problem(Dtype::BFloat16, CacheDtype::Fp8, 2, 128);
        let plan = Plan::split(&p, 20 << 10, u64::MAX, 32, "test").unwrap();
        assert_eq!(plan.kernel, Kernel::Multi);
        // 16-bit inputs: the lookup table where a storage binding is left for it.
        assert_eq!(
            plan.fp8_path(&p, true, false, (32, 1 << 30), &default),
            Fp8Path::Lut
        );
        assert_eq!(
            plan.fp8_path(&p, true, false, (28, 1 << 30), &default),
            Fp8Path::Plain
        );
        assert_eq!(plan.entry_point(Fp8Path::Lut), "reshape_and_cache_lut");
        // Float inputs: the plain encoder at every size; threshold tables only when asked for,
        // and where the scales allow.
        let small = problem(Dtype::Float, CacheDtype::Fp8, 2, 128);
        let large = Problem {
            num_tokens: 1 << 16,
            ..small
        };
        assert_eq!(
            plan.fp8_path(&small, true, false, (32, 1 << 30), &default),
            Fp8Path::Plain
        );
        assert_eq!(
            plan.fp8_path(&large, true, false, (32, 1 << 30), &default),
            Fp8Path::Plain
        );
        let tables = WgpuTuning {
            fp8_table: Some(true),
            ..default
        };
        assert_eq!(
            plan.fp8_path(&large, true, false, (32, 1 << 30), &tables),
            Fp8Path::Thresholds
        );
        assert_eq!(
            plan.fp8_path(&large, false, false, (32, 1 << 30), &tables),
            Fp8Path::Plain
        );
        let forced = WgpuTuning {
            fp8_table: Some(true),
            fp8_lut: Some(false),
            ..default
        };
        assert_eq!(
            plan.fp8_path(&p, true, false, (32, 1 << 30), &forced),
            Fp8Path::Thresholds
        );
        let constants = plan.constants(&p, Fp8Path::Thresholds, false);
        assert!(constants.contains(&("FP8_TABLE", 1.0)));
        assert!(constants.contains(&("ROW_UNITS", 16.0)));
        assert!(!constants
            .iter()
            .any(|(name, _)| ["PER_HEAD", "E5M2", "STRIDED"].contains(name)));
        assert_eq!(plan.in_token_stride(&p), 32);
        // Auto caches encode nothing.
        let auto = problem(Dtype::BFloat16, CacheDtype::Auto, 2, 128);
        assert_eq!(
            plan.fp8_path(&auto, true, false, (32, 1 << 30), &default),
            Fp8Path::Plain
        );
        // Per-head scales: never the (per-tensor) threshold tables; the per-head lookup
        // tables from 65536 elements per head on, where they fit a binding, or when asked for.
        let large16 = Problem {
            num_tokens: 512,
            ..p
        };
        let per_head = |problem: &Problem, max_binding: u64, tuning: &WgpuTuning| {
            plan.fp8_path(problem, true, true, (32, max_binding), tuning)
        };
        assert_eq!(per_head(&p, 1 << 30, &default), Fp8Path::Plain);
        assert_eq!(per_head(&large16, 1 << 30, &default), Fp8Path::Lut);
        // 2 heads x 2 tensors x 64 KiB.
        assert_eq!(per_head(&large16, (4 << 16) - 1, &default), Fp8Path::Plain);
        let lut = WgpuTuning {
            fp8_lut: Some(true),
            ..default
        };
        assert_eq!(per_head(&p, 1 << 30, &lut), Fp8Path::Lut);
        assert_eq!(per_head(&large16, 1 << 30, &forced), Fp8Path::Plain);
        assert_eq!(per_head(&large, 1 << 30, &forced), Fp8Path::Plain);
        let constants = plan.constants(&p, Fp8Path::Plain, true);
        assert!(constants.contains(&("PER_HEAD", 1.0)));
        assert!(constants.contains(&("HEADS", 2.0)));
        assert!(constants.contains(&("HEAD_UNITS", 8.0)));
        let e5m2 = Problem {
            cache_dtype: CacheDtype::Fp8E5m2,
            ..p
        };
        assert!(plan
            .constants(&e5m2, Fp8Path::Lut, false)
            .contains(&("E5M2", 1.0)));
        // The long encoder alone only when the plan says so, and only for fp8 caches.
        let fast_off = |plan: &Plan, problem: &Problem| {
            plan.constants(problem, Fp8Path::Plain, false)
                .contains(&("FP8_FAST", 0.0))
        };
        let long = Plan {
            fp8_fast: false,
            ..plan.clone()
        };
        assert!(!fast_off(&plan, &p));
        assert!(fast_off(&long, &p));
        assert!(!fast_off(&long, &auto));
        // Fused inputs: the input row of a token is the whole fused row.
        let fused = Problem {
            input_strides: Some(crate::problem::InputStrides::qkv_fused(6, 2, 128)),
            ..p
        };
        assert!(plan
            .constants(&fused, Fp8Path::Plain, false)
            .contains(&("STRIDED", 1.0)));
        assert_eq!(plan.in_token_stride(&fused), 160);
    }

    #[test]
    fn small_fp8_calls_split_units_among_four_threads() {
        let p = problem(Dtype::BFloat16, CacheDtype::Fp8, 128, 128);
        let limits = limits(2 << 30, 32);
        let plan = |problem: &Problem, tuning: &WgpuTuning| {
            Plan::new(problem, &limits, tuning, "t").unwrap()
        };
        let default = WgpuTuning::default();
        let fp8_path = |plan: &Plan, problem: &Problem, tuning: &WgpuTuning| {
            plan.fp8_path(problem, true, false, (32, 2 << 30), tuning)
        };
        // 64 tokens of 2 x 128 x 128: 2^21 elements, the most a split call of 16-bit inputs
        // takes by default.
        let small = Problem {
            num_tokens: 64,
            ..p
        };
        let split = plan(&small, &default);
        assert_eq!(split.unit_threads, FP8_SPLIT);
        assert_eq!(split.threads(&small, 64), 4 * 64 * 1024);
        assert!(split
            .constants(&small, Fp8Path::Plain, false)
            .contains(&("SPLIT", 4.0)));
        // Split calls take no table by default, and a table asked for keeps its calls whole.
        assert_eq!(fp8_path(&split, &small, &default), Fp8Path::Plain);
        let lut = WgpuTuning {
            fp8_lut: Some(true),
            ..default
        };
        assert_eq!(plan(&small, &lut).unit_threads, 1);
        let table = WgpuTuning {
            fp8_table: Some(true),
            ..default
        };
        assert_eq!(plan(&small, &table).unit_threads, 1);
        // Larger calls, auto caches and several units per thread: whole units, no SPLIT.
        let large = Problem {
            num_tokens: 65,
            ..p
        };
        let whole = plan(&large, &default);
        assert_eq!(whole.unit_threads, 1);
        assert_eq!(whole.threads(&large, 65), 65 * 1024);
        // Float inputs split up to 2^25 elements (1024 tokens here).
        let float = |num_tokens| Problem {
            num_tokens,
            dtype: Dtype::Float,
            ..p
        };
        assert_eq!(plan(&float(1024), &default).unit_threads, FP8_SPLIT);
        assert_eq!(plan(&float(1025), &default).unit_threads, 1);
        assert!(!whole
            .constants(&large, Fp8Path::Lut, false)
            .iter()
            .any(|(name, _)| *name == "SPLIT"));
        assert_eq!(fp8_path(&whole, &large, &default), Fp8Path::Lut);
        let auto = Problem {
            cache_dtype: CacheDtype::Auto,
            ..small
        };
        assert_eq!(plan(&auto, &default).unit_threads, 1);
        let units = WgpuTuning {
            units_per_thread: Some(2),
            fp8_split: Some(true),
            ..default
        };
        assert_eq!(plan(&small, &units).unit_threads, 1);
        // The tuning forces it either way, tables included.
        let forced = WgpuTuning {
            fp8_split: Some(true),
            fp8_lut: Some(true),
            ..default
        };
        let forced_plan = plan(&large, &forced);
        assert_eq!(forced_plan.unit_threads, FP8_SPLIT);
        assert_eq!(fp8_path(&forced_plan, &large, &forced), Fp8Path::Lut);
        let off = WgpuTuning {
            fp8_split: Some(false),
            ..default
        };
        assert_eq!(plan(&small, &off).unit_threads, 1);
    }
}
