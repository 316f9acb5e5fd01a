//! The capacity-planning cost model: per-unit costs (CPU per arrival and handshake, memory per
//! installed peer, preload time per stored peer, eviction-sweep cost per installed peer, API
//! calls per arrival) and the storm knee, fitted by least squares from calibration runs (a
//! parameter sweep's points), with R², residuals and 95 % bands; predictions of a run's figures
//! and a fleet plan built on them; and an HTML fragment that shows how good each fit is.
//!
//! Pure: reads results files and returns numbers. `jitwg plan` is its command line.

pub mod batch;
pub mod calibrate;
pub mod fit;
pub mod fleet;
pub mod html;
pub mod knee;
pub mod point;
pub mod predict;
pub mod scenario;
pub mod select;
pub mod setup;
pub mod validate;
pub mod wave;

pub use batch::{BatchLaw, Batching};
pub use calibrate::{Calibration, CalibrationError, Fitted, Model, Unfitted, MIN_POINTS};
pub use fit::{Band, FitError, LinearFit, Weighting};
pub use fleet::{plan as plan_fleet, FleetInputs, FleetPlan};
pub use knee::KneeFit;
pub use point::{read_dir, CalPoint, CalibrationReadError, PREDICTED_FIGURES};
pub use predict::{predict, Predicted, Prediction};
pub use scenario::{DaemonDefaults, Planned, ScenarioReadError};
pub use validate::{validate, Check, Validation};

#[cfg(test)]
mod tests;
