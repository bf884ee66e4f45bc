//! Properties over random shapes, input strides, scales and cache dtypes (proptest shrinks a
//! failure to the smallest shape that still fails):
//! - the CPU reference writes exactly the input (or its fp8 encoding, e4m3 or e5m2, from the
//!   `float8` crate) into each targeted slot and leaves every other byte as it was;
//! - a backend equals the reference: [`backend_matches_reference_on_random_shapes`] takes any
//!   `&mut dyn Backend`, so another backend gets the same property with one test calling it.

mod common;

use std::cell::RefCell;

use common::problem;
use float8::{F8E4M3, F8E5M2};
use paged_kv_bench::backend::cpu::CpuBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::fp8;
use paged_kv_bench::problem::{CacheDtype, Dtype, InputStrides, Layout, Problem};
use paged_kv_bench::reference::reshape_and_cache;
use paged_kv_bench::verify::{self, Case};
use paged_kv_bench::workload::{Caches, Inputs, Scale, Scaling, SlotPattern};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// Modest case counts: the suite runs on 2 cores.
fn config(cases: u32) -> Config {
    Config {
        cases,
        // Inputs come from a seed inside each case: a stored regression file would not help
        // more than the printed minimal case does.
        failure_persistence: None,
        ..Config::default()
    }
}

fn layouts() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::Nhd), Just(Layout::Hnd)]
}

fn dtypes() -> impl Strategy<Value = Dtype> {
    prop_oneof![Just(Dtype::Half), Just(Dtype::BFloat16), Just(Dtype::Float)]
}

fn cache_dtypes() -> impl Strategy<Value = CacheDtype> {
    prop_oneof![
        2 => Just(CacheDtype::Auto),
        1 => Just(CacheDtype::Fp8),
        1 => Just(CacheDtype::Fp8E5m2),
    ]
}

/// How keys and values lie in their tensors: contiguous, slices of a fused QKV tensor with 0
/// to 4 query heads, or any strides that keep heads and tokens apart (gaps of a few elements,
/// which break 16-byte alignment).
#[derive(Debug, Clone, Copy)]
enum Strides {
    Contiguous,
    Fused(usize),
    Gaps { head: u64, token: u64 },
}

fn strides() -> impl Strategy<Value = Strides> {
    prop_oneof![
        2 => Just(Strides::Contiguous),
        1 => (0usize..=4).prop_map(Strides::Fused),
        1 => (0u64..=3, 0u64..=5).prop_map(|(head, token)| Strides::Gaps { head, token }),
    ]
}

/// Shapes: 1..=6 heads, head sizes 1..=40 (multiples of 16 up to 48 for fp8), block sizes
/// 1..=8, up to 12 blocks, 1..=50 tokens that fit in the cache; any input strides.
fn problems(layouts: BoxedStrategy<Layout>) -> impl Strategy<Value = Problem> {
    (
        (layouts, dtypes(), cache_dtypes(), strides()),
        1usize..=6,
        1usize..=8,
        1usize..=12,
    )
        .prop_flat_map(
            |((layout, dtype, cache_dtype, strides), num_heads, block_size, num_blocks)| {
                let fp8 = cache_dtype.is_fp8();
                let head_sizes = if fp8 {
                    (1usize..=3).prop_map(|k| 16 * k).boxed()
                } else {
                    (1usize..=40).boxed()
                };
                let max_tokens = (num_blocks * block_size).min(50);
                (head_sizes, 1..=max_tokens).prop_map(move |(head_size, num_tokens)| {
                    problem()
                        .tokens(num_tokens)
                        .heads(num_heads)
                        .head_size(head_size)
                        .block_size(block_size)
                        .blocks(num_blocks)
                        .dtype(dtype)
                        .cache_dtype(cache_dtype)
                        .layout(layout)
                        .input_strides(match strides {
                            Strides::Contiguous => None,
                            Strides::Fused(query_heads) => {
                                Some(InputStrides::qkv_fused(query_heads, num_heads, head_size))
                            }
                            Strides::Gaps { head, token } => {
                                let head = head_size as u64 + head;
                                Some(InputStrides {
                                    head,
                                    token: (num_heads as u64 - 1) * head + head_size as u64 + token,
                                })
                            }
                        })
                        .build()
                })
            },
        )
}

/// What a token's slot entry becomes: kept, padding (-1), or out of range (which the reference
/// must skip like padding).
#[derive(Debug, Clone, Copy)]
enum SlotKind {
    Kept,
    Padding,
    BelowZero,
    PastTheEnd,
}

/// A problem with a slot mapping of distinct slots, some padding and some out of range.
fn problems_with_slots() -> impl Strategy<Value = (Problem, Vec<i64>)> {
    problems(layouts().boxed()).prop_flat_map(|problem| {
        let num_slots = problem.num_slots() as i64;
        let kinds = prop_oneof![
            6 => Just(SlotKind::Kept),
            2 => Just(SlotKind::Padding),
            1 => Just(SlotKind::BelowZero),
            1 => Just(SlotKind::PastTheEnd),
        ];
        (
            Just((0..num_slots).collect::<Vec<i64>>()).prop_shuffle(),
            proptest::collection::vec(kinds, problem.num_tokens),
            1i64..1000,
        )
            .prop_map(move |(shuffled, kinds, beyond)| {
                let slots = kinds
                    .iter()
                    .zip(shuffled)
                    .map(|(kind, slot)| match kind {
                        SlotKind::Kept => slot,
                        SlotKind::Padding => -1,
                        SlotKind::BelowZero => -1 - beyond,
                        SlotKind::PastTheEnd => num_slots - 1 + beyond,
                    })
                    .collect();
                (problem, slots)
            })
    })
}

/// `elements` values of `dtype`: mostly normal values over many binades (fp8 subnormals,
/// normals and saturation), one in eight raw random bits (NaNs with payloads, infinities,
/// subnormals of the input type), and for float inputs one in eight a value whose quotient by
/// `scale` lies within two ulps of a tie between two e4m3 values (where rounding decides).
fn values(dtype: Dtype, elements: usize, scale: f32, rng: &mut SmallRng) -> Vec<u8> {
    let mut bytes = vec![0u8; elements * dtype.size()];
    for i in 0..elements {
        if rng.random_ratio(1, 8) {
            let size = dtype.size();
            rng.fill(&mut bytes[i * size..(i + 1) * size]);
        } else if dtype == Dtype::Float && rng.random_ratio(1, 7) {
            let code = rng.random_range(0..0x7e_u8);
            let tie = (fp8::e4m3_to_f32(code) + fp8::e4m3_to_f32(code + 1)) / 2.0;
            let x = (tie * scale)
                .to_bits()
                .wrapping_add_signed(rng.random_range(-2..=2));
            dtype.write_f32(&mut bytes, i, f32::from_bits(x));
        } else {
            let x: f32 = rng.sample(StandardNormal);
            dtype.write_f32(&mut bytes, i, x * 2f32.powi(rng.random_range(-12..=10)));
        }
    }
    bytes
}

/// Where element (head, d) of slot `slot` lives, written out from the layout's definition
/// rather than through `Problem`'s strides.
fn cache_index(p: &Problem, slot: usize, head: usize, d: usize) -> usize {
    let (block, offset) = (slot / p.block_size, slot % p.block_size);
    let (h, b, n) = (p.num_heads, p.block_size, p.head_size);
    match p.layout {
        Layout::Nhd => ((block * b + offset) * h + head) * n + d,
        Layout::Hnd => ((block * h + head) * b + offset) * n + d,
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn reference_writes_targeted_slots_and_nothing_else(
        (p, slots) in problems_with_slots(),
        seed in any::<u64>(),
        k_scale in 1.0e-3f32..1.0e3,
        v_scale in 1.0e-3f32..1.0e3,
        per_head in any::<bool>(),
    ) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let elements = p.input_span() as usize;
        let key = values(p.dtype, elements, k_scale, &mut rng);
        let value = values(p.dtype, elements, v_scale, &mut rng);
        let cache_len = p.cache_bytes() as usize;
        let mut poison = Caches { key: vec![0; cache_len], value: vec![0; cache_len] };
        rng.fill(&mut poison.key[..]);
        rng.fill(&mut poison.value[..]);
        let mut caches = poison.clone();
        // Per-head scales: each head's a power of two apart from the next.
        let head_scales = |scale: f32| -> Vec<f32> {
            (0..p.num_heads).map(|h| scale * 2f32.powi(h as i32 - 2)).collect()
        };
        let (k_heads, v_heads) = (head_scales(k_scale), head_scales(v_scale));
        let (k, v) = if per_head {
            (Scale::PerHead(&k_heads), Scale::PerHead(&v_heads))
        } else {
            (Scale::PerTensor(k_scale), Scale::PerTensor(v_scale))
        };
        let inputs = Inputs { key: &key, value: &value, slot_mapping: &slots, k_scale: k, v_scale: v };
        reshape_and_cache(&p, &inputs, &mut caches);

        let in_size = p.dtype.size();
        let out_size = p.cache_element_size();
        // Every cache element is either written by exactly one token or keeps its poison.
        let mut written = vec![false; cache_len / out_size];
        for (token, &slot) in slots.iter().enumerate() {
            if slot < 0 || slot as u64 >= p.num_slots() {
                continue;
            }
            for head in 0..p.num_heads {
                for d in 0..p.head_size {
                    let at = cache_index(&p, slot as usize, head, d);
                    written[at] = true;
                    let from = p.input_offset(token, head) as usize + d;
                    for (name, input, scale, cache) in [
                        ("key", &key, k.of_head(head), &caches.key),
                        ("value", &value, v.of_head(head), &caches.value),
                    ] {
                        let got = &cache[at * out_size..(at + 1) * out_size];
                        match p.cache_dtype {
                            CacheDtype::Auto => prop_assert_eq!(
                                got,
                                &input[from * in_size..(from + 1) * in_size],
                                "{} token {} head {} element {}", name, token, head, d
                            ),
                            CacheDtype::Fp8 => {
                                let x = p.dtype.read_f32(input, from);
                                let encoded = F8E4M3::from_f32(x / scale).to_bits();
                                prop_assert_eq!(
                                    got[0], encoded,
                                    "{} token {} head {} element {}: {} / {}", name, token, head, d, x, scale
                                );
                            }
                            CacheDtype::Fp8E5m2 => {
                                // float8 keeps part of a NaN's payload; ours is always 0x7f
                                // (tests/reference.rs says why): compare NaN by class and sign.
                                let x = p.dtype.read_f32(input, from);
                                let encoded = F8E5M2::from_f32(x / scale).to_bits();
                                if (x / scale).is_nan() {
                                    prop_assert_eq!(got[0] & 0x7f, 0x7f);
                                    prop_assert_eq!(got[0] & 0x80, encoded & 0x80);
                                } else {
                                    prop_assert_eq!(
                                        got[0], encoded,
                                        "{} token {} head {} element {}: {} / {}", name, token, head, d, x, scale
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        for (at, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
            let range = at * out_size..(at + 1) * out_size;
            prop_assert_eq!(&caches.key[range.clone()], &poison.key[range.clone()], "key element {} was not targeted", at);
            prop_assert_eq!(&caches.value[range.clone()], &poison.value[range], "value element {} was not targeted", at);
        }
    }
}

/// Checks `backend` against the reference on `cases` random shapes (layouts it does not
/// implement are not drawn), with random padding, special values and seeds, comparing every
/// byte of both poisoned caches ([`verify::check`]). Another backend gets this property with
/// one test that calls it, e.g. for wgpu:
/// `backend_matches_reference_on_random_shapes(&mut WgpuBackend::open(None, false, Default::default())?, 32)`.
fn backend_matches_reference_on_random_shapes(backend: &mut dyn Backend, cases: u32) {
    let supported: Vec<Layout> = [Layout::Nhd, Layout::Hnd]
        .into_iter()
        .filter(|layout| backend.supports(*layout))
        .collect();
    assert!(!supported.is_empty(), "the backend implements no layout");
    let strategy = (
        problems(proptest::sample::select(supported).boxed()),
        0.0f64..0.5,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(|(problem, padding_fraction, special_values, seed)| {
            (
                Just((problem, padding_fraction, special_values, seed)),
                prop_oneof![Just(Scaling::PerTensor), Just(Scaling::PerHead)],
                proptest::sample::select(SlotPattern::ALL.to_vec()),
            )
        })
        .prop_map(
            |((problem, padding_fraction, special_values, seed), scaling, slots)| {
                // Patterns that need more blocks than the shape has fall back to random slots.
                let fits = slots
                    .check_fits(problem.num_tokens, problem.block_size, problem.num_blocks)
                    .is_ok();
                Case {
                    problem,
                    padding_fraction,
                    special_values,
                    seed,
                    qkv_fused: None,
                    scaling,
                    slots: if fits { slots } else { SlotPattern::Random },
                }
            },
        );
    // The runner wants a shared closure; the backend is used by one case at a time.
    let backend = RefCell::new(backend);
    let result = TestRunner::new(config(cases)).run(&strategy, |case| {
        let mut backend = backend.borrow_mut();
        // What the backend says it does not implement (an fp8 format, strides, per-head
        // scales) it must refuse cleanly: that is checked by `prepare` below too.
        let scaling = if case.problem.cache_dtype.is_fp8() {
            case.scaling
        } else {
            Scaling::PerTensor
        };
        if backend.check_support(&case.problem, scaling).is_err() {
            return Ok(());
        }
        match verify::check(&mut **backend, &case) {
            Ok(None) => Ok(()),
            Ok(Some(mismatch)) => Err(TestCaseError::fail(format!("{case}: {mismatch}"))),
            Err(error) => Err(TestCaseError::fail(format!(
                "{case}: error: {}",
                error.one_line()
            ))),
        }
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn cpu_backend_matches_reference_on_random_shapes() {
    backend_matches_reference_on_random_shapes(&mut CpuBackend::new(), 256);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_backend_matches_reference_on_random_shapes() {
    let mut backend =
        paged_kv_bench::backend::wgpu::WgpuBackend::open(None, false, Default::default())
            .expect("a wgpu adapter (install mesa-vulkan-drivers)");
    backend_matches_reference_on_random_shapes(&mut backend, 64);
}
