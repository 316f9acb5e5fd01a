//! Sharded runs: the client fleet split over processes and machines, against one gateway.
//!
//! - [`gateway`]: `jitwg gateway`, the lab on a host's own interface plus the shard API;
//! - [`fleet`]: `jitwg fleet`, shard `I/N` of the scenario's clients;
//! - [`merge`]: `jitwg merge`, the shards' results and the gateway's series in one file, with
//!   percentiles from merged HDR histograms;
//! - [`local`]: `jitwg run --shards N`, the same split on one machine in namespaces;
//! - [`spec`] holds the pure rules (which clients, which sources, clock offset), [`api`] the
//!   shard API both sides speak.
//!
//! **Invariant:** a fleet sends only to the gateway address and control-plane URL it is given.

pub mod api;
pub mod cli;
pub mod fleet;
pub mod gateway;
pub mod local;
pub mod merge;
pub mod spec;

/// Sharded runs register keys and reach the control plane over plain HTTP: the run's CA, token
/// and client certificate live with the gateway and are not handed to fleets yet. Refused up
/// front (exit 2) instead of leaving fleets to time out against a TLS endpoint.
pub(crate) fn refuse_secured_control_plane(
    scenario: &crate::scenario::Scenario,
) -> Result<(), crate::cli::CliError> {
    let cp = &scenario.control_plane;
    if cp.tls || cp.token || cp.client_cert {
        return Err(crate::cli::CliError::new(
            crate::cli::ExitCode::Usage,
            anyhow::anyhow!(
                "sharded runs reach the control plane over plain HTTP: set [control_plane] tls, \
                 token and client_cert to false (e.g. --set control_plane.tls=false \
                 --set control_plane.token=false)"
            ),
        ));
    }
    Ok(())
}
