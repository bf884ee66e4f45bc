//! A row measures the same thing alone and inside a longer sweep: the same inputs and slots,
//! the same cache contents before it, the same batch sizes for the same per-call estimate, and
//! (wgpu) input buffers from the sweep's reservation rather than allocated as rows come. On an
//! H100 one WGSL row took 50 us alone and 86 us in another sweep; these tests pin down what a
//! sweep may not change. No timing is asserted: the recorded backend reports made-up times.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::recording::{Log, Recording};
use paged_kv_bench::backend::cpu::CpuBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::sweep::{self, NumBlocks, SweepConfig};
use paged_kv_bench::timing::{Protocol, Sampling};

fn config(num_tokens: &[usize], layouts: &[Layout]) -> SweepConfig {
    SweepConfig {
        num_heads: 4,
        head_size: 64,
        block_size: 16,
        num_blocks: NumBlocks::Explicit(96),
        dtype: Dtype::BFloat16,
        cache_dtype: CacheDtype::Auto,
        layouts: layouts.to_vec(),
        num_tokens: num_tokens.to_vec(),
        default_num_tokens: false,
        default_max_time: false,
        protocol: Protocol {
            sampling: Sampling {
                min_time: Duration::ZERO,
                max_time: Duration::from_secs(1),
                ..Sampling::default()
            },
            ..Protocol::new(2)
        },
        seed: 11,
        host_memory_limit: None,
        workload: Default::default(),
        ceiling: Default::default(),
    }
}

/// Runs the sweep of `config` on `backend`, recording every row.
fn run<B: Backend + 'static>(backend: B, resources: fn(&B) -> usize, config: &SweepConfig) -> Log {
    let (recording, log) = Recording::new(backend, resources);
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(recording)];
    let plan = sweep::plan(config, &backends).expect("plan");
    let sweep = sweep::run(
        config,
        &plan,
        &mut backends,
        |_| std::ops::ControlFlow::Continue(()),
        || false,
    );
    assert!(
        matches!(sweep.end, sweep::End::Complete),
        "the sweep ended early"
    );
    drop(backends);
    Rc::try_unwrap(log)
        .expect("the backend is gone")
        .into_inner()
}

/// Row (`num_tokens`, `layout`) of `alone` and of `swept` were given the same things and asked
/// the same of the backend, and acquired no resources of their own.
fn assert_same_row(alone: &Log, swept: &Log, num_tokens: usize, layout: Layout) {
    let find = |log: &Log| {
        log.rows
            .iter()
            .position(|r| r.problem.num_tokens == num_tokens && r.problem.layout == layout)
            .unwrap_or_else(|| panic!("no row of {num_tokens} tokens, {layout:?}"))
    };
    let (a, s) = (find(alone), find(swept));
    let (ra, rs) = (&alone.rows[a], &swept.rows[s]);
    let what = format!("{num_tokens} tokens, {layout:?}");
    assert_eq!(ra.problem, rs.problem, "{what}: problem");
    assert!(ra.key == rs.key && ra.value == rs.value, "{what}: inputs");
    assert_eq!(ra.slots, rs.slots, "{what}: slots");
    assert_eq!(ra.scales, rs.scales, "{what}: scales");
    assert!(
        ra.caches_before == rs.caches_before,
        "{what}: the cache before the row holds other bytes in the sweep"
    );
    // The first batch is sized from the measured latency; the rest from the same made-up
    // per-call time (how many there are depends on the real time the calls take).
    let sampled = |batches: &[usize]| -> Vec<usize> {
        let mut sizes = batches[1..].to_vec();
        sizes.dedup();
        sizes
    };
    assert!(ra.batches.len() > 1, "{what}: {:?}", ra.batches);
    assert_eq!(
        sampled(&ra.batches),
        sampled(&rs.batches),
        "{what}: batch sizes"
    );
    assert_eq!(sampled(&ra.batches).len(), 1, "{what}: {:?}", ra.batches);
    assert_eq!(
        alone.acquired_by(a),
        0,
        "{what}: allocated while running alone"
    );
    assert_eq!(
        swept.acquired_by(s),
        0,
        "{what}: allocated inside the sweep"
    );
}

#[test]
fn a_cpu_row_is_the_same_alone_and_in_a_sweep() {
    let layouts = [Layout::Nhd, Layout::Hnd];
    let alone = run(CpuBackend::new(), |_| 0, &config(&[256], &layouts));
    let swept = run(
        CpuBackend::new(),
        |_| 0,
        &config(&[2, 64, 1000, 256, 8], &layouts),
    );
    for layout in layouts {
        assert_same_row(&alone, &swept, 256, layout);
    }
    // Every row of the sweep starts from the same fill, whatever the rows before it wrote.
    assert!(swept
        .rows
        .windows(2)
        .all(|pair| pair[0].caches_before == pair[1].caches_before
            || pair[0].problem.layout != pair[1].problem.layout));
}

#[cfg(feature = "wgpu")]
#[test]
fn a_wgpu_row_is_the_same_alone_and_in_a_sweep() {
    use paged_kv_bench::backend::wgpu::WgpuBackend;
    use paged_kv_bench::options::WgpuTuning;

    // 16 KiB bindings split both the caches and the inputs (32 tokens a range here), so that
    // rows take several batches, each with its own input buffers.
    let open = || {
        WgpuBackend::open(
            None,
            false,
            WgpuTuning {
                max_binding_bytes: Some(16 << 10),
                ..WgpuTuning::default()
            },
        )
        .expect("a wgpu adapter (install mesa-vulkan-drivers)")
    };
    let layouts = [Layout::Nhd];
    let alone = run(
        open(),
        WgpuBackend::input_allocations,
        &config(&[256], &layouts),
    );
    let swept = run(
        open(),
        WgpuBackend::input_allocations,
        &config(&[2, 64, 1000, 256, 8], &layouts),
    );
    assert_same_row(&alone, &swept, 256, Layout::Nhd);
    for log in [&alone, &swept] {
        // The reservation allocated every input buffer before the first row; no row did.
        let reserved = log.reserved.expect("the sweep reserved");
        assert!(reserved > 0);
        assert_eq!(log.rows[0].resources_before, reserved);
        assert!((0..log.rows.len()).all(|row| log.acquired_by(row) == 0));
    }
}
