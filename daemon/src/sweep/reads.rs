//! One reader of the data plane's peers for everyone who needs them: the sweep (every
//! `sweep-every`, for idleness and the activity record) and the kernel shield (installed
//! endpoints, at most `shield::ENDPOINT_REFRESH` old while anything is judged). A full
//! read costs both processes CPU (every peer over UAPI; seconds at 50,000 kernel peers),
//! so each read is kept with the moment it started, and a user whose need the last read
//! meets takes that one instead of reading again. Reads never overlap: a caller that
//! waited for one in flight uses it when it started late enough.
//!
//! "Late enough" is what keeps the install worker's guarantee: the sweep reconciles a
//! read with the worker's journal of writes, which starts when the worker acknowledges
//! `SweepBegin`, so the sweep takes only a read started strictly after it saw that
//! acknowledgement (a shield read that began afterwards is as good as its own; one that
//! began at the same clock value is not, since it may have begun before the journal).
//! The rule is pure (`started_after`, `age_limit`), with time passed in.

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
    /// Every peer the data plane held (key, last handshake, endpoint).
    pub peers: Vec<InstalledPeer>,
}

/// A read handed to a caller, and whether that call made it (the shield counts its own).
#[derive(Debug, Clone)]
pub struct Reading {
    pub read: Arc<PeerRead>,
    /// This call read the data plane (no kept read met its need).
    pub made_by_caller: bool,
}

/// What failed in a read of the data plane's peers.
#[derive(Debug, thiserror::Error)]
pub enum PeerReadError {
    #[error("reading the data plane's peers failed")]
    Read(#[source] DataPlaneError),
    #[error("the data-plane read did not complete")]
    Task(#[source] tokio::task::JoinError),
}

/// Whether a read started at `started` meets a need for one started after `after`
/// (`None`: any read does). Strictly after: two clock readings on either side of an
/// event may be equal, and only a later one proves the read began after it.
pub fn started_after(started: Instant, after: Option<Instant>) -> bool {
    after.is_none_or(|after| started > after)
}

/// The `after` that makes a read at most `max_age` old at `now` (`None`: any read is,
/// `now` is closer to the clock's origin than `max_age`).
pub fn age_limit(now: Instant, max_age: Duration) -> Option<Instant> {
    now.checked_sub(max_age)
}

/// The shared reader (module doc).
pub struct PeerReads {
    backend: Arc<dyn Backend>,
    /// Held for the duration of a read: one at a time.
    reading: Mutex<()>,
    /// The last completed read (a watch: reading it never blocks on, or is poisoned by,
    /// a writer).
    latest: watch::Sender<Option<Arc<PeerRead>>>,
}

impl PeerReads {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        PeerReads {
            backend,
            reading: Mutex::new(()),
            latest: watch::Sender::new(None),
        }
    }

    /// A read started after `after` (`None`: any read): the last one when it was,
    /// otherwise a new one, kept for the other users.
    pub async fn read_started_after(
        &self,
        after: Option<Instant>,
    ) -> Result<Reading, PeerReadError> {
        if let Some(read) = self.last_if_started_after(after) {
            return Ok(Reading {
                read,
                made_by_caller: false,
            });
        }
        let _reading = self.reading.lock().await;
        // A read that was in flight while we waited may do.
        if let Some(read) = self.last_if_started_after(after) {
            return Ok(Reading {
                read,
                made_by_caller: false,
            });
        }
        let started = Instant::now();
        let backend = self.backend.clone();
        let peers = tokio::task::spawn_blocking(move || backend.peers())
            .await
            .map_err(PeerReadError::Task)?
            .map_err(PeerReadError::Read)?;
        let read = Arc::new(PeerRead { started, peers });
        self.latest.send_replace(Some(read.clone()));
        Ok(Reading {
            read,
            made_by_caller: true,
        })
    }

    fn last_if_started_after(&self, after: Option<Instant>) -> Option<Arc<PeerRead>> {
        self.latest
            .borrow()
            .as_ref()
            .filter(|r| started_after(r.started, after))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::install::Plan;
    use crate::peer::PublicKey;

    #[test]
    fn a_read_counts_only_when_it_started_strictly_after() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(started_after(t0 + s, Some(t0)));
        assert!(
            !started_after(t0, Some(t0)),
            "same clock value: not proven later"
        );
        assert!(!started_after(t0, Some(t0 + s)));
        assert!(started_after(t0, None));
    }

    #[test]
    fn age_limit_is_max_age_before_now() {
        let now = Instant::now() + Duration::from_secs(10);
        let after = age_limit(now, Duration::from_secs(2));
        assert_eq!(after, Some(now - Duration::from_secs(2)));
        // A read started 1.999 s before `now` is recent enough; 2 s is not.
        assert!(started_after(now - Duration::from_millis(1999), after));
        assert!(!started_after(now - Duration::from_secs(2), after));
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
    async fn a_read_that_meets_the_need_is_shared_and_one_that_does_not_is_not() {
        let plane = Arc::new(CountingPlane(AtomicUsize::new(0)));
        let reads = PeerReads::new(plane.clone());
        let before = Instant::now();
        let first = reads.read_started_after(None).await.unwrap();
        assert!(first.made_by_caller);
        assert!(first.read.started >= before);
        // Any read, or one started after `before`: the same read.
        for after in [None, Some(before - Duration::from_millis(1))] {
            let again = reads.read_started_after(after).await.unwrap();
            assert!(!again.made_by_caller);
            assert!(Arc::ptr_eq(&first.read, &again.read));
        }
        // A need from its own start on (the sweep after `SweepBegin`): a new read, kept.
        let second = reads
            .read_started_after(Some(first.read.started))
            .await
            .unwrap();
        assert!(second.made_by_caller);
        assert_eq!(second.read.peers.len(), 2);
        let last = reads.read_started_after(None).await.unwrap();
        assert!(Arc::ptr_eq(&last.read, &second.read));
        assert_eq!(plane.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_at_the_same_moment_share_one_read() {
        let plane = Arc::new(CountingPlane(AtomicUsize::new(0)));
        let reads = Arc::new(PeerReads::new(plane.clone()));
        let after = Some(Instant::now() - Duration::from_millis(1));
        let (a, b) = tokio::join!(
            reads.read_started_after(after),
            reads.read_started_after(after)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a.read, &b.read));
        assert_eq!(
            u8::from(a.made_by_caller) + u8::from(b.made_by_caller),
            1,
            "exactly one of them read"
        );
        assert_eq!(plane.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_read_is_not_kept() {
        struct Failing;
        impl Backend for Failing {
            fn apply(&self, _: &Plan) -> Result<(), DataPlaneError> {
                Ok(())
            }
            fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
                Err(DataPlaneError::Read {
                    name: "wgtest0".into(),
                    source: std::io::Error::other("socket gone"),
                })
            }
        }
        let reads = PeerReads::new(Arc::new(Failing));
        assert!(matches!(
            reads.read_started_after(None).await,
            Err(PeerReadError::Read(_))
        ));
        assert!(reads.last_if_started_after(None).is_none());
    }
}
