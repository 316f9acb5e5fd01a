//! Stage two: a `ScenarioFile` becomes the `Scenario` the run uses — values
//! checked, populations expanded into clients with seeded keys, start times and
//! addresses. Pure: no IO, so every check is unit-testable.

use std::net::Ipv4Addr;
use std::time::Duration;

use boringtun::x25519::{PublicKey, StaticSecret};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::arrival::Arrival;
use super::attack::{AttackPlan, AttackShape};
use super::file::{
    ArrivalFile, BackendName, BehaviourFile, BootName, DaemonFile, EventKindName, ModeName,
    ScenarioFile, Switch,
};
use super::FieldError;

/// The most clients (plus extra registered peers) one run may hold: wireguard-go's
/// peer limit, and the size of the client source range.
pub const MAX_PEERS: u32 = 65_000;

/// First host offset handed to clients inside 198.18.0.0/16 (lower ones are left
/// for the lab's own link addresses).
const CLIENT_SOURCE_FIRST_HOST: u32 = 256;
/// 100.64.0.1 is the gateway's tunnel address; clients start at .2.
const TUNNEL_FIRST_HOST: u32 = 2;

/// A run, fully resolved.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The effective file (after `--set` and `--seed`), kept for the results.
    pub file: ScenarioFile,
    pub name: String,
    pub seed: u64,
    pub backend: BackendName,
    pub duration: Duration,
    pub stale_threshold: Duration,
    pub daemon: DaemonSettings,
    pub control_plane: ControlPlaneSettings,
    pub populations: Vec<Population>,
    /// Every client, sorted by start time (attacking populations are not clients).
    pub clients: Vec<ClientPlan>,
    /// The attacking populations (`flood`, `replay`), in population order.
    pub attacks: Vec<AttackPlan>,
    /// Registered, never connecting (`extra_registered`).
    pub extra_peers: Vec<PeerIdentity>,
    /// Registered and in jitwgd's database before it starts, never connecting (`stored_peers`).
    pub stored_peers: Vec<PeerIdentity>,
    /// How often the driver samples the data plane and the daemon.
    pub sample_every: Duration,
    /// Put into the data plane before the daemon starts (`preinstalled_peers`).
    pub preinstalled: Vec<PreinstalledPeer>,
    /// Sorted by `at`.
    pub events: Vec<TimedEvent>,
    /// `[expect]`, parsed by `jitwg_reports` (filled by `scenario::parse`).
    pub expectations: Vec<jitwg_reports::Expectation>,
    /// `[lab] cpus`; checked against the machine's CPUs by `run` and `validate`.
    pub cpus: super::cpus::CpuChoice,
}

/// jitwgd's settings for this run. `set` is rendered into jitwgd's config file as is
/// (`run::daemon_config`); the three effective values below are the ones the driver
/// itself acts on (NATS or not, what a run reports), resolved against jitwgd's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// The `[daemon]` table; `None` keys are left to jitwgd.
    pub set: DaemonFile,
    pub mode: ModeName,
    pub boot: BootName,
    pub initiate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneSettings {
    pub register_clients: bool,
    pub latency: Duration,
    pub error_rate: f64,
    /// HTTPS with a CA generated for the run.
    pub tls: bool,
    /// A bearer token generated for the run, required on every request.
    pub token: bool,
    /// A client certificate from the run's CA, required (implies `tls`).
    pub client_cert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    pub name: String,
    pub count: u32,
    pub arrival: Arrival,
    pub behaviour: BehaviourFile,
    pub link: Link,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
}

/// A key pair and the tunnel address registered for it.
#[derive(Clone)]
pub struct PeerIdentity {
    pub private_key: [u8; 32],
    pub public_key: [u8; 32],
    pub tunnel_ip: Ipv4Addr,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys, even throwaway ones.
        f.debug_struct("PeerIdentity")
            .field("public_key", &hex::encode(self.public_key))
            .field("tunnel_ip", &self.tunnel_ip)
            .finish()
    }
}

impl PeerIdentity {
    pub fn public_hex(&self) -> String {
        hex::encode(self.public_key)
    }
}

/// One simulated client.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Stable across runs with the same seed: index in population order.
    pub id: u32,
    /// Index into `Scenario::populations`.
    pub population: usize,
    /// When it starts, relative to the run start.
    pub start: Duration,
    pub identity: PeerIdentity,
    /// Its own underlay address, so wireguard-go's per-source rate limit sees many sources.
    pub source_ip: Ipv4Addr,
    /// Seeds the client's link randomness (loss, jitter).
    pub link_seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimedEvent {
    pub at: Duration,
    pub action: EventAction,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventAction {
    Reboot,
    ApiOutage { until: Duration },
    DaemonRestart,
    DaemonKill,
}

/// Random streams of one seed, separate so that adding a client does not shift
/// every other client's arrival time.
const STREAM_KEYS: u64 = 1;
const STREAM_ARRIVALS: u64 = 2;
const STREAM_LINKS: u64 = 3;
const STREAM_PREINSTALLED: u64 = 4;
/// Unregistered flood keys and each attack's own seed.
pub(super) const STREAM_ATTACKS: u64 = 5;

pub(super) fn rng(seed: u64, stream: u64) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A synthetic peer for `preinstalled_peers`: it only has to occupy the data plane, so
/// its key is random bytes (no private key, never used in a handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreinstalledPeer {
    pub public_key: [u8; 32],
    pub tunnel_ip: Ipv4Addr,
}

pub(super) fn identity(rng: &mut ChaCha20Rng, tunnel_host: u32) -> PeerIdentity {
    let mut private_key = [0u8; 32];
    rng.fill_bytes(&mut private_key);
    let secret = StaticSecret::from(private_key);
    PeerIdentity {
        private_key: secret.to_bytes(),
        public_key: PublicKey::from(&secret).to_bytes(),
        tunnel_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + tunnel_host),
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        key: key.into(),
        reason: reason.into(),
    }
}

fn check_rate(key: &str, rate: f64) -> Result<(), FieldError> {
    if rate.is_finite() && rate > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("rate must be a positive number, got {rate}"),
        ))
    }
}

fn check_fraction(key: &str, value: f64) -> Result<(), FieldError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be between 0.0 and 1.0, got {value}"),
        ))
    }
}

fn arrival(key: &str, file: &ArrivalFile) -> Result<Arrival, FieldError> {
    Ok(match *file {
        ArrivalFile::Constant { rate } => {
            check_rate(&format!("{key}.rate"), rate)?;
            Arrival::Constant { rate }
        }
        ArrivalFile::Poisson { rate } => {
            check_rate(&format!("{key}.rate"), rate)?;
            Arrival::Poisson { rate }
        }
        ArrivalFile::Burst { at } => Arrival::Burst { at },
        ArrivalFile::Ramp { from, to, over } => {
            if !(from.is_finite() && from >= 0.0) {
                return Err(invalid(format!("{key}.from"), "must be >= 0"));
            }
            check_rate(&format!("{key}.to"), to)?;
            Arrival::Ramp { from, to, over }
        }
    })
}

fn check_behaviour(key: &str, b: &BehaviourFile) -> Result<(), FieldError> {
    match *b {
        BehaviourFile::ConnectOnce => Ok(()),
        BehaviourFile::Stay { traffic_every, .. } if traffic_every.is_zero() => Err(invalid(
            format!("{key}.traffic_every"),
            "must be longer than 0s",
        )),
        BehaviourFile::Stay { .. } => Ok(()),
        BehaviourFile::Return { times: 0, .. } => {
            Err(invalid(format!("{key}.times"), "must be at least 1"))
        }
        BehaviourFile::Return { .. } => Ok(()),
        BehaviourFile::Flood(_) | BehaviourFile::Replay(_) => Ok(()),
    }
}

/// The shape of an attacking population's behaviour; `None` for clients.
pub(super) fn attack_shape(b: &BehaviourFile) -> Option<AttackShape> {
    match b {
        BehaviourFile::Flood(f) => Some(AttackShape::flood(f)),
        BehaviourFile::Replay(r) => Some(AttackShape::replay(r)),
        _ => None,
    }
}

/// Checks every value and expands populations. Errors name the offending key.
pub fn resolve(file: ScenarioFile) -> Result<Scenario, FieldError> {
    if file.name.is_empty()
        || !file
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            "name",
            "must be non-empty and use only letters, digits, '-' and '_'",
        ));
    }
    if file.duration.is_zero() {
        return Err(invalid("duration", "must be longer than 0s"));
    }
    if file.stale_threshold.is_zero() {
        return Err(invalid("stale_threshold", "must be longer than 0s"));
    }
    if file.sample_every < Duration::from_millis(100) {
        return Err(invalid("sample_every", "must be at least 100ms"));
    }
    let d = &file.daemon;
    // The same rules jitwgd's resolver applies, checked here so a bad scenario fails
    // `jitwg validate` naming its own key instead of failing at daemon start.
    for (key, value) in [
        ("daemon.sweep_every", d.sweep_every),
        ("daemon.sweep_budget", d.sweep_budget),
        ("daemon.evict_after", d.evict_after),
        ("daemon.api_timeout", d.api_timeout),
        ("daemon.source_penalty_forgive", d.source_penalty_forgive),
    ] {
        if value.is_some_and(|v| v.is_zero()) {
            return Err(invalid(key, "must be longer than 0s"));
        }
    }
    for (key, value) in [
        ("daemon.sweep_chunk", d.sweep_chunk),
        ("daemon.max_pending", d.max_pending),
        ("daemon.api_concurrency", d.api_concurrency),
        ("daemon.unknown_lookup_burst", d.unknown_lookup_burst),
        ("daemon.source_penalty_burst", d.source_penalty_burst),
        ("daemon.identify_workers", d.identify_workers),
        ("daemon.identify_queue", d.identify_queue),
        (
            "daemon.identify_queue_per_source",
            d.identify_queue_per_source,
        ),
    ] {
        if value == Some(0) {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    check_fraction(
        "control_plane.faults.error_rate",
        file.control_plane.faults.error_rate,
    )?;
    if file.control_plane.client_cert && !file.control_plane.tls {
        return Err(invalid(
            "control_plane.client_cert",
            "a client certificate needs tls = true",
        ));
    }
    if file.populations.is_empty() {
        return Err(invalid(
            "population",
            "at least one [[population]] is required",
        ));
    }

    let mut populations = Vec::with_capacity(file.populations.len());
    let mut total: u64 = u64::from(file.control_plane.extra_registered)
        + u64::from(file.preinstalled_peers)
        + u64::from(file.stored_peers);
    for (i, p) in file.populations.iter().enumerate() {
        let key = format!("population[{i}]");
        if p.name.is_empty() {
            return Err(invalid(format!("{key}.name"), "must not be empty"));
        }
        if file.populations[..i].iter().any(|q| q.name == p.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("duplicate population name {:?}", p.name),
            ));
        }
        if p.count == 0 {
            return Err(invalid(format!("{key}.count"), "must be at least 1"));
        }
        if let Some(shape) = attack_shape(&p.behaviour) {
            shape.check(&format!("{key}.behaviour"), p.count)?;
            if !matches!(p.arrival, ArrivalFile::Burst { .. }) {
                return Err(invalid(
                    format!("{key}.arrival"),
                    "an attack starts at `arrival = { kind = \"burst\", at = ... }`; \
                     its pace is `behaviour.packets_per_second`",
                ));
            }
            total += u64::from(shape.registered_keys());
        } else {
            total += u64::from(p.count);
        }
        check_fraction(&format!("{key}.link.loss"), p.link.loss)?;
        check_behaviour(&format!("{key}.behaviour"), &p.behaviour)?;
        populations.push(Population {
            name: p.name.clone(),
            count: p.count,
            arrival: arrival(&format!("{key}.arrival"), &p.arrival)?,
            behaviour: p.behaviour.clone(),
            link: Link {
                delay: p.link.delay,
                jitter: p.link.jitter,
                loss: p.link.loss,
            },
        });
    }
    if total > u64::from(MAX_PEERS) {
        return Err(invalid(
            "population",
            format!(
                "{total} clients plus extra_registered, preinstalled_peers and stored_peers exceed the \
                 limit of {MAX_PEERS}"
            ),
        ));
    }

    let mut events = Vec::with_capacity(file.events.len());
    for (i, e) in file.events.iter().enumerate() {
        let key = format!("event[{i}]");
        if e.at > file.duration {
            return Err(invalid(
                format!("{key}.at"),
                "is after the end of the run (duration)",
            ));
        }
        let action = match (e.kind, e.until) {
            (EventKindName::ApiOutage, Some(until)) if until > e.at => {
                EventAction::ApiOutage { until }
            }
            (EventKindName::ApiOutage, Some(_)) => {
                return Err(invalid(format!("{key}.until"), "must be after `at`"))
            }
            (EventKindName::ApiOutage, None) => {
                return Err(invalid(
                    format!("{key}.until"),
                    "is required for api_outage",
                ))
            }
            (_, Some(_)) => {
                return Err(invalid(
                    format!("{key}.until"),
                    "is only valid for api_outage",
                ))
            }
            (EventKindName::Reboot, None) => EventAction::Reboot,
            (EventKindName::DaemonRestart, None) => EventAction::DaemonRestart,
            (EventKindName::DaemonKill, None) => EventAction::DaemonKill,
        };
        events.push(TimedEvent { at: e.at, action });
    }
    events.sort_by_key(|e| e.at);

    let mut keys = rng(file.seed, STREAM_KEYS);
    let mut arrivals = rng(file.seed, STREAM_ARRIVALS);
    let mut links = rng(file.seed, STREAM_LINKS);
    let mut clients = Vec::new();
    let mut next_id: u32 = 0;
    for (pi, p) in populations.iter().enumerate() {
        if attack_shape(&p.behaviour).is_some() {
            continue;
        }
        let starts = p.arrival.offsets(p.count, &mut arrivals).ok_or_else(|| {
            invalid(
                format!("population[{pi}].arrival"),
                "starts clients further out than a duration can hold; raise the rate",
            )
        })?;
        for start in starts {
            clients.push(ClientPlan {
                id: next_id,
                population: pi,
                start,
                identity: identity(&mut keys, TUNNEL_FIRST_HOST + next_id),
                source_ip: Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(198, 18, 0, 0)) + CLIENT_SOURCE_FIRST_HOST + next_id,
                ),
                link_seed: links.next_u64(),
            });
            next_id += 1;
        }
    }
    clients.sort_by_key(|c| (c.start, c.id));
    let extra_peers = (0..file.control_plane.extra_registered)
        .map(|i| identity(&mut keys, TUNNEL_FIRST_HOST + next_id + i))
        .collect();
    let mut synthetic = rng(file.seed, STREAM_PREINSTALLED);
    let first_preinstalled = TUNNEL_FIRST_HOST + next_id + file.control_plane.extra_registered;
    let preinstalled = (0..file.preinstalled_peers)
        .map(|i| {
            let mut public_key = [0u8; 32];
            synthetic.fill_bytes(&mut public_key);
            PreinstalledPeer {
                public_key,
                tunnel_ip: Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(100, 64, 0, 0)) + first_preinstalled + i,
                ),
            }
        })
        .collect();
    // After the extras on the key stream and after the preinstalled peers in the tunnel
    // range, so adding stored peers shifts no other peer's key or address.
    let first_stored = first_preinstalled + file.preinstalled_peers;
    let stored_peers = (0..file.stored_peers)
        .map(|i| identity(&mut keys, first_stored + i))
        .collect();
    let attacks = super::attack::resolve_attacks(
        &populations,
        &clients,
        file.seed,
        &mut keys,
        first_stored + file.stored_peers,
    )?;

    let cpus = super::cpus::CpuChoice::from_file(&file.lab.cpus)?;
    Ok(Scenario {
        name: file.name.clone(),
        seed: file.seed,
        backend: file.backend.unwrap_or_default(),
        duration: file.duration,
        stale_threshold: file.stale_threshold,
        sample_every: file.sample_every,
        preinstalled,
        daemon: DaemonSettings {
            set: d.clone(),
            mode: d.mode.unwrap_or_default(),
            boot: d.boot.unwrap_or_default(),
            initiate: d
                .initiate
                .map_or(jitwgd::config::defaults::INITIATE, |s| s == Switch::On),
        },
        control_plane: ControlPlaneSettings {
            register_clients: file.control_plane.register_clients == Switch::On,
            latency: file.control_plane.faults.latency,
            error_rate: file.control_plane.faults.error_rate,
            tls: file.control_plane.tls,
            token: file.control_plane.token,
            client_cert: file.control_plane.client_cert,
        },
        populations,
        clients,
        attacks,
        extra_peers,
        stored_peers,
        events,
        expectations: Vec::new(),
        cpus,
        file,
    })
}

impl Scenario {
    /// Peers the control plane knows: registered clients, the extras, the stored peers and the
    /// keys of `registered` floods.
    pub fn registered_peers(&self) -> impl Iterator<Item = &PeerIdentity> {
        let clients = self
            .clients
            .iter()
            .filter(|_| self.control_plane.register_clients)
            .map(|c| &c.identity);
        let attack_keys = self
            .attacks
            .iter()
            .filter(|a| {
                matches!(
                    a.kind,
                    super::attack::AttackKind::Flood {
                        keys: super::file::FloodKeys::Registered,
                        ..
                    }
                )
            })
            .flat_map(|a| a.key_pool.iter());
        clients
            .chain(self.extra_peers.iter())
            .chain(self.stored_peers.iter())
            .chain(attack_keys)
    }

    /// Whether any source address is IPv6 (the lab then gets an IPv6 underlay).
    pub fn needs_ipv6(&self) -> bool {
        self.attacks.iter().any(AttackPlan::is_ipv6)
    }

    /// The effective scenario as JSON, for `RunInfo::resolved_scenario`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.file).unwrap_or(serde_json::Value::Null)
    }

    pub fn mode_name(&self) -> &'static str {
        match self.daemon.mode {
            ModeName::Jit => "jit",
            ModeName::Push => "push",
        }
    }

    pub fn boot_name(&self) -> &'static str {
        match self.daemon.boot {
            BootName::Jit => "jit",
            BootName::Preload => "preload",
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            BackendName::Userspace => "userspace",
            BackendName::Kernel => "kernel",
        }
    }

    /// Whether any event reboots or restarts the gateway (the run then reports a reload).
    pub fn has_reboot(&self) -> bool {
        self.events.iter().any(|e| {
            matches!(
                e.action,
                EventAction::Reboot | EventAction::DaemonRestart | EventAction::DaemonKill
            )
        })
    }
}
