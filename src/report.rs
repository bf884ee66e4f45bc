//! Printing results: the header that says what ran where, and vLLM's table of num_tokens,
//! layout and latency, with one column pair per implementation.

use std::fmt::Write as _;

use crate::sweep::Row;

/// A cell of a table: text is left-aligned, numbers right-aligned with three decimals.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Integer(u64),
    Number(f64),
}

impl Cell {
    fn render(&self) -> String {
        match self {
            Cell::Text(text) => text.clone(),
            Cell::Integer(value) => value.to_string(),
            Cell::Number(value) if value.is_nan() => "nan".into(),
            Cell::Number(value) => format!("{value:.3}"),
        }
    }

    fn right_aligned(&self) -> bool {
        !matches!(self, Cell::Text(_))
    }
}

/// A table with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// Renders like Python's `tabulate` "simple" format, which vLLM's script prints.
    pub fn render_text(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(Cell::render).collect())
            .collect();
        let widths: Vec<usize> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, header)| {
                cells
                    .iter()
                    .map(|row| row[i].len())
                    .chain([header.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..self.headers.len())
            .map(|i| self.rows.first().is_some_and(|row| row[i].right_aligned()))
            .collect();
        let line = |values: &[String]| -> String {
            let parts: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    if numeric[i] {
                        format!("{value:>width$}", width = widths[i])
                    } else {
                        format!("{value:<width$}", width = widths[i])
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(&self.headers));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "{}", rule.join("  "));
        for row in &cells {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }
}

/// Column names and values for the sweep's rows. With one implementation the columns are
/// vLLM's `latency (us)` plus `device (us)`; with several, each pair is prefixed by its name.
pub fn results_table(implementations: &[&str], rows: &[Row]) -> Table {
    let mut headers = vec!["num_tokens".to_string(), "layout".to_string()];
    for name in implementations {
        if implementations.len() == 1 {
            headers.push("latency (us)".into());
            headers.push("device (us)".into());
        } else {
            headers.push(format!("{name} latency (us)"));
            headers.push(format!("{name} device (us)"));
        }
    }
    let rows = rows
        .iter()
        .map(|row| {
            let mut cells = vec![
                Cell::Integer(row.problem.num_tokens as u64),
                Cell::Text(row.problem.layout.name().into()),
            ];
            for result in &row.results {
                match result {
                    Some(samples) => {
                        cells.push(Cell::Number(samples.latency_us));
                        cells.push(Cell::Number(samples.device_stats().median));
                    }
                    None => {
                        cells.push(Cell::Number(f64::NAN));
                        cells.push(Cell::Number(f64::NAN));
                    }
                }
            }
            cells
        })
        .collect();
    Table { headers, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_tabulate_simple() {
        let table = Table {
            headers: vec!["num_tokens".into(), "layout".into(), "latency (us)".into()],
            rows: vec![
                vec![
                    Cell::Integer(2),
                    Cell::Text("NHD".into()),
                    Cell::Number(12.3456),
                ],
                vec![
                    Cell::Integer(65536),
                    Cell::Text("HND".into()),
                    Cell::Number(f64::NAN),
                ],
            ],
        };
        let expected = "\
num_tokens  layout  latency (us)
----------  ------  ------------
         2  NHD           12.346
     65536  HND              nan
";
        assert_eq!(table.render_text(), expected);
    }
}
