//! The reload timeline of runs that rebooted their gateway: time from daemon start to ready, then to every
//! returning client connected again, one bar per run, measured from the reboot.

use plotters::prelude::*;

use super::{color, max_or, no_data, render, ChartError, Runs};

/// Booting and reconnecting phases, in seconds after the daemon start, per run that has a reload.
pub fn reload_timeline(runs: &Runs<'_>) -> Result<String, ChartError> {
    const TITLE: &str = "Reload after reboot";
    let bars: Vec<(String, Option<f64>, Option<f64>)> = runs
        .iter()
        .filter_map(|(label, r)| {
            r.reload.as_ref().map(|reload| {
                (
                    label.to_string(),
                    reload.ready_after_ms.map(|ms| ms / 1000.0),
                    reload.all_reconnected_after_ms.map(|ms| ms / 1000.0),
                )
            })
        })
        .collect();
    if bars.is_empty() {
        return no_data(TITLE);
    }
    let x_max = max_or(
        bars.iter()
            .flat_map(|(_, ready, all)| [*ready, *all])
            .flatten()
            .map(|s| s * 1.15),
        1.0,
    );
    let n = bars.len();
    let labels: Vec<String> = bars.iter().map(|(l, _, _)| l.clone()).collect();
    render(TITLE, |root| {
        let mut chart = super::cartesian(root, TITLE, 120, 0.0..x_max, -0.5..(n as f64 - 0.5))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("time since daemon start (s)")
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()?;
        let boot = color(0);
        let reconnect = color(2);
        let text = ("sans-serif", 14).into_font();
        let mut boot_drawn = false;
        let mut reconnect_drawn = false;
        for (i, (_, ready, all)) in bars.iter().enumerate() {
            let y = i as f64;
            match ready {
                Some(ready) => {
                    let series = chart.draw_series([Rectangle::new(
                        [(0.0, y - 0.3), (*ready, y + 0.3)],
                        boot.mix(0.8).filled(),
                    )])?;
                    if !boot_drawn {
                        series.label("daemon start to ready").legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 14, y + 5)], boot.filled())
                        });
                        boot_drawn = true;
                    }
                    chart.draw_series([Text::new(
                        format!("ready {ready:.2} s"),
                        (0.0, y + 0.45),
                        text.clone(),
                    )])?;
                }
                None => {
                    chart.draw_series([Text::new("never ready", (0.0, y), text.clone())])?;
                }
            }
            if let (Some(ready), Some(all)) = (ready, all) {
                let series = chart.draw_series([Rectangle::new(
                    [(*ready, y - 0.3), (all.max(*ready), y + 0.3)],
                    reconnect.mix(0.6).filled(),
                )])?;
                if !reconnect_drawn {
                    series
                        .label("ready to all clients reconnected")
                        .legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 14, y + 5)], reconnect.filled())
                        });
                    reconnect_drawn = true;
                }
                chart.draw_series([Text::new(
                    format!("all reconnected {all:.2} s"),
                    (*ready, y - 0.4),
                    text.clone(),
                )])?;
            } else if ready.is_some() {
                chart.draw_series([Text::new(
                    "some clients never reconnected",
                    (ready.unwrap_or(0.0), y - 0.4),
                    text.clone(),
                )])?;
            }
        }
        super::draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}
