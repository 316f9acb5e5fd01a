//! The fleet's event log: JSON lines, one per client event, written by one task through one
//! buffered writer so thousands of clients never hold a file handle each.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub client: u32,
    /// Milliseconds since the run origin.
    pub t_ms: f64,
    pub event: &'static str,
    /// Which connection of the client (0-based), for behaviours that reconnect.
    pub connection: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why the event log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("creating event log {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing event log {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event log writer task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Cheap to clone; a disabled sink drops every record.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    tx: Option<mpsc::UnboundedSender<EventRecord>>,
}

impl EventSink {
    /// A sink that records nothing.
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Whether records go anywhere; callers skip building them when not.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, record: EventRecord) {
        if let Some(tx) = &self.tx {
            // The writer only stops after every sink is gone or after a write error (reported
            // by `EventLog::finish`), so a failed send loses nothing worth reporting twice.
            let _ = tx.send(record);
        }
    }
}

/// The writer task; `finish` flushes and reports the first write error.
#[derive(Debug)]
pub struct EventLog {
    task: JoinHandle<Result<u64, EventLogError>>,
}

impl EventLog {
    /// Creates (truncates) `path` and starts the writer task on the current runtime.
    pub async fn start(path: &Path) -> Result<(EventLog, EventSink), EventLogError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|source| EventLogError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_all(path.to_path_buf(), file, rx));
        Ok((EventLog { task }, EventSink { tx: Some(tx) }))
    }

    /// Waits until every sink is dropped and everything is on disk; returns the line count.
    pub async fn finish(self) -> Result<u64, EventLogError> {
        self.task.await.map_err(EventLogError::Task)?
    }
}

async fn write_all(
    path: PathBuf,
    file: tokio::fs::File,
    mut rx: mpsc::UnboundedReceiver<EventRecord>,
) -> Result<u64, EventLogError> {
    let write_err = |source| EventLogError::Write {
        path: path.clone(),
        source,
    };
    let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut lines = 0u64;
    let mut line = Vec::with_capacity(256);
    while let Some(record) = rx.recv().await {
        line.clear();
        serde_json::to_writer(&mut line, &record)
            .map_err(|e| write_err(std::io::Error::other(e)))?;
        line.push(b'\n');
        writer.write_all(&line).await.map_err(write_err)?;
        lines += 1;
    }
    writer.flush().await.map_err(write_err)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (log, sink) = EventLog::start(&path).await.unwrap();
        let other = sink.clone();
        sink.record(EventRecord {
            client: 3,
            t_ms: 1.5,
            event: "initiation_sent",
            connection: 0,
            detail: None,
        });
        other.record(EventRecord {
            client: 4,
            t_ms: 2.0,
            event: "gave_up",
            connection: 1,
            detail: Some("gave up after 90s".into()),
        });
        drop((sink, other));
        assert_eq!(log.finish().await.unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["client"], 3);
        assert_eq!(lines[0]["event"], "initiation_sent");
        assert!(lines[0].get("detail").is_none());
        assert_eq!(lines[1]["detail"], "gave up after 90s");
    }

    #[test]
    fn disabled_sink_accepts_records() {
        EventSink::disabled().record(EventRecord {
            client: 0,
            t_ms: 0.0,
            event: "echo_sent",
            connection: 0,
            detail: None,
        });
    }
}
