//! A client's connection, made ready before its arrival: its socket bound (with receive
//! timestamps) and its boringtun `Tunn` built (one X25519, the static-static DH). Neither sends
//! anything, so doing it ahead changes nothing on the wire, but in a storm it takes work off the
//! driver's core exactly when that core is the bottleneck (see BENCHMARKS.md, "receive lag").

use std::time::Duration;

use tokio::net::UdpSocket;

use super::fleet::FleetConfig;
use super::session::{Session, SessionConfig};
use super::socket::{bind_source, enable_receive_timestamps};
use crate::scenario::resolve::ClientPlan;

/// How long before its intended start a client prepares its first connection. Bounds how many
/// prepared sockets and `Tunn`s wait at once to two seconds of arrivals.
pub const PREPARE_AHEAD: Duration = Duration::from_secs(2);

/// Driver time to prepare one client, with room for a slow moment of a shared core (measured
/// ~80 µs in release on a quiet core: socket, bind, two setsockopts, one X25519; the same fixed
/// work took up to twice as long from one second to the next on the 2-core host). 150 µs left
/// a storm's first arrivals unprepared when the core was slow: the driver then started clients
/// and read the gateway's packets late (start lag p50 up to 0.6 s), and the gateway refused
/// the late responses to its initiations (BENCHMARKS.md, storm fifth round).
const PREPARE_COST: Duration = Duration::from_micros(400);

/// How long a run should wait between starting the fleet and its origin so the clients that
/// arrive first are prepared before anyone arrives: [`PREPARE_COST`] per client starting within
/// [`PREPARE_AHEAD`], at most [`PREPARE_AHEAD`]. `starts` are offsets from the origin.
pub fn prepare_lead(starts: impl IntoIterator<Item = Duration>) -> Duration {
    let early = starts.into_iter().filter(|s| *s < PREPARE_AHEAD).count();
    PREPARE_COST
        .saturating_mul(u32::try_from(early).unwrap_or(u32::MAX))
        .min(PREPARE_AHEAD)
}

/// What a connection needs before its first packet.
pub(super) struct Prepared {
    pub socket: UdpSocket,
    pub session: Session,
}

/// Binds the client's socket and builds its session; the error is the connection's failure
/// text. Must run inside a tokio runtime.
pub(super) fn prepare(
    config: &FleetConfig,
    plan: &ClientPlan,
    sender_index: u32,
    echo_retry: Duration,
) -> Result<Prepared, String> {
    let socket =
        bind_source(plan.source_ip).map_err(|e| format!("binding {}: {e}", plan.source_ip))?;
    if let Err(e) = enable_receive_timestamps(&socket) {
        // Without stamps this client's datagrams are left out of the receive lag, nothing else.
        tracing::debug!(client = plan.id, error = %e, "enabling receive timestamps");
    }
    let session = Session::new(SessionConfig {
        private_key: plan.identity.private_key,
        gateway_public_key: config.gateway_public_key,
        sender_index,
        tunnel_ip: plan.identity.tunnel_ip,
        gateway_tunnel_ip: config.gateway_tunnel_ip,
        give_up_after: config.give_up_after,
        echo_retry,
    })
    .map_err(|e| e.to_string())?;
    Ok(Prepared { socket, session })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_covers_the_early_arrivals_and_is_capped() {
        let ms = Duration::from_millis;
        assert_eq!(prepare_lead([]), Duration::ZERO);
        // Only clients starting within PREPARE_AHEAD count; later ones prepare during the run.
        assert_eq!(
            prepare_lead([ms(0), ms(500), ms(1_999), ms(2_000), ms(60_000)]),
            PREPARE_COST * 3
        );
        // 1,000 clients within 1 s: 0.4 s; a 5,000-client storm and 100,000 clients: capped.
        assert_eq!(prepare_lead((0..1_000).map(|_| ms(1))), ms(400));
        assert_eq!(prepare_lead((0..5_000).map(|_| ms(1))), PREPARE_AHEAD);
        assert_eq!(prepare_lead((0..100_000).map(|_| ms(1))), PREPARE_AHEAD);
    }
}
