//! A table with fixed columns, rendered like Python tabulate's "simple" format or as
//! GitHub markdown, whole or a row at a time.

/// A cell of a table: text is left-aligned, numbers right-aligned.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Integer(u64),
    /// Three decimals, like vLLM's `floatfmt=".3f"`.
    Number(f64),
    /// A number with the given decimals.
    Fixed(f64, usize),
    /// A number with the given decimals and a mark after it, `*` where set (a space where
    /// not, so that the numbers of a column stay aligned).
    Marked(f64, usize, bool),
}

impl Cell {
    fn render(&self) -> String {
        match self {
            Cell::Text(text) => text.clone(),
            Cell::Integer(value) => value.to_string(),
            Cell::Marked(value, decimals, marked) => {
                let mark = if *marked { '*' } else { ' ' };
                format!("{}{mark}", Cell::Fixed(*value, *decimals).render())
            }
            Cell::Number(value) | Cell::Fixed(value, _) if value.is_nan() => "nan".into(),
            Cell::Number(value) => format!("{value:.3}"),
            Cell::Fixed(value, decimals) => format!("{value:.decimals$}"),
        }
    }

    /// As rendered in markdown, where a `*` would start emphasis.
    fn render_markdown(&self) -> String {
        match self {
            Cell::Marked(_, _, true) => self.render().replace('*', "\\*"),
            _ => self.render(),
        }
    }

    fn right_aligned(&self) -> bool {
        !matches!(self, Cell::Text(_))
    }
}

/// A column of a table: its name, its least width, and its alignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub header: String,
    /// Cells are padded to at least this width (and the header's).
    pub width: usize,
    pub right: bool,
}

impl Column {
    pub fn left(header: impl Into<String>, width: usize) -> Self {
        Self {
            header: header.into(),
            width,
            right: false,
        }
    }

    pub fn right(header: impl Into<String>, width: usize) -> Self {
        Self {
            header: header.into(),
            width,
            right: true,
        }
    }

    /// The width with no cells known: the least width, the header's, and at least 3 ("nan").
    fn fixed_width(&self) -> usize {
        self.width.max(self.header.chars().count()).max(3)
    }
}

/// A table with named columns.
///
/// [`Table::render_text`] and [`Table::render_markdown`] widen columns to fit their cells; the
/// `_head` and `_row` functions keep each column's fixed width, so that rows printed one at a
/// time line up (a cell wider than its column pushes the rest of its line right).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table whose columns are as wide as their cells, aligned as the first row's cells.
    pub fn from_cells(headers: &[&str], rows: Vec<Vec<Cell>>) -> Self {
        let columns = headers
            .iter()
            .enumerate()
            .map(|(i, header)| Column {
                header: header.to_string(),
                width: 0,
                right: rows.first().is_some_and(|row| row[i].right_aligned()),
            })
            .collect();
        Self { columns, rows }
    }

    fn fixed_widths(&self) -> Vec<usize> {
        self.columns.iter().map(Column::fixed_width).collect()
    }

    /// Widths that fit every cell.
    fn fitted_widths(&self) -> Vec<usize> {
        let mut widths = self.fixed_widths();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.render().chars().count());
            }
        }
        widths
    }

    fn headers(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.header.clone()).collect()
    }

    fn text_line(&self, values: &[String], widths: &[usize]) -> String {
        let line = pad_all(values, widths, &self.columns).join("  ");
        format!("{}\n", line.trim_end())
    }

    fn text_head_with(&self, widths: &[usize]) -> String {
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        self.text_line(&self.headers(), widths) + &rule.join("  ") + "\n"
    }

    fn markdown_line(&self, values: &[String], widths: &[usize]) -> String {
        format!(
            "| {} |\n",
            pad_all(values, widths, &self.columns).join(" | ")
        )
    }

    fn markdown_head_with(&self, widths: &[usize]) -> String {
        let rule: Vec<String> = widths
            .iter()
            .zip(&self.columns)
            .map(|(w, column)| {
                let dashes = "-".repeat(*w - 1);
                if column.right {
                    format!(" {dashes}: ")
                } else {
                    format!(" {dashes}- ")
                }
            })
            .collect();
        self.markdown_line(&self.headers(), widths) + &format!("|{}|\n", rule.join("|"))
    }

    /// The column names and the rule under them, in the fixed widths.
    pub fn text_head(&self) -> String {
        self.text_head_with(&self.fixed_widths())
    }

    /// One row in the fixed widths, to go under [`Table::text_head`].
    pub fn text_row(&self, cells: &[Cell]) -> String {
        let values: Vec<String> = cells.iter().map(Cell::render).collect();
        self.text_line(&values, &self.fixed_widths())
    }

    /// The markdown column names and alignment rule, in the fixed widths.
    pub fn markdown_head(&self) -> String {
        self.markdown_head_with(&self.fixed_widths())
    }

    /// One markdown row in the fixed widths.
    pub fn markdown_row(&self, cells: &[Cell]) -> String {
        let values: Vec<String> = cells.iter().map(Cell::render_markdown).collect();
        self.markdown_line(&values, &self.fixed_widths())
    }

    /// Renders like Python's `tabulate` "simple" format, which vLLM's script prints.
    pub fn render_text(&self) -> String {
        let widths = self.fitted_widths();
        let mut out = self.text_head_with(&widths);
        for row in &self.rows {
            let values: Vec<String> = row.iter().map(Cell::render).collect();
            out.push_str(&self.text_line(&values, &widths));
        }
        out
    }

    /// Renders as a GitHub markdown table, numbers right-aligned.
    pub fn render_markdown(&self) -> String {
        let widths = self.fitted_widths();
        let mut out = self.markdown_head_with(&widths);
        for row in &self.rows {
            let values: Vec<String> = row.iter().map(Cell::render_markdown).collect();
            out.push_str(&self.markdown_line(&values, &widths));
        }
        out
    }
}

/// Each cell padded to its column's width, right-aligned where the column says.
fn pad_all(values: &[String], widths: &[usize], columns: &[Column]) -> Vec<String> {
    values
        .iter()
        .zip(widths.iter().zip(columns))
        .map(|(value, (&width, column))| {
            if column.right {
                format!("{value:>width$}")
            } else {
                format!("{value:<width$}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::from_cells(
            &["num_tokens", "layout", "latency (us)"],
            vec![
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
        )
    }

    #[test]
    fn renders_like_tabulate_simple() {
        let expected = "\
num_tokens  layout  latency (us)
----------  ------  ------------
         2  NHD           12.346
     65536  HND              nan
";
        assert_eq!(table().render_text(), expected);
    }

    #[test]
    fn renders_markdown() {
        let expected = "\
| num_tokens | layout | latency (us) |
| ---------: | ------ | -----------: |
|          2 | NHD    |       12.346 |
|      65536 | HND    |          nan |
";
        assert_eq!(table().render_markdown(), expected);
    }

    #[test]
    fn rows_one_at_a_time_line_up_with_the_head() {
        let mut table = table();
        table.columns[2].width = 14;
        let streamed =
            table.text_head() + &table.text_row(&table.rows[0]) + &table.text_row(&table.rows[1]);
        assert_eq!(streamed, table.render_text());
        assert!(streamed.lines().nth(1).unwrap().ends_with(&"-".repeat(14)));
    }

    #[test]
    fn marked_numbers_stay_aligned() {
        assert_eq!(Cell::Marked(1.25, 1, true).render(), "1.2*");
        assert_eq!(Cell::Marked(0.5, 1, false).render(), "0.5 ");
        assert_eq!(Cell::Marked(f64::NAN, 1, false).render(), "nan ");
        assert_eq!(Cell::Marked(3.0, 1, true).render_markdown(), "3.0\\*");
    }
}
