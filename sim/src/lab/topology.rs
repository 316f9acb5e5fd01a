//! The testbed's network: gateway, client and control-plane namespaces joined by two veth links,
//! with the addresses of an [`AddressPlan`]. Dropping a [`Topology`] deletes the namespaces, and
//! with them their veths.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::names::{check_ifname, Names, Role, RunId};
use super::net::Netlink;
use super::{LabError, Namespace};

/// Underlay range (RFC 2544 benchmarking): client sources and the gateway's outer address.
pub const UNDERLAY_RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15);
/// Sources of attacking populations whose /24s are their own (`scenario::attack`): 128 /24s
/// beside the lab's link /30s, routed like the client sources.
pub const ATTACK_SOURCES_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 19, 128, 0), 17);
/// IPv6 underlay range (RFC 5180 benchmarking).
pub const UNDERLAY_RANGE_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48);
/// IPv6 sources of attacking populations: 32,768 /64s, so jitwgd's /64 buckets see many.
pub const ATTACK_SOURCES_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 2, 0, 0x8000, 0, 0, 0, 0), 49);
/// Tunnel range (RFC 6598 shared address space).
pub const TUNNEL_RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);

/// Which addresses a topology uses. All must lie in the ranges of the brief.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    /// gw <-> cl link, a /30: the gateway takes `.1`, the client namespace `.2`.
    pub underlay_link: Ipv4Net,
    /// Source addresses of simulated clients (a local route in cl, a route in gw).
    pub client_sources: Ipv4Net,
    /// gw <-> cp link, a /30: the gateway takes `.1`, the control plane `.2`.
    pub control_link: Ipv4Net,
    /// Tunnel network of the WireGuard interface.
    pub tunnel: Ipv4Net,
    /// The gateway's tunnel address (inside `tunnel`).
    pub tunnel_gateway: Ipv4Addr,
    /// Sources of attacking populations in /24s of their own (a local route in cl, a route in gw).
    pub attack_sources: Ipv4Net,
    /// The IPv6 underlay, when the run has IPv6 sources (`None`: IPv4 only).
    pub ipv6: Option<Ipv6Plan>,
}

/// The IPv6 underlay (2001:2::/48): the gw <-> cl link and the attack sources behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Plan {
    /// A /64: the gateway takes `::1`, the client namespace `::2`.
    pub underlay_link: Ipv6Net,
    /// IPv6 sources (a local route in cl, a route in gw): many /64s, for jitwgd's /64 buckets.
    pub attack_sources: Ipv6Net,
}

impl Ipv6Plan {
    pub fn gateway(&self) -> Ipv6Addr {
        host6(self.underlay_link, 1)
    }

    pub fn client_link_address(&self) -> Ipv6Addr {
        host6(self.underlay_link, 2)
    }
}

impl Default for AddressPlan {
    fn default() -> Self {
        AddressPlan {
            underlay_link: net(198, 19, 0, 0, 30),
            client_sources: net(198, 18, 0, 0, 16),
            control_link: net(198, 19, 1, 0, 30),
            tunnel: TUNNEL_RANGE,
            tunnel_gateway: Ipv4Addr::new(100, 64, 0, 1),
            attack_sources: ATTACK_SOURCES_V4,
            ipv6: None,
        }
    }
}

impl AddressPlan {
    /// The same plan with an IPv6 underlay: link 2001:2:0:n::/64 for slot `n` (0 for the default
    /// plan) and attack sources in 2001:2:0:8000::/49 (default) or 2001:2:0:(8000 + 256n)::/56.
    pub fn with_ipv6(mut self, slot: Option<u8>) -> AddressPlan {
        let n = u16::from(slot.unwrap_or(0));
        let sources = match slot {
            None => ATTACK_SOURCES_V6,
            Some(_) => Ipv6Net::new(
                Ipv6Addr::new(0x2001, 2, 0, 0x8000 + 256 * n, 0, 0, 0, 0),
                56,
            )
            .unwrap_or(ATTACK_SOURCES_V6),
        };
        self.ipv6 = Some(Ipv6Plan {
            underlay_link: Ipv6Net::new(Ipv6Addr::new(0x2001, 2, 0, n, 0, 0, 0, 0), 64)
                .unwrap_or(UNDERLAY_RANGE_V6),
            attack_sources: sources,
        });
        self
    }

    /// A plan for parallel runs: slot `n` (0..=127) uses links 198.19.(2n).0/30 and
    /// 198.19.(2n+1).0/30, clients 198.18.n.0/24 and attack sources 198.18.(128+n).0/24.
    pub fn for_slot(slot: u8) -> Result<AddressPlan, LabError> {
        if slot > 127 {
            return Err(LabError::AddressPlan(format!(
                "slot {slot} is out of range 0..=127"
            )));
        }
        Ok(AddressPlan {
            underlay_link: net(198, 19, 2 * slot, 0, 30),
            client_sources: net(198, 18, slot, 0, 24),
            control_link: net(198, 19, 2 * slot + 1, 0, 30),
            attack_sources: net(198, 18, 128 + slot, 0, 24),
            ..AddressPlan::default()
        })
    }

    /// Checks that every range is where the brief allows it and nothing overlaps.
    pub fn validate(&self) -> Result<(), LabError> {
        let fail = |what: String| Err(LabError::AddressPlan(what));
        for (what, link) in [
            ("underlay link", self.underlay_link),
            ("control link", self.control_link),
        ] {
            if link.prefix_len() != 30 {
                return fail(format!("{what} {link} must be a /30"));
            }
            if !UNDERLAY_RANGE.contains(&link) {
                return fail(format!("{what} {link} is outside {UNDERLAY_RANGE}"));
            }
        }
        if !UNDERLAY_RANGE.contains(&self.client_sources) {
            return fail(format!(
                "client sources {} are outside {UNDERLAY_RANGE}",
                self.client_sources
            ));
        }
        if self.client_sources.prefix_len() > 24 {
            return fail(format!(
                "client sources {} must be /24 or larger",
                self.client_sources
            ));
        }
        if !UNDERLAY_RANGE.contains(&self.attack_sources) {
            return fail(format!(
                "attack sources {} are outside {UNDERLAY_RANGE}",
                self.attack_sources
            ));
        }
        let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(b) || b.contains(a);
        let ranges = [
            self.underlay_link,
            self.control_link,
            self.client_sources,
            self.attack_sources,
        ];
        for (i, a) in ranges.iter().enumerate() {
            if ranges[i + 1..].iter().any(|b| overlaps(a, b)) {
                return fail(
                    "underlay link, control link, client and attack sources overlap".into(),
                );
            }
        }
        if let Some(v6) = &self.ipv6 {
            for net in [v6.underlay_link, v6.attack_sources] {
                if !UNDERLAY_RANGE_V6.contains(&net) {
                    return fail(format!("{net} is outside {UNDERLAY_RANGE_V6}"));
                }
            }
            if v6.underlay_link.contains(&v6.attack_sources)
                || v6.attack_sources.contains(&v6.underlay_link)
            {
                return fail("IPv6 underlay link and attack sources overlap".into());
            }
        }
        if !TUNNEL_RANGE.contains(&self.tunnel) {
            return fail(format!("tunnel {} is outside {TUNNEL_RANGE}", self.tunnel));
        }
        if !self.tunnel.contains(&self.tunnel_gateway) {
            return fail(format!(
                "tunnel gateway {} is outside {}",
                self.tunnel_gateway, self.tunnel
            ));
        }
        Ok(())
    }

    /// The gateway's underlay address (where clients send their initiations).
    pub fn gateway_underlay(&self) -> Ipv4Addr {
        host(self.underlay_link, 1)
    }

    /// The client namespace's veth address (next hop from the gateway to client sources).
    pub fn client_link_address(&self) -> Ipv4Addr {
        host(self.underlay_link, 2)
    }

    /// The gateway's address on the control link.
    pub fn gateway_control(&self) -> Ipv4Addr {
        host(self.control_link, 1)
    }

    /// The control plane's address (where the gateway sends API requests).
    pub fn control_plane(&self) -> Ipv4Addr {
        host(self.control_link, 2)
    }

    /// The gateway's tunnel address with its prefix, e.g. 100.64.0.1/10.
    pub fn tunnel_gateway_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.tunnel_gateway, self.tunnel.prefix_len()).unwrap_or(self.tunnel)
    }

    /// How many distinct client source addresses the plan has: addresses whose last octet is
    /// 0 or 255 are skipped (they look like network/broadcast addresses to some tools).
    pub fn client_source_count(&self) -> u32 {
        let total = 1u64 << (32 - self.client_sources.prefix_len());
        ((total / 256) * 254) as u32
    }

    /// Client source address number `i` (wrapping around after
    /// [`client_source_count`](Self::client_source_count)), never ending in .0 or .255.
    pub fn client_source(&self, i: u32) -> Ipv4Addr {
        let i = i % self.client_source_count().max(1);
        let offset = (i / 254) * 256 + (i % 254) + 1;
        Ipv4Addr::from(u32::from(self.client_sources.network()) + offset)
    }
}

/// The three namespaces of a run and the links between them.
#[derive(Debug)]
pub struct Topology {
    pub names: Names,
    pub plan: AddressPlan,
    pub gateway: Arc<Namespace>,
    pub client: Arc<Namespace>,
    pub control: Arc<Namespace>,
}

impl Topology {
    /// Creates namespaces `jwg-<id>-{gw,cl,cp}`, the veth links, addresses and routes.
    /// On any failure everything created so far is removed again.
    pub fn build(plan: &AddressPlan, run_id: &RunId) -> Result<Topology, LabError> {
        plan.validate()?;
        let names = Names::new(run_id.clone());
        for link in [
            names.veth_gw_to_client(),
            names.veth_client_to_gw(),
            names.veth_gw_to_control(),
            names.veth_control_to_gw(),
            names.wg_interface(),
        ] {
            check_ifname(&link)?;
        }
        let gateway = Namespace::create(&names.namespace(Role::Gateway))?;
        let client = Namespace::create(&names.namespace(Role::Client))?;
        let control = Namespace::create(&names.namespace(Role::ControlPlane))?;
        wire(&names, plan, &gateway, &client, &control)?;
        tracing::info!(run = %run_id, gw = gateway.name(), "topology built");
        Ok(Topology {
            names,
            plan: plan.clone(),
            gateway: Arc::new(gateway),
            client: Arc::new(client),
            control: Arc::new(control),
        })
    }

    /// No namespaces of its own: gateway, client and control-plane roles all in the namespace
    /// this process runs in (`jitwg gateway` on a host's interface). Nothing is created, so
    /// nothing is wired; the plan only names the tunnel network.
    pub fn host(plan: &AddressPlan, run_id: &RunId) -> Result<Topology, LabError> {
        plan.validate()?;
        let names = Names::new(run_id.clone());
        check_ifname(&names.wg_interface())?;
        let here = Arc::new(Namespace::current()?);
        Ok(Topology {
            names,
            plan: plan.clone(),
            gateway: Arc::clone(&here),
            client: Arc::clone(&here),
            control: here,
        })
    }

    pub fn run_id(&self) -> &RunId {
        self.names.run_id()
    }
}

fn wire(
    names: &Names,
    plan: &AddressPlan,
    gateway: &Namespace,
    client: &Namespace,
    control: &Namespace,
) -> Result<(), LabError> {
    let (gw_cl, cl_gw) = (names.veth_gw_to_client(), names.veth_client_to_gw());
    let (gw_cp, cp_gw) = (names.veth_gw_to_control(), names.veth_control_to_gw());
    let underlay_len = plan.underlay_link.prefix_len();
    let control_len = plan.control_link.prefix_len();
    Netlink::with(gateway, |nl| {
        nl.create_veth(&gw_cl, &cl_gw)?;
        nl.move_link(&cl_gw, client)?;
        nl.create_veth(&gw_cp, &cp_gw)?;
        nl.move_link(&cp_gw, control)?;
        nl.add_address(&gw_cl, with_len(plan.gateway_underlay(), underlay_len))?;
        nl.add_address(&gw_cp, with_len(plan.gateway_control(), control_len))?;
        nl.set_up(&gw_cl)?;
        nl.set_up(&gw_cp)?;
        nl.add_route_via(plan.client_sources, plan.client_link_address(), &gw_cl)?;
        nl.add_route_via(plan.attack_sources, plan.client_link_address(), &gw_cl)
    })?;
    Netlink::with(client, |nl| {
        nl.add_address(&cl_gw, with_len(plan.client_link_address(), underlay_len))?;
        nl.set_up(&cl_gw)?;
        nl.add_local_route(plan.client_sources, "lo")?;
        nl.add_local_route(plan.attack_sources, "lo")
    })?;
    if let Some(v6) = &plan.ipv6 {
        wire_ipv6(v6, (&gw_cl, gateway), (&cl_gw, client))?;
    }
    Netlink::with(control, |nl| {
        nl.add_address(&cp_gw, with_len(plan.control_plane(), control_len))?;
        nl.set_up(&cp_gw)
    })
}

/// The IPv6 underlay on the gw <-> cl veth. Duplicate address detection is off in both
/// namespaces (nothing else is on the link), so the addresses are usable at once instead of
/// after DAD's ~1 s, during which binding or sending from them fails.
fn wire_ipv6(
    v6: &Ipv6Plan,
    (gw_cl, gateway): (&str, &Namespace),
    (cl_gw, client): (&str, &Namespace),
) -> Result<(), LabError> {
    for (ns, link) in [(gateway, gw_cl), (client, cl_gw)] {
        ns.run(|| -> std::io::Result<()> {
            for conf in ["all", "default", link] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0")?;
            }
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "0")
        })?
        .map_err(|source| LabError::Sysctl {
            ns: ns.name().to_string(),
            what: "turning IPv6 duplicate address detection off",
            source,
        })?;
    }
    let len = v6.underlay_link.prefix_len();
    Netlink::with(gateway, |nl| {
        nl.add_address_v6(gw_cl, v6.gateway(), len)?;
        nl.add_route_via(v6.attack_sources, v6.client_link_address(), gw_cl)
    })?;
    Netlink::with(client, |nl| {
        nl.add_address_v6(cl_gw, v6.client_link_address(), len)?;
        nl.add_local_route(v6.attack_sources, "lo")
    })
}

fn host6(net: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + n)
}

fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).unwrap_or(UNDERLAY_RANGE)
}

fn host(link: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(link.network()) + n)
}

fn with_len(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).unwrap_or_else(|_| Ipv4Net::from(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_matches_the_brief() {
        let plan = AddressPlan::default();
        plan.validate().unwrap();
        assert_eq!(plan.gateway_underlay(), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(plan.client_link_address(), Ipv4Addr::new(198, 19, 0, 2));
        assert_eq!(plan.gateway_control(), Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(plan.control_plane(), Ipv4Addr::new(198, 19, 1, 2));
        assert_eq!(plan.tunnel_gateway_net().to_string(), "100.64.0.1/10");
        assert_eq!(plan.client_source_count(), 254 * 256);
    }

    #[test]
    fn slots_are_distinct_and_valid() {
        let a = AddressPlan::for_slot(3).unwrap();
        let b = AddressPlan::for_slot(4).unwrap();
        a.validate().unwrap();
        b.validate().unwrap();
        assert_eq!(a.underlay_link.to_string(), "198.19.6.0/30");
        assert_eq!(a.control_link.to_string(), "198.19.7.0/30");
        assert_eq!(a.client_sources.to_string(), "198.18.3.0/24");
        assert_ne!(a.underlay_link, b.underlay_link);
        AddressPlan::for_slot(127).unwrap().validate().unwrap();
        assert!(AddressPlan::for_slot(128).is_err());
    }

    #[test]
    fn client_sources_skip_dot_zero_and_dot_255_and_wrap() {
        let plan = AddressPlan::for_slot(1).unwrap();
        assert_eq!(plan.client_source_count(), 254);
        assert_eq!(plan.client_source(0), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(plan.client_source(253), Ipv4Addr::new(198, 18, 1, 254));
        assert_eq!(plan.client_source(254), Ipv4Addr::new(198, 18, 1, 1));
        let wide = AddressPlan::default();
        assert_eq!(wide.client_source(254), Ipv4Addr::new(198, 18, 1, 1));
        for i in (0..wide.client_source_count()).step_by(97) {
            let addr = wide.client_source(i);
            assert!(wide.client_sources.contains(&addr));
            assert!(addr.octets()[3] != 0 && addr.octets()[3] != 255);
        }
    }

    #[test]
    fn validate_rejects_addresses_outside_the_brief() {
        let base = AddressPlan::default();
        let bad = [
            AddressPlan {
                underlay_link: net(10, 0, 0, 0, 30),
                ..base.clone()
            },
            AddressPlan {
                control_link: base.underlay_link,
                ..base.clone()
            },
            AddressPlan {
                tunnel_gateway: Ipv4Addr::new(10, 0, 0, 1),
                ..base.clone()
            },
            AddressPlan {
                client_sources: net(198, 19, 0, 0, 16),
                ..base.clone()
            },
        ];
        for plan in bad {
            assert!(plan.validate().is_err(), "{plan:?}");
        }
    }
}
