//! The edge: keeps tunnels to its hubs, listens on the ports they assign, and carries every
//! accepted connection through the live tunnel that carries the fewest.

mod backoff;
mod first_byte;
pub(crate) mod gate;
mod listeners;
pub(crate) mod options;
mod parking;
pub(crate) mod stun;
mod tunnel;
mod udp;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::counts::Counts;
use crate::events::{ConnectFailureReason, EdgeWarning, EventSink, TransportKind};
use crate::lock::Locked;
use crate::protocol::control::EdgeMessage;
use crate::protocol::dialect::Dialect;
use crate::transport::tls::TlsSetupError;
use crate::tunnel::connection::ConnectionStreams;
use crate::tunnel::stream::SocketBytes;
use crate::tunnel::Carrier;
use stun::{discover, PreferFamily};

use gate::ClientRefusal;
use listeners::ListenerSet;
use options::{EdgeOptions, HubAddress};

/// Everything an edge reports.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub(crate) enum EdgeEvent {
    TunnelConnected {
        transport: TransportKind,
        protocol: Dialect,
        /// The hub as configured (`host:port`), the address dialed, and the hub process
        /// when it says (`instanceId`).
        hub: String,
        address: String,
        instance_id: Option<String>,
    },
    TunnelDisconnected {
        reason: String,
        hub: String,
        address: String,
    },
    PublicIpDiscovered {
        ip: String,
    },
    PortsAssigned {
        listen_ports: Vec<u16>,
        listen_ports_udp: Vec<u16>,
    },
    PortsUpdated {
        listen_ports: Vec<u16>,
        listen_ports_udp: Vec<u16>,
    },
    Warning {
        code: EdgeWarning,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EdgeStatus {
    pub running: bool,
    pub connected: bool,
    pub public_ip: Option<String>,
    pub active_streams: usize,
    pub active_udp_sessions: usize,
    pub listen_ports: Vec<u16>,
    pub listen_ports_udp: Vec<u16>,
    /// The oldest live tunnel's.
    pub transport: Option<TransportKind>,
    /// The protocol the hub speaks: ours, or 4.13's (the oldest live tunnel's).
    pub protocol: Option<Dialect>,
    /// Datagrams lost: no tunnel up, tunnel congested, session limit, or a failed send.
    pub udp_datagrams_dropped: u64,
    /// Connections accepted while no tunnel is up, waiting for one now.
    pub waiting_connections: usize,
    /// Every tunnel the edge keeps, up or reconnecting.
    pub tunnels: Vec<TunnelStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TunnelStatus {
    /// The hub as configured (`host:port`).
    pub hub: String,
    /// The address this tunnel dials.
    pub address: String,
    pub connected: bool,
    /// The hub is draining this tunnel (GOAWAY): it carries only what it has, and a
    /// replacement is dialed.
    pub draining: bool,
    /// The hub process at the other end, when the hub says.
    pub instance_id: Option<String>,
    /// 0 for the tunnels every hub address gets; 1 and up for extra lanes (`lanes`).
    pub lane: usize,
    pub transport: Option<TransportKind>,
    pub protocol: Option<Dialect>,
    pub active_streams: usize,
    pub active_udp_sessions: usize,
}

/// One tunnel the edge keeps to a hub address, reconnected on its own with backoff.
struct TunnelSlot {
    hub: HubAddress,
    address: SocketAddr,
    /// Cancelled when the address no longer resolves: no more reconnects; a live tunnel runs
    /// on until it ends.
    retired: CancellationToken,
    /// 0 for the `connectionsPerHub` tunnels every address gets; 1 and up for extra lanes.
    lane: usize,
    /// Lanes kept through this address, shared by its slots: how many tunnels one hub
    /// process behind it may hold.
    lanes: Arc<AtomicUsize>,
}

/// A tunnel that is up; listeners hand accepted connections to the live one with the least
/// load.
struct TunnelLink {
    slot: Arc<TunnelSlot>,
    /// The hub process, when the hub says (`instanceId`).
    instance_id: Option<String>,
    /// The hub sent GOAWAY: nothing new goes to this tunnel; it carries what it has until the
    /// hub closes it.
    draining: AtomicBool,
    /// Cancelled at GOAWAY, so the slot dials a replacement at once.
    goaway: CancellationToken,
    carrier: Carrier<EdgeMessage>,
    /// The hub's.
    dialect: Dialect,
    /// Connections carried; their counter also numbers UDP sessions.
    streams: ConnectionStreams,
    udp: udp::UdpSessions,
    cancel: CancellationToken,
    /// How often the public IP is refreshed, from the hub (handshake answer, then CONFIG).
    stun_interval: watch::Sender<Duration>,
    /// The TCP and UDP ports the hub assigned last, so a CONFIG that changes only the STUN
    /// interval does not report a port update.
    assigned_ports: Mutex<(Vec<u16>, Vec<u16>)>,
}

/// State every task of one edge shares.
struct EdgeShared {
    options: EdgeOptions,
    events: EventSink<EdgeEvent>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// The tunnels up now, oldest first.
    links: Mutex<Vec<Arc<TunnelLink>>>,
    /// Every tunnel kept, up or not, in the order they were set up.
    slots: Mutex<Vec<Arc<TunnelSlot>>>,
    /// Tunnels holding each (address, instance) pair, so tunnels through one address reach
    /// distinct hub processes, as many lanes to each.
    instances: Mutex<Counts<(SocketAddr, String)>>,
    /// Where `pick_link` starts looking, so tunnels that carry as much take turns.
    next_pick: AtomicUsize,
    /// Connections accepted while no tunnel is up, waiting for one.
    parking: Arc<parking::ParkingLot>,
    listeners: Mutex<ListenerSet>,
    public_ip: Mutex<Option<IpAddr>>,
    udp_dropped: AtomicU64,
    /// UDP sessions ended to make room for new clients in a full table.
    udp_evicted: AtomicU64,
    /// Connections carried again because their tunnel ended before the hub acknowledged them.
    connections_carried_again: AtomicU64,
    /// TCP clients waiting for their first byte before a stream is opened for them.
    first_byte_waits: Arc<first_byte::FirstByteWaits>,
    warning_rate_limit: crate::events::WarningRateLimit<EdgeWarning>,
    /// Tunnel bytes over the edge's life, all tunnels together.
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    totals: Mutex<EdgeTotals>,
}

/// Why a client was reset because no tunnel was up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ResetBeforeTunnel {
    /// `connectWaitMs` is 0, or no place to wait was free (in total or for its source).
    NoWait,
    /// No tunnel came up within `connectWaitMs` (or the edge stopped meanwhile).
    WaitTimedOut,
}

impl ResetBeforeTunnel {
    const ALL: [ResetBeforeTunnel; 2] =
        [ResetBeforeTunnel::NoWait, ResetBeforeTunnel::WaitTimedOut];

    fn as_str(self) -> &'static str {
        match self {
            ResetBeforeTunnel::NoWait => "noWait",
            ResetBeforeTunnel::WaitTimedOut => "waitTimedOut",
        }
    }
}

/// Counts for `getMetrics` that outlive a tunnel.
#[derive(Debug, Default)]
struct EdgeTotals {
    connects: u64,
    /// Clients reset for want of a tunnel, by reason.
    resets_before_tunnel: BTreeMap<ResetBeforeTunnel, u64>,
    /// Failed connection attempts by reason.
    connect_failures: BTreeMap<ConnectFailureReason, u64>,
    streams_by_port: BTreeMap<u16, u64>,
    udp_sessions_by_port: BTreeMap<u16, u64>,
    /// TCP payload per port: read from clients (`read`) and written to them (`written`).
    bytes_by_port: BTreeMap<u16, Arc<SocketBytes>>,
    /// Clients (TCP) and datagrams (UDP) turned away by a port's rules.
    clients_refused: BTreeMap<(ClientRefusal, Protocol, u16), u64>,
}

/// The transport protocol of a listening port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl EdgeShared {
    fn emit(&self, event: EdgeEvent) {
        (self.events)(event);
    }

    fn warn(&self, code: EdgeWarning, message: String) {
        self.emit(EdgeEvent::Warning { code, message });
    }

    fn links(&self) -> MutexGuard<'_, Vec<Arc<TunnelLink>>> {
        self.links.locked()
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Arc<TunnelSlot>>> {
        self.slots.locked()
    }

    fn listeners(&self) -> MutexGuard<'_, ListenerSet> {
        self.listeners.locked()
    }

    /// The live tunnel a new connection or UDP session goes to: of those not draining, the
    /// one carrying the fewest, ties taken in turn.
    fn pick_link(&self) -> Option<Arc<TunnelLink>> {
        let mut links = self.links();
        // A tunnel that has just ended leaves at once, so that what it lost is carried
        // elsewhere and waiting connections do not see it as up.
        if links.iter().any(|link| link.is_closed()) {
            links.retain(|link| !link.is_closed());
            self.update_tunnel_up(&links);
        }
        match links.as_slice() {
            [] => None,
            [only] => (!only.is_draining()).then(|| only.clone()),
            several => {
                let start = self.next_pick.fetch_add(1, Ordering::Relaxed) % several.len();
                let (first, second) = several.split_at(start);
                second
                    .iter()
                    .chain(first)
                    .filter(|link| !link.is_draining())
                    .min_by_key(|link| link.load())
                    .cloned()
            }
        }
    }

    /// `link` is up: new connections may go to it, and connections waiting for a tunnel go on.
    fn add_link(&self, link: &Arc<TunnelLink>) {
        let mut links = self.links();
        links.push(link.clone());
        self.update_tunnel_up(&links);
    }

    /// `link` has ended; when it was the last that takes connections, there is no tunnel.
    fn remove_link(&self, link: &Arc<TunnelLink>) {
        let mut links = self.links();
        links.retain(|l| !Arc::ptr_eq(l, link));
        self.update_tunnel_up(&links);
    }

    /// `link` takes nothing new from now on (GOAWAY).
    fn drain_link(&self, link: &TunnelLink) {
        let links = self.links();
        link.draining.store(true, Ordering::Release);
        self.update_tunnel_up(&links);
    }

    /// Whether a tunnel takes new connections, for those waiting for one; under the lock.
    fn update_tunnel_up(&self, links: &[Arc<TunnelLink>]) {
        self.parking
            .set_tunnel_up(links.iter().any(|link| !link.is_draining()));
    }

    /// Holds `instance` for a tunnel through `slot`; None when that hub process already has
    /// as many tunnels through the address as it may have lanes. A hub that names no instance
    /// (4.13) is never a duplicate, and gets no extra lanes.
    fn claim_instance(
        self: &Arc<Self>,
        slot: &TunnelSlot,
        instance: Option<&str>,
    ) -> Option<InstanceClaim> {
        let Some(instance) = instance else {
            return (slot.lane == 0).then(|| InstanceClaim {
                edge: self.clone(),
                key: None,
            });
        };
        let key = (slot.address, instance.to_string());
        let mut instances = self.instances.locked();
        if instances.get(&key) >= slot.lanes.load(Ordering::Acquire) {
            return None;
        }
        instances.add(key.clone());
        Some(InstanceClaim {
            edge: self.clone(),
            key: Some(key),
        })
    }

    fn totals(&self) -> MutexGuard<'_, EdgeTotals> {
        self.totals.locked()
    }

    fn count_udp_drop(&self) {
        self.udp_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn count_connect_failure(&self, reason: ConnectFailureReason) {
        *self.totals().connect_failures.entry(reason).or_default() += 1;
    }

    fn count_reset(&self, reason: ResetBeforeTunnel) {
        *self
            .totals()
            .resets_before_tunnel
            .entry(reason)
            .or_default() += 1;
    }

    fn count_udp_eviction(&self) {
        self.udp_evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client (or datagram) from `source` that `port`'s rules turned away, and warns
    /// at most once a second.
    fn refuse_client(&self, refusal: ClientRefusal, protocol: Protocol, port: u16, source: IpAddr) {
        *self
            .totals()
            .clients_refused
            .entry((refusal, protocol, port))
            .or_default() += 1;
        let code = match refusal {
            ClientRefusal::UdpSessionLimit => EdgeWarning::UdpSessionLimit,
            _ => EdgeWarning::ClientRefused,
        };
        let protocol = match protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        self.warn_throttled(code, || {
            format!(
                "{source} turned away on {protocol} port {port}: {}",
                refusal.describe()
            )
        });
    }

    /// A warning for a condition that can repeat thousands of times a second.
    fn warn_throttled(&self, code: EdgeWarning, message: impl FnOnce() -> String) {
        // The message is made only when it goes out: a flood repeats the condition.
        let now = crate::events::unix_millis();
        if self.warning_rate_limit.allows(code, now) {
            self.warn(code, message());
        }
    }

    fn public_ip(&self) -> MutexGuard<'_, Option<IpAddr>> {
        self.public_ip.locked()
    }

    /// The address to put in a PROXY header as the one the client connected to: the public IP
    /// when STUN found one of the same family as the accepting socket's `local` address, else
    /// `local` itself.
    fn destination_ip(&self, local: IpAddr) -> IpAddr {
        let local = local.to_canonical();
        match *self.public_ip() {
            Some(public) if public.is_ipv4() == local.is_ipv4() => public,
            _ => local,
        }
    }

    /// Stores a discovered IP; `publicIpDiscovered` only when it is new or changed. The event
    /// is sent under the lock so events arrive in the order the value changed.
    fn record_public_ip(&self, ip: IpAddr) {
        let mut current = self.public_ip();
        if *current != Some(ip) {
            *current = Some(ip);
            self.emit(EdgeEvent::PublicIpDiscovered { ip: ip.to_string() });
        }
    }
}

impl TunnelSlot {
    /// The hub for messages: `host:port`, with the address dialed when the host is a name.
    fn describe(&self) -> String {
        let hub = self.hub.to_string();
        let address = self.address.to_string();
        if hub == address {
            hub
        } else {
            format!("{hub} ({address})")
        }
    }
}

/// A hub instance held by one tunnel, given back when dropped.
struct InstanceClaim {
    edge: Arc<EdgeShared>,
    key: Option<(SocketAddr, String)>,
}

impl Drop for InstanceClaim {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.edge.instances.locked().remove(key);
        }
    }
}

impl TunnelLink {
    /// What it carries now: TCP streams and UDP sessions.
    fn load(&self) -> usize {
        self.streams.len() + self.udp.len()
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The tunnel has ended, though its task may not have retired it yet.
    fn is_closed(&self) -> bool {
        self.cancel.is_cancelled() || self.carrier.is_closed()
    }

    fn status(&self) -> TunnelStatus {
        TunnelStatus {
            hub: self.slot.hub.to_string(),
            address: self.slot.address.to_string(),
            connected: true,
            draining: self.is_draining(),
            instance_id: self.instance_id.clone(),
            lane: self.slot.lane,
            transport: Some(self.carrier.transport()),
            protocol: Some(self.dialect),
            active_streams: self.streams.len(),
            active_udp_sessions: self.udp.len(),
        }
    }
}

/// Public-IP discovery for one tunnel: a round at once, then one every `interval` (measured
/// from the end of a round; a new interval from the hub re-arms the wait). Runs beside the
/// tunnel and never delays it; ends with the tunnel (`cancel`) or when the edge stops. A round
/// with no answer is a `stunFailed` warning and the last known IP stays in use.
async fn refresh_public_ip(
    edge: Arc<EdgeShared>,
    cancel: CancellationToken,
    mut interval: watch::Receiver<Duration>,
) {
    let servers = edge.options.stun_servers.clone();
    let prefer = if edge.options.bind_address.is_ipv6() {
        PreferFamily::V6
    } else {
        PreferFamily::V4
    };
    loop {
        let round = discover(&servers, prefer, edge.options.stun_timeout);
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = round => outcome,
        };
        match outcome {
            Ok(ip) => edge.record_public_ip(ip),
            Err(failed) => edge.warn(EdgeWarning::StunFailed, failed.to_string()),
        }
        let finished = Instant::now();
        loop {
            let due = finished + *interval.borrow_and_update();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => break,
                changed = interval.changed() => {
                    if changed.is_err() {
                        return; // the tunnel is gone
                    }
                }
            }
        }
    }
}

/// A running edge. `stop()` (or dropping it) ends every task and closes every socket.
pub(crate) struct Edge {
    shared: Arc<EdgeShared>,
}

impl Edge {
    /// Starts the edge. It returns once the first connection attempt is under way; tunnel
    /// state arrives as events.
    pub(crate) fn start(
        options: EdgeOptions,
        events: EventSink<EdgeEvent>,
    ) -> Result<Edge, TlsSetupError> {
        let tls = options.trust.client_config()?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(EdgeShared {
            listeners: Mutex::new(ListenerSet::new(options.bind_address)),
            options,
            events,
            tasks: TaskTracker::new(),
            cancel: cancel.clone(),
            links: Mutex::default(),
            slots: Mutex::default(),
            instances: Mutex::default(),
            next_pick: AtomicUsize::new(0),
            parking: Arc::default(),
            public_ip: Mutex::new(None),
            udp_dropped: AtomicU64::new(0),
            udp_evicted: AtomicU64::new(0),
            connections_carried_again: AtomicU64::new(0),
            first_byte_waits: Arc::default(),
            warning_rate_limit: Default::default(),
            bytes_in: Arc::default(),
            bytes_out: Arc::default(),
            totals: Mutex::default(),
        });
        tunnel::supervise(&shared, &tls);
        Ok(Edge { shared })
    }

    pub(crate) fn status(&self) -> EdgeStatus {
        let links = self.shared.links().clone();
        let mut slots = self.shared.slots().clone();
        // In the order the hubs are configured (each hub's addresses in the resolver's).
        let hubs = &self.shared.options.hubs;
        slots.sort_by_key(|slot| hubs.iter().position(|hub| *hub == slot.hub));
        let (listen_ports, listen_ports_udp) = {
            let listeners = self.shared.listeners();
            (listeners.tcp_ports(), listeners.udp_ports())
        };
        let tunnels = slots
            .iter()
            .map(|slot| {
                // A slot whose tunnel drains dials a replacement: the replacement is the one shown.
                let of_slot = || links.iter().filter(|l| Arc::ptr_eq(&l.slot, slot));
                let link = of_slot()
                    .find(|l| !l.is_draining())
                    .or_else(|| of_slot().next());
                link.map_or_else(
                    || TunnelStatus {
                        hub: slot.hub.to_string(),
                        address: slot.address.to_string(),
                        connected: false,
                        draining: false,
                        instance_id: None,
                        lane: slot.lane,
                        transport: None,
                        protocol: None,
                        active_streams: 0,
                        active_udp_sessions: 0,
                    },
                    |link| link.status(),
                )
            })
            .collect();
        let oldest = links.first();
        EdgeStatus {
            running: !self.shared.cancel.is_cancelled(),
            connected: !links.is_empty(),
            public_ip: self.shared.public_ip().map(|ip| ip.to_string()),
            active_streams: links.iter().map(|l| l.streams.len()).sum(),
            active_udp_sessions: links.iter().map(|l| l.udp.len()).sum(),
            listen_ports,
            listen_ports_udp,
            transport: oldest.map(|l| l.carrier.transport()),
            protocol: oldest.map(|l| l.dialect),
            udp_datagrams_dropped: self.shared.udp_dropped.load(Ordering::Relaxed),
            waiting_connections: self.shared.parking.len(),
            tunnels,
        }
    }

    /// Prometheus text: connection state, reconnects, bytes, streams and UDP sessions per
    /// port, listening ports and drops.
    pub(crate) fn metrics(&self) -> String {
        use crate::metrics::{Kind, MetricsText};
        let status = self.status();
        let shared = &self.shared;
        // A QUIC tunnel's bytes join the totals when it ends; until then they are its own.
        let (live_in, live_out) = shared
            .links()
            .iter()
            .filter_map(|link| link.carrier.counted_bytes())
            .fold((0, 0), |(i, o), (bi, bo)| (i + bi, o + bo));
        let totals = shared.totals();
        let mut m = MetricsText::default();
        m.family(
            "remoteingress_edge_tunnel_info",
            Kind::Gauge,
            "Tunnels up by hub, address, transport and protocol (lanes and connectionsPerHub \
             give several the same labels).",
        );
        let mut up: BTreeMap<(&str, &str, &str, &str), u64> = BTreeMap::new();
        for tunnel in &status.tunnels {
            if let (Some(transport), Some(protocol)) = (tunnel.transport, tunnel.protocol) {
                let labels = (
                    tunnel.hub.as_str(),
                    tunnel.address.as_str(),
                    transport.as_str(),
                    protocol.as_str(),
                );
                *up.entry(labels).or_default() += 1;
            }
        }
        for ((hub, address, transport, protocol), tunnels) in up {
            m.sample(
                "remoteingress_edge_tunnel_info",
                &[
                    ("hub", hub),
                    ("address", address),
                    ("transport", transport),
                    ("protocol", protocol),
                ],
                tunnels,
            );
        }
        let mut single = |name: &str, kind, help: &str, value: u64| {
            m.family(name, kind, help);
            m.sample(name, &[], value);
        };
        single(
            "remoteingress_edge_connected",
            Kind::Gauge,
            "Whether any tunnel is up.",
            u64::from(status.connected),
        );
        single(
            "remoteingress_edge_tunnels_up",
            Kind::Gauge,
            "Tunnels up now.",
            status.tunnels.iter().filter(|t| t.connected).count() as u64,
        );
        single(
            "remoteingress_edge_connects_total",
            Kind::Counter,
            "Tunnels established (reconnects included).",
            totals.connects,
        );
        single(
            "remoteingress_edge_received_bytes_total",
            Kind::Counter,
            "Tunnel bytes received from the hub.",
            shared.bytes_in.load(Ordering::Relaxed) + live_in,
        );
        single(
            "remoteingress_edge_sent_bytes_total",
            Kind::Counter,
            "Tunnel bytes sent to the hub.",
            shared.bytes_out.load(Ordering::Relaxed) + live_out,
        );
        single(
            "remoteingress_edge_streams_active",
            Kind::Gauge,
            "TCP connections open now.",
            status.active_streams as u64,
        );
        single(
            "remoteingress_edge_udp_sessions_active",
            Kind::Gauge,
            "UDP sessions open now.",
            status.active_udp_sessions as u64,
        );
        single(
            "remoteingress_edge_udp_datagrams_dropped_total",
            Kind::Counter,
            "Datagrams lost: no tunnel, congestion, session limit or a failed send.",
            status.udp_datagrams_dropped,
        );
        single(
            "remoteingress_edge_udp_sessions_evicted_total",
            Kind::Counter,
            "UDP sessions ended to make room for a new client: unanswered ones first.",
            shared.udp_evicted.load(Ordering::Relaxed),
        );
        single(
            "remoteingress_edge_connections_carried_again_total",
            Kind::Counter,
            "Connections carried again on another tunnel: theirs ended before the hub \
             acknowledged them, so no target had seen them.",
            shared.connections_carried_again.load(Ordering::Relaxed),
        );
        single(
            "remoteingress_edge_connections_waiting",
            Kind::Gauge,
            "Connections accepted while no tunnel is up, waiting for one.",
            status.waiting_connections as u64,
        );
        m.family(
            "remoteingress_edge_connections_reset_total",
            Kind::Counter,
            "Connections reset for want of a tunnel: noWait (connectWaitMs 0, or no room to \
             wait) or waitTimedOut.",
        );
        for reason in ResetBeforeTunnel::ALL {
            let count = totals
                .resets_before_tunnel
                .get(&reason)
                .copied()
                .unwrap_or(0);
            m.sample(
                "remoteingress_edge_connections_reset_total",
                &[("reason", reason.as_str())],
                count,
            );
        }
        m.family(
            "remoteingress_edge_clients_refused_total",
            Kind::Counter,
            "Clients (TCP) and datagrams (UDP) a port's rules turned away before a stream or \
             session was opened, by reason (denied, connectionLimit, rateLimit, \
             firstByteTimeout, firstByteWaitFull, udpSessionLimit), protocol and port.",
        );
        for (&(reason, protocol, port), &count) in &totals.clients_refused {
            m.sample(
                "remoteingress_edge_clients_refused_total",
                &[
                    ("reason", reason.as_str()),
                    ("protocol", protocol.as_str()),
                    ("port", &port.to_string()),
                ],
                count,
            );
        }
        m.family(
            "remoteingress_edge_connect_failures_total",
            Kind::Counter,
            "Failed attempts to reach the hub, by reason.",
        );
        for &reason in ConnectFailureReason::ALL {
            let count = totals.connect_failures.get(&reason).copied().unwrap_or(0);
            m.sample(
                "remoteingress_edge_connect_failures_total",
                &[("reason", reason.as_str())],
                count,
            );
        }
        for (name, help, by_port) in [
            (
                "remoteingress_edge_streams_total",
                "TCP connections accepted, by port.",
                &totals.streams_by_port,
            ),
            (
                "remoteingress_edge_udp_sessions_total",
                "UDP sessions opened, by port.",
                &totals.udp_sessions_by_port,
            ),
        ] {
            m.family(name, Kind::Counter, help);
            for (port, count) in by_port {
                m.sample(name, &[("port", &port.to_string())], *count);
            }
        }
        m.family(
            "remoteingress_edge_port_bytes_total",
            Kind::Counter,
            "TCP payload bytes per port: from clients and to clients.",
        );
        for (port, bytes) in &totals.bytes_by_port {
            let port = port.to_string();
            for (direction, count) in [
                ("from_clients", &bytes.read),
                ("to_clients", &bytes.written),
            ] {
                let labels = [("port", port.as_str()), ("direction", direction)];
                m.sample(
                    "remoteingress_edge_port_bytes_total",
                    &labels,
                    count.load(Ordering::Relaxed),
                );
            }
        }
        m.family(
            "remoteingress_edge_listening",
            Kind::Gauge,
            "Ports the edge listens on now.",
        );
        for (protocol, ports) in [
            ("tcp", &status.listen_ports),
            ("udp", &status.listen_ports_udp),
        ] {
            for port in ports {
                m.sample(
                    "remoteingress_edge_listening",
                    &[("protocol", protocol), ("port", &port.to_string())],
                    1,
                );
            }
        }
        m.finish()
    }

    /// Closes the tunnel and every listener and waits until every task has ended.
    pub(crate) async fn stop(self) {
        self.shared.cancel.cancel();
        self.shared.listeners().close_all();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}
