//! The run's long-lived collaborators, each behind a guard that stops it on drop: the control
//! plane on a runtime thread in the control-plane namespace, `nats-server` (push mode) and
//! `jitwgd` as child processes.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::controlplane::{
    ControlPlane, ControlPlaneConfig, ControlPlaneError, ControlPlaneHandle,
};
use crate::lab::netns::NsThread;
use crate::lab::process::{spawn_in, Child};
use crate::lab::{LabError, Namespace, RuntimeFlavor};

use super::RunError;

/// How long the control plane waits for `nats-server` to accept connections.
const NATS_STARTUP: Duration = Duration::from_secs(10);

type ServeResult = Result<Result<(), ControlPlaneError>, LabError>;

/// The control plane serving HTTP in its namespace; dropping it shuts the server down and joins.
pub struct ControlPlaneService {
    handle: ControlPlaneHandle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<NsThread<ServeResult>>,
}

impl ControlPlaneService {
    /// Opens the control plane inside `ns` (after NATS accepts connections, in push mode) and
    /// serves it on `listen`; returns once it is listening.
    pub async fn start(
        ns: &Namespace,
        listen: SocketAddr,
        cfg: ControlPlaneConfig,
        nats: Option<SocketAddr>,
    ) -> Result<ControlPlaneService, RunError> {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<ControlPlaneHandle, String>>();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let thread = ns
            .spawn_runtime_thread(
                "control-plane",
                RuntimeFlavor::MultiThread { workers: 1 },
                move || async move {
                    if let Some(addr) = nats {
                        if let Err(e) = wait_for_tcp(addr, NATS_STARTUP).await {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    }
                    let listener = match tokio::net::TcpListener::bind(listen).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("binding {listen}: {e}")));
                            return Ok(());
                        }
                    };
                    let cp = match ControlPlane::open(cfg).await {
                        Ok(cp) => cp,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{:#}", anyhow::Error::new(e))));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok(cp.handle()));
                    cp.serve(listener, async {
                        let _ = shutdown_rx.await;
                    })
                    .await
                },
            )
            .map_err(RunError::lab("starting the control-plane thread"))?;
        let mut service = ControlPlaneService {
            handle: match ready_rx.await {
                Ok(Ok(handle)) => handle,
                Ok(Err(message)) => return Err(RunError::ControlPlaneStart(message)),
                Err(_) => {
                    let message = match thread.join() {
                        Err(e) => format!("{e}"),
                        Ok(_) => "the control-plane thread ended before serving".into(),
                    };
                    return Err(RunError::ControlPlaneStart(message));
                }
            },
            shutdown: Some(shutdown),
            thread: None,
        };
        service.thread = Some(thread);
        Ok(service)
    }

    pub fn handle(&self) -> &ControlPlaneHandle {
        &self.handle
    }
}

impl Drop for ControlPlaneService {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "control plane stopped with an error"),
                Ok(Err(e)) | Err(e) => tracing::warn!(error = %e, "control-plane thread"),
            }
        }
    }
}

async fn wait_for_tcp(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "nats-server at {addr} did not accept connections within {within:?}: {e}"
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A log file both stdout and stderr of a child append to.
fn log_stdio(path: &Path) -> Result<(Stdio, Stdio), RunError> {
    let out_err = |source| RunError::Output {
        path: path.to_path_buf(),
        source,
    };
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(out_err)?;
    let second = file.try_clone().map_err(out_err)?;
    Ok((Stdio::from(file), Stdio::from(second)))
}

/// Starts `nats-server` listening on `addr` inside `ns`, logging to `log`.
pub fn start_nats(
    ns: &Namespace,
    program: &Path,
    addr: SocketAddr,
    log: &Path,
) -> Result<Child, RunError> {
    let (stdout, stderr) = log_stdio(log)?;
    let mut cmd = Command::new(program);
    cmd.arg("-a")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    spawn_in(ns, cmd).map_err(RunError::lab("starting nats-server"))
}

/// How to (re)start the daemon.
#[derive(Debug, Clone)]
pub struct DaemonLaunch {
    pub program: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// `JITWGD_LOG`: the driver's is [`super::DAEMON_LOG_FILTER`], tests ask for `debug`.
    pub log_filter: String,
}

/// Starts `jitwgd --config CONFIG` inside `ns` with `JITWGD_LOG` set, appending to its log.
pub fn start_daemon(ns: &Namespace, launch: &DaemonLaunch) -> Result<Child, RunError> {
    let (stdout, stderr) = log_stdio(&launch.log)?;
    let mut cmd = Command::new(&launch.program);
    cmd.arg("--config")
        .arg(&launch.config)
        .env("JITWGD_LOG", &launch.log_filter)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    spawn_in(ns, cmd).map_err(RunError::lab("starting jitwgd"))
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            let text = String::from_utf8_lossy(&bytes[start..]).trim().to_string();
            if text.is_empty() {
                "(empty log)".into()
            } else {
                text
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
