//! Keeps a tunnel to the hub up: connect, authenticate, serve frames, and on any failure
//! report it and reconnect with backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

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
use super::options::TransportMode;
use super::{EdgeEvent, EdgeShared, TunnelLink};

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

/// Runs until the edge is stopped.
pub(super) async fn supervise(edge: Arc<EdgeShared>, tls: Arc<ClientConfig>) {
    let mut backoff = Backoff::new(edge.options.reconnect_min, edge.options.reconnect_max);
    if matches!(edge.options.trust, HubTrust::AnyKey) {
        edge.warn(
            EdgeWarning::HubNotVerified,
            "the hub's identity is not checked; set hubFingerprint (or caPem) to pin it".into(),
        );
    }
    loop {
        let outcome = tokio::select! {
            _ = edge.cancel.cancelled() => return,
            outcome = connect(&edge, &tls) => outcome,
        };
        match outcome {
            Ok((established, config)) => {
                let connected_at = std::time::Instant::now();
                edge.totals().connects += 1;
                // A task of its own, so a panic while serving costs this tunnel, not the edge.
                let serving = edge.tasks.spawn({
                    let edge = edge.clone();
                    async move { serve(&edge, established, config).await }
                });
                let ended = serving.await;
                backoff.tunnel_ended(connected_at.elapsed());
                let reason = match ended {
                    Ok(ended) => ended.to_string(),
                    Err(failed) => {
                        edge.warn(
                            EdgeWarning::InternalError,
                            format!("the tunnel's task failed ({failed}); reconnecting"),
                        );
                        "internal error".to_string()
                    }
                };
                if edge.cancel.is_cancelled() {
                    edge.emit(EdgeEvent::TunnelDisconnected {
                        reason: "edge stopped".into(),
                    });
                    return;
                }
                edge.emit(EdgeEvent::TunnelDisconnected { reason });
            }
            Err(e @ ConnectError::Rejected(_)) => {
                *edge
                    .totals()
                    .connect_failures
                    .entry(ConnectFailureReason::Rejected)
                    .or_default() += 1;
                edge.warn(EdgeWarning::AuthRejected, e.to_string());
            }
            Err(e) => {
                *edge
                    .totals()
                    .connect_failures
                    .entry(ConnectFailureReason::Other)
                    .or_default() += 1;
                edge.warn(EdgeWarning::ConnectFailed, e.to_string());
            }
        }
        let delay = backoff.next_delay(jitter());
        tokio::select! {
            _ = edge.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One attempt to bring a tunnel up over the configured transport(s), each within the
/// connect timeout.
async fn connect(
    edge: &EdgeShared,
    tls: &Arc<ClientConfig>,
) -> Result<(LoggedIn, EdgeConfig), ConnectError> {
    let limit = edge.options.connect_timeout;
    match edge.options.transport {
        TransportMode::TcpTls => within(edge, limit, connect_tls(edge, tls)).await,
        TransportMode::Quic => within(edge, limit, connect_quic(edge, tls)).await,
        TransportMode::QuicWithFallback => {
            let quic_limit = limit.min(QUIC_FALLBACK_AFTER);
            match within(edge, quic_limit, connect_quic(edge, tls)).await {
                Ok(established) => Ok(established),
                // The hub answered: TCP+TLS would get the same answer.
                Err(e @ ConnectError::Rejected(_)) => Err(e),
                Err(e) => {
                    edge.warn(
                        EdgeWarning::QuicFallback,
                        format!("QUIC did not come up ({e}); trying TCP+TLS"),
                    );
                    within(edge, limit, connect_tls(edge, tls)).await
                }
            }
        }
    }
}

async fn within<T>(
    edge: &EdgeShared,
    limit: Duration,
    attempt: impl std::future::Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| {
            let hub = format!("{}:{}", edge.options.hub_host, edge.options.hub_port);
            Err(ConnectError::Timeout(hub, limit))
        })
}

async fn connect_tls(
    edge: &EdgeShared,
    tls: &Arc<ClientConfig>,
) -> Result<(LoggedIn, EdgeConfig), ConnectError> {
    let o = &edge.options;
    let address = format!("{}:{}", o.hub_host, o.hub_port);
    let tcp = TcpStream::connect((o.hub_host.as_str(), o.hub_port))
        .await
        .map_err(|e| ConnectError::Unreachable(address, e))?;
    crate::transport::tune_tunnel_socket(&tcp)?;
    let mut tls = tls_stream::connect(tls.clone(), o.hub_server_name.clone(), tcp)
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
        HubReply::Accepted(config) => {
            // Best effort: without a round-trip estimate the kernel's autotuning stays.
            let _ = crate::transport::bound_receive_buffer(tls.reader.tcp());
            Ok((LoggedIn::tls(tls, buf, dialect), config))
        }
        HubReply::Rejected { error } => Err(ConnectError::Rejected(error)),
    }
}

async fn connect_quic(
    edge: &EdgeShared,
    tls: &Arc<ClientConfig>,
) -> Result<(LoggedIn, EdgeConfig), ConnectError> {
    let o = &edge.options;
    let address = format!("{}:{}", o.hub_host, o.hub_port);
    let hub = tokio::net::lookup_host((o.hub_host.as_str(), o.hub_port))
        .await
        .map_err(|e| ConnectError::Unreachable(address.clone(), e))?
        .next()
        .ok_or_else(|| ConnectError::Unreachable(address, std::io::ErrorKind::NotFound.into()))?;
    let quic = |e: &dyn std::fmt::Display| ConnectError::Quic(e.to_string());
    let endpoint = edge_endpoint(hub, tls.clone(), o.heartbeat_timeout).map_err(|e| quic(&e))?;
    let connection = endpoint
        .connect(hub, &o.hub_host)
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
async fn serve(edge: &Arc<EdgeShared>, logged_in: LoggedIn, config: EdgeConfig) -> TunnelError {
    let dialect = logged_in.dialect();
    let (carrier, tunnel) = logged_in.ready(&edge.tasks);
    let (stun_interval, stun_interval_changes) = watch::channel(stun_interval(&config));
    let link = Arc::new(TunnelLink {
        carrier,
        dialect,
        streams: ConnectionStreams::new(edge.options.tunnel_buffer_bytes, dialect),
        udp: super::udp::UdpSessions::new(config.max_udp_sessions),
        cancel: edge.cancel.child_token(),
        stun_interval,
        assigned_ports: std::sync::Mutex::new((
            config.listen_ports.clone(),
            config.listen_ports_udp.clone(),
        )),
    });
    edge.set_link(&link);
    // However serving ends, a panic included: the tunnel's tasks stop and listeners stop
    // handing it connections.
    let _retire = OnDrop::new(|| {
        link.cancel.cancel();
        edge.clear_link(&link);
    });
    edge.tasks.spawn(super::udp::sweep_idle(
        link.clone(),
        edge.options.udp_idle_timeout,
    ));
    if !edge.options.stun_servers.is_empty() {
        // Its own task: discovery never holds up the tunnel.
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
    edge.listeners()
        .apply(edge, &config.listen_ports, &config.listen_ports_udp);
}
