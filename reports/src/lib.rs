//! Results of jitwg runs: the versioned results schema the driver fills, the figures computed from it,
//! expectation gates for CI, comparisons, charts and HTML/Markdown reports.
//!
//! **Invariant:** this is the only crate that draws (plotters); it depends on neither `sim` nor `jitwgd`.

pub mod expect;
pub mod figures;
pub mod schema;

pub use expect::{all_passed, evaluate, parse_expectations, ExpectError, Expectation};
pub use figures::{figure, Better, FigureDef, Figures, Unit, FIGURES};
pub use schema::{
    load, save, ApiSummary, ClientResult, CompareOp, Connection, Event, EventKind, ExpectationResult,
    LoadError, ProcessUsage, Reload, Results, RunInfo, Sample, SaveError, ToolInfo, SCHEMA_VERSION,
};
