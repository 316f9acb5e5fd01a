//! The kernel side of the shield: u32 filters with a gact action on the capture
//! interface's tc ingress (a clsact qdisc), written over rtnetlink. Each filter matches a
//! WireGuard handshake initiation (UDP to the listen port whose first payload word is
//! message type 1) from one source prefix: a pass filter (`TC_ACT_OK`) for an installed
//! peer's endpoint, a block filter (`TC_ACT_SHOT`) for a judged source. Four priorities
//! of our own (pass before block, IPv4 and IPv6 apart since a priority holds one
//! protocol) keep them apart from anyone else's filters; at start and exit those four
//! priorities are flushed, so a restart replaces whatever a killed daemon left.
//!
//! AF_PACKET taps see a frame before tc ingress runs, so jitwgd's capture still sees
//! every dropped initiation and its penalties stay fresh (tested in `tests/`).
//!
//! Only IPv4 without options and IPv6 without extension headers are matched: anything
//! else is passed, so a block errs towards letting traffic through.

use std::net::IpAddr;

use futures::StreamExt;
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionOption, TcAttribute, TcFilterU32Option, TcHandle,
    TcMessage, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::plan::{Op, Prefix, Rule};

/// The four priorities (pass v4, pass v6, block v4, block v6), indexed by `plan::slot`.
/// High numbers: anyone else's filters at the usual low priorities run first.
pub const PRIORITIES: [u16; 4] = [0xc7a0, 0xc7a1, 0xc7a2, 0xc7a3];

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `TCA_GACT_PARMS` and the verdicts of `struct tc_gact`.
const TCA_GACT_PARMS: u16 = 2;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// The root hash table of a u32 priority is chosen by the kernel; filters get their
/// node id in it, and the kernel echoes the full handle back.
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// What failed while setting up or changing the shield's filters.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("opening an rtnetlink socket failed")]
    Socket(#[source] std::io::Error),
    #[error("interface {name} not found (the shield attaches to --capture-interface)")]
    NoInterface { name: String },
    #[error("adding the clsact qdisc on {name} failed")]
    Qdisc {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("flushing the shield's filters at priority {priority:#x} failed")]
    Flush {
        priority: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("adding the filter `{rule}` failed")]
    Add {
        rule: Rule,
        #[source]
        source: std::io::Error,
    },
    #[error("removing the filter `{rule}` failed")]
    Remove {
        rule: Rule,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel did not echo the handle of the filter `{rule}`")]
    NoHandle { rule: Rule },
    #[error("the rtnetlink connection is gone")]
    Gone,
}

/// Filters on one interface's ingress, written through one rtnetlink connection.
pub struct TcShield {
    handle: rtnetlink::Handle,
    ifindex: i32,
    name: String,
    port: u16,
    /// The kernel's handle of each installed filter, by (slot, node id).
    handles: std::collections::HashMap<(usize, u16), u32>,
    connection: tokio::task::JoinHandle<()>,
}

impl TcShield {
    /// Attach to `name`'s ingress for initiations to UDP `port`: add a clsact qdisc if
    /// there is none and flush the shield's priorities (a previous run's leftovers).
    pub async fn open(name: &str, port: u16) -> Result<TcShield, TcError> {
        let ifindex = ifindex(name).ok_or_else(|| TcError::NoInterface {
            name: name.to_string(),
        })?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(TcError::Socket)?;
        let connection = tokio::spawn(connection);
        let mut shield = TcShield {
            handle,
            ifindex,
            name: name.to_string(),
            port,
            handles: Default::default(),
            connection,
        };
        shield.add_clsact().await?;
        shield.flush().await?;
        Ok(shield)
    }

    /// Apply one planned change.
    pub async fn apply(&mut self, op: &Op) -> Result<(), TcError> {
        match *op {
            Op::Add { rule, id } => {
                let slot = super::plan::slot(&rule);
                let msg = self.filter_message(&rule, id);
                let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;
                let echoed = self
                    .request(RouteNetlinkMessage::NewTrafficFilter(msg), flags)
                    .await
                    .map_err(|source| TcError::Add { rule, source })?;
                let handle = echoed.ok_or(TcError::NoHandle { rule })?;
                self.handles.insert((slot, id), handle);
                Ok(())
            }
            Op::Remove { rule, id } => {
                let slot = super::plan::slot(&rule);
                let Some(handle) = self.handles.get(&(slot, id)).copied() else {
                    return Ok(());
                };
                let mut msg = self.header(slot);
                msg.header.handle = TcHandle::from(handle);
                msg.attributes.push(TcAttribute::Kind("u32".into()));
                match self
                    .request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_REQUEST | NLM_F_ACK)
                    .await
                {
                    Ok(_) => {}
                    // Already gone (flushed by someone): the goal is reached.
                    Err(e) if e.raw_os_error() == Some(ENOENT) => {}
                    Err(source) => return Err(TcError::Remove { rule, source }),
                }
                self.handles.remove(&(slot, id));
                Ok(())
            }
        }
    }

    /// Remove every filter of the shield's priorities.
    pub async fn flush(&mut self) -> Result<(), TcError> {
        for slot in 0..PRIORITIES.len() {
            let mut msg = self.header(slot);
            // Protocol 0: the whole priority, whatever its protocol.
            msg.header.info = u32::from(PRIORITIES[slot]) << 16;
            match self
                .request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_REQUEST | NLM_F_ACK)
                .await
            {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(ENOENT) => {}
                Err(source) => {
                    return Err(TcError::Flush {
                        priority: PRIORITIES[slot],
                        source,
                    })
                }
            }
        }
        self.handles.clear();
        Ok(())
    }

    /// Flush and drop the connection (the qdisc stays: others may use it, and it costs
    /// nothing without filters).
    pub async fn close(mut self) -> Result<(), TcError> {
        let flushed = self.flush().await;
        self.connection.abort();
        flushed
    }

    async fn add_clsact(&mut self) -> Result<(), TcError> {
        let mut msg = TcMessage::with_index(self.ifindex);
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle::from(0xffff_0000);
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        match self
            .request(RouteNetlinkMessage::NewQueueDiscipline(msg), flags)
            .await
        {
            Ok(_) => Ok(()),
            // A clsact (or ingress) qdisc is already there: filters attach to it alike.
            Err(e) if e.raw_os_error() == Some(EEXIST) => Ok(()),
            Err(source) => Err(TcError::Qdisc {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// A filter message's header for `slot`'s priority and protocol on our ingress.
    fn header(&self, slot: usize) -> TcMessage {
        let protocol = if slot % 2 == 0 { ETH_P_IP } else { ETH_P_IPV6 };
        let mut msg = TcMessage::with_index(self.ifindex);
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        };
        // The protocol goes in network byte order, as `tc` puts it.
        msg.header.info = (u32::from(PRIORITIES[slot]) << 16) | u32::from(protocol.to_be());
        msg
    }

    fn filter_message(&self, rule: &Rule, id: u16) -> TcMessage {
        let slot = super::plan::slot(rule);
        let mut msg = self.header(slot);
        msg.header.handle = TcHandle::from(u32::from(id));
        let (prefix, verdict) = match rule {
            Rule::Pass(ip) => (Prefix::host(*ip), TC_ACT_OK),
            Rule::Block(p) => (*p, TC_ACT_SHOT),
        };
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.keys = initiation_keys(&prefix, self.port);
        selector.nkeys = u8::try_from(selector.keys.len()).unwrap_or(u8::MAX);
        msg.attributes.push(TcAttribute::Kind("u32".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![gact(verdict)])),
        ]));
        msg
    }

    /// Send `message`, wait for the acknowledgement; the echoed filter handle, if any.
    async fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Option<u32>, std::io::Error> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = flags;
        let mut responses = self
            .handle
            .request(req)
            .map_err(|_| std::io::Error::other(TcError::Gone))?;
        let mut echoed = None;
        while let Some(msg) = responses.next().await {
            match msg.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                    echoed = Some(u32::from(m.header.handle));
                }
                _ => {}
            }
        }
        Ok(echoed)
    }
}

/// The u32 keys of "a handshake initiation to `port` from `prefix`": the cheapest test
/// that fails for most traffic (the message type word) first.
pub fn initiation_keys(prefix: &Prefix, port: u16) -> Vec<TcU32Key> {
    let key = |off: i32, mask: u32, val: u32| {
        let mut k = TcU32Key::default();
        k.off = off;
        k.mask = mask;
        k.val = val & mask;
        k
    };
    // WireGuard reads the first 4 bytes as a little-endian type: 1, 0, 0, 0.
    let initiation = 0x0100_0000;
    match prefix.addr {
        IpAddr::V4(src) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.len)).unwrap_or(0);
            let mut keys = vec![
                key(28, u32::MAX, initiation),
                key(0, 0x0f00_0000, 0x0500_0000), // IHL 5: no options
                key(4, 0x0000_1fff, 0),           // not a later fragment
                key(8, 0x00ff_0000, 0x0011_0000), // UDP
                key(20, 0x0000_ffff, u32::from(port)),
            ];
            if mask != 0 {
                keys.push(key(12, mask, u32::from(src)));
            }
            keys
        }
        IpAddr::V6(src) => {
            let mut keys = vec![
                key(48, u32::MAX, initiation),
                key(4, 0x0000_ff00, 0x0000_1100), // next header UDP
                key(40, 0x0000_ffff, u32::from(port)),
            ];
            let src = u128::from(src);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.len)).unwrap_or(0);
            for word in 0..4u32 {
                let shift = 96 - 32 * word;
                let m = u32::try_from((mask >> shift) & 0xffff_ffff).unwrap_or(0);
                if m != 0 {
                    let v = u32::try_from((src >> shift) & 0xffff_ffff).unwrap_or(0);
                    let off = 8 + 4 * i32::try_from(word).unwrap_or(0);
                    keys.push(key(off, m, v));
                }
            }
            keys
        }
    }
}

/// A gact action with `verdict` (`struct tc_gact`: index, capab, action, refcnt, bindcnt).
fn gact(verdict: i32) -> TcAction {
    let mut parms = Vec::with_capacity(20);
    for field in [0i32, 0, verdict, 0, 0] {
        parms.extend_from_slice(&field.to_ne_bytes());
    }
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("gact".into()),
        TcActionAttribute::Options(vec![TcActionOption::Other(DefaultNla::new(
            TCA_GACT_PARMS,
            parms,
        ))]),
    ];
    action
}

fn ifindex(name: &str) -> Option<i32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    i32::try_from(index).ok().filter(|i| *i > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(p: &str, port: u16) -> Vec<(i32, u32, u32)> {
        let (a, l) = p.split_once('/').unwrap();
        let prefix = Prefix {
            addr: a.parse().unwrap(),
            len: l.parse().unwrap(),
        };
        initiation_keys(&prefix, port)
            .into_iter()
            .map(|k| (k.off, k.mask, k.val))
            .collect()
    }

    #[test]
    fn ipv4_keys_match_type_1_to_the_port_from_the_prefix() {
        let k = keys("198.18.7.0/24", 51820);
        assert_eq!(k[0], (28, 0xffff_ffff, 0x0100_0000));
        assert!(k.contains(&(20, 0xffff, 51820)));
        assert!(k.contains(&(12, 0xffff_ff00, 0xc612_0700)));
        assert!(k.contains(&(8, 0x00ff_0000, 0x0011_0000)));
        assert!(keys("198.18.7.9/32", 1).contains(&(12, u32::MAX, 0xc612_0709)));
    }

    #[test]
    fn ipv6_keys_cover_only_the_prefix_words() {
        let k = keys("2001:2:0:1::/64", 51820);
        assert_eq!(k[0], (48, 0xffff_ffff, 0x0100_0000));
        assert!(k.contains(&(8, u32::MAX, 0x2001_0002)));
        assert!(k.contains(&(12, u32::MAX, 0x0000_0001)));
        assert!(!k.iter().any(|(off, _, _)| *off == 16 || *off == 20));
        let host = keys("2001:2::9/128", 51820);
        assert!(host.contains(&(20, u32::MAX, 9)));
    }

    #[test]
    fn gact_parms_are_a_tc_gact() {
        let a = gact(TC_ACT_SHOT);
        assert_eq!(a.attributes.len(), 2);
    }
}
