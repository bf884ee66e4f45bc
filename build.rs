//! Build script: validates every WGSL shader in `shaders/` with naga, so that a broken shader
//! fails the build rather than a user's run. (Kernels and shaders are embedded with
//! `include_str!` by the backends; CUDA C++ is compiled at run time by NVRTC.)

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=shaders");
    let mut shaders: Vec<_> = std::fs::read_dir("shaders")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok().map(|e| e.path()))
                .collect()
        })
        .unwrap_or_default();
    shaders.retain(|path| path.extension().is_some_and(|ext| ext == "wgsl"));
    shaders.sort();
    for path in shaders {
        validate_wgsl(&path);
    }
}

fn validate_wgsl(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
    let source = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|error| {
        panic!(
            "{} does not parse:\n{}",
            path.display(),
            error.emit_to_string_with_path(&source, &path.display().to_string())
        )
    });
    // Core WGSL only: the shaders must run on any adapter, lavapipe included.
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|error| {
        panic!(
            "{} is not valid WGSL:\n{}",
            path.display(),
            error.emit_to_string_with_path(&source, &path.display().to_string())
        )
    });
}
