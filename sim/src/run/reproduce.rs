//! The run's side of reproducing it: `--capture` set up before the lab is built (key log
//! written, capture file created) and summed up after, and `results.rerun`, how the run was
//! asked for, so `jitwg rerun` can ask again.

use std::path::Path;

use crate::capture::keylog::KeyLog;
use crate::capture::{CaptureOptions, Recorder};
use crate::scenario::Scenario;

use super::daemon_config;
use super::lab::LabSpec;
use super::{RunError, RunOptions};

/// Writes the key log and creates the capture file (see [`crate::capture::prepare`]).
pub(super) fn prepare_capture(
    scenario: &Scenario,
    spec: &LabSpec,
    out: &Path,
    options: CaptureOptions,
) -> Result<Recorder<std::io::BufWriter<std::fs::File>>, RunError> {
    let keys = KeyLog::new(
        spec.gateway_private_key,
        scenario.clients.iter().map(|c| c.identity.private_key),
    );
    let uplink = crate::lab::names::Names::new(spec.run_id.clone()).veth_gw_to_client();
    crate::capture::prepare(out, options, &uplink, &keys).map_err(RunError::CaptureSetup)
}

/// `results.capture`: the files and what they hold.
pub(super) fn capture_info(
    scenario: &Scenario,
    options: CaptureOptions,
    summary: crate::capture::CaptureSummary,
) -> jitwg_reports::CaptureInfo {
    jitwg_reports::CaptureInfo {
        file: crate::capture::CAPTURE_FILE.into(),
        keylog: crate::capture::KEYLOG_FILE.into(),
        keys: scenario.clients.len() as u64 + 1,
        limit: options.limit.to_string(),
        packets: summary.packets,
        bytes: summary.bytes,
        limit_reached: summary.limit_reached,
        kernel_drops: summary.kernel_drops,
    }
}

/// `results.rerun`: how this run was asked for, beyond the resolved scenario.
pub(super) fn rerun_info(scenario: &Scenario, opts: &RunOptions) -> jitwg_reports::RerunInfo {
    let daemon_settings = daemon_config::describe(scenario)
        .map(|settings| {
            settings
                .into_iter()
                .map(|s| (s.key.to_string(), s.value))
                .collect()
        })
        .unwrap_or_default();
    jitwg_reports::RerunInfo {
        overrides: opts.overrides_text.clone(),
        daemon_settings,
        event_log: opts.keep_event_log(),
        capture_limit: opts.capture.map(|c| c.limit.as_arg()),
    }
}
