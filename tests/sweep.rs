//! The sweep's planning and its behaviour when a backend fails part-way.

mod common;

use std::cell::Cell;
use std::ops::ControlFlow;

use common::faulty::{Fault, Faulty};
use paged_kv_bench::backend::cpu::CpuBackend;
use paged_kv_bench::backend::{Backend, Kind};
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::sweep::{self, End, Event, NumBlocks, SweepConfig};
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
        default_num_tokens: false,
        default_max_time: false,
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
        ceiling: Default::default(),
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
    let sweep = sweep::run(
        &config,
        &plan,
        &mut backends,
        |event| {
            if let Event::Step { problem, .. } = event {
                steps.push(problem.num_tokens);
            }
            ControlFlow::Continue(())
        },
        || false,
    );
    // The row measured before the failure is kept.
    assert_eq!(sweep.rows.len(), 1);
    assert_eq!(sweep.rows[0].problem.num_tokens, 2);
    let End::Failed(error) = sweep.end else {
        panic!("the row of 64 tokens fails: {:?}", sweep.end)
    };
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
            num_tokens: vec![1, 17, 100],
            notes: Vec::new(),
            protocol: config.protocol,
        }
    );
    let mut streamed = Vec::new();
    let rows = sweep::run(
        &config,
        &plan,
        &mut backends,
        |event| {
            if let Event::Row(row) = event {
                streamed.push((row.problem.num_tokens, row.problem.layout));
            }
            ControlFlow::Continue(())
        },
        || false,
    )
    .into_result()
    .unwrap();
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
    assert_eq!(streamed, order, "each row is handed on as it is measured");
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

#[test]
fn a_stop_request_ends_the_sweep_within_a_row_and_keeps_the_rows_before() {
    // Each row would sample for a long time; the stop comes during the second row.
    let mut config = config(vec![2, 16, 64], NumBlocks::Explicit(64));
    config.protocol.sampling.min_time = std::time::Duration::from_secs(600);
    config.protocol.sampling.max_time = std::time::Duration::from_secs(600);
    config.protocol.sampling.max_samples = 20;
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    let plan = sweep::plan(&config, &backends).unwrap();
    let checks = Cell::new(0usize);
    let rows_seen = Cell::new(0usize);
    let sweep = sweep::run(
        &config,
        &plan,
        &mut backends,
        |event| {
            if let Event::Row(_) = event {
                rows_seen.set(rows_seen.get() + 1);
            }
            ControlFlow::Continue(())
        },
        || {
            checks.set(checks.get() + 1);
            rows_seen.get() == 1 && checks.get() > 40
        },
    );
    assert_eq!(sweep.rows.len(), 1, "{:?}", sweep.end);
    match sweep.end {
        End::Stopped {
            at: Some((problem, Some(name))),
        } if name == "cpu" => assert_eq!((problem.num_tokens, problem.layout), (16, Layout::Nhd)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_caller_that_declines_more_rows_ends_the_sweep() {
    let config = config(vec![2, 16], NumBlocks::Explicit(64));
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    let plan = sweep::plan(&config, &backends).unwrap();
    let sweep = sweep::run(
        &config,
        &plan,
        &mut backends,
        |event| match event {
            Event::Row(_) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
        || false,
    );
    assert_eq!(sweep.rows.len(), 1);
    assert!(
        matches!(sweep.end, End::Stopped { at: None }),
        "{:?}",
        sweep.end
    );
    assert!(matches!(sweep.into_result(), Err(Error::Stopped)));
}

#[test]
fn the_cpu_defaults_are_small_fixed_and_said_in_one_note() {
    // The default shape: 512 KiB blocks, so 512 MiB of caches are 512 blocks of 8192 slots.
    let mut config = config(sweep::default_token_counts(), NumBlocks::Default);
    (config.num_heads, config.head_size) = (128, 128);
    config.default_num_tokens = true;
    config.default_max_time = true;
    config.protocol.sampling.max_time = std::time::Duration::from_secs(5);
    let backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    let plan = sweep::plan(&config, &backends).unwrap();
    assert_eq!(plan.num_blocks, 512);
    assert_eq!(*plan.num_tokens.last().unwrap(), 8192);
    assert_eq!(plan.protocol.sampling.max_time.as_secs_f64(), 2.0);
    assert_eq!(
        plan.notes[0],
        "cpu defaults: num_blocks=512 (not vLLM's 65536: 512.0 MiB of caches) and --max-time 2 \
         (not 5), so that a first run is quick and light"
    );
    assert!(
        plan.notes[1].starts_with("num_tokens stops at 8192"),
        "{:?}",
        plan.notes
    );

    // The cache does not grow with explicit token counts (a row's slots would then depend on
    // the others): counts beyond it are refused, naming the size that holds them.
    let mut explicit = config.clone();
    explicit.num_tokens = vec![2, 65536];
    explicit.default_num_tokens = false;
    let error = sweep::plan(&explicit, &backends).unwrap_err();
    assert!(
        matches!(
            error,
            Error::TooManyTokensForDefault {
                num_tokens: 65536,
                needed_blocks: 4096,
                ..
            }
        ),
        "{error:?}"
    );
    // Given flags are kept, and the note names only what is still a backend's default.
    let mut given = config.clone();
    given.default_max_time = false;
    let plan = sweep::plan(&given, &backends).unwrap();
    assert_eq!(plan.protocol.sampling.max_time.as_secs_f64(), 5.0);
    assert!(!plan.notes[0].contains("--max-time"), "{:?}", plan.notes);
}
