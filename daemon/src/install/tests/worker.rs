//! The install worker's thread against the fake data plane: what it serves first while a
//! call is held at a gate, and when paced initiations go out between install batches.

use super::*;

/// A worker on the fake data plane, and a runtime to drive its queue from.
struct Rig {
    dp: Arc<FakeDataPlane>,
    rt: tokio::runtime::Runtime,
    worker: InstallWorker,
    queue: InstallQueue,
}

fn start(dp: FakeDataPlane, settings: InstallSettings) -> Rig {
    let dp = Arc::new(dp);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (worker, queue) =
        InstallWorker::start(dp.clone(), Vec::new(), settings, Metrics::new()).unwrap();
    Rig {
        dp,
        rt,
        worker,
        queue,
    }
}

/// Holds the calls behind `gate`: each signals the returned receiver, then waits for a send
/// on the returned sender.
fn hold(
    gate: &Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *gate.lock().unwrap() = Some((entered_tx, release_rx));
    (entered, release)
}

fn initiating_at(rate: u32) -> InstallSettings {
    InstallSettings {
        initiate_rate: rate,
        ..settings(true)
    }
}

/// A peer with an endpoint and an allowed IP of its own (no address conflicts).
fn write_own(n: u16) -> PeerWrite {
    let mut w = write_at(n);
    w.endpoint = Some(std::net::SocketAddr::new(
        std::net::Ipv4Addr::new(198, 18, 2 + (n >> 8) as u8, n as u8).into(),
        40_000,
    ));
    w.config.allowed_ips = vec![format!("100.64.{}.{}/32", 1 + (n >> 8), n & 255)
        .parse()
        .unwrap()];
    w
}

#[test]
fn the_worker_serves_an_install_before_the_next_removal_chunk() {
    let dp = FakeDataPlane::default();
    let (entered, release) = hold(&dp.gate);
    let Rig {
        dp,
        rt,
        worker,
        queue,
    } = start(dp, settings(false));
    rt.block_on(async {
        let q = queue.clone();
        let removal = tokio::spawn(async move {
            q.remove((0..100).map(key).collect(), RemovalReason::Idle)
                .await
        });
        // Let the spawned task send its command, then wait for the first chunk's call.
        tokio::task::yield_now().await;
        entered.recv().unwrap();
        // The first removal chunk is in the data plane; an install arrives meanwhile.
        let q = queue.clone();
        let install = tokio::spawn(async move {
            let w = write(1000);
            q.install(
                w.config,
                "198.18.0.2:51820".parse().unwrap(),
                std::time::Instant::now(),
            )
            .await
        });
        tokio::task::yield_now().await;
        // Give the install command time to reach the channel before releasing the gate.
        std::thread::sleep(Duration::from_millis(50));
        release.send(()).unwrap();
        assert!(install.await.unwrap().is_ok());
        // Let the remaining chunks through (the release channel buffers).
        for _ in 0..100 {
            release.send(()).unwrap();
        }
        assert_eq!(removal.await.unwrap().unwrap(), 100);
    });
    let kinds: Vec<bool> = dp
        .plans()
        .iter()
        .map(|p| matches!(p.0[0], PeerChange::Remove(_)))
        .collect();
    assert_eq!(
        &kinds[..2],
        &[true, false],
        "removal chunk, then the install"
    );
    worker.stop();
    assert!(matches!(
        rt.block_on(queue.install_many(vec![write(1).config])),
        Err(InstallError::WorkerGone)
    ));
}

#[test]
fn paced_initiations_go_out_while_installs_keep_arriving() {
    let dp = FakeDataPlane::default();
    let (entered, release) = hold(&dp.install_gate);
    let Rig {
        dp,
        rt,
        worker,
        queue,
    } = start(dp, initiating_at(1000));
    rt.block_on(async {
        // 30 peers at 1,000/s: a burst of 20 initiates at once, 10 are deferred.
        let q = queue.clone();
        let first = tokio::spawn(async move {
            let peers = (0..30)
                .map(write_own)
                .map(|w| (w.config, w.endpoint.unwrap()))
                .collect();
            q.reinstall(peers).await
        });
        tokio::task::yield_now().await;
        // The worker is inside the batch's install call.
        entered.recv().unwrap();
        // From now on an install is always waiting when the worker finishes the last one.
        let mut pending = Vec::new();
        for n in 100..104u16 {
            let q = queue.clone();
            pending.push(tokio::spawn(async move {
                let w = write_own(n);
                q.install(w.config, w.endpoint.unwrap(), Instant::now())
                    .await
            }));
            tokio::task::yield_now().await;
            // The command is queued; let the pacer earn tokens, then let the call finish.
            std::thread::sleep(Duration::from_millis(20));
            release.send(()).unwrap();
            entered.recv().unwrap();
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 30);
        for p in pending {
            assert!(p.await.unwrap().is_ok());
        }
    });
    let plans = dp.plans();
    let last_install = plans
        .iter()
        .rposition(|p| p.0.iter().any(|c| matches!(c, PeerChange::Install { .. })))
        .unwrap();
    let deferred_sent = plans[..last_install]
        .iter()
        .any(|p| p.0.iter().any(|c| matches!(c, PeerChange::Initiate(_))));
    assert!(
        deferred_sent,
        "deferred initiations waited for the installs to stop"
    );
    worker.stop();
}

#[test]
fn a_reinstall_goes_in_small_batches_with_the_paced_initiations_between_them() {
    let dp = FakeDataPlane::default();
    *dp.install_delay.lock().unwrap() = Duration::from_millis(10);
    let Rig {
        dp,
        rt,
        worker,
        queue,
    } = start(dp, initiating_at(1000));
    let n = 4 * REINSTALL_BATCH as u16;
    let peers = (0..n)
        .map(write_own)
        .map(|w| (w.config, w.endpoint.unwrap()))
        .collect();
    assert_eq!(rt.block_on(queue.reinstall(peers)).unwrap(), n as usize);
    worker.stop();
    let plans = dp.plans();
    let installs: Vec<usize> = plans
        .iter()
        .map(|p| {
            p.0.iter()
                .filter(|c| matches!(c, PeerChange::Install { .. }))
                .count()
        })
        .collect();
    assert!(installs.iter().all(|&k| k <= REINSTALL_BATCH));
    assert_eq!(installs.iter().sum::<usize>(), n as usize);
    // 10 ms a batch earns the pacer 10 tokens: after every batch but the last, initiations
    // go out before the next batch is installed.
    let batches: Vec<usize> = (0..plans.len()).filter(|&i| installs[i] > 0).collect();
    assert_eq!(batches.len(), 4);
    for pair in batches.windows(2) {
        assert!(
            plans[pair[0] + 1..pair[1]]
                .iter()
                .any(|p| p.0.iter().any(|c| matches!(c, PeerChange::Initiate(_)))),
            "no initiations between the batches at plans {} and {}",
            pair[0],
            pair[1]
        );
    }
}
