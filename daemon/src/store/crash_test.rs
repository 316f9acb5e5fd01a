//! Crash safety of the store: a child process (this test binary re-executed with an
//! environment variable) writes batches in transactions as fast as it can and is SIGKILLed
//! at random moments; after every kill the database must pass `integrity_check`, every
//! batch the child reported as committed must be intact, and no batch may be half there.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, UNIX_EPOCH};

use rand::Rng;

use super::{PeerSource, Store};
use crate::peer::{PeerConfig, PublicKey, Timestamp};
use crate::replay::ReplayVerdict;

/// Set in the child only: the database path it writes to.
const DB_ENV: &str = "JITWGD_STORE_CRASH_DB";
/// Set in the child only: the first batch number it writes.
const START_ENV: &str = "JITWGD_STORE_CRASH_START";
/// Peers per transaction: a multi-row commit is what atomicity is about.
const BATCH: u64 = 4;
const KILLS: usize = 6;

fn row_key(n: u64) -> PublicKey {
    let mut key = [0xa5u8; 32];
    key[..8].copy_from_slice(&n.to_be_bytes());
    PublicKey(key)
}

fn row_peer(n: u64) -> PeerConfig {
    let ip = 0x6440_0000u32 | (n as u32 & 0x003f_ffff);
    PeerConfig {
        public_key: row_key(n),
        allowed_ips: vec![ipnet::IpNet::V4(
            ipnet::Ipv4Net::new(ip.into(), 32).unwrap(),
        )],
        preshared_key: Some([n as u8; 32]),
    }
}

fn batch(b: u64) -> Vec<PeerConfig> {
    (b * BATCH..(b + 1) * BATCH).map(row_peer).collect()
}

fn batch_timestamp(b: u64) -> Timestamp {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&(b + 1).to_be_bytes());
    Timestamp(bytes)
}

/// The child side. Does nothing in a normal test run (no environment variable).
#[test]
fn child_writer() {
    let Ok(path) = std::env::var(DB_ENV) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let mut store = Store::open(path).unwrap();
    let stdout = std::io::stdout();
    for b in start.. {
        let now = UNIX_EPOCH + Duration::from_secs(b);
        store
            .put_peers(&batch(b), PeerSource::Push, now, Duration::MAX)
            .unwrap();
        store
            .check_and_record_timestamp(&row_key(b * BATCH), batch_timestamp(b))
            .unwrap();
        let mut out = stdout.lock();
        writeln!(out, "committed {b}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn committed_batches_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut next = 0u64;
    for _ in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store::crash_test::child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DB_ENV, &path)
            .env(START_ENV, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("committed ") {
                    let _ = tx.send(n.parse::<u64>().unwrap());
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child committed nothing");
        std::thread::sleep(Duration::from_millis(rng.gen_range(1..120)));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        reader.join().unwrap();
        let last = rx.try_iter().last().unwrap_or(first);

        let mut store = Store::open(&path).unwrap();
        store.integrity_check().unwrap();
        let count = store.peer_count().unwrap();
        assert_eq!(count % BATCH, 0, "a batch was committed partially");
        assert!(count >= (last + 1) * BATCH);
        for b in 0..=last {
            for expected in batch(b) {
                let got = store.get_peer(&expected.public_key).unwrap();
                assert_eq!(got.map(|p| p.config), Some(expected), "batch {b}");
            }
            assert_eq!(
                store
                    .check_and_record_timestamp(&row_key(b * BATCH), batch_timestamp(b))
                    .unwrap(),
                ReplayVerdict::Replay,
                "replay timestamp of batch {b} lost"
            );
        }
        next = last + 1;
    }
}
