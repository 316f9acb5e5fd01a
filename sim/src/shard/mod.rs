//! Sharded runs: the client fleet split over processes and machines, against one gateway.
//!
//! - [`gateway`]: `jitwg gateway`, the lab on a host's own interface plus the shard API;
//! - [`fleet`]: `jitwg fleet`, shard `I/N` of the scenario's clients;
//! - [`merge`]: `jitwg merge`, the shards' results and the gateway's series in one file, with
//!   percentiles from merged HDR histograms;
//! - [`local`]: `jitwg run --shards N`, the same split on one machine in namespaces;
//! - [`spec`] holds the pure rules (which clients, which sources, clock offset), [`api`] the
//!   shard API both sides speak, [`secure`] the run's CA and token handed to fleets, and
//!   [`observe`] what a fleet measures for the merge that the gateway cannot see (connected
//!   clients over time, per-client recovery after a reboot).
//!
//! **Invariant:** a fleet sends only to the gateway address and control-plane URL it is given.

pub mod api;
pub mod cli;
pub mod fleet;
pub mod gateway;
pub mod local;
pub mod merge;
pub mod observe;
pub mod secure;
pub mod spec;

use std::path::Path;

use anyhow::Context;

use crate::cli::{CliError, ExitCode, ScenarioArgs};
use crate::run::RunOptions;
use crate::scenario::Adjustments;

/// The gateway's own series cannot see the clients; the merge fills its samples' connected and
/// in-flight counts from the shards' series and drops this warning.
pub(crate) const GATEWAY_SERIES_WARNING: &str = "sharded run: the gateway's own samples do not \
    see the clients, so connected and in-flight clients read 0 here; the merged results count \
    them from the shards' own samples";

/// Sharded runs hand fleets the run's CA and token (`secure`), but not a client certificate:
/// a scenario asking for one is refused up front (exit 2) instead of leaving fleets to fail
/// their TLS handshakes.
pub(crate) fn refuse_client_cert(
    scenario: &crate::scenario::Scenario,
) -> Result<(), crate::cli::CliError> {
    if scenario.control_plane.client_cert {
        return Err(crate::cli::CliError::new(
            crate::cli::ExitCode::Usage,
            anyhow::anyhow!(
                "sharded runs do not hand fleets a client certificate: set \
                 [control_plane] client_cert = false (--set control_plane.client_cert=false); \
                 tls and token work"
            ),
        ));
    }
    Ok(())
}

/// The tokio runtime `jitwg gateway` and `jitwg fleet` run on: two workers, as `jitwg run`'s
/// (setup and reboots block one in `block_in_place` while the other samples or drives clients).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .map_err(|e| CliError::new(ExitCode::Internal, e))
}

/// A sharded run's options, the gateway's as a fleet's: results in `out`, no progress bar, no
/// capture, and the fleet's event log only where a restart's recovery is read from it.
pub(crate) fn run_options(
    scenario: &ScenarioArgs,
    adjustments: Adjustments,
    out: &Path,
) -> RunOptions {
    RunOptions {
        scenario_file: scenario.scenario.clone(),
        adjustments,
        out: Some(out.to_path_buf()),
        quiet: true,
        event_log: false,
        capture: None,
        overrides_text: scenario.set.clone(),
    }
}
