//! Running cases on several subjects and gathering the report: the pass/fail matrix and the
//! first mismatch of each failing case.

use std::collections::BTreeSet;
use std::fmt;

use super::{check, Case, Mismatch};
use crate::backend::Backend;
use crate::error::Error;
use crate::problem::{CacheDtype, Dtype, Layout};
use crate::report::{Cell, Table};
use crate::workload::{Scaling, SlotPattern};

/// A backend under verification, and the name its rows of the report carry.
///
/// A backend with internal paths that the matrix's shapes do not reach on their own can be
/// checked a second time as a *variant*: the same backend opened with a different internal
/// configuration (for wgpu: a small limit on the bytes per buffer, so that caches are split
/// over several buffers), with a label of its own and `min_cache_bytes` to skip the cases
/// that the variant runs exactly like the plain backend.
pub struct Subject {
    /// e.g. `cpu`, `wgpu`, or `wgpu (64 KiB buffers)` for a variant.
    pub label: String,
    pub backend: Box<dyn Backend>,
    /// Check only cases whose caches (each) are at least this many bytes; 0 checks all.
    pub min_cache_bytes: u64,
}

impl Subject {
    /// A backend checked on every case, under its implementation's name.
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            label: backend.name(),
            backend,
            min_cache_bytes: 0,
        }
    }

    fn takes(&self, case: &Case) -> bool {
        case.problem.cache_bytes() >= self.min_cache_bytes
    }

    /// Why the backend does not implement `case`, if it does not (its layout, or what
    /// [`Backend::check_support`] refuses).
    fn refusal(&self, case: &Case) -> Option<String> {
        if !self.backend.supports(case.problem.layout) {
            return Some("layout not implemented".into());
        }
        match self
            .backend
            .check_support(&case.problem, case_scaling(case))
        {
            Ok(()) => None,
            Err(Error::Unsupported { what, .. }) => Some(format!("{what} not implemented")),
            Err(other) => Some(other.one_line()),
        }
    }
}

/// The scaling a case's inputs actually have (per-tensor for `auto` caches).
fn case_scaling(case: &Case) -> Scaling {
    if case.problem.cache_dtype.is_fp8() {
        case.scaling
    } else {
        Scaling::PerTensor
    }
}

/// How one case went on one subject.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    /// The caches differ from the reference; the first difference.
    Mismatch(Mismatch),
    /// The backend returned an error instead of a result.
    Error(String),
    /// The backend does not implement the case (its layout, cache dtype, ...): why.
    Unsupported(String),
}

/// A case that failed, for the listing under the matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub label: String,
    pub case: Case,
    pub outcome: Outcome,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.label, self.case)?;
        match &self.outcome {
            Outcome::Mismatch(mismatch) => write!(f, "{mismatch}"),
            Outcome::Error(error) => write!(f, "error: {error}"),
            Outcome::Passed | Outcome::Unsupported(_) => write!(f, "no failure"),
        }
    }
}

/// One line of the pass/fail matrix: a subject, layout, input dtype and cache dtype.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    label: String,
    layout: Layout,
    dtype: Dtype,
    cache_dtype: CacheDtype,
    checked: usize,
    passed: usize,
    unsupported: usize,
    /// Why cases were not checked.
    refusals: BTreeSet<String>,
    num_tokens: BTreeSet<usize>,
    head_sizes: BTreeSet<usize>,
    block_sizes: BTreeSet<usize>,
    /// Slot patterns checked (in `SlotPattern::ALL`'s order).
    slots: BTreeSet<usize>,
    /// Contiguous (false) and fused (true) inputs checked.
    fused: BTreeSet<bool>,
    /// Per-tensor (false) and per-head (true) scales checked (fp8 rows only).
    per_head: BTreeSet<bool>,
}

/// The results of [`run`]: a pass/fail matrix and every failure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    rows: Vec<Row>,
    pub failures: Vec<Failure>,
}

impl Report {
    /// Counts one case's outcome into its row.
    pub fn record(&mut self, label: &str, case: &Case, outcome: Outcome) {
        let p = &case.problem;
        let key = (label, p.layout, p.dtype, p.cache_dtype);
        let position = self
            .rows
            .iter()
            .position(|r| (r.label.as_str(), r.layout, r.dtype, r.cache_dtype) == key);
        let row = match position {
            Some(index) => &mut self.rows[index],
            None => {
                self.rows.push(Row {
                    label: label.to_string(),
                    layout: p.layout,
                    dtype: p.dtype,
                    cache_dtype: p.cache_dtype,
                    checked: 0,
                    passed: 0,
                    unsupported: 0,
                    refusals: BTreeSet::new(),
                    num_tokens: BTreeSet::new(),
                    head_sizes: BTreeSet::new(),
                    block_sizes: BTreeSet::new(),
                    slots: BTreeSet::new(),
                    fused: BTreeSet::new(),
                    per_head: BTreeSet::new(),
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        if let Outcome::Unsupported(why) = outcome {
            row.unsupported += 1;
            row.refusals.insert(why);
            return;
        }
        row.checked += 1;
        row.num_tokens.insert(p.num_tokens);
        row.head_sizes.insert(p.head_size);
        row.block_sizes.insert(p.block_size);
        let pattern = SlotPattern::ALL.iter().position(|&s| s == case.slots);
        row.slots.insert(pattern.unwrap_or(0));
        row.fused.insert(!p.contiguous_inputs());
        if p.cache_dtype.is_fp8() {
            row.per_head.insert(case_scaling(case) == Scaling::PerHead);
        }
        if outcome == Outcome::Passed {
            row.passed += 1;
        } else {
            self.failures.push(Failure {
                label: label.to_string(),
                case: *case,
                outcome,
            });
        }
    }

    /// Cases checked (not counting unsupported layouts), over all subjects.
    pub fn checked(&self) -> usize {
        self.rows.iter().map(|r| r.checked).sum()
    }

    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// The pass/fail matrix: one row per subject x layout x dtype x cache dtype, with what it
    /// covered; "n/a" and the reason where the backend does not implement the row's cases (or
    /// some of them).
    pub fn table(&self) -> Table {
        let headers = [
            "implementation",
            "layout",
            "dtype",
            "kv_cache_dtype",
            "result",
            "num_tokens",
            "head_size",
            "block_size",
            "slots",
            "inputs",
            "scales",
        ];
        let list = |set: &BTreeSet<usize>| {
            set.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let names = |set: &BTreeSet<bool>, no: &str, yes: &str| {
            let words: Vec<&str> = set.iter().map(|&b| if b { yes } else { no }).collect();
            if words.is_empty() {
                "-".to_string()
            } else {
                words.join(",")
            }
        };
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let refusals = row.refusals.iter().cloned().collect::<Vec<_>>().join("; ");
                let result = if row.checked == 0 {
                    format!("n/a ({refusals})")
                } else if row.passed == row.checked {
                    format!("passed {}/{}", row.passed, row.checked)
                } else {
                    format!("FAILED {}/{}", row.checked - row.passed, row.checked)
                };
                let result = if row.checked > 0 && row.unsupported > 0 {
                    format!("{result}, {} n/a ({refusals})", row.unsupported)
                } else {
                    result
                };
                let slots = row
                    .slots
                    .iter()
                    .map(|&i| SlotPattern::ALL[i].name())
                    .collect::<Vec<_>>()
                    .join(",");
                [
                    row.label.clone(),
                    row.layout.name().to_string(),
                    row.dtype.name().to_string(),
                    row.cache_dtype.name().to_string(),
                    result,
                    list(&row.num_tokens),
                    list(&row.head_sizes),
                    list(&row.block_sizes),
                    slots,
                    names(&row.fused, "contiguous", "fused"),
                    names(&row.per_head, "per-tensor", "per-head"),
                ]
                .into_iter()
                .map(Cell::Text)
                .collect()
            })
            .collect();
        Table::from_cells(&headers, rows)
    }

    /// The first `limit` failures, one line each, then "... and N more" if there are more.
    pub fn failure_lines(&self, limit: usize) -> Vec<String> {
        let mut lines: Vec<String> = self
            .failures
            .iter()
            .take(limit)
            .map(|failure| failure.to_string())
            .collect();
        if self.failures.len() > limit {
            lines.push(format!("... and {} more", self.failures.len() - limit));
        }
        lines
    }

    /// "verify: P passed, F failed" (counting cases; the test runners' closing-line form).
    pub fn summary(&self) -> String {
        format!(
            "verify: {} passed, {} failed",
            self.checked() - self.failed(),
            self.failed()
        )
    }
}

/// How many checks [`run`] performs (for progress bars): supported cases per subject.
pub fn count_checks(subjects: &[Subject], cases: &[Case]) -> usize {
    subjects
        .iter()
        .map(|s| {
            cases
                .iter()
                .filter(|c| s.takes(c) && s.refusal(c).is_none())
                .count()
        })
        .sum()
}

/// Checks every case on every subject, in order, and gathers the results. `progress` is called
/// before each check that runs.
pub fn run(
    subjects: &mut [Subject],
    cases: &[Case],
    mut progress: impl FnMut(&str, &Case),
) -> Report {
    let mut report = Report::default();
    for subject in subjects.iter_mut() {
        for case in cases {
            if let Some(outcome) = outcome(subject, case, &mut progress) {
                report.record(&subject.label, case, outcome);
            }
        }
    }
    report
}

/// As [`run`] on one subject, stopping at its first failure (verification before timing: one
/// failure settles it, and a kernel that hangs would otherwise wait out every case).
pub fn run_to_first_failure(subject: &mut Subject, cases: &[Case]) -> Report {
    let mut report = Report::default();
    for case in cases {
        if let Some(outcome) = outcome(subject, case, &mut |_, _| {}) {
            report.record(&subject.label, case, outcome);
            if !report.failures.is_empty() {
                break;
            }
        }
    }
    report
}

/// How `case` goes on `subject`; `None` where the subject does not take it.
fn outcome(
    subject: &mut Subject,
    case: &Case,
    progress: &mut impl FnMut(&str, &Case),
) -> Option<Outcome> {
    if !subject.takes(case) {
        return None;
    }
    Some(match subject.refusal(case) {
        Some(why) => Outcome::Unsupported(why),
        None => {
            progress(&subject.label, case);
            match check(subject.backend.as_mut(), case) {
                Ok(None) => Outcome::Passed,
                Ok(Some(mismatch)) => Outcome::Mismatch(mismatch),
                Err(error) => Outcome::Error(error.one_line()),
            }
        }
    })
}
