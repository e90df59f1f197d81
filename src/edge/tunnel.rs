//! Keeps tunnels to the hubs up: one per slot (each address a hub resolves to, times
//! `connectionsPerHub`, times its lanes): connect, authenticate, serve, and on any failure
//! report it and reconnect with backoff; on GOAWAY dial a replacement at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::{ConnectFailureReason, EdgeWarning};
use crate::lock::Locked;
use crate::protocol::control::{EdgeMessage, HubMessage};
use crate::protocol::dialect::Dialect;
use crate::protocol::frame::{HubFrame, ResetReason};
use crate::protocol::handshake::{
    encode_auth_line, parse_reply, EdgeConfig, HandshakeError, HubReply, MAX_REPLY_LINE,
    MIN_STUN_INTERVAL_SECS,
};
use crate::transport::quic_endpoint::{
    apply_buffer_budget, edge_endpoint, negotiated_alpn, CLOSE_STOPPED,
};
use crate::transport::tls::{HubTrust, ALPN};
use crate::transport::tls_stream;
use crate::tunnel::connection::ConnectionStreams;
use crate::tunnel::serve::{serve as tunnel_serve, LoggedIn, NewStream, ServeOptions, TunnelEnd};
use crate::tunnel::{read_line, Carrier, LineError, OnDrop, TunnelError, Violation};

use super::backoff::{jitter, Backoff};
use super::options::HubAddress;
use super::options::TransportMode;
use super::{EdgeEvent, EdgeShared, TunnelLink, TunnelSlot};

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot reach the hub at {0}: {1}")]
    Unreachable(String, std::io::Error),
    #[error("TLS handshake with the hub failed: {0}")]
    Tls(std::io::Error),
    #[error("the hub did not negotiate ALPN {:?}", String::from_utf8_lossy(ALPN))]
    Alpn,
    #[error("bad answer from the hub: {0}")]
    Answer(#[from] HandshakeError),
    #[error("the hub's answer: {0}")]
    Line(#[from] LineError),
    #[error("the hub refused this edge: {0}")]
    Rejected(String),
    #[error("no answer from the hub at {0} within {1:?}")]
    Timeout(String, std::time::Duration),
    #[error("QUIC: {0}")]
    Quic(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How long `quicWithFallback` waits for QUIC before it tries TCP+TLS.
pub(super) const QUIC_FALLBACK_AFTER: Duration = Duration::from_secs(5);

/// How often a hub's name is resolved again, so replicas added behind it get tunnels and
/// removed ones are no longer dialed.
pub(super) const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Starts keeping tunnels to every hub; returns at once.
pub(super) fn supervise(edge: &Arc<EdgeShared>, tls: &Arc<ClientConfig>) {
    if matches!(edge.options.trust, HubTrust::AnyKey) {
        edge.warn(
            EdgeWarning::HubNotVerified,
            "the hub's identity is not checked; set hubFingerprint (or caPem) to pin it".into(),
        );
    }
    for hub in &edge.options.hubs {
        edge.tasks
            .spawn(keep_hub(edge.clone(), tls.clone(), hub.clone()));
    }
}

/// Keeps `connectionsPerHub` tunnels (times their lanes) through every address `hub` resolves
/// to, until the edge stops. A name is resolved again every [`RESOLVE_INTERVAL`]: a new address
/// gets tunnels, one that is gone is not dialed again (its live tunnels run on until they end).
async fn keep_hub(edge: Arc<EdgeShared>, tls: Arc<ClientConfig>, hub: HubAddress) {
    let mut backoff = Backoff::new(edge.options.reconnect_min, edge.options.reconnect_max);
    let mut served: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    let literal = hub.host.parse::<IpAddr>().is_ok();
    loop {
        let wait = match resolve(&hub).await {
            Ok(addresses) => {
                backoff.reset();
                served.retain(|address, retired| {
                    let keep = addresses.contains(address);
                    if !keep {
                        retired.cancel();
                    }
                    keep
                });
                for address in addresses {
                    served.entry(address).or_insert_with(|| {
                        let first = TunnelSlot {
                            hub: hub.clone(),
                            address,
                            retired: edge.cancel.child_token(),
                            lane: 0,
                            lanes: Arc::new(AtomicUsize::new(0)),
                        };
                        keep_lanes(&edge, &tls, &first, 1);
                        first.retired
                    });
                }
                if literal {
                    return; // an address never resolves differently
                }
                RESOLVE_INTERVAL
            }
            Err(e) => {
                edge.count_connect_failure(ConnectFailureReason::Other);
                edge.warn(EdgeWarning::ConnectFailed, e.to_string());
                backoff.next_delay(jitter())
            }
        };
        tokio::select! {
            _ = edge.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Keeps `wanted` lanes through `through`'s address (never fewer than it keeps): each lane it
/// lacks gets `connectionsPerHub` slots.
fn keep_lanes(
    edge: &Arc<EdgeShared>,
    tls: &Arc<ClientConfig>,
    through: &TunnelSlot,
    wanted: usize,
) {
    let kept = through.lanes.fetch_max(wanted, Ordering::AcqRel);
    for lane in kept..wanted {
        for _ in 0..edge.options.connections_per_hub {
            let slot = Arc::new(TunnelSlot {
                hub: through.hub.clone(),
                address: through.address,
                retired: through.retired.clone(),
                lane,
                lanes: through.lanes.clone(),
            });
            edge.slots().push(slot.clone());
            edge.tasks
                .spawn(keep_tunnel(edge.clone(), tls.clone(), slot));
        }
    }
}

/// The addresses `hub` stands for, each once, in the resolver's order.
async fn resolve(hub: &HubAddress) -> Result<Vec<SocketAddr>, ConnectError> {
    let unreachable = |e| ConnectError::Unreachable(hub.to_string(), e);
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for address in tokio::net::lookup_host((hub.host.as_str(), hub.port))
        .await
        .map_err(unreachable)?
    {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err(unreachable(std::io::ErrorKind::NotFound.into()));
    }
    Ok(addresses)
}

/// Keeps one tunnel up through `slot`'s address: connect, serve, and after any failure report
/// it and reconnect with backoff; ends when the edge stops or the slot is retired.
async fn keep_tunnel(edge: Arc<EdgeShared>, tls: Arc<ClientConfig>, slot: Arc<TunnelSlot>) {
    let mut backoff = Backoff::new(edge.options.reconnect_min, edge.options.reconnect_max);
    let hub = slot.hub.to_string();
    let address = slot.address.to_string();
    loop {
        let outcome = tokio::select! {
            _ = edge.cancel.cancelled() => break,
            _ = slot.retired.cancelled() => break,
            outcome = connect(&edge, &tls, &slot) => outcome,
        };
        match outcome {
            Ok((established, config)) => {
                if config.instance_id.is_none() && slot.lane > 0 {
                    break; // a 4.13 hub: one tunnel per slot of the first lane
                }
                if config.instance_id.is_some() {
                    // A hub of this build: it takes lanes, as many as this path wants.
                    let wanted = edge.options.lanes.wanted(established.round_trip());
                    keep_lanes(&edge, &tls, &slot, wanted);
                }
                let Some(claim) = edge.claim_instance(&slot, config.instance_id.as_deref()) else {
                    // That hub process holds its lanes through this address already: this one
                    // closes and tries again later, for another.
                    drop(established);
                    let delay = backoff.next_delay(jitter());
                    tokio::select! {
                        _ = edge.cancel.cancelled() => break,
                        _ = slot.retired.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                };
                let connected_at = std::time::Instant::now();
                edge.totals().connects += 1;
                let goaway = CancellationToken::new();
                // A task of its own, so a panic while serving costs this tunnel, not the edge.
                let mut serving = edge.tasks.spawn({
                    let edge = edge.clone();
                    let slot = slot.clone();
                    let goaway = goaway.clone();
                    async move {
                        let _claim = claim;
                        serve(&edge, slot, established, config, goaway).await
                    }
                });
                tokio::select! {
                    ended = &mut serving => {
                        backoff.tunnel_ended(connected_at.elapsed());
                        report_end(&edge, ended, &hub, &address);
                        if edge.cancel.is_cancelled() {
                            break;
                        }
                    }
                    _ = goaway.cancelled() => {
                        // The hub drains this tunnel: it carries what it has until the hub
                        // closes it, and a replacement is dialed now, without backoff.
                        let (edge, hub, address) = (edge.clone(), hub.clone(), address.clone());
                        edge.tasks.clone().spawn(async move {
                            report_end(&edge, serving.await, &hub, &address);
                        });
                        backoff.reset();
                        continue;
                    }
                }
            }
            Err(e @ ConnectError::Rejected(_)) => {
                edge.count_connect_failure(ConnectFailureReason::Rejected);
                edge.warn(EdgeWarning::AuthRejected, e.to_string());
            }
            Err(e) => {
                edge.count_connect_failure(ConnectFailureReason::Other);
                edge.warn(EdgeWarning::ConnectFailed, e.to_string());
            }
        }
        let delay = backoff.next_delay(jitter());
        tokio::select! {
            _ = edge.cancel.cancelled() => break,
            _ = slot.retired.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    edge.slots().retain(|s| !Arc::ptr_eq(s, &slot));
}

/// `tunnelDisconnected` for a tunnel whose task has ended, with why.
fn report_end(
    edge: &EdgeShared,
    ended: Result<TunnelError, tokio::task::JoinError>,
    hub: &str,
    address: &str,
) {
    let reason = match ended {
        _ if edge.cancel.is_cancelled() => "edge stopped".to_string(),
        Ok(ended) => ended.to_string(),
        Err(failed) => {
            edge.warn(
                EdgeWarning::InternalError,
                format!("the tunnel's task failed ({failed}); reconnecting"),
            );
            "internal error".to_string()
        }
    };
    edge.emit(EdgeEvent::TunnelDisconnected {
        reason,
        hub: hub.to_string(),
        address: address.to_string(),
    });
}

/// One attempt to bring a tunnel up through `slot` over the configured transport(s), each
/// within the connect timeout.
async fn connect(
    edge: &EdgeShared,
    tls: &Arc<ClientConfig>,
    slot: &TunnelSlot,
) -> Result<(LoggedIn, EdgeConfig), ConnectError> {
    let limit = edge.options.connect_timeout;
    match edge.options.transport {
        TransportMode::TcpTls => within(slot, limit, connect_tls(edge, tls, slot)).await,
        TransportMode::Quic => within(slot, limit, connect_quic(edge, tls, slot)).await,
        TransportMode::QuicWithFallback => {
            let quic_limit = limit.min(QUIC_FALLBACK_AFTER);
            match within(slot, quic_limit, connect_quic(edge, tls, slot)).await {
                Ok(established) => Ok(established),
                // The hub answered: TCP+TLS would get the same answer.
                Err(e @ ConnectError::Rejected(_)) => Err(e),
                Err(e) => {
                    edge.warn(
                        EdgeWarning::QuicFallback,
                        format!("QUIC did not come up ({e}); trying TCP+TLS"),
                    );
                    within(slot, limit, connect_tls(edge, tls, slot)).await
                }
            }
        }
    }
}

async fn within<T>(
    slot: &TunnelSlot,
    limit: Duration,
    attempt: impl std::future::Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(ConnectError::Timeout(slot.describe(), limit)))
}

async fn connect_tls(
    edge: &EdgeShared,
    tls: &Arc<ClientConfig>,
    slot: &TunnelSlot,
) -> Result<(LoggedIn, EdgeConfig), ConnectError> {
    let o = &edge.options;
    let tcp = TcpStream::connect(slot.address)
        .await
        .map_err(|e| ConnectError::Unreachable(slot.describe(), e))?;
    crate::transport::tune_tunnel_socket(&tcp)?;
    let mut tls = tls_stream::connect(tls.clone(), slot.hub.server_name.clone(), tcp)
        .await
        .map_err(ConnectError::Tls)?;
    // A hub that selects no ALPN speaks 4.13's protocol (rustls refuses one we did not offer).
    let dialect = Dialect::from_alpn(tls.alpn.as_deref()).ok_or(ConnectError::Alpn)?;
    // Only now, with the hub's key checked, does the secret leave the edge.
    tls.writer
        .write_all(&encode_auth_line(&o.edge_id, &o.secret)?)
        .await?;
    tls.writer.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    // The answer lists every assigned port, so it may be far longer than the auth line.
    let line = read_line(&mut tls.reader, &mut buf, MAX_REPLY_LINE).await?;
    match parse_reply(&line)? {
        HubReply::Accepted(config) => Ok((LoggedIn::tls(tls, buf, dialect), config)),
        HubReply::Rejected { error } => Err(ConnectError::Rejected(error)),
    }
}

async fn connect_quic(
    edge: &EdgeShared,
    tls: &Arc<ClientConfig>,
    slot: &TunnelSlot,
) -> Result<(LoggedIn, EdgeConfig), ConnectError> {
    let o = &edge.options;
    let hub = slot.address;
    let quic = |e: &dyn std::fmt::Display| ConnectError::Quic(e.to_string());
    let endpoint = edge_endpoint(hub, tls.clone(), o.heartbeat_timeout).map_err(|e| quic(&e))?;
    let connection = endpoint
        .connect(hub, &slot.hub.host)
        .map_err(|e| quic(&e))?
        .await
        .map_err(|e| quic(&e))?;
    if !negotiated_alpn(&connection) {
        return Err(ConnectError::Alpn);
    }
    apply_buffer_budget(&connection, o.tunnel_buffer_bytes);
    // The control stream; the hub sees it when the auth line arrives on it. Only now, with
    // the hub's key checked, does the secret leave the edge.
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| quic(&e))?;
    send.write_all(&encode_auth_line(&o.edge_id, &o.secret)?)
        .await
        .map_err(|e| quic(&e))?;
    let mut buf = BytesMut::with_capacity(1024);
    let line = read_line(&mut recv, &mut buf, MAX_REPLY_LINE).await?;
    match parse_reply(&line)? {
        HubReply::Accepted(config) => Ok((
            LoggedIn::Quic {
                connection,
                send,
                recv,
                leftover: buf,
                endpoint: Some(endpoint),
            },
            config,
        )),
        HubReply::Rejected { error } => Err(ConnectError::Rejected(error)),
    }
}

/// Serves one logged-in tunnel until it fails or the edge stops.
async fn serve(
    edge: &Arc<EdgeShared>,
    slot: Arc<TunnelSlot>,
    logged_in: LoggedIn,
    config: EdgeConfig,
    goaway: CancellationToken,
) -> TunnelError {
    let dialect = logged_in.dialect();
    let (carrier, tunnel) = logged_in.ready(&edge.tasks);
    let (stun_interval, stun_interval_changes) = watch::channel(stun_interval(&config));
    let streams = ConnectionStreams::new(edge.options.tunnel_buffer_bytes, dialect, &carrier);
    let link = Arc::new(TunnelLink {
        slot,
        instance_id: config.instance_id.clone(),
        draining: AtomicBool::new(false),
        goaway,
        carrier,
        dialect,
        streams,
        udp: super::udp::UdpSessions::new(config.max_udp_sessions),
        cancel: edge.cancel.child_token(),
        stun_interval,
        assigned_ports: std::sync::Mutex::new((
            config.listen_ports.clone(),
            config.listen_ports_udp.clone(),
        )),
    });
    edge.add_link(&link);
    // However serving ends, a panic included: the tunnel's tasks stop and listeners stop
    // handing it connections.
    let _retire = OnDrop::new(|| {
        link.cancel.cancel();
        edge.remove_link(&link);
    });
    edge.tasks.spawn(super::udp::sweep_idle(
        link.clone(),
        edge.options.udp_idle_timeout,
    ));
    if !edge.options.stun_servers.is_empty() && link.slot.lane == 0 {
        // Its own task: discovery never holds up the tunnel. Lanes share the first's path.
        edge.tasks.spawn(super::refresh_public_ip(
            edge.clone(),
            link.cancel.clone(),
            stun_interval_changes,
        ));
    }
    apply_ports(edge, &config);
    edge.emit(EdgeEvent::PortsAssigned {
        listen_ports: config.listen_ports,
        listen_ports_udp: config.listen_ports_udp,
    });
    edge.emit(EdgeEvent::TunnelConnected {
        transport: link.carrier.transport(),
        protocol: dialect,
        hub: link.slot.hub.to_string(),
        address: link.slot.address.to_string(),
        instance_id: link.instance_id.clone(),
    });

    let end = Arc::new(LinkEnd {
        edge: edge.clone(),
        link: link.clone(),
    });
    let options = ServeOptions {
        tasks: &edge.tasks,
        cancel: &link.cancel,
        // The hub pings; silence is checked a few times per timeout period.
        heartbeat_interval: edge.options.heartbeat_timeout / 4,
        heartbeat_timeout: edge.options.heartbeat_timeout,
        pings: false,
        announce_timeout: edge.options.connect_timeout,
        bytes_in: edge.bytes_in.clone(),
        bytes_out: edge.bytes_out.clone(),
        quic_close_code: CLOSE_STOPPED,
    };
    let ended = tunnel_serve(&end, tunnel, options, |ended| {
        if edge.cancel.is_cancelled() {
            "edge stopped".to_string()
        } else {
            ended.to_string()
        }
    })
    .await;
    // A QUIC tunnel's own counts join the edge's totals as it ends.
    if let Some((bytes_in, bytes_out)) = link.carrier.counted_bytes() {
        edge.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        edge.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }
    ended
}

/// The edge's end of its tunnel.
struct LinkEnd {
    edge: Arc<EdgeShared>,
    link: Arc<TunnelLink>,
}

impl TunnelEnd for LinkEnd {
    type Sends = EdgeMessage;
    type PeerFrame = HubFrame;

    fn carrier(&self) -> &Carrier<EdgeMessage> {
        &self.link.carrier
    }

    fn streams(&self) -> &ConnectionStreams {
        &self.link.streams
    }

    fn on_control(self: &Arc<Self>, message: HubMessage) -> Result<(), TunnelError> {
        on_control(&self.edge, &self.link, message)
    }

    fn on_udp(self: &Arc<Self>, session: u32, payload: Bytes) {
        self.link.udp.reply(&self.edge, session, &payload);
    }

    fn on_stream(self: &Arc<Self>, stream: NewStream) -> Result<(), TunnelError> {
        stream.refuse(ResetReason::Refused);
        Err(Violation::StreamFromHub.into())
    }
}

/// A tunnel-wide message from the hub, over either transport.
fn on_control(
    edge: &Arc<EdgeShared>,
    link: &TunnelLink,
    message: HubMessage,
) -> Result<(), TunnelError> {
    match message {
        HubMessage::Config(config) => apply_config(edge, link, config),
        HubMessage::Ping(nonce) => {
            link.carrier.send(EdgeMessage::Pong(nonce));
        }
        HubMessage::Pong(_) => {}
        HubMessage::UdpClose { session } => link.udp.close(session),
        HubMessage::OpenAck { stream } => link.streams.acknowledged(stream),
        HubMessage::WindowUpdate { stream, credit } => link.streams.quic().grant(stream, credit)?,
        HubMessage::GoAway => {
            if !link.is_draining() {
                edge.drain_link(link);
                // Any id handed out before this point may still be opened; none after.
                let last_id = link.streams.close_ids();
                link.carrier.send(EdgeMessage::GoAway { last_id });
                link.goaway.cancel();
            }
        }
    }
    Ok(())
}

/// A CONFIG from the hub: new ports, STUN interval.
fn apply_config(edge: &Arc<EdgeShared>, link: &TunnelLink, config: EdgeConfig) {
    apply_ports(edge, &config);
    link.udp.set_limit(config.max_udp_sessions);
    let interval = stun_interval(&config);
    link.stun_interval.send_if_modified(|current| {
        let changed = *current != interval;
        *current = interval;
        changed
    });
    let ports = (config.listen_ports, config.listen_ports_udp);
    let mut assigned = link.assigned_ports.locked();
    if *assigned != ports {
        *assigned = ports.clone();
        edge.emit(EdgeEvent::PortsUpdated {
            listen_ports: ports.0,
            listen_ports_udp: ports.1,
        });
    }
}

/// The hub's STUN refresh interval (validated to 1 s .. 1 week when parsed).
fn stun_interval(config: &EdgeConfig) -> Duration {
    Duration::from_secs(config.stun_interval_secs.max(MIN_STUN_INTERVAL_SECS))
}

fn apply_ports(edge: &Arc<EdgeShared>, config: &EdgeConfig) {
    edge.listeners().apply(edge, config);
}
