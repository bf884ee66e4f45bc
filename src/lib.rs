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
//!   [`pattern`]: what the pattern kernels of `--ceiling pattern` write;
//! - [`workload`]: seeded random inputs, slot mappings, scales and cache contents;
//! - [`backend`]: the [`backend::Backend`] trait and its implementations (CPU, CUDA, wgpu);
//! - [`options`]: every knob that changes what runs or is measured;
//! - [`timing`], [`sweep`] and [`report`]: measuring a sweep of token counts and printing it row
//!   by row as it goes;
//! - [`verify`]: every backend against the reference, byte for byte.
//!
//! ## Using it from a program
//!
//! Open a backend ([`backend::open`] or [`backend::select`]), describe the call with a
//! [`problem::Problem`], hand it the inputs and the caches' current contents, run it and read the
//! caches back. `examples/` does this for each backend as a serving engine would.
//!
//! ```
//! use paged_kv_bench::backend::{self, Kind};
//! use paged_kv_bench::options::Options;
//! use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
//! use paged_kv_bench::workload::{self, CacheFill, Caches, Inputs, Scale};
//!
//! let problem = Problem {
//!     num_tokens: 2,
//!     num_heads: 8,
//!     head_size: 128,
//!     block_size: 16,
//!     num_blocks: 4,
//!     dtype: Dtype::BFloat16,
//!     cache_dtype: CacheDtype::Auto,
//!     layout: Layout::Nhd,
//!     input_strides: None, // contiguous keys and values
//! };
//! let elements = problem.num_tokens * problem.token_elements();
//! let (key, value) = (
//!     workload::random_normal(problem.dtype, elements, 1),
//!     workload::random_normal(problem.dtype, elements, 2),
//! );
//! let slot_mapping = [17, -1]; // block 1, offset 1; the second token is padding
//! let inputs = Inputs {
//!     key: &key,
//!     value: &value,
//!     slot_mapping: &slot_mapping,
//!     k_scale: Scale::PerTensor(1.0),
//!     v_scale: Scale::PerTensor(1.0),
//! };
//! let caches = Caches {
//!     key: vec![0; problem.cache_bytes() as usize],
//!     value: vec![0; problem.cache_bytes() as usize],
//! };
//!
//! let mut backend = backend::open(Kind::Cpu, &Options::default(), false)?;
//! let mut call = backend.prepare(&problem, inputs, CacheFill::Copy(&caches))?;
//! call.run()?;
//! let written = call.read_back()?;
//! let row = problem.token_elements() * 2; // bytes of one token's keys
//! assert_eq!(&written.key[17 * row..18 * row], &key[..row]);
//! # Ok::<(), paged_kv_bench::Error>(())
//! ```

pub mod backend;
pub mod error;
pub mod fp8;
pub mod models;
pub mod options;
pub mod pattern;
pub mod plot;
pub mod problem;
pub mod reference;
pub mod report;
pub mod sweep;
pub mod timing;
pub mod user_kernel;
pub mod verify;
pub mod workload;

pub use error::{Error, Result};
