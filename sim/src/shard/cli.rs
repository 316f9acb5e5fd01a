//! `jitwg merge` and the common ending of every command that merges: write the merged results,
//! the report and the summary, and turn the expectations into the exit code.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{CliError, ExitCode};

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Result directories (or results.json files): every shard's, and the gateway's series.
    #[arg(required = true, value_name = "DIR")]
    pub inputs: Vec<PathBuf>,
    /// Where the merged results.json and the report go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `jitwg merge`: refusing shards of different scenarios or seeds is a usage error.
pub fn merge(args: MergeArgs) -> Result<ExitCode, CliError> {
    finish_merge(&args.inputs, &args.out)
}

/// Merges `inputs` into `out`, writes the report and prints the summary.
pub fn finish_merge(inputs: &[PathBuf], out: &Path) -> Result<ExitCode, CliError> {
    let (merged, path) =
        super::merge::merge_dirs(inputs, out).map_err(|e| CliError::new(ExitCode::Usage, e))?;
    let report = jitwg_reports::write_report(&merged, out)
        .context("writing the report")
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    print!("{}", jitwg_reports::text_summary(&merged));
    if let Some(setup) = &merged.run.merged_setup {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3} ms"));
        println!(
            "merged HDR histogram of {} shards: setup p50 {}, p90 {}, p99 {}, max {}",
            merged.run.shards.len(),
            ms(setup.p50_ms),
            ms(setup.p90_ms),
            ms(setup.p99_ms),
            ms(setup.max_ms)
        );
    }
    for shard in &merged.run.shards {
        let load = shard.load.as_ref();
        println!(
            "shard {}/{}: {} clients, {} connected, {} source addresses, lag p99 {}, receive lag p99 {}, clock offset {}{}",
            shard.index,
            shard.count,
            shard.clients,
            shard.connected,
            shard.source_addresses,
            load.and_then(|l| l.lag_p99_ms)
                .map_or("-".into(), |v| format!("{v:.1} ms")),
            load.and_then(|l| l.rx_lag_p99_ms)
                .map_or("-".into(), |v| format!("{v:.1} ms")),
            shard
                .clock_offset_ms
                .map_or("-".into(), |v| format!("{v:.1} ms")),
            if load.is_some_and(|l| l.saturated) { ", SATURATED" } else { "" }
        );
    }
    for e in merged.expectations.iter().filter(|e| !e.passed) {
        println!("breach: {}", e.expr);
    }
    println!("results: {}", path.display());
    println!("report: {}", report.html.display());
    Ok(if jitwg_reports::all_passed(&merged.expectations) {
        ExitCode::Ok
    } else {
        ExitCode::Breach
    })
}
