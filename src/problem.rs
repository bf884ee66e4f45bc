//! The shape of one `reshape_and_cache_flash` call: sizes, dtypes, layout, and the strides they
//! imply. This is the one place where sizes are validated.

use crate::error::{Error, Result};
pub use crate::fp8::Format as Fp8Format;

/// Element type of the new keys and values (and of the cache when the cache dtype is `auto`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[value(name = "half")]
    Half,
    #[value(name = "bfloat16")]
    BFloat16,
    #[value(name = "float")]
    Float,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::Half | Dtype::BFloat16 => 2,
            Dtype::Float => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Half => "half",
            Dtype::BFloat16 => "bfloat16",
            Dtype::Float => "float",
        }
    }

    /// Reads element `index` of a little-endian buffer of this dtype as f32 (exact for every dtype).
    pub fn read_f32(self, bytes: &[u8], index: usize) -> f32 {
        match self {
            Dtype::Half => {
                let b = &bytes[index * 2..index * 2 + 2];
                half::f16::from_le_bytes([b[0], b[1]]).to_f32()
            }
            Dtype::BFloat16 => {
                let b = &bytes[index * 2..index * 2 + 2];
                half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
            }
            Dtype::Float => {
                let b = &bytes[index * 4..index * 4 + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
        }
    }

    /// Writes `value` rounded to this dtype (round to nearest even) as element `index`.
    pub fn write_f32(self, bytes: &mut [u8], index: usize, value: f32) {
        match self {
            Dtype::Half => bytes[index * 2..index * 2 + 2]
                .copy_from_slice(&half::f16::from_f32(value).to_le_bytes()),
            Dtype::BFloat16 => bytes[index * 2..index * 2 + 2]
                .copy_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
            Dtype::Float => bytes[index * 4..index * 4 + 4].copy_from_slice(&value.to_le_bytes()),
        }
    }
}

/// Element type of the cache: the input's own type, or float8 (e4m3 or e5m2) of the input
/// divided by a scale.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum CacheDtype {
    #[value(name = "auto")]
    #[serde(rename = "auto")]
    Auto,
    /// float8 e4m3 (vLLM's `fp8` and `fp8_e4m3`).
    #[value(name = "fp8", alias = "fp8_e4m3")]
    #[serde(rename = "fp8", alias = "fp8_e4m3")]
    Fp8,
    /// float8 e5m2.
    #[value(name = "fp8_e5m2")]
    #[serde(rename = "fp8_e5m2")]
    Fp8E5m2,
}

impl CacheDtype {
    pub fn name(self) -> &'static str {
        match self {
            CacheDtype::Auto => "auto",
            CacheDtype::Fp8 => "fp8",
            CacheDtype::Fp8E5m2 => "fp8_e5m2",
        }
    }

    /// The float8 format of the cache, `None` for `auto`.
    pub fn fp8(self) -> Option<Fp8Format> {
        match self {
            CacheDtype::Auto => None,
            CacheDtype::Fp8 => Some(Fp8Format::E4m3),
            CacheDtype::Fp8E5m2 => Some(Fp8Format::E5m2),
        }
    }

    /// Whether the cache holds float8 codes of scaled inputs (either format).
    pub fn is_fp8(self) -> bool {
        self.fp8().is_some()
    }
}

/// Order of the dimensions inside one cache block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// `[num_blocks, block_size, num_heads, head_size]`
    #[value(name = "NHD")]
    Nhd,
    /// `[num_blocks, num_heads, block_size, head_size]`
    #[value(name = "HND")]
    Hnd,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nhd => "NHD",
            Layout::Hnd => "HND",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for CacheDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Strides of a cache tensor, in elements. One kernel serves both layouts through these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStrides {
    /// Distance between two cache blocks.
    pub block: u64,
    /// Distance between two slots (page offsets) of one block.
    pub slot: u64,
    /// Distance between two heads.
    pub head: u64,
}

/// Where the keys (or values) of a call lie in their input tensor, in elements: token `t`'s
/// head `h` starts at `t * token + h * head` from the tensor's first element, and its
/// `head_size` elements are contiguous.
///
/// Engines pass keys and values as slices of the fused QKV projection
/// `[num_tokens, (query_heads + 2 * num_heads) * head_size]` ([`InputStrides::qkv_fused`]): a
/// token stride larger than a token's keys, and the query part skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputStrides {
    pub token: u64,
    pub head: u64,
}

impl InputStrides {
    /// Contiguous `[num_tokens, num_heads, head_size]` keys or values.
    pub fn contiguous(num_heads: usize, head_size: usize) -> Self {
        Self {
            token: num_heads as u64 * head_size as u64,
            head: head_size as u64,
        }
    }

    /// Keys and values as slices of one `[num_tokens, (query_heads + 2 * num_heads) *
    /// head_size]` tensor (queries, then keys, then values of each token).
    pub fn qkv_fused(query_heads: usize, num_heads: usize, head_size: usize) -> Self {
        Self {
            token: (query_heads as u64 + 2 * num_heads as u64) * head_size as u64,
            head: head_size as u64,
        }
    }
}

/// One call of `reshape_and_cache_flash`: everything a backend needs to size and launch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub head_size: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub dtype: Dtype,
    pub cache_dtype: CacheDtype,
    pub layout: Layout,
    /// How keys and values lie in their input tensors; `None`: contiguous
    /// `[num_tokens, num_heads, head_size]`, the common case.
    pub input_strides: Option<InputStrides>,
}

impl Problem {
    /// Checks every limit that does not depend on a device. Call once before anything runs.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("num_tokens", self.num_tokens),
            ("num_heads", self.num_heads),
            ("head_size", self.head_size),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
        ] {
            if value == 0 {
                return Err(Error::InvalidConfig(format!("{name} must be at least 1")));
            }
        }
        if self.cache_dtype.is_fp8() && !self.head_size.is_multiple_of(16) {
            return Err(Error::Fp8HeadSize {
                head_size: self.head_size,
            });
        }
        // Too many tokens first: it names the sizes that would work, and holds whatever the
        // magnitudes (the slot count is computed without overflow).
        let num_slots = self.num_blocks as u128 * self.block_size as u128;
        if self.num_tokens as u128 > num_slots {
            return Err(Error::TooManyTokens {
                num_tokens: self.num_tokens,
                num_slots: num_slots as u64,
                num_blocks: self.num_blocks,
                block_size: self.block_size,
            });
        }
        // Element counts must fit in i64: kernels index with signed 64-bit offsets.
        // (The cache holds at least as many elements as contiguous inputs now.)
        let token_elements = self.num_heads as u128 * self.head_size as u128;
        let cache_elements = num_slots.saturating_mul(token_elements);
        if cache_elements.saturating_mul(4) > i64::MAX as u128 {
            return Err(Error::InvalidConfig(format!(
                "a cache of {} blocks x {} slots x {} heads x {} elements ({cache_elements} \
                 elements) overflows 64-bit indexing",
                self.num_blocks, self.block_size, self.num_heads, self.head_size
            )));
        }
        if let Some(strides) = self.input_strides {
            // Rows of one token and heads of one row may not overlap: every element read is
            // then one input element, and a token's keys fit in its stride.
            let (h, d) = (self.num_heads as u128, self.head_size as u128);
            let row = (h - 1) * strides.head as u128 + d;
            if (strides.head as u128) < d || (strides.token as u128) < row {
                return Err(Error::InvalidConfig(format!(
                    "input strides (token {}, head {}) overlap: a head needs {d} elements and a \
                     token {row}",
                    strides.token, strides.head
                )));
            }
            let span = (self.num_tokens as u128 - 1) * strides.token as u128 + row;
            if span.saturating_mul(4) > i64::MAX as u128 {
                return Err(Error::InvalidConfig(format!(
                    "inputs of {} tokens with a token stride of {} elements overflow 64-bit \
                     indexing",
                    self.num_tokens, strides.token
                )));
            }
        }
        Ok(())
    }

    /// Where keys and values lie in their input tensors (contiguous where not given).
    pub fn inputs(&self) -> InputStrides {
        self.input_strides
            .unwrap_or_else(|| InputStrides::contiguous(self.num_heads, self.head_size))
    }

    /// Whether keys and values are contiguous `[num_tokens, num_heads, head_size]` tensors
    /// (strides given but equal to those count as contiguous).
    pub fn contiguous_inputs(&self) -> bool {
        self.inputs() == InputStrides::contiguous(self.num_heads, self.head_size)
    }

    /// Element offset in an input tensor of (token, head, 0).
    pub fn input_offset(&self, token: usize, head: usize) -> u64 {
        let s = self.inputs();
        token as u64 * s.token + head as u64 * s.head
    }

    /// Elements from the first input element of a call to its last, inclusive: what a key (or
    /// value) slice of the input tensor must hold. `num_tokens * num_heads * head_size` for
    /// contiguous inputs.
    pub fn input_span(&self) -> u64 {
        if self.num_tokens == 0 {
            return 0;
        }
        self.input_offset(self.num_tokens - 1, self.num_heads - 1) + self.head_size as u64
    }

    /// Number of token slots in the cache (`num_blocks * block_size`).
    pub fn num_slots(&self) -> u64 {
        self.num_blocks as u64 * self.block_size as u64
    }

    /// Bytes of one cache element.
    pub fn cache_element_size(&self) -> usize {
        match self.cache_dtype {
            CacheDtype::Auto => self.dtype.size(),
            CacheDtype::Fp8 | CacheDtype::Fp8E5m2 => 1,
        }
    }

    /// Elements of one token's keys (or values): `num_heads * head_size`.
    pub fn token_elements(&self) -> usize {
        self.num_heads * self.head_size
    }

    /// Elements of one cache tensor (the key cache or the value cache).
    pub fn cache_elements(&self) -> u64 {
        self.num_slots() * self.token_elements() as u64
    }

    /// Bytes of one cache tensor.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_elements() * self.cache_element_size() as u64
    }

    /// Bytes of the key (or value) slice of a call: its [`Problem::input_span`]. For contiguous
    /// inputs, `num_tokens * num_heads * head_size` elements.
    pub fn input_bytes(&self) -> u64 {
        self.input_span() * self.dtype.size() as u64
    }

    /// The fewest bytes one call must move through memory: keys and values read (not what
    /// lies between them in a fused tensor), the same count of cache elements written, and
    /// the slot mapping (int64) read.
    pub fn bytes_moved(&self) -> u64 {
        let elements = 2 * self.num_tokens as u64 * self.token_elements() as u64;
        elements * (self.dtype.size() + self.cache_element_size()) as u64
            + 8 * self.num_tokens as u64
    }

    pub fn strides(&self) -> CacheStrides {
        let (h, d, b) = (
            self.num_heads as u64,
            self.head_size as u64,
            self.block_size as u64,
        );
        match self.layout {
            Layout::Nhd => CacheStrides {
                block: b * h * d,
                slot: h * d,
                head: d,
            },
            Layout::Hnd => CacheStrides {
                block: h * b * d,
                slot: d,
                head: b * d,
            },
        }
    }

    /// Element offset in a cache tensor of (slot, head, 0).
    pub fn cache_offset(&self, slot: u64, head: usize) -> u64 {
        let s = self.strides();
        let block = slot / self.block_size as u64;
        let offset = slot % self.block_size as u64;
        block * s.block + offset * s.slot + head as u64 * s.head
    }

    /// Checks a slot mapping against this problem: the right length, every slot -1 or inside
    /// the cache, and no slot targeted twice.
    pub fn validate_slots(&self, slot_mapping: &[i64]) -> Result<()> {
        if slot_mapping.len() != self.num_tokens {
            return Err(Error::InvalidConfig(format!(
                "slot_mapping has {} entries for {} tokens",
                slot_mapping.len(),
                self.num_tokens
            )));
        }
        let num_slots = self.num_slots();
        let mut owner = std::collections::HashMap::with_capacity(slot_mapping.len());
        for (token, &slot) in slot_mapping.iter().enumerate() {
            if slot == -1 {
                continue;
            }
            if slot < 0 || slot as u64 >= num_slots {
                return Err(Error::SlotOutOfRange {
                    token,
                    slot,
                    last_slot: num_slots - 1,
                });
            }
            if let Some(first) = owner.insert(slot, token) {
                return Err(Error::DuplicateSlot {
                    slot,
                    first,
                    second: token,
                });
            }
        }
        Ok(())
    }

    /// A short description for error messages and progress lines.
    pub fn describe(&self) -> String {
        let strides = match self.input_strides {
            Some(s) if !self.contiguous_inputs() => {
                format!(" input_strides=token:{},head:{}", s.token, s.head)
            }
            _ => String::new(),
        };
        format!(
            "num_tokens={} layout={} dtype={} kv_cache_dtype={} heads={} head_size={} block_size={} num_blocks={}{strides}",
            self.num_tokens,
            self.layout.name(),
            self.dtype.name(),
            self.cache_dtype.name(),
            self.num_heads,
            self.head_size,
            self.block_size,
            self.num_blocks
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(layout: Layout) -> Problem {
        Problem {
            num_tokens: 4,
            num_heads: 3,
            head_size: 16,
            block_size: 4,
            num_blocks: 5,
            dtype: Dtype::BFloat16,
            cache_dtype: CacheDtype::Auto,
            layout,
            input_strides: None,
        }
    }

    #[test]
    fn strides_follow_the_layout() {
        let nhd = problem(Layout::Nhd).strides();
        assert_eq!((nhd.block, nhd.slot, nhd.head), (4 * 3 * 16, 3 * 16, 16));
        let hnd = problem(Layout::Hnd).strides();
        assert_eq!((hnd.block, hnd.slot, hnd.head), (3 * 4 * 16, 16, 4 * 16));
        // slot 6 = block 1, offset 2; head 1.
        assert_eq!(problem(Layout::Nhd).cache_offset(6, 1), 192 + 2 * 48 + 16);
        assert_eq!(problem(Layout::Hnd).cache_offset(6, 1), 192 + 2 * 16 + 64);
    }

    #[test]
    fn validation_refuses_bad_sizes() {
        let ok = problem(Layout::Nhd);
        assert!(ok.validate().is_ok());
        let fp8_120 = Problem {
            head_size: 120,
            cache_dtype: CacheDtype::Fp8,
            ..ok
        };
        assert!(matches!(
            fp8_120.validate(),
            Err(Error::Fp8HeadSize { head_size: 120 })
        ));
        let too_many = Problem {
            num_tokens: 21,
            ..ok
        };
        assert!(matches!(
            too_many.validate(),
            Err(Error::TooManyTokens { num_slots: 20, .. })
        ));
        let no_heads = Problem { num_heads: 0, ..ok };
        assert!(no_heads.validate().is_err());
        // Absurd sizes: too many tokens is said as such, however large; a cache past 64-bit
        // indexing is refused without overflowing the check itself.
        let absurd_tokens = Problem {
            num_tokens: usize::MAX,
            ..ok
        };
        assert!(matches!(
            absurd_tokens.validate(),
            Err(Error::TooManyTokens { num_slots: 20, .. })
        ));
        for num_blocks in [1 << 58, usize::MAX] {
            let absurd_cache = Problem { num_blocks, ..ok };
            assert!(matches!(
                absurd_cache.validate(),
                Err(Error::InvalidConfig(message)) if message.contains("overflows 64-bit indexing")
            ));
        }
    }

    #[test]
    fn slot_validation() {
        let p = problem(Layout::Nhd);
        assert!(p.validate_slots(&[0, -1, 19, 7]).is_ok());
        assert!(matches!(
            p.validate_slots(&[0, 20, 1, 2]),
            Err(Error::SlotOutOfRange {
                token: 1,
                slot: 20,
                ..
            })
        ));
        assert!(matches!(
            p.validate_slots(&[0, -2, 1, 2]),
            Err(Error::SlotOutOfRange { token: 1, .. })
        ));
        assert!(matches!(
            p.validate_slots(&[3, 1, 3, -1]),
            Err(Error::DuplicateSlot {
                slot: 3,
                first: 0,
                second: 2
            })
        ));
        assert!(p.validate_slots(&[0, 1]).is_err());
    }

    #[test]
    fn bytes_moved_counts_reads_writes_and_slots() {
        let p = problem(Layout::Nhd);
        // 2 tensors x 4 tokens x 48 elements x (2 read + 2 written) + 8 x 4.
        assert_eq!(p.bytes_moved(), 2 * 4 * 48 * 4 + 32);
        let fp8 = Problem {
            cache_dtype: CacheDtype::Fp8,
            ..p
        };
        assert_eq!(fp8.bytes_moved(), 2 * 4 * 48 * 3 + 32);
        // Fused inputs: the same bytes moved (the query part is not read), a longer span.
        let fused = Problem {
            input_strides: Some(InputStrides::qkv_fused(4, 3, 16)),
            ..p
        };
        assert_eq!(fused.bytes_moved(), p.bytes_moved());
        assert_eq!(fused.input_span(), 3 * 10 * 16 + 48);
        assert_eq!(fused.input_bytes(), (3 * 10 * 16 + 48) * 2);
        assert_eq!(p.input_bytes(), 4 * 48 * 2);
    }

    #[test]
    fn input_strides_are_validated() {
        let p = problem(Layout::Nhd);
        let fused = Problem {
            input_strides: Some(InputStrides::qkv_fused(1, 3, 16)),
            ..p
        };
        assert!(fused.validate().is_ok());
        assert!(!fused.contiguous_inputs());
        assert_eq!(fused.input_offset(2, 1), 2 * 7 * 16 + 16);
        let same = Problem {
            input_strides: Some(InputStrides::contiguous(3, 16)),
            ..p
        };
        assert!(same.contiguous_inputs());
        for (token, head) in [(47, 16), (48, 15), (100, 0)] {
            let overlapping = Problem {
                input_strides: Some(InputStrides { token, head }),
                ..p
            };
            assert!(
                matches!(overlapping.validate(), Err(Error::InvalidConfig(m)) if m.contains("overlap")),
                "{token} {head}"
            );
        }
        let huge = Problem {
            input_strides: Some(InputStrides {
                token: 1 << 62,
                head: 16,
            }),
            ..p
        };
        assert!(huge.validate().is_err());
        let e5m2 = Problem {
            cache_dtype: CacheDtype::Fp8E5m2,
            head_size: 120,
            ..p
        };
        assert!(matches!(e5m2.validate(), Err(Error::Fp8HeadSize { .. })));
        assert_eq!(e5m2.cache_element_size(), 1);
    }
}
