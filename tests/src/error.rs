//! The harness's error type: one variant per step of building or driving a fixture, so a
//! failing end-to-end test says which part of the lab broke.

use std::path::PathBuf;

/// What went wrong while setting up or driving an end-to-end fixture.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("prerequisite missing: {0}")]
    MissingPrerequisite(String),

    #[error("daemon binary {} not found: build it first: cargo build -p jitwgd", path.display())]
    DaemonBinaryMissing { path: PathBuf },

    /// Boxed: lab errors are large and every harness call returns this type.
    #[error("lab")]
    Lab(#[source] Box<jitwg::lab::LabError>),

    #[error("control plane")]
    ControlPlane(#[source] Box<jitwg::controlplane::ControlPlaneError>),

    /// Building or driving the lab (the driver's builder reports these).
    #[error("lab builder")]
    Run(#[source] Box<jitwg::run::RunError>),

    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} did not happen within {secs:.1}s{detail}")]
    Timeout {
        what: String,
        secs: f64,
        detail: String,
    },

    #[error("metrics endpoint: {0}")]
    Metrics(String),

    #[error("boringtun client: {0}")]
    Client(String),
}

impl From<jitwg::lab::LabError> for HarnessError {
    fn from(e: jitwg::lab::LabError) -> Self {
        HarnessError::Lab(Box::new(e))
    }
}

impl From<jitwg::controlplane::ControlPlaneError> for HarnessError {
    fn from(e: jitwg::controlplane::ControlPlaneError) -> Self {
        HarnessError::ControlPlane(Box::new(e))
    }
}

impl From<jitwg::run::RunError> for HarnessError {
    fn from(e: jitwg::run::RunError) -> Self {
        HarnessError::Run(Box::new(e))
    }
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}
