//! Run-time compilation of the kernels with NVRTC, for the device's own architecture.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};

use crate::backend::Kind;
use crate::error::{Error, Result};

/// The kernels, embedded in the binary: the reshape kernels, then the ceilings and utilities
/// that use their helpers (one NVRTC program; `#line` keeps compile errors pointing at the
/// right file and line).
pub const SOURCE: &str = concat!(
    include_str!("../../../kernels/reshape_and_cache_flash.cu"),
    "#line 1 \"ceilings.cu\"\n",
    include_str!("../../../kernels/ceilings.cu"),
);

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        backend: Kind::Cuda,
        reason,
    }
}

/// Include directories of a CUDA installation: `$CUDA_HOME`, then `$CUDA_PATH`, then
/// `/usr/local/cuda`, each as `<root>/include` and `<root>/targets/x86_64-linux/include`,
/// keeping those that exist. The kernels include no header today; passing these lets a
/// future `#include <cuda_fp8.h>` work wherever the toolkit is.
pub fn include_dirs(
    var: impl Fn(&str) -> Option<String>,
    exists: impl Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|name| var(name))
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    let mut dirs = Vec::new();
    for root in roots {
        for sub in ["include", "targets/x86_64-linux/include"] {
            let dir = root.join(sub);
            if exists(&dir) && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The NVRTC version, e.g. (13, 0).
pub fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: two out-parameters; only called once libnvrtc is known to load.
    let status = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    (status == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// The `sm_XY` architectures this NVRTC can compile for.
fn supported_archs() -> Vec<i32> {
    let mut count: c_int = 0;
    // SAFETY: out-parameter, then a buffer of exactly `count` entries.
    unsafe {
        if nvrtc_sys::nvrtcGetNumSupportedArchs(&mut count) != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS
            || count <= 0
        {
            return Vec::new();
        }
        let mut archs = vec![0 as c_int; count as usize];
        if nvrtc_sys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
            != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS
        {
            return Vec::new();
        }
        archs
    }
}

/// Whether libnvrtc can be loaded (cudarc panics on first use when it cannot).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// Compiles the kernels for compute capability `major.minor`: a CUBIN for `sm_XY` when this
/// NVRTC knows the architecture; otherwise PTX for the newest architecture it knows, which the
/// driver compiles further when it loads the module. `defines` are extra `-D` macros (tuning).
///
/// The image is kept for the life of the process, per architecture and macros: a user's kernel
/// (`--kernel`) opens a backend of its own beside the built-in one, and both need the built-in
/// module (fills, copies), which takes seconds to compile.
pub fn compile(major: i32, minor: i32, defines: &[String]) -> Result<Image> {
    type Key = (i32, i32, Vec<String>);
    static COMPILED: std::sync::Mutex<Vec<(Key, Image)>> = std::sync::Mutex::new(Vec::new());
    let key = (major, minor, defines.to_vec());
    let cached = COMPILED.lock().ok().and_then(|images| {
        images
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, i)| i.clone())
    });
    if let Some(image) = cached {
        return Ok(image);
    }
    let source = Source {
        text: SOURCE,
        name: "reshape_and_cache_flash.cu",
        headers: &[],
    };
    let image =
        compile_source(major, minor, defines, &source).map_err(|failure| match failure {
            Failure::Other(error) => error,
            Failure::Log { arch, status, log } => {
                let first = log
                    .lines()
                    .find(|line| line.contains("error"))
                    .or_else(|| log.lines().find(|line| !line.trim().is_empty()))
                    .unwrap_or("no log")
                    .trim()
                    .to_string();
                unavailable(format!(
                    "NVRTC could not compile the kernels ({arch}): {status}: {first}"
                ))
            }
        })?;
    if let Ok(mut images) = COMPILED.lock() {
        images.push((key, image.clone()));
    }
    Ok(image)
}

/// A CUDA C++ program for NVRTC.
pub struct Source<'a> {
    pub text: &'a str,
    /// The name NVRTC's messages give the file (`name(line): error: ...`).
    pub name: &'a str,
    /// Headers the program may `#include` by name, with their text: (name, text).
    pub headers: &'a [(&'a str, &'a str)],
}

/// Why NVRTC gave no image.
pub enum Failure {
    /// The program does not compile: the option that chose the architecture, NVRTC's status
    /// and its whole log.
    Log {
        arch: String,
        status: String,
        log: String,
    },
    /// Anything else (no NVRTC, an unknown architecture), as the error to report.
    Other(Error),
}

/// Compiles `source` for compute capability `major.minor` (a CUBIN for `sm_XY` where NVRTC
/// knows it, else PTX for the newest architecture it knows) with extra `-D` macros `defines`.
pub fn compile_source(
    major: i32,
    minor: i32,
    defines: &[String],
    source: &Source<'_>,
) -> std::result::Result<Image, Failure> {
    if !nvrtc_present() {
        return Err(Failure::Other(unavailable(
            "NVRTC (libnvrtc.so) could not be loaded: install the CUDA toolkit or the \
             NVRTC package and add its lib directory to LD_LIBRARY_PATH"
                .into(),
        )));
    }
    let target = major * 10 + minor;
    let archs = supported_archs();
    let (arch_option, cubin) = if archs.contains(&target) {
        (format!("--gpu-architecture=sm_{target}"), true)
    } else {
        match archs.iter().copied().filter(|&a| a < target).max() {
            Some(newest) => (format!("--gpu-architecture=compute_{newest}"), false),
            None => {
                return Err(Failure::Other(unavailable(format!(
                    "this NVRTC cannot compile for compute capability {major}.{minor}"
                ))))
            }
        }
    };
    let mut options = vec![
        arch_option.clone(),
        // The fp8 path divides in IEEE single precision, subnormals included.
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--std=c++17".to_string(),
        // Source lines in the binary, for profilers; it does not change the code.
        "--generate-line-info".to_string(),
    ];
    for dir in include_dirs(|name| std::env::var(name).ok(), Path::is_dir) {
        options.push(format!("--include-path={}", dir.display()));
    }
    options.extend(defines.iter().map(|d| format!("-D{d}")));

    let c_string = |text: &str, what: &str| {
        CString::new(text)
            .map_err(|_| Failure::Other(Error::InvalidConfig(format!("{what} holds a NUL byte"))))
    };
    let text = c_string(source.text, source.name)?;
    let name = c_string(source.name, "a file name")?;
    let mut header_texts = Vec::new();
    let mut header_names = Vec::new();
    for (include, contents) in source.headers {
        header_names.push(c_string(include, "a header name")?);
        header_texts.push(c_string(contents, include)?);
    }
    let texts: Vec<*const c_char> = header_texts.iter().map(|h| h.as_ptr()).collect();
    let names: Vec<*const c_char> = header_names.iter().map(|h| h.as_ptr()).collect();
    let mut program = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is a live NUL-terminated string for the duration of the call
    // (NVRTC copies them), and the two header arrays have `texts.len()` entries.
    let status = unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            program.as_mut_ptr(),
            text.as_ptr(),
            name.as_ptr(),
            texts.len() as c_int,
            if texts.is_empty() {
                std::ptr::null()
            } else {
                texts.as_ptr()
            },
            if names.is_empty() {
                std::ptr::null()
            } else {
                names.as_ptr()
            },
        )
    };
    if status != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Failure::Other(unavailable(format!(
            "NVRTC could not create the program: {status:?}"
        ))));
    }
    // SAFETY: created above.
    let program = Program(unsafe { program.assume_init() });
    // SAFETY: `program` is live until dropped below.
    if let Err(error) = unsafe { nvrtc::compile_program(program.0, &options) } {
        return Err(Failure::Log {
            arch: arch_option,
            status: format!("{error:?}"),
            log: program.log(),
        });
    }
    let image = if cubin {
        program.cubin().map(Image::Cubin)
    } else {
        program.ptx().map(Image::Ptx)
    };
    image.ok_or_else(|| Failure::Other(unavailable("NVRTC returned no compiled image".into())))
}

/// The lines of an NVRTC log a reader needs, as one short block: each error with its
/// `file(line)` and the source excerpt and caret NVRTC prints under it, at most `max_lines`
/// lines (then how many were left out). Warnings and the closing count are dropped; a log with
/// no recognisable error line keeps its first non-empty lines.
pub fn error_block(log: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    let is_error = |line: &str| line.contains("): error") || line.contains("): catastrophic error");
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if is_error(lines[i]) {
            kept.push(lines[i]);
            // NVRTC follows an error with the offending source line and a caret line, both
            // indented; keep them, up to the next message or blank line.
            let mut j = i + 1;
            while j < lines.len()
                && j <= i + 2
                && lines[j].starts_with(' ')
                && !lines[j].trim().is_empty()
            {
                kept.push(lines[j]);
                j += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    if kept.is_empty() {
        kept = lines
            .iter()
            .copied()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if kept.is_empty() {
            return "NVRTC gave no message".into();
        }
    }
    let total = kept.len();
    let mut block: Vec<String> = kept.into_iter().take(max_lines).map(String::from).collect();
    if total > max_lines {
        block.push(format!("... ({} more lines)", total - max_lines));
    }
    block.join("\n")
}

/// What NVRTC produced.
#[derive(Clone)]
pub enum Image {
    /// Machine code for the device's own architecture.
    Cubin(Vec<u8>),
    /// PTX for an older architecture, for the driver to finish.
    Ptx(String),
}

impl Image {
    /// Writes the machine code (or the PTX) to `path`, for reading with `cuobjdump -sass`.
    pub fn dump(&self, path: &Path) -> Result<()> {
        let bytes = match self {
            Image::Cubin(bytes) => bytes.as_slice(),
            Image::Ptx(text) => text.as_bytes(),
        };
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            what: format!("cannot write the compiled kernels to {}", path.display()),
            source,
        })
    }

    pub fn into_ptx(self) -> Ptx {
        match self {
            Image::Cubin(bytes) => Ptx::from_binary(bytes),
            Image::Ptx(text) => Ptx::from_src(text),
        }
    }
}

/// Owns an NVRTC program and destroys it on every path.
struct Program(nvrtc_sys::nvrtcProgram);

impl Program {
    fn bytes(
        &self,
        size: unsafe fn(nvrtc_sys::nvrtcProgram, *mut usize) -> nvrtc_sys::nvrtcResult,
        get: unsafe fn(nvrtc_sys::nvrtcProgram, *mut c_char) -> nvrtc_sys::nvrtcResult,
    ) -> Option<Vec<u8>> {
        let mut len = 0usize;
        // SAFETY: the program is live; the buffer has the size NVRTC reported.
        unsafe {
            if size(self.0, &mut len) != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || len == 0 {
                return None;
            }
            let mut buffer = vec![0u8; len];
            if get(self.0, buffer.as_mut_ptr().cast()) != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
                return None;
            }
            Some(buffer)
        }
    }

    fn cubin(&self) -> Option<Vec<u8>> {
        self.bytes(nvrtc_sys::nvrtcGetCUBINSize, nvrtc_sys::nvrtcGetCUBIN)
    }

    fn ptx(&self) -> Option<String> {
        let bytes = self.bytes(nvrtc_sys::nvrtcGetPTXSize, nvrtc_sys::nvrtcGetPTX)?;
        let text = CStr::from_bytes_until_nul(&bytes).ok()?;
        Some(text.to_string_lossy().into_owned())
    }

    fn log(&self) -> String {
        self.bytes(
            nvrtc_sys::nvrtcGetProgramLogSize,
            nvrtc_sys::nvrtcGetProgramLog,
        )
        .and_then(|bytes| {
            CStr::from_bytes_until_nul(&bytes)
                .ok()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program and destroyed only here.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_dirs_follow_the_documented_order() {
        let present = [
            "/opt/cuda-home/include",
            "/opt/cuda-path/targets/x86_64-linux/include",
            "/usr/local/cuda/include",
        ];
        let dirs = include_dirs(
            |name| match name {
                "CUDA_HOME" => Some("/opt/cuda-home".into()),
                "CUDA_PATH" => Some("/opt/cuda-path".into()),
                _ => None,
            },
            |path| present.iter().any(|p| Path::new(p) == path),
        );
        let expected: Vec<PathBuf> = present.iter().map(PathBuf::from).collect();
        assert_eq!(dirs, expected);
        let none = include_dirs(|_| Some(String::new()), |_| false);
        assert!(none.is_empty());
    }

    /// A log as NVRTC 12 and 13 write it: each error with its source line and caret, a
    /// warning, and the closing count.
    const LOG: &str = concat!(
        "my.cu(3): warning #177-D: variable \"x\" was declared but never referenced\n",
        "      int x;\n",
        "          ^\n",
        "\n",
        "my.cu(12): error: expected a \";\"\n",
        "      return 1\n",
        "              ^\n",
        "\n",
        "my.cu(20): error: identifier \"undefined_thing\" is undefined\n",
        "      undefined_thing = 2;\n",
        "      ^\n",
        "\n",
        "2 errors detected in the compilation of \"my.cu\".\n",
    );

    #[test]
    fn error_blocks_keep_errors_with_their_lines() {
        let block = error_block(LOG, 20);
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.len(), 6, "{block}");
        assert_eq!(lines[0], "my.cu(12): error: expected a \";\"");
        assert_eq!(lines[1].trim(), "return 1");
        assert_eq!(
            lines[3],
            "my.cu(20): error: identifier \"undefined_thing\" is undefined"
        );
        assert!(!block.contains("warning"));
        assert!(!block.contains("errors detected"));
    }

    #[test]
    fn error_blocks_are_short() {
        let long: String = (1..=50)
            .map(|line| format!("k.cu({line}): error: bad\n    x\n    ^\n"))
            .collect();
        let block = error_block(&long, 20);
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.len(), 21);
        assert_eq!(lines[0], "k.cu(1): error: bad");
        assert_eq!(lines[20], "... (130 more lines)");
        // A log without the usual shape keeps its first lines; an empty one says so.
        assert_eq!(error_block("\nfatal: something\n", 20), "fatal: something");
        assert_eq!(error_block("", 20), "NVRTC gave no message");
        assert!(error_block(
            "x.cu(1): catastrophic error: cannot open source file \"a.h\"",
            5
        )
        .starts_with("x.cu(1): catastrophic error"));
    }

    /// Compiles the kernels for sm_90 wherever libnvrtc loads (no GPU needed): catches syntax
    /// errors on a machine without a GPU. Skipped where NVRTC is absent.
    #[test]
    fn kernels_compile_where_nvrtc_is_present() {
        if !nvrtc_present() {
            eprintln!("libnvrtc not found: skipped");
            return;
        }
        for (major, minor) in [(9, 0), (8, 0)] {
            let image = compile(major, minor, &[]);
            assert!(
                image.is_ok(),
                "sm_{major}{minor}: {:?}",
                image.err().map(|e| e.to_string())
            );
        }
    }
}
