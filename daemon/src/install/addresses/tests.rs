//! The install worker keeps the address rule: an install that would take an installed
//! peer's address is refused with the holders, in the JIT, batch and adopt paths, and a
//! removed peer's addresses are free again. Against a data plane that accepts everything.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::super::*;
use crate::metrics::Metrics;

#[derive(Default)]
struct AcceptingDataPlane {
    peers: Mutex<Vec<InstalledPeer>>,
}

impl Backend for AcceptingDataPlane {
    fn apply(&self, plan: &Plan) -> Result<(), DataPlaneError> {
        let mut peers = self.peers.lock().unwrap();
        for change in &plan.0 {
            match change {
                PeerChange::Install { write, .. } => {
                    peers.retain(|p| p.public_key != write.config.public_key);
                    peers.push(InstalledPeer {
                        public_key: write.config.public_key,
                        last_handshake: Some(SystemTime::now()),
                        endpoint: None,
                    });
                }
                PeerChange::Remove(k) => peers.retain(|p| p.public_key != *k),
                _ => {}
            }
        }
        Ok(())
    }

    fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
        Ok(self.peers.lock().unwrap().clone())
    }
}

fn config(byte: u8, ip: &str) -> PeerConfig {
    PeerConfig {
        public_key: PublicKey([byte; 32]),
        allowed_ips: vec![ip.parse().unwrap()],
        preshared_key: None,
    }
}

#[test]
fn installs_that_take_an_installed_peers_address_are_refused_with_the_holder() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = InstallSettings {
        initiate: false,
        initiate_rate: 0,
        sweep_chunk: 16,
        sweep_budget: std::time::Duration::from_millis(50),
        initiate_feedback: None,
    };
    let dp = Arc::new(AcceptingDataPlane::default());
    let (worker, queue) = InstallWorker::start(dp, Vec::new(), settings, Metrics::new()).unwrap();
    let endpoint = "198.18.0.9:51820".parse().unwrap();
    rt.block_on(async {
        queue
            .install(config(1, "100.64.0.2/32"), endpoint, Instant::now())
            .await
            .unwrap();
        // Re-installing the holder with its own address is no conflict.
        queue
            .install(config(1, "100.64.0.2/32"), endpoint, Instant::now())
            .await
            .unwrap();
        match queue
            .install(config(2, "100.64.0.2/32"), endpoint, Instant::now())
            .await
        {
            Err(InstallError::AddressConflict { holders }) => {
                assert_eq!(holders, vec![PublicKey([1; 32])])
            }
            other => panic!("{other:?}"),
        }
        assert!(!queue.is_installed(&PublicKey([2; 32])));

        let many = queue
            .install_many_checked(vec![
                config(3, "100.64.0.3/32"),
                config(4, "100.64.0.0/30"),
                config(5, "100.64.0.3/32"),
            ])
            .await
            .unwrap();
        assert_eq!(many.installed, 1);
        let refused: Vec<(u8, Vec<u8>)> = many
            .conflicts
            .iter()
            .map(|(c, h)| (c.public_key.0[0], h.iter().map(|k| k.0[0]).collect()))
            .collect();
        assert_eq!(refused, vec![(4, vec![1, 3]), (5, vec![3])]);

        // Once the holder is gone its address is free.
        queue
            .remove(vec![PublicKey([1; 32])], RemovalReason::Revoked)
            .await
            .unwrap();
        queue
            .install(config(2, "100.64.0.2/32"), endpoint, Instant::now())
            .await
            .unwrap();

        // Adopted peers' addresses (from their stored configs) are held too.
        queue
            .adopt_addresses(vec![config(9, "100.64.0.9/32")])
            .await
            .unwrap();
        assert!(matches!(
            queue
                .install(config(8, "100.64.0.9/32"), endpoint, Instant::now())
                .await,
            Err(InstallError::AddressConflict { .. })
        ));
        // A sweep forgets the addresses of peers no longer on the data plane (9 never was).
        queue
            .sweep(SystemTime::now(), std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        queue
            .install(config(8, "100.64.0.9/32"), endpoint, Instant::now())
            .await
            .unwrap();
    });
    worker.stop();
}
