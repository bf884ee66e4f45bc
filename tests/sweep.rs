//! The sweep's planning and its behaviour when a backend fails part-way.

mod common;

use common::faulty::{Fault, Faulty};
use paged_kv_bench::backend::cpu::CpuBackend;
use paged_kv_bench::backend::{Backend, Kind};
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::sweep::{self, NumBlocks, SweepConfig};
use paged_kv_bench::timing::{Protocol, Sampling};
use paged_kv_bench::Error;

fn config(num_tokens: Vec<usize>, num_blocks: NumBlocks) -> SweepConfig {
    SweepConfig {
        num_heads: 4,
        head_size: 64,
        block_size: 16,
        num_blocks,
        dtype: Dtype::BFloat16,
        cache_dtype: CacheDtype::Auto,
        layouts: vec![Layout::Nhd, Layout::Hnd],
        num_tokens,
        protocol: Protocol {
            sampling: Sampling {
                min_time: std::time::Duration::ZERO,
                max_time: std::time::Duration::from_millis(50),
                ..Sampling::default()
            },
            ..Protocol::new(2)
        },
        seed: 3,
        host_memory_limit: None,
        workload: Default::default(),
    }
}

#[test]
fn a_failing_row_is_named_and_stops_the_sweep() {
    let config = config(vec![2, 64, 256], NumBlocks::Explicit(64));
    // Posing as CUDA: the CPU backend, failing as a GPU allocation would.
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(
        Faulty::new(
            Box::new(CpuBackend::new()),
            Fault::FailAt { num_tokens: 64 },
        )
        .posing_as(Kind::Cuda),
    )];
    let plan = sweep::plan(&config, &backends).unwrap();
    let mut steps = Vec::new();
    let error = sweep::run(&config, &plan, &mut backends, |problem, _| {
        steps.push(problem.num_tokens)
    })
    .expect_err("the row of 64 tokens fails");
    // The row and backend as context, the failure kept as the cause.
    assert!(
        matches!(&error, Error::Row { num_tokens: 64, layout: Layout::Nhd, source, .. }
            if matches!(**source, Error::Cuda { .. })),
        "{error:?}"
    );
    let message = error.one_line();
    assert!(
        message.starts_with("cuda at num_tokens=64 layout=NHD: CUDA error: allocating")
            && message.contains("out of memory"),
        "{message}"
    );
    assert_eq!(steps, [2, 64], "the sweep went on after the failure");
}

#[test]
fn every_row_is_measured_in_order() {
    let config = config(vec![1, 17, 100], NumBlocks::Explicit(32));
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    let plan = sweep::plan(&config, &backends).unwrap();
    assert_eq!(
        plan,
        sweep::Plan {
            num_blocks: 32,
            note: None
        }
    );
    let rows = sweep::run(&config, &plan, &mut backends, |_, _| {}).unwrap();
    let order: Vec<(usize, Layout)> = rows
        .iter()
        .map(|r| (r.problem.num_tokens, r.problem.layout))
        .collect();
    assert_eq!(
        order,
        [
            (1, Layout::Nhd),
            (17, Layout::Nhd),
            (100, Layout::Nhd),
            (1, Layout::Hnd),
            (17, Layout::Hnd),
            (100, Layout::Hnd)
        ]
    );
    for row in &rows {
        let samples = row.results[0].as_ref().expect("the CPU runs every layout");
        assert!(samples.latency_us > 0.0 && !samples.device_us.is_empty());
    }
}

#[test]
fn refusals_come_before_anything_runs() {
    let backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    let too_many = config(vec![2, 5000], NumBlocks::Explicit(64));
    assert!(matches!(
        sweep::plan(&too_many, &backends),
        Err(Error::TooManyTokens {
            num_tokens: 5000,
            num_slots: 1024,
            ..
        })
    ));
    let mut fp8_120 = config(vec![2], NumBlocks::Explicit(64));
    fp8_120.head_size = 120;
    fp8_120.cache_dtype = CacheDtype::Fp8;
    assert!(matches!(
        sweep::plan(&fp8_120, &backends),
        Err(Error::Fp8HeadSize { head_size: 120 })
    ));
    let empty = config(vec![], NumBlocks::Explicit(64));
    assert!(sweep::plan(&empty, &backends).is_err());
}
