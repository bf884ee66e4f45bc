//! Timing protocols and statistics, shared by every backend.
//!
//! Two figures per measurement:
//! - latency: vLLM's method, the host wall clock of `call(); synchronize()` averaged over
//!   `iters` calls after a few warm-up calls. Comparable with vLLM's published tables; includes
//!   launch and synchronisation overhead.
//! - device time: each backend's own clock (CUDA events, wgpu timestamp queries, or the host
//!   clock for the CPU), one sample per timed batch, reported as a median with its spread.

use std::time::Instant;

use crate::error::Result;

/// How a GPU call is issued. The names are those of vLLM's `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mode {
    /// Capture the call in a CUDA graph once, then replay the graph.
    #[value(name = "cudagraph")]
    Cudagraph,
    /// Launch the kernel directly each time.
    #[value(name = "no_graph")]
    NoGraph,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cudagraph => "cudagraph",
            Mode::NoGraph => "no_graph",
        }
    }
}

/// How to time one benchmark row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub mode: Mode,
    /// Untimed calls before the latency loop (vLLM uses 3).
    pub warmup_iters: usize,
    /// Calls in the latency loop (vLLM's `--iters`).
    pub iters: usize,
}

impl Protocol {
    pub fn new(mode: Mode, iters: usize) -> Self {
        Self {
            mode,
            warmup_iters: 3,
            iters,
        }
    }
}

/// What a backend measured for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// vLLM's wall-clock latency per call, in microseconds.
    pub latency_us: f64,
    /// Per-call device time of each timed batch, in microseconds.
    pub device_us: Vec<f64>,
}

impl Samples {
    pub fn device_stats(&self) -> Stats {
        Stats::from_samples(&self.device_us)
    }
}

/// Summary statistics of a set of per-call times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub count: usize,
    pub min: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `samples`; NaN everywhere when there are none.
    pub fn from_samples(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| -> f64 {
            if sorted.is_empty() {
                return f64::NAN;
            }
            // Linear interpolation between the closest ranks.
            let rank = q * (sorted.len() - 1) as f64;
            let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        };
        Self {
            count: sorted.len(),
            min: quantile(0.0),
            p10: quantile(0.1),
            median: quantile(0.5),
            p90: quantile(0.9),
            max: quantile(1.0),
        }
    }

    /// The spread between p10 and p90 relative to the median, in percent.
    pub fn noise_percent(&self) -> f64 {
        (self.p90 - self.p10) / self.median * 100.0
    }
}

/// vLLM's latency: `warmup_iters` untimed calls, then the mean wall time of `iters` calls, each
/// followed by a full synchronisation (which `call` must do before it returns).
pub fn wall_clock_latency_us(
    protocol: &Protocol,
    mut call: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..protocol.warmup_iters {
        call()?;
    }
    let start = Instant::now();
    for _ in 0..protocol.iters {
        call()?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / protocol.iters as f64)
}

/// Timing for backends whose device clock is the host clock (the CPU): warm-up calls, then
/// `iters` calls each timed on its own. The latency is their mean (vLLM's figure), and each call
/// is one device-time sample.
pub fn host_timed(protocol: &Protocol, mut call: impl FnMut() -> Result<()>) -> Result<Samples> {
    for _ in 0..protocol.warmup_iters {
        call()?;
    }
    let mut device_us = Vec::with_capacity(protocol.iters);
    for _ in 0..protocol.iters {
        let start = Instant::now();
        call()?;
        device_us.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let latency_us = device_us.iter().sum::<f64>() / device_us.len().max(1) as f64;
    Ok(Samples {
        latency_us,
        device_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_samples() {
        let s = Stats::from_samples(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.count, s.min, s.median, s.max), (5, 1.0, 3.0, 5.0));
        assert!((s.p10 - 1.4).abs() < 1e-12 && (s.p90 - 4.6).abs() < 1e-12);
        assert!((s.noise_percent() - 3.2 / 3.0 * 100.0).abs() < 1e-9);
        assert!(Stats::from_samples(&[]).median.is_nan());
    }

    #[test]
    fn wall_clock_counts_warmup_and_iters() {
        let mut calls = 0;
        let protocol = Protocol::new(Mode::NoGraph, 7);
        let latency = wall_clock_latency_us(&protocol, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_micros(200));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 10);
        assert!(latency >= 200.0, "{latency}");
    }
}
