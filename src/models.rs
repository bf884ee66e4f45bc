//! Model presets (`--model`): the attention shapes of well-known models as one GPU of a serving
//! engine sees them, so that a benchmark row is a call that really happens.
//!
//! Each preset takes its head counts and head size from the model's published `config.json`
//! (`num_attention_heads`, `num_key_value_heads`, and `head_dim`, or `hidden_size /
//! num_attention_heads` where there is no `head_dim`), cited next to it, divided by the
//! tensor-parallel degree the model is usually served with when it does not fit one GPU. Keys
//! and values arrive as slices of the fused QKV projection, as vLLM passes them, with the
//! query heads of that GPU in front.

use crate::problem::Dtype;

/// One preset: the shape of one GPU's share of a model's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// The `--model` name.
    pub name: &'static str,
    /// The Hugging Face repository whose `config.json` gives the shape.
    pub source: &'static str,
    /// GPUs the attention heads are split over.
    pub tensor_parallel: usize,
    /// Key/value heads per GPU (`--num-heads`).
    pub num_kv_heads: usize,
    /// Query heads per GPU: the fused QKV tensor's query part (`--qkv-fused`).
    pub num_query_heads: usize,
    pub head_size: usize,
    pub dtype: Dtype,
}

/// Every preset, smallest model first.
pub const MODELS: [Model; 9] = [
    // huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json: num_attention_heads 32,
    // num_key_value_heads 8, head_dim 64 (hidden_size 2048), torch_dtype bfloat16.
    Model {
        name: "llama-3.2-1b",
        source: "meta-llama/Llama-3.2-1B",
        tensor_parallel: 1,
        num_kv_heads: 8,
        num_query_heads: 32,
        head_size: 64,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/microsoft/Phi-3-mini-4k-instruct/blob/main/config.json:
    // num_attention_heads 32, num_key_value_heads 32, hidden_size 3072 (head size 96),
    // torch_dtype bfloat16. No grouped-query attention: as many KV heads as query heads.
    Model {
        name: "phi-3-mini",
        source: "microsoft/Phi-3-mini-4k-instruct",
        tensor_parallel: 1,
        num_kv_heads: 32,
        num_query_heads: 32,
        head_size: 96,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json: num_attention_heads 32,
    // num_key_value_heads 8, hidden_size 4096 (head size 128), torch_dtype bfloat16.
    Model {
        name: "mistral-7b",
        source: "mistralai/Mistral-7B-v0.1",
        tensor_parallel: 1,
        num_kv_heads: 8,
        num_query_heads: 32,
        head_size: 128,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json: num_attention_heads 28,
    // num_key_value_heads 4, hidden_size 3584 (head size 128), torch_dtype bfloat16.
    Model {
        name: "qwen-2.5-7b",
        source: "Qwen/Qwen2.5-7B",
        tensor_parallel: 1,
        num_kv_heads: 4,
        num_query_heads: 28,
        head_size: 128,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json: num_attention_heads 32,
    // num_key_value_heads 8, hidden_size 4096 (head size 128), torch_dtype bfloat16.
    Model {
        name: "llama-3.1-8b",
        source: "meta-llama/Llama-3.1-8B",
        tensor_parallel: 1,
        num_kv_heads: 8,
        num_query_heads: 32,
        head_size: 128,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/google/gemma-2-9b/blob/main/config.json: num_attention_heads 16,
    // num_key_value_heads 8, head_dim 256 (larger than hidden_size 3584 / 16). Served in
    // bfloat16.
    Model {
        name: "gemma-2-9b",
        source: "google/gemma-2-9b",
        tensor_parallel: 1,
        num_kv_heads: 8,
        num_query_heads: 16,
        head_size: 256,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json: num_attention_heads 64,
    // num_key_value_heads 8, hidden_size 8192 (head size 128), torch_dtype bfloat16. On 8 GPUs:
    // 8 query heads and 1 KV head each.
    Model {
        name: "llama-3.1-70b-tp8",
        source: "meta-llama/Llama-3.1-70B",
        tensor_parallel: 8,
        num_kv_heads: 1,
        num_query_heads: 8,
        head_size: 128,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/Qwen/Qwen2.5-72B/blob/main/config.json: num_attention_heads 64,
    // num_key_value_heads 8, hidden_size 8192 (head size 128), torch_dtype bfloat16. On 8 GPUs:
    // 8 query heads and 1 KV head each.
    Model {
        name: "qwen-2.5-72b-tp8",
        source: "Qwen/Qwen2.5-72B",
        tensor_parallel: 8,
        num_kv_heads: 1,
        num_query_heads: 8,
        head_size: 128,
        dtype: Dtype::BFloat16,
    },
    // huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json: num_attention_heads 128,
    // num_key_value_heads 8, hidden_size 16384 (head size 128), torch_dtype bfloat16. On 8
    // GPUs: 16 query heads and 1 KV head each.
    Model {
        name: "llama-3.1-405b-tp8",
        source: "meta-llama/Llama-3.1-405B",
        tensor_parallel: 8,
        num_kv_heads: 1,
        num_query_heads: 16,
        head_size: 128,
        dtype: Dtype::BFloat16,
    },
];

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Model> {
    MODELS.iter().find(|m| m.name == name)
}

/// Every preset's name, in [`MODELS`]' order.
pub fn names() -> impl Iterator<Item = &'static str> {
    MODELS.iter().map(|m| m.name)
}

/// The presets as a table, for `--list-models`.
pub fn table() -> crate::report::Table {
    use crate::report::{Cell, Table};
    let headers = [
        "model",
        "kv heads",
        "query heads",
        "head size",
        "dtype",
        "tensor parallel",
        "config.json of",
    ];
    Table::from_cells(
        &headers,
        MODELS
            .iter()
            .map(|m| {
                vec![
                    Cell::Text(m.name.into()),
                    Cell::Integer(m.num_kv_heads as u64),
                    Cell::Integer(m.num_query_heads as u64),
                    Cell::Integer(m.head_size as u64),
                    Cell::Text(m.dtype.name().into()),
                    Cell::Integer(m.tensor_parallel as u64),
                    Cell::Text(m.source.into()),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::HEAD_SIZES;

    #[test]
    fn presets_are_distinct_and_benchmarkable() {
        for (i, m) in MODELS.iter().enumerate() {
            assert!(MODELS[..i].iter().all(|other| other.name != m.name));
            assert_eq!(find(m.name), Some(m));
            // Grouped-query attention: whole groups of query heads per KV head.
            assert!(
                m.num_query_heads.is_multiple_of(m.num_kv_heads),
                "{}",
                m.name
            );
            // A head size the benchmark offers, and fp8 caches possible.
            assert!(HEAD_SIZES.contains(&m.head_size), "{}", m.name);
            assert!(m.head_size.is_multiple_of(16), "{}", m.name);
        }
        assert!(find("gpt-5").is_none());
        assert_eq!(names().count(), MODELS.len());
        let llama = find("llama-3.1-70b-tp8").unwrap();
        assert_eq!((llama.num_kv_heads, llama.num_query_heads), (1, 8));
    }
}
