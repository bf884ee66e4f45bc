//! The shape of one `reshape_and_cache_flash` call: sizes, dtypes, layout, and the strides they
//! imply. This is the one place where sizes are validated.

use crate::error::{Error, Result};

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

/// Element type of the cache: the input's own type, or float8 e4m3 with a per-tensor scale.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CacheDtype {
    #[value(name = "auto")]
    Auto,
    #[value(name = "fp8")]
    Fp8,
}

impl CacheDtype {
    pub fn name(self) -> &'static str {
        match self {
            CacheDtype::Auto => "auto",
            CacheDtype::Fp8 => "fp8",
        }
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
        if self.cache_dtype == CacheDtype::Fp8 && !self.head_size.is_multiple_of(16) {
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
        // (The cache holds at least as many elements as the input now.)
        let token_elements = self.num_heads as u128 * self.head_size as u128;
        let cache_elements = num_slots.saturating_mul(token_elements);
        if cache_elements.saturating_mul(4) > i64::MAX as u128 {
            return Err(Error::InvalidConfig(format!(
                "a cache of {} blocks x {} slots x {} heads x {} elements ({cache_elements} \
                 elements) overflows 64-bit indexing",
                self.num_blocks, self.block_size, self.num_heads, self.head_size
            )));
        }
        Ok(())
    }

    /// Number of token slots in the cache (`num_blocks * block_size`).
    pub fn num_slots(&self) -> u64 {
        self.num_blocks as u64 * self.block_size as u64
    }

    /// Bytes of one cache element.
    pub fn cache_element_size(&self) -> usize {
        match self.cache_dtype {
            CacheDtype::Auto => self.dtype.size(),
            CacheDtype::Fp8 => 1,
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

    /// Bytes of one input tensor (key or value) for `num_tokens` tokens.
    pub fn input_bytes(&self) -> u64 {
        self.num_tokens as u64 * self.token_elements() as u64 * self.dtype.size() as u64
    }

    /// The fewest bytes one call must move through memory: keys and values read, the same
    /// count of cache elements written, and the slot mapping (int64) read.
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
        format!(
            "num_tokens={} layout={} dtype={} kv_cache_dtype={} heads={} head_size={} block_size={} num_blocks={}",
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
    }
}
