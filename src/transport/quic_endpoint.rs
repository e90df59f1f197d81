//! QUIC endpoints for both ends: the same rustls configs (identity, trust, ALPN) as the TLS
//! transport, transport limits sized for a tunnel, and UDP sockets with room for bursts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::BbrConfig;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::{ClientConfig, ServerConfig};

use super::quic_congestion::BoundedConfig;
use super::quic_runtime::TurnSharingRuntime;
use super::tls::{TlsSetupError, ALPN};
use crate::mux::flow::MAX_STREAM_WINDOW_TARGET;

/// Kernel buffers asked for each QUIC socket: the default ~200 KiB loses thousands of packets
/// in a loopback burst (the kernel caps it at net.core.rmem_max / wmem_max).
pub(crate) const QUIC_SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Oversized datagrams in flight at once, each on its own unidirectional stream.
pub(crate) const MAX_OVERSIZED_DATAGRAM_STREAMS: u32 = 256;
/// quinn's window for each stream. A connection stream's window is the credit its relays
/// grant (`tunnel::quic_flow`, at most `MAX_STREAM_WINDOW_TARGET`), and this is far above it,
/// so quinn's own limit, which it raises in steps as data is read, never holds back a peer
/// that keeps to its credit; it bounds one that does not.
pub(crate) const QUIC_STREAM_WINDOW: u32 = 8 * MAX_STREAM_WINDOW_TARGET;
/// Bytes all connections of one tunnel may have in flight unread, per direction: the same
/// budget as the TLS transport's windows.
pub(crate) const QUIC_CONNECTION_WINDOW: u32 = crate::mux::flow::TUNNEL_WINDOW_BUDGET;
/// Datagrams waiting to be sent or read, per tunnel: bursts are queued rather than dropped.
pub(crate) const QUIC_DATAGRAM_BUFFER: usize = 4 * 1024 * 1024;
/// The largest UDP payload MTU discovery tries, and accepts from the peer. Where the path
/// allows it (loopback, jumbo frames) several UDP datagrams share one QUIC packet, which cuts
/// the per-packet work; elsewhere discovery settles at the path MTU. quinn sends up to 10
/// packets in one GSO batch and the kernel takes at most 64 KiB in one send, so a larger
/// bound makes whole batches fail.
pub(crate) const QUIC_MAX_UDP_PAYLOAD: u16 = 6500;
/// Application close code for a clean stop.
pub(crate) const CLOSE_STOPPED: VarInt = VarInt::from_u32(0);
/// Application close code for a protocol violation; the reason text says which.
pub(crate) const CLOSE_PROTOCOL_ERROR: VarInt = VarInt::from_u32(1);
/// Application close code when the hub ends a session (replaced, removed, secret changed).
pub(crate) const CLOSE_SESSION_ENDED: VarInt = VarInt::from_u32(2);

/// Streams an edge may open before its login is decided: the control stream, nothing else.
/// quinn makes state for every stream a peer may open when the connection is created, so
/// granting the tunnel's limit up front cost megabytes per unanswered Initial.
pub(crate) const STREAMS_BEFORE_LOGIN: u32 = 1;
/// Bytes an edge may send before its login is decided: room for the auth line, no more.
pub(crate) const RECEIVE_WINDOW_BEFORE_LOGIN: u32 = 16 * 1024;
/// Connection attempts quinn holds for the hub's accept loop at once; past it quinn refuses
/// them. Each holds its first packet, and at most `INCOMING_BUFFER_BYTES` more.
pub(crate) const MAX_INCOMING: usize = 4096;
pub(crate) const INCOMING_BUFFER_BYTES: u64 = 16 * 1024;
pub(crate) const INCOMING_BUFFER_TOTAL_BYTES: u64 = 4 * 1024 * 1024;

/// What one side lets its peer use. The hub's side starts with the `*_BEFORE_LOGIN` limits
/// and raises them with [`grant_tunnel_limits`] once the edge has logged in.
struct PeerAllowance {
    /// Connection streams the peer may open at once.
    bidi_streams: u32,
    /// Oversized datagrams the peer may send at once, one unidirectional stream each.
    uni_streams: u32,
    receive_window: u32,
    datagram_buffer: usize,
}

/// Transport limits for one side. `idle_timeout` closes a silent connection; `keep_alive`
/// keeps NAT mappings open between heartbeats.
fn transport_config(
    allowance: PeerAllowance,
    idle_timeout: Duration,
    keep_alive: Option<Duration>,
) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(allowance.bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(allowance.uni_streams))
        .stream_receive_window(VarInt::from_u32(QUIC_STREAM_WINDOW))
        .receive_window(VarInt::from_u32(allowance.receive_window))
        .send_window(u64::from(QUIC_CONNECTION_WINDOW))
        .datagram_receive_buffer_size(Some(allowance.datagram_buffer))
        .datagram_send_buffer_size(QUIC_DATAGRAM_BUFFER)
        .keep_alive_interval(keep_alive)
        // Out of range only beyond 2^62 ms; fall back to no quinn timeout (heartbeats remain).
        .max_idle_timeout(IdleTimeout::try_from(idle_timeout).ok());
    let mut mtu_discovery = MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(QUIC_MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu_discovery));
    // quinn sends even a CONNECTION_CLOSE only within the congestion window. With the
    // default ~14.7 KB window, two MTU probes of our size fill it right after the handshake,
    // and a close then waits for their acknowledgement; if that takes longer than the closing
    // period, the close is never sent and the peer gets a stateless reset instead of the
    // reason. Ten packets of our largest size, as RFC 9002 counts the initial window, leaves
    // room for it.
    let mut bbr = BbrConfig::default();
    bbr.initial_window(10 * u64::from(QUIC_MAX_UDP_PAYLOAD));
    transport.congestion_controller_factory(Arc::new(BoundedConfig {
        inner: Arc::new(bbr),
    }));
    transport
}

fn endpoint_config() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(QUIC_MAX_UDP_PAYLOAD)
        .expect("QUIC_MAX_UDP_PAYLOAD is within quinn's range");
    config
}

/// A UDP socket bound to `address` with large kernel buffers, for a QUIC endpoint.
fn bind_socket(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel may cap them, which costs only burst tolerance.
    let _ = socket.set_recv_buffer_size(QUIC_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(QUIC_SOCKET_BUFFER);
    if address.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum QuicSetupError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    Crypto(String),
    #[error("cannot listen for QUIC on UDP {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The hub's QUIC endpoint on UDP `address`, with the identity of its TLS listener. A new
/// connection may open only its control stream; [`grant_tunnel_limits`] opens the rest.
pub(crate) fn hub_endpoint(
    address: SocketAddr,
    tls: Arc<ServerConfig>,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<Endpoint, QuicSetupError> {
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let before_login = PeerAllowance {
        bidi_streams: STREAMS_BEFORE_LOGIN,
        uni_streams: 0,
        receive_window: RECEIVE_WINDOW_BEFORE_LOGIN,
        // Cannot be raised later; until login the hub reads and drops every datagram.
        datagram_buffer: QUIC_DATAGRAM_BUFFER,
    };
    server
        .transport_config(Arc::new(transport_config(
            before_login,
            idle_timeout,
            Some(keep_alive),
        )))
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
    let bind = |address| {
        let socket = bind_socket(address)?;
        Endpoint::new(
            endpoint_config(),
            Some(server.clone()),
            socket,
            Arc::new(TurnSharingRuntime),
        )
    };
    bind(address).map_err(|source| QuicSetupError::Bind { address, source })
}

/// An edge's endpoint for one connection attempt to a hub at `hub`.
pub(crate) fn edge_endpoint(
    hub: SocketAddr,
    tls: Arc<ClientConfig>,
    idle_timeout: Duration,
) -> Result<Endpoint, QuicSetupError> {
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // An edge keeps its side alive a few times per timeout, for NATs on the way.
    let from_hub = PeerAllowance {
        bidi_streams: 0,
        uni_streams: MAX_OVERSIZED_DATAGRAM_STREAMS,
        receive_window: QUIC_CONNECTION_WINDOW,
        datagram_buffer: QUIC_DATAGRAM_BUFFER,
    };
    client.transport_config(Arc::new(transport_config(
        from_hub,
        idle_timeout,
        Some(idle_timeout / 3),
    )));
    let local: SocketAddr = if hub.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = bind_socket(local).map_err(|source| QuicSetupError::Bind {
        address: local,
        source,
    })?;
    let mut endpoint = Endpoint::new(
        endpoint_config(),
        None,
        socket,
        Arc::new(TurnSharingRuntime),
    )
    .map_err(|source| QuicSetupError::Bind {
        address: local,
        source,
    })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Raises a logged-in edge's limits to the tunnel's: `streams_per_edge` connection streams
/// (each tunneled connection is a stream) beside the control stream, oversized datagrams, and
/// the tunnel's buffer budget (see [`apply_buffer_budget`]).
pub(crate) fn grant_tunnel_limits(
    connection: &quinn::Connection,
    streams_per_edge: u32,
    budget: u32,
) {
    connection.set_max_concurrent_bi_streams(VarInt::from_u32(
        streams_per_edge.saturating_add(STREAMS_BEFORE_LOGIN),
    ));
    connection.set_max_concurrent_uni_streams(VarInt::from_u32(MAX_OVERSIZED_DATAGRAM_STREAMS));
    apply_buffer_budget(connection, budget);
}

/// Bounds what quinn buffers for a connection: what the peer may send before the relays take
/// it (they read as soon as data arrives) and what this side queues unsent or unacknowledged,
/// [`quic_window`] each. The streams' own windows share `budget` as over TCP+TLS.
pub(crate) fn apply_buffer_budget(connection: &quinn::Connection, budget: u32) {
    let window = quic_window(budget);
    connection.set_receive_window(VarInt::from_u32(window));
    connection.set_send_window(u64::from(window));
}

/// What a tunnel's relays may hold together in reads in hand: a relay reads its socket before
/// quinn takes the bytes, and quinn keeps a read whole until its last byte is acknowledged.
pub(crate) fn relay_reads_budget(budget: u32) -> u32 {
    budget / 8
}

/// quinn's send and receive windows for a tunnel with buffer budget `budget`. The relays read
/// as soon as data arrives and send only within credit, so what quinn holds is what is in
/// flight (an eighth of the default budget is 25 MiB: 1 Gbit/s over a 200 ms round trip);
/// what waits for a slow reader is in the streams' windows, which share the budget.
pub(crate) fn quic_window(budget: u32) -> u32 {
    budget / 8
}

/// How long a closing side waits for its CONNECTION_CLOSE to leave, for a peer that is gone.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a closing side looks whether its CONNECTION_CLOSE has left.
const CLOSE_SENT_POLL: Duration = Duration::from_millis(1);

/// Closes `connection` and returns once its CONNECTION_CLOSE has been handed to the socket
/// (bounded by `CLOSE_SEND_TIMEOUT`), so the peer learns of the close at once. The endpoint
/// keeps answering the peer with the close through the closing period in the background;
/// waiting that period out (`Endpoint::wait_idle`, three probe timeouts) cost every stop
/// 120 ms in release builds and 700 ms in debug ones, where the handshake's round trip
/// estimate is long.
pub(crate) async fn close_and_send(connection: &quinn::Connection, code: VarInt, reason: &[u8]) {
    if connection.close_reason().is_some() {
        return; // closed by the peer or lost: there is no close of ours to send
    }
    // After close() the connection sends nothing but its close, and quinn counts a datagram
    // under the same lock as it hands it to the socket.
    let sent_before = connection.stats().udp_tx.datagrams;
    connection.close(code, reason);
    let close_sent = async {
        while connection.stats().udp_tx.datagrams == sent_before {
            tokio::time::sleep(CLOSE_SENT_POLL).await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, close_sent).await;
}

/// Whether the peer agreed on our ALPN (a client that offers none still completes a handshake).
pub(crate) fn negotiated_alpn(connection: &quinn::Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == ALPN)
}
