//! The one error type of the lab: each variant names the operation that failed and where
//! (which namespace, which link, which process), so a setup failure explains itself.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building or tearing down a testbed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid run id {id:?}: {reason}")]
    InvalidRunId { id: String, reason: &'static str },

    #[error("name {name:?} is {len} characters long, the limit is {max}")]
    NameTooLong {
        name: String,
        len: usize,
        max: usize,
    },

    #[error("invalid address plan: {0}")]
    AddressPlan(String),

    #[error("namespace {ns} already exists (a leftover? try `jitwg clean`)")]
    NamespaceExists { ns: String },

    #[error("creating namespace {ns}")]
    NamespaceCreate {
        ns: String,
        #[source]
        source: netns_rs::Error,
    },

    #[error("opening namespace {ns}")]
    NamespaceOpen {
        ns: String,
        #[source]
        source: netns_rs::Error,
    },

    #[error("removing namespace {ns}")]
    NamespaceRemove {
        ns: String,
        #[source]
        source: netns_rs::Error,
    },

    #[error("entering namespace {ns}")]
    NamespaceEnter {
        ns: String,
        #[source]
        source: std::io::Error,
    },

    #[error("thread running in namespace {ns}: {what}")]
    NamespaceThread { ns: String, what: String },

    #[error("building a tokio runtime for namespace {ns}")]
    Runtime {
        ns: String,
        #[source]
        source: std::io::Error,
    },

    #[error("opening a netlink connection in namespace {ns}")]
    NetlinkConnect {
        ns: String,
        #[source]
        source: std::io::Error,
    },

    #[error("looking up link {link} in namespace {ns}")]
    LinkLookup {
        ns: String,
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("link {link} not found in namespace {ns}")]
    LinkNotFound { ns: String, link: String },

    #[error("creating link {link} in namespace {ns}")]
    LinkCreate {
        ns: String,
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("moving link {link} from namespace {ns} to namespace {target}")]
    LinkMove {
        ns: String,
        link: String,
        target: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("setting link {link} up in namespace {ns}")]
    LinkUp {
        ns: String,
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("deleting link {link} in namespace {ns}")]
    LinkDelete {
        ns: String,
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("listing links in namespace {ns}")]
    LinkList {
        ns: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("adding address {address} to link {link} in namespace {ns}")]
    AddressAdd {
        ns: String,
        link: String,
        address: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("{what} in namespace {ns}")]
    Sysctl {
        ns: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("adding route {route} in namespace {ns}")]
    RouteAdd {
        ns: String,
        route: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error(
        "this kernel has no WireGuard module; run inside the VM (see README) or use \
         backend = userspace (cannot create link {link} in namespace {ns})"
    )]
    KernelWireguardUnavailable {
        ns: String,
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error(
        "data plane program {program:?} not found: install the Debian package wireguard-go \
         (apt-get install wireguard-go wireguard-tools)"
    )]
    DataPlaneBinaryMissing { program: String },

    #[error("opening log file {path}")]
    LogFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("spawning {program} in namespace {ns}")]
    Spawn {
        program: String,
        ns: String,
        #[source]
        source: std::io::Error,
    },

    #[error("sending {signal} to process {pid}")]
    Signal {
        pid: u32,
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("waiting for process {pid}")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },

    #[error("reading /proc/{pid}/{file}")]
    ProcRead {
        pid: u32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("parsing /proc/{pid}/{file}: {what}")]
    ProcParse {
        pid: u32,
        file: &'static str,
        what: &'static str,
    },

    #[error(
        "UAPI socket {path} is served by another process: interface {iface} is in use by \
         another run"
    )]
    UapiSocketBusy { iface: String, path: PathBuf },

    #[error("removing stale UAPI socket {path}")]
    UapiSocketRemove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "UAPI socket {path} for {iface} did not appear within {waited:?}; its output \
         ({log}): {output}"
    )]
    UapiSocketTimeout {
        iface: String,
        path: PathBuf,
        waited: Duration,
        log: PathBuf,
        output: String,
    },

    #[error(
        "data plane for {iface} exited during start with {status}; its output ({log}): {output}"
    )]
    DataPlaneExited {
        iface: String,
        status: String,
        log: PathBuf,
        output: String,
    },

    #[error("data plane {iface} is not running (killed? restart it first)")]
    DataPlaneDown { iface: String },

    #[error("lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{name} is in use by a live run (lock {path} is held)")]
    LockBusy { name: String, path: PathBuf },

    #[error("invalid WireGuard interface name {name:?}: {reason}")]
    InterfaceName { name: String, reason: String },

    #[error("configuring WireGuard interface {iface}")]
    WireguardConfigure {
        iface: String,
        #[source]
        source: std::io::Error,
    },

    #[error("reading WireGuard interface {iface}")]
    WireguardRead {
        iface: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cleaning {what}")]
    Clean {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("setting the CPU affinity of thread {tid}")]
    Affinity {
        tid: i32,
        #[source]
        source: std::io::Error,
    },
}
