//! The WireGuard data plane as jitwgd sees it: an interface that already exists,
//! driven through wireguard-control (userspace UAPI for wireguard-go, netlink for the
//! kernel). Every write first checks that the interface is still there, because
//! wireguard-control's userspace `apply()` would otherwise start a wireguard-go of
//! its own.

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::SystemTime;

use wireguard_control::{
    AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder,
};

use crate::peer::{PeerConfig, PublicKey};

/// Where wireguard-go puts its UAPI sockets (the first that exists wins, as in
/// wireguard-control and wg(8)).
const UAPI_DIRS: [&str; 2] = ["/var/run/wireguard", "/run/wireguard"];

/// What failed while talking to the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error(
        "WireGuard interface {name} does not exist on the {backend} backend{hint}; \
         jitwgd attaches to an existing interface and never creates one \
         (create it first, e.g. `wireguard-go {name}` or `ip link add {name} type wireguard`, \
         then `wg set {name} private-key FILE listen-port PORT`)"
    )]
    Missing {
        name: String,
        backend: Backend,
        hint: String,
    },
    #[error("interface {name} has no private key (set one with `wg set {name} private-key FILE`)")]
    NoPrivateKey { name: String },
    #[error("interface {name} has no listen port and none was configured")]
    NoListenPort { name: String },
    #[error("reading interface {name} failed")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuring interface {name} failed")]
    Apply {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// One installed peer as the data plane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPeer {
    pub public_key: PublicKey,
    /// `None`: no handshake has completed since the peer was installed.
    pub last_handshake: Option<SystemTime>,
    pub endpoint: Option<SocketAddr>,
}

/// The parts of the interface jitwgd needs at start-up.
#[derive(Debug, Clone)]
pub struct InterfaceIdentity {
    pub private_key: [u8; 32],
    pub listen_port: Option<u16>,
}

/// A handle on an existing WireGuard interface.
#[derive(Debug, Clone)]
pub struct DataPlane {
    name: InterfaceName,
    backend: Backend,
}

impl DataPlane {
    /// Attach to `name`, failing clearly when it does not exist.
    pub fn attach(name: &str, backend: Backend) -> Result<Self, DataPlaneError> {
        let iface: InterfaceName = name.parse().map_err(|e| DataPlaneError::InvalidName {
            name: name.to_string(),
            reason: format!("{e:?}"),
        })?;
        let dp = Self {
            name: iface,
            backend,
        };
        dp.ensure_exists()?;
        Ok(dp)
    }

    pub fn name(&self) -> String {
        self.name.as_str_lossy().into_owned()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Check the interface is still there. Cheap: a socket connect for userspace, a
    /// netlink dump of interface names for the kernel.
    pub fn ensure_exists(&self) -> Result<(), DataPlaneError> {
        let name = self.name();
        match self.backend {
            Backend::Userspace => {
                let candidates: Vec<PathBuf> = UAPI_DIRS
                    .iter()
                    .map(|d| PathBuf::from(d).join(format!("{name}.sock")))
                    .collect();
                if candidates.iter().any(|p| UnixStream::connect(p).is_ok()) {
                    Ok(())
                } else {
                    Err(DataPlaneError::Missing {
                        hint: format!(
                            " (no UAPI socket accepts connections at {})",
                            candidates[0].display()
                        ),
                        name,
                        backend: self.backend,
                    })
                }
            }
            Backend::Kernel => {
                let names =
                    Device::list(Backend::Kernel).map_err(|source| DataPlaneError::Missing {
                        name: name.clone(),
                        backend: self.backend,
                        hint: format!(" (listing kernel WireGuard interfaces failed: {source})"),
                    })?;
                if names.contains(&self.name) {
                    Ok(())
                } else {
                    Err(DataPlaneError::Missing {
                        name,
                        backend: self.backend,
                        hint: String::new(),
                    })
                }
            }
        }
    }

    fn device(&self) -> Result<Device, DataPlaneError> {
        self.ensure_exists()?;
        Device::get(&self.name, self.backend).map_err(|source| DataPlaneError::Read {
            name: self.name(),
            source,
        })
    }

    /// The interface's private key and listen port, and the peers already installed, from
    /// one read: at attach time with tens of thousands of peers, every full read counts.
    pub fn identity_and_peers(
        &self,
    ) -> Result<(InterfaceIdentity, Vec<InstalledPeer>), DataPlaneError> {
        let mut device = self.device()?;
        let private_key = device
            .private_key
            .take()
            .ok_or_else(|| DataPlaneError::NoPrivateKey { name: self.name() })?;
        let identity = InterfaceIdentity {
            private_key: private_key.0,
            listen_port: device.listen_port.filter(|p| *p != 0),
        };
        Ok((identity, installed_peers(device)))
    }

    /// All installed peers with their last handshake.
    pub fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
        Ok(installed_peers(self.device()?))
    }

    /// Apply one batch of changes. The existence check comes first so that the
    /// userspace backend can never start a wireguard-go of its own.
    pub fn apply(&self, update: DeviceUpdate) -> Result<(), DataPlaneError> {
        self.ensure_exists()?;
        update
            .apply(&self.name, self.backend)
            .map_err(|source| DataPlaneError::Apply {
                name: self.name(),
                source,
            })
    }
}

fn installed_peers(device: Device) -> Vec<InstalledPeer> {
    device
        .peers
        .into_iter()
        .map(|p| InstalledPeer {
            public_key: PublicKey(p.config.public_key.0),
            last_handshake: p.stats.last_handshake_time,
            endpoint: p.config.endpoint,
        })
        .collect()
}

/// What the install worker writes for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerWrite {
    pub config: PeerConfig,
    /// The captured source of its initiation (JIT) or `None` (preload, push).
    pub endpoint: Option<SocketAddr>,
}

/// Build the wireguard-control builder for a peer. With `keepalive = Some(n)` the data
/// plane sends a keepalive at once, which makes it initiate a handshake to `endpoint`
/// immediately (role inversion).
pub fn peer_builder(write: &PeerWrite, keepalive: Option<u16>) -> PeerConfigBuilder {
    let cfg = &write.config;
    let allowed: Vec<AllowedIp> = cfg
        .allowed_ips
        .iter()
        .map(|net| AllowedIp {
            address: net.addr(),
            cidr: net.prefix_len(),
        })
        .collect();
    let mut b = PeerConfigBuilder::new(&Key(cfg.public_key.0))
        .replace_allowed_ips()
        .add_allowed_ips(&allowed);
    if let Some(psk) = cfg.preshared_key {
        b = b.set_preshared_key(Key(psk));
    }
    if let Some(ep) = write.endpoint {
        b = b.set_endpoint(ep);
    }
    if let Some(k) = keepalive {
        b = b.set_persistent_keepalive_interval(k);
    }
    b
}

/// Builder that turns the install-time keepalive off again, so the peer can go idle.
pub fn clear_keepalive(key: &PublicKey) -> PeerConfigBuilder {
    PeerConfigBuilder::new(&Key(key.0)).set_persistent_keepalive_interval(0)
}

/// Builder that turns an installed peer's keepalive on, which makes the data plane send
/// a keepalive (and so a handshake initiation) at once: a deferred role inversion.
pub fn start_keepalive(key: &PublicKey, interval: u16) -> PeerConfigBuilder {
    PeerConfigBuilder::new(&Key(key.0)).set_persistent_keepalive_interval(interval)
}

/// Builder that removes a peer.
pub fn removal(key: &PublicKey) -> PeerConfigBuilder {
    PeerConfigBuilder::new(&Key(key.0)).remove()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_userspace_interface_is_a_clear_error_and_spawns_nothing() {
        let err = DataPlane::attach("jwgnonexist0", Backend::Userspace).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(msg.contains("never creates one"), "{msg}");
        // No wireguard-go was started behind our back.
        assert!(!std::path::Path::new("/var/run/wireguard/jwgnonexist0.sock").exists());
    }

    #[test]
    fn too_long_interface_name_is_refused() {
        let err = DataPlane::attach("this-name-is-far-too-long", Backend::Userspace).unwrap_err();
        assert!(matches!(err, DataPlaneError::InvalidName { .. }));
    }
}
