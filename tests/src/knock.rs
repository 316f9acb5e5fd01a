//! A simulated WireGuard client built on boringtun's `noise::Tunn` over a plain UDP
//! socket in the client namespace: it can knock (send handshake initiations, including
//! the very same bytes again from another source) and complete a handshake.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use jitwg::lab::Namespace;

use crate::HarnessError;

/// Largest datagram we handle (WireGuard messages here are far smaller).
const BUF: usize = 2048;

/// A boringtun client bound to one source address.
pub struct Knocker {
    socket: UdpSocket,
    tunn: Tunn,
    gateway: SocketAddr,
    public_key: [u8; 32],
}

impl Knocker {
    /// A client with key `private` on `src` (an address routed locally in `ns`), talking to
    /// `gateway` whose public key is `gateway_public`. `index` must fit in 24 bits.
    pub fn new(
        ns: &Namespace,
        src: Ipv4Addr,
        gateway: SocketAddr,
        gateway_public: [u8; 32],
        private: [u8; 32],
        index: u32,
    ) -> Result<Knocker, HarnessError> {
        let socket = bind_in(ns, src)?;
        let secret = StaticSecret::from(private);
        let public_key = PublicKey::from(&secret).to_bytes();
        let tunn = Tunn::new(
            secret,
            PublicKey::from(gateway_public),
            None,
            None,
            index & 0x00ff_ffff,
            None,
        );
        Ok(Knocker {
            socket,
            tunn,
            gateway,
            public_key,
        })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    pub fn local_addr(&self) -> Result<SocketAddr, HarnessError> {
        self.socket
            .local_addr()
            .map_err(HarnessError::io("socket address"))
    }

    /// A fresh handshake initiation (new ephemeral key, current TAI64N timestamp).
    pub fn initiation(&mut self) -> Result<Vec<u8>, HarnessError> {
        let mut buf = [0u8; BUF];
        match self.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(p) => Ok(p.to_vec()),
            TunnResult::Err(e) => Err(HarnessError::Client(format!("initiation: {e:?}"))),
            _ => Err(HarnessError::Client("no initiation produced".into())),
        }
    }

    /// Sends raw bytes to the gateway from this client's socket.
    pub fn send(&self, bytes: &[u8]) -> Result<(), HarnessError> {
        self.socket
            .send_to(bytes, self.gateway)
            .map(|_| ())
            .map_err(HarnessError::io(format!("sending to {}", self.gateway)))
    }

    /// Sends a fresh initiation; returns its bytes (to replay them later).
    pub fn knock(&mut self) -> Result<Vec<u8>, HarnessError> {
        let init = self.initiation()?;
        self.send(&init)?;
        Ok(init)
    }

    /// Knocks and runs the protocol until boringtun reports a completed handshake, or
    /// `timeout`. Returns the time from the first initiation to the handshake.
    pub fn connect(&mut self, timeout: Duration) -> Result<Duration, HarnessError> {
        let start = Instant::now();
        self.knock()?;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(HarnessError::io("set read timeout"))?;
        let mut rx = [0u8; BUF];
        let mut out = [0u8; BUF];
        while start.elapsed() < timeout {
            if self.tunn.stats().0.is_some() {
                return Ok(start.elapsed());
            }
            if let TunnResult::WriteToNetwork(p) = self.tunn.update_timers(&mut out) {
                let p = p.to_vec();
                self.send(&p)?;
            }
            let n = match self.socket.recv_from(&mut rx) {
                Ok((n, _)) => n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) => return Err(HarnessError::io("receiving")(e)),
            };
            let packet = rx.get(..n).unwrap_or_default().to_vec();
            let mut result = self.tunn.decapsulate(None, &packet, &mut out);
            // boringtun's contract: after a WriteToNetwork, call again with an empty
            // datagram until Done to flush queued packets.
            while let TunnResult::WriteToNetwork(p) = result {
                let p = p.to_vec();
                self.send(&p)?;
                result = self.tunn.decapsulate(None, &[], &mut out);
            }
        }
        if self.tunn.stats().0.is_some() {
            return Ok(start.elapsed());
        }
        Err(HarnessError::Timeout {
            what: "boringtun handshake with the gateway".into(),
            secs: timeout.as_secs_f64(),
            detail: String::new(),
        })
    }
}

/// A UDP socket on `src` (ephemeral port) created inside `ns`.
pub fn bind_in(ns: &Namespace, src: Ipv4Addr) -> Result<UdpSocket, HarnessError> {
    ns.run(move || UdpSocket::bind(SocketAddrV4::new(src, 0)))?
        .map_err(HarnessError::io(format!("binding UDP on {src}")))
}
