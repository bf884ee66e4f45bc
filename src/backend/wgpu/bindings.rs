//! The numbers the host and `shaders/reshape_and_cache_flash.wgsl` must agree on: binding
//! numbers, chunks per dispatch, the workgroup size, table sizes, scale kinds, the range of
//! scales the short fp8 encoder handles, and the names of the generated cache kernels.
//!
//! `build.rs` includes this file too (`#[path]`) and renders every constant below into the
//! shader as a WGSL `const` of the same name, so that the shader's `@binding(...)` attributes
//! and the host's bind groups read the same number by construction. That is also why this file
//! uses nothing but the core language: a build script cannot see the crate's dependencies.

/// Declares constants of one type, and a list naming each for `build.rs` ([`WGSL_CONSTANTS`],
/// [`WGSL_SIGNED_CONSTANTS`]): one place per number, so a constant cannot reach one side and
/// not the other.
macro_rules! shared_constants {
    ($(#[$list_doc:meta])* $list:ident: $ty:ty { $($(#[$doc:meta])* $name:ident = $value:expr;)* }) => {
        $($(#[$doc])* pub const $name: $ty = $value;)*

        $(#[$list_doc])*
        #[allow(dead_code)] // (the backend reads the constants themselves)
        pub const $list: &[(&str, $ty)] = &[$((stringify!($name), $name)),*];
    };
}

shared_constants! {
/// Every unsigned constant below by name, rendered into the shader as a WGSL `u32` by `build.rs`.
WGSL_CONSTANTS: u32 {
    /// Threads per workgroup.
    WORKGROUP = 256;
    /// Chunks of each cache that the narrow 16-byte kernels bind: `2 * CHUNKS + 6` storage
    /// bindings fit lavapipe's 32 per stage, and with the two uniform buffers, Metal's 31
    /// buffers per stage (the lookup-table kernels: `2 * CHUNKS + 7` storage bindings, the
    /// table's among them, and one uniform buffer).
    CHUNKS = 11;
    /// Chunks of each cache that the wide 16-byte kernels bind (70 storage bindings: NVIDIA,
    /// AMD and Intel Vulkan drivers and DX12 allow far more): a whole 32 GiB cache of an H100
    /// in one dispatch.
    WIDE_CHUNKS = 32;

    /// Codes per fp8 threshold table (0..=127), one table for the keys and one for the values.
    TABLE_CODES = 128;
    /// Codes per fp8 lookup table (every 16-bit pattern); the values' table starts here.
    LUT_VALUES = 65536;

    /// `Scale::kind`: how the host prepared a scale for the encoder.
    SCALE_FINITE = 0;
    SCALE_ZERO = 1;
    SCALE_INFINITE = 2;
    SCALE_NAN = 3;

    // Binding numbers (all in group 0). Entry points that use different variables use
    // different numbers, so that each pipeline's automatic layout holds exactly the bindings
    // its entry point uses; `build.rs` checks that no number is declared twice.

    // The 16-byte cache kernels (`reshape_and_cache*`); the word kernel shares the first and
    // the slots.
    PARAMS_BINDING = 0;
    KEY_IN_BINDING = 1;
    VALUE_IN_BINDING = 2;
    SLOTS_BINDING = 3;
    /// Key chunk `j` of a dispatch's group is bound at `KEY_CHUNK0_BINDING + j`.
    KEY_CHUNK0_BINDING = 4;
    /// Value chunk `j` at `VALUE_CHUNK0_BINDING + j`.
    VALUE_CHUNK0_BINDING = KEY_CHUNK0_BINDING + WIDE_CHUNKS;
    ORDER_BINDING = VALUE_CHUNK0_BINDING + WIDE_CHUNKS;
    KEY_IN_HI_BINDING = ORDER_BINDING + 1;
    VALUE_IN_HI_BINDING = ORDER_BINDING + 2;
    /// The fp8 threshold tables as the encoders read them (a uniform buffer).
    FP8_THRESHOLDS_BINDING = 72;
    /// The fp8 lookup table as the `*_lut` kernels read them.
    FP8_LUT_BINDING = 73;

    // `reshape_and_cache_words`.
    KEY_WORDS_BINDING = 100;
    VALUE_WORDS_BINDING = 101;
    KEY_CACHE_WORDS_BINDING = 102;
    VALUE_CACHE_WORDS_BINDING = 103;

    // `encode_fp8`, `encode_fp8_table`.
    ENCODE_PARAMS_BINDING = 110;
    ENCODE_IN_BINDING = 111;
    ENCODE_OUT_BINDING = 112;

    // `fill`.
    FILL_PARAMS_BINDING = 120;
    FILL_OUT_BINDING = 121;

    // `copy`.
    COPY_SRC_BINDING = 130;
    COPY_DST_BINDING = 131;

    // `order_count`, `order_scan`, `order_scatter`.
    ORDER_PARAMS_BINDING = 140;
    BUCKET_COUNTS_BINDING = 141;
    TOKEN_RANKS_BINDING = 142;
    SCAN_COUNTS_BINDING = 143;
    BUCKET_STARTS_BINDING = 144;
    SCATTER_RANKS_BINDING = 145;
    SCATTER_STARTS_BINDING = 146;
    ORDER_OUT_BINDING = 147;

    // `fp8_table_build`.
    TABLE_PARAMS_BINDING = 150;
    TABLE_OUT_BINDING = 151;

    // `fp8_lut_build`.
    LUT_PARAMS_BINDING = 160;
    LUT_OUT_BINDING = 161;
    /// The per-head scales of the tables (one per table), with `PER_HEAD`.
    LUT_SCALES_BINDING = 162;
}}

shared_constants! {
/// Every signed constant below by name, rendered into the shader as a WGSL `i32` by `build.rs`.
WGSL_SIGNED_CONSTANTS: i32 {
    // The range of scale exponents (scale = significand * 2^(exponent - 23), `Scale` in the
    // shader) that the short fp8 encoder and the threshold tables handle. Below the lowest,
    // f32 subnormal inputs that the quotient's estimate may flush to zero would not all encode
    // as 0 (e5m2's smaller codes reach further down); above the highest, 1 / |scale| is no
    // longer a normal f32.
    FAST_LOWEST_EXPONENT_E4M3 = -116;
    FAST_LOWEST_EXPONENT_E5M2 = -109;
    FAST_HIGHEST_EXPONENT = 125;
}}

/// Bytes of each parameter block, by its name in the shader: `build.rs` checks the shader's
/// layout of each against these, and a test in `abi.rs` the Rust mirror's size.
#[cfg_attr(not(test), allow(dead_code))]
pub const STRUCT_BYTES: [(&str, u32); 7] = [
    ("Scale", 32),
    ("Params", 96),
    ("OrderParams", 16),
    ("EncodeParams", 48),
    ("FillParams", 16),
    ("TableParams", 64),
    ("LutParams", 80),
];

/// A 16-byte cache kernel: how many chunks of each cache one dispatch binds, and the entry
/// points `build.rs` generates for it (with the plain or threshold-table fp8 encoder, and with
/// the lookup table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitKernel {
    pub chunks: u32,
    pub entry: &'static str,
    pub lut_entry: &'static str,
    /// `--ceiling pattern`: the same kernel with the arithmetic removed (`pattern_unit`).
    pub pattern_entry: &'static str,
}

impl UnitKernel {
    pub const fn entry(&self, lut: bool) -> &'static str {
        if lut {
            self.lut_entry
        } else {
            self.entry
        }
    }
}

pub const WIDE_KERNEL: UnitKernel = UnitKernel {
    chunks: WIDE_CHUNKS,
    entry: "reshape_and_cache_wide",
    lut_entry: "reshape_and_cache_wide_lut",
    pattern_entry: "pattern_wide",
};

pub const NARROW_KERNEL: UnitKernel = UnitKernel {
    chunks: CHUNKS,
    entry: "reshape_and_cache",
    lut_entry: "reshape_and_cache_lut",
    pattern_entry: "pattern",
};

/// One chunk per dispatch: one-chunk caches, and adapters with too few storage bindings for
/// the narrow kernel.
pub const ONE_KERNEL: UnitKernel = UnitKernel {
    chunks: 1,
    entry: "reshape_and_cache_one",
    lut_entry: "reshape_and_cache_one_lut",
    pattern_entry: "pattern_one",
};

/// Every 16-byte kernel, for `build.rs` to generate.
#[allow(dead_code)] // (the backend names the one it runs)
pub const UNIT_KERNELS: [UnitKernel; 3] = [WIDE_KERNEL, NARROW_KERNEL, ONE_KERNEL];

/// Storage bindings of a 16-byte kernel that binds `chunks` chunks of each cache: the chunks,
/// both inputs in two parts each, the slots and the token order (the lookup table is one
/// more).
pub const fn storage_bindings(chunks: u32) -> u32 {
    2 * chunks + 6
}
