//! Inline SVG charts for the HTML report: a line chart of several series over time and a
//! horizontal grouped bar chart. Plain strings, no JS, no fonts to fetch: the page must open
//! from a CI artifact with no network. Axes get "nice" ticks (1, 2 or 5 × 10^k) and unit labels.
//!
//! Every label goes through `text::escape`; values that are NaN or infinite are skipped like gaps.

use std::fmt::Write as _;

use crate::replay::html::text::{escape, format_tick, format_value};

/// Drawing width in SVG units; the element scales to its container (about 1200 px at 1280).
const WIDTH: f64 = 1200.0;
const LINE_HEIGHT: f64 = 320.0;
const MARGIN_LEFT: f64 = 72.0;
const MARGIN_RIGHT: f64 = 24.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 52.0;

/// A round step near `raw`: 1, 2 or 5 × 10^k, so tick labels read easily.
pub fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// About `target` ticks covering `[min, max]`, starting and ending on a multiple of the step.
/// An empty or degenerate range gives ticks over `[min, min + 1]`.
pub fn nice_ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    let min = if min.is_finite() { min } else { 0.0 };
    let max = if max.is_finite() && max > min {
        max
    } else {
        min + 1.0
    };
    let step = nice_step((max - min) / target.max(1) as f64);
    let first = (min / step).floor() as i64;
    let last = (max / step - 1e-9).ceil() as i64;
    (first..=last.max(first + 1))
        .map(|i| i as f64 * step)
        .collect()
}

/// One line of a line chart.
pub struct Series<'a> {
    /// The legend's and tooltips' name.
    pub name: &'a str,
    /// A CSS colour.
    pub color: &'a str,
    /// Drawn dashed, so a line lying on another stays visible.
    pub dash: bool,
    /// (x, y); a None or non-finite y is a gap in the line.
    pub points: Vec<(f64, Option<f64>)>,
}

/// A line chart of values over time.
pub struct LineChart<'a> {
    /// The element id: the page's tests find charts by it.
    pub id: &'a str,
    /// What the chart shows, for screen readers.
    pub title: &'a str,
    /// Unit of the y axis, "requests / s" or "ms".
    pub y_unit: &'a str,
    /// The lines, drawn in order (the last on top).
    pub series: &'a [Series<'a>],
    /// Shown instead of the plot when no series has a point.
    pub empty_text: &'a str,
}

/// The x axis of a timeline: seconds, shown in s, min or h depending on the span.
struct TimeAxis {
    unit: &'static str,
    per_unit: f64,
}

impl TimeAxis {
    fn for_span(seconds: f64) -> Self {
        match seconds {
            s if s >= 3.0 * 3600.0 => Self {
                unit: "h",
                per_unit: 3600.0,
            },
            s if s >= 10.0 * 60.0 => Self {
                unit: "min",
                per_unit: 60.0,
            },
            _ => Self {
                unit: "s",
                per_unit: 1.0,
            },
        }
    }
}

/// Maps data to drawing coordinates.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        self.left + (v - self.x0) / (self.x1 - self.x0) * (self.right - self.left)
    }
    fn y(&self, v: f64) -> f64 {
        self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)
    }
}

fn finite(points: &[(f64, Option<f64>)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points.iter().filter_map(|&(x, y)| match y {
        Some(y) if x.is_finite() && y.is_finite() => Some((x, y)),
        _ => None,
    })
}

fn open_svg(out: &mut String, id: &str, title: &str, height: f64) {
    let _ = write!(
        out,
        "<svg id=\"{}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\"><title>{}</title>",
        escape(id),
        escape(title)
    );
}

fn empty_chart(id: &str, title: &str, text: &str) -> String {
    let mut out = String::new();
    open_svg(&mut out, id, title, 120.0);
    let _ = write!(
        out,
        "<text class=\"empty\" x=\"{}\" y=\"64\" text-anchor=\"middle\">{}</text></svg>",
        WIDTH / 2.0,
        escape(text)
    );
    out
}

/// The chart as an `<svg>` element.
pub fn line_chart(chart: &LineChart<'_>) -> String {
    let all: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| finite(&s.points))
        .collect();
    if all.is_empty() {
        return empty_chart(chart.id, chart.title, chart.empty_text);
    }
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max);
    let axis = TimeAxis::for_span(x_max);
    let x_ticks = nice_ticks(0.0, x_max / axis.per_unit, 10);
    let y_ticks = nice_ticks(0.0, y_max * 1.05, 5);
    let frame = Frame {
        x0: 0.0,
        x1: x_ticks.last().copied().unwrap_or(1.0) * axis.per_unit,
        y0: 0.0,
        y1: y_ticks.last().copied().unwrap_or(1.0),
        left: MARGIN_LEFT,
        right: WIDTH - MARGIN_RIGHT,
        top: MARGIN_TOP,
        bottom: LINE_HEIGHT - MARGIN_BOTTOM,
    };
    let mut out = String::new();
    open_svg(&mut out, chart.id, chart.title, LINE_HEIGHT);
    y_axis(&mut out, &frame, &y_ticks, chart.y_unit);
    x_time_axis(&mut out, &frame, &x_ticks, &axis);
    for series in chart.series {
        draw_series(&mut out, &frame, series, &axis, chart.y_unit);
    }
    legend(&mut out, chart.series.iter().map(|s| (s.name, s.color)));
    out.push_str("</svg>");
    out
}

/// Horizontal grid lines with value labels, and the unit above them.
fn y_axis(out: &mut String, f: &Frame, ticks: &[f64], unit: &str) {
    let step = ticks.get(1).zip(ticks.first()).map_or(1.0, |(b, a)| b - a);
    out.push_str("<g class=\"axis y\">");
    for &t in ticks {
        let y = f.y(t);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            f.left,
            f.right,
            f.left - 8.0,
            y + 4.0,
            format_tick(t, step)
        );
    }
    let _ = write!(
        out,
        "<text class=\"unit\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"start\">{}</text></g>",
        8.0,
        f.top - 16.0,
        escape(unit)
    );
}

/// The time axis: ticks, labels and "time since start (unit)".
fn x_time_axis(out: &mut String, f: &Frame, ticks: &[f64], axis: &TimeAxis) {
    let step = ticks.get(1).zip(ticks.first()).map_or(1.0, |(b, a)| b - a);
    let _ = write!(
        out,
        "<g class=\"axis x\"><line class=\"baseline\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{b:.1}\" \
         y2=\"{b:.1}\"/>",
        f.left,
        f.right,
        b = f.bottom
    );
    for &t in ticks {
        let x = f.x(t * axis.per_unit);
        let _ = write!(
            out,
            "<line class=\"tick\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            f.bottom,
            f.bottom + 5.0,
            f.bottom + 20.0,
            format_tick(t, step)
        );
    }
    let _ = write!(
        out,
        "<text class=\"unit\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time since start \
         ({})</text></g>",
        (f.left + f.right) / 2.0,
        f.bottom + 42.0,
        axis.unit
    );
}

/// One series: a polyline per run without gaps, a dot for a lone point, and invisible hover
/// targets whose `<title>` gives the value (a tooltip without JS).
fn draw_series(out: &mut String, f: &Frame, s: &Series<'_>, axis: &TimeAxis, unit: &str) {
    let color = escape(s.color);
    let dash = if s.dash {
        " stroke-dasharray=\"7 4\""
    } else {
        ""
    };
    let _ = write!(
        out,
        "<g class=\"series\" stroke=\"{color}\" fill=\"{color}\"{dash}>"
    );
    let mut run: Vec<(f64, f64)> = Vec::new();
    for &(x, y) in &s.points {
        match y.filter(|y| y.is_finite() && x.is_finite()) {
            Some(y) => run.push((f.x(x), f.y(y))),
            None => flush_run(&mut run, out),
        }
    }
    flush_run(&mut run, out);
    for (x, y) in finite(&s.points) {
        let _ = write!(
            out,
            "<circle class=\"hover\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\"><title>{}: {} {} at {} {}\
             </title></circle>",
            f.x(x),
            f.y(y),
            escape(s.name),
            format_value(y),
            escape(unit),
            format_value(x / axis.per_unit),
            axis.unit
        );
    }
    out.push_str("</g>");
}

/// Draw a run of points without gaps: a polyline, or a dot when it is a lone point.
fn flush_run(run: &mut Vec<(f64, f64)>, out: &mut String) {
    match run.as_slice() {
        [] => {}
        [(x, y)] => {
            let _ = write!(out, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\"/>");
        }
        points => {
            out.push_str("<polyline fill=\"none\" points=\"");
            for (x, y) in points {
                let _ = write!(out, "{x:.1},{y:.1} ");
            }
            out.push_str("\"/>");
        }
    }
    run.clear();
}

/// Colour swatches and names in a row, top right.
fn legend<'a>(out: &mut String, entries: impl Iterator<Item = (&'a str, &'a str)>) {
    let entries: Vec<_> = entries.collect();
    let widths: Vec<f64> = entries
        .iter()
        .map(|(name, _)| 28.0 + 7.5 * name.chars().count() as f64)
        .collect();
    let mut x = WIDTH - MARGIN_RIGHT - widths.iter().sum::<f64>();
    out.push_str("<g class=\"legend\">");
    for ((name, color), w) in entries.iter().zip(&widths) {
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"10\" width=\"14\" height=\"14\" rx=\"3\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"22\">{}</text>",
            escape(color),
            x + 19.0,
            escape(name)
        );
        x += w;
    }
    out.push_str("</g>");
}

/// One row of a bar chart: a label and one value per series (None: no bar).
pub struct BarGroup {
    /// Shown left of the bars (cut at 40 characters, whole in the tooltip).
    pub label: String,
    /// One per series of the chart, in its order.
    pub values: Vec<Option<f64>>,
}

/// Horizontal grouped bars: long labels (endpoints) read on the left, values on the right.
pub struct BarChart<'a> {
    /// The element id: the page's tests find charts by it.
    pub id: &'a str,
    /// What the chart shows, for screen readers.
    pub title: &'a str,
    /// Unit of the value axis, "ms".
    pub unit: &'a str,
    /// (name, CSS colour) of each series, in the order of `BarGroup::values`.
    pub series: &'a [(&'a str, &'a str)],
    /// One row of bars each.
    pub groups: &'a [BarGroup],
    /// Shown instead of the bars when no group has a value.
    pub empty_text: &'a str,
}

const BAR: f64 = 11.0;
const BAR_GAP: f64 = 2.0;
const GROUP_GAP: f64 = 14.0;
const LABEL_WIDTH: f64 = 240.0;

/// The chart as an `<svg>` element, as tall as its groups need.
pub fn bar_chart(chart: &BarChart<'_>) -> String {
    let max = chart
        .groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NAN, f64::max);
    if max.is_nan() {
        return empty_chart(chart.id, chart.title, chart.empty_text);
    }
    let per_group = chart.series.len().max(1) as f64 * (BAR + BAR_GAP) + GROUP_GAP;
    let top = MARGIN_TOP + 8.0;
    let height = top + per_group * chart.groups.len() as f64 + MARGIN_BOTTOM;
    let ticks = nice_ticks(0.0, max.max(0.0) * 1.12, 8);
    let frame = Frame {
        x0: 0.0,
        x1: ticks.last().copied().unwrap_or(1.0),
        y0: 0.0,
        y1: 1.0,
        left: LABEL_WIDTH,
        right: WIDTH - MARGIN_RIGHT,
        top,
        bottom: height - MARGIN_BOTTOM,
    };
    let mut out = String::new();
    open_svg(&mut out, chart.id, chart.title, height);
    value_axis(&mut out, &frame, &ticks, chart.unit);
    for (i, group) in chart.groups.iter().enumerate() {
        let y = top + GROUP_GAP / 2.0 + per_group * i as f64;
        draw_group(&mut out, &frame, group, chart, y);
    }
    legend(&mut out, chart.series.iter().copied());
    out.push_str("</svg>");
    out
}

/// Vertical grid lines with value labels below, and the unit.
fn value_axis(out: &mut String, f: &Frame, ticks: &[f64], unit: &str) {
    let step = ticks.get(1).zip(ticks.first()).map_or(1.0, |(b, a)| b - a);
    out.push_str("<g class=\"axis x\">");
    for &t in ticks {
        let x = f.x(t);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            f.top,
            f.bottom,
            f.bottom + 18.0,
            format_tick(t, step)
        );
    }
    let _ = write!(
        out,
        "<text class=\"unit\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
        (f.left + f.right) / 2.0,
        f.bottom + 40.0,
        escape(unit)
    );
}

/// One group: its label (cut if too long, whole in the tooltip) and a bar per series.
fn draw_group(out: &mut String, f: &Frame, group: &BarGroup, chart: &BarChart<'_>, y: f64) {
    let label: String = if group.label.chars().count() > 40 {
        group.label.chars().take(39).chain(['…']).collect()
    } else {
        group.label.clone()
    };
    let bars_height = chart.series.len() as f64 * (BAR + BAR_GAP) - BAR_GAP;
    let _ = write!(
        out,
        "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\"><title>{}</title>{}\
         </text>",
        f.left - 10.0,
        y + bars_height / 2.0 + 4.0,
        escape(&group.label),
        escape(&label)
    );
    for (j, ((name, color), value)) in chart.series.iter().zip(&group.values).enumerate() {
        let Some(v) = value.filter(|v| v.is_finite()) else {
            continue;
        };
        let top = y + j as f64 * (BAR + BAR_GAP);
        let w = (f.x(v.max(0.0)) - f.left).max(1.0);
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{BAR}\" fill=\"{}\">\
             <title>{}: {} {}</title></rect><text class=\"value\" x=\"{:.1}\" y=\"{:.1}\">{}\
             </text>",
            f.left,
            escape(color),
            escape(name),
            format_value(v),
            escape(chart.unit),
            f.left + w + 5.0,
            top + BAR - 1.5,
            format_value(v)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert!((nice_step(0.023) - 0.05).abs() < 1e-12);
        assert_eq!(nice_step(f64::NAN), 1.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn ticks_cover_the_range_on_round_values() {
        assert_eq!(
            nice_ticks(0.0, 90.0, 10),
            (0..=9).map(|i| i as f64 * 10.0).collect::<Vec<_>>()
        );
        assert_eq!(
            nice_ticks(0.0, 437.0, 5),
            vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(nice_ticks(0.0, 0.0, 5).len(), 6); // 0..1 by 0.2
        assert_eq!(nice_ticks(f64::NAN, f64::INFINITY, 5).first(), Some(&0.0));
        assert!(nice_ticks(0.0, 1e12, 0).len() >= 2);
    }

    #[test]
    fn charts_draw_series_gaps_and_empty_states() {
        let series = [Series {
            name: "p50 <x>",
            color: "#1f77b4",
            dash: false,
            points: vec![
                (0.5, Some(1.0)),
                (1.5, None),
                (2.5, Some(f64::NAN)),
                (3.5, Some(2.0)),
            ],
        }];
        let svg = line_chart(&LineChart {
            id: "c",
            title: "t",
            y_unit: "ms",
            series: &series,
            empty_text: "none",
        });
        assert!(svg.starts_with("<svg id=\"c\""));
        assert_eq!(svg.matches("<circle cx").count(), 2); // two lone points, no line
        assert!(svg.contains("p50 &lt;x&gt;") && !svg.contains("<x>"));
        let empty = line_chart(&LineChart {
            series: &[],
            ..LineChart {
                id: "c",
                title: "t",
                y_unit: "ms",
                series: &[],
                empty_text: "no data",
            }
        });
        assert!(empty.contains("no data"));
        let groups = [BarGroup {
            label: "GET /a".into(),
            values: vec![Some(3.0), None],
        }];
        let bars = bar_chart(&BarChart {
            id: "b",
            title: "t",
            unit: "ms",
            series: &[("recorded", "#888"), ("replayed", "#f80")],
            groups: &groups,
            empty_text: "none",
        });
        assert_eq!(bars.matches("<rect x=\"240.0\"").count(), 1);
        let none = [BarGroup {
            label: "x".into(),
            values: vec![None],
        }];
        let empty = bar_chart(&BarChart {
            groups: &none,
            ..BarChart {
                id: "b",
                title: "t",
                unit: "ms",
                series: &[],
                groups: &[],
                empty_text: "nothing",
            }
        });
        assert!(empty.contains("nothing"));
    }
}
