//! Setup-latency charts: the CDF on a log time axis (1 ms and 5 s both readable) and a log-bucketed
//! histogram.

use plotters::prelude::*;

use super::{color, max_or, ms_label, no_data, render, series_label, ChartError, Runs, MAX_POINTS};
use crate::schema::Results;

/// Sorted latencies (ms) of connected attempts, and the number of all attempts.
fn latencies(results: &Results) -> (Vec<f64>, usize) {
    let attempts = results.clients.iter().flat_map(|c| c.connections.iter());
    let total = attempts.clone().count();
    let mut values: Vec<f64> = attempts
        .filter_map(|c| c.setup_latency_ms)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .collect();
    values.sort_by(f64::total_cmp);
    (values, total)
}

/// Log axis bounds covering at least 0.5 ms .. 10 s so the JIT path (~2 ms) and the retry path (~5 s)
/// are both on every chart, widened to fit the data.
fn log_bounds(all: &[Vec<f64>]) -> (f64, f64) {
    let min = all
        .iter()
        .filter_map(|v| v.first())
        .copied()
        .fold(0.5, f64::min)
        .max(0.001);
    let max = max_or(
        all.iter().filter_map(|v| v.last()).map(|m| m * 1.5),
        10_000.0,
    );
    (min / 1.5, max)
}

/// Cumulative share of all attempts connected within x ms: a curve that stops below 100 % shows failures.
pub fn setup_latency_cdf(runs: &Runs<'_>) -> Result<String, ChartError> {
    const TITLE: &str = "Setup latency CDF";
    let data: Vec<(Vec<f64>, usize)> = runs.iter().map(|(_, r)| latencies(r)).collect();
    if data.iter().all(|(v, _)| v.is_empty()) {
        return no_data(TITLE);
    }
    let values: Vec<Vec<f64>> = data.iter().map(|(v, _)| v.clone()).collect();
    let (lo, hi) = log_bounds(&values);
    render(TITLE, |root| {
        let mut chart = super::cartesian(root, TITLE, 60, (lo..hi).log_scale(), 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("setup latency (log scale)")
            .y_desc("connected, % of attempts")
            .x_label_formatter(&|v| ms_label(*v))
            .y_label_formatter(&|v| format!("{v:.0} %"))
            .draw()?;
        for (i, ((label, _), (values, total))) in runs.iter().zip(&data).enumerate() {
            if values.is_empty() {
                continue;
            }
            let stride = values.len().div_ceil(MAX_POINTS).max(1);
            let mut points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .step_by(stride)
                .map(|(k, v)| (*v, (k + 1) as f64 * 100.0 / *total as f64))
                .collect();
            points.push((
                values[values.len() - 1],
                values.len() as f64 * 100.0 / *total as f64,
            ));
            let c = color(i);
            let name = series_label(runs, label, "setup latency");
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        super::draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

/// Buckets per decade of the histogram.
const BUCKETS_PER_DECADE: f64 = 10.0;

/// Number of connected attempts per log-spaced latency bucket (with several runs: each run's share in %).
pub fn setup_latency_histogram(runs: &Runs<'_>) -> Result<String, ChartError> {
    const TITLE: &str = "Setup latency histogram";
    let values: Vec<Vec<f64>> = runs.iter().map(|(_, r)| latencies(r).0).collect();
    if values.iter().all(Vec::is_empty) {
        return no_data(TITLE);
    }
    let (lo, hi) = log_bounds(&values);
    let first_bucket = (lo.log10() * BUCKETS_PER_DECADE).floor() as i64;
    let bucket_of = |v: f64| (v.max(lo).log10() * BUCKETS_PER_DECADE).floor() as i64 - first_bucket;
    let edge = |b: i64| 10f64.powf((b + first_bucket) as f64 / BUCKETS_PER_DECADE);
    let counts: Vec<Vec<(i64, u64)>> = values
        .iter()
        .map(|vs| {
            let mut counts: Vec<(i64, u64)> = Vec::new();
            for v in vs {
                let b = bucket_of(*v);
                match counts.last_mut() {
                    Some((last, n)) if *last == b => *n += 1,
                    _ => counts.push((b, 1)),
                }
            }
            counts
        })
        .collect();
    // One run: counts. Several runs: each run's share of its own connected attempts, so a small run
    // stays visible next to a large one.
    let share = runs.len() > 1;
    let heights: Vec<Vec<(i64, f64)>> = counts
        .iter()
        .zip(&values)
        .map(|(buckets, vs)| {
            let scale = if share {
                100.0 / vs.len().max(1) as f64
            } else {
                1.0
            };
            buckets
                .iter()
                .map(|(b, n)| (*b, *n as f64 * scale))
                .collect()
        })
        .collect();
    let y_max = max_or(heights.iter().flatten().map(|(_, h)| h * 1.1), 1.0);
    let y_desc = if share {
        "share of the run's connected attempts (%)"
    } else {
        "connected attempts"
    };
    render(TITLE, |root| {
        let mut chart = super::cartesian(root, TITLE, 60, (lo..hi).log_scale(), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("setup latency (log scale, 10 buckets per decade)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| ms_label(*v))
            .y_label_formatter(&|v| super::trim_float(*v))
            .draw()?;
        for (i, ((label, _), buckets)) in runs.iter().zip(&heights).enumerate() {
            if buckets.is_empty() {
                continue;
            }
            let c = color(i);
            let fill = c.mix(if runs.len() > 1 { 0.45 } else { 0.8 }).filled();
            let name = series_label(runs, label, "attempts");
            chart
                .draw_series(
                    buckets
                        .iter()
                        .map(|(b, n)| Rectangle::new([(edge(*b), 0.0), (edge(b + 1), *n)], fill)),
                )?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        }
        super::draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}
