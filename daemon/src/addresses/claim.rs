//! What happens when a newcomer's allowed IPs overlap an installed peer's: the holder is
//! asked about again. Recycled addresses are normal (a CI job's key is deleted and its
//! address handed to the next job's key), so a holder the control plane no longer knows,
//! or no longer gives that address, is removed and the newcomer installed. Anything else
//! (the holder still owns it, or the control plane cannot say) refuses the newcomer,
//! counted in `jitwgd_address_conflicts_total{outcome}` and logged: an API error is never
//! a reason to take an address away.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::errors::Causes;
use crate::install::{InstallError, InstallQueue, Installed, RemovalReason};
use crate::lookup::{Lookup, Revalidation};
use crate::metrics::{self, Metrics};
use crate::peer::{PeerConfig, PublicKey};
use crate::store::SharedStore;

/// What revalidating one holder said about its claim on the newcomer's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderStatus {
    /// The control plane no longer knows the holder (404).
    Revoked,
    /// The holder is known but its allowed IPs no longer overlap the newcomer's.
    Moved,
    /// The holder still owns an overlapping address.
    StillOwns,
    /// No verdict (API error, rate limit, no API): the holder keeps its address.
    Unknown,
}

impl HolderStatus {
    /// Whether the holder gives the address up.
    pub fn releases(self) -> bool {
        matches!(self, HolderStatus::Revoked | HolderStatus::Moved)
    }

    fn as_str(self) -> &'static str {
        match self {
            HolderStatus::Revoked => "revoked",
            HolderStatus::Moved => "moved",
            HolderStatus::StillOwns => "still_owns",
            HolderStatus::Unknown => "unknown",
        }
    }
}

/// Sorts a revalidation verdict about `holder` into a `HolderStatus` for `newcomer`. Pure.
pub fn holder_status(verdict: &Revalidation, newcomer: &PeerConfig) -> HolderStatus {
    match verdict {
        Revalidation::Revoked => HolderStatus::Revoked,
        Revalidation::Unknown => HolderStatus::Unknown,
        Revalidation::StillValid(current) => {
            let overlaps = current.allowed_ips.iter().any(|held| {
                newcomer
                    .allowed_ips
                    .iter()
                    .any(|wanted| held.contains(wanted) || wanted.contains(held))
            });
            if overlaps {
                HolderStatus::StillOwns
            } else {
                HolderStatus::Moved
            }
        }
    }
}

/// Asks the control plane about each holder; removes those that released the address.
/// `true` when every holder released it (the newcomer may be installed now).
pub async fn release(
    lookup: Option<&Lookup>,
    queue: &InstallQueue,
    metrics: &Metrics,
    newcomer: &PeerConfig,
    holders: &[PublicKey],
) -> bool {
    let now = SystemTime::now();
    let mut released = Vec::with_capacity(holders.len());
    for holder in holders {
        let status = match lookup {
            Some(lookup) => holder_status(&lookup.revalidate(*holder, now).await, newcomer),
            None => HolderStatus::Unknown,
        };
        if !status.releases() {
            metrics::count_address_conflict(metrics, "refused");
            tracing::warn!(
                peer = %newcomer.public_key,
                holder = %holder,
                holder_status = status.as_str(),
                allowed_ips = ?newcomer.allowed_ips,
                "refused: allowed IPs overlap an installed peer's"
            );
            return false;
        }
        tracing::info!(peer = %newcomer.public_key, holder = %holder, holder_status = status.as_str(),
            "address released by its former holder; removing it");
        released.push(*holder);
    }
    match queue.remove(released, RemovalReason::Revoked).await {
        Ok(_) => {
            metrics::count_address_conflict(metrics, "reassigned");
            true
        }
        Err(e) => {
            metrics::count_address_conflict(metrics, "refused");
            tracing::warn!(peer = %newcomer.public_key, error = %Causes(&e), "removing the former holder failed");
            false
        }
    }
}

/// A JIT install with the overlap rule: on a conflict the holders are revalidated and, if
/// they all released the address, the install is tried once more.
pub async fn install(
    lookup: &Lookup,
    queue: &InstallQueue,
    metrics: &Metrics,
    config: PeerConfig,
    endpoint: SocketAddr,
    captured_at: Instant,
) -> Result<Installed, InstallError> {
    match queue.install(config.clone(), endpoint, captured_at).await {
        Err(InstallError::AddressConflict { holders }) => {
            if release(Some(lookup), queue, metrics, &config, &holders).await {
                queue.install(config, endpoint, captured_at).await
            } else {
                Err(InstallError::AddressConflict { holders })
            }
        }
        other => other,
    }
}

/// Many installs without endpoints (push, preload) with the overlap rule: the conflicting
/// ones are resolved one by one and retried once. Returns how many were installed.
pub async fn install_many(
    lookup: Option<&Lookup>,
    queue: &InstallQueue,
    metrics: &Metrics,
    configs: Vec<PeerConfig>,
) -> Result<usize, InstallError> {
    let first = queue.install_many_checked(configs).await?;
    let mut installed = first.installed;
    let mut retry = Vec::new();
    for (config, holders) in first.conflicts {
        if release(lookup, queue, metrics, &config, &holders).await {
            retry.push(config);
        }
    }
    if !retry.is_empty() {
        let second = queue.install_many_checked(retry).await?;
        installed += second.installed;
        for (config, holders) in second.conflicts {
            metrics::count_address_conflict(metrics, "refused");
            tracing::warn!(peer = %config.public_key, holders = ?holders, "refused: allowed IPs overlap an installed peer's");
        }
    }
    Ok(installed)
}

/// Tells the install worker which addresses the peers it adopted at start hold, from the
/// stored configs (the data plane's read at attach time carries keys, not addresses).
/// Peers with no stored config stay unindexed until they are installed again.
pub async fn adopt_installed(
    store: &SharedStore,
    queue: &InstallQueue,
) -> Result<usize, InstallError> {
    if queue.installed_count() == 0 {
        return Ok(0);
    }
    let stored = match store.call(|s| s.all_peers()).await {
        Ok(peers) => peers,
        Err(e) => {
            tracing::warn!(error = %Causes(&e), "reading stored peers for the address index failed");
            return Ok(0);
        }
    };
    let adopted: Vec<PeerConfig> = stored
        .into_iter()
        .filter(|c| queue.is_installed(&c.public_key))
        .collect();
    let n = adopted.len();
    queue.adopt_addresses(adopted).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(byte: u8, ips: &[&str]) -> PeerConfig {
        PeerConfig {
            public_key: PublicKey([byte; 32]),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            preshared_key: None,
        }
    }

    #[test]
    fn a_recycled_address_is_released_and_a_live_one_kept() {
        let newcomer = cfg(2, &["100.64.0.9/32"]);
        let check = |v: Revalidation| holder_status(&v, &newcomer);
        assert_eq!(check(Revalidation::Revoked), HolderStatus::Revoked);
        assert_eq!(
            check(Revalidation::StillValid(cfg(1, &["100.64.0.10/32"]))),
            HolderStatus::Moved
        );
        assert_eq!(
            check(Revalidation::StillValid(cfg(1, &["100.64.0.9/32"]))),
            HolderStatus::StillOwns
        );
        assert_eq!(
            check(Revalidation::StillValid(cfg(1, &["100.64.0.0/24"]))),
            HolderStatus::StillOwns
        );
        // An API error never takes an address away.
        assert_eq!(check(Revalidation::Unknown), HolderStatus::Unknown);
        assert!(!HolderStatus::Unknown.releases());
        assert!(HolderStatus::Moved.releases());
    }
}
