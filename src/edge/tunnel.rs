//! Keeps a tunnel to the hub up: connect, authenticate, serve frames, and on any failure
//! report it and reconnect with backoff.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::events::TransportKind;
use crate::protocol::frame::{decode_close, decode_ping, decode_window_credit, Frame, FrameType};
use crate::protocol::handshake::{
    encode_auth_line, parse_config, parse_reply, take_line_limited, EdgeConfig, HandshakeError,
    HubReply, MAX_REPLY_LINE, MIN_STUN_INTERVAL_SECS,
};
use crate::transport::tls::{server_name, HubTrust, ALPN};
use crate::tunnel::frame_loop::{run_frame_loop, Heartbeat};
use crate::tunnel::reader::FrameReader;
use crate::tunnel::stream::StreamTable;
use crate::tunnel::writer::{frame_channel, run_writer};
use crate::tunnel::TunnelError;

use super::backoff::{jitter, Backoff};
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
    #[error("the hub closed the connection during the handshake")]
    Closed,
    #[error("the hub refused this edge: {0}")]
    Rejected(String),
    #[error("no answer from the hub within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs until the edge is stopped.
pub(super) async fn supervise(edge: Arc<EdgeShared>, tls: Arc<ClientConfig>) {
    let connector = TlsConnector::from(tls);
    let mut backoff = Backoff::new(edge.options.reconnect_min, edge.options.reconnect_max);
    if matches!(edge.options.trust, HubTrust::AnyKey) {
        edge.warn(
            "hubNotVerified",
            "the hub's identity is not checked; set hubFingerprint (or caPem) to pin it".into(),
        );
    }
    loop {
        let attempt =
            tokio::time::timeout(edge.options.connect_timeout, connect(&edge, &connector));
        let outcome = tokio::select! {
            _ = edge.cancel.cancelled() => return,
            outcome = attempt => outcome.unwrap_or(Err(ConnectError::Timeout(edge.options.connect_timeout))),
        };
        match outcome {
            Ok((tls, config, leftover)) => {
                backoff.reset();
                edge.totals().connects += 1;
                let reason = serve(&edge, tls, config, leftover).await;
                if edge.cancel.is_cancelled() {
                    edge.emit(EdgeEvent::TunnelDisconnected {
                        reason: "edge stopped".into(),
                    });
                    return;
                }
                edge.emit(EdgeEvent::TunnelDisconnected {
                    reason: reason.to_string(),
                });
            }
            Err(e @ ConnectError::Rejected(_)) => {
                *edge
                    .totals()
                    .connect_failures
                    .entry("rejected")
                    .or_default() += 1;
                edge.warn("authRejected", e.to_string());
            }
            Err(e) => {
                *edge.totals().connect_failures.entry("other").or_default() += 1;
                edge.warn("connectFailed", e.to_string());
            }
        }
        let delay = backoff.next_delay(jitter());
        tokio::select! {
            _ = edge.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

type HubStream = TlsStream<TcpStream>;

async fn connect(
    edge: &EdgeShared,
    connector: &TlsConnector,
) -> Result<(HubStream, EdgeConfig, BytesMut), ConnectError> {
    let o = &edge.options;
    let address = format!("{}:{}", o.hub_host, o.hub_port);
    let tcp = TcpStream::connect((o.hub_host.as_str(), o.hub_port))
        .await
        .map_err(|e| ConnectError::Unreachable(address, e))?;
    crate::transport::tune_tunnel_socket(&tcp)?;
    // Validated when the options were read.
    let name = server_name(&o.hub_host).map_err(|reason| {
        ConnectError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            reason,
        ))
    })?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Tls)?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(ConnectError::Alpn);
    }
    // Only now, with the hub's key checked, does the secret leave the edge.
    tls.write_all(&encode_auth_line(&o.edge_id, &o.secret)?)
        .await?;
    tls.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let line = read_line(&mut tls, &mut buf).await?;
    match parse_reply(&line)? {
        HubReply::Accepted(config) => Ok((tls, config, buf)),
        HubReply::Rejected { error } => Err(ConnectError::Rejected(error)),
    }
}

async fn read_line<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<Bytes, ConnectError> {
    loop {
        // The answer lists every assigned port, so it may be far longer than the auth line.
        if let Some(line) = take_line_limited(buf, MAX_REPLY_LINE)? {
            return Ok(line);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}

/// Serves one established tunnel until it fails or the edge stops.
async fn serve(
    edge: &Arc<EdgeShared>,
    tls: HubStream,
    config: EdgeConfig,
    leftover: BytesMut,
) -> TunnelError {
    let (frames, queues) = frame_channel();
    let (stun_interval, stun_interval_changes) = watch::channel(stun_interval(&config));
    let link = Arc::new(TunnelLink {
        frames,
        streams: StreamTable::default(),
        udp: Default::default(),
        next_stream_id: AtomicU32::new(1),
        cancel: edge.cancel.child_token(),
        stun_interval,
        assigned_ports: std::sync::Mutex::new((
            config.listen_ports.clone(),
            config.listen_ports_udp.clone(),
        )),
    });
    *edge.link() = Some(link.clone());
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
        transport: TransportKind::TcpTls,
    });

    let (read_half, write_half) = tokio::io::split(tls);

    let writer = edge.tasks.spawn(run_writer(
        write_half,
        queues,
        link.cancel.clone(),
        edge.bytes_out.clone(),
    ));
    let reader = FrameReader::new(read_half, leftover, edge.bytes_in.clone());
    // The hub pings every 15 s; silence is checked a few times per timeout period.
    let heartbeat = Heartbeat {
        interval: edge.options.heartbeat_timeout / 4,
        timeout: edge.options.heartbeat_timeout,
        ping_through: None,
    };
    let ended = run_frame_loop(reader, writer, &link.cancel, heartbeat, |frame| {
        dispatch(edge, &link, frame)
    })
    .await;

    link.cancel.cancel();
    let mut current = edge.link();
    if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)) {
        *current = None;
    }
    ended
}

fn dispatch(edge: &Arc<EdgeShared>, link: &TunnelLink, frame: Frame) -> Result<(), TunnelError> {
    let id = frame.stream_id;
    match frame.frame_type {
        FrameType::DataBack => link.streams.deliver_data(id, frame.payload)?,
        FrameType::CloseBack => link.streams.deliver_close(id, decode_close(&frame.payload)),
        FrameType::WindowUpdateBack => link
            .streams
            .grant(id, decode_window_credit(&frame.payload)?)?,
        FrameType::Config => {
            let config = parse_config(&frame.payload)
                .map_err(|e| TunnelError::Violation(format!("bad CONFIG: {e}")))?;
            apply_ports(edge, &config);
            let interval = stun_interval(&config);
            link.stun_interval.send_if_modified(|current| {
                let changed = *current != interval;
                *current = interval;
                changed
            });
            let ports = (config.listen_ports, config.listen_ports_udp);
            let mut assigned = link
                .assigned_ports
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *assigned != ports {
                *assigned = ports.clone();
                edge.emit(EdgeEvent::PortsUpdated {
                    listen_ports: ports.0,
                    listen_ports_udp: ports.1,
                });
            }
        }
        FrameType::Ping => {
            let nonce = decode_ping(&frame.payload)?;
            link.frames.control(Frame::pong(nonce));
        }
        FrameType::Pong => {
            decode_ping(&frame.payload)?;
        }
        FrameType::UdpDataBack => link.udp.reply(edge, id, &frame.payload),
        FrameType::UdpClose => link.udp.close(id),
        other @ (FrameType::Open
        | FrameType::Data
        | FrameType::Close
        | FrameType::WindowUpdate
        | FrameType::UdpOpen
        | FrameType::UdpData) => return Err(TunnelError::UnexpectedFrame(other)),
    }
    Ok(())
}

/// The hub's STUN refresh interval (validated to 1 s .. 1 week when parsed).
fn stun_interval(config: &EdgeConfig) -> Duration {
    Duration::from_secs(config.stun_interval_secs.max(MIN_STUN_INTERVAL_SECS))
}

fn apply_ports(edge: &Arc<EdgeShared>, config: &EdgeConfig) {
    edge.listeners()
        .apply(edge, &config.listen_ports, &config.listen_ports_udp);
}
