//! HTTP GETs against the daemon's metrics endpoint, which listens on loopback inside the gateway
//! namespace: a runtime thread in that namespace makes the requests on behalf of the driver.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::lab::netns::NsThread;
use crate::lab::{LabError, Namespace, RuntimeFlavor};

/// How long one probe request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("the gateway probe thread has stopped")]
    Stopped,
    #[error("GET {url}: {message}")]
    Request { url: String, message: String },
}

struct Request {
    path: &'static str,
    reply: oneshot::Sender<Result<(u16, String), ProbeError>>,
}

/// Sends requests to the probe thread (cheap to clone).
#[derive(Clone)]
pub struct ProbeClient {
    tx: mpsc::Sender<Request>,
}

impl ProbeClient {
    /// GETs `path` and returns the status and body.
    pub async fn get(&self, path: &'static str) -> Result<(u16, String), ProbeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { path, reply })
            .await
            .map_err(|_| ProbeError::Stopped)?;
        rx.await.map_err(|_| ProbeError::Stopped)?
    }

    /// Whether `/ready` answers 200 right now.
    pub async fn is_ready(&self) -> bool {
        matches!(self.get("/ready").await, Ok((200, _)))
    }
}

/// The probe thread; dropping it stops and joins the thread.
pub struct Probe {
    /// Dropping or sending stops the thread even while clients are still held elsewhere.
    stop: Option<oneshot::Sender<()>>,
    client: Option<ProbeClient>,
    thread: Option<NsThread<Result<(), LabError>>>,
}

impl Probe {
    /// Starts a thread in `ns` that serves GETs to `http://{target}{path}`.
    pub fn start(ns: &Namespace, target: SocketAddr) -> Result<Probe, LabError> {
        let (tx, mut rx) = mpsc::channel::<Request>(64);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = ns.spawn_runtime_thread(
            "gw-probe",
            RuntimeFlavor::CurrentThread,
            move || async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(REQUEST_TIMEOUT)
                    .build();
                loop {
                    let req = tokio::select! {
                        _ = &mut stopped => break,
                        req = rx.recv() => match req {
                            Some(req) => req,
                            None => break,
                        },
                    };
                    let url = format!("http://{target}{}", req.path);
                    let Ok(http) = http.as_ref() else {
                        let _ = req.reply.send(Err(ProbeError::Request {
                            url,
                            message: "HTTP client could not be built".into(),
                        }));
                        continue;
                    };
                    let http = http.clone();
                    tokio::spawn(async move {
                        let result =
                            fetch(&http, &url)
                                .await
                                .map_err(|message| ProbeError::Request {
                                    url: url.clone(),
                                    message,
                                });
                        // The asker may have given up; nothing to do then.
                        let _ = req.reply.send(result);
                    });
                }
            },
        )?;
        Ok(Probe {
            stop: Some(stop),
            client: Some(ProbeClient { tx }),
            thread: Some(thread),
        })
    }

    pub fn client(&self) -> Option<ProbeClient> {
        self.client.clone()
    }
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let resp = http.get(url).send().await.map_err(|e| format!("{e:#}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("{e:#}"))?;
    Ok((status, body))
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once every clone is gone.
        self.client = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if let Err(e) = t.join() {
                tracing::warn!(error = %e, "gateway probe thread");
            }
        }
    }
}
