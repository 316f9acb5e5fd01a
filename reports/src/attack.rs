//! The hostile side of a run, beside the legitimate clients' figures: what floods and replays
//! sent, how fast, what they cost the control plane, and what jitwgd dropped; and, for runs
//! that kill the daemon, whether its database survived and every client was back at the end.
//! Attackers are not clients, so every client figure (connected, failed, setup latency) is the
//! legitimate clients' alone; the attack figures are `None` in runs without attackers.

use std::fmt::Write as _;

use crate::figures::{def, Better, FigureDef, Figures, Unit};
use crate::schema::Results;

/// The attack figures of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttackFigures {
    /// Packets every attack sent.
    pub packets_sent: Option<u64>,
    /// Sum of the attacks' achieved rates (packets/s).
    pub rate: Option<f64>,
    /// Control-plane lookups of the attacks' own keys.
    pub api_calls: Option<u64>,
    /// Lookups of every other key: the legitimate clients' (and replayed clients') share.
    pub api_calls_legit: Option<u64>,
    /// `jitwgd_initiations_dropped_total`, all reasons (0 when not exported).
    pub initiations_dropped: Option<u64>,
    /// Clients holding a proven session at the last sample taken before the run ended.
    pub connected_at_end: Option<u64>,
    /// 1 when jitwgd's database passed `quick_check` at the end, 0 when not; `None`: unchecked.
    pub db_ok: Option<u64>,
}

impl AttackFigures {
    pub fn from_results(results: &Results) -> Self {
        let always = AttackFigures {
            // The last sample taken while the fleet ran: the one after it is taken once the
            // clients were stopped, when none holds a session any more.
            connected_at_end: results
                .samples
                .iter()
                .rev()
                .find(|s| s.t_ms <= results.run.duration_ms)
                .map(|s| s.connected_clients),
            db_ok: results
                .daemon_db_integrity
                .as_ref()
                .map(|v| u64::from(v == "ok")),
            ..AttackFigures::default()
        };
        if results.attacks.is_empty() {
            return always;
        }
        let attacks = &results.attacks;
        let api_calls: u64 = attacks.iter().filter_map(|a| a.api_calls).sum();
        AttackFigures {
            packets_sent: Some(attacks.iter().map(|a| a.packets_sent).sum()),
            rate: Some(attacks.iter().filter_map(|a| a.achieved_rate).sum()),
            api_calls: Some(api_calls),
            api_calls_legit: Some(results.api.calls_total.saturating_sub(api_calls)),
            initiations_dropped: Some(results.initiations_dropped.values().sum()),
            ..always
        }
    }
}

fn count(v: Option<u64>) -> Option<f64> {
    v.map(|n| n as f64)
}

pub(crate) const PACKETS_SENT: FigureDef = def(
    "attack_packets_sent",
    "attack packets sent",
    Unit::Count,
    Better::Higher,
    |f: &Figures| count(f.attack.packets_sent),
);
pub(crate) const RATE: FigureDef = def(
    "attack_rate",
    "attack rate achieved (packets/s)",
    Unit::Count,
    Better::Higher,
    |f: &Figures| f.attack.rate,
);
pub(crate) const API_CALLS: FigureDef = def(
    "attack_api_calls",
    "API calls for attack keys",
    Unit::Count,
    Better::Lower,
    |f: &Figures| count(f.attack.api_calls),
);
pub(crate) const API_CALLS_LEGIT: FigureDef = def(
    "legit_api_calls",
    "API calls for other keys",
    Unit::Count,
    Better::Lower,
    |f: &Figures| count(f.attack.api_calls_legit),
);
pub(crate) const CONNECTED_AT_END: FigureDef = def(
    "connected_at_end",
    "clients connected at the end",
    Unit::Count,
    Better::Higher,
    |f: &Figures| count(f.attack.connected_at_end),
);
pub(crate) const DB_OK: FigureDef = def(
    "daemon_db_ok",
    "jitwgd database intact (1 = quick_check ok)",
    Unit::Count,
    Better::Higher,
    |f: &Figures| count(f.attack.db_ok),
);
pub(crate) const DROPPED: FigureDef = def(
    "initiations_dropped",
    "initiations jitwgd dropped",
    Unit::Count,
    Better::Higher,
    |f: &Figures| count(f.attack.initiations_dropped),
);

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// One row per attack: `(population, kind, sources/subnets, planned, sent, rate, API calls)`.
pub fn rows(results: &Results) -> Vec<[String; 8]> {
    results
        .attacks
        .iter()
        .map(|a| {
            [
                a.population.clone(),
                a.kind.clone(),
                format!("{} in {} {}", a.sources, a.subnets, a.family),
                a.packets_planned.to_string(),
                a.packets_sent.to_string(),
                format!("{} (target {:.0})", opt(a.achieved_rate, 0), a.target_rate),
                a.api_calls.map_or_else(|| "-".into(), |n| n.to_string()),
                a.send_errors.to_string(),
            ]
        })
        .collect()
}

/// Column heads of [`rows`].
pub const HEADS: [&str; 8] = [
    "population",
    "kind",
    "sources",
    "planned",
    "sent",
    "packets/s",
    "API calls",
    "send errors",
];

/// The Markdown "Attacks" section, or nothing for a run without attackers.
pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    if results.attacks.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n## Attacks\n\nAttackers are not clients: the table above is the legitimate clients' alone.\n"
    );
    let _ = writeln!(out, "| {} |", HEADS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADS.len()));
    for row in rows(results) {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(out, "\n{}", drops_line(results));
    out
}

/// jitwgd's drops by reason, in one line.
pub fn drops_line(results: &Results) -> String {
    if results.initiations_dropped.is_empty() {
        return "jitwgd dropped no initiation it counted (`jitwgd_initiations_dropped_total` absent or 0)."
            .into();
    }
    let parts: Vec<String> = results
        .initiations_dropped
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    format!("jitwgd dropped initiations: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{AttackResult, RunInfo};

    #[test]
    fn no_attack_no_figures_and_no_section() {
        let r = Results::new(RunInfo::default());
        assert_eq!(AttackFigures::from_results(&r), AttackFigures::default());
        let mut checked = r.clone();
        checked.run.duration_ms = 2000.0;
        for (t_ms, connected) in [(1000.0, 7), (1990.0, 9), (2010.0, 0)] {
            checked.samples.push(crate::schema::Sample {
                t_ms,
                connected_clients: connected,
                ..crate::schema::Sample::default()
            });
        }
        assert_eq!(
            AttackFigures::from_results(&checked).connected_at_end,
            Some(9)
        );
        checked.daemon_db_integrity = Some("ok".into());
        assert_eq!(AttackFigures::from_results(&checked).db_ok, Some(1));
        checked.daemon_db_integrity = Some("*** in database main ***".into());
        assert_eq!(AttackFigures::from_results(&checked).db_ok, Some(0));
        assert!(markdown(&r).is_empty());
    }

    #[test]
    fn attack_api_calls_are_split_from_the_rest() {
        let mut r = Results::new(RunInfo::default());
        r.api.calls_total = 500;
        r.initiations_dropped.insert("budget".into(), 70);
        r.attacks.push(AttackResult {
            population: "flood".into(),
            kind: "flood-fresh".into(),
            packets_sent: 3000,
            achieved_rate: Some(2990.0),
            api_calls: Some(300),
            ..AttackResult::default()
        });
        let f = AttackFigures::from_results(&r);
        assert_eq!(f.api_calls, Some(300));
        assert_eq!(f.api_calls_legit, Some(200));
        assert_eq!(f.initiations_dropped, Some(70));
        let md = markdown(&r);
        assert!(
            md.contains("flood-fresh") && md.contains("budget 70"),
            "{md}"
        );
    }
}
