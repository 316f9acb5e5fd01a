//! The lab: every namespace, link, address and process a run creates, and their teardown.
//! Only this module (and the driver above it) touches namespaces.
//!
//! Guard order. Tear down in this order, which Rust's drop order gives for free when a run
//! declares its guards as `let topology = ..; let data_plane = ..; let daemon = ..;` (locals
//! drop in reverse):
//! 1. processes ([`Child`]: jitwgd, nats-server, ...) — SIGKILL and reap;
//! 2. the data plane ([`DataPlane`]: wireguard-go, its UAPI socket, its link);
//! 3. the namespaces ([`Topology`]: dropping it deletes `jwg-<id>-{gw,cl,cp}` and with them
//!    their veths). A [`DataPlane`] holds an `Arc` of its namespace, so the namespace can never
//!    go before the data plane inside it, whatever order the guards are dropped in.
//!
//! Every namespace and data-plane interface holds a [`RunLock`] while it lives; `jitwg clean`
//! ([`clean()`]) removes only objects whose lock is free, i.e. leftovers of dead runs.

pub mod clean;
pub mod cpuset;
pub mod dataplane;
pub mod error;
pub mod names;
pub mod net;
pub mod netns;
pub mod process;
pub mod topology;

pub use clean::{clean, CleanReport, RunLock};
pub use dataplane::{DataPlane, DataPlaneBackend, DataPlaneOptions, DataPlaneSpec, PeerState};
pub use error::LabError;
pub use names::{Names, Role, RunId};
pub use net::Netlink;
pub use netns::{Namespace, NsThread, RuntimeFlavor};
pub use process::{spawn_in, Child, Usage};
pub use topology::{AddressPlan, Topology};
