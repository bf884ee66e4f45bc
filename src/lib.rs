//! # paged-kv-bench
//!
//! How fast, and how correctly, new key/value vectors get written into a paged KV cache.
//!
//! LLM serving engines (vLLM, FlashInfer, SGLang) keep attention keys and values in a cache of
//! fixed-size blocks. Every layer of every decode step runs `reshape_and_cache_flash`: for each
//! new token `t`, copy `key[t]` and `value[t]` (`[num_tokens, num_heads, head_size]`) into cache
//! slot `slot_mapping[t]` (`block * block_size + offset`; -1 marks a padding token).
//!
//! The crate is a kernel library and a benchmark:
//! - [`problem`]: shapes, dtypes, layouts, strides and their validation;
//! - [`reference`]: the CPU reference that defines the correct result, with [`fp8`];
//! - [`workload`]: seeded random inputs, slot mappings, scales and cache contents;
//! - [`backend`]: the [`backend::Backend`] trait and its implementations (CPU, CUDA, wgpu);
//! - [`timing`], [`sweep`] and [`report`]: measuring a sweep of token counts and printing it.

pub mod backend;
pub mod error;
pub mod fp8;
pub mod options;
pub mod plot;
pub mod problem;
pub mod reference;
pub mod report;
pub mod sweep;
pub mod timing;
pub mod verify;
pub mod workload;

pub use error::{Error, Result};
