//! Comparing a run with a saved one: matching rows, and refusing a baseline that measured
//! something else.

use super::{Comparison, ImplementationInfo, Report, RowReport, RunConfig};

impl Report {
    /// Adds a comparison to every result that has a row with the same implementation, layout
    /// and num_tokens in `baseline`. Returns how many results were matched.
    pub fn compare_with(&mut self, baseline: &Report) -> usize {
        self.rows
            .iter_mut()
            .map(|row| Self::compare_row(row, baseline))
            .sum()
    }

    /// [`Report::compare_with`] for one row, as it is measured.
    pub fn compare_row(row: &mut RowReport, baseline: &Report) -> usize {
        let Some(then) = baseline
            .rows
            .iter()
            .find(|then| then.layout == row.layout && then.num_tokens == row.num_tokens)
        else {
            return 0;
        };
        let mut matched = 0;
        for result in &mut row.results {
            let saved = then
                .results
                .iter()
                .find(|r| r.implementation == result.implementation)
                .and_then(|r| r.device_us);
            if let (Some(now), Some(then)) = (result.device_us, saved) {
                result.baseline = Some(Comparison {
                    baseline_device_us: then.median,
                    speedup: then.median / now.median,
                    within_noise: now.p10 <= then.p90 && then.p10 <= now.p90,
                });
                matched += 1;
            }
        }
        matched
    }

    /// What makes `baseline` measure something else than this run, one `name (then vs now)`
    /// item each: the shape, dtypes, layouts, the cache state, the mode where CUDA ran in both,
    /// the device of every implementation in both, and the options that change a call. Empty
    /// when the two compare like with like. Token counts may differ: rows match one by one.
    pub fn baseline_differences(&self, baseline: &Report) -> Vec<String> {
        let (now, then) = (&self.config, &baseline.config);
        let mut differences = Vec::new();
        let mut differ = |name: &str, then: String, now: String| {
            if then != now {
                differences.push(format!("{name} ({then} vs {now})"));
            }
        };
        differ("dtype", then.dtype.to_string(), now.dtype.to_string());
        differ(
            "kv_cache_dtype",
            then.kv_cache_dtype.to_string(),
            now.kv_cache_dtype.to_string(),
        );
        for (name, then, now) in [
            ("num_heads", then.num_heads, now.num_heads),
            ("head_size", then.head_size, now.head_size),
            ("block_size", then.block_size, now.block_size),
            ("num_blocks", then.num_blocks, now.num_blocks),
        ] {
            differ(name, then.to_string(), now.to_string());
        }
        differ(
            "layouts",
            baseline.swept_layouts().join(","),
            self.swept_layouts().join(","),
        );
        differ("cache", then.cache_name().into(), now.cache_name().into());
        let in_both: Vec<(&ImplementationInfo, &ImplementationInfo)> = self
            .implementations
            .iter()
            .filter_map(|now| {
                let then = baseline
                    .implementations
                    .iter()
                    .find(|then| then.name == now.name)?;
                Some((then, now))
            })
            .collect();
        // --mode changes how CUDA issues calls and nothing else.
        if in_both.iter().any(|(_, now)| now.name == "cuda") {
            differ("mode", then.mode.to_string(), now.mode.to_string());
        }
        for (then, now) in &in_both {
            differ(
                &format!("{} device", now.name),
                then.device.clone(),
                now.device.clone(),
            );
        }
        // A user's kernel is like with like only while its file is unchanged.
        for kernel in &now.user_kernels {
            if let Some(earlier) = then.user_kernels.iter().find(|k| k.name == kernel.name) {
                differ(
                    &format!("{} source", kernel.name),
                    earlier.source_hash.clone(),
                    kernel.source_hash.clone(),
                );
            }
        }
        // The host memory limit only bounds num_blocks, which is compared above; the kernel
        // timeout only ends a hung run.
        let options = |config: &RunConfig| {
            let set: Vec<String> = config
                .options
                .non_default()
                .into_iter()
                .filter(|option| {
                    !option.starts_with("host_memory_limit=")
                        && !option.starts_with("kernel_timeout_s=")
                })
                .collect();
            if set.is_empty() {
                "defaults".to_string()
            } else {
                set.join(" ")
            }
        };
        differ("options", options(then), options(now));
        let workload = |config: &RunConfig| {
            let set = config.workload.non_default();
            if set.is_empty() {
                "vLLM's".to_string()
            } else {
                set.join(" ")
            }
        };
        differ("workload", workload(then), workload(now));
        differences
    }

    /// The layouts this run swept (from its rows for reports that do not record them).
    pub(super) fn swept_layouts(&self) -> Vec<String> {
        if !self.config.layouts.is_empty() {
            return self
                .config
                .layouts
                .iter()
                .map(|l| l.name().to_string())
                .collect();
        }
        let mut layouts: Vec<String> = Vec::new();
        for row in &self.rows {
            if !layouts.contains(&row.layout) {
                layouts.push(row.layout.clone());
            }
        }
        layouts
    }
}
