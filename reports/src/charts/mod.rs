//! Charts of one or several runs as standalone SVG strings (plotters' SVG backend, no fonts needed: text
//! is written as `<text>` elements and sized by plotters' built-in estimate).
//!
//! Every chart takes `&[(&str, &Results)]`: one entry draws one run, several overlay them for a
//! comparison. A chart with nothing to draw says "no data" instead of drawing a flat line.

mod latency;
mod reload;
mod timeline;

pub use latency::{setup_latency_cdf, setup_latency_histogram};
pub use reload::reload_timeline;
pub use timeline::{api_over_time, connections_over_time, peers_over_time};

use std::error::Error;

use plotters::coord::ranged1d::AsRangedCoord;
use plotters::prelude::*;

use crate::schema::Results;

/// Chart size in pixels: wide enough for a legend beside readable axes.
pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 420;

/// Most points drawn per series; longer series are reduced to per-bucket min and max so peaks survive.
const MAX_POINTS: usize = 2000;

/// The runs a chart draws, each with its label.
pub type Runs<'a> = [(&'a str, &'a Results)];

/// Why a chart could not be drawn.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot draw chart {chart:?}: {reason}")]
pub struct ChartError {
    pub chart: String,
    pub reason: String,
}

/// One drawn chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub svg: String,
}

/// Every chart that applies to `runs`, in report order (the reload timeline only when a run rebooted).
pub fn all_charts(runs: &Runs<'_>) -> Result<Vec<Chart>, ChartError> {
    type ChartFn = fn(&Runs<'_>) -> Result<String, ChartError>;
    let mut fns: Vec<(&str, ChartFn)> = vec![
        ("Setup latency CDF", setup_latency_cdf),
        ("Setup latency histogram", setup_latency_histogram),
        (
            "Connected clients and in-flight handshakes",
            connections_over_time,
        ),
        ("Installed and stale peers", peers_over_time),
        ("Control-plane API calls and lookups", api_over_time),
    ];
    if runs.iter().any(|(_, r)| r.reload.is_some()) {
        fns.push(("Reload after reboot", reload_timeline));
    }
    fns.into_iter()
        .map(|(title, draw)| {
            Ok(Chart {
                title: title.to_string(),
                svg: draw(runs)?,
            })
        })
        .collect()
}

pub(crate) type DrawResult = Result<(), Box<dyn Error>>;

/// Runs `draw` on a fresh SVG canvas and returns the SVG text.
pub(crate) fn render(
    title: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        let result = root
            .fill(&WHITE)
            .map_err(Box::<dyn Error>::from)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(Box::<dyn Error>::from));
        result.map_err(|e| ChartError {
            chart: title.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(svg)
}

/// A chart's plotting area on an SVG canvas, with the coordinates `X` and `Y` describe.
pub(crate) type Plot<'a, 'b, X, Y> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<<X as AsRangedCoord>::CoordDescType, <Y as AsRangedCoord>::CoordDescType>,
>;

/// The titled plotting area every chart starts from, with room for `y_label_area` pixels of
/// y-axis labels.
pub(crate) fn cartesian<'a, 'b, X: AsRangedCoord, Y: AsRangedCoord>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    y_label_area: u32,
    x: X,
    y: Y,
) -> Result<Plot<'a, 'b, X, Y>, Box<dyn Error>> {
    Ok(ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(x, y)?)
}

/// Draws the series legend every chart uses (white box, black border) at `position`.
pub(crate) fn draw_legend<'a, 'b, CT>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
) -> DrawResult
where
    'b: 'a,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A chart that only says it has nothing to show.
pub(crate) fn no_data(title: &str) -> Result<String, ChartError> {
    render(title, |root| {
        let area = root.titled(title, ("sans-serif", 20))?;
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            "no data",
            (w as i32 / 2 - 40, h as i32 / 2),
            ("sans-serif", 24)
                .into_font()
                .color(&RGBColor(120, 120, 120)),
        ))?;
        Ok(())
    })
}

/// Distinguishable colors (Tableau 10), assigned to series in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub(crate) fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// The legend name of a series: the series alone for one run, prefixed by the run label otherwise.
fn series_label(runs: &Runs<'_>, run_label: &str, series: &str) -> String {
    if runs.len() > 1 {
        format!("{run_label}: {series}")
    } else {
        series.to_string()
    }
}

/// Reduces `points` (sorted by x) to at most about `MAX_POINTS`, keeping each bucket's min and max y in
/// x order so spikes stay visible.
fn decimate(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per_bucket = points.len().div_ceil(MAX_POINTS / 2);
    let mut out = Vec::with_capacity(MAX_POINTS + 2);
    for bucket in points.chunks(per_bucket) {
        let min = bucket.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let max = bucket.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(&min), Some(&max)) = (min, max) {
            if min.0 <= max.0 {
                out.extend([min, max]);
            } else {
                out.extend([max, min]);
            }
        }
    }
    out
}

/// Largest finite value, or `floor` when there is none or it is smaller.
fn max_or(values: impl Iterator<Item = f64>, floor: f64) -> f64 {
    values.filter(|v| v.is_finite()).fold(floor, f64::max)
}

/// Short human label for a millisecond value on a log axis.
fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", trim_float(ms / 1000.0))
    } else {
        format!("{} ms", trim_float(ms))
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimation_keeps_peaks_and_bounds_size() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, 1.0)).collect();
        points[54_321].1 = 999.0;
        let out = decimate(&points);
        assert!(out.len() <= MAX_POINTS + 2, "{}", out.len());
        assert!(out.iter().any(|p| p.1 == 999.0));
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn ms_labels_read_naturally() {
        assert_eq!(ms_label(2.0), "2 ms");
        assert_eq!(ms_label(0.5), "0.5 ms");
        assert_eq!(ms_label(5000.0), "5 s");
    }
}
