//! `jitwgd` binary: parse configuration, set up logging, run the daemon until SIGTERM
//! or SIGINT, and map failures to documented exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use jitwgd::config::{self, Args, LogFormat};
use tracing_subscriber::EnvFilter;

/// Exit codes (also listed in `--help`).
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_SETUP: u8 = 3;

fn main() -> ExitCode {
    let started = Instant::now();
    let args = Args::parse();
    let config = match config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jitwgd: configuration error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jitwgd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jitwgd: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting");
    let result = runtime.block_on(jitwgd::daemon::run(config, started, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain = anyhow::Error::from(e);
            tracing::error!(error = format!("{chain:#}"), "jitwgd failed");
            eprintln!("jitwgd: {chain:#}");
            let setup = chain
                .downcast_ref::<jitwgd::daemon::DaemonError>()
                .is_some_and(|e| e.is_setup_error());
            ExitCode::from(if setup { EXIT_SETUP } else { EXIT_RUNTIME })
        }
    }
}

fn init_logging(format: LogFormat) {
    // netlink_packet_route warns on every link dump of newer kernels (an attribute grew);
    // harmless, so it is quiet unless asked for.
    let filter = EnvFilter::try_from_env("JITWGD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers we can still honour Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
