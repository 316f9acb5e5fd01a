//! The sweep's timer: every `sweep-every`, ask the install worker to sweep, then hand
//! the read's handshakes and endpoints to the activity record.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::activity::ActivityLog;
use crate::errors::Causes;
use crate::install::{InstallError, InstallQueue};

/// Start a sweep every `every`, evicting peers idle for longer than `evict_after`, and
/// record what each sweep read in `activity`.
pub async fn sweep_loop(
    queue: InstallQueue,
    activity: Arc<ActivityLog>,
    every: Duration,
    evict_after: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick fires at once; nothing is idle yet
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = SystemTime::now();
        let swept = queue.sweep(now, evict_after).await;
        if let Ok((_, read)) = &swept {
            if let Err(e) = activity.swept(read, now, evict_after).await {
                tracing::warn!(error = %Causes(&e), "recording peer activity failed");
            }
        }
        match swept.map(|(started, _)| started) {
            Ok(s) if s.selected > 0 => tracing::info!(
                installed = s.installed,
                evicting = s.selected,
                read_ms = s.read.as_secs_f64() * 1000.0,
                "sweep"
            ),
            Ok(s) => tracing::debug!(
                installed = s.installed,
                read_ms = s.read.as_secs_f64() * 1000.0,
                "sweep: nothing idle"
            ),
            Err(InstallError::WorkerGone) => return,
            Err(e) => {
                tracing::warn!(error = %Causes(&e), "sweep could not read the data plane")
            }
        }
    }
}
