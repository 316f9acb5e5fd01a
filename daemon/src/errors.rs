//! Errors at the daemon's top: `DaemonError`, what stopped it from starting or running
//! (and which of those are setup errors, exit 3), and `Causes`, printing an error with all
//! its causes on one log line (`top: cause: root`), the same shape `main` prints with
//! anyhow's `{:#}`; `%e` alone would drop the causes.

use std::error::Error;
use std::fmt;

use crate::api::ApiError;
use crate::boot::BootError;
use crate::capture::CaptureError;
use crate::dataplane::DataPlaneError;
use crate::identify_pool::PoolStartError;
use crate::install::InstallError;
use crate::metrics::MetricsError;
use crate::push::PushError;
use crate::shield::TcError;
use crate::store::StoreCallError;

/// What stopped the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Its messages already say which interface and what to do.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("setting up the peer database failed")]
    Store(#[source] StoreCallError),
    #[error("opening the capture socket failed")]
    Capture(#[source] CaptureError),
    #[error("starting the metrics endpoint failed")]
    Metrics(#[source] MetricsError),
    #[error("setting up the control-plane client failed")]
    Api(#[source] ApiError),
    #[error("subscribing to pushed peers (NATS) failed")]
    Push(#[source] PushError),
    #[error("starting the install worker failed")]
    Install(#[source] InstallError),
    #[error("starting the identify workers failed")]
    IdentifyPool(#[source] PoolStartError),
    #[error("setting up the kernel shield failed (--shield-filters 0 turns it off)")]
    Shield(#[source] TcError),
    #[error("boot failed")]
    Boot(#[from] BootError),
    #[error("configuration: {0}")]
    Config(&'static str),
    /// A task the daemon cannot run without ended before shutdown (the NATS subscription
    /// closed, the metrics server failed, capture panicked, the install worker died).
    /// The exit code is then 1, so a supervisor's `Restart=on-failure` restarts it.
    #[error("the {task} stopped unexpectedly")]
    TaskDied {
        task: &'static str,
        #[source]
        cause: Option<TaskCause>,
    },
}

/// Why a task ended: its own error, or its panic.
pub type TaskCause = Box<dyn Error + Send + Sync + 'static>;

impl DaemonError {
    /// Errors that mean "the environment is not set up" (exit code 3) rather than a
    /// failure while running.
    pub fn is_setup_error(&self) -> bool {
        matches!(
            self,
            DaemonError::DataPlane(_)
                | DaemonError::Capture(_)
                | DaemonError::Metrics(_)
                | DaemonError::Store(_)
                | DaemonError::Install(_)
                | DaemonError::IdentifyPool(_)
                | DaemonError::Shield(_)
        )
    }
}

/// Displays an error followed by each of its sources, separated by `: `.
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_appears_once_in_order() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Causes(&e).to_string(), "outer: inner");
    }

    /// The exit line names the errno once, however deep it sits.
    #[test]
    fn daemon_errors_print_each_cause_once_from_top_to_errno() {
        use crate::capture::CaptureError;
        use crate::daemon::DaemonError;
        use crate::dataplane::DataPlaneError;
        use crate::install::InstallError;
        let errno = || std::io::Error::from_raw_os_error(libc::EPERM);
        let cases = [
            DaemonError::Capture(CaptureError::Bind(errno())),
            DaemonError::DataPlane(DataPlaneError::Apply {
                name: "wg0".into(),
                source: errno(),
            }),
            DaemonError::Install(InstallError::Spawn(errno())),
            DaemonError::TaskDied {
                task: "metrics endpoint",
                cause: Some(Box::new(errno())),
            },
        ];
        for e in cases {
            let line = Causes(&e).to_string();
            assert_eq!(line, format!("{:#}", anyhow::Error::from(e)));
            assert_eq!(line.matches("Operation not permitted").count(), 1, "{line}");
        }
    }
}
