//! Run-time compilation of the kernels with NVRTC, for the device's own architecture.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};

use crate::backend::Kind;
use crate::error::{Error, Result};

/// The kernels, embedded in the binary.
pub const SOURCE: &str = include_str!("../../../kernels/reshape_and_cache_flash.cu");

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
pub fn compile(major: i32, minor: i32, defines: &[String]) -> Result<Image> {
    if !nvrtc_present() {
        return Err(unavailable(
            "NVRTC (libnvrtc.so) could not be loaded: install the CUDA toolkit or the \
             NVRTC package and add its lib directory to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let target = major * 10 + minor;
    let archs = supported_archs();
    let (arch_option, cubin) = if archs.contains(&target) {
        (format!("--gpu-architecture=sm_{target}"), true)
    } else {
        match archs.iter().copied().filter(|&a| a < target).max() {
            Some(newest) => (format!("--gpu-architecture=compute_{newest}"), false),
            None => {
                return Err(unavailable(format!(
                    "this NVRTC cannot compile for compute capability {major}.{minor}"
                )))
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

    let source = CString::new(SOURCE).map_err(|_| unavailable("kernel source has a NUL".into()))?;
    let name = CString::new("reshape_and_cache_flash.cu").expect("no NUL in a literal");
    let program = nvrtc::create_program(&source, Some(&name))
        .map_err(|e| unavailable(format!("NVRTC could not create the program: {e:?}")))?;
    let program = Program(program);
    // SAFETY: `program` is live until dropped below.
    if let Err(error) = unsafe { nvrtc::compile_program(program.0, &options) } {
        let log = program.log();
        let first = log
            .lines()
            .find(|line| line.contains("error"))
            .or_else(|| log.lines().find(|line| !line.trim().is_empty()))
            .unwrap_or("no log")
            .trim()
            .to_string();
        return Err(unavailable(format!(
            "NVRTC could not compile the kernels ({arch_option}): {error:?}: {first}"
        )));
    }
    let image = if cubin {
        program.cubin().map(Image::Cubin)
    } else {
        program.ptx().map(Image::Ptx)
    };
    image.ok_or_else(|| unavailable("NVRTC returned no compiled image".into()))
}

/// What NVRTC produced.
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
