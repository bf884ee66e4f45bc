//! The one timing protocol, shared by every backend, and its statistics.
//!
//! Two figures per measurement:
//! - latency: vLLM's method, the host wall clock of `call(); synchronize()` averaged over
//!   `iters` calls after a few warm-up calls. Comparable with vLLM's published tables; includes
//!   launch and synchronisation overhead.
//! - device time: each backend's own clock (CUDA events, wgpu timestamp queries, or the host
//!   clock for the CPU). Each sample is the per-call time of one batch of back-to-back calls;
//!   samples are taken until their noise is small or the row's time budget is spent
//!   ([`sample_until_stable`]), and reported as a median with its spread ([`Stats`]).
//!
//! "Noise" in the stopping rule is robust ([`NOISE_STATISTIC`]): timing samples are skewed by
//! rare long outliers (an interrupt, a page fault, another process on a shared core), and one
//! of them in a hundred quiet samples turns the relative standard deviation into tens of
//! percent, so that small rows never met `--max-noise` and ran to `--max-time`.
//!
//! [`measure`] is the protocol. A backend supplies only primitives ([`Prepared`]): one call,
//! a batch of back-to-back calls on its own clock, rotation copies and a cache flush. Warm,
//! cold and rotating runs, batch sizing and the stopping rule are decided here, the same way
//! for every backend.

use std::time::{Duration, Instant};

use crate::backend::Prepared;
use crate::error::Result;
use crate::problem::Problem;
use crate::workload::rotated_slot_mapping;

/// When to stop taking device-time samples for one row (nvbench's rule): after at least
/// `min_samples` samples and `min_time`, once the robust noise ([`Stats::robust_noise_percent`])
/// is at most `max_noise_percent`; in any case once `max_time` has passed or `max_samples` were
/// taken (the row then did not meet the target, [`SampleRun::met_noise_target`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub min_samples: usize,
    pub max_samples: usize,
    pub min_time: Duration,
    pub max_time: Duration,
    /// Robust noise of the samples ([`NOISE_STATISTIC`]), in percent.
    pub max_noise_percent: f64,
    /// How long one batch of back-to-back calls should take, so that per-batch timing overhead
    /// (event records, timestamp resolution, host clock reads) stays negligible.
    pub batch_time: Duration,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            min_samples: 10,
            max_samples: 10_000,
            min_time: Duration::from_millis(100),
            max_time: Duration::from_secs(5),
            max_noise_percent: 1.0,
            batch_time: Duration::from_micros(500),
        }
    }
}

/// Most calls in one batch, however fast a call looks.
pub const MAX_BATCH_CALLS: usize = 100_000;

/// How to time one benchmark row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protocol {
    /// Untimed calls before the latency loop (vLLM uses 3).
    pub warmup_iters: usize,
    /// Calls in the latency loop (vLLM's `--iters`).
    pub iters: usize,
    /// Device time with cold caches: the device's last-level cache is flushed before each timed
    /// call, and each sample is a single call. Otherwise calls repeat back to back on the same
    /// data, as vLLM's script does ("warm").
    pub cold: bool,
    /// Device time with rotating inputs: back-to-back calls, as warm, but each call reads its own
    /// copy of the inputs and writes its own slots ([`rotation_sets`] copies, cycled), so that
    /// no call finds its data in the device's cache. Excludes `cold`.
    pub rotate: bool,
    pub sampling: Sampling,
}

impl Protocol {
    pub fn new(iters: usize) -> Self {
        Self {
            warmup_iters: 3,
            iters,
            cold: false,
            rotate: false,
            sampling: Sampling::default(),
        }
    }

    /// Calls per device-time batch, given an estimate of one call's time: enough for the batch
    /// to last `sampling.batch_time`, at least 1 and at most [`MAX_BATCH_CALLS`], rounded up to
    /// a whole number of `unit`s (always 1 when cold).
    pub fn calls_per_batch(&self, estimate: Duration, unit: usize) -> usize {
        if self.cold {
            return 1;
        }
        let unit = unit.max(1);
        let estimate = estimate.as_secs_f64().max(1e-9);
        let calls = ((self.sampling.batch_time.as_secs_f64() / estimate).ceil() as usize)
            .clamp(1, MAX_BATCH_CALLS);
        calls.next_multiple_of(unit)
    }
}

/// Rotating inputs: the traffic that passes between two uses of one input copy, several times
/// the largest last-level cache of current GPUs (50 MB on an H100), so that a call's data has
/// left the cache by the time it comes round again.
pub const ROTATION_BYTES: u64 = 256 << 20;

/// Rotating inputs: at most this many copies. Calls of under `ROTATION_BYTES /
/// MAX_ROTATION_SETS` bytes (4 MiB) therefore cannot be made cold by rotation alone.
pub const MAX_ROTATION_SETS: usize = 64;

/// How many input copies a call moving `bytes_per_call` bytes rotates through: enough that
/// `ROTATION_BYTES` pass before a copy is reused, one where a single call already moves that
/// much, at most `MAX_ROTATION_SETS`. The extra copies therefore never hold more than
/// `2 * ROTATION_BYTES`.
pub fn rotation_sets(bytes_per_call: u64) -> usize {
    if bytes_per_call >= ROTATION_BYTES {
        return 1;
    }
    let others = ROTATION_BYTES.div_ceil(bytes_per_call.max(1));
    (1 + others as usize).min(MAX_ROTATION_SETS)
}

/// What a backend measured for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// vLLM's wall-clock latency per call, in microseconds.
    pub latency_us: f64,
    /// Per-call device time of each timed batch, in microseconds.
    pub device_us: Vec<f64>,
    /// Whether sampling stopped because the noise met `--max-noise`, rather than at the row's
    /// `--max-time` or the sample cap.
    pub met_noise_target: bool,
    /// `--ceiling pattern`: the per-call device times of the row's pattern kernel
    /// ([`measure_pattern`]); `None` where it was not asked for or the backend has none.
    pub pattern: Option<SampleRun>,
}

impl Samples {
    pub fn device_stats(&self) -> Stats {
        Stats {
            met_noise_target: self.met_noise_target,
            ..Stats::from_samples(&self.device_us)
        }
    }

    /// The pattern kernel's statistics, where it was timed.
    pub fn pattern_stats(&self) -> Option<Stats> {
        self.pattern.as_ref().map(|run| Stats {
            met_noise_target: run.met_noise_target,
            ..Stats::from_samples(&run.samples)
        })
    }
}

/// The noise statistic of the stopping rule and of [`Stats::robust_noise_percent`], in words
/// (for reports).
pub const NOISE_STATISTIC: &str = "relative IQR (/1.349)";

/// The interquartile range of normal samples in standard deviations: dividing by it makes the
/// robust figure read like the old one where there are no outliers.
const IQR_PER_SIGMA: f64 = 1.349;

/// Summary statistics of a set of per-call times.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub samples: usize,
    pub min: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
    pub mean: f64,
    /// Relative standard deviation, in percent (the figure of earlier versions, kept for
    /// comparison; one outlier in a hundred samples can dominate it).
    pub noise_percent: f64,
    /// The robust noise that the stopping rule uses: the interquartile range (p75 - p25)
    /// divided by 1.349 (so that it estimates the standard deviation of normal samples), in
    /// percent of the median ([`NOISE_STATISTIC`]). Rare outliers (under a quarter of the
    /// samples) do not move it. Chosen over the median absolute deviation, which ignores up to
    /// half: where a row's calls take one of two times (two clock states, two page placements)
    /// and the faster holds just over half of the samples, the MAD reads near 0 although the
    /// median can flip between the two from run to run, while the IQR spans both and sampling
    /// goes on. 0 where a single sample was taken; NaN in reports of earlier versions.
    #[serde(default = "nan")]
    pub robust_noise_percent: f64,
    /// False where sampling stopped at `--max-time` or the sample cap before the robust noise
    /// met `--max-noise`: the row's figures are less settled than asked. True in reports of
    /// earlier versions, which did not record it.
    #[serde(default = "yes")]
    pub met_noise_target: bool,
}

fn nan() -> f64 {
    f64::NAN
}

fn yes() -> bool {
    true
}

/// Linear interpolation between the closest ranks of sorted values; NaN when there are none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = q * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// The robust noise of sorted values, in percent of their median ([`NOISE_STATISTIC`]).
fn robust_noise(sorted: &[f64]) -> f64 {
    let spread = quantile(sorted, 0.75) - quantile(sorted, 0.25);
    spread / IQR_PER_SIGMA / quantile(sorted, 0.5) * 100.0
}

impl Stats {
    /// Statistics of `samples`; NaN everywhere when there are none. `met_noise_target` is
    /// true: only the sampling knows otherwise ([`Samples::device_stats`]).
    pub fn from_samples(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| quantile(&sorted, q);
        let n = sorted.len() as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let variance = if sorted.len() > 1 {
            sorted.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            samples: sorted.len(),
            min: quantile(0.0),
            p10: quantile(0.1),
            median: quantile(0.5),
            p90: quantile(0.9),
            max: quantile(1.0),
            mean,
            noise_percent: if sorted.is_empty() {
                f64::NAN
            } else {
                variance.sqrt() / mean * 100.0
            },
            robust_noise_percent: robust_noise(&sorted),
            met_noise_target: true,
        }
    }
}

/// The samples of one row and why sampling stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRun {
    pub samples: Vec<f64>,
    /// The robust noise met the target (false: stopped at `max_time` or `max_samples`).
    pub met_noise_target: bool,
}

/// Takes device-time samples until `sampling` says stop. `sample` returns the per-call time in
/// microseconds of one batch.
///
/// Once past `min_samples` and `min_time`, the noise is re-checked after every
/// `1 + samples / 32` further samples rather than after each one: each check sorts the
/// samples, and a noisy row of 10,000 half-millisecond samples would otherwise spend seconds
/// of its budget sorting. At most about 3% more samples are taken than needed.
pub fn sample_until_stable(
    sampling: &Sampling,
    mut sample: impl FnMut() -> Result<f64>,
) -> Result<SampleRun> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next_check = sampling.min_samples.max(1);
    loop {
        samples.push(sample()?);
        let elapsed = start.elapsed();
        let out_of_budget = samples.len() >= sampling.max_samples || elapsed >= sampling.max_time;
        let may_stop = samples.len() >= next_check && elapsed >= sampling.min_time;
        if may_stop || out_of_budget {
            next_check = samples.len() + 1 + samples.len() / 32;
            let mut sorted = samples.clone();
            sorted.sort_by(f64::total_cmp);
            // `<=`: identical samples (a robust noise of 0) meet any target. Too few samples
            // (a budget shorter than `min_samples` batches) never do.
            let quiet = robust_noise(&sorted) <= sampling.max_noise_percent
                && samples.len() >= sampling.min_samples;
            if quiet || out_of_budget {
                return Ok(SampleRun {
                    samples,
                    met_noise_target: quiet,
                });
            }
        }
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

/// Times one prepared call of `problem` (whose host slot mapping is `slot_mapping`):
/// vLLM's latency, then device-time samples.
///
/// - warm: batches of back-to-back calls on the same data; the first batch, sized from the
///   latency (which overestimates a call's device time), warms up and estimates a call, and
///   sets the size of the rest;
/// - cold: one call per sample, each after a cache flush;
/// - rotating: as warm, the calls cycling over [`rotation_sets`] copies of the inputs, each
///   writing its own slots ([`rotated_slot_mapping`]).
pub fn measure(
    call: &mut dyn Prepared,
    problem: &Problem,
    slot_mapping: &[i64],
    protocol: &Protocol,
) -> Result<Samples> {
    let latency_us = wall_clock_latency_us(protocol, || call.run())?;
    if protocol.cold {
        let run = sample_until_stable(&protocol.sampling, || {
            call.flush_cache()?;
            call.time_batch(1)
        })?;
        return Ok(Samples {
            latency_us,
            device_us: run.samples,
            met_noise_target: run.met_noise_target,
            pattern: None,
        });
    }
    if protocol.rotate {
        let sets = rotation_sets(problem.bytes_moved());
        let copies: Vec<Vec<i64>> = (1..sets)
            .map(|set| {
                rotated_slot_mapping(
                    slot_mapping,
                    problem.num_slots(),
                    problem.block_size,
                    set,
                    sets,
                )
            })
            .collect();
        call.rotate(&copies)?;
    }
    let run = warm_samples(call, protocol, Duration::from_secs_f64(latency_us * 1e-6))?;
    Ok(Samples {
        latency_us,
        device_us: run.samples,
        met_noise_target: run.met_noise_target,
        pattern: None,
    })
}

/// `--ceiling pattern`: switches `call` (which [`measure`] has just timed) to its pattern
/// kernel ([`Prepared::pattern`]) and times that with the same protocol (warm, cold or
/// rotating, the same batch rules and stopping rule), on the same buffers. `None` where the
/// backend has no pattern kernel.
pub fn measure_pattern(
    call: &mut dyn Prepared,
    problem: &Problem,
    slot_mapping: &[i64],
    protocol: &Protocol,
) -> Result<Option<SampleRun>> {
    if !call.pattern()? {
        return Ok(None);
    }
    let samples = measure(call, problem, slot_mapping, protocol)?;
    Ok(Some(SampleRun {
        samples: samples.device_us,
        met_noise_target: samples.met_noise_target,
    }))
}

/// Device-time samples of back-to-back calls: a first batch sized from `first_estimate`
/// (which should not underestimate a call: the latency does not) warms up and estimates one
/// call, and sets the size of the batches that are sampled. Copy ceilings that are timed like
/// the rows go through here too.
pub fn warm_samples(
    call: &mut dyn Prepared,
    protocol: &Protocol,
    first_estimate: Duration,
) -> Result<SampleRun> {
    let unit = call.batch_unit();
    let per_call = |call: &mut dyn Prepared, calls: usize| -> Result<f64> {
        Ok(call.time_batch(calls)? / calls as f64)
    };
    let first = protocol.calls_per_batch(first_estimate, unit);
    let estimate = per_call(call, first)?;
    let calls = protocol.calls_per_batch(Duration::from_secs_f64(estimate.max(0.0) * 1e-6), unit);
    sample_until_stable(&protocol.sampling, || per_call(call, calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_samples() {
        let s = Stats::from_samples(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(
            (s.samples, s.min, s.median, s.max, s.mean),
            (5, 1.0, 3.0, 5.0, 3.0)
        );
        assert!((s.p10 - 1.4).abs() < 1e-12 && (s.p90 - 4.6).abs() < 1e-12);
        // Sample standard deviation sqrt(2.5) over the mean 3.
        assert!((s.noise_percent - 2.5f64.sqrt() / 3.0 * 100.0).abs() < 1e-9);
        // Quartiles 2 and 4 around the median 3.
        assert!((s.robust_noise_percent - 2.0 / 1.349 / 3.0 * 100.0).abs() < 1e-9);
        assert!(s.met_noise_target);
        assert!(Stats::from_samples(&[]).median.is_nan());
        assert!(Stats::from_samples(&[]).robust_noise_percent.is_nan());
        assert_eq!(Stats::from_samples(&[7.0]).noise_percent, 0.0);
        assert_eq!(Stats::from_samples(&[7.0]).robust_noise_percent, 0.0);
    }

    #[test]
    fn one_outlier_is_not_noise() {
        // The issue's row: quiet samples from 16.5 to 17.3 us, and one of 194 us.
        let mut samples: Vec<f64> = (0..99)
            .map(|i| 16.5 + 0.8 * (i % 10) as f64 / 9.0)
            .collect();
        samples.push(194.0);
        let s = Stats::from_samples(&samples);
        assert!(s.noise_percent > 25.0, "{}", s.noise_percent);
        assert!(s.robust_noise_percent < 2.0, "{}", s.robust_noise_percent);
    }

    #[test]
    fn old_reports_read_as_unknown_noise_and_met() {
        let json = r#"{"samples":3,"min":1.0,"p10":1.0,"median":2.0,"p90":3.0,"max":3.0,
            "mean":2.0,"noise_percent":50.0}"#;
        let s: Stats = serde_json::from_str(json).unwrap();
        assert!(s.robust_noise_percent.is_nan() && s.met_noise_target);
    }

    #[test]
    fn sampling_stops_when_quiet_or_out_of_time() {
        let quick = Sampling {
            min_time: Duration::ZERO,
            ..Sampling::default()
        };
        // Identical samples: no noise, so exactly min_samples are taken.
        let run = sample_until_stable(&quick, || Ok(1.0)).unwrap();
        assert_eq!(run.samples.len(), quick.min_samples);
        assert!(run.met_noise_target);
        // Alternating samples are noisy (an IQR of 2 around 1, 2 or 3): sampling runs to
        // max_samples, and says so.
        let capped = Sampling {
            max_samples: 50,
            ..quick
        };
        let mut flip = false;
        let run = sample_until_stable(&capped, || {
            flip = !flip;
            Ok(if flip { 1.0 } else { 3.0 })
        })
        .unwrap();
        assert_eq!(run.samples.len(), 50);
        assert!(!run.met_noise_target);
        // One outlier among quiet samples does not hold sampling up.
        let mut taken = 0;
        let run = sample_until_stable(&capped, || {
            taken += 1;
            Ok(if taken == 2 { 100.0 } else { 1.0 })
        })
        .unwrap();
        assert_eq!(run.samples.len(), quick.min_samples);
        assert!(run.met_noise_target);
        // Out of time before min_samples: not met, however quiet.
        let hurried = Sampling {
            max_time: Duration::ZERO,
            ..quick
        };
        let run = sample_until_stable(&hurried, || Ok(1.0)).unwrap();
        assert_eq!(run.samples.len(), 1);
        assert!(!run.met_noise_target);
    }

    #[test]
    fn noisy_rows_are_checked_less_often_but_still_stop_when_quiet() {
        let sampling = Sampling {
            min_time: Duration::ZERO,
            max_samples: 10_000,
            ..Sampling::default()
        };
        // Noisy for the first 1000 samples, then quiet: the quiet tail takes over the
        // quartiles after about another 1000, and the sparser checks add at most ~3%.
        let mut taken = 0usize;
        let run = sample_until_stable(&sampling, || {
            taken += 1;
            Ok(if taken <= 1000 {
                (taken % 7) as f64 + 1.0
            } else {
                4.0
            })
        })
        .unwrap();
        assert!(run.met_noise_target);
        assert!(
            (1000..2200).contains(&run.samples.len()),
            "{}",
            run.samples.len()
        );
    }

    #[test]
    fn batches_fill_the_batch_time() {
        let mut protocol = Protocol::new(10);
        assert_eq!(protocol.calls_per_batch(Duration::from_micros(5), 1), 100);
        assert_eq!(protocol.calls_per_batch(Duration::from_millis(3), 1), 1);
        assert_eq!(protocol.calls_per_batch(Duration::ZERO, 1), MAX_BATCH_CALLS);
        // Whole units: a CUDA graph of 20 calls, a rotation of 3 copies.
        assert_eq!(protocol.calls_per_batch(Duration::from_micros(5), 20), 100);
        assert_eq!(protocol.calls_per_batch(Duration::from_micros(48), 20), 20);
        assert_eq!(protocol.calls_per_batch(Duration::from_micros(5), 3), 102);
        protocol.cold = true;
        assert_eq!(protocol.calls_per_batch(Duration::from_micros(5), 20), 1);
    }

    #[test]
    fn rotation_keeps_enough_traffic_between_reuses() {
        assert_eq!(rotation_sets(ROTATION_BYTES), 1);
        assert_eq!(rotation_sets(4 * ROTATION_BYTES), 1);
        assert_eq!(rotation_sets(ROTATION_BYTES - 1), 3);
        // 64 MiB per call (512 tokens of the default shape): 4 others pass between reuses.
        assert_eq!(rotation_sets(64 << 20), 5);
        assert_eq!(rotation_sets(1000), MAX_ROTATION_SETS);
        assert_eq!(rotation_sets(0), MAX_ROTATION_SETS);
        for bytes in [1u64, 4 << 20, 5 << 20, 100 << 20, (256 << 20) - 1] {
            let sets = rotation_sets(bytes) as u64;
            // Extra copies stay bounded, and a full rotation moves ROTATION_BYTES unless capped.
            assert!((sets - 1) * bytes < 2 * ROTATION_BYTES, "{bytes}");
            assert!(sets == MAX_ROTATION_SETS as u64 || (sets - 1) * bytes >= ROTATION_BYTES);
        }
    }

    /// A backend double that records what the protocol asked of it; each call "takes" 2 us.
    #[derive(Default)]
    struct Recorder {
        unit: usize,
        copies: usize,
        runs: usize,
        batches: Vec<usize>,
        flushes: usize,
        flushed_before_each_batch: bool,
    }

    impl Prepared for Recorder {
        fn run(&mut self) -> Result<()> {
            self.runs += 1;
            Ok(())
        }
        fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
            self.copies = slot_mappings.len();
            Ok(())
        }
        fn batch_unit(&self) -> usize {
            self.unit * (1 + self.copies)
        }
        fn time_batch(&mut self, calls: usize) -> Result<f64> {
            if self.flushes != self.batches.len() + 1 {
                self.flushed_before_each_batch = false;
            }
            self.batches.push(calls);
            Ok(2.0 * calls as f64)
        }
        fn flush_cache(&mut self) -> Result<()> {
            self.flushes += 1;
            Ok(())
        }
        fn read_back(&mut self) -> Result<crate::workload::Caches> {
            unreachable!()
        }
    }

    fn problem(num_tokens: usize) -> Problem {
        Problem {
            num_tokens,
            num_heads: 8,
            head_size: 128,
            block_size: 16,
            num_blocks: 4096,
            dtype: crate::problem::Dtype::BFloat16,
            cache_dtype: crate::problem::CacheDtype::Auto,
            layout: crate::problem::Layout::Nhd,
            input_strides: None,
        }
    }

    fn quick() -> Protocol {
        Protocol {
            sampling: Sampling {
                min_time: Duration::ZERO,
                ..Sampling::default()
            },
            ..Protocol::new(4)
        }
    }

    #[test]
    fn warm_batches_are_whole_units_sized_by_the_first() {
        let mut call = Recorder {
            unit: 20,
            ..Recorder::default()
        };
        let slots: Vec<i64> = (0..64).collect();
        let samples = measure(&mut call, &problem(64), &slots, &quick()).unwrap();
        assert_eq!(call.runs, 3 + 4);
        // 2 us a call: 500 us batches of 250 calls, rounded up to whole graphs of 20.
        assert!(call.batches[1..].iter().all(|&calls| calls == 260));
        assert!(call.batches.iter().all(|&calls| calls % 20 == 0));
        assert_eq!(samples.device_us.len(), call.batches.len() - 1);
        assert!(samples.device_us.iter().all(|&us| us == 2.0));
        assert_eq!(call.flushes, 0);
    }

    #[test]
    fn cold_samples_are_single_calls_after_a_flush() {
        let mut call = Recorder {
            unit: 20,
            flushed_before_each_batch: true,
            ..Recorder::default()
        };
        let protocol = Protocol {
            cold: true,
            ..quick()
        };
        let samples = measure(&mut call, &problem(64), &[0; 64], &protocol).unwrap();
        assert!(call.batches.iter().all(|&calls| calls == 1));
        assert!(call.flushed_before_each_batch);
        assert_eq!(samples.device_us.len(), call.flushes);
    }

    #[test]
    fn rotation_hands_shifted_slots_to_the_backend() {
        let mut call = Recorder {
            unit: 1,
            ..Recorder::default()
        };
        let protocol = Protocol {
            rotate: true,
            ..quick()
        };
        let problem = problem(64);
        let slots: Vec<i64> = (0..64).collect();
        measure(&mut call, &problem, &slots, &protocol).unwrap();
        assert_eq!(call.copies + 1, rotation_sets(problem.bytes_moved()));
        let sets = call.copies + 1;
        assert!(call.batches.iter().all(|&calls| calls % sets == 0));
    }

    #[test]
    fn wall_clock_counts_warmup_and_iters() {
        let mut calls = 0;
        let protocol = Protocol::new(7);
        let latency = wall_clock_latency_us(&protocol, || {
            calls += 1;
            std::thread::sleep(Duration::from_micros(200));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 10);
        assert!(latency >= 200.0, "{latency}");
    }
}
