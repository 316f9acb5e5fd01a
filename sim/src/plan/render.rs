//! `jitwg plan`'s human output: the fits, a prediction, or a fleet plan, each ending with what
//! was extrapolated so no number is read without its caveat.

use std::fmt::Write;

use jitwg_reports::model::fleet::{FleetPlan, CPU_TARGET};
use jitwg_reports::model::html::coefficients;
use jitwg_reports::model::predict::short;
use jitwg_reports::model::{Band, Calibration, FleetInputs, Prediction, Validation};
use jitwg_reports::{figure, Unit};

fn header(c: &Calibration) -> String {
    let cpus = match c.gateway_cpus {
        Some(n) => format!("gateway on {n} CPU(s)"),
        None => "gateway CPUs unknown or mixed".to_string(),
    };
    let mut out = format!("calibration: {} run(s), {cpus}", c.points);
    if c.saturated_points > 0 {
        let _ = write!(
            out,
            "; {} run(s) flagged saturated (timing suspect)",
            c.saturated_points
        );
    }
    out.push('\n');
    out
}

/// The fits: one line per model with R² and coefficients, then what could not be fitted.
pub fn calibration(c: &Calibration) -> String {
    let mut out = header(c);
    out.push_str("models (95 % bands):\n");
    for m in c.models.values() {
        let fit = m.fitted.linear();
        let _ = writeln!(
            out,
            "  {:<20} n={:<3} R²={:<6} {}\n  {:<20} {}",
            m.name,
            fit.residuals.len(),
            fit.r_squared.map_or("—".into(), |r| format!("{r:.3}")),
            coefficients(m),
            "",
            m.description
        );
    }
    if let Some(drain) = c.drain_per_s {
        let _ = writeln!(
            out,
            "setup: the gateway drains {} peer setups/s (fitted); arrivals faster than that queue",
            short(drain)
        );
    }
    match &c.batching {
        jitwg_reports::model::Batching::Law(law) => {
            let _ = writeln!(
                out,
                "install batches: a batch keeps the gateway busy {:.2} ms + {:.3} ms per arrival (fitted to {} runs' install counts, rms ln error {:.2})",
                law.per_batch_s * 1e3,
                law.per_arrival_s * 1e3,
                law.runs,
                law.rms_log_error
            );
        }
        jitwg_reports::model::Batching::Drain { .. } => out.push_str(
            "install batches: no install counts recorded; arrivals slower than the drain are counted as batches of one\n",
        ),
    }
    knee_line(c, &mut out);
    if !c.unfitted.is_empty() {
        out.push_str("not fitted:\n");
        for u in &c.unfitted {
            let _ = writeln!(out, "  {}: {}", u.name, u.reason);
        }
    }
    out
}

fn band(unit: Unit, b: &Band) -> String {
    format!(
        "{} ({} .. {})",
        unit.format(b.value),
        unit.format(b.low),
        unit.format(b.high)
    )
}

/// A prediction: each figure with its band in the figure's own unit.
pub fn prediction(c: &Calibration, p: &Prediction, unused: &[String]) -> String {
    let mut out = header(c);
    out.push_str("predicted (95 % band):\n");
    for (name, v) in &p.predicted {
        let unit = figure(name).map_or(Unit::Count, |f| f.unit);
        let b = Band {
            value: v.value,
            low: v.low,
            high: v.high,
        };
        let _ = writeln!(out, "  {name:<20} {}", band(unit, &b));
    }
    if !p.not_predicted.is_empty() {
        out.push_str("not predicted:\n");
        for (name, why) in &p.not_predicted {
            let _ = writeln!(out, "  {name}: {why}");
        }
    }
    out.push_str("model inputs:\n");
    for (name, v) in &p.inputs {
        let _ = writeln!(
            out,
            "  {name:<20} {} ({} .. {})",
            short(v.value),
            short(v.low),
            short(v.high)
        );
    }
    for key in unused {
        let _ = writeln!(
            out,
            "note: --predict {key} changes no input of the cost model"
        );
    }
    extrapolated(&mut out, &p.extrapolated);
    out
}

/// The storm knee, where the calibration found one: in clients queued and as a storm in one second.
fn knee_line(c: &Calibration, out: &mut String) {
    if let Some(k) = c.knee() {
        let _ = writeln!(
            out,
            "storm knee: {} clients queued (a storm of {} in one second)",
            short(k),
            short(c.storm_knee().unwrap_or(k))
        );
    }
}

/// Predicted vs measured for held-out runs: a summary per figure, then every check (Markdown
/// tables, so they paste into BENCHMARKS.md as they are).
pub fn validation(c: &Calibration, v: &Validation) -> String {
    let mut out = header(c);
    knee_line(c, &mut out);
    let runs: std::collections::BTreeSet<_> = v.checks.iter().map(|k| &k.source).collect();
    let _ = writeln!(
        out,
        "held-out runs: {}{}\n",
        runs.len(),
        if v.saturated_runs > 0 {
            format!(", {} flagged saturated (timing suspect)", v.saturated_runs)
        } else {
            String::new()
        }
    );
    summary_table(&mut out, v, &v.summary);
    let medians: Vec<_> = v
        .per_point
        .iter()
        .filter(|k| {
            k.note
                .as_deref()
                .is_some_and(|n| n.starts_with("median of"))
        })
        .collect();
    if !medians.is_empty() {
        out.push_str("\nper point (a repeated point once, by the median of its repeats):\n\n");
        summary_table(&mut out, v, &v.per_point_summary);
    }
    out.push_str("\n| run | figure | measured | predicted (95 % band) | error | goal |\n|---|---|---|---|---|---|\n");
    for k in v.checks.iter().chain(medians) {
        check_row(&mut out, k);
    }
    extrapolated(&mut out, &v.extrapolated);
    out
}

/// One summary row per figure.
fn summary_table(
    out: &mut String,
    v: &Validation,
    summary: &std::collections::BTreeMap<String, jitwg_reports::model::validate::FigureSummary>,
) {
    out.push_str("| figure | checks | errors (predicted / measured - 1) | within goal | measured in 95 % band |\n|---|---|---|---|---|\n");
    for (figure, s) in summary {
        let goal = v.checks.iter().find(|k| &k.figure == figure).and_then(|k| {
            k.tolerance
                .or(jitwg_reports::model::validate::tolerance(figure))
        });
        let _ = writeln!(
            out,
            "| {figure} | {} | {} | {} | {}/{} |",
            s.checks,
            s.error_range.map_or("—".into(), |(lo, hi)| format!(
                "{:+.0} .. {:+.0} %",
                lo * 100.0,
                hi * 100.0
            )),
            match goal {
                Some(t) if s.with_goal > 0 =>
                    format!("{}/{} (±{:.0} %)", s.within_goal, s.with_goal, t * 100.0),
                _ => "— (no goal)".into(),
            },
            s.in_band,
            s.checks,
        );
    }
}

/// One held-out check as a table row (a repeated point's median says so in its verdict).
fn check_row(out: &mut String, k: &jitwg_reports::model::Check) {
    let unit = figure(&k.figure).map_or(Unit::Count, |f| f.unit);
    let b = Band {
        value: k.predicted.value,
        low: k.predicted.low,
        high: k.predicted.high,
    };
    let verdict = match (k.within_goal, &k.note) {
        (Some(true), None) => "within".to_string(),
        (Some(false), None) => "MISS".to_string(),
        (Some(true), Some(note)) => format!("within ({note})"),
        (Some(false), Some(note)) => format!("MISS ({note})"),
        (None, Some(note)) => note.clone(),
        (None, None) => "—".to_string(),
    };
    let _ = writeln!(
        out,
        "| {} | {} | {} | {}{} | {} | {verdict} |",
        k.source.display(),
        k.figure,
        unit.format(k.measured),
        band(unit, &b),
        if k.in_band { "" } else { " (outside)" },
        k.error
            .map_or("—".into(), |e| format!("{:+.1} %", e * 100.0)),
    );
}

fn extrapolated(out: &mut String, items: &[String]) {
    if items.is_empty() {
        out.push_str("extrapolated: nothing (every input within the calibration range)\n");
    } else {
        out.push_str("EXTRAPOLATED beyond the calibration range (trust these less):\n");
        for e in items {
            let _ = writeln!(out, "  {e}");
        }
    }
}

/// A band without a unit: `value (low .. high)`.
fn plain(b: &Band) -> String {
    format!("{} ({} .. {})", short(b.value), short(b.low), short(b.high))
}

fn opt(unit: Unit, b: &Option<Band>) -> String {
    b.as_ref()
        .map_or("not calibrated".into(), |b| band(unit, b))
}

/// The fleet plan.
pub fn fleet(c: &Calibration, i: &FleetInputs, p: &FleetPlan) -> String {
    let mut out = header(c);
    let _ = writeln!(
        out,
        "fleet: {} peers, {}/s arrivals, dwell {}, evict_after {}, eviction sweep every {}, {} CPU(s) per gateway",
        short(i.peers),
        short(i.arrivals_per_s),
        Unit::Seconds.format(i.dwell_s),
        Unit::Seconds.format(i.evict_after_s),
        Unit::Seconds.format(i.sweep_every_s),
        short(i.cpus_per_gateway)
    );
    let _ = writeln!(
        out,
        "\ngateways needed: {} (cost bands: {} .. {}); set by {}",
        p.gateways, p.gateways_low, p.gateways_high, p.binding
    );
    for (name, g) in &p.limits {
        let _ = writeln!(out, "  {name:<12} needs {g:.2}");
    }
    let g = &p.per_gateway;
    let _ = writeln!(
        out,
        "\nper gateway at steady state:\n  arrivals            {}/s\n  installed peers     {} (Little's law: arrivals × (dwell + idle time before eviction))\n  stale peers (JIT)   {}\n  re-installs         {}/s (arrivals whose peer was already evicted)\n  API calls           {}/s\n  CPU                 {} CPU-s/s (target {:.0} % of {} CPU(s))\n  jitwgd memory       {}\n  data-plane memory   {}",
        short(g.arrivals_per_s),
        short(g.installed_peers),
        short(g.stale_peers),
        short(g.reinstalls_per_s),
        g.api_calls_per_s
            .as_ref()
            .map_or("not calibrated".into(), plain),
        plain(&g.cpu),
        CPU_TARGET * 100.0,
        short(i.cpus_per_gateway),
        opt(Unit::Bytes, &g.daemon_rss_bytes),
        opt(Unit::Bytes, &g.dataplane_rss_bytes),
    );
    let l = &p.legacy_push;
    let _ = writeln!(
        out,
        "\nlegacy push design (every key on every gateway, never evicted):\n  installed peers     {}\n  stale peers         {}\n  data-plane memory   {}",
        short(l.installed_peers),
        short(l.stale_peers),
        opt(Unit::Bytes, &l.dataplane_rss_bytes),
    );
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => " — within the reboot budget",
        Some(false) => " — OVER the reboot budget",
        None => "",
    };
    let _ = writeln!(
        out,
        "\nreboot (daemon start to ready):\n  preload of {} stored peers  {}{}\n  JIT                         {}{}",
        short(i.peers),
        opt(Unit::Ms, &p.reboot.preload_ms),
        verdict(p.reboot.preload_within_budget),
        opt(Unit::Ms, &p.reboot.jit_ms),
        verdict(p.reboot.jit_within_budget),
    );
    if let Some(s) = &p.storm {
        let knee = match (s.knee, s.below_knee) {
            (Some(k), Some(true)) => format!("below the knee ({} per gateway)", short(k)),
            (Some(k), _) => format!(
                "ABOVE the knee ({} per gateway): setup latency turns up",
                short(k)
            ),
            (None, _) => "no knee in the calibration data".into(),
        };
        let _ = writeln!(
            out,
            "\nstorm of {} in one second: {} per gateway, {}\n  costs {} CPU-s against {} CPU-s/s spare: absorbed in ~{}",
            short(i.storm.unwrap_or(0.0)),
            short(s.per_gateway),
            knee,
            short(s.cpu_seconds.value),
            short(s.headroom_cpu_per_s),
            Unit::Seconds.format(s.absorb_s),
        );
    }
    out.push_str("\nsensitivity (change in gateways for +10 % of each input):\n");
    for (name, d) in &p.sensitivity {
        let _ = writeln!(out, "  {name:<20} {:+.1} %", d * 100.0);
    }
    if let Some((name, _)) = p.sensitivity.first() {
        let _ = writeln!(out, "  most influential: {name}");
    }
    for m in &p.missing {
        let _ = writeln!(out, "note: {m} not calibrated; left out of the CPU limit");
    }
    extrapolated(&mut out, &p.extrapolated);
    out
}
