//! Results of jitwg runs: the versioned results schema the driver fills, the figures computed from it,
//! expectation gates for CI, comparisons, charts and HTML/Markdown reports.
//!
//! **Invariant:** this is the only crate that draws (plotters); it depends on neither `sim` nor `jitwgd`.

pub mod api_check;
pub mod attack;
pub mod charts;
pub mod compare;
pub mod expect;
pub mod figures;
pub mod html;
pub mod load;
pub mod markdown;
pub mod model;
pub mod schema;
pub mod shards;
pub mod summary;
pub mod sweep;

use std::path::{Path, PathBuf};

pub use api_check::{api_accounting, ApiAccounting};
pub use charts::ChartError;
pub use compare::{compare, Comparison, ComparisonRow, Verdict};
pub use expect::{all_passed, evaluate, parse_expectations, ExpectError, Expectation};
pub use figures::{figure, nearest_rank, Better, FigureDef, Figures, Unit, FIGURES};
pub use load::{assess as assess_load, DriverMeasures, LoadSummary, RxLagWindow, LAG_P99_LIMIT_MS};
pub use schema::{
    load, save, ApiSummary, AttackResult, CaptureInfo, ClientResult, CompareOp, Connection,
    CpuSplitInfo, Event, EventKind, ExpectationResult, GatewayUdp, LoadError, ProcessUsage, Reload,
    RerunInfo, Results, RunInfo, Sample, SaveError, StageTime, ToolInfo, BY_STATUS_ABORTED,
    BY_STATUS_PENDING, RECOVERY_WINDOW_MS, SCHEMA_VERSION,
};
pub use shards::{merge_setup, MergedSetup, ShardInfo};
pub use summary::{text_summary, DEFAULT_TOLERANCE, GLOSSARY};

/// File name of the HTML report inside the output directory.
pub const HTML_FILE: &str = "report.html";
/// File name of the Markdown summary inside the output directory.
pub const MARKDOWN_FILE: &str = "summary.md";

/// Where a report was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    pub html: PathBuf,
    pub markdown: PathBuf,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot create report directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write report file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Chart(#[from] ChartError),
    #[error("a comparison needs at least one results file")]
    NoRuns,
}

/// Renders `report.html` + `summary.md` for one run into `out_dir` (created if missing).
pub fn write_report(results: &Results, out_dir: &Path) -> Result<ReportPaths, ReportError> {
    let html = html::render(results)?;
    let markdown = markdown::render(results);
    write_files(out_dir, &html, &markdown)
}

/// Comparison of several runs (labels e.g. file stems or scenario names), first = baseline, with
/// [`DEFAULT_TOLERANCE`]. A single run renders as a comparison with nothing to compare against.
pub fn write_comparison(
    runs: &[(String, Results)],
    out_dir: &Path,
) -> Result<ReportPaths, ReportError> {
    if runs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    let html = html::render_comparison(runs, DEFAULT_TOLERANCE)?;
    let markdown = markdown::render_comparison(runs, DEFAULT_TOLERANCE);
    write_files(out_dir, &html, &markdown)
}

pub(crate) fn write_files(
    out_dir: &Path,
    html: &str,
    markdown: &str,
) -> Result<ReportPaths, ReportError> {
    std::fs::create_dir_all(out_dir).map_err(|source| ReportError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let paths = ReportPaths {
        html: out_dir.join(HTML_FILE),
        markdown: out_dir.join(MARKDOWN_FILE),
    };
    for (path, text) in [(&paths.html, html), (&paths.markdown, markdown)] {
        std::fs::write(path, text).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}
