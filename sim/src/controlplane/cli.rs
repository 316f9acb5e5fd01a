//! `jitwg control-plane`: run the control plane on its own, outside a scenario.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{serve, ControlPlaneConfig, FaultConfig, LatencyModel};

/// Command-line arguments of `jitwg control-plane`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// SQLite database file.
    #[arg(long, default_value = "cp.db")]
    pub db: PathBuf,
    /// NATS server URL for the legacy push (disabled when absent).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// NATS subject peer documents are published on.
    #[arg(long, default_value = "jitwg.peers")]
    pub nats_subject: String,
    /// Fixed latency added to every lookup ("5ms").
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Fraction of lookups answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Seed for latency and error draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs the control plane until Ctrl-C.
pub async fn run_cli(args: ControlPlaneArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        anyhow::bail!("--error-rate must be within 0..=1, got {}", args.error_rate);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let cfg = ControlPlaneConfig {
        db: args.db.clone(),
        nats: args.nats_url.map(|url| (url, args.nats_subject)),
        faults: FaultConfig {
            latency: args.latency.map(|delay| LatencyModel::Fixed { delay }),
            error_rate: args.error_rate,
            ..Default::default()
        },
        seed: args.seed,
        access: Default::default(),
    };
    tracing::info!(listen = %args.listen, db = %args.db.display(), "control plane serving");
    serve(listener, cfg, async {
        // If the signal handler cannot be installed, serve until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await
    .context("control plane")
}
