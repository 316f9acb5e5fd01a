//! `jitwg`, the scenario driver's binary: parse arguments, run the library, print the whole error
//! chain and exit with the documented code (see `jitwg --help`).

use std::io::IsTerminal;

use clap::Parser;
use jitwg::cli::{dispatch, Cli, ExitCode};

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JITWG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,boringtun=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Ok
            };
            // Printing help or the version can only fail if stdout is gone; exit anyway.
            let _ = e.print();
            std::process::exit(code.code());
        }
    };
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            e.code
        }
    };
    std::process::exit(code.code());
}
