//! The main call's input buffers (keys, values, slots), kept between calls.
//!
//! A buffer allocated per row lands wherever the allocator puts it after the rows before it,
//! and the kernels' speed depends on the address translation of what they read: the same WGSL
//! row measured 50 us alone and 86 us inside another sweep on an H100 (issue 13), and per-row
//! input allocations were the first suspect. Kept buffers, sized before the first row for the
//! sweep's largest ([`crate::backend::Backend::reserve`]), make every row read its inputs from
//! the same allocations whatever ran before it. A call grows a buffer only where it is too
//! small: a row larger than the reservation, a library user who never reserves, or a row whose
//! inputs are split over bindings in larger ranges than the largest row's.

use std::collections::HashMap;

use super::device::{Gpu, Window};
use super::plan::{input_token_bytes, Batch};
use crate::error::{Bytes, Result};
use crate::problem::Problem;

/// Which input buffer of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Role {
    /// Keys or values of the batch's first (0) or second (1) token range.
    Key(u8),
    Value(u8),
    Slots,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Key(0) => "key input",
            Role::Key(_) => "key input (second range)",
            Role::Value(0) => "value input",
            Role::Value(_) => "value input (second range)",
            Role::Slots => "slot mapping",
        }
    }
}

/// The input buffers one batch binds and the bytes it uses of each: keys and values of each
/// token range (a batch of one range still binds a second, unused; a range of strided inputs
/// spans from its first token's row to its last's), and the slots followed by `scale_bytes` of
/// per-head scales.
pub(super) fn batch_buffers(
    problem: &Problem,
    batch: &Batch,
    scale_bytes: u64,
) -> Vec<(Role, u64)> {
    let token_bytes = input_token_bytes(problem);
    let row_bytes = (problem.token_elements() * problem.dtype.size()) as u64;
    let mut buffers = Vec::new();
    let ranges: Vec<(usize, usize)> = batch.parts().collect();
    for part in 0..2u8 {
        let bytes = ranges.get(part as usize).map_or(0, |&(_, count)| {
            (count as u64).saturating_sub(1) * token_bytes + row_bytes
        });
        buffers.push((Role::Key(part), bytes));
        buffers.push((Role::Value(part), bytes));
    }
    buffers.push((Role::Slots, 8 * batch.tokens as u64 + scale_bytes));
    buffers
}

/// An input buffer for one call: the part of it that the call uses, and whether it is kept
/// (a pooled buffer outlives the call and must not be destroyed with it).
pub(super) struct Input {
    pub buffer: wgpu::Buffer,
    pub size: u64,
    pub kept: bool,
}

impl Input {
    pub fn window(&self) -> Window<'_> {
        Window {
            buffer: &self.buffer,
            offset: 0,
            size: self.size,
        }
    }
}

/// Buffers by (batch, role), kept until a call needs a larger one.
#[derive(Default)]
pub(super) struct InputPool {
    buffers: HashMap<(usize, Role), wgpu::Buffer>,
    allocations: usize,
}

impl InputPool {
    /// A buffer of at least `size` bytes (16 at least, whole 16-byte units) for `role` of
    /// batch `batch`, of which the call uses `size` bytes.
    pub fn get(&mut self, gpu: &Gpu, batch: usize, role: Role, size: u64) -> Result<Input> {
        let size = size.max(16).next_multiple_of(16);
        let key = (batch, role);
        if let Some(buffer) = self.buffers.get(&key).filter(|b| b.size() >= size) {
            return Ok(Input {
                buffer: buffer.clone(),
                size,
                kept: true,
            });
        }
        if let Some(old) = self.buffers.remove(&key) {
            old.destroy();
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let what = format!("allocating {} for the {}", Bytes(size), role.label());
        let buffer = gpu.scoped(&what, || gpu.buffer(role.label(), size, usage))?;
        self.allocations += 1;
        self.buffers.insert(key, buffer.clone());
        Ok(Input {
            buffer,
            size,
            kept: true,
        })
    }

    /// Input buffers allocated so far.
    pub fn allocations(&self) -> usize {
        self.allocations
    }
}

impl Drop for InputPool {
    fn drop(&mut self) {
        for buffer in self.buffers.values() {
            buffer.destroy();
        }
    }
}
