//! Edges connected over QUIC: the same login and session as over TLS, with the control stream
//! for tunnel messages, one QUIC stream per tunneled connection and datagrams for UDP.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};
use tokio_util::sync::CancellationToken;

use crate::lock::Locked;
use crate::protocol::control::{HubMessage, UdpOpen};
use crate::protocol::frame::ResetReason;
use crate::protocol::handshake::MAX_HANDSHAKE_LINE;
use crate::protocol::proxy::{parse_v1, ProxyAddresses, ProxyHeader, PROXY_V1_MAX_LEN};
use crate::protocol::quic_messages::parse_open;
use crate::transport::quic_endpoint::{
    grant_tunnel_limits, negotiated_alpn, CLOSE_PROTOCOL_ERROR, CLOSE_SESSION_ENDED,
};
use crate::tunnel::connection::IncomingStream;
use crate::tunnel::quic_link::{
    control_channel, receive_datagrams, receive_oversized, reset_code, run_control_writer,
    ControlReader, QuicLink,
};
use crate::tunnel::receive_loop::{run_tunnel_loop, Heartbeat};
use crate::tunnel::{read_line, spawn_until, Carrier, TunnelError, Violation};

use super::pending::PendingSlot;
use super::session::{run_session, until_login_line, EdgeSession, HandshakeFailure, Login};
use super::HubShared;

pub(super) async fn accept_loop(
    hub: Arc<HubShared>,
    endpoint: Endpoint,
    cancel: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        // An unvalidated source is answered with a Retry, which holds no state here: its
        // address is proven when it comes back with the token, and only then does a
        // connection (and its cost) exist. A forged source never comes back.
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        let peer = incoming.remote_address();
        let Some(slot) = hub.begin_handshake(peer.ip()) else {
            incoming.ignore();
            continue;
        };
        // A validated Initial carries the ClientHello: the handshake has started.
        slot.mark_started();
        hub.tasks.spawn(serve_edge_connection(
            hub.clone(),
            incoming,
            peer,
            cancel.child_token(),
            slot,
        ));
    }
    endpoint.close(
        crate::transport::quic_endpoint::CLOSE_STOPPED,
        b"hub stopped",
    );
    // Let the close reach the edges, so they notice at once; bounded for unreachable ones.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
}

async fn serve_edge_connection(
    hub: Arc<HubShared>,
    incoming: Incoming,
    peer: SocketAddr,
    cancel: CancellationToken,
    slot: PendingSlot,
) {
    // Until the login is decided, datagrams are read and dropped: the hub has no session for
    // them, and quinn would otherwise keep up to its whole datagram buffer per connection.
    let before_login = CancellationToken::new();
    let handshake = async {
        let connection = incoming.accept()?.await?;
        if !negotiated_alpn(&connection) {
            connection.close(CLOSE_PROTOCOL_ERROR, b"ALPN");
            return Err(HandshakeFailure::Alpn);
        }
        let dropped = connection.clone();
        let dropping = spawn_until(&hub.tasks, &before_login, async move {
            while dropped.read_datagram().await.is_ok() {}
        });
        // The edge opens the control stream by writing its auth line.
        let (send, mut recv) = connection.accept_bi().await?;
        let mut buf = BytesMut::with_capacity(1024);
        let line = read_line(&mut recv, &mut buf, MAX_HANDSHAKE_LINE).await?;
        Ok((connection, send, recv, line, buf, dropping))
    };
    let _stop_dropping = before_login.clone().drop_guard();
    let Some((connection, mut send, recv, line, leftover, dropping)) =
        until_login_line(&hub, peer, &cancel, &slot, handshake).await
    else {
        return;
    };
    let (control, queue) = control_channel();
    let link = QuicLink::new(connection.clone(), control, hub.tasks.clone());
    let login = Login {
        hub: &hub,
        peer,
        cancel: &cancel,
        slot,
    };
    // Stopped before the answer goes out, so every datagram the edge sends after reading it
    // waits in quinn's buffer for the session's reader.
    before_login.cancel();
    let _ = dropping.await;
    let Some(session) = login.finish(&line, &mut send, Carrier::Quic(link)).await else {
        let _ = send.finish();
        // Delivered before the close, as the edge reads the refusal before the close arrives.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
        connection.close(CLOSE_SESSION_ENDED, b"unauthorized");
        return;
    };
    let limits = &hub.options.limits;
    grant_tunnel_limits(
        &connection,
        limits.max_streams_per_edge,
        limits.tunnel_buffer_bytes,
    );
    run_session(&hub, session.clone(), peer, async {
        let ended = serve(&hub, &session, &connection, send, recv, leftover, queue).await;
        let code = if ended.is_protocol_error() {
            CLOSE_PROTOCOL_ERROR
        } else {
            CLOSE_SESSION_ENDED
        };
        let reason = session.close_reason().unwrap_or_else(|| ended.to_string());
        connection.close(code, reason.as_bytes());
        ended
    })
    .await;
}

/// Serves one QUIC session until it ends: the control loop here; connection streams,
/// datagrams and oversized datagrams in tasks of their own, which end with the session.
async fn serve(
    hub: &Arc<HubShared>,
    session: &Arc<EdgeSession>,
    connection: &Connection,
    send: SendStream,
    recv: RecvStream,
    leftover: BytesMut,
    queue: tokio::sync::mpsc::UnboundedReceiver<HubMessage>,
) -> TunnelError {
    let cancel = &session.cancel;
    spawn_until(
        &hub.tasks,
        cancel,
        accept_streams(hub.clone(), session.clone(), connection.clone()),
    );
    let (hub_ref, session_ref) = (hub.clone(), session.clone());
    spawn_until(
        &hub.tasks,
        cancel,
        receive_datagrams(connection.clone(), move |id, rest| {
            on_datagram(&hub_ref, &session_ref, id, rest)
        }),
    );
    let session_ref = session.clone();
    spawn_until(
        &hub.tasks,
        cancel,
        receive_oversized(connection.clone(), hub.tasks.clone(), move |id, payload| {
            session_ref.udp.forward(id, payload)
        }),
    );
    let writer = hub
        .tasks
        .spawn(run_control_writer(send, queue, cancel.clone()));
    let reader = ControlReader::new(recv, leftover);
    let ping = || {
        session.carrier.ping();
    };
    let heartbeat = Heartbeat {
        interval: hub.options.heartbeat_interval,
        timeout: hub.options.heartbeat_timeout,
        ping: Some(&ping),
    };
    run_tunnel_loop(reader, writer, cancel, heartbeat, |message| {
        session.on_control(hub, message)
    })
    .await
}

/// A datagram from the edge: data for a known session, or an open.
fn on_datagram(hub: &Arc<HubShared>, session: &Arc<EdgeSession>, id: u32, rest: Bytes) {
    // Almost every datagram belongs to a running session and needs no ledger.
    if session.udp.forward_datagram(id, rest.clone()) {
        return;
    }
    // Held from here on, so a registration on the control stream cannot come between finding
    // no session and deciding what this datagram is (that datagram would be lost). The
    // session may have started since the look above, so look again under the lock.
    let mut opens = session.opens.locked();
    if session.udp.forward_datagram(id, rest.clone()) {
        return;
    }
    let Some(addresses) = parse_open(&rest) else {
        // Data for a session that is not open (yet, or any more): lost, as UDP allows.
        session.udp.count_drop();
        return;
    };
    // A full table waits for the close of the session the edge replaced, which travels on
    // the control stream ahead of this session's registration: that registration opens it.
    if session.udp.len() >= hub.options.limits.max_udp_sessions_per_edge {
        session.udp.count_drop();
        return;
    }
    if opens.datagram_open(id) {
        let open = UdpOpen {
            session: id,
            addresses,
            header: rest.slice(1..),
        };
        session.start_udp(hub, open);
    }
}

async fn accept_streams(hub: Arc<HubShared>, session: Arc<EdgeSession>, connection: Connection) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        let (hub, session) = (hub.clone(), session.clone());
        hub.tasks
            .clone()
            .spawn(async move { serve_stream(&hub, &session, send, recv).await });
    }
}

/// Why a connection stream's PROXY line could not be read.
enum LineFailure {
    /// Not a PROXY v1 line with addresses: a protocol error.
    Bad(String),
    /// The stream was reset or the tunnel ended first.
    Gone,
}

async fn read_proxy_line(recv: &mut RecvStream) -> Result<(ProxyAddresses, Bytes), LineFailure> {
    let mut buf = BytesMut::new();
    loop {
        match parse_v1(&buf) {
            Ok(Some((ProxyHeader::Addresses(addresses), used))) => {
                return Ok((addresses, buf.split_off(used).freeze()));
            }
            Ok(Some(_)) => return Err(LineFailure::Bad("PROXY UNKNOWN".into())),
            Ok(None) => {}
            Err(e) => return Err(LineFailure::Bad(e.to_string())),
        }
        // At most one line's worth: what follows it is the relay's.
        match recv
            .read_chunk(PROXY_V1_MAX_LEN - buf.len().min(PROXY_V1_MAX_LEN - 1), true)
            .await
        {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => return Err(LineFailure::Gone),
        }
    }
}

/// One tunneled connection: its PROXY line, the port check, the target, then the relay.
async fn serve_stream(
    hub: &Arc<HubShared>,
    session: &Arc<EdgeSession>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    // Stream 0 is the control stream, so connection streams count from 1 as over TLS.
    let id = u32::try_from(send.id().index()).unwrap_or(u32::MAX);
    let open = session.streams.quic().open();

    let refuse = |send: &mut SendStream, recv: &mut RecvStream, reason| {
        let _ = send.reset(reset_code(reason));
        let _ = recv.stop(reset_code(reason));
    };
    let line = tokio::time::timeout(
        hub.options.limits.handshake_timeout,
        read_proxy_line(&mut recv),
    )
    .await;
    let (addresses, early_data) = match line {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(LineFailure::Bad(e))) => {
            let violation = Violation::BadConnectionStream {
                stream: id,
                reason: e,
            };
            session.close(&TunnelError::from(violation).to_string());
            return;
        }
        Ok(Err(LineFailure::Gone)) | Err(_) => {
            refuse(&mut send, &mut recv, ResetReason::Aborted);
            return;
        }
    };
    let port_bytes = match session.admit_stream(hub, id, &addresses) {
        Ok(port_bytes) => port_bytes,
        Err(reason) => {
            refuse(&mut send, &mut recv, reason);
            return;
        }
    };
    let stream = IncomingStream::Quic {
        send,
        recv,
        open,
        early_data,
    };
    session
        .carry_to_target(hub, id, addresses, &port_bytes, stream, || {})
        .await;
}
