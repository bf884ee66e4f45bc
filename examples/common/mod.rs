//! What the three examples share: a serving engine's decode steps, written through any
//! backend into caches the engine allocated, each step checked against the CPU reference.
//!
//! An engine keeps one key cache and one value cache per layer, hands each running sequence
//! whole cache blocks (its block table), and in every decode step writes each sequence's new
//! token at the next free offset of its last block. Batches are padded to a fixed size for
//! CUDA graphs, with slot -1 for the padding tokens.

use paged_kv_bench::backend::Backend;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::reference;
use paged_kv_bench::workload::{self, CacheFill, Caches, Inputs};

/// Sequences in the batch, and the batch size it is padded to.
const SEQUENCES: usize = 24;
const PADDED_BATCH: usize = 32;
/// Cache blocks of the engine's pool, and blocks each sequence holds.
const NUM_BLOCKS: usize = 512;
const BLOCKS_PER_SEQUENCE: usize = 8;

/// Runs three decode steps of a model with 8 KV heads of 128 (Llama 3.1 8B's attention) in
/// `layout`, bfloat16 inputs into a `cache_dtype` cache, through `backend`; returns an error
/// naming the step whose caches differ from the reference.
pub fn decode_steps(
    backend: &mut dyn Backend,
    layout: Layout,
    cache_dtype: CacheDtype,
) -> Result<(), String> {
    let problem = Problem {
        num_tokens: PADDED_BATCH,
        num_heads: 8,
        head_size: 128,
        block_size: 16,
        num_blocks: NUM_BLOCKS,
        dtype: Dtype::BFloat16,
        cache_dtype,
        layout,
        input_strides: None,
    };
    problem.validate().map_err(|e| e.to_string())?;

    // The engine's caches: allocated once, holding other sequences' earlier tokens.
    let bytes = problem.cache_bytes() as usize;
    let mut caches = Caches {
        key: workload::random_bytes(bytes, 1),
        value: workload::random_bytes(bytes, 2),
    };
    // Block tables: sequence s owns blocks s, s + SEQUENCES, ... (scattered over the pool),
    // and has already written a different number of tokens.
    let block_table = |sequence: usize, index: usize| (sequence + index * SEQUENCES) as i64;
    let mut lengths: Vec<usize> = (0..SEQUENCES).map(|s| 5 + 7 * s).collect();

    for step in 0..3 {
        let elements = PADDED_BATCH * problem.token_elements();
        let key = workload::random_normal(problem.dtype, elements, 10 + step);
        let value = workload::random_normal(problem.dtype, elements, 20 + step);
        let slot_mapping: Vec<i64> = (0..PADDED_BATCH)
            .map(|token| match lengths.get(token) {
                Some(&length) => {
                    let block = block_table(token, length / problem.block_size);
                    block * problem.block_size as i64 + (length % problem.block_size) as i64
                }
                None => -1,
            })
            .collect();
        let inputs = Inputs {
            key: &key,
            value: &value,
            slot_mapping: &slot_mapping,
            k_scale: workload::fp8_scale(problem.dtype, &key).into(),
            v_scale: workload::fp8_scale(problem.dtype, &value).into(),
        };

        let mut expected = caches.clone();
        reference::reshape_and_cache(&problem, &inputs, &mut expected);

        let written = {
            let mut call = backend
                .prepare(&problem, inputs, CacheFill::Copy(&caches))
                .map_err(|e| e.one_line())?;
            call.run().map_err(|e| e.one_line())?;
            call.read_back().map_err(|e| e.one_line())?
        };
        if written != expected {
            return Err(format!(
                "{} step {step}: the caches differ from the reference",
                problem.describe()
            ));
        }
        caches = written;
        for length in &mut lengths {
            *length = (*length + 1) % (BLOCKS_PER_SEQUENCE * problem.block_size);
        }
        println!(
            "{} {layout} {cache_dtype}: step {step}: {SEQUENCES} tokens written (+{} padding), \
             caches match the reference",
            backend.kind(),
            PADDED_BATCH - SEQUENCES
        );
    }
    Ok(())
}
