//! Streaming ceilings: the plain copy every row is compared with, and copies with a cache's
//! write patterns, for the tuning harness (`examples/tune_cuda.rs`).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{Context, CudaBackend};
use crate::error::{Error, Result};

impl CudaBackend {
    /// One measurement of the copy ceiling on two buffers of `bytes`, with `blocks` blocks of
    /// `threads` (0 = one block per `4 * threads` words, the default): the median GB/s (read +
    /// written) of `runs` timed copies.
    #[doc(hidden)]
    pub fn measure_copy(
        &mut self,
        bytes: u64,
        threads: u32,
        blocks: u32,
        runs: usize,
    ) -> Result<f64> {
        let words = bytes / 16;
        let src = self.alloc::<u8>((words * 16) as usize, "the copy source")?;
        let mut dst = self.alloc::<u8>((words * 16) as usize, "the copy destination")?;
        let mut src = src;
        self.fill_random(&mut src, 7)?;
        let threads = threads.clamp(32, 1024);
        let config = LaunchConfig {
            grid_dim: (
                if blocks == 0 {
                    // One block per 4 * threads words, as the reshape kernels are laid out.
                    words.div_ceil(4 * threads as u64).min(i32::MAX as u64) as u32
                } else {
                    blocks
                },
                1,
                1,
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let copy = |dst: &mut CudaSlice<u8>| -> Result<()> {
            let mut launch = self.stream.launch_builder(&self.kernels.copy);
            launch.arg(&src).arg(dst).arg(&words);
            // SAFETY: both buffers hold `words` 16-byte words.
            unsafe { launch.launch(config) }.during("copying")?;
            Ok(())
        };
        let (start, end) = (self.timing_event()?, self.timing_event()?);
        copy(&mut dst)?;
        copy(&mut dst)?;
        let mut rates = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            start.record(&self.stream).during("recording an event")?;
            copy(&mut dst)?;
            end.record(&self.stream).during("recording an event")?;
            let ms = start.elapsed_ms(&end).during("timing the copy")? as f64;
            rates.push(2.0 * (words * 16) as f64 / (ms * 1e-3) / 1e9);
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates[rates.len() / 2])
    }

    /// One measurement of a streaming ceiling other than the plain copy: `reads` (1 or 2)
    /// 16-byte words read per word written, `out_bytes` written (a power of two) in rows of
    /// `row_bytes` (a power of two, at least 16) placed as a cache would: with `heads` = 1,
    /// each row at a scattered slot (NHD token rows); with more heads (a power of two), the
    /// `heads` consecutive rows of a token spread as HND puts them in blocks of 16 slots. 512
    /// threads per block. The median GB/s (read + written) of `runs` timed runs.
    #[doc(hidden)]
    pub fn measure_stream(
        &mut self,
        reads: u32,
        out_bytes: u64,
        row_bytes: u64,
        heads: u64,
        runs: usize,
    ) -> Result<f64> {
        const BLOCK_SLOTS: u64 = 16;
        if !(1..=2).contains(&reads)
            || !out_bytes.is_power_of_two()
            || !row_bytes.is_power_of_two()
            || !heads.is_power_of_two()
            || row_bytes < 16
            || row_bytes * heads * if heads > 1 { BLOCK_SLOTS } else { 1 } > out_bytes
        {
            return Err(Error::InvalidConfig(format!(
                "measure_stream: reads {reads}, out_bytes {out_bytes}, row_bytes {row_bytes}, \
                 heads {heads}"
            )));
        }
        let words = out_bytes / 16;
        let shift = (row_bytes / 16).trailing_zeros();
        let heads_log2 = heads.trailing_zeros();
        let bs_log2 = BLOCK_SLOTS.trailing_zeros();
        let mut src =
            self.alloc::<u8>((words * 16 * reads as u64) as usize, "the stream source")?;
        let mut dst = self.alloc::<u8>((words * 16) as usize, "the stream destination")?;
        self.fill_random(&mut src, 7)?;
        self.fill_random(&mut dst, 8)?;
        // 512 threads: the two-read kernel needs more registers than 1024 threads could have.
        let threads = 512u32;
        let config = LaunchConfig {
            // One block per 4 * threads words, as the copy ceiling is laid out.
            grid_dim: (
                words.div_ceil(4 * threads as u64).min(i32::MAX as u64) as u32,
                1,
                1,
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let function = if reads == 2 {
            &self.kernels.stream_r2w1
        } else {
            &self.kernels.stream_r1w1
        };
        let run = |dst: &mut CudaSlice<u8>| -> Result<()> {
            let mut launch = self.stream.launch_builder(function);
            launch
                .arg(&src)
                .arg(dst)
                .arg(&words)
                .arg(&shift)
                .arg(&heads_log2)
                .arg(&bs_log2);
            // SAFETY: the source holds `reads * words` and the destination `words` 16-byte
            // words; the kernel's placement is a permutation of whole rows within the output.
            unsafe { launch.launch(config) }.during("streaming")?;
            Ok(())
        };
        let (start, end) = (self.timing_event()?, self.timing_event()?);
        run(&mut dst)?;
        run(&mut dst)?;
        let mut rates = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            start.record(&self.stream).during("recording an event")?;
            run(&mut dst)?;
            end.record(&self.stream).during("recording an event")?;
            let ms = start.elapsed_ms(&end).during("timing the stream")? as f64;
            rates.push((reads as u64 + 1) as f64 * (words * 16) as f64 / (ms * 1e-3) / 1e9);
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates[rates.len() / 2])
    }
}
