//! The install worker's side of the address rule (`crate::addresses`): the batch outcome
//! that carries refused peers, the handle's calls that return it or seed the index, and
//! the worker's bookkeeping. Kept apart from the worker's scheduling code.

use super::*;

/// Outcome of a batch install checked against the address index.
#[derive(Debug, Default)]
pub struct ManyInstalled {
    /// Peers written to the data plane.
    pub installed: usize,
    /// Peers refused because their allowed IPs overlap installed peers' (the holders).
    pub conflicts: Vec<(PeerConfig, Vec<PublicKey>)>,
}

impl InstallQueue {
    /// `install_many`, also returning the peers refused for overlapping addresses, so the
    /// caller can revalidate the holders (`addresses::claim`).
    pub async fn install_many_checked(
        &self,
        configs: Vec<PeerConfig>,
    ) -> Result<ManyInstalled, InstallError> {
        let writes = configs
            .into_iter()
            .map(|config| PeerWrite {
                config,
                endpoint: None,
            })
            .collect();
        self.ask(|reply| Command::InstallMany { writes, reply })
            .await?
    }

    /// Record the addresses of peers adopted from the data plane at start (their stored
    /// configs), so newcomers cannot take them.
    pub async fn adopt_addresses(&self, configs: Vec<PeerConfig>) -> Result<(), InstallError> {
        self.ask(|reply| Command::AdoptAddresses { configs, reply })
            .await
    }

    /// Install many peers without endpoints (preload at boot, push mode). Peers whose
    /// allowed IPs overlap installed peers' are left out (see `install_many_checked`).
    pub async fn install_many(&self, configs: Vec<PeerConfig>) -> Result<usize, InstallError> {
        Ok(self.install_many_checked(configs).await?.installed)
    }
}

impl Shell {
    /// Records installed peers' addresses in the index.
    pub(super) fn index<'a>(&mut self, writes: impl IntoIterator<Item = &'a PeerWrite>) {
        for write in writes {
            self.addresses.insert(&write.config);
        }
    }

    /// After a sweep resynchronised the installed set with the data plane: forgets the
    /// addresses of peers no longer on it.
    pub(super) fn forget_departed(&mut self) {
        let installed = self.scheduler.installed();
        let guard = installed.lock();
        if let Ok(set) = &guard {
            self.addresses.retain(|k| set.contains(k));
        }
    }
}

#[cfg(test)]
mod tests;
