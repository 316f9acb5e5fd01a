//! Names of every object a run creates. All carry the `jwg` prefix plus a short run id, so
//! concurrent runs never collide (UAPI sockets are global across namespaces) and `clean` can
//! recognise leftovers of crashed runs without touching anything else.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use rand::Rng;

use super::LabError;

/// Prefix of every object jitwg creates.
pub const PREFIX: &str = "jwg";
/// Length of a run id, in characters.
pub const RUN_ID_LEN: usize = 6;
/// Linux interface names hold at most 15 bytes (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Namespace names are file names under /run/netns; keep them short and readable.
pub const MAX_NETNS_LEN: usize = 32;
/// Where wireguard-go puts its UAPI sockets (global across network namespaces).
pub const UAPI_DIR: &str = "/var/run/wireguard";

const RUN_ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";

/// Short identifier of one testbed run: 6 characters of lowercase base32hex (`0-9a-v`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

impl RunId {
    /// A fresh random run id.
    pub fn random() -> RunId {
        let mut rng = rand::thread_rng();
        let id = (0..RUN_ID_LEN)
            .map(|_| char::from(RUN_ID_ALPHABET[rng.gen_range(0..RUN_ID_ALPHABET.len())]))
            .collect();
        RunId(id)
    }

    /// A run id given by the user (or a test), validated.
    pub fn parse(id: &str) -> Result<RunId, LabError> {
        let invalid = |reason| LabError::InvalidRunId {
            id: id.to_string(),
            reason,
        };
        if id.len() != RUN_ID_LEN {
            return Err(invalid("must be exactly 6 characters"));
        }
        if !id.bytes().all(is_run_id_char) {
            return Err(invalid("only 0-9 and a-v are allowed"));
        }
        Ok(RunId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunId::parse(s)
    }
}

fn is_run_id_char(b: u8) -> bool {
    RUN_ID_ALPHABET.contains(&b)
}

/// The role a namespace plays in the testbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateway: data plane + jitwgd.
    Gateway,
    /// Simulated clients.
    Client,
    /// Control plane API (and NATS in push mode).
    ControlPlane,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Role::Gateway => "gw",
            Role::Client => "cl",
            Role::ControlPlane => "cp",
        }
    }
}

/// Every name used by one run, derived from its run id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    run: RunId,
}

impl Names {
    pub fn new(run: RunId) -> Names {
        Names { run }
    }

    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// `jwg-<id>-gw`, `jwg-<id>-cl`, `jwg-<id>-cp`.
    pub fn namespace(&self, role: Role) -> String {
        format!("{PREFIX}-{}-{}", self.run, role.tag())
    }

    /// The WireGuard interface of the gateway: `jwg<id>` (9 characters).
    pub fn wg_interface(&self) -> String {
        format!("{PREFIX}{}", self.run)
    }

    /// Veth end in the gateway facing the clients: `jwg<id>gc`.
    pub fn veth_gw_to_client(&self) -> String {
        self.link("gc")
    }

    /// Veth end in the client namespace: `jwg<id>cg`.
    pub fn veth_client_to_gw(&self) -> String {
        self.link("cg")
    }

    /// Veth end in the gateway facing the control plane: `jwg<id>gp`.
    pub fn veth_gw_to_control(&self) -> String {
        self.link("gp")
    }

    /// Veth end in the control-plane namespace: `jwg<id>pg`.
    pub fn veth_control_to_gw(&self) -> String {
        self.link("pg")
    }

    /// `/var/run/wireguard/jwg<id>.sock`.
    pub fn uapi_socket(&self) -> PathBuf {
        uapi_socket_path(&self.wg_interface())
    }

    fn link(&self, suffix: &str) -> String {
        format!("{PREFIX}{}{suffix}", self.run)
    }
}

/// UAPI socket path of a userspace WireGuard interface.
pub fn uapi_socket_path(iface: &str) -> PathBuf {
    PathBuf::from(UAPI_DIR).join(format!("{iface}.sock"))
}

/// Checks that `name` fits in an interface name.
pub fn check_ifname(name: &str) -> Result<(), LabError> {
    check_len(name, MAX_IFNAME_LEN)
}

/// Checks that `name` is a reasonable namespace name.
pub fn check_netns_name(name: &str) -> Result<(), LabError> {
    check_len(name, MAX_NETNS_LEN)
}

fn check_len(name: &str, max: usize) -> Result<(), LabError> {
    if name.len() > max {
        return Err(LabError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
            max,
        });
    }
    Ok(())
}

/// If `name` is a jitwg object name (`jwg-<id>-<tag>` or `jwg<id>[suffix]`), returns its run id.
///
/// This is how `clean` tells our leftovers from everything else: the prefix alone is not
/// enough, the run id must be well formed too.
pub fn run_id_of(name: &str) -> Option<RunId> {
    let rest = name.strip_prefix(PREFIX)?;
    let (id, tail) = match rest.strip_prefix('-') {
        Some(after_dash) => {
            let id = after_dash.get(..RUN_ID_LEN)?;
            let tail = after_dash.get(RUN_ID_LEN..)?;
            // Namespaces: the id is followed by `-<tag>`.
            let tag = tail.strip_prefix('-')?;
            if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            (id, "")
        }
        None => {
            let id = rest.get(..RUN_ID_LEN)?;
            (id, rest.get(RUN_ID_LEN..)?)
        }
    };
    if tail.len() > MAX_IFNAME_LEN || !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    RunId::parse(id).ok()
}

/// Prefix of a run's scratch in the system temporary directory: its state directory
/// (`jitwg-<id>-XXXXXX`, the databases) and a data plane's default log (`jitwg-<iface>.log`).
pub const SCRATCH_PREFIX: &str = "jitwg-";

/// The prefix a run's state directory gets before its random suffix: `jitwg-<id>-`.
pub fn state_dir_prefix(run: &RunId) -> String {
    format!("{SCRATCH_PREFIX}{run}-")
}

/// The run lock held while a run's state directory exists: `jwg-<id>-state`.
pub fn state_lock_name(run: &RunId) -> String {
    format!("{PREFIX}-{run}-state")
}

/// The file name of a data plane's log when its starter names none: `jitwg-<iface>.log`.
pub fn default_log_name(interface: &str) -> String {
    format!("{SCRATCH_PREFIX}{interface}.log")
}

/// If `name` (a file name in the temporary directory) is a run's scratch, returns its run id.
/// State directories end in the random suffix `tempfile` adds (alphanumeric); logs end in
/// `.log` after a jitwg interface name. Anything else, the user's files included, is `None`.
pub fn scratch_run_id(name: &str) -> Option<RunId> {
    let rest = name.strip_prefix(SCRATCH_PREFIX)?;
    if let Some(interface) = rest.strip_suffix(".log") {
        return run_id_of(interface).filter(|_| !interface.starts_with("jwg-"));
    }
    let id = rest.get(..RUN_ID_LEN)?;
    let suffix = rest.get(RUN_ID_LEN..)?.strip_prefix('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    RunId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_of_a_run_fit_interface_limits() {
        let names = Names::new(RunId::parse("abc123").unwrap());
        assert_eq!(names.namespace(Role::Gateway), "jwg-abc123-gw");
        assert_eq!(names.namespace(Role::Client), "jwg-abc123-cl");
        assert_eq!(names.namespace(Role::ControlPlane), "jwg-abc123-cp");
        assert_eq!(names.wg_interface(), "jwgabc123");
        assert_eq!(
            names.uapi_socket(),
            PathBuf::from("/var/run/wireguard/jwgabc123.sock")
        );
        for link in [
            names.wg_interface(),
            names.veth_gw_to_client(),
            names.veth_client_to_gw(),
            names.veth_gw_to_control(),
            names.veth_control_to_gw(),
        ] {
            check_ifname(&link).unwrap();
        }
    }

    #[test]
    fn run_id_rejects_bad_input() {
        assert!(RunId::parse("abc12").is_err());
        assert!(RunId::parse("abc1234").is_err());
        assert!(RunId::parse("ABC123").is_err());
        assert!(RunId::parse("abcxyz").is_err());
        assert!(RunId::parse("ab/123").is_err());
    }

    #[test]
    fn check_ifname_rejects_long_names() {
        assert!(check_ifname("123456789012345").is_ok());
        assert!(matches!(
            check_ifname("1234567890123456"),
            Err(LabError::NameTooLong {
                len: 16,
                max: 15,
                ..
            })
        ));
    }

    #[test]
    fn scratch_names_map_back_to_their_run_and_nothing_else_does() {
        let run = RunId::parse("abc123").unwrap();
        let names = Names::new(run.clone());
        let id = |s: &str| scratch_run_id(s).map(|r| r.to_string());
        assert_eq!(
            id(&format!("{}Ab6mkn", state_dir_prefix(&run))).as_deref(),
            Some("abc123")
        );
        assert_eq!(
            id(&default_log_name(&names.wg_interface())).as_deref(),
            Some("abc123")
        );
        for other in [
            "jitwg-abc123-",           // no suffix: not something tempfile made
            "jitwg-abc123-Ab.6mk",     // a suffix tempfile never makes
            "jitwg-abc123",            // no suffix at all
            "jitwg-ABC123-Ab6mkn",     // not a run id
            "jitwg-jwg-abc123-gw.log", // a namespace name is not an interface's log
            "jitwg-other.log",
            "jitwg-run.tar.gz", // a bundle's default name
            "abc123-Ab6mkn",
            "jwgabc123.log",
        ] {
            assert_eq!(id(other), None, "{other}");
        }
    }

    #[test]
    fn run_id_of_recognises_only_our_objects() {
        let id = |s: &str| run_id_of(s).map(|r| r.to_string());
        assert_eq!(id("jwg-abc123-gw").as_deref(), Some("abc123"));
        assert_eq!(id("jwgabc123").as_deref(), Some("abc123"));
        assert_eq!(id("jwgabc123gc").as_deref(), Some("abc123"));
        assert_eq!(id("other-abc123"), None);
        assert_eq!(id("jwg"), None);
        assert_eq!(id("jwg-abc123"), None);
        assert_eq!(id("jwgabc"), None);
        assert_eq!(id("jwg-ABC123-gw"), None);
        assert_eq!(id("wg0"), None);
        assert_eq!(id("jwgabc123.sock"), None);
    }

    proptest! {
        #[test]
        fn every_generated_name_maps_back_to_its_run(_seed in 0u32..64) {
            let run = RunId::random();
            let names = Names::new(run.clone());
            for name in [
                names.namespace(Role::Gateway),
                names.namespace(Role::Client),
                names.namespace(Role::ControlPlane),
                names.wg_interface(),
                names.veth_gw_to_client(),
                names.veth_client_to_gw(),
                names.veth_gw_to_control(),
                names.veth_control_to_gw(),
                state_lock_name(&run),
            ] {
                prop_assert_eq!(run_id_of(&name), Some(run.clone()));
            }
        }

        #[test]
        fn run_id_of_never_panics(s in "\\PC{0,24}") {
            let _ = run_id_of(&s);
        }
    }
}
