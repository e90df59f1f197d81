//! Edges connected over QUIC: the same login and session as over TLS, with the control stream
//! for tunnel messages, one QUIC stream per tunneled connection and datagrams for UDP.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use quinn::{Endpoint, Incoming};
use tokio_util::sync::CancellationToken;

use crate::protocol::handshake::MAX_HANDSHAKE_LINE;
use crate::transport::quic_endpoint::{negotiated_alpn, CLOSE_PROTOCOL_ERROR};
use crate::tunnel::serve::LoggedIn;
use crate::tunnel::{read_line, spawn_until};

use super::pending::PendingSlot;
use super::session::{log_in_and_serve, until_login_line, HandshakeFailure};
use super::throttle::Admission;
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
        // A draining hub takes no new edges; the endpoint stays for the tunnels it has.
        if hub.is_draining() {
            incoming.refuse();
            continue;
        }
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
        let Some((slot, admission)) = hub.begin_handshake(peer.ip()) else {
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
            admission,
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
    admission: Admission,
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
    let Some((connection, send, recv, line, leftover, dropping)) =
        until_login_line(&hub, peer, &cancel, &slot, handshake).await
    else {
        return;
    };
    // Stopped before the answer goes out, so every datagram the edge sends after reading it
    // waits in quinn's buffer for the session's reader.
    before_login.cancel();
    let _ = dropping.await;
    let logged_in = LoggedIn::Quic {
        connection,
        send,
        recv,
        leftover,
        endpoint: None,
    };
    log_in_and_serve(hub, peer, cancel, (slot, admission), logged_in, line).await;
}
