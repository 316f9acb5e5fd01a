//! What a running scenario carries through its loop: the lab, the client fleet's thread and
//! its live counters, the scenario and the run's time origin. One struct, so the timeline's
//! actions and samples take it instead of a long list of arguments.

use std::sync::Arc;
use std::time::Duration;

use jitwg_reports::ClientResult;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, FleetProgress};
use crate::lab::netns::NsThread;
use crate::lab::LabError;
use crate::scenario::Scenario;

use super::lab::Lab;
use super::{RunError, FLEET_STOP_TIMEOUT};

pub(crate) type FleetOutput = Result<Result<Vec<ClientResult>, ClientError>, LabError>;

/// A run in progress. Fields drop in declaration order: the fleet stops before the lab.
pub(crate) struct RunContext<'a> {
    pub fleet: FleetThread,
    pub lab: Lab,
    pub scenario: &'a Scenario,
    pub progress: Arc<FleetProgress>,
    /// Time zero of the run: events and samples are stamped relative to it.
    pub origin: Instant,
}

impl RunContext<'_> {
    /// Milliseconds since the run's origin.
    pub fn now_ms(&self) -> f64 {
        ms(self.origin.elapsed())
    }

    /// Whether every client is done (or the fleet never started).
    pub fn fleet_done(&self) -> bool {
        self.fleet.thread.as_ref().is_none_or(NsThread::is_finished)
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The fleet's runtime thread and the token that stops it.
pub(crate) struct FleetThread {
    pub cancel: CancellationToken,
    pub thread: Option<NsThread<FleetOutput>>,
}

impl FleetThread {
    /// Cancels the fleet and waits (up to [`FLEET_STOP_TIMEOUT`]) for its results.
    pub async fn finish(&mut self) -> Result<Vec<ClientResult>, RunError> {
        self.cancel.cancel();
        let deadline = Instant::now() + FLEET_STOP_TIMEOUT;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return Err(RunError::FleetStuck(FLEET_STOP_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match self.thread.take() {
            None => Ok(Vec::new()),
            Some(t) => t
                .join()
                .and_then(|r| r)
                .map_err(|e| RunError::FleetThread(Box::new(e)))?
                .map_err(RunError::Fleet),
        }
    }
}

impl Drop for FleetThread {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            super::lab::blocking(|| stop(t));
        }
    }
}

/// Waits for a cancelled fleet thread; detaches it when it does not stop in time.
fn stop(t: NsThread<FleetOutput>) {
    // A fleet that ignores cancellation would block teardown forever: detach it then.
    let deadline = std::time::Instant::now() + FLEET_STOP_TIMEOUT;
    while !t.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if t.is_finished() {
        let _ = t.join();
    } else {
        tracing::error!("client fleet did not stop; leaving its thread behind");
    }
}
