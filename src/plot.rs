//! `--plot FILE.svg`: device time and bandwidth against num_tokens, one line per
//! implementation and layout, drawn with plotters' SVG backend (no system libraries).

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::report::Report;

/// One plotted line: its label and (num_tokens, value) points.
struct Series {
    label: String,
    time_us: Vec<(f64, f64)>,
    bandwidth_gbps: Vec<(f64, f64)>,
}

fn series(report: &Report) -> Vec<Series> {
    let mut all = Vec::new();
    for (index, info) in report.implementations.iter().enumerate() {
        let mut layouts: Vec<&str> = report.rows.iter().map(|r| r.layout.as_str()).collect();
        layouts.dedup();
        for layout in layouts {
            let mut line = Series {
                label: format!("{} {layout}", info.name),
                time_us: Vec::new(),
                bandwidth_gbps: Vec::new(),
            };
            for row in report.rows.iter().filter(|r| r.layout == layout) {
                let result = &row.results[index];
                if let (Some(stats), Some(bandwidth)) = (result.device_us, result.bandwidth_gbps) {
                    line.time_us.push((row.num_tokens as f64, stats.median));
                    line.bandwidth_gbps.push((row.num_tokens as f64, bandwidth));
                }
            }
            if !line.time_us.is_empty() {
                all.push(line);
            }
        }
    }
    all
}

/// Axis labels without needless decimals: 0.5, 20, 1500.
fn format_number(value: f64) -> String {
    if value >= 10.0 || value == value.round() {
        format!("{}", value.round() as i64)
    } else {
        format!("{value:.1}")
    }
}

fn plot_error(error: impl std::fmt::Display) -> Error {
    Error::Report(format!("cannot draw the plot: {error}"))
}

/// Renders the plot as an SVG document.
pub fn render_svg(report: &Report) -> Result<String> {
    let lines = series(report);
    if lines.is_empty() {
        return Err(Error::Report(
            "cannot draw the plot: no measured rows".into(),
        ));
    }
    let range = |values: &mut dyn Iterator<Item = f64>| {
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
    };
    let (x_min, x_max) = range(&mut lines.iter().flat_map(|l| l.time_us.iter().map(|p| p.0)));
    let (t_min, t_max) = range(&mut lines.iter().flat_map(|l| l.time_us.iter().map(|p| p.1)));
    let copy_lines: Vec<(String, f64)> = report
        .implementations
        .iter()
        .filter_map(|info| info.copy_bandwidth_gbps.map(|c| (info.name.clone(), c)))
        .collect();
    let (_, b_max) = range(
        &mut lines
            .iter()
            .flat_map(|l| l.bandwidth_gbps.iter().map(|p| p.1))
            .chain(copy_lines.iter().map(|c| c.1)),
    );
    let x_range = (x_min * 0.8)..(x_max * 1.25);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1280, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let c = &report.config;
        let title = format!(
            "reshape_and_cache_flash: {} heads x {}, block {}, {} -> {} cache, {}",
            c.num_heads,
            c.head_size,
            c.block_size,
            c.dtype,
            c.kv_cache_dtype,
            c.cache_state().split(' ').next().unwrap_or_default()
        );
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(plot_error)?;
        let (left, right) = root.split_horizontally(640);

        let mut time_chart = ChartBuilder::on(&left)
            .caption("device time per call (us), log-log", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                x_range.clone().log_scale(),
                ((t_min * 0.7)..(t_max * 1.5)).log_scale(),
            )
            .map_err(plot_error)?;
        time_chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_label_formatter(&|x| format!("{}", x.round() as u64))
            .y_label_formatter(&|y| format_number(*y))
            .x_desc("num_tokens")
            .y_desc("us")
            .draw()
            .map_err(plot_error)?;

        let mut bandwidth_chart = ChartBuilder::on(&right)
            .caption(
                "bandwidth (GB/s, bytes moved / device time)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range.clone().log_scale(), 0.0..(b_max * 1.1))
            .map_err(plot_error)?;
        bandwidth_chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_label_formatter(&|x| format!("{}", x.round() as u64))
            .y_label_formatter(&|y| format_number(*y))
            .x_desc("num_tokens")
            .y_desc("GB/s")
            .draw()
            .map_err(plot_error)?;

        for (index, line) in lines.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let style = color.stroke_width(2);
            time_chart
                .draw_series(LineSeries::new(line.time_us.iter().copied(), style))
                .map_err(plot_error)?
                .label(line.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            time_chart
                .draw_series(
                    line.time_us
                        .iter()
                        .map(|p| Circle::new(*p, 3, color.filled())),
                )
                .map_err(plot_error)?;
            bandwidth_chart
                .draw_series(LineSeries::new(line.bandwidth_gbps.iter().copied(), style))
                .map_err(plot_error)?
                .label(line.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            bandwidth_chart
                .draw_series(
                    line.bandwidth_gbps
                        .iter()
                        .map(|p| Circle::new(*p, 3, color.filled())),
                )
                .map_err(plot_error)?;
        }
        for (name, copy) in &copy_lines {
            let style = BLACK.mix(0.5).stroke_width(1);
            bandwidth_chart
                .draw_series(DashedLineSeries::new(
                    [(x_range.start, *copy), (x_range.end, *copy)],
                    6,
                    4,
                    style,
                ))
                .map_err(plot_error)?
                .label(format!("{name} copy bandwidth"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        time_chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(plot_error)?;
        bandwidth_chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}
