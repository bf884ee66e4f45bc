//! `--plot FILE.svg`: device time and bandwidth against num_tokens, one line per
//! implementation and layout, drawn with plotters' SVG backend (no system libraries).

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::report::Report;

/// Colours that read on white and stay apart for colour-blind readers (Okabe and Ito's
/// palette, without its light yellow and sky blue), one per implementation.
const COLOURS: [RGBColor; 5] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xB0, 0x7A, 0x00), // dark orange
];

/// An implementation keeps its colour from one plot to the next, whatever else ran.
fn colour(name: &str, index: usize) -> RGBColor {
    match name {
        "cuda" => COLOURS[0],
        "wgpu" => COLOURS[1],
        "cpu" => COLOURS[2],
        _ => COLOURS[3 + index % 2],
    }
}

/// How a line is drawn: implementations by colour, layouts by dashes and markers.
#[derive(Clone, Copy, PartialEq)]
enum Stroke {
    /// NHD: a solid line, round markers.
    Solid,
    /// HND: a dashed line, triangles.
    Dashed,
    /// A copy-bandwidth ceiling: a thin dotted line.
    Dotted,
}

impl Stroke {
    fn for_layout(layout: &str) -> Self {
        if layout == "HND" {
            Stroke::Dashed
        } else {
            Stroke::Solid
        }
    }
}

/// One plotted line: its label and (num_tokens, value) points.
struct Series {
    label: String,
    colour: RGBColor,
    stroke: Stroke,
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
                colour: colour(&info.name, index),
                stroke: Stroke::for_layout(layout),
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

/// Draws one series' line and markers on a chart.
fn draw_series<DB: DrawingBackend, X, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, Y>>,
    points: &[(f64, f64)],
    colour: RGBColor,
    stroke: Stroke,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let style = colour.stroke_width(2);
    match stroke {
        Stroke::Solid => chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map(drop),
        Stroke::Dashed => chart
            .draw_series(DashedLineSeries::new(points.iter().copied(), 8, 5, style))
            .map(drop),
        Stroke::Dotted => chart
            .draw_series(DashedLineSeries::new(points.iter().copied(), 2, 4, style))
            .map(drop),
    }
    .map_err(plot_error)?;
    match stroke {
        Stroke::Solid => chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))
            .map(drop),
        Stroke::Dashed => chart
            .draw_series(
                points
                    .iter()
                    .map(|p| TriangleMarker::new(*p, 5, colour.filled())),
            )
            .map(drop),
        Stroke::Dotted => Ok(()),
    }
    .map_err(plot_error)
}

/// One legend entry: a sample of the line (with its marker) and its label.
fn draw_legend_entry<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    (x, y): (i32, i32),
    label: &str,
    colour: RGBColor,
    stroke: Stroke,
) -> Result<()> {
    let style = colour.stroke_width(2);
    let sample = [(x, y), (x + 40, y)];
    match stroke {
        Stroke::Solid => area.draw(&PathElement::new(sample, style)),
        Stroke::Dashed => area.draw(&DashedPathElement::new(sample, 8, 5, style)),
        Stroke::Dotted => area.draw(&DashedPathElement::new(sample, 2, 4, style)),
    }
    .map_err(plot_error)?;
    match stroke {
        Stroke::Solid => area.draw(&Circle::new((x + 20, y), 4, colour.filled())),
        Stroke::Dashed => area.draw(&TriangleMarker::new((x + 20, y), 5, colour.filled())),
        Stroke::Dotted => Ok(()),
    }
    .map_err(plot_error)?;
    area.draw(&Text::new(
        label.to_string(),
        (x + 50, y - 8),
        ("sans-serif", 16).into_font().color(&BLACK),
    ))
    .map_err(plot_error)
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

/// Renders the plot as an SVG document: device time (log-log) and bandwidth side by side, one
/// colour per implementation, NHD solid with dots and HND dashed with triangles, each
/// implementation's copy bandwidth dotted in its colour; the legend below both charts, clear of
/// the data.
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
    let copy_lines: Vec<(String, RGBColor, f64)> = report
        .implementations
        .iter()
        .enumerate()
        .filter_map(|(index, info)| {
            let copy = info.copy_bandwidth_gbps?;
            Some((info.name.clone(), colour(&info.name, index), copy))
        })
        .collect();
    let (_, b_max) = range(
        &mut lines
            .iter()
            .flat_map(|l| l.bandwidth_gbps.iter().map(|p| p.1))
            .chain(copy_lines.iter().map(|c| c.2)),
    );
    let x_range = (x_min * 0.8)..(x_max * 1.25);

    // The legend: one row per implementation, a column per layout, then its copy bandwidth;
    // a layout without a line says why in grey.
    let mut layouts: Vec<&str> = report.rows.iter().map(|r| r.layout.as_str()).collect();
    layouts.dedup();
    let mut legend: Vec<Vec<(String, RGBColor, Option<Stroke>)>> = Vec::new();
    for (index, info) in report.implementations.iter().enumerate() {
        let mut entries: Vec<(String, RGBColor, Option<Stroke>)> = layouts
            .iter()
            .map(|layout| {
                let label = format!("{} {layout}", info.name);
                match lines.iter().find(|l| l.label == label) {
                    Some(line) => (label, line.colour, Some(line.stroke)),
                    None => {
                        let implemented = info.layouts.is_empty()
                            || info.layouts.iter().any(|l| l.name() == *layout);
                        let why = if implemented {
                            "not measured"
                        } else {
                            "not implemented"
                        };
                        (format!("{label}: {why}"), RGBColor(0x70, 0x70, 0x70), None)
                    }
                }
            })
            .collect();
        if let Some(copy) = info.copy_bandwidth_gbps {
            entries.push((
                format!("{} copy bandwidth ({copy:.1} GB/s)", info.name),
                colour(&info.name, index),
                Some(Stroke::Dotted),
            ));
        }
        legend.push(entries);
    }
    let stopped = report
        .stopped
        .as_ref()
        .map(|s| format!("run stopped early: {s}"));
    let legend_height = 20 + 28 * legend.len() as u32 + if stopped.is_some() { 28 } else { 0 };

    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (1280, 560 + legend_height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let c = &report.config;
        let title = format!(
            "reshape_and_cache_flash: {} heads x {}, block {}, {} -> {} cache, {}",
            c.num_heads,
            c.head_size,
            c.block_size,
            c.dtype,
            c.kv_cache_dtype,
            c.cache_name()
        );
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(plot_error)?;
        let (charts, legend_area) = root.split_vertically(root.dim_in_pixel().1 - legend_height);
        let (left, right) = charts.split_horizontally(640);

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

        // Ceilings first, so that measured lines are drawn over them.
        for (_, colour, copy) in &copy_lines {
            let ends = [(x_range.start, *copy), (x_range.end, *copy)];
            draw_series(&mut bandwidth_chart, &ends, *colour, Stroke::Dotted)?;
        }
        for line in &lines {
            draw_series(&mut time_chart, &line.time_us, line.colour, line.stroke)?;
            draw_series(
                &mut bandwidth_chart,
                &line.bandwidth_gbps,
                line.colour,
                line.stroke,
            )?;
        }

        let mut y = 24;
        for entries in &legend {
            for (column, (label, colour, stroke)) in entries.iter().enumerate() {
                let x = 90 + 260 * column as i32;
                match stroke {
                    Some(stroke) => {
                        draw_legend_entry(&legend_area, (x, y), label, *colour, *stroke)?
                    }
                    None => legend_area
                        .draw(&Text::new(
                            label.clone(),
                            (x + 50, y - 8),
                            ("sans-serif", 16).into_font().color(colour),
                        ))
                        .map_err(plot_error)?,
                }
            }
            y += 28;
        }
        if let Some(stopped) = &stopped {
            legend_area
                .draw(&Text::new(
                    stopped.clone(),
                    (90, y - 8),
                    ("sans-serif", 16).into_font().color(&BLACK),
                ))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}
