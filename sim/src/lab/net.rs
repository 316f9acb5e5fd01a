//! Links, addresses and routes through rtnetlink. A netlink socket belongs to the namespace of
//! the thread that opened it, so every session is opened on a thread inside the target
//! namespace and driven by its own small runtime there (safe to call from async code too).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::{LinkUnspec, LinkVeth, LinkWireguard, RouteMessageBuilder};

use super::{LabError, Namespace};

/// Kernel routing table `local` (where `ip route add local ...` goes).
const RT_TABLE_LOCAL: u32 = 255;

/// A destination prefix of one address family, as rtnetlink's route builder (typed by family)
/// takes it: lets one route function serve IPv4 and IPv6.
pub trait RoutePrefix: Copy + std::fmt::Display {
    /// The family's address (a gateway's).
    type Addr: Copy + std::fmt::Display;
    /// A route of this family with this prefix as its destination.
    fn destination(self) -> RouteMessageBuilder<Self::Addr>;
    /// `route` with `via` as its gateway.
    fn gateway(
        route: RouteMessageBuilder<Self::Addr>,
        via: Self::Addr,
    ) -> RouteMessageBuilder<Self::Addr>;
}

// rtnetlink spells the two families' builders alike but as separate inherent methods.
macro_rules! route_prefix {
    ($net:ty, $addr:ty) => {
        impl RoutePrefix for $net {
            type Addr = $addr;
            fn destination(self) -> RouteMessageBuilder<$addr> {
                RouteMessageBuilder::<$addr>::new()
                    .destination_prefix(self.network(), self.prefix_len())
            }
            fn gateway(
                route: RouteMessageBuilder<$addr>,
                via: $addr,
            ) -> RouteMessageBuilder<$addr> {
                route.gateway(via)
            }
        }
    };
}

route_prefix!(Ipv4Net, Ipv4Addr);
route_prefix!(Ipv6Net, Ipv6Addr);

/// One rtnetlink connection inside one namespace.
pub struct Netlink {
    ns: String,
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Runs `f` with a netlink session opened inside `ns`.
    pub fn with<T, F>(ns: &Namespace, f: F) -> Result<T, LabError>
    where
        F: FnOnce(&Netlink) -> Result<T, LabError> + Send,
        T: Send,
    {
        let name = ns.name().to_string();
        ns.run(move || Netlink::open_here(name).and_then(|nl| f(&nl)))?
    }

    /// Runs `f` with a netlink session in the caller's own namespace (the root namespace for
    /// the driver), on a separate thread so it never nests inside a caller's runtime.
    pub fn with_current<T, F>(f: F) -> Result<T, LabError>
    where
        F: FnOnce(&Netlink) -> Result<T, LabError> + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(move || Netlink::open_here("root".into()).and_then(|nl| f(&nl)))
                .join()
                .map_err(|_| LabError::NamespaceThread {
                    ns: "root".into(),
                    what: "panicked".into(),
                })?
        })
    }

    fn open_here(ns: String) -> Result<Netlink, LabError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| LabError::Runtime {
                ns: ns.clone(),
                source,
            })?;
        let (connection, handle, _) = {
            let _guard = runtime.enter();
            rtnetlink::new_connection().map_err(|source| LabError::NetlinkConnect {
                ns: ns.clone(),
                source,
            })?
        };
        runtime.spawn(connection);
        Ok(Netlink {
            ns,
            runtime,
            handle,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Index of link `name`, or `None` if there is no such link.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, LabError> {
        let request = self.handle.link().get().match_name(name).execute();
        let found = self.runtime.block_on(async {
            futures::pin_mut!(request);
            request.try_next().await
        });
        match found {
            Ok(message) => Ok(message.map(|m| m.header.index)),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(LabError::LinkLookup {
                ns: self.ns.clone(),
                link: name.into(),
                source: Box::new(source),
            }),
        }
    }

    /// Index of link `name`, which must exist.
    pub fn require_index(&self, name: &str) -> Result<u32, LabError> {
        self.link_index(name)?
            .ok_or_else(|| LabError::LinkNotFound {
                ns: self.ns.clone(),
                link: name.into(),
            })
    }

    /// Names of all links in this namespace.
    pub fn link_names(&self) -> Result<Vec<String>, LabError> {
        let request = self.handle.link().get().execute();
        let links: Vec<LinkMessage> =
            self.runtime
                .block_on(request.try_collect())
                .map_err(|source| LabError::LinkList {
                    ns: self.ns.clone(),
                    source: Box::new(source),
                })?;
        Ok(links.iter().filter_map(link_name).collect())
    }

    /// Creates the veth pair `name` <-> `peer` in this namespace.
    pub fn create_veth(&self, name: &str, peer: &str) -> Result<(), LabError> {
        let request = self
            .handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute();
        self.runtime
            .block_on(request)
            .map_err(|source| LabError::LinkCreate {
                ns: self.ns.clone(),
                link: format!("{name} (veth peer {peer})"),
                source: Box::new(source),
            })
    }

    /// Creates a kernel WireGuard link; a kernel without WireGuard gives
    /// [`LabError::KernelWireguardUnavailable`].
    pub fn create_wireguard(&self, name: &str) -> Result<(), LabError> {
        let request = self
            .handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute();
        self.runtime.block_on(request).map_err(|source| {
            if errno_of(&source) == Some(libc::EOPNOTSUPP) {
                LabError::KernelWireguardUnavailable {
                    ns: self.ns.clone(),
                    link: name.into(),
                    source: Box::new(source),
                }
            } else {
                LabError::LinkCreate {
                    ns: self.ns.clone(),
                    link: name.into(),
                    source: Box::new(source),
                }
            }
        })
    }

    /// Moves link `name` from this namespace into `target`.
    pub fn move_link(&self, name: &str, target: &Namespace) -> Result<(), LabError> {
        let index = self.require_index(name)?;
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(target.fd().as_raw_fd())
            .build();
        let request = self.handle.link().change(message).execute();
        self.runtime
            .block_on(request)
            .map_err(|source| LabError::LinkMove {
                ns: self.ns.clone(),
                link: name.into(),
                target: target.name().into(),
                source: Box::new(source),
            })
    }

    /// `ip link set NAME up`.
    pub fn set_up(&self, name: &str) -> Result<(), LabError> {
        let index = self.require_index(name)?;
        let request = self
            .handle
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute();
        self.runtime
            .block_on(request)
            .map_err(|source| LabError::LinkUp {
                ns: self.ns.clone(),
                link: name.into(),
                source: Box::new(source),
            })
    }

    /// `ip link del NAME` (a missing link is not an error).
    pub fn delete_link(&self, name: &str) -> Result<(), LabError> {
        let Some(index) = self.link_index(name)? else {
            return Ok(());
        };
        let request = self.handle.link().del(index).execute();
        match self.runtime.block_on(request) {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(source) => Err(LabError::LinkDelete {
                ns: self.ns.clone(),
                link: name.into(),
                source: Box::new(source),
            }),
        }
    }

    /// `ip addr add ADDRESS/PREFIX dev NAME`.
    pub fn add_address(&self, name: &str, address: Ipv4Net) -> Result<(), LabError> {
        self.add_ip(name, IpAddr::V4(address.addr()), address.prefix_len())
    }

    /// `ip -6 addr add ADDRESS/PREFIX dev NAME`.
    pub fn add_address_v6(&self, name: &str, address: Ipv6Addr, len: u8) -> Result<(), LabError> {
        self.add_ip(name, IpAddr::V6(address), len)
    }

    /// `ip addr add ADDRESS/LEN dev NAME` for either family.
    fn add_ip(&self, name: &str, address: IpAddr, len: u8) -> Result<(), LabError> {
        let index = self.require_index(name)?;
        let request = self.handle.address().add(index, address, len).execute();
        self.runtime
            .block_on(request)
            .map_err(|source| LabError::AddressAdd {
                ns: self.ns.clone(),
                link: name.into(),
                address: format!("{address}/{len}"),
                source: Box::new(source),
            })
    }

    /// `ip route add DEST via GATEWAY dev NAME` (`ip -6 route` for an IPv6 `dest`).
    pub fn add_route_via<P: RoutePrefix>(
        &self,
        dest: P,
        via: P::Addr,
        dev: &str,
    ) -> Result<(), LabError> {
        let index = self.require_index(dev)?;
        let route = P::gateway(dest.destination(), via)
            .output_interface(index)
            .build();
        self.add_route(route, format!("{dest} via {via} dev {dev}"))
    }

    /// `ip route add local DEST dev NAME` (table local, scope host): every address of `dest`
    /// becomes local, so sockets can bind any of them without adding each address (IPv6's
    /// any-IP likewise, `ip -6 route add local`).
    pub fn add_local_route<P: RoutePrefix>(&self, dest: P, dev: &str) -> Result<(), LabError> {
        let index = self.require_index(dev)?;
        let route = dest
            .destination()
            .output_interface(index)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(RT_TABLE_LOCAL)
            .build();
        self.add_route(route, format!("local {dest} dev {dev}"))
    }

    /// Adds `route`; `shown` is how errors name it (in `ip route` words).
    fn add_route(
        &self,
        route: rtnetlink::packet_route::route::RouteMessage,
        shown: String,
    ) -> Result<(), LabError> {
        let request = self.handle.route().add(route).execute();
        self.runtime
            .block_on(request)
            .map_err(|source| LabError::RouteAdd {
                ns: self.ns.clone(),
                route: shown,
                source: Box::new(source),
            })
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// The positive errno carried by a netlink error reply, if any.
fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}
