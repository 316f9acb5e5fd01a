//! Boot policy: `jit` starts empty and is ready at once; `preload` installs every
//! stored peer before reporting ready (the legacy behaviour whose reload cost the
//! testbed measures). Under both, the peers active just before the shutdown are
//! re-installed with their last endpoint and the gateway initiates to them
//! (`--reinstall-active`): their clients' traffic went unanswered across the restart,
//! and WireGuard alone would only re-handshake after ~15 s (keepalive + rekey timeouts).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::activity::ActivityLog;
use crate::addresses::claim;
use crate::config::Boot;
use crate::errors::Causes;
use crate::install::{InstallError, InstallQueue};
use crate::lookup::Lookup;
use crate::metrics::{self, Metrics};
use crate::peer::{AddressPolicy, PeerConfig, PublicKey};
use crate::store::{ActivePeer, SharedStore, StoreCallError};

/// What boot did, for the log line and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    pub peers_installed: usize,
    pub took: Duration,
}

/// What failed during boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("reading stored peers failed")]
    Store(#[source] StoreCallError),
    #[error("installing stored peers failed")]
    Install(#[source] InstallError),
}

/// What boot checks stored configs with before installing them: they were validated
/// under the settings of the day they were stored.
pub struct BootChecks {
    /// The current address settings.
    pub addresses: AddressPolicy,
    /// Asks the control plane about a peer whose address a stored peer overlaps.
    pub lookup: Option<Arc<Lookup>>,
    pub metrics: Arc<Metrics>,
}

impl BootChecks {
    /// Keeps the configs that pass the current address settings; counts and logs the rest
    /// under `source` (`metrics::STORED_CONFIG_SOURCES`).
    fn passing<T>(
        &self,
        items: Vec<T>,
        config: impl Fn(&T) -> &PeerConfig,
        source: &'static str,
    ) -> Vec<T> {
        let (kept, refused) = split_by_policy(items, &self.addresses, config);
        for (key, reason) in refused {
            metrics::count_stored_config_refused(&self.metrics, source);
            tracing::warn!(peer = %key, reason = %reason, source, "stored config fails the current address settings; not installed");
        }
        kept
    }
}

/// Splits stored configs into those that pass `policy` and the keys of those that do not,
/// with the reason. Pure; keeps the order.
pub fn split_by_policy<T>(
    items: Vec<T>,
    policy: &AddressPolicy,
    config: impl Fn(&T) -> &PeerConfig,
) -> (Vec<T>, Vec<(PublicKey, crate::peer::PeerRejected)>) {
    let mut kept = Vec::with_capacity(items.len());
    let mut refused = Vec::new();
    for item in items {
        match policy.check_config(config(&item)) {
            Ok(()) => kept.push(item),
            Err(reason) => refused.push((config(&item).public_key, reason)),
        }
    }
    (kept, refused)
}

/// Which recorded peers to re-install: those seen within `window` before the shutdown.
/// A crash records no shutdown time, so it is taken as the newest activity on record
/// (the last install or sweep before it), capped at `now` in case the clock went back:
/// a gateway down for an hour still re-installs what was active when it went down.
/// A zero window selects nothing. Pure; keeps the rows' order.
pub fn select_reinstall(
    rows: Vec<ActivePeer>,
    now: SystemTime,
    window: Duration,
) -> Vec<ActivePeer> {
    if window.is_zero() {
        return Vec::new();
    }
    let Some(newest) = rows.iter().map(|r| r.seen_at).max() else {
        return Vec::new();
    };
    let shutdown = newest.min(now);
    let Some(since) = shutdown.checked_sub(window) else {
        return rows;
    };
    rows.into_iter().filter(|r| r.seen_at >= since).collect()
}

/// Re-install the peers active within the window before the shutdown with their last
/// endpoint, through the install worker's batch path (role inversion: the data plane
/// initiates at once). Peers the data plane still holds (only jitwgd restarted) are
/// left alone. Boot's follow-up (`ActivityLog::reinstalled`) then counts how many
/// complete a handshake.
pub async fn reinstall_active(
    log: &ActivityLog,
    queue: &InstallQueue,
    checks: &BootChecks,
    now: SystemTime,
) -> Result<BootReport, BootError> {
    let start = Instant::now();
    if !log.enabled() {
        return Ok(BootReport {
            peers_installed: 0,
            took: start.elapsed(),
        });
    }
    let rows = log
        .store()
        .call(|store| store.active_peers())
        .await
        .map_err(BootError::Store)?;
    let selected = select_reinstall(rows, now, log.window());
    let peers: Vec<_> = checks
        .passing(selected, |p| &p.config, "reinstall")
        .into_iter()
        .filter(|p| !queue.is_installed(&p.config.public_key))
        .map(|p| (p.config, p.endpoint))
        .collect();
    let keys: Vec<PublicKey> = peers.iter().map(|(c, _)| c.public_key).collect();
    let installed = if peers.is_empty() {
        0
    } else {
        queue.reinstall(peers).await.map_err(BootError::Install)?
    };
    log.reinstalled(keys, now);
    Ok(BootReport {
        peers_installed: installed,
        took: start.elapsed(),
    })
}

/// Boot by `policy`; returns how many peers were installed before ready. Peers active
/// before the shutdown are re-installed with their endpoints and initiated to: in `jit`
/// boot beside readiness (ready does not wait), in `preload` boot first, so their clients
/// need not wait for the whole preload.
pub async fn run(
    policy: Boot,
    store: &SharedStore,
    queue: &InstallQueue,
    activity: &Arc<ActivityLog>,
    checks: Arc<BootChecks>,
) -> Result<usize, BootError> {
    match policy {
        Boot::Jit => {
            let (activity, queue) = (activity.clone(), queue.clone());
            // Not one of the daemon's tasks: its end is not the daemon's.
            tokio::spawn(async move {
                let now = SystemTime::now();
                log_reinstall(reinstall_active(&activity, &queue, &checks, now).await)
            });
            Ok(0)
        }
        Boot::Preload => {
            let now = SystemTime::now();
            let reinstalled = log_reinstall(reinstall_active(activity, queue, &checks, now).await);
            let skip: HashSet<_> = if reinstalled > 0 {
                store
                    .call(|s| s.activity_keys())
                    .await
                    .map_err(BootError::Store)?
                    .into_iter()
                    .filter(|k| queue.is_installed(k))
                    .collect()
            } else {
                HashSet::new()
            };
            Ok(reinstalled + preload(store, queue, &skip, &checks).await?.peers_installed)
        }
    }
}

/// Logs how boot's re-install of active peers went; returns how many it installed. A
/// failure is not fatal: those clients fall back to WireGuard's own timers.
fn log_reinstall(result: Result<BootReport, BootError>) -> usize {
    match result {
        Ok(r) => {
            if r.peers_installed > 0 {
                tracing::info!(
                    peers = r.peers_installed,
                    took_ms = r.took.as_secs_f64() * 1000.0,
                    "re-installed peers active before the shutdown, initiating to them"
                );
            }
            r.peers_installed
        }
        Err(e) => {
            tracing::warn!(error = %Causes(&e), "re-installing active peers failed");
            0
        }
    }
}

/// Install every peer stored in the database but those in `skip` (preload boot; `skip`
/// holds the peers `reinstall_active` has just installed with their endpoints) and those
/// the current address settings refuse; overlaps go through `addresses::claim`.
pub async fn preload(
    store: &SharedStore,
    queue: &InstallQueue,
    skip: &HashSet<PublicKey>,
    checks: &BootChecks,
) -> Result<BootReport, BootError> {
    let start = Instant::now();
    let mut peers = store
        .call(|store| store.all_peers())
        .await
        .map_err(BootError::Store)?;
    peers.retain(|p| !skip.contains(&p.public_key));
    let peers = checks.passing(peers, |p| p, "preload");
    let count = if peers.is_empty() {
        0
    } else {
        let lookup = checks.lookup.as_deref();
        claim::install_many(lookup, queue, &checks.metrics, peers)
            .await
            .map_err(BootError::Install)?
    };
    Ok(BootReport {
        peers_installed: count,
        took: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::peer::PeerConfig;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn row(byte: u8, seen: u64) -> ActivePeer {
        ActivePeer {
            config: PeerConfig {
                public_key: PublicKey([byte; 32]),
                allowed_ips: Vec::new(),
                preshared_key: None,
            },
            endpoint: SocketAddr::from(([198, 18, 0, byte], 51820)),
            seen_at: at(seen),
        }
    }

    fn keys(rows: &[ActivePeer]) -> Vec<u8> {
        rows.iter().map(|r| r.config.public_key.0[0]).collect()
    }

    /// One place the selection is exercised: rows as (key byte, seen at), now, window.
    fn check(rows: &[(u8, u64)], now: u64, window_secs: u64, expected: &[u8]) {
        let rows = rows.iter().map(|&(b, s)| row(b, s)).collect();
        let got = select_reinstall(rows, at(now), Duration::from_secs(window_secs));
        assert_eq!(keys(&got), expected);
    }

    #[test]
    fn selects_peers_seen_within_the_window_before_the_newest_activity() {
        // Shut down around t=1000 (newest activity), rebooted at t=1005.
        check(
            &[(1, 1000), (2, 830), (3, 819), (4, 10)],
            1005,
            180,
            &[1, 2],
        );
        // The boundary itself is inside the window.
        check(&[(1, 1000), (2, 820)], 1005, 180, &[1, 2]);
    }

    #[test]
    fn a_long_outage_still_reinstalls_what_was_active_at_the_shutdown() {
        check(
            &[(1, 1000), (2, 900), (3, 700)],
            1000 + 86_400,
            180,
            &[1, 2],
        );
    }

    #[test]
    fn a_clock_that_went_back_caps_the_reference_at_now() {
        // Activity recorded "in the future": the window ends at now, not at t=2000.
        check(&[(1, 2000), (2, 950), (3, 700)], 1000, 180, &[1, 2]);
    }

    #[test]
    fn off_or_nothing_recorded_selects_nothing() {
        check(&[(1, 1000)], 1000, 0, &[]);
        check(&[], 1000, 180, &[]);
    }

    #[test]
    fn stored_configs_are_held_to_the_current_address_settings() {
        let policy = AddressPolicy::host_routes("100.64.0.0/10".parse().unwrap());
        let with = |byte: u8, ip: &str| PeerConfig {
            allowed_ips: vec![ip.parse().unwrap()],
            ..row(byte, 0).config
        };
        let stored = vec![
            with(1, "100.64.0.1/32"),
            with(2, "100.64.0.0/24"),
            with(3, "10.0.0.3/32"),
            with(4, "100.64.0.4/32"),
        ];
        let (kept, refused) = split_by_policy(stored, &policy, |c| c);
        let kept: Vec<u8> = kept.iter().map(|c| c.public_key.0[0]).collect();
        let refused: Vec<u8> = refused.iter().map(|(k, _)| k.0[0]).collect();
        assert_eq!(kept, [1, 4]);
        assert_eq!(refused, [2, 3]);
        // Empty allowed IPs (an activity row's config is complete, but be safe) are refused.
        let (kept, _) = split_by_policy(vec![row(5, 0)], &policy, |r| &r.config);
        assert!(kept.is_empty());
    }

    #[test]
    fn a_window_longer_than_the_epoch_keeps_everything() {
        let rows = vec![row(1, 5), row(2, 0)];
        let got = select_reinstall(rows, at(10), Duration::from_secs(u64::MAX / 4));
        assert_eq!(keys(&got), vec![1, 2]);
    }
}
