//! Charts of the gateway's sampled state over a run's time: connections made, clients holding a tunnel
//! and in-flight handshakes,
//! installed and stale peers, control-plane API calls and lookup outcomes. Scenario events (reboots,
//! daemon restarts, API outages) are marked on the connection chart so a dip can be read against its cause.

use std::collections::BTreeSet;

use plotters::prelude::*;

use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{color, decimate, max_or, no_data, render, series_label, trim_float, ChartError, Runs};
use crate::schema::{EventKind, Results, Sample};

/// One line of a time chart: `(seconds since run start, value)` points, sorted by time.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// The lines of one run.
struct RunSeries<'a> {
    label: &'a str,
    results: &'a Results,
    series: Vec<Series>,
}

/// Samples of `results` sorted by time (the driver writes them in order; sorting makes the charts
/// robust to a file that was concatenated or edited).
fn sorted_samples(results: &Results) -> Vec<&Sample> {
    let mut samples: Vec<&Sample> = results
        .samples
        .iter()
        .filter(|s| s.t_ms.is_finite())
        .collect();
    samples.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    samples
}

fn series_of(samples: &[&Sample], name: &str, value: impl Fn(&Sample) -> Option<f64>) -> Series {
    Series {
        name: name.to_string(),
        points: samples
            .iter()
            .filter_map(|s| value(s).map(|v| (s.t_ms / 1000.0, v)))
            .collect(),
    }
}

/// Each run's series, built by `series` from the run and its samples in time order.
fn per_run<'a>(
    runs: &'a Runs<'a>,
    series: impl Fn(&Results, &[&Sample]) -> Vec<Series>,
) -> Vec<RunSeries<'a>> {
    runs.iter()
        .map(|(label, results)| RunSeries {
            label,
            results,
            series: series(results, &sorted_samples(results)),
        })
        .collect()
}

/// Connections made so far, clients holding a tunnel now and in-flight handshakes per sample, with
/// scenario events marked.
///
/// "Holding a tunnel now" alone reads as a flat zero for populations that leave right after their echo
/// (`connect_once`), so the cumulative count of connections that reached a usable session is drawn
/// beside it. It is computed from the per-connection records, so files written before it existed draw
/// it too.
pub fn connections_over_time(runs: &Runs<'_>) -> Result<String, ChartError> {
    let per_run = per_run(runs, |results, samples| {
        vec![
            connections_made(results, samples),
            series_of(samples, "holding a tunnel now", |s| {
                Some(s.connected_clients as f64)
            }),
            series_of(samples, "in-flight handshakes", |s| {
                Some(s.in_flight as f64)
            }),
        ]
    });
    time_chart(
        "Connected clients and in-flight handshakes",
        "count",
        runs,
        per_run,
        true,
    )
}

/// At each sample's time, how many connections of `results` had reached a usable session.
fn connections_made(results: &Results, samples: &[&Sample]) -> Series {
    let made = connected_times_ms(results);
    series_of(samples, "connections made (cumulative)", |s| {
        Some(made.partition_point(|t| *t <= s.t_ms) as f64)
    })
}

/// When each connection of `results` reached a usable session (start plus setup latency), in ms since
/// the run start, sorted; failed attempts and non-finite times are left out.
fn connected_times_ms(results: &Results) -> Vec<f64> {
    let mut times: Vec<f64> = results
        .clients
        .iter()
        .flat_map(|c| &c.connections)
        .filter_map(|c| c.setup_latency_ms.map(|latency| c.started_ms + latency))
        .filter(|t| t.is_finite())
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// Installed peers and stale peers (installed, no handshake within the stale threshold) per sample.
pub fn peers_over_time(runs: &Runs<'_>) -> Result<String, ChartError> {
    let per_run = per_run(runs, |_, samples| {
        vec![
            series_of(samples, "installed peers", |s| {
                Some(s.installed_peers as f64)
            }),
            series_of(samples, "stale peers", |s| Some(s.stale_peers as f64)),
        ]
    });
    time_chart(
        "Installed and stale peers",
        "peers (count)",
        runs,
        per_run,
        true,
    )
}

/// Cumulative control-plane requests and daemon lookups by outcome (`cache_hit`, `api_found`, ...).
///
/// A lookup outcome that no sample reports is not drawn; when no sample reports any outcome the chart
/// says so in a note instead of drawing a zero line.
pub fn api_over_time(runs: &Runs<'_>) -> Result<String, ChartError> {
    let per_run = runs
        .iter()
        .map(|(label, results)| {
            let samples = sorted_samples(results);
            let outcomes: BTreeSet<&str> = samples
                .iter()
                .flat_map(|s| s.lookups.keys().map(String::as_str))
                .collect();
            let mut series = vec![series_of(&samples, "API calls", |s| {
                Some(s.api_calls_total as f64)
            })];
            series.extend(outcomes.into_iter().map(|outcome| {
                series_of(&samples, &format!("lookups: {outcome}"), |s| {
                    s.lookups.get(outcome).map(|n| *n as f64)
                })
            }));
            if !samples.is_empty() && series.len() == 1 {
                // Keep a named, empty series so the chart notes the missing lookup data.
                series.push(Series {
                    name: "lookups".to_string(),
                    points: Vec::new(),
                });
            }
            RunSeries {
                label,
                results,
                series,
            }
        })
        .collect();
    time_chart(
        "Control-plane API calls and lookups",
        "cumulative count",
        runs,
        per_run,
        true,
    )
}

/// An interval on the time axis to shade (an API outage), in seconds.
struct Band {
    from: f64,
    to: f64,
    label: String,
}

/// A moment to mark with a vertical line, in seconds.
struct Mark {
    t: f64,
    label: String,
}

/// Splits a run's events into shaded outage bands and vertical marks; an outage without an end lasts
/// until `end` (the end of the chart).
fn event_marks(runs: &Runs<'_>, end: f64) -> (Vec<Band>, Vec<Mark>) {
    let mut bands = Vec::new();
    let mut marks = Vec::new();
    for (label, results) in runs {
        let prefix = if runs.len() > 1 {
            format!("{label}: ")
        } else {
            String::new()
        };
        let mut events: Vec<_> = results
            .events
            .iter()
            .filter(|e| e.t_ms.is_finite())
            .collect();
        events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        let mut outage_start: Option<f64> = None;
        for event in events {
            let t = event.t_ms / 1000.0;
            match event.kind {
                EventKind::ApiOutageStart => {
                    outage_start.get_or_insert(t);
                }
                EventKind::ApiOutageEnd => {
                    let from = outage_start.take().unwrap_or(0.0);
                    bands.push(Band {
                        from,
                        to: t,
                        label: format!("{prefix}API outage"),
                    });
                }
                EventKind::RunEnd => {}
                kind => marks.push(Mark {
                    t,
                    label: format!("{prefix}{kind}"),
                }),
            }
        }
        if let Some(from) = outage_start {
            bands.push(Band {
                from,
                to: end,
                label: format!("{prefix}API outage"),
            });
        }
    }
    (bands, marks)
}

/// Draws every series of every run against time; says "no data" when no series has a point, and notes
/// each series that is empty instead of drawing it.
fn time_chart(
    title: &str,
    y_desc: &str,
    runs: &Runs<'_>,
    per_run: Vec<RunSeries<'_>>,
    mark_events: bool,
) -> Result<String, ChartError> {
    let has_points = per_run
        .iter()
        .flat_map(|r| &r.series)
        .any(|s| !s.points.is_empty());
    if !has_points {
        return no_data(title);
    }
    let x_max = max_or(
        per_run.iter().flat_map(|r| {
            let samples = r.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
            let events = r.results.events.iter().map(|e| e.t_ms / 1000.0);
            samples.chain(events)
        }),
        1.0,
    );
    let y_max = max_or(
        per_run
            .iter()
            .flat_map(|r| &r.series)
            .flat_map(|s| s.points.iter().map(|p| p.1 * 1.1)),
        1.0,
    );
    let (bands, marks) = if mark_events {
        event_marks(runs, x_max)
    } else {
        (Vec::new(), Vec::new())
    };
    let empty_notes: Vec<String> = per_run
        .iter()
        .flat_map(|r| {
            r.series
                .iter()
                .filter(|s| s.points.is_empty())
                .map(|s| format!("{}: no data", series_label(runs, r.label, &s.name)))
        })
        .collect();
    let series_per_run = per_run.iter().map(|r| r.series.len()).max().unwrap_or(1);

    render(title, |root| {
        let mut chart = super::cartesian(root, title, 70, 0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time since run start (s)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| trim_float(*v))
            .y_label_formatter(&|v| trim_float(*v))
            .draw()?;

        let outage = RGBColor(214, 39, 40);
        for (i, band) in bands.iter().enumerate() {
            let series = chart.draw_series([Rectangle::new(
                [(band.from, 0.0), (band.to.max(band.from), y_max)],
                outage.mix(0.12).filled(),
            )])?;
            if i == 0 || bands[..i].iter().all(|b| b.label != band.label) {
                series.label(band.label.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], outage.mix(0.3).filled())
                });
            }
        }
        let mark_color = RGBColor(80, 80, 80);
        let text = ("sans-serif", 12).into_font().color(&mark_color);
        for (i, mark) in marks.iter().enumerate() {
            chart.draw_series(DashedLineSeries::new(
                [(mark.t, 0.0), (mark.t, y_max)],
                6,
                4,
                mark_color.stroke_width(1),
            ))?;
            // Stagger labels down the chart so marks close in time stay readable; labels in the right
            // third end at their line so they stay inside the chart.
            let y = y_max * (0.97 - 0.06 * (i % 4) as f64);
            let (label, h_pos) = if mark.t > x_max * 0.66 {
                (format!("{} ", mark.label), HPos::Right)
            } else {
                (format!(" {}", mark.label), HPos::Left)
            };
            let style = text.clone().pos(Pos::new(h_pos, VPos::Top));
            chart.draw_series([Text::new(label, (mark.t, y), style)])?;
        }

        for (run_index, run) in per_run.iter().enumerate() {
            for (series_index, series) in run.series.iter().enumerate() {
                if series.points.is_empty() {
                    continue;
                }
                let c = color(run_index * series_per_run + series_index);
                let dashed = runs.len() > 1 && run_index > 0;
                let points = decimate(&series.points);
                let name = series_label(runs, run.label, &series.name);
                let drawn = if dashed {
                    chart.draw_series(DashedLineSeries::new(points, 8, 4, c.stroke_width(2)))?
                } else {
                    chart.draw_series(LineSeries::new(points, c.stroke_width(2)))?
                };
                drawn.label(name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            }
        }
        super::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

        if !empty_notes.is_empty() {
            let (w, h) = root.dim_in_pixel();
            let note = ("sans-serif", 13)
                .into_font()
                .color(&RGBColor(120, 120, 120));
            for (i, line) in empty_notes.iter().enumerate() {
                let y = h as i32 - 60 - 16 * (empty_notes.len() - 1 - i) as i32;
                root.draw(&Text::new(line.clone(), (w as i32 - 300, y), note.clone()))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ClientResult, Connection, Event, RunInfo};

    fn event(t_ms: f64, kind: EventKind) -> Event {
        Event {
            t_ms,
            kind,
            detail: String::new(),
        }
    }

    #[test]
    fn outages_become_bands_and_unclosed_ones_run_to_the_end() {
        let mut r = Results::new(RunInfo::default());
        r.events = vec![
            event(2000.0, EventKind::ApiOutageStart),
            event(4000.0, EventKind::ApiOutageEnd),
            event(5000.0, EventKind::RebootStart),
            event(7000.0, EventKind::ApiOutageStart),
            event(9000.0, EventKind::RunEnd),
        ];
        let (bands, marks) = event_marks(&[("a", &r)], 10.0);
        let spans: Vec<(f64, f64)> = bands.iter().map(|b| (b.from, b.to)).collect();
        assert_eq!(spans, vec![(2.0, 4.0), (7.0, 10.0)]);
        assert_eq!(marks.len(), 1);
        assert_eq!(marks[0].t, 5.0);
        assert_eq!(marks[0].label, "reboot");
    }

    #[test]
    fn samples_without_lookups_note_it() {
        let mut r = Results::new(RunInfo::default());
        r.samples.push(Sample {
            t_ms: 1000.0,
            api_calls_total: 3,
            ..Sample::default()
        });
        let svg = api_over_time(&[("a", &r)]).unwrap();
        assert!(svg.contains("lookups: no data"), "{svg}");
    }

    fn connection(started_ms: f64, setup_latency_ms: Option<f64>) -> Connection {
        Connection {
            started_ms,
            setup_latency_ms,
            handshake_attempts: 1,
            ..Connection::default()
        }
    }

    #[test]
    fn connected_times_leave_out_failures_and_sort() {
        let mut r = Results::new(RunInfo::default());
        r.clients = vec![
            ClientResult {
                id: 1,
                population: "once".into(),
                connections: vec![connection(3000.0, Some(5.0)), connection(100.0, None)],
            },
            ClientResult {
                id: 2,
                population: "once".into(),
                connections: vec![connection(1000.0, Some(2.5))],
            },
        ];
        assert_eq!(connected_times_ms(&r), vec![1002.5, 3005.0]);
    }

    #[test]
    fn cumulative_connections_are_drawn_when_nobody_holds_a_tunnel() {
        // Clients that leave right after their echo: every sample has 0 connected clients, but the
        // cumulative line climbs to 2.
        let mut r = Results::new(RunInfo::default());
        r.clients = vec![ClientResult {
            id: 1,
            population: "once".into(),
            connections: vec![
                connection(100.0, Some(10.0)),
                connection(1500.0, Some(10.0)),
            ],
        }];
        r.samples = (0..4)
            .map(|i| Sample {
                t_ms: f64::from(i) * 1000.0,
                ..Sample::default()
            })
            .collect();
        let svg = connections_over_time(&[("a", &r)]).unwrap();
        assert!(svg.contains("connections made (cumulative)"), "{svg}");
        assert!(svg.contains("holding a tunnel now"), "{svg}");
        let made = connections_made(&r, &sorted_samples(&r));
        assert_eq!(
            made.points,
            vec![(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 2.0)]
        );
    }
}
