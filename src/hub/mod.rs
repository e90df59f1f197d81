//! The hub: accepts edges over TLS, authenticates them, and forwards each tunneled connection
//! to `targetHost:<edge port>` behind a PROXY header.

mod bandwidth;
pub(crate) mod options;
mod pending;
mod quic_accept;
mod registry;
mod session;
mod throttle;
mod tls_accept;

#[cfg(test)]
mod flood_tests;
#[cfg(test)]
mod quic_tests;
mod udp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::time::Instant;

use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::{EventSink, HandshakeFailureReason, HubWarning, TransportKind};
use crate::lock::{Locked, ReadWriteLocked};
use crate::protocol::dialect::Dialect;
use crate::transport::quic_endpoint::{hub_endpoint, QuicSetupError};
use crate::transport::tls::{HubIdentity, TlsSetupError};
use crate::tunnel::stream::SocketBytes;

use options::{AllowedEdge, HubOptions};
use pending::{EvictedFor, PendingHandshakes, PendingSlot};
use registry::TunnelRegistry;
use session::EdgeSession;
use throttle::Admission;

/// Everything a hub reports.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub(crate) enum HubEvent {
    EdgeConnected {
        edge_id: String,
        tunnel_id: u64,
        remote_address: String,
        transport: TransportKind,
        protocol: Dialect,
    },
    EdgeDisconnected {
        edge_id: String,
        tunnel_id: u64,
        reason: String,
    },
    StreamOpened {
        edge_id: String,
        tunnel_id: u64,
        stream_id: u32,
        client_address: String,
        client_port: u16,
        port: u16,
    },
    StreamClosed {
        edge_id: String,
        tunnel_id: u64,
        stream_id: u32,
    },
    Warning {
        code: HubWarning,
        message: String,
    },
}

impl HubEvent {
    /// One per tunneled connection: thousands a second on a busy hub.
    pub(crate) fn is_per_stream(&self) -> bool {
        matches!(
            self,
            HubEvent::StreamOpened { .. } | HubEvent::StreamClosed { .. }
        )
    }
}

#[derive(Debug, Error)]
pub(crate) enum HubStartError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("tunnelPort: cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("tunnelPort: {0}")]
    Quic(#[from] QuicSetupError),
}

/// The allowed edges by id, each with the hub's UDP session limit, which the edge applies too.
fn allowed_by_id(edges: Vec<AllowedEdge>, options: &HubOptions) -> HashMap<String, AllowedEdge> {
    let max_udp_sessions = options.limits.max_udp_sessions_per_edge;
    edges
        .into_iter()
        .map(|mut e| {
            e.config.max_udp_sessions = max_udp_sessions;
            (e.id.clone(), e)
        })
        .collect()
}

/// Tries for a free pair when the port is chosen by the system (0): TCP may get a port whose
/// UDP twin is taken.
const EPHEMERAL_PORT_ATTEMPTS: usize = 16;

/// The TLS listener and the QUIC endpoint (unless turned off), on the same port number (TCP
/// and UDP).
async fn bind_tunnel_port(
    options: &HubOptions,
    tls: Arc<rustls::ServerConfig>,
) -> Result<(TcpListener, Option<quinn::Endpoint>, u16), HubStartError> {
    let wanted = SocketAddr::new(options.bind_address, options.tunnel_port);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listener = TcpListener::bind(wanted)
            .await
            .map_err(|source| HubStartError::Listen {
                address: wanted,
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| HubStartError::Listen {
                address: wanted,
                source,
            })?;
        if !options.quic {
            return Ok((listener, None, address.port()));
        }
        match hub_endpoint(
            address,
            tls.clone(),
            options.heartbeat_timeout,
            options.heartbeat_interval,
        ) {
            Ok(endpoint) => return Ok((listener, Some(endpoint), address.port())),
            Err(QuicSetupError::Bind { .. })
                if wanted.port() == 0 && attempt < EPHEMERAL_PORT_ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HubStatus {
    pub running: bool,
    pub tunnel_port: u16,
    pub cert_fingerprint: String,
    /// This process's name in handshake answers (`instanceId`).
    pub instance_id: String,
    /// A graceful stop is under way: no new edges, tunnels draining.
    pub draining: bool,
    pub connected_edges: Vec<ConnectedEdgeStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectedEdgeStatus {
    pub edge_id: String,
    /// Which of the edge's tunnels this is (an edge id may hold several).
    pub tunnel_id: u64,
    pub remote_address: String,
    pub transport: TransportKind,
    /// The protocol the edge speaks: ours, or 4.13's.
    pub protocol: Dialect,
    pub connected_at: u64,
    pub active_streams: usize,
    pub active_udp_sessions: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams lost to congestion, a full session queue, a send error or a bandwidth limit.
    pub udp_datagrams_dropped: u64,
    /// The edge's bandwidth limits (shared by its tunnels), when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<bandwidth::BandwidthStatus>,
}

/// Counts that outlive a session, for `getMetrics`: per edge, and per port within it.
#[derive(Debug, Default)]
struct HubTotals {
    edges: BTreeMap<String, EdgeTotals>,
    /// Failed handshakes by reason.
    handshake_failures: BTreeMap<HandshakeFailureReason, u64>,
}

#[derive(Debug, Default)]
struct EdgeTotals {
    connects: u64,
    /// Tunnel bytes of sessions that have ended; live sessions add their own.
    bytes_in: u64,
    bytes_out: u64,
    udp_dropped: u64,
    streams_by_port: BTreeMap<u16, u64>,
    udp_sessions_by_port: BTreeMap<u16, u64>,
    /// TCP payload per port: read from the target (`read`) and written to it (`written`).
    bytes_by_port: BTreeMap<u16, Arc<SocketBytes>>,
}

/// State every task of one hub shares.
struct HubShared {
    options: HubOptions,
    /// Login attempts per source address.
    auth_throttle: Mutex<throttle::AuthThrottle>,
    /// Connections between accept and a decided login.
    pending: Arc<PendingHandshakes>,
    totals: Mutex<HubTotals>,
    warning_rate_limit: crate::events::WarningRateLimit<HubWarning>,
    allowed: RwLock<HashMap<String, AllowedEdge>>,
    /// The allowed edges' bandwidth limits, which their streams and sessions draw on.
    bandwidth: Mutex<bandwidth::BandwidthLimits>,
    /// The edges' tunnels now.
    sessions: Mutex<TunnelRegistry>,
    /// Numbers tunnels in status and events; never repeats within the hub's life.
    next_tunnel_id: AtomicU64,
    /// Set by a graceful stop: new edge connections are refused and tunnels drain.
    draining: AtomicBool,
    events: EventSink<HubEvent>,
    tasks: TaskTracker,
}

impl HubShared {
    fn emit(&self, event: HubEvent) {
        (self.events)(event);
    }

    fn warn(&self, code: HubWarning, message: String) {
        self.emit(HubEvent::Warning { code, message });
    }

    /// A warning for a condition that can repeat thousands of times a second.
    fn warn_throttled(&self, code: HubWarning, message: String) {
        let now = crate::events::unix_millis();
        if self.warning_rate_limit.allows(code, now) {
            self.warn(code, message);
        }
    }

    fn totals(&self) -> MutexGuard<'_, HubTotals> {
        self.totals.locked()
    }

    /// Updates one edge's totals, created at first use.
    fn update_edge_totals<R>(&self, edge_id: &str, update: impl FnOnce(&mut EdgeTotals) -> R) -> R {
        update(self.totals().edges.entry(edge_id.to_string()).or_default())
    }

    fn bandwidth(&self) -> MutexGuard<'_, bandwidth::BandwidthLimits> {
        self.bandwidth.locked()
    }

    fn auth_throttle(&self) -> MutexGuard<'_, throttle::AuthThrottle> {
        self.auth_throttle.locked()
    }

    /// A place for a new connection from `source` among the pending handshakes, and how the
    /// login throttle let it in; None when the source has used up its login attempts (and no
    /// edge logged in from it lately): refused before any TLS or QUIC work, which costs the
    /// hub nothing. When the table is full another connection is evicted for it. The slot is
    /// held until the login is decided.
    fn begin_handshake(&self, source: std::net::IpAddr) -> Option<(PendingSlot, Admission)> {
        let source = pending::source_key(source);
        let Some(admission) = self
            .auth_throttle()
            .try_begin(source, std::time::Instant::now())
        else {
            self.count_handshake_failure(HandshakeFailureReason::Throttled);
            self.warn_throttled(
                HubWarning::AuthThrottled,
                format!(
                    "{source} started {} logins within {:?} without a success; its connections are refused for now",
                    throttle::MAX_AUTH_FAILURES,
                    throttle::AUTH_FAILURE_WINDOW
                ),
            );
            return None;
        };
        let (slot, eviction) = self.pending.admit(source);
        if let Some(eviction) = eviction {
            let limits = &self.options.limits;
            let why = match eviction.reason {
                // The source crowded itself out: its attempt still counts.
                EvictedFor::SourceFull => format!(
                    "{} has {} handshakes under way",
                    eviction.source, limits.max_pending_handshakes_per_source
                ),
                // Someone else's connection took the place: not the evicted source's doing.
                EvictedFor::TableFull => {
                    self.auth_throttle().give_back(eviction.source);
                    format!("{} handshakes are under way", limits.max_pending_handshakes)
                }
            };
            self.warn_throttled(
                HubWarning::HandshakeLimit,
                format!(
                    "{why}; the oldest pending one (from {}) was closed to make room",
                    eviction.source
                ),
            );
        }
        Some((slot, admission))
    }

    /// A pending connection was evicted (see `begin_handshake`).
    fn handshake_evicted(&self) {
        self.count_handshake_failure(HandshakeFailureReason::Evicted);
    }

    fn count_handshake_failure(&self, reason: HandshakeFailureReason) {
        *self.totals().handshake_failures.entry(reason).or_default() += 1;
    }

    fn sessions(&self) -> MutexGuard<'_, TunnelRegistry> {
        self.sessions.locked()
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// A running hub. `stop()` (or dropping it) ends every task and closes every socket.
pub(crate) struct Hub {
    shared: Arc<HubShared>,
    tunnel_port: u16,
    fingerprint: String,
    cancel: CancellationToken,
    /// Cancelled when a graceful stop begins: the TCP listener closes.
    accepting: CancellationToken,
}

/// A drained tunnel (its edge answered GOAWAY) closes once it has carried nothing this long:
/// a stream the edge opened just before its answer may still be on its way (QUIC streams are
/// not ordered with the control stream).
pub(crate) const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// How often a draining hub looks for tunnels that may close.
const DRAIN_POLL: Duration = Duration::from_millis(50);

impl Hub {
    pub(crate) async fn start(
        mut options: HubOptions,
        events: EventSink<HubEvent>,
    ) -> Result<Hub, HubStartError> {
        let identity = match &options.tls {
            Some(pem) => HubIdentity::from_pem(&pem.cert_pem, &pem.key_pem)?,
            None => HubIdentity::generate()?,
        };
        let server_config = identity.server_config()?;
        let (listener, endpoint, tunnel_port) =
            bind_tunnel_port(&options, server_config.clone()).await?;
        let cancel = CancellationToken::new();
        let pending = PendingHandshakes::new(
            options.limits.max_pending_handshakes,
            options.limits.max_pending_handshakes_per_source,
        );
        // In place before the port takes logins, so no edge is refused for want of a list.
        let allowed = allowed_by_id(std::mem::take(&mut options.allowed_edges), &options);
        let mut bandwidth = bandwidth::BandwidthLimits::default();
        bandwidth.apply(&allowed.values().cloned().collect::<Vec<_>>());
        let shared = Arc::new(HubShared {
            options,
            auth_throttle: Mutex::default(),
            pending,
            warning_rate_limit: Default::default(),
            totals: Mutex::default(),
            allowed: RwLock::new(allowed),
            bandwidth: Mutex::new(bandwidth),
            sessions: Mutex::default(),
            next_tunnel_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            events,
            tasks: TaskTracker::new(),
        });
        let accepting = cancel.child_token();
        shared.tasks.spawn(tls_accept::accept_loop(
            shared.clone(),
            listener,
            server_config,
            cancel.clone(),
            accepting.clone(),
        ));
        if let Some(endpoint) = endpoint {
            shared.tasks.spawn(quic_accept::accept_loop(
                shared.clone(),
                endpoint,
                cancel.clone(),
            ));
        }
        Ok(Hub {
            shared,
            tunnel_port,
            fingerprint: identity.fingerprint,
            cancel,
            accepting,
        })
    }

    /// Replaces the allowed edges. Connected edges get their new ports at once; an edge that
    /// was removed or whose secret changed is disconnected.
    pub(crate) fn update_allowed_edges(&self, edges: Vec<AllowedEdge>) {
        self.shared.bandwidth().apply(&edges);
        let by_id = allowed_by_id(edges, &self.shared.options);
        // Held while the sessions are read: an edge being admitted right now is either checked
        // against the new list or already registered and reached below.
        let mut allowed = self.shared.allowed.write_locked();
        *allowed = by_id;
        let sessions: Vec<Arc<EdgeSession>> = self.shared.sessions().all().cloned().collect();
        for session in sessions {
            match allowed.get(&session.edge_id) {
                None => session.close("edge removed from the allowed list"),
                Some(entry) if !session.secret_matches(&entry.secret) => {
                    session.close("edge secret changed")
                }
                Some(entry) => session.apply_config(&entry.config),
            }
        }
    }

    /// Each bandwidth limit's rate, how long it held bytes back and the datagrams it dropped,
    /// labelled by edge, port (`all` for the edge's own limit) and direction.
    fn bandwidth_metrics(&self, m: &mut crate::metrics::MetricsText) {
        use crate::metrics::Kind;
        let bandwidth = self.shared.bandwidth();
        let statuses = bandwidth.statuses();
        let mut limits = Vec::new();
        for (edge, status) in &statuses {
            let edge_wide = [("all".to_string(), &status.inbound, &status.outbound)];
            let ports = status
                .ports
                .iter()
                .map(|p| (p.port.unwrap_or(0).to_string(), &p.inbound, &p.outbound));
            for (port, inbound, outbound) in edge_wide.into_iter().chain(ports) {
                for (direction, limit) in [("inbound", inbound), ("outbound", outbound)] {
                    if let Some(limit) = limit {
                        limits.push((*edge, port.clone(), direction, limit.clone()));
                    }
                }
            }
        }
        for (name, kind, help, value) in [
            (
                "remoteingress_hub_bandwidth_limit_bytes_per_second",
                Kind::Gauge,
                "A bandwidth limit's rate.",
                (|l: &bandwidth::LimitStatus| l.bytes_per_second)
                    as fn(&bandwidth::LimitStatus) -> u64,
            ),
            (
                "remoteingress_hub_bandwidth_delayed_milliseconds_total",
                Kind::Counter,
                "How long a bandwidth limit held TCP bytes back, summed over its streams.",
                |l| l.delayed_ms,
            ),
            (
                "remoteingress_hub_bandwidth_dropped_datagrams_total",
                Kind::Counter,
                "Datagrams a bandwidth limit dropped.",
                |l| l.dropped_datagrams,
            ),
        ] {
            m.family(name, kind, help);
            for (edge, port, direction, limit) in &limits {
                let labels = [
                    ("edge", *edge),
                    ("port", port.as_str()),
                    ("direction", *direction),
                ];
                m.sample(name, &labels, value(limit));
            }
        }
    }

    pub(crate) fn status(&self) -> HubStatus {
        let mut connected_edges: Vec<ConnectedEdgeStatus> =
            self.shared.sessions().all().map(|s| s.status()).collect();
        let bandwidth = self.shared.bandwidth();
        for edge in &mut connected_edges {
            edge.bandwidth = bandwidth.status(&edge.edge_id);
        }
        drop(bandwidth);
        connected_edges.sort_by(|a, b| (&a.edge_id, a.tunnel_id).cmp(&(&b.edge_id, b.tunnel_id)));
        HubStatus {
            running: !self.cancel.is_cancelled(),
            tunnel_port: self.tunnel_port,
            cert_fingerprint: self.fingerprint.clone(),
            instance_id: self.shared.options.instance_id.clone(),
            draining: self.shared.is_draining(),
            connected_edges,
        }
    }

    /// Prometheus text: connected edges, bytes, streams and UDP sessions per edge and port,
    /// drops, reconnects and failed handshakes.
    pub(crate) fn metrics(&self) -> String {
        use crate::metrics::{Kind, MetricsText};
        // Totals first: a session that ends moves its counts into the totals under this lock, so
        // the two reads below see it exactly once and counters never dip.
        let totals = self.shared.totals();
        let live: Vec<ConnectedEdgeStatus> =
            self.shared.sessions().all().map(|s| s.status()).collect();
        let mut m = MetricsText::default();
        m.family(
            "remoteingress_hub_draining",
            Kind::Gauge,
            "1 while a graceful stop drains the hub's tunnels.",
        );
        m.sample(
            "remoteingress_hub_draining",
            &[],
            u64::from(self.shared.is_draining()),
        );
        m.family(
            "remoteingress_hub_edges_connected",
            Kind::Gauge,
            "Edge ids with at least one tunnel now.",
        );
        let connected: std::collections::BTreeSet<&str> =
            live.iter().map(|s| s.edge_id.as_str()).collect();
        m.sample(
            "remoteingress_hub_edges_connected",
            &[],
            connected.len() as u64,
        );
        let per_edge =
            |m: &mut MetricsText, name: &str, kind, help, value: &dyn Fn(&str) -> u64| {
                m.family(name, kind, help);
                for edge in totals.edges.keys() {
                    m.sample(name, &[("edge", edge)], value(edge));
                }
            };
        // An edge's live figures: the sum over its tunnels.
        let live_sum = |edge: &str, value: fn(&ConnectedEdgeStatus) -> u64| -> u64 {
            live.iter().filter(|s| s.edge_id == edge).map(value).sum()
        };
        per_edge(
            &mut m,
            "remoteingress_hub_edge_connects_total",
            Kind::Counter,
            "Times the edge connected (reconnects included).",
            &|e| totals.edges[e].connects,
        );
        per_edge(
            &mut m,
            "remoteingress_hub_edge_connected",
            Kind::Gauge,
            "Whether the edge is connected now.",
            &|e| u64::from(connected.contains(e)),
        );
        m.family(
            "remoteingress_hub_edge_info",
            Kind::Gauge,
            "1 for each tunnel of a connected edge, with its transport and protocol.",
        );
        for edge in &live {
            m.sample(
                "remoteingress_hub_edge_info",
                &[
                    ("edge", &edge.edge_id),
                    ("tunnel", &edge.tunnel_id.to_string()),
                    ("transport", edge.transport.as_str()),
                    ("protocol", edge.protocol.as_str()),
                ],
                1,
            );
        }
        per_edge(
            &mut m,
            "remoteingress_hub_received_bytes_total",
            Kind::Counter,
            "Tunnel bytes received from the edge.",
            &|e| totals.edges[e].bytes_in + live_sum(e, |s| s.bytes_in),
        );
        per_edge(
            &mut m,
            "remoteingress_hub_sent_bytes_total",
            Kind::Counter,
            "Tunnel bytes sent to the edge.",
            &|e| totals.edges[e].bytes_out + live_sum(e, |s| s.bytes_out),
        );
        per_edge(
            &mut m,
            "remoteingress_hub_streams_active",
            Kind::Gauge,
            "TCP connections open now.",
            &|e| live_sum(e, |s| s.active_streams as u64),
        );
        per_edge(
            &mut m,
            "remoteingress_hub_udp_sessions_active",
            Kind::Gauge,
            "UDP sessions open now.",
            &|e| live_sum(e, |s| s.active_udp_sessions as u64),
        );
        per_edge(
            &mut m,
            "remoteingress_hub_udp_datagrams_dropped_total",
            Kind::Counter,
            "Datagrams lost to congestion, a full session queue or a failed send.",
            &|e| totals.edges[e].udp_dropped + live_sum(e, |s| s.udp_datagrams_dropped),
        );
        for (name, help, by_port) in [
            (
                "remoteingress_hub_streams_total",
                "TCP connections opened, by edge port.",
                (|t: &EdgeTotals| &t.streams_by_port) as fn(&EdgeTotals) -> &BTreeMap<u16, u64>,
            ),
            (
                "remoteingress_hub_udp_sessions_total",
                "UDP sessions opened, by edge port.",
                |t: &EdgeTotals| &t.udp_sessions_by_port,
            ),
        ] {
            m.family(name, Kind::Counter, help);
            for (edge, edge_totals) in &totals.edges {
                for (port, count) in by_port(edge_totals) {
                    m.sample(name, &[("edge", edge), ("port", &port.to_string())], *count);
                }
            }
        }
        m.family(
            "remoteingress_hub_port_bytes_total",
            Kind::Counter,
            "TCP payload bytes per edge port: to the target (from clients) and from the target.",
        );
        for (edge, edge_totals) in &totals.edges {
            for (port, bytes) in &edge_totals.bytes_by_port {
                let port = port.to_string();
                for (direction, count) in
                    [("to_target", &bytes.written), ("from_target", &bytes.read)]
                {
                    let labels = [
                        ("edge", edge.as_str()),
                        ("port", &port),
                        ("direction", direction),
                    ];
                    let value = count.load(std::sync::atomic::Ordering::Relaxed);
                    m.sample("remoteingress_hub_port_bytes_total", &labels, value);
                }
            }
        }
        self.bandwidth_metrics(&mut m);
        m.family(
            "remoteingress_hub_handshake_failures_total",
            Kind::Counter,
            "Edge connections that did not become a tunnel, by reason.",
        );
        for &reason in HandshakeFailureReason::ALL {
            let count = totals.handshake_failures.get(&reason).copied().unwrap_or(0);
            m.sample(
                "remoteingress_hub_handshake_failures_total",
                &[("reason", reason.as_str())],
                count,
            );
        }
        m.family(
            "remoteingress_hub_handshakes_pending",
            Kind::Gauge,
            "Edge connections accepted whose login is not decided yet.",
        );
        let pending = self.shared.pending.len() as u64;
        m.sample("remoteingress_hub_handshakes_pending", &[], pending);
        m.finish()
    }

    #[cfg(test)]
    pub fn tunnel_port(&self) -> u16 {
        self.tunnel_port
    }

    /// Starts a graceful stop: new edge connections are refused (the TCP listener closes, QUIC
    /// connections are refused) and every tunnel drains: GOAWAY to edges of our dialect, which
    /// open nothing more and dial another hub; a tunnel closes once its edge has answered and
    /// it has carried nothing for [`DRAIN_QUIET`]. The future ends when every tunnel is closed
    /// or `grace` has passed; `stop()` then closes what is left.
    pub(crate) fn drain(&self, grace: Duration) -> impl std::future::Future<Output = ()> + 'static {
        self.shared.draining.store(true, Ordering::Release);
        self.accepting.cancel();
        let (shared, cancel) = (self.shared.clone(), self.cancel.clone());
        async move {
            let deadline = Instant::now() + grace;
            let mut idle_since: HashMap<u64, Instant> = HashMap::new();
            loop {
                let sessions: Vec<Arc<EdgeSession>> = shared.sessions().all().cloned().collect();
                let now = Instant::now();
                if sessions.is_empty() || now >= deadline {
                    return;
                }
                for session in &sessions {
                    // Again each round: an edge that was logging in as draining began drains too.
                    session.drain();
                    if session.is_drained() {
                        let since = *idle_since.entry(session.tunnel_id).or_insert(now);
                        if now.duration_since(since) >= DRAIN_QUIET {
                            session.close("hub draining: its connections ended");
                        }
                    } else {
                        idle_since.remove(&session.tunnel_id);
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(DRAIN_POLL.min(deadline - now)) => {}
                }
            }
        }
    }

    /// Disconnects every edge, stops listening and waits until every task has ended.
    pub(crate) async fn stop(self) {
        for session in self.shared.sessions().all() {
            session.close("hub stopped");
        }
        self.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
