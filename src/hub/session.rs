//! One connected edge, whichever the transport: its login, its session, and the streams and
//! UDP sessions it opens.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use std::future::Future;
use subtle::ConstantTimeEq;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::events::{unix_millis, HandshakeFailureReason, HubWarning};
use crate::lock::{Locked, ReadWriteLocked};
use crate::protocol::control::{EdgeMessage, HubMessage, UdpOpen};
use crate::protocol::dialect::Dialect;
use crate::protocol::frame::{EdgeFrame, ResetReason};
use crate::protocol::handshake::{encode_reply, parse_auth_line, EdgeConfig, HubReply};
use crate::protocol::proxy::{encode_v2, ProxyAddresses, ProxyTransport};
use crate::protocol::quic_messages::parse_open;
use crate::transport::quic_endpoint::CLOSE_SESSION_ENDED;
use crate::transport::tls::ALPN;
use crate::tunnel::bandwidth::Pacing;
use crate::tunnel::connection::{CarriedStream, ConnectionStreams, StreamJob};
use crate::tunnel::serve::{serve, LoggedIn, NewStream, ServeOptions, TunnelEnd};
use crate::tunnel::stream::SocketBytes;
use crate::tunnel::{Carrier, LineError, OnDrop, TunnelError, Violation};

use super::options::ProxyProtocol;
use super::pending::PendingSlot;
use super::throttle::Admission;
use super::tls_accept::FIRST_BYTES_TIMEOUT;
use super::udp::{Refusal, UdpSessions};
use super::{ConnectedEdgeStatus, HubEvent, HubShared};

/// A failed login waits this long before its answer, to slow down guessing.
pub(super) const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(300);
/// Connecting to the target must succeed within this.
pub(super) const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an edge connection did not get as far as its login line, on either transport.
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeFailure {
    #[error("TLS: {0}")]
    Tls(#[from] std::io::Error),
    #[error("QUIC: {0}")]
    Quic(#[from] quinn::ConnectionError),
    #[error("the edge did not negotiate ALPN {:?}", String::from_utf8_lossy(ALPN))]
    Alpn,
    #[error(
        "the edge speaks the 4.13 protocol (no ALPN), which this hub refuses (accept413: false)"
    )]
    Refused413,
    #[error("{0}")]
    Line(#[from] LineError),
    #[error("closed before the handshake finished")]
    Closed,
    #[error("no handshake within the handshake timeout")]
    Timeout,
    #[error("nothing sent within {FIRST_BYTES_TIMEOUT:?}")]
    Silent,
}

/// Runs an edge connection's transport handshake and reads its login line, within the
/// handshake timeout, until the hub stops or evicts the pending slot. `None` when it failed
/// (reported and counted here) or was cut short.
pub(super) async fn until_login_line<T>(
    hub: &HubShared,
    peer: SocketAddr,
    cancel: &CancellationToken,
    slot: &PendingSlot,
    handshake: impl Future<Output = Result<T, HandshakeFailure>>,
) -> Option<T> {
    let outcome = tokio::select! {
        _ = cancel.cancelled() => return None,
        _ = slot.evicted() => {
            hub.handshake_evicted();
            return None;
        }
        outcome = tokio::time::timeout(hub.options.limits.handshake_timeout, handshake) => outcome,
    };
    match outcome.unwrap_or(Err(HandshakeFailure::Timeout)) {
        Ok(parts) => Some(parts),
        Err(e) => {
            hub.count_handshake_failure(HandshakeFailureReason::Tls);
            let warning = format!("edge connection from {peer}: {e}");
            if matches!(e, HandshakeFailure::Silent) {
                // Idle sockets come by the thousand in a flood.
                hub.warn_throttled(HubWarning::HandshakeFailed, warning);
            } else {
                hub.warn(HubWarning::HandshakeFailed, warning);
            }
            None
        }
    }
}

/// An edge connection on either transport once its login line has been read: the login, the
/// answer, then the session until it ends.
pub(super) async fn log_in_and_serve(
    hub: Arc<HubShared>,
    peer: SocketAddr,
    cancel: CancellationToken,
    (slot, admission): (PendingSlot, Admission),
    logged_in: LoggedIn,
    line: Bytes,
) {
    let dialect = logged_in.dialect();
    let (carrier, mut tunnel) = logged_in.ready(&hub.tasks);
    let login = Login {
        hub: &hub,
        peer,
        cancel: &cancel,
        slot,
        admission,
        dialect,
    };
    let Some(session) = login.finish(&line, tunnel.login_writer(), carrier).await else {
        tunnel.close_refused().await;
        return;
    };
    let limits = &hub.options.limits;
    tunnel.grant_edge_limits(limits.max_streams_per_edge, limits.tunnel_buffer_bytes);
    run_session(&hub, session.clone(), peer, async {
        let end = Arc::new(SessionEnd {
            hub: hub.clone(),
            session: session.clone(),
        });
        let options = ServeOptions {
            tasks: &hub.tasks,
            cancel: &session.cancel,
            heartbeat_interval: hub.options.heartbeat_interval,
            heartbeat_timeout: hub.options.heartbeat_timeout,
            pings: true,
            announce_timeout: limits.handshake_timeout,
            bytes_in: session.bytes_in.clone(),
            bytes_out: session.bytes_out.clone(),
            quic_close_code: CLOSE_SESSION_ENDED,
        };
        serve(&end, tunnel, options, |ended| {
            session.close_reason().unwrap_or_else(|| ended.to_string())
        })
        .await
    })
    .await;
}

/// The hub's end of one edge's tunnel.
struct SessionEnd {
    hub: Arc<HubShared>,
    session: Arc<EdgeSession>,
}

impl TunnelEnd for SessionEnd {
    type Sends = HubMessage;
    type PeerFrame = EdgeFrame;

    fn carrier(&self) -> &Carrier<HubMessage> {
        &self.session.carrier
    }

    fn streams(&self) -> &ConnectionStreams {
        &self.session.streams
    }

    fn on_control(self: &Arc<Self>, message: EdgeMessage) -> Result<(), TunnelError> {
        self.session.on_control(&self.hub, message)
    }

    fn on_udp(self: &Arc<Self>, session: u32, payload: Bytes) {
        self.session.udp.forward(session, payload);
    }

    fn on_datagram(self: &Arc<Self>, session: u32, rest: Bytes) {
        self.session.on_datagram(&self.hub, session, rest);
    }

    fn on_stream(self: &Arc<Self>, stream: NewStream) -> Result<(), TunnelError> {
        self.session.on_stream(&self.hub, stream)
    }
}

/// The part of a login both transports share, once the edge's auth line has been read.
pub(super) struct Login<'a> {
    pub hub: &'a Arc<HubShared>,
    pub peer: SocketAddr,
    pub cancel: &'a CancellationToken,
    /// Held until the answer is decided, so it bounds handshakes, not failure delays.
    pub slot: PendingSlot,
    /// How the login throttle let the connection in: which edge ids may be checked.
    pub admission: Admission,
    /// The edge's: what the answers may contain.
    pub dialect: Dialect,
}

impl Login<'_> {
    /// Checks the auth line, answers on `reply_to`, and returns the registered session; a
    /// refusal is delayed and answered with an error (the attempt already counts towards the
    /// source's throttle).
    pub(super) async fn finish<W: AsyncWrite + Unpin + ?Sized>(
        self,
        line: &[u8],
        reply_to: &mut W,
        carrier: Carrier<HubMessage>,
    ) -> Option<Arc<EdgeSession>> {
        let Login {
            hub,
            peer,
            cancel,
            slot,
            admission,
            dialect,
        } = self;
        let source = super::pending::source_key(peer.ip());
        let admitted = match parse_auth_line(line) {
            Ok(auth)
                if !hub.auth_throttle().may_check(
                    source,
                    &auth.edge_id,
                    admission,
                    std::time::Instant::now(),
                ) =>
            {
                // Past its source's attempts, and not an edge that logged in from there.
                hub.count_handshake_failure(HandshakeFailureReason::Throttled);
                hub.warn_throttled(
                    HubWarning::AuthThrottled,
                    format!(
                        "{source} is past its failed logins; only edges that logged in from it are checked, not {}",
                        auth.edge_id
                    ),
                );
                drop(slot);
                refuse(reply_to, "too many failed logins", dialect).await;
                return None;
            }
            Ok(auth) => {
                let admitted = admit(
                    hub,
                    &auth.edge_id,
                    &auth.secret,
                    peer,
                    (carrier, dialect),
                    cancel.clone(),
                );
                match admitted {
                    Err(LoginRefusal::Unauthorized) => hub.warn(
                        HubWarning::AuthFailed,
                        format!("edge connection from {peer}: unknown edge id or wrong secret"),
                    ),
                    Err(LoginRefusal::EdgeLimit) => hub.warn(
                        HubWarning::EdgeLimit,
                        format!(
                            "edge {} from {peer} refused: {} edges are connected (limits.maxEdges)",
                            auth.edge_id, hub.options.limits.max_edges
                        ),
                    ),
                    Ok(_) => {}
                }
                admitted.map(|admitted| (admitted, auth.edge_id))
            }
            Err(e) => {
                hub.warn(
                    HubWarning::HandshakeFailed,
                    format!("edge connection from {peer}: {e}"),
                );
                Err(LoginRefusal::Unauthorized)
            }
        };
        if let Err(LoginRefusal::EdgeLimit) = admitted {
            // Not the edge's fault: no delay, nothing held against its address.
            hub.count_handshake_failure(HandshakeFailureReason::Limit);
            if admission == Admission::Counted {
                hub.auth_throttle().give_back(source);
            }
            drop(slot);
            refuse(reply_to, "edge limit reached", dialect).await;
            return None;
        }
        let Ok(((session, config), edge_id)) = admitted else {
            hub.count_handshake_failure(HandshakeFailureReason::Auth);
            // The slot is for handshakes in progress, not for the delay below.
            drop(slot);
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(AUTH_FAILURE_DELAY) => {}
            }
            refuse(reply_to, "unauthorized", dialect).await;
            return None;
        };
        hub.auth_throttle()
            .record_success(source, &edge_id, std::time::Instant::now());
        drop(slot);
        // Any CONFIG queued since admission goes out after this answer, once the writer starts.
        let answer = EdgeConfig {
            instance_id: Some(hub.options.instance_id.clone()),
            ..config
        };
        let reply = encode_reply(&HubReply::Accepted(dialect.config_for_peer(&answer)));
        if let Err(e) = reply_to.write_all(&reply).await.and(reply_to.flush().await) {
            session.close(&format!("handshake failed: {e}"));
        }
        Some(session)
    }
}

/// Answers a refused login with its reason, bounded in time: the edge may not be reading. A
/// 4.13 edge gets no answer (its protocol has none), only the close.
async fn refuse<W: AsyncWrite + Unpin + ?Sized>(reply_to: &mut W, error: &str, dialect: Dialect) {
    if !dialect.answers_refusals() {
        return;
    }
    let reply = encode_reply(&HubReply::Rejected {
        error: error.into(),
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        reply_to.write_all(&reply).await?;
        reply_to.flush().await
    })
    .await;
}

/// Reports the session, serves it until `serve` ends, then retires it: its counts move into
/// the totals and `edgeDisconnected` says why it ended.
pub(super) async fn run_session(
    hub: &Arc<HubShared>,
    session: Arc<EdgeSession>,
    peer: SocketAddr,
    serve: impl Future<Output = TunnelError>,
) {
    hub.emit(HubEvent::EdgeConnected {
        edge_id: session.edge_id.clone(),
        tunnel_id: session.tunnel_id,
        remote_address: peer.to_string(),
        transport: session.carrier.transport(),
        protocol: session.dialect,
    });
    let mut retirement = Retirement {
        hub,
        session,
        ended: None,
    };
    retirement.ended = Some(serve.await);
}

/// Retires a session when dropped: after `serve` ends, and also while a panic in the session's
/// task unwinds, so a bug costs one session (with a warning), never a session that stays
/// registered, nor the Node process.
struct Retirement<'a> {
    hub: &'a Arc<HubShared>,
    session: Arc<EdgeSession>,
    ended: Option<TunnelError>,
}

impl Drop for Retirement<'_> {
    fn drop(&mut self) {
        let (hub, session) = (self.hub, &self.session);
        let edge_id = session.edge_id.clone();
        session.cancel.cancel();
        {
            // Under the totals lock, so a metrics scrape sees these counts exactly once: either
            // in the live session or in the totals.
            let status = session.status();
            let mut totals = hub.totals();
            let edge = totals.edges.entry(edge_id.clone()).or_default();
            edge.bytes_in += status.bytes_in;
            edge.bytes_out += status.bytes_out;
            edge.udp_dropped += status.udp_datagrams_dropped;
            hub.sessions().remove(session);
        }
        let reason = match (session.take_close_reason(), self.ended.take()) {
            (Some(reason), _) => reason,
            (None, Some(ended)) => ended.to_string(),
            (None, None) => {
                hub.warn(
                    HubWarning::InternalError,
                    format!("edge {edge_id}: a session task panicked; the session was closed"),
                );
                "internal error".to_string()
            }
        };
        hub.emit(HubEvent::EdgeDisconnected {
            edge_id,
            tunnel_id: session.tunnel_id,
            reason,
        });
    }
}

/// Checks the credentials and registers the session under the allowed-list lock, so an
/// `updateAllowedEdges` either happens before (and is checked here) or sees this session.
/// The secret is compared in constant time; an unknown id costs the same comparison.
fn admit(
    hub: &HubShared,
    edge_id: &str,
    secret: &str,
    peer: SocketAddr,
    (carrier, dialect): (Carrier<HubMessage>, Dialect),
    cancel: CancellationToken,
) -> Result<(Arc<EdgeSession>, EdgeConfig), LoginRefusal> {
    let allowed = hub.allowed.read_locked();
    let entry = allowed.get(edge_id);
    let expected = entry.map_or("\0unknown edge\0", |e| e.secret.as_str());
    let matches: bool = secret.as_bytes().ct_eq(expected.as_bytes()).into();
    let entry = entry
        .filter(|_| matches)
        .ok_or(LoginRefusal::Unauthorized)?;
    // Under the registry's lock from the limit check to the registration, so concurrent
    // logins cannot pass the limit together. An edge id with tunnels already never counts
    // against it.
    let mut sessions = hub.sessions();
    if sessions.edges() >= hub.options.limits.max_edges && !sessions.has_edge(edge_id) {
        return Err(LoginRefusal::EdgeLimit);
    }
    let streams = ConnectionStreams::new(hub.options.limits.tunnel_buffer_bytes, dialect, &carrier);
    let session = Arc::new(EdgeSession {
        edge_id: edge_id.to_string(),
        tunnel_id: hub.next_tunnel_id.fetch_add(1, Ordering::Relaxed),
        secret: entry.secret.clone(),
        remote_address: peer,
        connected_at: unix_millis(),
        config: Mutex::new(entry.config.clone()),
        carrier,
        dialect,
        opens: Mutex::new(OpenLedger::with_capacity(
            hub.options.limits.max_udp_sessions_per_edge,
        )),
        streams,
        udp: Arc::default(),
        cancel,
        close_reason: Mutex::new(None),
        draining: AtomicBool::new(false),
        last_edge_id: AtomicU64::new(NO_LAST_ID),
        bytes_in: Arc::new(AtomicU64::new(0)),
        bytes_out: Arc::new(AtomicU64::new(0)),
    });
    let max_tunnels = hub.options.limits.max_tunnels_per_edge;
    if let Some(oldest) = sessions.add(session.clone(), max_tunnels) {
        oldest.close(&format!(
            "replaced by a newer tunnel of the same edge ({max_tunnels} at most, limits.maxTunnelsPerEdge)"
        ));
    }
    drop(sessions);
    hub.update_edge_totals(edge_id, |edge| edge.connects += 1);
    Ok((session, entry.config.clone()))
}

/// The ids an edge opened streams and UDP sessions with: they come from one growing counter,
/// so a late frame for something that ended can never be taken for something new. Over QUIC
/// a UDP open arrives twice, as a datagram (quick, may be lost) and on the control stream
/// (reliable, in order); the ledger makes each session open once.
#[derive(Debug, Default)]
pub(super) struct OpenLedger {
    /// The last id registered in order (an OPEN frame, or a UDP_OPEN message).
    highest_registered: u32,
    /// Opened by a datagram, registration not seen yet.
    opened_by_datagram: BTreeSet<u32>,
    /// How many of those are remembered: the edge's UDP session limit.
    capacity: usize,
}

impl OpenLedger {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// An OPEN frame's stream id.
    pub(super) fn register_stream(&mut self, id: u32) -> Result<(), TunnelError> {
        if id <= self.highest_registered {
            return Err(Violation::IdNotGrowing {
                id,
                last: self.highest_registered,
            }
            .into());
        }
        self.highest_registered = id;
        Ok(())
    }

    /// A UDP_OPEN message: true = open the session now, false = its datagram did already.
    pub(super) fn register_udp(&mut self, id: u32) -> Result<bool, TunnelError> {
        self.register_stream(id)?;
        Ok(!self.opened_by_datagram.remove(&id))
    }

    /// An open datagram for a session that is not open: true = open it now; false = it was
    /// open before and has ended (the datagram is late or a repeat).
    pub(super) fn datagram_open(&mut self, id: u32) -> bool {
        if id <= self.highest_registered || !self.opened_by_datagram.insert(id) {
            return false;
        }
        // Bounded against an edge that never registers: the oldest are forgotten.
        if self.opened_by_datagram.len() > self.capacity {
            self.opened_by_datagram.pop_first();
        }
        true
    }
}

/// Why a login was turned down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginRefusal {
    /// Unknown edge id or wrong secret (or a malformed auth line).
    Unauthorized,
    /// As many edges as `limits.maxEdges` are connected.
    EdgeLimit,
}

/// A connected, authenticated edge.
pub(super) struct EdgeSession {
    pub edge_id: String,
    /// Tells this tunnel from the edge id's others.
    pub tunnel_id: u64,
    secret: String,
    remote_address: SocketAddr,
    connected_at: u64,
    /// The ports this edge is assigned now; OPEN for any other port is refused.
    config: Mutex<EdgeConfig>,
    pub carrier: Carrier<HubMessage>,
    /// The protocol the edge speaks.
    pub dialect: Dialect,
    /// Stream and UDP session ids the edge opened, which must grow (in our dialect).
    pub opens: Mutex<OpenLedger>,
    pub streams: ConnectionStreams,
    pub udp: Arc<UdpSessions>,
    pub cancel: CancellationToken,
    close_reason: Mutex<Option<String>>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    /// The hub is draining this tunnel (GOAWAY sent, to an edge of our dialect).
    draining: AtomicBool,
    /// The last stream or UDP session id the edge may open, from its answer to GOAWAY;
    /// [`NO_LAST_ID`] until it answers.
    last_edge_id: AtomicU64,
}

/// `last_edge_id` before the edge has answered GOAWAY: every id is still its to open.
const NO_LAST_ID: u64 = u64::MAX;

impl EdgeSession {
    /// Ends the session; the first reason given is the one reported.
    pub(super) fn close(&self, reason: &str) {
        self.close_reason
            .locked()
            .get_or_insert_with(|| reason.to_string());
        self.cancel.cancel();
    }

    /// Tells the edge to open nothing more here (GOAWAY, in our dialect; a 4.13 edge has no
    /// such message and is closed when the hub stops).
    pub(super) fn drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) && self.dialect.drains() {
            self.carrier.send(HubMessage::GoAway);
        }
    }

    /// The edge has answered GOAWAY and nothing is carried now: the tunnel may close.
    pub(super) fn is_drained(&self) -> bool {
        self.draining.load(Ordering::Acquire)
            && self.last_edge_id.load(Ordering::Acquire) != NO_LAST_ID
            && self.streams.len() == 0
            && self.udp.len() == 0
    }

    /// Whether `id` (of the counter TCP+TLS streams and UDP sessions share) comes after the
    /// last one the edge said it would open.
    fn opened_after_goaway(&self, id: u32) -> bool {
        u64::from(id) > self.last_edge_id.load(Ordering::Acquire)
    }

    pub(super) fn close_reason(&self) -> Option<String> {
        self.close_reason.locked().clone()
    }

    fn take_close_reason(&self) -> Option<String> {
        self.close_reason.locked().take()
    }

    pub(super) fn secret_matches(&self, secret: &str) -> bool {
        self.secret.as_bytes().ct_eq(secret.as_bytes()).into()
    }

    fn config(&self) -> std::sync::MutexGuard<'_, EdgeConfig> {
        self.config.locked()
    }

    /// Pushes a changed port list to the edge.
    pub(super) fn apply_config(&self, config: &EdgeConfig) {
        let mut current = self.config();
        if *current != *config {
            *current = config.clone();
            let config = self.dialect.config_for_peer(config);
            self.carrier.send(HubMessage::Config(config));
        }
    }

    pub(super) fn status(&self) -> ConnectedEdgeStatus {
        let (bytes_in, bytes_out) = self.carrier.counted_bytes().unwrap_or_else(|| {
            (
                self.bytes_in.load(Ordering::Relaxed),
                self.bytes_out.load(Ordering::Relaxed),
            )
        });
        ConnectedEdgeStatus {
            edge_id: self.edge_id.clone(),
            tunnel_id: self.tunnel_id,
            remote_address: self.remote_address.to_string(),
            transport: self.carrier.transport(),
            protocol: self.dialect,
            connected_at: self.connected_at,
            active_streams: self.streams.len(),
            active_udp_sessions: self.udp.len(),
            bytes_in,
            bytes_out,
            udp_datagrams_dropped: self.udp.dropped(),
            bandwidth: None,
        }
    }

    /// A QUIC datagram from the edge: data for a known session, or an open.
    fn on_datagram(self: &Arc<Self>, hub: &Arc<HubShared>, id: u32, rest: Bytes) {
        // Almost every datagram belongs to a running session and needs no ledger.
        if self.udp.forward_datagram(id, rest.clone()) {
            return;
        }
        // Held from here on, so a registration on the control stream cannot come between
        // finding no session and deciding what this datagram is (that datagram would be lost).
        // The session may have started since the look above, so look again under the lock.
        let mut opens = self.opens.locked();
        if self.udp.forward_datagram(id, rest.clone()) {
            return;
        }
        let Some(addresses) = parse_open(&rest) else {
            // Data for a session that is not open (yet, or any more): lost, as UDP allows.
            self.udp.count_drop();
            return;
        };
        // A full table waits for the close of the session the edge replaced, which travels on
        // the control stream ahead of this session's registration: that registration opens it.
        if self.udp.len() >= hub.options.limits.max_udp_sessions_per_edge {
            self.udp.count_drop();
            return;
        }
        if opens.datagram_open(id) {
            let open = UdpOpen {
                session: id,
                addresses,
                header: rest.slice(1..),
            };
            self.start_udp(hub, open);
        }
    }

    /// A tunnel-wide message from the edge, over either transport.
    pub(super) fn on_control(
        self: &Arc<Self>,
        hub: &Arc<HubShared>,
        message: EdgeMessage,
    ) -> Result<(), TunnelError> {
        match message {
            EdgeMessage::Ping(nonce) => {
                self.carrier.send(HubMessage::Pong(nonce));
            }
            EdgeMessage::Pong(_) => {}
            EdgeMessage::GoAway { last_id } => {
                self.last_edge_id
                    .store(u64::from(last_id), Ordering::Release);
            }
            EdgeMessage::UdpOpen(open) if self.opened_after_goaway(open.session) => {
                self.carrier.send(HubMessage::UdpClose {
                    session: open.session,
                });
            }
            EdgeMessage::UdpOpen(open) if !self.dialect.ids_grow() => {
                // A 4.13 edge may reuse an id: a new session replaces the one it names.
                self.udp.close(open.session);
                self.start_udp(hub, open);
            }
            EdgeMessage::UdpOpen(open) => {
                // Held until the session exists: a QUIC datagram that finds it registered must
                // also find it open, or that datagram is lost.
                let mut opens = self.opens.locked();
                if opens.register_udp(open.session)? {
                    self.start_udp(hub, open);
                }
            }
            EdgeMessage::UdpClose { session } => self.udp.close(session),
            EdgeMessage::WindowUpdate { stream, credit } => {
                self.streams.quic().grant(stream, credit)?;
            }
        }
        Ok(())
    }

    /// Starts UDP session `id` if its port is assigned and the session limit allows, else
    /// closes it at once. `open` is the session's PROXY header over QUIC, where the open also
    /// travels as a datagram, so that datagram is recognised as a repeat.
    pub(super) fn start_udp(self: &Arc<Self>, hub: &Arc<HubShared>, open: UdpOpen) {
        let UdpOpen {
            session: id,
            addresses,
            header,
        } = open;
        let port = addresses.destination.port();
        let refuse = |code: HubWarning, message: String| {
            self.carrier.send(HubMessage::UdpClose { session: id });
            hub.warn(code, message);
        };
        if !self.config().listen_ports_udp.contains(&port) {
            refuse(
                HubWarning::PortNotAssigned,
                format!(
                    "edge {} opened a UDP session to port {port}, which it is not assigned",
                    self.edge_id
                ),
            );
            return;
        }
        let paces = hub.bandwidth().session_paces(&self.edge_id, port);
        let opened = self.udp.open(
            hub,
            &self.carrier,
            (id, addresses, paces),
            Some(header),
            self.cancel.child_token(),
        );
        match opened {
            Ok(()) => hub.update_edge_totals(&self.edge_id, |edge| {
                *edge.udp_sessions_by_port.entry(port).or_default() += 1;
            }),
            Err(Refusal::SessionLimit) => {
                self.carrier.send(HubMessage::UdpClose { session: id });
                hub.warn_throttled(
                    HubWarning::UdpSessionLimit,
                    format!(
                        "edge {} reached {} UDP sessions; refusing more",
                        self.edge_id, hub.options.limits.max_udp_sessions_per_edge
                    ),
                );
            }
        }
    }

    /// Checks a new connection's port and counts it; `Err` is the reason to reset it with.
    /// On `Ok` the caller reports its end with [`EdgeSession::stream_closed`].
    pub(super) fn admit_stream(
        &self,
        hub: &HubShared,
        id: u32,
        addresses: &ProxyAddresses,
    ) -> Result<Arc<SocketBytes>, ResetReason> {
        let port = addresses.destination.port();
        if !self.config().listen_ports.contains(&port) {
            hub.warn(
                HubWarning::PortNotAssigned,
                format!(
                    "edge {} opened a connection to port {port}, which it is not assigned",
                    self.edge_id
                ),
            );
            return Err(ResetReason::Refused);
        }
        let port_bytes = hub.update_edge_totals(&self.edge_id, |edge| {
            *edge.streams_by_port.entry(port).or_default() += 1;
            edge.bytes_by_port.entry(port).or_default().clone()
        });
        hub.emit(HubEvent::StreamOpened {
            edge_id: self.edge_id.clone(),
            tunnel_id: self.tunnel_id,
            stream_id: id,
            client_address: addresses.source.ip().to_string(),
            client_port: addresses.source.port(),
            port,
        });
        Ok(port_bytes)
    }

    pub(super) fn stream_closed(&self, hub: &HubShared, id: u32) {
        hub.emit(HubEvent::StreamClosed {
            edge_id: self.edge_id.clone(),
            tunnel_id: self.tunnel_id,
            stream_id: id,
        });
    }

    /// A connection stream the edge opened, over either transport.
    fn on_stream(
        self: &Arc<Self>,
        hub: &Arc<HubShared>,
        stream: NewStream,
    ) -> Result<(), TunnelError> {
        if let Some(id) = stream.shared_counter_id() {
            if self.opened_after_goaway(id) {
                stream.refuse(ResetReason::Refused);
                return Ok(());
            }
            if self.dialect.ids_grow() {
                self.opens.locked().register_stream(id)?;
            }
        }
        let max_streams = hub.options.limits.max_streams_per_edge as usize;
        if stream.over_limit(max_streams) {
            stream.refuse(ResetReason::Limit);
            hub.warn(
                HubWarning::StreamLimit,
                format!(
                    "edge {} reached {max_streams} open connections; refusing more",
                    self.edge_id
                ),
            );
            return Ok(());
        }
        let (id, addresses) = (stream.id, stream.addresses);
        let port_bytes = match self.admit_stream(hub, id, &addresses) {
            Ok(port_bytes) => port_bytes,
            Err(reason) => {
                stream.refuse(reason);
                return Ok(());
            }
        };
        let pacing = hub
            .bandwidth()
            .stream_pacing(&self.edge_id, addresses.destination.port());
        let job = ToTarget {
            session: self.clone(),
            hub: hub.clone(),
            id,
            addresses,
            pacing,
        };
        let stream = stream.admit(port_bytes)?;
        if self.dialect.acknowledges_opens() {
            // Before the target sees a byte: until this arrives, the edge may carry the
            // connection again elsewhere should the tunnel end.
            self.carrier.send(HubMessage::OpenAck { stream: id });
        }
        stream.spawn(&hub.tasks, job);
        Ok(())
    }
}

/// Connects an admitted stream to the target and carries it.
struct ToTarget {
    session: Arc<EdgeSession>,
    hub: Arc<HubShared>,
    id: u32,
    addresses: ProxyAddresses,
    /// The edge's and the port's bandwidth limits.
    pacing: Pacing,
}

impl StreamJob for ToTarget {
    async fn run<S: CarriedStream>(self, mut stream: S) {
        let ToTarget {
            session,
            hub,
            id,
            addresses,
            pacing,
        } = self;
        // Also on a panic: its end is reported.
        let _closed = OnDrop::new(|| session.stream_closed(&hub, id));
        let port = addresses.destination.port();
        let connect = async {
            tokio::select! {
                _ = session.cancel.cancelled() => None,
                connected = connect_target(&hub, &addresses, port) => Some(connected),
            }
        };
        match stream.while_connecting(connect).await {
            // The tunnel ended first.
            None => stream.refuse(ResetReason::Aborted),
            Some(Ok(target)) => stream.carry(target, pacing, &session.cancel).await,
            Some(Err(e)) => {
                stream.refuse(ResetReason::Unreachable);
                hub.warn(
                    HubWarning::TargetUnreachable,
                    format!("{}:{port}: {e}", hub.options.target_host),
                );
            }
        }
    }
}

/// Connects to the target and writes the PROXY header the hub is configured for.
pub(super) async fn connect_target(
    hub: &HubShared,
    addresses: &ProxyAddresses,
    port: u16,
) -> std::io::Result<TcpStream> {
    let host = hub.options.target_host.as_str();
    let mut target = tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    target.set_nodelay(true)?;
    let header = match hub.options.proxy_protocol {
        ProxyProtocol::V1 => crate::protocol::proxy::encode_v1(addresses),
        ProxyProtocol::V2 => encode_v2(ProxyTransport::Stream, addresses),
        ProxyProtocol::None => Vec::new(),
    };
    if !header.is_empty() {
        target.write_all(&header).await?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::options::{parse_allowed_edges, HubOptions};
    use crate::hub::Hub;
    use serde_json::json;

    /// A panic in a session's task closes that session with a warning: it does not stay
    /// registered, the edge is reported disconnected, and the hub carries on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_session_is_retired_with_a_warning() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let options =
            HubOptions::from_json(&json!({ "tunnelPort": 0, "bindAddress": "127.0.0.1" })).unwrap();
        let hub = Hub::start(options, Arc::new(move |e| sink.lock().unwrap().push(e)))
            .await
            .unwrap();
        hub.update_allowed_edges(
            parse_allowed_edges(&json!([{ "id": "e", "secret": "s3cret-s3cret" }])).unwrap(),
        );
        let shared = hub.shared.clone();
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let (frames, _queues) = crate::tunnel::writer::frame_channel();
        let (session, _) = admit(
            &shared,
            "e",
            "s3cret-s3cret",
            peer,
            (Carrier::Frames(frames), Dialect::RemoteIngress1),
            CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(hub.status().connected_edges.len(), 1);

        let task = tokio::spawn(async move {
            run_session(&shared, session, peer, async { panic!("injected") }).await;
        });
        assert!(task.await.unwrap_err().is_panic());

        assert!(
            hub.status().connected_edges.is_empty(),
            "the session is gone"
        );
        let events = events.lock().unwrap().clone();
        assert!(events.iter().any(|e| matches!(
            e,
            HubEvent::Warning { code: HubWarning::InternalError, message } if message.contains("edge e")
        )));
        assert!(events.iter().any(|e| matches!(
            e,
            HubEvent::EdgeDisconnected { edge_id, reason, .. } if edge_id == "e" && reason == "internal error"
        )));
        hub.stop().await;
    }

    /// An edge id holds up to `maxTunnelsPerEdge` tunnels; one more closes the oldest, and
    /// other ids are not touched. The limit of edges counts ids, not tunnels.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edge_id_holds_up_to_its_tunnel_limit_and_the_oldest_makes_room() {
        let options = HubOptions::from_json(&json!({
            "tunnelPort": 0, "bindAddress": "127.0.0.1",
            "limits": { "maxTunnelsPerEdge": 2, "maxEdges": 2 }
        }))
        .unwrap();
        let hub = Hub::start(options, Arc::new(|_| {})).await.unwrap();
        hub.update_allowed_edges(
            parse_allowed_edges(&json!([
                { "id": "a", "secret": "secret-a" },
                { "id": "b", "secret": "secret-b" },
                { "id": "c", "secret": "secret-c" },
            ]))
            .unwrap(),
        );
        let shared = hub.shared.clone();
        // Each tunnel's queue, held so its carrier stays open for the test.
        let queues = std::cell::RefCell::new(Vec::new());
        let log_in = |id: &str, secret: &str| {
            let (frames, queue) = crate::tunnel::writer::frame_channel();
            queues.borrow_mut().push(queue);
            admit(
                &shared,
                id,
                secret,
                ([127, 0, 0, 1], 40000).into(),
                (Carrier::Frames(frames), Dialect::RemoteIngress1),
                CancellationToken::new(),
            )
            .map(|(session, _)| session)
        };
        let a1 = log_in("a", "secret-a").unwrap();
        let a2 = log_in("a", "secret-a").unwrap();
        let b1 = log_in("b", "secret-b").unwrap();
        assert!(a1.close_reason().is_none() && a2.close_reason().is_none());
        assert_ne!(a1.tunnel_id, a2.tunnel_id);
        // A third tunnel for "a": the oldest goes.
        let a3 = log_in("a", "secret-a").unwrap();
        assert_eq!(
            a1.close_reason().as_deref(),
            Some(
                "replaced by a newer tunnel of the same edge (2 at most, limits.maxTunnelsPerEdge)"
            )
        );
        let ids = |edge: &str| -> Vec<u64> {
            shared
                .sessions()
                .of(edge)
                .iter()
                .map(|s| s.tunnel_id)
                .collect()
        };
        assert_eq!(ids("a"), [a2.tunnel_id, a3.tunnel_id]);
        assert_eq!(ids("b"), [b1.tunnel_id]);
        // Two ids connected: a third id is past maxEdges, another tunnel of a known id is not.
        assert_eq!(log_in("c", "secret-c").err(), Some(LoginRefusal::EdgeLimit));
        assert!(log_in("b", "secret-b").is_ok());
        // A retired tunnel leaves its id's others in place.
        assert!(shared.sessions().remove(&a2));
        assert!(!shared.sessions().remove(&a2), "removed once");
        assert_eq!(ids("a"), [a3.tunnel_id]);
        hub.stop().await;
    }
}
