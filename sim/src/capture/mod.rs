//! `jitwg run --capture`: what a developer needs to read a peer storm packet by packet. A
//! pcapng of the gateway's uplink (the veth towards the clients, both directions), bounded by
//! `--capture-limit`, and `wg.keylog`, Wireshark's WireGuard key log with the gateway's and
//! every simulated client's static private key, so `tshark -o wg.keylog_file:wg.keylog`
//! decrypts each initiation's static key and timestamp in both directions.
//!
//! `limit` and `keylog` are pure; `socket` is the AF_PACKET socket; `recorder` writes the
//! pcapng; `reader` reads one back for `jitwg timeline`.

pub mod keylog;
pub mod limit;
pub mod reader;
pub mod recorder;
pub mod socket;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;

use crate::lab::{LabError, Namespace};

pub use limit::{CaptureLimit, LimitParseError};
pub use recorder::{CaptureSummary, Recorder};

/// The capture's file name in the run's output directory.
pub const CAPTURE_FILE: &str = "capture.pcapng";
/// The key log's file name in the run's output directory.
pub const KEYLOG_FILE: &str = "wg.keylog";

/// `jitwg run`'s capture flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// Capture the gateway's uplink into OUT/capture.pcapng and write OUT/wg.keylog, a
    /// WireGuard key log holding the gateway's and every client's PRIVATE key (mode 0600), so
    /// `tshark -r capture.pcapng -o wg.keylog_file:wg.keylog` decrypts every initiation's
    /// static key and timestamp. Implies --event-log. See `jitwg timeline` and `jitwg bundle`.
    #[arg(long)]
    pub capture: bool,
    /// Stop capturing after this many packets (`20000`) or bytes (`50MB`, `1GiB`).
    #[arg(
        long,
        value_name = "N|SIZE",
        default_value = "100MB",
        requires = "capture"
    )]
    pub capture_limit: CaptureLimit,
}

impl CaptureArgs {
    /// `None` without `--capture`.
    pub fn options(&self) -> Option<CaptureOptions> {
        self.capture.then_some(CaptureOptions {
            limit: self.capture_limit,
        })
    }
}

/// What `--capture` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOptions {
    pub limit: CaptureLimit,
}

/// Why the capture could not be set up or written.
#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("--capture needs an AF_PACKET socket (CAP_NET_RAW), and this process cannot open one")]
    Permission(#[source] std::io::Error),
    #[error("opening the capture socket on {interface}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering the gateway namespace to open the capture socket")]
    Namespace(#[source] Box<LabError>),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("the capture thread panicked")]
    Thread,
}

/// A capture in progress: a thread reading the uplink into the pcapng. [`Capture::stop`] ends
/// it and says what was written; dropping it stops it too (the summary is then lost).
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<CaptureSummary, CaptureError>>>,
}

impl Capture {
    /// Opens the capture socket on `interface` inside `ns` and starts recording into
    /// `recorder` (whose file was created before the run, see [`prepare`]).
    pub fn start(
        ns: &Namespace,
        interface: &str,
        recorder: Recorder<std::io::BufWriter<std::fs::File>>,
    ) -> Result<Capture, CaptureError> {
        let socket = ns
            .run(|| socket::UplinkSocket::open(interface))
            .map_err(|e| CaptureError::Namespace(Box::new(e)))?
            .map_err(|source| CaptureError::Socket {
                interface: interface.to_string(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || record(socket, recorder, &flag))
            .map_err(|source| CaptureError::Socket {
                interface: interface.to_string(),
                source,
            })?;
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops recording, flushes the file and says what it holds.
    pub fn stop(mut self) -> Result<CaptureSummary, CaptureError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| CaptureError::Thread)?,
            None => Err(CaptureError::Thread),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The capture thread: reads until told to stop (the socket's receive timeout bounds how
/// long that takes) or the limit is reached, then flushes.
fn record(
    socket: socket::UplinkSocket,
    mut recorder: Recorder<std::io::BufWriter<std::fs::File>>,
    stop: &AtomicBool,
) -> Result<CaptureSummary, CaptureError> {
    let mut buf = vec![0u8; socket::SNAPLEN as usize];
    while !stop.load(Ordering::Relaxed) && !recorder.full() {
        match socket.recv(&mut buf) {
            Ok(Some(packet)) => {
                recorder.write(packet.timestamp, packet.original_len, &buf[..packet.len])?
            }
            Ok(None) => {}
            Err(e) => {
                // The uplink went away (teardown) or the socket failed: keep what was written.
                tracing::warn!(error = %e, "capture socket failed; the capture ends here");
                break;
            }
        }
    }
    let dropped = socket.kernel_drops();
    recorder.finish(dropped)
}

/// Creates the run's capture file and writes the key log, before anything is started, so a
/// machine or directory that cannot take them fails the run early with a clear error. Also
/// checks that this process may open AF_PACKET sockets at all.
pub fn prepare(
    out: &Path,
    options: CaptureOptions,
    interface_name: &str,
    keys: &keylog::KeyLog,
) -> Result<Recorder<std::io::BufWriter<std::fs::File>>, CaptureError> {
    socket::check_permission().map_err(CaptureError::Permission)?;
    keys.write(&out.join(KEYLOG_FILE))?;
    let path = out.join(CAPTURE_FILE);
    let file = std::fs::File::create(&path).map_err(|source| CaptureError::Create {
        path: path.clone(),
        source,
    })?;
    Recorder::new(
        std::io::BufWriter::new(file),
        path,
        options.limit,
        interface_name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_cannot_take_the_files_fails_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the capture file should go: creating the file must fail.
        std::fs::create_dir(dir.path().join(CAPTURE_FILE)).unwrap();
        let err = prepare(
            dir.path(),
            CaptureOptions {
                limit: CaptureLimit::DEFAULT,
            },
            "veth0",
            &keylog::KeyLog::new([1; 32], []),
        )
        .err()
        .expect("prepare must fail");
        // Not root: the AF_PACKET check fails first; root: the file does.
        assert!(
            matches!(
                err,
                CaptureError::Permission(_) | CaptureError::Create { .. }
            ),
            "{err:?}"
        );
    }
}
