//! Experiment 2: the scatter write under several allocation strategies, and the copy reference.
//!
//! Every strategy gives each cache the same windows (2 GiB - 1 MiB by default, whole blocks of
//! 16 rows, two to a 4 GiB - 2 MiB buffer) and the shader picks the window of each store by slot
//! range; only the `VkDeviceMemory` / `VkBuffer` objects behind the windows differ.

use crate::shaders::{self, Params, WG};
use crate::vk::{Ctx, HostBuffer, Pipeline};
use anyhow::{bail, Result};
use ash::vk;

const MIB: u64 = 1 << 20;
const POISON: u32 = 0xdead_beef;
const USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::STORAGE_BUFFER.as_raw()
        | vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// wgpu's way: one buffer with its own `VkDeviceMemory` per window.
    A,
    /// Fewer, larger buffers (`big` bytes, about maxMemoryAllocationSize) bound as windows.
    B,
    /// As B, but each binding is a whole big buffer (needs maxStorageBufferRange >= big).
    W,
    /// One `VkDeviceMemory` per cache, one buffer per window bound at offsets into it.
    C,
    /// As A with `VkMemoryDedicatedAllocateInfo`.
    D,
    /// As A with `VkMemoryPriorityAllocateInfoEXT` priority 1.0 (device with memory priority
    /// and pageable device-local memory enabled).
    F,
    /// As A on the device of F, without a priority (what enabling the extensions alone does).
    F0,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "a" => Self::A,
            "b" => Self::B,
            "w" => Self::W,
            "c" => Self::C,
            "d" => Self::D,
            "f" => Self::F,
            "f0" => Self::F0,
            _ => bail!("unknown strategy {s:?} (a, b, w, c, d, f, f0)"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a:buffer+memory per 2GiB window (wgpu)",
            Self::B => "b:4GiB buffers, 2GiB windows",
            Self::W => "w:4GiB buffers, whole-buffer bindings",
            Self::C => "c:one memory per cache, buffers at offsets",
            Self::D => "d:dedicated allocation per window",
            Self::F => "f:priority 1.0 + pageable device",
            Self::F0 => "f0:pageable device, no priority",
        }
    }
    pub fn tag(self) -> &'static str {
        self.name().split(':').next().unwrap_or("?")
    }
}

/// The sizes the run uses (from options and the device's limits).
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Bytes per token row (32 KiB for 128 heads x 128 x 2 bytes).
    pub row: u64,
    /// Bytes per window binding (whole blocks of 16 rows).
    pub window: u64,
    /// Bytes per large buffer of strategies B and W.
    pub big: u64,
    pub memory_type: Option<u32>,
    /// Scatter calls between two timestamps (1: a timestamp after every call; more: a chain
    /// of dependent calls timed as the benchmark's wgpu passes time theirs, per call).
    pub chain: u32,
}

/// The objects behind one cache, and the windows its bindings see.
struct Cache {
    windows: Vec<(vk::Buffer, u64, u64)>,
    buffers: Vec<vk::Buffer>,
    memories: Vec<vk::DeviceMemory>,
}

impl Cache {
    fn free(self, ctx: &Ctx) {
        unsafe {
            for b in self.buffers {
                ctx.device.destroy_buffer(b, None);
            }
            for m in self.memories {
                ctx.device.free_memory(m, None);
            }
        }
    }
}

fn device_type(ctx: &Ctx, bits: u32, g: &Geometry) -> Result<u32> {
    match g.memory_type {
        Some(t) if bits & (1 << t) != 0 => Ok(t),
        Some(t) => bail!("memory type {t} not allowed for this buffer (bits {bits:#b})"),
        None => ctx.memory_type(bits, vk::MemoryPropertyFlags::DEVICE_LOCAL),
    }
}

/// A buffer of `size` bytes with memory of its own (dedicated / prioritised on request).
fn own_buffer(
    ctx: &Ctx,
    size: u64,
    g: &Geometry,
    dedicated: bool,
    priority: Option<f32>,
) -> Result<(vk::Buffer, vk::DeviceMemory)> {
    let b = ctx.create_buffer(size, USAGE)?;
    let req = ctx.requirements(b);
    let t = device_type(ctx, req.memory_type_bits, g)?;
    match ctx.allocate(req.size, t, dedicated.then_some(b), priority) {
        Ok(m) => {
            ctx.bind(b, m, 0)?;
            Ok((b, m))
        }
        Err(e) => {
            unsafe { ctx.device.destroy_buffer(b, None) };
            Err(e)
        }
    }
}

/// Allocates one cache of `bytes` under strategy `s`; returns the windows for the bindings.
fn allocate_cache(ctx: &Ctx, s: Strategy, bytes: u64, g: &Geometry) -> Result<Cache> {
    let mut c = Cache {
        windows: vec![],
        buffers: vec![],
        memories: vec![],
    };
    let result = (|| -> Result<()> {
        match s {
            Strategy::A | Strategy::D | Strategy::F | Strategy::F0 => {
                let mut off = 0;
                while off < bytes {
                    let n = g.window.min(bytes - off);
                    let pri = (s == Strategy::F).then_some(1.0);
                    let (b, m) = own_buffer(ctx, n, g, s == Strategy::D, pri)?;
                    c.buffers.push(b);
                    c.memories.push(m);
                    c.windows.push((b, 0, n));
                    off += n;
                }
            }
            Strategy::B | Strategy::W => {
                let per = if s == Strategy::W {
                    g.big
                } else {
                    (g.big / g.window) * g.window
                };
                let win = if s == Strategy::W { g.big } else { g.window };
                let mut off = 0;
                while off < bytes {
                    let n = per.min(bytes - off);
                    let (b, m) = own_buffer(ctx, n, g, false, None)?;
                    c.buffers.push(b);
                    c.memories.push(m);
                    let mut o = 0;
                    while o < n {
                        let r = win.min(n - o);
                        c.windows.push((b, o, r));
                        o += r;
                    }
                    off += n;
                }
            }
            Strategy::C => {
                let mut bufs = vec![];
                let mut off = 0;
                while off < bytes {
                    let n = g.window.min(bytes - off);
                    let b = ctx.create_buffer(n, USAGE)?;
                    c.buffers.push(b);
                    bufs.push((b, off, n));
                    off += n;
                }
                let req = ctx.requirements(bufs[0].0);
                if !g.window.is_multiple_of(req.alignment) {
                    bail!(
                        "window {} not a multiple of alignment {}",
                        g.window,
                        req.alignment
                    );
                }
                let t = device_type(ctx, req.memory_type_bits, g)?;
                let m = ctx.allocate(
                    bytes.next_multiple_of(req.alignment.max(2 * MIB)),
                    t,
                    None,
                    None,
                )?;
                c.memories.push(m);
                for (b, o, n) in bufs {
                    ctx.bind(b, m, o)?;
                    c.windows.push((b, 0, n));
                }
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(c),
        Err(e) => {
            c.free(ctx);
            Err(e)
        }
    }
}

/// One measured configuration.
pub struct Row {
    pub strategy: String,
    pub cache_mib: u64,
    pub tokens: u32,
    pub median_us: f64,
    pub min_us: f64,
    pub gbs: f64,
    pub note: String,
}

/// Median and minimum of per-call times (ns) from consecutive timestamps.
pub fn intervals(ts: &[f64]) -> (f64, f64) {
    let mut d: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    d.sort_by(f64::total_cmp);
    (d[d.len() / 2], d[0])
}

fn dispatch(ctx: &Ctx, cb: vk::CommandBuffer, total: u64) {
    let groups = total.div_ceil(WG as u64);
    let gx = groups.min(ctx.facts.max_workgroups_x as u64);
    let gy = groups.div_ceil(gx);
    unsafe { ctx.device.cmd_dispatch(cb, gx as u32, gy as u32, 1) };
}

/// Records `warm` untimed and `n` timed intervals of `per` calls of `call`, each call followed
/// by a barrier, each interval by a timestamp, in one command buffer; returns the per-call
/// (median, min) in ns.
fn time_calls(
    ctx: &Ctx,
    warm: u32,
    n: u32,
    per: u32,
    call: impl Fn(vk::CommandBuffer),
) -> Result<(f64, f64)> {
    let per = per.max(1);
    let ts = ctx.run(n + 1, |cb, qp| {
        for _ in 0..warm {
            call(cb);
            ctx.barrier(cb);
        }
        ctx.timestamp(cb, qp, 0);
        for i in 0..n {
            for _ in 0..per {
                call(cb);
                ctx.barrier(cb);
            }
            ctx.timestamp(cb, qp, i + 1);
        }
    })?;
    let (median, min) = intervals(&ts);
    Ok((median / per as f64, min / per as f64))
}

fn uniform(ctx: &Ctx, p: &Params) -> Result<HostBuffer> {
    let u = ctx.host_buffer(256, vk::BufferUsageFlags::UNIFORM_BUFFER)?;
    u.write(0, bytemuck::bytes_of(p));
    Ok(u)
}

/// The plain 16-byte copy between two buffers of `g.big` bytes (bound in windows), GB/s.
pub fn copy_reference(ctx: &Ctx, g: &Geometry, calls: u32) -> Result<Row> {
    let pipe = ctx.pipeline(&shaders::spirv(&shaders::copy())?, &[1, 2], Some(0))?;
    let (src, sm) = own_buffer(ctx, g.big, g, false, None)?;
    let (dst, dm) = own_buffer(ctx, g.big, g, false, None)?;
    let win = (ctx.facts.max_storage_buffer_range as u64 / MIB * MIB)
        .min(g.window)
        .min(g.big);
    let n_win = g.big.div_ceil(win);
    let pool = ctx.descriptor_pool(&pipe, n_win as u32)?;
    let mut sets = vec![];
    let mut unis = vec![];
    for i in 0..n_win {
        let (o, r) = (i * win, win.min(g.big - i * win));
        let u = uniform(
            ctx,
            &Params {
                total: (r / 16) as u32,
                ..Default::default()
            },
        )?;
        let set = ctx.descriptor_set(
            pool,
            &pipe,
            &[
                (0, vk::DescriptorType::UNIFORM_BUFFER, u.buffer, 0, 256),
                (1, vk::DescriptorType::STORAGE_BUFFER, src, o, r),
                (2, vk::DescriptorType::STORAGE_BUFFER, dst, o, r),
            ],
        )?;
        sets.push((set, r));
        unis.push(u);
    }
    let call = |cb: vk::CommandBuffer| unsafe {
        ctx.device
            .cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipe.pipeline);
        for &(set, r) in &sets {
            ctx.device.cmd_bind_descriptor_sets(
                cb,
                vk::PipelineBindPoint::COMPUTE,
                pipe.layout,
                0,
                &[set],
                &[],
            );
            dispatch(ctx, cb, r / 16);
        }
    };
    let (med, min) = time_calls(ctx, 2, calls, 1, call)?;
    unsafe {
        ctx.device.destroy_descriptor_pool(pool, None);
        for (b, m) in [(src, sm), (dst, dm)] {
            ctx.device.destroy_buffer(b, None);
            ctx.device.free_memory(m, None);
        }
    }
    unis.into_iter().for_each(|u| ctx.free_host(u));
    ctx.destroy_pipeline(pipe);
    Ok(Row {
        strategy: "copy".into(),
        cache_mib: g.big / MIB,
        tokens: 0,
        median_us: med / 1e3,
        min_us: min / 1e3,
        gbs: 2.0 * g.big as f64 / med,
        note: format!("{n_win} windows"),
    })
}

/// `n` distinct pseudo-random slots below `slots` (a partial Fisher-Yates shuffle, xorshift).
pub fn random_slots(n: u32, slots: u64, seed: u64) -> Vec<u32> {
    let mut all: Vec<u32> = (0..slots as u32).collect();
    let mut x = seed | 1;
    for i in 0..n as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = i + (x % (slots - i as u64)) as usize;
        all.swap(i, j);
    }
    all.truncate(n as usize);
    all
}

/// The checked input word `i` of token row data for cache `kind` (0 keys, 1 values).
fn pattern(kind: u32, i: u64) -> u32 {
    let x = (i as u32).wrapping_mul(0x9e37_79b1)
        ^ (kind.wrapping_add(1).wrapping_mul(0x85eb_ca6b))
        ^ ((i >> 32) as u32);
    x.rotate_left(13) ^ 0x1234_5678
}

/// The inputs (keys, values; `max_tokens` rows each), the slots buffer and a staging buffer.
pub struct Inputs {
    k: (vk::Buffer, vk::DeviceMemory),
    v: (vk::Buffer, vk::DeviceMemory),
    slots: (vk::Buffer, vk::DeviceMemory),
    staging: HostBuffer,
    rows: u64,
}

impl Inputs {
    pub fn new(ctx: &Ctx, g: &Geometry, max_tokens: u32, check_tokens: u32) -> Result<Self> {
        let bytes = max_tokens as u64 * g.row;
        let k = own_buffer(ctx, bytes, g, false, None)?;
        let v = own_buffer(ctx, bytes, g, false, None)?;
        let slots = own_buffer(ctx, max_tokens as u64 * 4, g, false, None)?;
        let staging_bytes = (check_tokens.max(66) as u64 * g.row)
            .max(max_tokens as u64 * 4)
            .max(64 * 1024);
        let staging = ctx.host_buffer(
            staging_bytes,
            vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST,
        )?;
        let me = Self {
            k,
            v,
            slots,
            staging,
            rows: max_tokens as u64,
        };
        ctx.run(0, |cb, _| unsafe {
            ctx.device
                .cmd_fill_buffer(cb, me.k.0, 0, vk::WHOLE_SIZE, 0x3c00_3c00);
            ctx.device
                .cmd_fill_buffer(cb, me.v.0, 0, vk::WHOLE_SIZE, 0x4000_4000);
        })?;
        Ok(me)
    }

    pub fn free(self, ctx: &Ctx) {
        unsafe {
            for (b, m) in [self.k, self.v, self.slots] {
                ctx.device.destroy_buffer(b, None);
                ctx.device.free_memory(m, None);
            }
        }
        ctx.free_host(self.staging);
    }

    fn upload(&self, ctx: &Ctx, dst: vk::Buffer, bytes: &[u8]) -> Result<()> {
        self.staging.write(0, bytes);
        ctx.run(0, |cb, _| unsafe {
            let r = [vk::BufferCopy {
                src_offset: 0,
                dst_offset: 0,
                size: bytes.len() as u64,
            }];
            ctx.device.cmd_copy_buffer(cb, self.staging.buffer, dst, &r);
        })?;
        Ok(())
    }
}

/// Reads `len` bytes at `(buffer, offset)` of each region into staging (packed) and returns them.
fn read_regions(
    ctx: &Ctx,
    inp: &Inputs,
    regions: &[(vk::Buffer, u64)],
    len: u64,
) -> Result<Vec<u8>> {
    ctx.run(0, |cb, _| unsafe {
        ctx.barrier(cb);
        for (i, &(b, o)) in regions.iter().enumerate() {
            let r = [vk::BufferCopy {
                src_offset: o,
                dst_offset: i as u64 * len,
                size: len,
            }];
            ctx.device.cmd_copy_buffer(cb, b, inp.staging.buffer, &r);
        }
    })?;
    Ok(inp.staging.read(0, regions.len() * len as usize))
}

/// Experiment 2 for one strategy and cache size: every token count; `check` verifies the first
/// `check` tokens' rows (random data) and a few untouched rows (poison) after one call.
#[allow(clippy::too_many_arguments)]
pub fn run_strategy(
    ctx: &Ctx,
    inp: &Inputs,
    s: Strategy,
    cache_bytes: u64,
    tokens: &[u32],
    g: &Geometry,
    calls: u32,
    check: u32,
    log: &mut dyn FnMut(Row),
) -> Result<()> {
    let caches = [
        allocate_cache(ctx, s, cache_bytes, g)?,
        match allocate_cache(ctx, s, cache_bytes, g) {
            Ok(c) => c,
            Err(e) => bail!("second cache: {e}"),
        },
    ];
    let result = run_on(
        ctx,
        inp,
        s,
        &caches,
        cache_bytes,
        tokens,
        g,
        calls,
        check,
        log,
    );
    for c in caches {
        c.free(ctx);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_on(
    ctx: &Ctx,
    inp: &Inputs,
    s: Strategy,
    caches: &[Cache; 2],
    cache_bytes: u64,
    tokens: &[u32],
    g: &Geometry,
    calls: u32,
    check: u32,
    log: &mut dyn FnMut(Row),
) -> Result<()> {
    let windows = caches[0].windows.len() as u32;
    let win_bytes = caches[0].windows[0].2;
    let win_slots = win_bytes / g.row;
    let units = (g.row / 16) as u32;
    let storage: Vec<u32> = (1..6 + 2 * windows).collect();
    let pipe: Pipeline = ctx.pipeline(
        &shaders::spirv(&shaders::scatter(windows))?,
        &storage,
        Some(0),
    )?;
    let pool = ctx.descriptor_pool(&pipe, tokens.len() as u32)?;
    ctx.run(0, |cb, _| unsafe {
        for c in caches {
            for &(b, o, r) in &c.windows {
                ctx.device.cmd_fill_buffer(cb, b, o, r, POISON);
            }
        }
    })?;
    let slots_total = cache_bytes / g.row;
    let max_range = ctx.facts.max_storage_buffer_range as u64;
    let mut unis = vec![];
    let mut out = Ok(());
    for &t in tokens {
        if t as u64 > inp.rows || t as u64 > slots_total {
            out = Err(anyhow::anyhow!("{t} tokens exceed the inputs or the cache"));
            break;
        }
        let split = if t as u64 * g.row > max_range {
            t.div_ceil(2)
        } else {
            t
        };
        if split as u64 * g.row > max_range {
            out = Err(anyhow::anyhow!(
                "{t} tokens: half the input exceeds maxStorageBufferRange"
            ));
            break;
        }
        let slots = random_slots(
            t,
            slots_total,
            0x5eed ^ (cache_bytes >> 20) ^ ((t as u64) << 32),
        );
        inp.upload(ctx, inp.slots.0, bytemuck::cast_slice(&slots))?;
        let p = Params {
            total: t * units,
            units,
            split,
            win_units: 0,
            win_slots: win_slots as u32,
            pad: [0; 3],
        };
        let u = uniform(ctx, &p)?;
        let (lo, hi) = (
            (0, split as u64 * g.row),
            if split == t {
                (0, split as u64 * g.row)
            } else {
                (split as u64 * g.row, (t - split) as u64 * g.row)
            },
        );
        let mut w = vec![
            (0, vk::DescriptorType::UNIFORM_BUFFER, u.buffer, 0, 256),
            (
                1,
                vk::DescriptorType::STORAGE_BUFFER,
                inp.slots.0,
                0,
                t as u64 * 4,
            ),
            (2, vk::DescriptorType::STORAGE_BUFFER, inp.k.0, lo.0, lo.1),
            (3, vk::DescriptorType::STORAGE_BUFFER, inp.k.0, hi.0, hi.1),
            (4, vk::DescriptorType::STORAGE_BUFFER, inp.v.0, lo.0, lo.1),
            (5, vk::DescriptorType::STORAGE_BUFFER, inp.v.0, hi.0, hi.1),
        ];
        for (k, c) in caches.iter().enumerate() {
            for (i, &(b, o, r)) in c.windows.iter().enumerate() {
                w.push((
                    6 + k as u32 * windows + i as u32,
                    vk::DescriptorType::STORAGE_BUFFER,
                    b,
                    o,
                    r,
                ));
            }
        }
        let set = ctx.descriptor_set(pool, &pipe, &w)?;
        unis.push(u);
        let call = |cb: vk::CommandBuffer| unsafe {
            ctx.device
                .cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipe.pipeline);
            ctx.device.cmd_bind_descriptor_sets(
                cb,
                vk::PipelineBindPoint::COMPUTE,
                pipe.layout,
                0,
                &[set],
                &[],
            );
            dispatch(ctx, cb, t as u64 * units as u64);
        };
        let mut note = format!("{windows} windows x {} MiB", win_bytes / MIB);
        if check > 0 && t <= check {
            // Random rows in, one call, rows read back at their slots; untouched rows poisoned.
            for (kind, buf) in [(0, inp.k.0), (1, inp.v.0)] {
                let words: Vec<u32> = (0..t as u64 * g.row / 4)
                    .map(|i| pattern(kind, i))
                    .collect();
                inp.upload(ctx, buf, bytemuck::cast_slice(&words))?;
            }
            ctx.run(0, |cb, _| {
                ctx.barrier(cb);
                call(cb);
            })?;
            let locate = |c: &Cache, s: u64| {
                let (b, o, _) = c.windows[(s / win_slots) as usize];
                (b, o + (s % win_slots) * g.row)
            };
            let mut bad = 0usize;
            for (kind, c) in caches.iter().enumerate() {
                let regions: Vec<_> = slots.iter().map(|&s| locate(c, s as u64)).collect();
                let got: Vec<u32> =
                    bytemuck::pod_collect_to_vec(&read_regions(ctx, inp, &regions, g.row)?);
                let want: Vec<u32> = (0..t as u64 * g.row / 4)
                    .map(|i| pattern(kind as u32, i))
                    .collect();
                bad += got.iter().zip(&want).filter(|(a, b)| a != b).count();
                let mut untouched: Vec<u64> = (0..slots_total)
                    .step_by((slots_total / 64).max(1) as usize)
                    .collect();
                untouched.push(slots_total - 1);
                untouched.retain(|s| !slots.contains(&(*s as u32)));
                let regions: Vec<_> = untouched.iter().map(|&s| locate(c, s)).collect();
                let got: Vec<u32> =
                    bytemuck::pod_collect_to_vec(&read_regions(ctx, inp, &regions, g.row)?);
                bad += got.iter().filter(|&&x| x != POISON).count();
            }
            if bad > 0 {
                out = Err(anyhow::anyhow!(
                    "{}: check failed at {t} tokens: {bad} wrong words",
                    s.tag()
                ));
                break;
            }
            note += ", checked";
        }
        let n = if t <= 4096 { calls.max(50) } else { calls };
        let (med, min) = time_calls(ctx, 2, n, g.chain, call)?;
        if g.chain > 1 {
            note += &format!(", {} calls per timestamp", g.chain);
        }
        let bytes = 4.0 * t as f64 * g.row as f64 + 4.0 * t as f64;
        log(Row {
            strategy: s.name().into(),
            cache_mib: cache_bytes / MIB,
            tokens: t,
            median_us: med / 1e3,
            min_us: min / 1e3,
            gbs: bytes / med,
            note,
        });
    }
    unsafe { ctx.device.destroy_descriptor_pool(pool, None) };
    unis.into_iter().for_each(|u| ctx.free_host(u));
    ctx.destroy_pipeline(pipe);
    out
}
