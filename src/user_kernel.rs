//! Users' own kernels: `--kernel [NAME=]FILE.cu` (CUDA C++) and `--shader [NAME=]FILE.wgsl`
//! (WGSL), each an implementation beside the built-in ones, verified before it is timed.
//!
//! This module is the part both languages share: loading the file, naming the implementation,
//! and the file's own declarations, written as comment lines anywhere in the file:
//!
//! ```text
//! // paged-kv: entry=store_kv grid=elements:8 block=256
//! // paged-kv: layouts=NHD dtypes=bfloat16,half caches=auto,fp8 scales=per-tensor inputs=contiguous
//! ```
//!
//! | key | values | default |
//! |---|---|---|
//! | `entry` | the kernel's symbol (`extern "C" __global__`) or WGSL entry point | `reshape_and_cache_flash` |
//! | `grid` | `elements:N`: one thread per N consecutive elements of one token's head (N divides nothing: the last thread of a head takes the rest); `heads`: one block (workgroup) per (token, head); `tokens`: one block per token | `elements:1` |
//! | `block` | CUDA threads per block (WGSL takes its `@workgroup_size`) | `256` |
//! | `layouts` | `NHD`, `HND` | both |
//! | `dtypes` | `half`, `bfloat16`, `float` | all three |
//! | `caches` | `auto`, `fp8` (e4m3), `fp8_e5m2` | all three |
//! | `scales` | `per-tensor`, `per-head` | both |
//! | `inputs` | `contiguous`, `strided` (accepts both: keys and values may be views of a fused QKV tensor) | `strided` |
//!
//! A call outside what the file declares is reported as n/a, never run. The launch the tool
//! makes from `grid` and `block` is [`Grid::launch`]; the parameters a kernel receives are the
//! contract in `kernels/paged_kv.h` (CUDA) and `shaders/paged_kv.wgsl` (WGSL).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::problem::{CacheDtype, Dtype, Layout, Problem};
use crate::workload::Scaling;

/// The language of a user's kernel, from the flag that named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// `--kernel FILE.cu`: CUDA C++, compiled by NVRTC with `paged_kv.h` on its include path.
    Cuda,
    /// `--shader FILE.wgsl`: WGSL, with the contract's bindings appended by the tool.
    Wgsl,
}

impl Language {
    pub fn flag(self) -> &'static str {
        match self {
            Language::Cuda => "--kernel",
            Language::Wgsl => "--shader",
        }
    }
}

/// How long one wait for a user's kernel may take before the run ends with an error saying it
/// did not finish (a hang or an endless loop): `--kernel-timeout` changes it.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Names the built-in implementations own; a user's kernel may not take them.
pub const RESERVED_NAMES: [&str; 6] = ["cuda", "wgpu", "cpu", "auto", "all", "pattern"];

/// One user kernel, loaded and with its declarations parsed. Compiling it is the backend's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKernel {
    /// The implementation's name in every report: `NAME=` from the flag, else the file stem.
    pub name: String,
    pub path: PathBuf,
    pub language: Language,
    /// The file's text, as read.
    pub source: String,
    pub directives: Directives,
}

impl UserKernel {
    /// Loads `spec` (`FILE` or `NAME=FILE`, the flag's value) as a kernel in `language`.
    /// A missing or unreadable file, a bad name or a bad declaration is one line.
    pub fn load(spec: &str, language: Language) -> Result<UserKernel> {
        let (name, path) = match spec.split_once('=') {
            Some((name, path)) if !name.is_empty() && !name.contains(['/', '\\']) => {
                (Some(name.to_string()), PathBuf::from(path))
            }
            _ => (None, PathBuf::from(spec)),
        };
        let name = match name {
            Some(name) => name,
            None => path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        check_name(&name, &path, language)?;
        let source = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            what: format!("reading {} {}", language.flag(), path.display()),
            source,
        })?;
        let directives = Directives::parse(&source, &path)?;
        Ok(UserKernel {
            name,
            path,
            language,
            source,
            directives,
        })
    }

    /// The file name as compile errors show it (the path as given on the command line).
    pub fn file_name(&self) -> String {
        self.path.display().to_string()
    }

    /// What a report records of the kernel.
    pub fn info(&self) -> UserKernelInfo {
        UserKernelInfo {
            name: self.name.clone(),
            path: self.file_name(),
            language: self.language,
            source_hash: format!("{:016x}", fnv1a64(self.source.as_bytes())),
        }
    }

    /// The command that replays a verification of this kernel with `seed` (`--quick`).
    pub fn replay_command(&self, seed: u64) -> String {
        let spec = if self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy())
            .as_deref()
            == Some(self.name.as_str())
        {
            self.file_name()
        } else {
            format!("{}={}", self.name, self.file_name())
        };
        format!(
            "paged-kv-bench verify --implementation none {} {spec} --seed {seed} --quick",
            self.language.flag()
        )
    }
}

/// A user's kernel as a report records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserKernelInfo {
    pub name: String,
    pub path: String,
    pub language: Language,
    /// FNV-1a (64-bit) of the file's bytes, in hex: which version of the file ran.
    pub source_hash: String,
}

/// FNV-1a, 64-bit: a hash to tell two versions of a file apart (not a cryptographic one).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn check_name(name: &str, path: &Path, language: Language) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(Error::InvalidConfig(format!(
            "{} {}: the implementation name {name:?} must be 1-48 letters, digits, '_', '-' or '.' \
             (give one with NAME=FILE)",
            language.flag(),
            path.display()
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(Error::InvalidConfig(format!(
            "{} {}: {name:?} names a built-in implementation; give another with NAME=FILE",
            language.flag(),
            path.display()
        )));
    }
    Ok(())
}

/// Checks that no two kernels share a name.
pub fn check_unique(kernels: &[UserKernel]) -> Result<()> {
    for (i, kernel) in kernels.iter().enumerate() {
        if let Some(other) = kernels[..i].iter().find(|k| k.name == kernel.name) {
            return Err(Error::InvalidConfig(format!(
                "{} and {} are both named {:?}; give one another name with NAME=FILE",
                other.path.display(),
                kernel.path.display(),
                kernel.name
            )));
        }
    }
    Ok(())
}

/// How the tool launches a user's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// One thread per `N` consecutive elements of one token's head: `ceil(head_size / N)`
    /// threads per (token, head), numbered token-major, then head, then chunk.
    Elements(u32),
    /// One block (workgroup) per (token, head).
    Heads,
    /// One block (workgroup) per token.
    Tokens,
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grid::Elements(n) => write!(f, "elements:{n}"),
            Grid::Heads => f.write_str("heads"),
            Grid::Tokens => f.write_str("tokens"),
        }
    }
}

/// A launch: how many threads the kernel should see and in how many blocks (workgroups) of
/// `block` threads. Kernels still check `thread < threads`: the last block may be partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Threads that have work (`Elements`), or blocks x block (`Heads`, `Tokens`).
    pub threads: u64,
    pub blocks: u64,
    pub block: u32,
}

impl Grid {
    /// The launch for `problem` with `block` threads per block. Every thread count fits in
    /// 64 bits; the backend splits `blocks` over dimensions where its API needs it.
    pub fn launch(self, problem: &Problem, block: u32) -> Launch {
        let block = block.max(1);
        let rows = problem.num_tokens as u64 * problem.num_heads as u64;
        match self {
            Grid::Elements(n) => {
                let per_row = (problem.head_size as u64).div_ceil(n.max(1) as u64);
                let threads = rows * per_row;
                Launch {
                    threads,
                    blocks: threads.div_ceil(block as u64),
                    block,
                }
            }
            Grid::Heads => Launch {
                threads: rows * block as u64,
                blocks: rows,
                block,
            },
            Grid::Tokens => Launch {
                threads: problem.num_tokens as u64 * block as u64,
                blocks: problem.num_tokens as u64,
                block,
            },
        }
    }
}

/// What a file declares about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub entry: String,
    pub grid: Grid,
    /// CUDA threads per block (a WGSL shader's `@workgroup_size` replaces it).
    pub block: u32,
    pub supports: Supports,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            entry: "reshape_and_cache_flash".into(),
            grid: Grid::Elements(1),
            block: 256,
            supports: Supports::default(),
        }
    }
}

/// The calls a kernel implements; anything else is n/a.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supports {
    pub layouts: Vec<Layout>,
    pub dtypes: Vec<Dtype>,
    pub caches: Vec<CacheDtype>,
    pub scales: Vec<Scaling>,
    /// Whether keys and values may be strided views (fused QKV), not only contiguous.
    pub strided_inputs: bool,
}

impl Default for Supports {
    fn default() -> Self {
        Supports {
            layouts: vec![Layout::Nhd, Layout::Hnd],
            dtypes: vec![Dtype::Half, Dtype::BFloat16, Dtype::Float],
            caches: vec![CacheDtype::Auto, CacheDtype::Fp8, CacheDtype::Fp8E5m2],
            scales: vec![Scaling::PerTensor, Scaling::PerHead],
            strided_inputs: true,
        }
    }
}

impl Supports {
    /// `None` when the kernel implements this call, else what it lacks, in words that follow
    /// "does not implement" (e.g. "fp8 caches").
    pub fn lacks(&self, problem: &Problem, scaling: Scaling) -> Option<String> {
        if !self.layouts.contains(&problem.layout) {
            return Some(format!("the {} layout", problem.layout.name()));
        }
        if !self.dtypes.contains(&problem.dtype) {
            return Some(format!("{} inputs", problem.dtype.name()));
        }
        if !self.caches.contains(&problem.cache_dtype) {
            return Some(format!("{} caches", problem.cache_dtype.name()));
        }
        if problem.cache_dtype.is_fp8() && !self.scales.contains(&scaling) {
            return Some(format!("{} scales", scaling.name()));
        }
        if !self.strided_inputs && !problem.contiguous_inputs() {
            return Some("strided (fused QKV) inputs".into());
        }
        None
    }

    pub fn layout(&self, layout: Layout) -> bool {
        self.layouts.contains(&layout)
    }
}

impl Directives {
    /// Parses every `paged-kv:` comment line of `source`; an unknown key or value is an error
    /// naming `path:line`.
    pub fn parse(source: &str, path: &Path) -> Result<Directives> {
        let mut directives = Directives::default();
        for (index, line) in source.lines().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("//") else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix("paged-kv:") else {
                continue;
            };
            let at = |message: String| {
                Error::InvalidConfig(format!("{}:{}: {message}", path.display(), index + 1))
            };
            for item in rest.split_whitespace() {
                let (key, value) = item
                    .split_once('=')
                    .ok_or_else(|| at(format!("expected key=value, got {item:?}")))?;
                directives.set(key, value).map_err(at)?;
            }
        }
        Ok(directives)
    }

    fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        fn list<T>(
            value: &str,
            key: &str,
            parse: impl Fn(&str) -> Option<T>,
            expected: &str,
        ) -> std::result::Result<Vec<T>, String> {
            value
                .split(',')
                .map(|item| {
                    parse(item).ok_or_else(|| {
                        format!("{key}: unknown value {item:?} (expected {expected})")
                    })
                })
                .collect()
        }
        match key {
            "entry" => {
                let valid = value
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!("entry: {value:?} is not a symbol name"));
                }
                self.entry = value.to_string();
            }
            "grid" => {
                self.grid = match value {
                    "heads" => Grid::Heads,
                    "tokens" => Grid::Tokens,
                    _ => match value.strip_prefix("elements:").map(str::parse::<u32>) {
                        Some(Ok(n)) if (1..=4096).contains(&n) => Grid::Elements(n),
                        _ => {
                            return Err(format!(
                                "grid: unknown value {value:?} (expected elements:N with N in \
                                 1..=4096, heads or tokens)"
                            ))
                        }
                    },
                }
            }
            "block" => match value.parse::<u32>() {
                Ok(n) if (1..=1024).contains(&n) => self.block = n,
                _ => {
                    return Err(format!(
                        "block: {value:?} is not a thread count in 1..=1024"
                    ))
                }
            },
            "layouts" => {
                self.supports.layouts = list(
                    value,
                    key,
                    |s| match s.to_ascii_uppercase().as_str() {
                        "NHD" => Some(Layout::Nhd),
                        "HND" => Some(Layout::Hnd),
                        _ => None,
                    },
                    "NHD, HND",
                )?
            }
            "dtypes" => {
                self.supports.dtypes = list(
                    value,
                    key,
                    |s| match s {
                        "half" | "float16" => Some(Dtype::Half),
                        "bfloat16" => Some(Dtype::BFloat16),
                        "float" | "float32" => Some(Dtype::Float),
                        _ => None,
                    },
                    "half, bfloat16, float",
                )?
            }
            "caches" => {
                self.supports.caches = list(
                    value,
                    key,
                    |s| match s {
                        "auto" => Some(CacheDtype::Auto),
                        "fp8" | "fp8_e4m3" => Some(CacheDtype::Fp8),
                        "fp8_e5m2" => Some(CacheDtype::Fp8E5m2),
                        _ => None,
                    },
                    "auto, fp8, fp8_e5m2",
                )?
            }
            "scales" => {
                self.supports.scales = list(
                    value,
                    key,
                    |s| match s {
                        "per-tensor" => Some(Scaling::PerTensor),
                        "per-head" => Some(Scaling::PerHead),
                        _ => None,
                    },
                    "per-tensor, per-head",
                )?
            }
            "inputs" => {
                self.supports.strided_inputs = match value {
                    "contiguous" => false,
                    "strided" => true,
                    _ => {
                        return Err(format!(
                            "inputs: unknown value {value:?} (expected contiguous or strided)"
                        ))
                    }
                }
            }
            _ => {
                return Err(format!(
                    "unknown key {key:?} (expected entry, grid, block, layouts, dtypes, caches, \
                     scales or inputs)"
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> Result<Directives> {
        Directives::parse(source, Path::new("k.cu"))
    }

    #[test]
    fn defaults_without_declarations() {
        assert_eq!(
            parse("__global__ void f() {}").unwrap(),
            Directives::default()
        );
    }

    #[test]
    fn declarations_anywhere_in_the_file() {
        let d = parse(
            "#include <paged_kv.h>\n  // paged-kv: entry=store grid=elements:8 block=128\n\
             int x;\n//paged-kv: layouts=NHD dtypes=bfloat16,half caches=auto scales=per-tensor \
             inputs=contiguous\n",
        )
        .unwrap();
        assert_eq!(d.entry, "store");
        assert_eq!(d.grid, Grid::Elements(8));
        assert_eq!(d.block, 128);
        assert_eq!(d.supports.layouts, vec![Layout::Nhd]);
        assert_eq!(d.supports.dtypes, vec![Dtype::BFloat16, Dtype::Half]);
        assert_eq!(d.supports.caches, vec![CacheDtype::Auto]);
        assert_eq!(d.supports.scales, vec![Scaling::PerTensor]);
        assert!(!d.supports.strided_inputs);
    }

    #[test]
    fn bad_declarations_name_file_and_line() {
        let error = parse("\n\n// paged-kv: grid=rows\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("k.cu:3: grid"), "{error}");
        let error = parse("// paged-kv: colour=blue").unwrap_err().to_string();
        assert!(error.contains("k.cu:1: unknown key \"colour\""), "{error}");
        let error = parse("// paged-kv: caches=fp16").unwrap_err().to_string();
        assert!(error.contains("unknown value \"fp16\""), "{error}");
        assert!(parse("// paged-kv: block=2048").is_err());
        assert!(parse("// paged-kv: entry=1abc").is_err());
        assert!(parse("// paged-kv: grid").is_err());
    }

    #[test]
    fn launches_cover_every_element_once() {
        let problem = Problem {
            num_tokens: 3,
            num_heads: 5,
            head_size: 100,
            block_size: 16,
            num_blocks: 4,
            dtype: Dtype::BFloat16,
            cache_dtype: CacheDtype::Auto,
            layout: Layout::Nhd,
            input_strides: None,
        };
        let launch = Grid::Elements(8).launch(&problem, 64);
        // 13 threads per head of 100 elements (the last takes 4), 15 (token, head) rows.
        assert_eq!(launch.threads, 15 * 13);
        assert_eq!(launch.blocks, (15u64 * 13).div_ceil(64));
        assert_eq!(Grid::Heads.launch(&problem, 32).blocks, 15);
        assert_eq!(Grid::Tokens.launch(&problem, 32).blocks, 3);
    }

    #[test]
    fn names_come_from_the_flag_or_the_stem() {
        let dir = std::env::temp_dir().join(format!("pkb-user-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("my_copy.wgsl");
        std::fs::write(&file, "// paged-kv: layouts=NHD\n").unwrap();
        let spec = file.display().to_string();
        let kernel = UserKernel::load(&spec, Language::Wgsl).unwrap();
        assert_eq!(kernel.name, "my_copy");
        assert_eq!(kernel.directives.supports.layouts, vec![Layout::Nhd]);
        let kernel = UserKernel::load(&format!("fast={spec}"), Language::Wgsl).unwrap();
        assert_eq!(kernel.name, "fast");
        let error = UserKernel::load(&format!("cuda={spec}"), Language::Wgsl).unwrap_err();
        assert!(error.to_string().contains("built-in"), "{error}");
        let missing = dir.join("absent.cu").display().to_string();
        let error = UserKernel::load(&missing, Language::Cuda).unwrap_err();
        assert!(error.to_string().contains("absent.cu"), "{error}");
        assert!(check_unique(&[kernel.clone(), kernel]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
