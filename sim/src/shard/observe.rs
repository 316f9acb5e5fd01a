//! What a fleet observes of its own clients beyond their results, because the gateway cannot:
//! how many are connected and in flight, sampled once per sample period on the common clock
//! (the counters `jitwg run` samples), and each client's recovery after the gateway's first
//! reboot, computed by the single-machine path's own code (`RecoveryWatch`, `read_replies`)
//! from the reboot marks the gateway publishes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jitwg_reports::shards::{ClientCount, ShardRecovery};
use jitwg_reports::RECOVERY_WINDOW_MS;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::FleetProgress;
use crate::run::timeline::read_replies;
use crate::run::tracker::RecoveryWatch;

use super::api::RebootMark;

fn count(progress: &FleetProgress, origin: Instant) -> ClientCount {
    let snap = progress.snapshot();
    ClientCount {
        t_ms: origin.elapsed().as_secs_f64() * 1000.0,
        connected: snap.connected_now,
        in_flight: snap.in_flight,
    }
}

/// Samples `progress` at `origin`, `origin + every`, ... until `stop`, then once more (the
/// fleet has ended: nobody is connected any longer); returns the series.
pub fn sample_clients(
    progress: Arc<FleetProgress>,
    origin: Instant,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<Vec<ClientCount>> {
    tokio::spawn(async move {
        let mut series = Vec::new();
        let mut next = origin;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => break,
            }
            series.push(count(&progress, origin));
            next += every.max(Duration::from_millis(10));
        }
        series.push(count(&progress, origin));
        series
    })
}

/// This shard's clients' recovery after the reboot at `mark`, from the fleet's event log: the
/// clients of `continuous` (those sending traffic all along) that had a working tunnel just
/// before it, and each one's time to pass traffic again.
pub fn shard_recovery(
    event_log: &Path,
    continuous: &HashSet<u32>,
    mark: RebootMark,
) -> std::io::Result<ShardRecovery> {
    let mut watch = RecoveryWatch::new(mark.reboot_start_ms, mark.back_ms, RECOVERY_WINDOW_MS);
    read_replies(event_log, continuous, &mut watch)?;
    let (clients, recovered_ms) = watch.per_client();
    Ok(ShardRecovery {
        clients,
        recovered_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_recovery_uses_the_single_machine_definition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-events.jsonl");
        let lines = [
            // Client 3: up just before the reboot at 20 s, back at 22.5 s.
            r#"{"client":3,"t_ms":19900.0,"event":"echo_reply","connection":0,"detail":""}"#,
            r#"{"client":3,"t_ms":20010.0,"event":"echo_reply","connection":0,"detail":""}"#,
            r#"{"client":3,"t_ms":22500.0,"event":"echo_reply","connection":0,"detail":""}"#,
            // Client 6: up before, never back.
            r#"{"client":6,"t_ms":19950.0,"event":"echo_reply","connection":0,"detail":""}"#,
            // Client 9: not sending all along, ignored.
            r#"{"client":9,"t_ms":19950.0,"event":"echo_reply","connection":0,"detail":""}"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mark = RebootMark {
            reboot_start_ms: 20_000.0,
            back_ms: 20_050.0,
        };
        let r = shard_recovery(&path, &HashSet::from([3, 6]), mark).unwrap();
        assert_eq!(r.clients, 2);
        assert_eq!(r.recovered_ms, [2_500.0]);
        assert!(shard_recovery(&dir.path().join("none"), &HashSet::new(), mark).is_err());
    }

    #[tokio::test]
    async fn client_counts_are_sampled_each_period_and_once_at_the_end() {
        let progress = Arc::new(FleetProgress::default());
        let stop = CancellationToken::new();
        let origin = Instant::now();
        let task = sample_clients(progress, origin, Duration::from_millis(100), stop.clone());
        tokio::time::sleep(Duration::from_millis(250)).await;
        stop.cancel();
        let series = task.await.unwrap();
        let times: Vec<f64> = series.iter().map(|c| c.t_ms).collect();
        // At 0, 100 and 200 ms (later on a busy machine, never earlier), then at the stop.
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert!(times.len() >= 2, "{times:?}");
        let periodic = &times[..times.len() - 1];
        for (k, t) in periodic.iter().enumerate() {
            assert!(
                *t >= 100.0 * k as f64,
                "sample {k} before its time: {times:?}"
            );
        }
        assert!(times.last().is_some_and(|&t| t >= 250.0), "{times:?}");
        assert!(series.iter().all(|c| c.connected == 0 && c.in_flight == 0));
    }
}
