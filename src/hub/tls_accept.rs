//! Edges connected over TCP+TLS: accept, the TLS handshake and the login line; the login and
//! the session are the same as over QUIC (`session.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::events::HubWarning;
use crate::protocol::dialect::Dialect;
use crate::protocol::handshake::MAX_HANDSHAKE_LINE;
use crate::transport::tls_stream;
use crate::tunnel::read_line;
use crate::tunnel::serve::LoggedIn;

use super::pending::PendingSlot;
use super::session::{log_in_and_serve, until_login_line, HandshakeFailure};
use super::throttle::Admission;
use super::HubShared;

/// A new edge connection must send its first bytes (the TLS ClientHello) within this, or it
/// is closed: an edge sends them at once, and an idle socket would hold a pending slot.
pub(super) const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn accept_loop(
    hub: Arc<HubShared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cancel: CancellationToken,
    accepting: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            // Returning drops the listener: a balancer in front sees refusals and goes elsewhere.
            _ = accepting.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    hub.warn(HubWarning::AcceptFailed, format!("accepting an edge connection failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((slot, admission)) = hub.begin_handshake(peer.ip()) else {
            continue;
        };
        let _ = crate::transport::tune_tunnel_socket(&tcp);
        hub.tasks.spawn(serve_edge_connection(
            hub.clone(),
            tcp,
            peer,
            tls.clone(),
            cancel.child_token(),
            slot,
            admission,
        ));
    }
}

async fn serve_edge_connection(
    hub: Arc<HubShared>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    cancel: CancellationToken,
    slot: PendingSlot,
    admission: Admission,
) {
    let handshake = async {
        // A peek, since tokio may report a new socket readable before any byte has arrived.
        match tokio::time::timeout(FIRST_BYTES_TIMEOUT, tcp.peek(&mut [0u8; 1])).await {
            Ok(Ok(0)) => return Err(HandshakeFailure::Closed),
            Ok(Ok(_)) => slot.mark_started(),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(HandshakeFailure::Silent),
        }
        let mut tls = tls_stream::accept(tls, tcp).await?;
        let dialect = Dialect::from_alpn(tls.alpn.as_deref()).ok_or(HandshakeFailure::Alpn)?;
        if dialect == Dialect::Upstream413 && !hub.options.accept_413 {
            return Err(HandshakeFailure::Refused413);
        }
        let mut buf = BytesMut::with_capacity(1024);
        let line = read_line(&mut tls.reader, &mut buf, MAX_HANDSHAKE_LINE).await?;
        Ok((LoggedIn::tls(tls, buf, dialect), line))
    };
    let Some((logged_in, line)) = until_login_line(&hub, peer, &cancel, &slot, handshake).await
    else {
        return;
    };
    log_in_and_serve(hub, peer, cancel, (slot, admission), logged_in, line).await;
}
