//! Sharded runs: what each shard of a client fleet measured (`run.shards`), its setup latencies
//! as a serialized HDR histogram, and the merge of those histograms. Percentiles of a sharded run
//! come from the merged histogram, never from averaged per-shard percentiles: the p99 of three
//! p99s is not the p99 of anything.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::LoadSummary;

/// One shard of a sharded run, as `run.shards` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// This shard's index `I` of `I/N`: it ran the clients whose id ≡ I (mod N).
    pub index: u32,
    /// `N`: how many shards the run had.
    pub count: u32,
    pub clients: u64,
    pub connections: u64,
    pub connected: u64,
    /// Distinct source addresses its clients sent from (wireguard-go limits handshakes per
    /// source address under load, so few addresses can bind a storm).
    pub source_addresses: u64,
    /// The gateway's clock minus this shard's, estimated over HTTP at the shard's start (ms);
    /// `None`: not measured. Latencies never depend on it (each client measures its own).
    #[serde(default)]
    pub clock_offset_ms: Option<f64>,
    /// Round trip of the time request the offset was taken from (the offset's uncertainty is
    /// at most half of it).
    #[serde(default)]
    pub clock_rtt_ms: Option<f64>,
    /// The shard's own load generator: its lag and whether it saturated.
    #[serde(default)]
    pub load: Option<LoadSummary>,
    /// Setup latencies of its connected attempts in µs: an HDR histogram (V2 serialization,
    /// hex), mergeable with the other shards'.
    pub setup_histogram_us: String,
    /// What a reader must know about this shard (e.g. the per-source handshake limit could bind).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The shard's own samples of its clients, once per sample period on the common clock:
    /// the gateway cannot see clients, so a merge counts connected and in-flight clients from
    /// these. Empty in files from before they were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_counts: Vec<ClientCount>,
    /// Its clients' recovery after the gateway's first reboot or daemon restart; `None`: no
    /// reboot, or not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<ShardRecovery>,
}

/// A shard's clients at one instant, as its own fleet counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientCount {
    /// ms after the common start, on the shard's clock (started at the gateway's start time
    /// less the shard's estimated clock offset).
    pub t_ms: f64,
    /// Clients holding a usable session (the same counter `jitwg run` samples).
    pub connected: u64,
    /// Clients that sent an initiation and have no session yet.
    pub in_flight: u64,
}

/// A shard's part of the recovery after a reboot (the definition of `Reload::recovery_*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardRecovery {
    /// Its clients that had a working tunnel just before the reboot.
    pub clients: u64,
    /// Each of those that passed traffic again: reboot to its first echo reply after it, ms
    /// (exact values, so a merge computes exact percentiles over every shard's clients).
    pub recovered_ms: Vec<f64>,
}

/// Setup latency over every shard, from the merged histograms (`run.merged_setup`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergedSetup {
    /// Connected attempts over every shard.
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The merged histogram, encoded like [`ShardInfo::setup_histogram_us`].
    pub histogram_us: String,
}

/// Why a shard's histogram could not be read or merged.
#[derive(Debug, thiserror::Error)]
pub enum HistogramCodecError {
    #[error("serializing an HDR histogram")]
    Serialize(#[source] hdrhistogram::serialization::V2SerializeError),
    #[error("a shard's setup_histogram_us is not hex")]
    Hex,
    #[error("a shard's setup_histogram_us is not an HDR histogram")]
    Deserialize(#[source] hdrhistogram::serialization::DeserializeError),
    #[error("shard histograms of different ranges cannot be added")]
    Add(#[source] hdrhistogram::AdditionError),
}

/// Encodes `histogram` for [`ShardInfo::setup_histogram_us`].
pub fn encode_histogram(histogram: &Histogram<u64>) -> Result<String, HistogramCodecError> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(HistogramCodecError::Serialize)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Decodes what [`encode_histogram`] wrote.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, HistogramCodecError> {
    if !text.len().is_multiple_of(2) {
        return Err(HistogramCodecError::Hex);
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(HistogramCodecError::Hex)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(HistogramCodecError::Deserialize)
}

/// The histogram of `latencies_ms` as every report records it (µs, 3 significant digits).
pub fn setup_histogram(latencies_ms: &[f64]) -> Histogram<u64> {
    crate::figures::histogram_us(latencies_ms)
}

/// Adds up the shards' histograms and reads the percentiles off the sum.
pub fn merge_setup(shards: &[ShardInfo]) -> Result<MergedSetup, HistogramCodecError> {
    let mut merged = crate::figures::histogram_us(&[]);
    for shard in shards {
        let h = decode_histogram(&shard.setup_histogram_us)?;
        merged.add(&h).map_err(HistogramCodecError::Add)?;
    }
    let count = merged.len();
    let at = |q: f64| (count > 0).then(|| merged.value_at_quantile(q) as f64 / 1000.0);
    Ok(MergedSetup {
        count,
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        max_ms: (count > 0).then(|| merged.max() as f64 / 1000.0),
        histogram_us: encode_histogram(&merged)?,
    })
}

/// Column heads of [`shard_rows`].
pub const SHARD_HEADS: [&str; 7] = [
    "shard",
    "clients",
    "connected",
    "lag p99 (start / receive)",
    "saturated",
    "source addresses",
    "clock offset",
];

/// One row per shard for the reports: what each shard's load generator did.
pub fn shard_rows(shards: &[ShardInfo]) -> Vec<[String; 7]> {
    let ms = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".into(), |v| format!("{v:.digits$} ms"))
    };
    shards
        .iter()
        .map(|s| {
            let load = s.load.as_ref();
            [
                format!("{}/{}", s.index, s.count),
                s.clients.to_string(),
                s.connected.to_string(),
                format!(
                    "{} / {}",
                    ms(load.and_then(|l| l.lag_p99_ms), 1),
                    ms(load.and_then(|l| l.rx_lag_p99_ms), 1)
                ),
                match load {
                    Some(l) if l.saturated => format!("yes: {}", l.reasons.join("; ")),
                    Some(_) => "no".into(),
                    None => "-".into(),
                },
                s.source_addresses.to_string(),
                match (s.clock_offset_ms, s.clock_rtt_ms) {
                    (Some(o), Some(rtt)) => format!("{o:+.1} ms (± {:.1})", rtt / 2.0),
                    (o, _) => ms(o, 1),
                },
            ]
        })
        .collect()
}

/// The Markdown "Shards" section of a merged run (nothing for an unsharded one).
pub fn markdown(shards: &[ShardInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if shards.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n## Shards\n\nEach shard's own load generator (clock offset: the gateway's clock minus the shard's).\n"
    );
    let _ = writeln!(out, "| {} |", SHARD_HEADS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(SHARD_HEADS.len()));
    for row in shard_rows(shards) {
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.replace('|', "\\|").replace(['\n', '\r'], " "))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::nearest_rank;

    #[test]
    fn the_shard_table_has_one_row_per_shard_with_its_load_and_clock() {
        let shards = [
            ShardInfo {
                index: 0,
                count: 2,
                clients: 25,
                connected: 24,
                source_addresses: 25,
                clock_offset_ms: Some(-1.5),
                clock_rtt_ms: Some(0.6),
                load: Some(LoadSummary {
                    lag_p99_ms: Some(3.5),
                    rx_lag_p99_ms: Some(0.25),
                    saturated: true,
                    reasons: vec!["lag p99 50 ms > 20 ms".into()],
                    ..LoadSummary::default()
                }),
                ..ShardInfo::default()
            },
            ShardInfo {
                index: 1,
                count: 2,
                clients: 25,
                ..ShardInfo::default()
            },
        ];
        let rows = shard_rows(&shards);
        assert_eq!(rows[0][0], "0/2");
        assert_eq!(rows[0][3], "3.5 ms / 0.2 ms");
        assert_eq!(rows[0][4], "yes: lag p99 50 ms > 20 ms");
        assert_eq!(rows[0][6], "-1.5 ms (± 0.3)");
        assert_eq!(rows[1][4], "-");
        assert_eq!(rows[1][6], "-");
        let md = markdown(&shards);
        assert!(md.contains("## Shards"), "{md}");
        assert!(md.contains("| 0/2 | 25 | 24 | 3.5 ms / 0.2 ms |"), "{md}");
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 3);
        assert!(markdown(&[]).is_empty());
    }

    fn shard(index: u32, latencies: &[f64]) -> ShardInfo {
        ShardInfo {
            index,
            count: 3,
            connected: latencies.len() as u64,
            setup_histogram_us: encode_histogram(&setup_histogram(latencies)).unwrap(),
            ..ShardInfo::default()
        }
    }

    #[test]
    fn histograms_survive_encoding() {
        let h = setup_histogram(&[1.5, 2.0, 250.0]);
        let back = decode_histogram(&encode_histogram(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert!(decode_histogram("abc").is_err());
        assert!(decode_histogram("zz").is_err());
        assert!(decode_histogram("00ff").is_err());
    }

    #[test]
    fn merged_p99_is_the_p99_of_every_latency_not_an_average() {
        // One shard is slow: averaging the three p99s would give ~34 ms.
        let a: Vec<f64> = (1..=100).map(|i| 1.0 + i as f64 * 0.01).collect();
        let b: Vec<f64> = (1..=100).map(|i| 2.0 + i as f64 * 0.01).collect();
        let c: Vec<f64> = (1..=100).map(|i| 100.0 + i as f64).collect();
        let merged = merge_setup(&[shard(0, &a), shard(1, &b), shard(2, &c)]).unwrap();
        let mut all: Vec<f64> = a.iter().chain(&b).chain(&c).copied().collect();
        all.sort_by(f64::total_cmp);
        let exact = nearest_rank(&all, 99.0).unwrap();
        let p99 = merged.p99_ms.unwrap();
        assert!(
            (p99 - exact).abs() <= exact * 1e-3 + 0.001,
            "{p99} vs {exact}"
        );
        assert_eq!(merged.count, 300);
        let max = merged.max_ms.unwrap();
        assert!((max - 200.0).abs() <= 0.2, "{max}");
    }

    #[test]
    fn no_latencies_merge_to_no_percentiles() {
        let merged = merge_setup(&[shard(0, &[])]).unwrap();
        assert_eq!((merged.count, merged.p99_ms), (0, None));
    }
}
