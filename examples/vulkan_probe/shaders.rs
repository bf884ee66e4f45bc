//! The probe's compute shaders, written in WGSL (as the project's are) and compiled to SPIR-V
//! at run time by the naga that wgpu uses, so the raw Vulkan path runs the code wgpu would.
//!
//! Binding layout of the scatter shader (one descriptor set):
//! 0 params (uniform), 1 slots, 2/3 key input low/high part, 4/5 value input low/high part,
//! 6 .. 6+W key cache windows, 6+W .. 6+2W value cache windows. The inputs are bound in two
//! parts because a 65536-token input of 32 KiB rows is 2 GiB, one past a 2 GiB - 4 binding.

use anyhow::{anyhow, Result};

/// Workgroup size of the scatter and copy shaders (as the project's narrow kernel: one 16-byte
/// unit per thread, consecutive threads on consecutive units of one row).
pub const WG: u32 = 256;

pub const PARAMS: &str = "struct Params { total: u32, units: u32, split: u32, win_units: u32, win_slots: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
";

/// Params as the shaders read them (`win_units` is only used by the copy shader).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub total: u32,
    pub units: u32,
    pub split: u32,
    pub win_units: u32,
    pub win_slots: u32,
    pub pad: [u32; 3],
}

/// The scatter shader for `windows` cache windows per cache: the window is chosen per store
/// by a `switch` over separate bindings, as the project's WGSL kernel does.
pub fn scatter(windows: u32) -> String {
    let mut s = String::from(PARAMS);
    s += "@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> k_lo: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> k_hi: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> v_lo: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> v_hi: array<vec4<u32>>;
";
    for w in 0..windows {
        s += &format!(
            "@group(0) @binding({}) var<storage, read_write> kc{w}: array<vec4<u32>>;\n",
            6 + w
        );
        s += &format!(
            "@group(0) @binding({}) var<storage, read_write> vc{w}: array<vec4<u32>>;\n",
            6 + windows + w
        );
    }
    for (f, c) in [("store_k", "kc"), ("store_v", "vc")] {
        s += &format!("fn {f}(w: u32, i: u32, x: vec4<u32>) {{\n    switch w {{\n");
        for w in 0..windows {
            s += &format!("        case {w}u: {{ {c}{w}[i] = x; }}\n");
        }
        s += "        default: {}\n    }\n}\n";
    }
    s += &format!(
        "@compute @workgroup_size({WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let idx = (wid.y * nwg.x + wid.x) * {WG}u + lid;
    if idx >= p.total {{ return; }}
    let t = idx / p.units;
    let u = idx % p.units;
    let s = slots[t];
    if s == 0xffffffffu {{ return; }}
    var k: vec4<u32>;
    var v: vec4<u32>;
    if t < p.split {{
        let i = t * p.units + u;
        k = k_lo[i];
        v = v_lo[i];
    }} else {{
        let i = (t - p.split) * p.units + u;
        k = k_hi[i];
        v = v_hi[i];
    }}
    let w = s / p.win_slots;
    let o = (s % p.win_slots) * p.units + u;
    store_k(w, o, k);
    store_v(w, o, v);
}}
"
    );
    s
}

/// A plain 16-byte copy over one window (`p.total` units), the bandwidth reference.
pub fn copy() -> String {
    format!(
        "{PARAMS}@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;
@compute @workgroup_size({WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let idx = (wid.y * nwg.x + wid.x) * {WG}u + lid;
    if idx >= p.total {{ return; }}
    dst[idx] = src[idx];
}}
"
    )
}

/// The small-call floor: a shader that does nothing.
pub fn empty() -> String {
    "@compute @workgroup_size(64)\nfn main() {}\n".to_string()
}

/// The small-call floor: one thread writes 16 bytes.
pub fn write16() -> String {
    "@group(0) @binding(0) var<storage, read_write> b: array<vec4<u32>>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    if lid == 0u { b[0] = vec4<u32>(1u, 2u, 3u, 4u); }
}
"
    .to_string()
}

/// WGSL -> SPIR-V with naga (validated; default options: no bounds-check code is added, as
/// wgpu does on Vulkan for storage buffers under robust buffer access).
pub fn spirv(wgsl: &str) -> Result<Vec<u32>> {
    let module = naga::front::wgsl::parse_str(wgsl)
        .map_err(|e| anyhow!("WGSL: {}", e.emit_to_string(wgsl)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| anyhow!("validation: {}", e.emit_to_string(wgsl)))?;
    let opts = naga::back::spv::Options::default();
    let pipe = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    naga::back::spv::write_vec(&module, &info, &opts, Some(&pipe))
        .map_err(|e| anyhow!("SPIR-V: {e}"))
}
