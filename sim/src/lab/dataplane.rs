//! The WireGuard interface a run owns: wireguard-go (userspace, the only choice on these
//! machines) or a kernel link where the module exists. It can be killed and restarted to
//! simulate a gateway reboot, and its guard removes process, UAPI socket and link on drop.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use super::clean::RunLock;
use super::names::{check_ifname, default_log_name, uapi_socket_path};
use super::net::Netlink;
use super::process::{spawn_in, Child, Usage};
use super::{LabError, Namespace};

/// Environment variable wireguard-go insists on when it finds no kernel module warning-free.
const WG_GO_ENV: &str = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD";

/// How often a starting wireguard-go's UAPI socket is tried.
const SOCKET_POLL: Duration = Duration::from_millis(1);

/// Which implementation carries the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlaneBackend {
    /// wireguard-go, configured over its UAPI socket.
    Userspace,
    /// The kernel module, configured over generic netlink inside the namespace.
    Kernel,
}

impl DataPlaneBackend {
    fn wg(self) -> Backend {
        match self {
            DataPlaneBackend::Userspace => Backend::Userspace,
            DataPlaneBackend::Kernel => Backend::Kernel,
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct DataPlaneSpec {
    /// Interface name; unique per run (UAPI sockets are global), at most 15 characters.
    pub interface: String,
    pub backend: DataPlaneBackend,
    pub private_key: [u8; 32],
    pub listen_port: u16,
    /// The interface's tunnel address with prefix, e.g. 100.64.0.1/10.
    pub address: Ipv4Net,
}

/// How to run wireguard-go; the defaults suit every run, tests override the program.
#[derive(Clone, Debug)]
pub struct DataPlaneOptions {
    /// The wireguard-go binary (looked up in PATH when relative).
    pub program: PathBuf,
    /// Where wireguard-go's stdout and stderr go; `None`: `<tmp>/jitwg-<iface>.log`.
    pub log: Option<PathBuf>,
    /// How long to wait for the UAPI socket to appear.
    pub socket_timeout: Duration,
    /// `GOMAXPROCS` for wireguard-go; `None`: the Go runtime's own choice (the CPUs it may
    /// run on) or whatever the environment says.
    pub go_max_procs: Option<u32>,
}

impl Default for DataPlaneOptions {
    fn default() -> Self {
        DataPlaneOptions {
            program: PathBuf::from("wireguard-go"),
            log: None,
            socket_timeout: Duration::from_secs(10),
            go_max_procs: None,
        }
    }
}

/// Live state of one peer, as the data plane reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: [u8; 32],
    pub last_handshake: Option<SystemTime>,
    pub endpoint: Option<SocketAddr>,
    /// `None` when off (the backends report off as 0 or absent).
    pub persistent_keepalive: Option<u16>,
}

/// A running WireGuard interface. Holds its namespace, so the namespace outlives it.
pub struct DataPlane {
    ns: Arc<Namespace>,
    spec: DataPlaneSpec,
    options: DataPlaneOptions,
    iface: InterfaceName,
    /// wireguard-go; `None` for the kernel backend or after `kill9`.
    child: Option<Child>,
    /// Where wireguard-go logs (userspace only).
    log: PathBuf,
    /// The log is the default one in the temporary directory, not a path the starter chose:
    /// it is scratch, removed with the data plane (errors carry its tail already).
    own_log: bool,
    /// Marks the interface name as in use, so `jitwg clean` leaves it alone.
    _lock: RunLock,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("ns", &self.ns.name())
            .field("interface", &self.spec.interface)
            .field("backend", &self.spec.backend)
            .field("pid", &self.pid())
            .finish()
    }
}

impl DataPlane {
    /// Starts the data plane in `ns`, keyed and addressed, link up.
    pub fn start(ns: &Arc<Namespace>, spec: DataPlaneSpec) -> Result<DataPlane, LabError> {
        DataPlane::start_with(ns, spec, DataPlaneOptions::default())
    }

    /// [`start`](Self::start) with explicit options.
    pub fn start_with(
        ns: &Arc<Namespace>,
        spec: DataPlaneSpec,
        options: DataPlaneOptions,
    ) -> Result<DataPlane, LabError> {
        check_ifname(&spec.interface)?;
        let iface: InterfaceName = spec
            .interface
            .parse()
            .map_err(|e| LabError::InterfaceName {
                name: spec.interface.clone(),
                reason: format!("{e}"),
            })?;
        let own_log = options.log.is_none();
        let log = options
            .log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(default_log_name(&spec.interface)));
        let lock = RunLock::acquire(&spec.interface)?;
        let mut plane = DataPlane {
            ns: Arc::clone(ns),
            spec,
            options,
            iface,
            child: None,
            log,
            own_log,
            _lock: lock,
        };
        plane.bring_up()?;
        Ok(plane)
    }

    pub fn public_key(&self) -> [u8; 32] {
        Key(self.spec.private_key).get_public().0
    }

    pub fn interface(&self) -> &str {
        &self.spec.interface
    }

    pub fn spec(&self) -> &DataPlaneSpec {
        &self.spec
    }

    /// wireguard-go's log file (userspace backend).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// wireguard-go's pid (`None` for the kernel backend or while killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.child.as_ref().and_then(Child::usage)
    }

    /// Simulates a reboot: SIGKILL wireguard-go (its UAPI socket stays behind, as after a
    /// crash) or delete the kernel link.
    pub fn kill9(&mut self) -> Result<(), LabError> {
        match self.spec.backend {
            DataPlaneBackend::Userspace => {
                if let Some(mut child) = self.child.take() {
                    child.kill9()?;
                }
                Ok(())
            }
            DataPlaneBackend::Kernel => self.delete_kernel_link(),
        }
    }

    /// The first half of a simultaneous crash: SIGKILLs wireguard-go without waiting for it, so
    /// its exit (the kernel tears its TUN link down on the way) overlaps the daemon's;
    /// [`restart`](Self::restart) reaps it. The kernel backend has no process: a no-op.
    pub fn signal_kill(&mut self) -> Result<(), LabError> {
        match self.child.as_mut() {
            Some(child) => child.signal_kill(),
            None => Ok(()),
        }
    }

    /// Deletes the kernel link, emptying it first. The kernel destroys a deleted link's
    /// peers outside RTNL, with one normal RCU grace period each (~17 ms per peer under
    /// TCG: minutes for 10,000 peers), while removing them in a set-device request
    /// happens under RTNL, where grace periods are expedited (well under 1 ms per peer
    /// on a generic kernel). A missing link is not an error.
    fn delete_kernel_link(&mut self) -> Result<(), LabError> {
        let name = self.spec.interface.clone();
        if Netlink::with(&self.ns, |nl| nl.link_index(&name))?.is_none() {
            return Ok(());
        }
        let start = Instant::now();
        match self.remove_all_peers() {
            Ok(()) => tracing::info!(
                iface = %name,
                took_ms = start.elapsed().as_secs_f64() * 1000.0,
                "removed every peer before deleting the link"
            ),
            // Deleting still works, only slower.
            Err(e) => tracing::warn!(iface = %name, error = %e, "emptying the link failed"),
        }
        Netlink::with(&self.ns, |nl| nl.delete_link(&name))
    }

    /// Removes one peer (like `wg set IFACE peer KEY remove`).
    pub fn remove_peer(&self, public_key: [u8; 32]) -> Result<(), LabError> {
        self.apply(DeviceUpdate::new().remove_peer_by_key(&Key(public_key)))
    }

    /// Removes every peer in one request (WireGuard's replace-peers with an empty list).
    pub fn remove_all_peers(&self) -> Result<(), LabError> {
        self.apply(DeviceUpdate::new().replace_peers())
    }

    /// After [`kill9`](Self::kill9): the same spec again, with no peers.
    pub fn restart(&mut self) -> Result<(), LabError> {
        let start = Instant::now();
        self.kill9()?;
        let killed = start.elapsed();
        self.bring_up()?;
        // Where a reboot's restart time goes (the testbed's part of `reboot_at_ms`).
        tracing::info!(
            iface = %self.spec.interface,
            kill_ms = killed.as_secs_f64() * 1000.0,
            total_ms = start.elapsed().as_secs_f64() * 1000.0,
            "data plane restarted"
        );
        Ok(())
    }

    /// Installs (or updates) one peer.
    pub fn add_peer(
        &self,
        public_key: [u8; 32],
        endpoint: Option<SocketAddr>,
        allowed_ips: &[IpNet],
        persistent_keepalive: Option<u16>,
    ) -> Result<(), LabError> {
        let mut peer = PeerConfigBuilder::new(&Key(public_key));
        if let Some(endpoint) = endpoint {
            peer = peer.set_endpoint(endpoint);
        }
        for net in allowed_ips {
            peer = peer.add_allowed_ip(net.addr(), net.prefix_len());
        }
        if let Some(interval) = persistent_keepalive {
            peer = peer.set_persistent_keepalive_interval(interval);
        }
        self.apply(DeviceUpdate::new().add_peer(peer))
    }

    /// Installs many peers without endpoints in as few requests as the backend allows
    /// (wireguard-control splits a kernel request into netlink messages; the UAPI takes
    /// one transaction).
    pub fn add_peers<'a>(
        &self,
        peers: impl IntoIterator<Item = ([u8; 32], &'a [IpNet])>,
    ) -> Result<(), LabError> {
        let builders = peers.into_iter().map(|(key, allowed_ips)| {
            allowed_ips
                .iter()
                .fold(PeerConfigBuilder::new(&Key(key)), |p, net| {
                    p.add_allowed_ip(net.addr(), net.prefix_len())
                })
        });
        self.apply(DeviceUpdate::new().add_peers(&builders.collect::<Vec<_>>()))
    }

    /// Every configured peer.
    pub fn peers(&self) -> Result<Vec<PeerState>, LabError> {
        let device = self.device()?;
        Ok(device
            .peers
            .iter()
            .map(|p| PeerState {
                public_key: p.config.public_key.0,
                last_handshake: p.stats.last_handshake_time,
                endpoint: p.config.endpoint,
                persistent_keepalive: p.config.persistent_keepalive_interval.filter(|&k| k != 0),
            })
            .collect())
    }

    /// The whole device as wireguard-control reads it (private key, port, peers).
    pub fn device(&self) -> Result<Device, LabError> {
        self.ensure_running()?;
        let read = |iface: InterfaceName, backend: Backend| Device::get(&iface, backend);
        let result = match self.spec.backend {
            DataPlaneBackend::Userspace => read(self.iface, Backend::Userspace),
            DataPlaneBackend::Kernel => {
                let iface = self.iface;
                self.ns.run(move || read(iface, Backend::Kernel))?
            }
        };
        result.map_err(|source| LabError::WireguardRead {
            iface: self.spec.interface.clone(),
            source,
        })
    }

    /// Applies `update`, never letting wireguard-control start a data plane on its own.
    fn apply(&self, update: DeviceUpdate) -> Result<(), LabError> {
        self.ensure_running()?;
        let backend = self.spec.backend.wg();
        let iface = self.iface;
        let result = match self.spec.backend {
            DataPlaneBackend::Userspace => update.apply(&iface, backend),
            DataPlaneBackend::Kernel => self.ns.run(move || update.apply(&iface, backend))?,
        };
        result.map_err(|source| LabError::WireguardConfigure {
            iface: self.spec.interface.clone(),
            source,
        })
    }

    /// Fails with [`LabError::DataPlaneDown`] unless the interface exists: wireguard-control
    /// would otherwise spawn its own wireguard-go (userspace) or create the link (kernel).
    fn ensure_running(&self) -> Result<(), LabError> {
        let down = || LabError::DataPlaneDown {
            iface: self.spec.interface.clone(),
        };
        match self.spec.backend {
            DataPlaneBackend::Userspace => {
                if self.child.is_none() {
                    return Err(down());
                }
                UnixStream::connect(uapi_socket_path(&self.spec.interface))
                    .map(drop)
                    .map_err(|_| down())
            }
            DataPlaneBackend::Kernel => {
                let name = self.spec.interface.clone();
                match Netlink::with(&self.ns, |nl| nl.link_index(&name))? {
                    Some(_) => Ok(()),
                    None => Err(down()),
                }
            }
        }
    }

    fn bring_up(&mut self) -> Result<(), LabError> {
        let start = Instant::now();
        match self.spec.backend {
            DataPlaneBackend::Userspace => self.start_userspace()?,
            DataPlaneBackend::Kernel => {
                let name = self.spec.interface.clone();
                Netlink::with(&self.ns, |nl| nl.create_wireguard(&name))?;
            }
        }
        let started = start.elapsed();
        let key = DeviceUpdate::new()
            .set_private_key(Key(self.spec.private_key))
            .set_listen_port(self.spec.listen_port);
        self.apply(key)?;
        let keyed = start.elapsed();
        let (name, address) = (self.spec.interface.clone(), self.spec.address);
        Netlink::with(&self.ns, |nl| {
            nl.add_address(&name, address)?;
            nl.set_up(&name)
        })?;
        tracing::info!(
            iface = %name,
            ns = self.ns.name(),
            pid = ?self.pid(),
            started_ms = started.as_secs_f64() * 1000.0,
            keyed_ms = keyed.as_secs_f64() * 1000.0,
            up_ms = start.elapsed().as_secs_f64() * 1000.0,
            "data plane up"
        );
        Ok(())
    }

    fn start_userspace(&mut self) -> Result<(), LabError> {
        let iface = self.spec.interface.clone();
        let socket = uapi_socket_path(&iface);
        if socket.exists() {
            if UnixStream::connect(&socket).is_ok() {
                return Err(LabError::UapiSocketBusy {
                    iface,
                    path: socket,
                });
            }
            std::fs::remove_file(&socket).map_err(|source| LabError::UapiSocketRemove {
                path: socket.clone(),
                source,
            })?;
        }
        // A killed wireguard-go's TUN link vanishes asynchronously; a new one needs the name.
        let waiting = Instant::now();
        self.wait_for_link_gone(Duration::from_secs(5))?;
        let link_gone = waiting.elapsed();
        let log_file = File::create(&self.log).map_err(|source| LabError::LogFile {
            path: self.log.clone(),
            source,
        })?;
        let log_err = log_file.try_clone().map_err(|source| LabError::LogFile {
            path: self.log.clone(),
            source,
        })?;
        let mut cmd = Command::new(&self.options.program);
        cmd.arg("-f")
            .arg(&iface)
            .env(WG_GO_ENV, "1")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        if let Some(procs) = self.options.go_max_procs {
            cmd.env("GOMAXPROCS", procs.to_string());
        }
        let mut child = spawn_in(&self.ns, cmd).map_err(|e| match e {
            LabError::Spawn {
                program, source, ..
            } if source.kind() == std::io::ErrorKind::NotFound => {
                LabError::DataPlaneBinaryMissing { program }
            }
            other => other,
        })?;
        let deadline = Instant::now() + self.options.socket_timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(LabError::DataPlaneExited {
                    iface,
                    status: status.to_string(),
                    log: self.log.clone(),
                    output: read_tail(&self.log),
                });
            }
            if UnixStream::connect(&socket).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                child.kill9()?;
                return Err(LabError::UapiSocketTimeout {
                    iface,
                    path: socket,
                    waited: self.options.socket_timeout,
                    log: self.log.clone(),
                    output: read_tail(&self.log),
                });
            }
            // Fine-grained: this wait is the testbed's, not the gateway's, and it lies inside a
            // reboot's measured recovery (wireguard-go takes ~30 ms to listen).
            std::thread::sleep(SOCKET_POLL);
        }
        tracing::info!(
            iface = %self.spec.interface,
            link_gone_ms = link_gone.as_secs_f64() * 1000.0,
            socket_ms = waiting.elapsed().as_secs_f64() * 1000.0,
            "wireguard-go listening"
        );
        self.child = Some(child);
        Ok(())
    }

    fn wait_for_link_gone(&self, timeout: Duration) -> Result<(), LabError> {
        let name = self.spec.interface.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let present = Netlink::with(&self.ns, |nl| nl.link_index(&name))?.is_some();
            if !present || Instant::now() >= deadline {
                // If it is still there, wireguard-go's own error explains it.
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        match self.spec.backend {
            DataPlaneBackend::Userspace => {
                if let Some(mut child) = self.child.take() {
                    child.terminate(Duration::from_secs(2))?;
                }
                let socket = uapi_socket_path(&self.spec.interface);
                match std::fs::remove_file(&socket) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(LabError::UapiSocketRemove {
                            path: socket,
                            source,
                        })
                    }
                }
                let name = self.spec.interface.clone();
                Netlink::with(&self.ns, |nl| nl.delete_link(&name))
            }
            DataPlaneBackend::Kernel => self.kill9(),
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(iface = %self.spec.interface, error = %e, "tearing down data plane");
        }
        if self.own_log {
            if let Err(e) = super::clean::remove_scratch(&self.log) {
                tracing::warn!(error = %e, "removing the data plane's log");
            }
        }
    }
}

/// The last 2 KiB of a log file, for error messages.
fn read_tail(path: &std::path::Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            let start = bytes.len().saturating_sub(2048);
            text = String::from_utf8_lossy(&bytes[start..]).trim().to_string();
        }
    }
    if text.is_empty() {
        "(no output)".into()
    } else {
        text
    }
}
