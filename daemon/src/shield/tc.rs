//! The kernel side of the shield: one tc `bpf` classifier per address family on the
//! capture interface's ingress (a clsact qdisc), in direct-action mode, holding the
//! classic program `bpf::program` builds from the rules; written over rtnetlink. A change
//! replaces the family's whole program in one request (`NLM_F_REPLACE` on a fixed
//! handle), so passes and blocks always change together. Two priorities of our own keep
//! it apart from anyone else's filters; at start and exit they are flushed, so a restart
//! replaces whatever a killed daemon left.
//!
//! Why not u32 filters with a gact drop action: this machine's kernel cannot load
//! act_gact (no modules: "Failed to load TC action module"), and cls_bpf in direct-action
//! mode needs no action at all.
//!
//! AF_PACKET taps see a frame before tc ingress runs, so jitwgd's capture still sees
//! every dropped initiation and its penalties stay fresh (tested in `tests/`).

use futures::StreamExt;
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::bpf;
use super::plan::Rule;

/// The two priorities (IPv4, IPv6). High numbers: anyone else's filters at the usual
/// low priorities run first.
pub const PRIORITIES: [u16; 2] = [0xc7a0, 0xc7a1];

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `TCA_BPF_OPS_LEN` and `TCA_BPF_OPS` (a classic program) of `<linux/pkt_cls.h>`.
const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
/// The handle of our one filter per priority.
const FILTER_HANDLE: u32 = 1;

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
    #[error("flushing the shield's filter at priority {priority:#x} failed")]
    Flush {
        priority: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the shield's {family} program ({rules} rules) failed")]
    Replace {
        family: &'static str,
        rules: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("the rtnetlink connection is gone")]
    Gone,
}

/// The shield's filters on one interface's ingress, through one rtnetlink connection.
pub struct TcShield {
    handle: rtnetlink::Handle,
    ifindex: i32,
    name: String,
    port: u16,
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
            connection,
        };
        shield.add_clsact().await?;
        shield.flush().await?;
        Ok(shield)
    }

    /// Make `rules` (all of one family, `v4`, in `Rule` order) the family's program; no
    /// rules: no filter.
    pub async fn replace(&mut self, rules: &[Rule], v4: bool) -> Result<(), TcError> {
        let family = if v4 { 0 } else { 1 };
        if rules.is_empty() {
            return self
                .remove(family)
                .await
                .map_err(|source| TcError::Replace {
                    family: family_name(v4),
                    rules: 0,
                    source,
                });
        }
        let program = bpf::program(rules, v4, self.port);
        let mut msg = self.header(family);
        msg.header.handle = TcHandle::from(FILTER_HANDLE);
        let ops_len = u16::try_from(program.len()).unwrap_or(u16::MAX);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(
                TCA_BPF_OPS_LEN,
                ops_len.to_ne_bytes().to_vec(),
            ))),
            TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(
                TCA_BPF_OPS,
                bpf::to_bytes(&program),
            ))),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(RouteNetlinkMessage::NewTrafficFilter(msg), flags)
            .await
            .map_err(|source| TcError::Replace {
                family: family_name(v4),
                rules: rules.len(),
                source,
            })
    }

    /// Remove both families' filters.
    pub async fn flush(&mut self) -> Result<(), TcError> {
        for (family, priority) in PRIORITIES.iter().enumerate() {
            self.remove(family).await.map_err(|source| TcError::Flush {
                priority: *priority,
                source,
            })?;
        }
        Ok(())
    }

    /// Flush and drop the connection (the qdisc stays: others may use it, and it costs
    /// nothing without filters).
    pub async fn close(mut self) -> Result<(), TcError> {
        let flushed = self.flush().await;
        self.connection.abort();
        flushed
    }

    /// Delete the whole priority of `family` (absent already: fine).
    async fn remove(&mut self, family: usize) -> Result<(), std::io::Error> {
        let mut msg = self.header(family);
        // Protocol 0: the whole priority, whatever its protocol.
        msg.header.info = u32::from(PRIORITIES[family]) << 16;
        match self
            .request(
                RouteNetlinkMessage::DelTrafficFilter(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
        {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
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
            Ok(()) => Ok(()),
            // A clsact (or ingress) qdisc is already there: filters attach to it alike.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(TcError::Qdisc {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// A filter message's header for `family`'s priority and protocol on our ingress.
    fn header(&self, family: usize) -> TcMessage {
        let protocol = if family == 0 { ETH_P_IP } else { ETH_P_IPV6 };
        let mut msg = TcMessage::with_index(self.ifindex);
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        };
        // The protocol goes in network byte order, as `tc` puts it.
        msg.header.info = (u32::from(PRIORITIES[family]) << 16) | u32::from(protocol.to_be());
        msg
    }

    /// Send `message` and wait for the kernel's acknowledgement.
    async fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), std::io::Error> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = flags;
        let mut responses = self
            .handle
            .request(req)
            .map_err(|_| std::io::Error::other(TcError::Gone))?;
        while let Some(msg) = responses.next().await {
            if let NetlinkPayload::Error(e) = msg.payload {
                if e.code.is_some() {
                    return Err(e.to_io());
                }
            }
        }
        Ok(())
    }
}

fn family_name(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn ifindex(name: &str) -> Option<i32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    i32::try_from(index).ok().filter(|i| *i > 0)
}
