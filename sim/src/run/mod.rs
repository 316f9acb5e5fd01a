//! One scenario run, end to end: check the machine, build the lab (namespaces, data plane,
//! control plane, NATS, `jitwgd`), run the client fleet while sampling the gateway every second
//! and firing the scenario's timed events, then tear everything down and hand back `Results`.
//! The CLI (`cli.rs`) prints and writes reports; this module never exits the process.

pub mod api_count;
pub mod attacks;
pub mod channel;
pub(crate) mod context;
pub mod daemon_config;
pub mod info;
pub mod integrity;
pub mod lab;
pub(crate) mod orchestrate;
pub mod prereq;
pub mod probe;
pub mod prometheus;
mod reproduce;
pub(crate) mod results;
pub mod services;
pub mod stage_time;
pub mod stale;
pub(crate) mod timeline;
pub mod tracker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::controlplane::ControlPlaneError;
use crate::lab::names::RunId;
use crate::lab::LabError;
use crate::scenario::{Adjustments, Scenario, ScenarioError};

pub use orchestrate::gateway_private_key;
pub use prereq::SetupError;

/// UDP port of the gateway's WireGuard interface.
pub const WG_PORT: u16 = 51820;
/// Port of the control-plane HTTP API (on the control-plane namespace's address).
pub const CONTROL_PLANE_PORT: u16 = 8080;
/// Port of `nats-server` in push mode (on the control-plane namespace's address).
pub const NATS_PORT: u16 = 4222;
/// Where `jitwgd` serves `/metrics` and `/ready`, on loopback inside the gateway namespace.
pub const METRICS_PORT: u16 = 9187;
/// The NATS subject peer documents are pushed on.
pub const NATS_SUBJECT: &str = "jitwg.peers";
/// How long the daemon may take to become ready at start and after a reboot.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// `JITWGD_LOG` of the driver's daemon: info, without netlink's per-message chatter.
pub const DAEMON_LOG_FILTER: &str = "info,netlink_packet_route=error";
/// How long the fleet may take to stop after it was cancelled.
pub const FLEET_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario_file: PathBuf,
    pub adjustments: Adjustments,
    /// Output directory; `None`: `target/jitwg/<name>-<run id>`.
    pub out: Option<PathBuf>,
    /// No progress bar.
    pub quiet: bool,
    /// Write every client's protocol events to `OUT/client-events.jsonl`.
    pub event_log: bool,
    /// `--capture`: a pcapng of the gateway's uplink and a WireGuard key log (implies
    /// `event_log`).
    pub capture: Option<crate::capture::CaptureOptions>,
    /// The `--set` overrides as the user wrote them, recorded for `jitwg rerun`.
    pub overrides_text: Vec<String>,
}

impl RunOptions {
    /// Whether the fleet's event log is kept after the run.
    pub fn keep_event_log(&self) -> bool {
        self.event_log || self.capture.is_some()
    }
}

/// What a finished (or interrupted) run produced. The results are saved already.
#[derive(Debug)]
pub struct RunOutcome {
    pub results: jitwg_reports::Results,
    pub out_dir: PathBuf,
    pub results_path: PathBuf,
    /// The run was stopped by SIGINT/SIGTERM before its end: the results are partial.
    pub interrupted: bool,
}

impl RunOutcome {
    /// Every expectation held and the run was not cut short.
    pub fn passed(&self) -> bool {
        !self.interrupted && jitwg_reports::all_passed(&self.results.expectations)
    }
}

/// Why a run failed. [`RunError::kind`] sorts them into the CLI's exit codes.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{what}")]
    Lab {
        what: &'static str,
        #[source]
        source: Box<LabError>,
    },
    #[error("starting the control plane: {0}")]
    ControlPlaneStart(String),
    #[error("registering peers with the control plane")]
    Register(#[source] ControlPlaneError),
    #[error("jitwgd did not become ready within {waited:?} ({reason}); its log {} ends with:\n{tail}", log.display())]
    DaemonNotReady {
        waited: Duration,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("writing {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the run's state directory (for its SQLite databases) in {}", parent.display())]
    StateDir {
        parent: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seeding jitwgd's database {} with the scenario's stored_peers", db.display())]
    SeedStore {
        db: std::path::PathBuf,
        #[source]
        source: jitwgd::store::StoreError,
    },
    #[error("rendering the jitwgd config")]
    DaemonConfig(#[source] toml::ser::Error),
    #[error("saving results")]
    Save(#[source] jitwg_reports::SaveError),
    #[error("the client fleet failed")]
    Fleet(#[source] crate::client::ClientError),
    #[error("an attacking population failed")]
    Attack(#[source] crate::client::attack::AttackError),
    #[error("building the packets of attack {name}")]
    AttackPackets {
        name: String,
        #[source]
        source: crate::client::attack::packets::PacketError,
    },
    #[error("attack thread")]
    AttackThread(#[source] Box<LabError>),
    #[error("the client fleet did not stop within {0:?} of being cancelled")]
    FleetStuck(Duration),
    #[error("client fleet thread")]
    FleetThread(#[source] Box<LabError>),
    #[error(
        "interrupted during setup (SIGINT or SIGTERM); everything started so far was torn down"
    )]
    InterruptedDuringSetup,
    #[error("--capture cannot work here")]
    CaptureSetup(#[source] crate::capture::CaptureError),
    #[error("capturing the gateway's uplink")]
    Capture(#[source] crate::capture::CaptureError),
    #[error("building the driver's tokio runtime")]
    Runtime(#[source] std::io::Error),
}

impl RunError {
    /// A lab step that failed, named by what the run was doing.
    pub fn lab(what: &'static str) -> impl FnOnce(LabError) -> RunError {
        move |source| RunError::Lab {
            what,
            source: Box::new(source),
        }
    }
}

/// The three kinds of failure the CLI tells apart by exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The scenario (or a `--set`) is invalid: exit 2.
    Invalid,
    /// The machine lacks something or the lab could not be built: exit 3.
    Setup,
    /// A bug or an unexpected runtime failure: exit 4.
    Internal,
    /// Stopped by the user before the run began: exit 1, like an interrupted run.
    Interrupted,
}

impl RunError {
    pub fn kind(&self) -> FailureKind {
        match self {
            RunError::Scenario(_) => FailureKind::Invalid,
            RunError::Setup(_)
            | RunError::Lab { .. }
            | RunError::ControlPlaneStart(_)
            | RunError::StateDir { .. }
            | RunError::CaptureSetup(_)
            | RunError::DaemonNotReady { .. } => FailureKind::Setup,
            RunError::InterruptedDuringSetup => FailureKind::Interrupted,
            _ => FailureKind::Internal,
        }
    }
}

/// The default output directory of a run: `target/jitwg/<name>-<run id>`.
pub fn default_out_dir(scenario_name: &str, run_id: &RunId) -> PathBuf {
    Path::new("target")
        .join("jitwg")
        .join(format!("{scenario_name}-{run_id}"))
}

/// Validates the scenario and runs it (see the module docs). Blocks until the run is over and
/// everything it started is gone.
pub fn run(opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let scenario = crate::scenario::load(&opts.scenario_file, &opts.adjustments)?;
    run_scenario(scenario, opts)
}

/// Runs an already resolved scenario.
pub fn run_scenario(scenario: Scenario, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    // Two workers: setup and reboots block one in `block_in_place` while the other samples.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(orchestrate::execute(scenario, opts))
}
