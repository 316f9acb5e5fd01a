//! `jitwg timeline OUT_DIR --client ID | --key BASE64`: one client's story in run-relative
//! time, from everything the run left: its events (the fleet's event log, written by
//! `--event-log` or `--capture`), jitwgd's log lines about its key, and its packets on the
//! gateway's uplink (`--capture`: initiations decrypted with the run's keys, cookie replies,
//! responses, the gateway's role-inversion initiations). The client's key, address and the
//! gateway's key come from re-resolving the recorded scenario (same seed, same keys).

/// `println!` that ignores a reader that went away (`jitwg timeline ... | head`).
macro_rules! say {
    ($($arg:tt)*) => {
        crate::cli::say_raw(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod story;

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::Args;
use jitwgd::identify::ResponderKeys;

use crate::cli::{CliError, ExitCode};
use crate::scenario::{Adjustments, ClientPlan, Scenario};

use story::{Line, PacketKeys, Source};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["client", "key"])))]
pub struct TimelineArgs {
    /// The run's output directory (or its `jitwg bundle` archive).
    #[arg(value_name = "OUT_DIR|BUNDLE")]
    pub dir: PathBuf,
    /// The client's id (as in results.json's clients).
    #[arg(long, value_name = "ID")]
    pub client: Option<u32>,
    /// The client's public key (standard base64).
    #[arg(long, value_name = "BASE64")]
    pub key: Option<String>,
    /// Show every data packet instead of folding runs of them into one line.
    #[arg(long)]
    pub all_packets: bool,
}

/// One client's story and where its parts came from.
#[derive(Debug, Default)]
pub struct Story {
    pub header: Vec<String>,
    pub lines: Vec<Line>,
    /// Inputs that were absent (e.g. no capture): said, not an error.
    pub missing: Vec<String>,
}

fn usage(e: anyhow::Error) -> CliError {
    CliError {
        code: ExitCode::Usage,
        error: e,
    }
}

/// The scenario a run resolved, resolved again (same seed: same keys and addresses).
fn recorded(results: &jitwg_reports::Results) -> anyhow::Result<Scenario> {
    let file = crate::rerun::recorded_scenario(results)?;
    let text = crate::rerun::render_scenario(&file)?;
    Ok(crate::scenario::parse(
        Path::new(crate::rerun::SCENARIO_FILE),
        &text,
        &Adjustments::default(),
    )?)
}

fn find_client<'a>(
    scenario: &'a Scenario,
    id: Option<u32>,
    key: Option<&str>,
) -> anyhow::Result<&'a ClientPlan> {
    if let Some(id) = id {
        return scenario
            .clients
            .iter()
            .find(|c| c.id == id)
            .with_context(|| {
                format!(
                    "the run has no client {id} (it had {})",
                    scenario.clients.len()
                )
            });
    }
    let text = key.unwrap_or_default();
    let bytes: [u8; 32] = BASE64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("`{text}` is not a base64 WireGuard public key"))?;
    scenario
        .clients
        .iter()
        .find(|c| c.identity.public_key == bytes)
        .with_context(|| format!("no client of the run has the key {text}"))
}

/// Folds runs of consecutive data packets in one direction into one line.
fn fold_data(lines: Vec<Line>) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::with_capacity(lines.len());
    let mut folded = 0usize;
    let is_data = |l: &Line| {
        l.source == Source::Packet && (l.text.contains("  data (") || l.text.ends_with("keepalive"))
    };
    for line in lines {
        let continues = is_data(&line)
            && out
                .last()
                .is_some_and(|prev| is_data(prev) && prev.text.get(..16) == line.text.get(..16));
        if continues {
            folded += 1;
            continue;
        }
        if folded > 0 {
            if let Some(prev) = out.last_mut() {
                prev.text
                    .push_str(&format!(" (+{folded} more data packets)"));
            }
            folded = 0;
        }
        out.push(line);
    }
    if folded > 0 {
        if let Some(prev) = out.last_mut() {
            prev.text
                .push_str(&format!(" (+{folded} more data packets)"));
        }
    }
    out
}

/// Builds the story of one client of the run in `dir`.
pub fn build(dir: &Path, client: Option<u32>, key: Option<&str>) -> anyhow::Result<Story> {
    let results_path = dir.join("results.json");
    let results = jitwg_reports::load(&results_path)
        .with_context(|| format!("reading {}", results_path.display()))?;
    let scenario = recorded(&results)?;
    let plan = find_client(&scenario, client, key)?;
    let key_b64 = BASE64.encode(plan.identity.public_key);
    let origin = results.run.started_at_unix_ms as f64;
    let mut story = Story::default();
    story.header.push(format!(
        "client {} of run {}: key {key_b64}, source {}, tunnel {}, planned start {:.1} ms",
        plan.id,
        results.run.id,
        plan.source_ip,
        plan.identity.tunnel_ip,
        plan.start.as_secs_f64() * 1000.0
    ));
    if let Some(r) = results.clients.iter().find(|c| c.id == plan.id) {
        for (i, c) in r.connections.iter().enumerate() {
            let outcome = match (c.setup_latency_ms, &c.failure) {
                (Some(ms), _) => format!("connected in {ms:.1} ms"),
                (None, Some(f)) => format!("failed: {f}"),
                (None, None) => "failed".into(),
            };
            story.header.push(format!(
                "connection {i}: first initiation at {:.1} ms, {outcome}, {} handshake attempts, {} cookies",
                c.started_ms, c.handshake_attempts, c.cookies_received
            ));
        }
    }

    let events = dir.join("client-events.jsonl");
    match std::fs::File::open(&events) {
        Ok(f) => {
            for line in std::io::BufReader::new(f).lines() {
                let line = line.with_context(|| format!("reading {}", events.display()))?;
                story.lines.extend(story::event_line(&line, plan.id));
            }
        }
        Err(_) => story.missing.push(format!(
            "{}: no event log (run with --event-log or --capture)",
            events.display()
        )),
    }

    let log = dir.join("jitwgd.log");
    match std::fs::File::open(&log) {
        Ok(f) => {
            for line in std::io::BufReader::new(f).lines() {
                let line = line.with_context(|| format!("reading {}", log.display()))?;
                story
                    .lines
                    .extend(story::daemon_line(&line, &key_b64, origin));
            }
        }
        Err(_) => story
            .missing
            .push(format!("{}: no daemon log", log.display())),
    }

    let capture = dir.join(crate::capture::CAPTURE_FILE);
    match std::fs::File::open(&capture) {
        Ok(f) => {
            let packets = crate::capture::reader::read_packets(std::io::BufReader::new(f))
                .with_context(|| format!("reading {}", capture.display()))?;
            let gateway = ResponderKeys::new(crate::run::gateway_private_key(scenario.seed));
            let client_keys = ResponderKeys::new(plan.identity.private_key);
            let keys = PacketKeys {
                client_ip: plan.source_ip,
                client: &client_keys,
                gateway: &gateway,
                origin_unix_ms: origin,
            };
            story.lines.extend(
                packets
                    .iter()
                    .filter_map(|p| story::packet_line(p.timestamp, &p.data, &keys)),
            );
        }
        Err(_) => story.missing.push(format!(
            "{}: no capture (run with --capture)",
            capture.display()
        )),
    }
    story::sort(&mut story.lines);
    Ok(story)
}

/// `jitwg timeline`.
pub fn command(args: TimelineArgs) -> Result<ExitCode, CliError> {
    // A bundle is unpacked into a temporary directory first.
    let mut _unpacked = None;
    let dir = if crate::bundle::is_bundle(&args.dir) {
        let tmp = tempfile::tempdir()
            .context("creating a directory to unpack the bundle into")
            .map_err(usage)?;
        let dir = crate::bundle::unpack(&args.dir, tmp.path()).map_err(usage)?;
        _unpacked = Some(tmp);
        dir
    } else if args.dir.is_dir() {
        args.dir.clone()
    } else {
        return Err(usage(anyhow::anyhow!(
            "{} is neither a run's output directory nor a bundle",
            args.dir.display()
        )));
    };
    let story = build(&dir, args.client, args.key.as_deref()).map_err(usage)?;
    for h in &story.header {
        say!("{h}");
    }
    for m in &story.missing {
        say!("not shown: {m}");
    }
    if story.lines.is_empty() {
        // Still exit 0: the header said what the results know about the client.
        say!("nothing about this client in the event log, the daemon log or the capture");
    }
    let lines = if args.all_packets {
        story.lines
    } else {
        fold_data(story.lines)
    };
    for line in &lines {
        let t = line
            .t_ms
            .map_or_else(|| "?".to_string(), |t| format!("{t:.3}"));
        say!("{t:>12} ms  {:<6}  {}", line.source.label(), line.text);
    }
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(t: f64, dir: &str) -> Line {
        Line {
            t_ms: Some(t),
            source: Source::Packet,
            text: format!("{dir}  data (64 bytes)"),
        }
    }

    #[test]
    fn runs_of_data_fold_per_direction() {
        let up = "client → gateway";
        let down = "gateway → client";
        let lines = vec![data(1.0, up), data(2.0, up), data(3.0, up), data(4.0, down)];
        let folded = fold_data(lines);
        assert_eq!(folded.len(), 2);
        assert!(
            folded[0].text.ends_with("(+2 more data packets)"),
            "{}",
            folded[0].text
        );
        assert!(!folded[1].text.contains("more"));
    }

    #[test]
    fn missing_run_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(build(dir.path(), Some(0), None).is_err());
    }
}
