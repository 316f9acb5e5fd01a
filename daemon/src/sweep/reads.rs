//! One reader of the data plane's peers for everyone who needs them: the sweep (every
//! `sweep-every`, for idleness and the activity record) and the kernel shield (installed
//! endpoints, at most `shield::ENDPOINT_REFRESH` old while anything is judged). A full
//! read costs both processes CPU (every peer over UAPI; seconds at 50,000 kernel peers),
//! so each read is published with the moment it started, and a user whose need an earlier
//! read meets takes that one instead of reading again. Reads never overlap: a caller that
//! waited for one in flight uses it when it started late enough.
//!
//! "Late enough" is what keeps the install worker's guarantee: the sweep reconciles a
//! read with the worker's journal of writes, which starts when the worker acknowledges
//! `SweepBegin`, so the sweep asks for a read started after that acknowledgement (a
//! shield read that began afterwards is as good as its own). The staleness rule is
//! pure (`is_recent`, `since`) with time passed in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};

use crate::dataplane::{DataPlaneError, InstalledPeer};
use crate::install::Backend;

/// One completed read of the data plane.
#[derive(Debug)]
pub struct PeerRead {
    /// When the read was started (before the data plane was asked: a conservative age).
    pub started: Instant,
    pub peers: Vec<InstalledPeer>,
}

/// What failed in a read of the data plane's peers.
#[derive(Debug, thiserror::Error)]
pub enum PeerReadError {
    #[error("reading the data plane's peers failed")]
    Read(#[source] DataPlaneError),
    #[error("the data-plane read did not complete")]
    Task(#[source] tokio::task::JoinError),
}

/// Whether a read started at `started` meets a need for one started at or after `since`.
pub fn is_recent(started: Instant, since: Instant) -> bool {
    started >= since
}

/// The earliest start a read may have to be at most `max_age` old at `now` (`None`: any
/// read qualifies, `now` is closer to the clock's origin than `max_age`).
pub fn since(now: Instant, max_age: Duration) -> Option<Instant> {
    now.checked_sub(max_age)
}

/// The shared reader (module doc).
pub struct PeerReads {
    backend: Arc<dyn Backend>,
    /// Held for the duration of a read: one at a time.
    reading: Mutex<()>,
    latest: watch::Sender<Option<Arc<PeerRead>>>,
    reads: AtomicU64,
}

impl PeerReads {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        PeerReads {
            backend,
            reading: Mutex::new(()),
            latest: watch::Sender::new(None),
            reads: AtomicU64::new(0),
        }
    }

    /// The last completed read, if any.
    pub fn latest(&self) -> Option<Arc<PeerRead>> {
        self.latest.borrow().clone()
    }

    /// Woken with each new read.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<PeerRead>>> {
        self.latest.subscribe()
    }

    /// Reads made so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// A read started at or after `since` (`None`: any read): the last one when it did,
    /// otherwise a new one, published for the other users. The bool says whether this
    /// call read the data plane itself.
    pub async fn started_since(
        &self,
        since: Option<Instant>,
    ) -> Result<(Arc<PeerRead>, bool), PeerReadError> {
        if let Some(read) = self.usable(since) {
            return Ok((read, false));
        }
        let _reading = self.reading.lock().await;
        // A read that was in flight while we waited may do.
        if let Some(read) = self.usable(since) {
            return Ok((read, false));
        }
        let started = Instant::now();
        let backend = self.backend.clone();
        let peers = tokio::task::spawn_blocking(move || backend.peers())
            .await
            .map_err(PeerReadError::Task)?
            .map_err(PeerReadError::Read)?;
        let read = Arc::new(PeerRead { started, peers });
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.latest.send_replace(Some(read.clone()));
        Ok((read, true))
    }

    fn usable(&self, since: Option<Instant>) -> Option<Arc<PeerRead>> {
        self.latest
            .borrow()
            .as_ref()
            .filter(|r| since.is_none_or(|s| is_recent(r.started, s)))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::install::Plan;
    use crate::peer::PublicKey;

    #[test]
    fn a_read_is_recent_from_its_start_on() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(is_recent(t0 + s, t0));
        assert!(is_recent(t0, t0));
        assert!(!is_recent(t0, t0 + s));
    }

    #[test]
    fn since_is_max_age_before_now() {
        let now = Instant::now() + Duration::from_secs(10);
        let since = since(now, Duration::from_secs(2)).unwrap();
        assert_eq!(now - since, Duration::from_secs(2));
        // A read started 2 s before `now` is still good; 2.001 s is not.
        assert!(is_recent(now - Duration::from_secs(2), since));
        assert!(!is_recent(now - Duration::from_millis(2001), since));
    }

    /// Counts its reads; each returns one peer per read so far.
    struct CountingPlane(AtomicUsize);

    impl Backend for CountingPlane {
        fn apply(&self, _: &Plan) -> Result<(), DataPlaneError> {
            Ok(())
        }
        fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(20));
            Ok((0..n)
                .map(|k| InstalledPeer {
                    public_key: PublicKey([k as u8; 32]),
                    last_handshake: None,
                    endpoint: None,
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn a_recent_enough_read_is_shared_and_an_older_one_is_not() {
        let plane = Arc::new(CountingPlane(AtomicUsize::new(0)));
        let reads = PeerReads::new(plane.clone());
        assert!(reads.latest().is_none());
        let before = Instant::now();
        let (first, read_here) = reads.started_since(None).await.unwrap();
        assert!(read_here);
        assert!(first.started >= before);
        // Any read, or one started no earlier than this one: no new read.
        let (again, read_here) = reads.started_since(Some(first.started)).await.unwrap();
        assert!(!read_here);
        assert!(Arc::ptr_eq(&first, &again));
        // A need from after it: a new read, published.
        let later = Instant::now();
        let (second, read_here) = reads.started_since(Some(later)).await.unwrap();
        assert!(read_here);
        assert_eq!(second.peers.len(), 2);
        assert!(Arc::ptr_eq(&reads.latest().unwrap(), &second));
        assert_eq!(reads.reads(), 2);
        assert_eq!(plane.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_at_the_same_moment_share_one_read() {
        let plane = Arc::new(CountingPlane(AtomicUsize::new(0)));
        let reads = Arc::new(PeerReads::new(plane.clone()));
        let mut news = reads.subscribe();
        let since = Some(Instant::now());
        let (a, b) = tokio::join!(reads.started_since(since), reads.started_since(since));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a.1 as u8 + b.1 as u8, 1, "exactly one of them read");
        assert_eq!(plane.0.load(Ordering::SeqCst), 1);
        assert!(news.has_changed().unwrap());
        assert!(news.borrow_and_update().is_some());
    }
}
