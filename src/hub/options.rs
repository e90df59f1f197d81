//! The hub's start options and its list of allowed edges, read from JavaScript values.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{
    from_value, join_path, required, BindAddress, BufferBytes, ConfigError, EdgeId, Int, Millis,
    NonEmpty, PortList, Secret, Text,
};
use crate::protocol::client_policy::ClientPolicy;
use crate::protocol::handshake::{
    validate_instance_id, EdgeConfig, DEFAULT_STUN_INTERVAL_SECS, MAX_UDP_SESSIONS_LIMIT,
};

pub(crate) const DEFAULT_TUNNEL_PORT: u16 = 8443;
pub(crate) const DEFAULT_TARGET_HOST: &str = "127.0.0.1";
pub(crate) const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
/// How often the hub pings each edge.
pub(crate) const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// An edge silent for this long is dropped (catches half-open TCP connections).
pub(crate) const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(45);
/// A UDP session with no datagram either way for this long ends.
pub(crate) const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Edges connected at once, by default.
pub(crate) const DEFAULT_MAX_EDGES: usize = 1024;
/// Tunneled TCP connections one edge may have open at once, by default; more are refused, so
/// one edge cannot exhaust the hub's sockets.
pub(crate) const DEFAULT_MAX_STREAMS_PER_EDGE: u32 = 65_536;
/// UDP sessions one edge may have open at once, by default.
pub(crate) const DEFAULT_MAX_UDP_SESSIONS_PER_EDGE: usize =
    crate::tunnel::MAX_UDP_SESSIONS_PER_TUNNEL;
/// TLS or QUIC handshake plus the edge's auth line must finish within this, by default.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections between accept and a finished login at once, by default. Past it new
/// connections are dropped, so a storm of slow or bogus handshakes cannot take the hub's
/// memory and CPU from established tunnels.
pub(crate) const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 512;
/// Of those, from one source address (IPv6: one /64), by default. A source past it, or a new
/// connection when the table is full, evicts an older one instead of being refused.
pub(crate) const DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 8;

/// Limits an operator may set (`limits` in the start options). The frame size is not among
/// them: it is part of the wire protocol.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HubLimits {
    pub max_edges: usize,
    /// Tunnels one edge id may hold at once (an edge on several hubs' addresses, or replicas).
    pub max_tunnels_per_edge: usize,
    pub max_streams_per_edge: u32,
    pub max_udp_sessions_per_edge: usize,
    pub handshake_timeout: Duration,
    pub max_pending_handshakes: usize,
    pub max_pending_handshakes_per_source: usize,
    /// Bytes one edge's tunnel may buffer for its streams, per direction.
    pub tunnel_buffer_bytes: u32,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            max_edges: DEFAULT_MAX_EDGES,
            max_tunnels_per_edge: super::registry::DEFAULT_MAX_TUNNELS_PER_EDGE,
            max_streams_per_edge: DEFAULT_MAX_STREAMS_PER_EDGE,
            max_udp_sessions_per_edge: DEFAULT_MAX_UDP_SESSIONS_PER_EDGE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_handshakes_per_source: DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE,
            tunnel_buffer_bytes: crate::mux::flow::TUNNEL_WINDOW_BUDGET,
        }
    }
}

/// `limits` as JavaScript gives it (index.d.ts `HubLimits`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct LimitsConfig {
    max_edges: Option<Int<usize, 1, 1_000_000>>,
    max_tunnels_per_edge: Option<Int<usize, 1, 1024>>,
    max_streams_per_edge: Option<Int<u32, 1, { 1 << 20 }>>,
    max_udp_sessions_per_edge: Option<Int<usize, 1, { MAX_UDP_SESSIONS_LIMIT as u64 }>>,
    handshake_timeout_ms: Option<Millis>,
    max_pending_handshakes: Option<Int<usize, 1, 1_000_000>>,
    max_pending_handshakes_per_source: Option<Int<usize, 1, 1_000_000>>,
    tunnel_buffer_bytes: Option<BufferBytes>,
}

impl From<LimitsConfig> for HubLimits {
    fn from(c: LimitsConfig) -> Self {
        let d = Self::default();
        Self {
            max_edges: c.max_edges.map_or(d.max_edges, |n| n.0),
            max_tunnels_per_edge: c
                .max_tunnels_per_edge
                .map_or(d.max_tunnels_per_edge, |n| n.0),
            max_streams_per_edge: c
                .max_streams_per_edge
                .map_or(d.max_streams_per_edge, |n| n.0),
            max_udp_sessions_per_edge: c
                .max_udp_sessions_per_edge
                .map_or(d.max_udp_sessions_per_edge, |n| n.0),
            handshake_timeout: c.handshake_timeout_ms.map_or(d.handshake_timeout, |t| t.0),
            max_pending_handshakes: c
                .max_pending_handshakes
                .map_or(d.max_pending_handshakes, |n| n.0),
            max_pending_handshakes_per_source: c
                .max_pending_handshakes_per_source
                .map_or(d.max_pending_handshakes_per_source, |n| n.0),
            tunnel_buffer_bytes: c.tunnel_buffer_bytes.map_or(d.tunnel_buffer_bytes, |n| n.0),
        }
    }
}

/// Header the hub puts in front of each TCP connection to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum ProxyProtocol {
    V1,
    V2,
    None,
}

/// Header the hub puts on UDP datagrams to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum UdpProxyHeader {
    EveryDatagram,
    FirstDatagram,
    None,
}

#[derive(Debug, Clone)]
pub(crate) struct HubOptions {
    pub tunnel_port: u16,
    pub target_host: String,
    pub bind_address: IpAddr,
    pub tls: Option<TlsPem>,
    pub proxy_protocol: ProxyProtocol,
    pub udp_proxy_header: UdpProxyHeader,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub limits: HubLimits,
    /// Whether edges may connect over QUIC (UDP on the tunnel port) as well as TCP+TLS.
    pub quic: bool,
    /// Whether edges that speak the 4.13 protocol (TCP+TLS without ALPN) are served.
    pub accept_413: bool,
    /// Names this hub process to edges, so replicas behind one address can be told apart.
    pub instance_id: String,
    /// The edges allowed from the start (`allowedEdges`); `updateAllowedEdges` replaces them.
    pub allowed_edges: Vec<AllowedEdge>,
}

#[derive(Clone)]
pub(crate) struct TlsPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem { .. }")
    }
}

/// The hub's `start()` config as JavaScript gives it (index.d.ts `HubConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HubConfig {
    tunnel_port: Option<Int<u16, 0, 65535>>,
    target_host: Option<NonEmpty>,
    bind_address: Option<BindAddress>,
    tls: Option<TlsConfig>,
    proxy_protocol: Option<ProxyProtocol>,
    udp_proxy_header: Option<UdpProxyHeader>,
    heartbeat_interval_ms: Option<Millis>,
    heartbeat_timeout_ms: Option<Millis>,
    udp_idle_timeout_ms: Option<Millis>,
    limits: Option<LimitsConfig>,
    quic: Option<bool>,
    accept_413: Option<bool>,
    instance_id: Option<Text>,
    allowed_edges: Option<Value>,
}

/// `tls` as JavaScript gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TlsConfig {
    cert_pem: Option<NonEmpty>,
    key_pem: Option<NonEmpty>,
}

impl HubOptions {
    pub(crate) fn from_json(value: &Value) -> Result<Self, ConfigError> {
        Self::from_config(from_value(value, "")?)
    }

    fn from_config(c: HubConfig) -> Result<Self, ConfigError> {
        let tls = match c.tls {
            None => None,
            Some(tls) => Some(TlsPem {
                cert_pem: required(tls.cert_pem, "tls.certPem")?.0,
                key_pem: required(tls.key_pem, "tls.keyPem")?.0,
            }),
        };
        let heartbeat_interval = c
            .heartbeat_interval_ms
            .map_or(DEFAULT_HEARTBEAT_INTERVAL, |t| t.0);
        let heartbeat_timeout = c
            .heartbeat_timeout_ms
            .map_or(DEFAULT_HEARTBEAT_TIMEOUT, |t| t.0);
        if heartbeat_timeout <= heartbeat_interval {
            return Err(ConfigError::new(
                "heartbeatTimeoutMs",
                "must be longer than heartbeatIntervalMs",
            ));
        }
        let instance_id = match c.instance_id {
            Some(Text(id)) => {
                validate_instance_id(&id).map_err(|e| ConfigError::new("instanceId", e))?;
                id
            }
            None => random_instance_id(),
        };
        let allowed_edges = match &c.allowed_edges {
            Some(list) => parse_allowed_edges_at(list, "allowedEdges")?,
            None => Vec::new(),
        };
        Ok(Self {
            instance_id,
            allowed_edges,
            tunnel_port: c.tunnel_port.map_or(DEFAULT_TUNNEL_PORT, |p| p.0),
            target_host: c
                .target_host
                .map_or_else(|| DEFAULT_TARGET_HOST.to_string(), |h| h.0),
            bind_address: c.bind_address.map_or(DEFAULT_BIND_ADDRESS, |a| a.0),
            tls,
            proxy_protocol: c.proxy_protocol.unwrap_or(ProxyProtocol::V1),
            udp_proxy_header: c.udp_proxy_header.unwrap_or(UdpProxyHeader::EveryDatagram),
            heartbeat_interval,
            heartbeat_timeout,
            udp_idle_timeout: c
                .udp_idle_timeout_ms
                .map_or(DEFAULT_UDP_IDLE_TIMEOUT, |t| t.0),
            limits: c.limits.map(HubLimits::from).unwrap_or_default(),
            quic: c.quic.unwrap_or(true),
            accept_413: c.accept_413.unwrap_or(true),
        })
    }
}

/// The longest grace a graceful stop may be given: an hour.
pub(crate) const MAX_GRACE_MS: u64 = 3_600_000;

/// `stop()`'s options as JavaScript gives them (index.d.ts `HubStopOptions`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct StopConfig {
    grace_ms: Option<Int<u64, 0, MAX_GRACE_MS>>,
}

/// The grace of a graceful stop, or None for an immediate one.
pub(crate) fn parse_stop_options(value: &Value) -> Result<Option<Duration>, ConfigError> {
    let c: StopConfig = from_value(value, "")?;
    Ok(c.grace_ms.map(|ms| Duration::from_millis(ms.0)))
}

/// 16 hex digits from the system's random source: a process restarted is a new instance.
fn random_instance_id() -> String {
    let mut bytes = [0u8; 8];
    let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    if random.fill(&mut bytes).is_err() {
        // No randomness: the clock still tells processes apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes = (nanos ^ u64::from(std::process::id())).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of `updateAllowedEdges` as JavaScript gives it (index.d.ts `AllowedEdge`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AllowedEdgeConfig {
    id: Option<EdgeId>,
    secret: Option<Secret>,
    listen_ports: Option<PortList>,
    listen_ports_udp: Option<PortList>,
    stun_interval_secs: Option<Int<u64, 1, { 7 * 24 * 3600 }>>,
    clients: Option<ClientPolicy>,
    bandwidth: Option<BandwidthConfig>,
    /// Rules of single ports, by port number.
    ports: Option<BTreeMap<String, PortRulesConfig>>,
}

/// One entry of an allowed edge's `ports` (index.d.ts `PortRules`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PortRulesConfig {
    clients: Option<ClientPolicy>,
    bandwidth: Option<BandwidthConfig>,
}

/// The slowest bandwidth limit: 1 kB/s.
pub(crate) const MIN_BANDWIDTH_BYTES_PER_SECOND: u64 = 1000;
/// The fastest: 1 TB/s.
pub(crate) const MAX_BANDWIDTH_BYTES_PER_SECOND: u64 = 1_000_000_000_000;

type BytesPerSecond = Int<u64, MIN_BANDWIDTH_BYTES_PER_SECOND, MAX_BANDWIDTH_BYTES_PER_SECOND>;

/// `bandwidth` of an allowed edge or of one of its ports (index.d.ts `BandwidthLimits`):
/// inbound is what clients send towards the targets, outbound what comes back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct BandwidthConfig {
    inbound_bytes_per_second: Option<BytesPerSecond>,
    outbound_bytes_per_second: Option<BytesPerSecond>,
}

/// A rate in each direction, in bytes per second; None: unlimited.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectionRates {
    pub inbound: Option<u64>,
    pub outbound: Option<u64>,
}

impl DirectionRates {
    pub(crate) fn is_unlimited(&self) -> bool {
        self.inbound.is_none() && self.outbound.is_none()
    }
}

impl From<BandwidthConfig> for DirectionRates {
    fn from(c: BandwidthConfig) -> Self {
        Self {
            inbound: c.inbound_bytes_per_second.map(|n| n.0),
            outbound: c.outbound_bytes_per_second.map(|n| n.0),
        }
    }
}

/// The bandwidth limits the hub holds one edge to: the edge's own, and its ports'.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BandwidthRates {
    pub edge: DirectionRates,
    pub ports: BTreeMap<u16, DirectionRates>,
}

impl BandwidthRates {
    pub(crate) fn is_unlimited(&self) -> bool {
        self.edge.is_unlimited() && self.ports.is_empty()
    }
}

/// One entry of `updateAllowedEdges`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AllowedEdge {
    pub id: String,
    pub secret: String,
    pub config: EdgeConfig,
    /// Enforced by the hub; the edge is not told.
    pub bandwidth: BandwidthRates,
}

impl std::fmt::Debug for AllowedEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs and error messages.
        f.debug_struct("AllowedEdge")
            .field("id", &self.id)
            .field("config", &self.config)
            .field("bandwidth", &self.bandwidth)
            .finish_non_exhaustive()
    }
}

/// Reads the array `updateAllowedEdges` takes. Duplicate ids are an error.
pub(crate) fn parse_allowed_edges(value: &Value) -> Result<Vec<AllowedEdge>, ConfigError> {
    parse_allowed_edges_at(value, "edges")
}

/// The list at config path `at` (`edges` for `updateAllowedEdges`, `allowedEdges` in `start`).
fn parse_allowed_edges_at(value: &Value, at: &str) -> Result<Vec<AllowedEdge>, ConfigError> {
    if !value.is_array() {
        return Err(ConfigError::new(at, "must be an array"));
    }
    let entries: Vec<Option<AllowedEdgeConfig>> = from_value(value, at)?;
    let mut edges: Vec<AllowedEdge> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        // `null` reads as an empty entry, whose id is missing.
        let entry = entry.unwrap_or_default();
        let path = format!("{at}[{i}]");
        let id = required(entry.id, join_path(&path, "id"))?.0;
        let secret = required(entry.secret, join_path(&path, "secret"))?.0;
        if edges.iter().any(|e| e.id == id) {
            return Err(ConfigError::new(
                join_path(&path, "id"),
                format!("{id:?} appears more than once"),
            ));
        }
        let listen_ports = entry.listen_ports.unwrap_or_default().0;
        let listen_ports_udp = entry.listen_ports_udp.unwrap_or_default().0;
        let mut port_clients = BTreeMap::new();
        let mut bandwidth = BandwidthRates {
            edge: entry
                .bandwidth
                .map(DirectionRates::from)
                .unwrap_or_default(),
            ports: BTreeMap::new(),
        };
        for (key, rules) in entry.ports.unwrap_or_default() {
            let field = join_path(&join_path(&path, "ports"), &key);
            let port = key
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0 && key.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ConfigError::new(&field, "must be a port from 1 to 65535"))?;
            if !listen_ports.contains(&port) && !listen_ports_udp.contains(&port) {
                return Err(ConfigError::new(
                    field,
                    "is in neither listenPorts nor listenPortsUdp",
                ));
            }
            if let Some(clients) = rules.clients.filter(|c| !c.is_empty()) {
                port_clients.insert(port, clients);
            }
            let rates = rules
                .bandwidth
                .map(DirectionRates::from)
                .unwrap_or_default();
            if !rates.is_unlimited() {
                bandwidth.ports.insert(port, rates);
            }
        }
        let config = EdgeConfig {
            listen_ports,
            listen_ports_udp,
            stun_interval_secs: entry
                .stun_interval_secs
                .map_or(DEFAULT_STUN_INTERVAL_SECS, |n| n.0),
            clients: entry.clients.unwrap_or_default(),
            port_clients,
            // The hub's limit, set when the list is applied.
            ..EdgeConfig::default()
        };
        edges.push(AllowedEdge {
            id,
            secret,
            config,
            bandwidth,
        });
    }
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_apply_to_an_empty_config() {
        let o = HubOptions::from_json(&Value::Null).unwrap();
        assert_eq!(o.tunnel_port, 8443);
        assert_eq!(o.target_host, "127.0.0.1");
        assert_eq!(o.proxy_protocol, ProxyProtocol::V1);
        assert_eq!(o.udp_proxy_header, UdpProxyHeader::EveryDatagram);
        assert!(o.accept_413, "4.13 edges are served by default");
        let refusing = HubOptions::from_json(&json!({ "accept413": false })).unwrap();
        assert!(!refusing.accept_413);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (json!({"tunnelPort": -1}), "tunnelPort"),
            (json!({"tunnelPort": "80"}), "tunnelPort"),
            (json!({"targetHost": 5}), "targetHost"),
            (json!({"bindAddress": "nowhere"}), "bindAddress"),
            (json!({"proxyProtocol": "v3"}), "proxyProtocol"),
            (json!({"tls": {"certPem": "x"}}), "tls.keyPem"),
            (json!({"tunnelport": 1}), "tunnelport"),
        ];
        for (config, field) in cases {
            let err = HubOptions::from_json(&config).unwrap_err();
            assert_eq!(err.field, field, "{config}");
        }
    }

    #[test]
    fn messages_are_the_field_path_then_the_reason() {
        let cases = [
            (
                json!({"tunnelport": 1}),
                "tunnelport: is not a known option (known: tunnelPort, targetHost, bindAddress, \
                 tls, proxyProtocol, udpProxyHeader, heartbeatIntervalMs, heartbeatTimeoutMs, \
                 udpIdleTimeoutMs, limits, quic, accept413, instanceId, \
                 allowedEdges)",
            ),
            (
                json!({"tunnelPort": "80"}),
                "tunnelPort: must be an integer from 0 to 65535",
            ),
            (json!({"targetHost": 5}), "targetHost: must be a string"),
            (json!({"targetHost": ""}), "targetHost: must not be empty"),
            (
                json!({"bindAddress": "nowhere"}),
                "bindAddress: \"nowhere\" is not an IP address",
            ),
            (
                json!({"proxyProtocol": "v3"}),
                "proxyProtocol: must be one of 'v1', 'v2', 'none'",
            ),
            (json!({"quic": "no"}), "quic: must be true or false"),
            (json!({"tls": {"certPem": "x"}}), "tls.keyPem: is required"),
            (json!({"tls": 1}), "tls: must be an object"),
            (
                json!({"limits": {"maxEdges": 0}}),
                "limits.maxEdges: must be an integer from 1 to 1000000",
            ),
            (
                json!({"limits": {"tunnelBufferBytes": 65536}}),
                "limits.tunnelBufferBytes: must be an integer from 1048576 to 2147483648",
            ),
            (
                json!({"heartbeatIntervalMs": 5000, "heartbeatTimeoutMs": 5000}),
                "heartbeatTimeoutMs: must be longer than heartbeatIntervalMs",
            ),
        ];
        for (config, message) in cases {
            let err = HubOptions::from_json(&config).unwrap_err();
            assert_eq!(err.to_string(), message, "{config}");
        }
        let limits = HubOptions::from_json(&json!({"limits": {"maxEdges": 3}}))
            .unwrap()
            .limits;
        assert_eq!(limits.max_edges, 3);
        assert_eq!(limits.max_streams_per_edge, DEFAULT_MAX_STREAMS_PER_EDGE);
    }

    #[test]
    fn one_source_may_hold_a_quarter_of_the_default_stream_limit() {
        use crate::protocol::client_policy::DEFAULT_MAX_CONNECTIONS_PER_SOURCE;
        assert_eq!(
            DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            DEFAULT_MAX_STREAMS_PER_EDGE / 4
        );
    }

    #[test]
    fn allowed_edge_messages_are_the_path_then_the_reason() {
        let cases = [
            (json!({}), "edges: must be an array"),
            (json!([5]), "edges[0]: must be an object"),
            (json!([null]), "edges[0].id: is required"),
            (
                json!([{"id": "a", "secret": "s", "listenPorts": [80, 0]}]),
                "edges[0].listenPorts[1]: must be an integer port from 1 to 65535",
            ),
            (
                json!([{"id": "a", "secret": "s", "listenPortsUdp": 53}]),
                "edges[0].listenPortsUdp: must be an array of ports",
            ),
            (
                json!([{"id": "a", "secret": "s", "stunIntervalSecs": 0}]),
                "edges[0].stunIntervalSecs: must be an integer from 1 to 604800",
            ),
            (
                json!([{"id": "a", "secret": "s"}, {"id": "a", "secret": "t"}]),
                "edges[1].id: \"a\" appears more than once",
            ),
            (
                json!([{"id": "a", "secret": "s", "port": []}]),
                "edges[0].port: is not a known option (known: id, secret, listenPorts, \
                 listenPortsUdp, stunIntervalSecs, clients, bandwidth, ports)",
            ),
            (
                json!([{"id": "a", "secret": "s", "clients": {"deny": ["10.0.0.0/33"]}}]),
                "edges[0].clients.deny[0]: \"10.0.0.0/33\" is not an IPv4 or IPv6 address or \
                 CIDR block",
            ),
            (
                json!([{"id": "a", "secret": "s", "clients": {"deny": "10.0.0.0/8"}}]),
                "edges[0].clients.deny: must be an array of at most 4096 CIDR blocks",
            ),
            (
                json!([{"id": "a", "secret": "s", "clients": {"maxConnectionsPerSource": 0}}]),
                "edges[0].clients.maxConnectionsPerSource: must be an integer from 1 to 1000000",
            ),
            (
                json!([{"id": "a", "secret": "s", "clients": {"maxConnections": 5}}]),
                "edges[0].clients.maxConnections: is not a known option (known: allow, deny, \
                 maxConnectionsPerSource, connectionRatePerSource, connectionBurstPerSource, \
                 maxUdpSessionsPerSource, firstByteTimeoutMs, ipv6PrefixLength)",
            ),
            (
                json!([{"id": "a", "secret": "s", "bandwidth": {"inboundBytesPerSecond": 999}}]),
                "edges[0].bandwidth.inboundBytesPerSecond: must be an integer from 1000 to \
                 1000000000000",
            ),
            (
                json!([{"id": "a", "secret": "s", "bandwidth": {"inbound": 5000}}]),
                "edges[0].bandwidth.inbound: is not a known option (known: \
                 inboundBytesPerSecond, outboundBytesPerSecond)",
            ),
            (
                json!([{"id": "a", "secret": "s", "listenPorts": [80], "ports": {"443": {}}}]),
                "edges[0].ports.443: is in neither listenPorts nor listenPortsUdp",
            ),
            (
                json!([{"id": "a", "secret": "s", "listenPorts": [80], "ports": {"+80": {}}}]),
                "edges[0].ports.+80: must be a port from 1 to 65535",
            ),
            (
                json!([{"id": "a", "secret": "s", "listenPorts": [80],
                        "ports": {"80": {"clients": {"firstByteTimeoutMs": -1}}}}]),
                "edges[0].ports.80.clients.firstByteTimeoutMs: must be an integer from 0 to \
                 3600000",
            ),
        ];
        for (edges, message) in cases {
            let err = parse_allowed_edges(&edges).unwrap_err();
            assert_eq!(err.to_string(), message, "{edges}");
        }
    }

    #[test]
    fn allowed_edges_are_validated() {
        let edges = parse_allowed_edges(&json!([
            {"id": "a", "secret": "s", "listenPorts": [443, 80]},
            {"id": "b", "secret": "t"}
        ]))
        .unwrap();
        assert_eq!(edges[0].config.listen_ports, vec![80, 443]);
        assert_eq!(edges[1].config.stun_interval_secs, 300);
        let edges = parse_allowed_edges(&json!([{
            "id": "a", "secret": "s", "listenPorts": [80, 443], "listenPortsUdp": [53],
            "clients": {"deny": ["192.0.2.0/24"], "maxConnectionsPerSource": 100},
            "ports": {"443": {"clients": {"allow": ["10.0.0.0/8"]}}, "53": {}, "80": {"clients": {}}}
        }]))
        .unwrap();
        let config = &edges[0].config;
        assert_eq!(
            serde_json::to_value(&config.clients).unwrap(),
            json!({"deny": ["192.0.2.0/24"], "maxConnectionsPerSource": 100})
        );
        // Ports without rules are left out.
        assert_eq!(config.port_clients.keys().collect::<Vec<_>>(), [&443]);
        assert!(edges[0].bandwidth.is_unlimited());
        let edges = parse_allowed_edges(&json!([{
            "id": "a", "secret": "s", "listenPorts": [80, 443],
            "bandwidth": {"outboundBytesPerSecond": 10_000_000},
            "ports": {"443": {"bandwidth": {"inboundBytesPerSecond": 5000}}, "80": {"bandwidth": {}}}
        }]))
        .unwrap();
        let bandwidth = &edges[0].bandwidth;
        assert_eq!(
            bandwidth.edge,
            DirectionRates {
                inbound: None,
                outbound: Some(10_000_000)
            }
        );
        assert_eq!(
            bandwidth.ports,
            BTreeMap::from([(
                443,
                DirectionRates {
                    inbound: Some(5000),
                    outbound: None
                }
            )])
        );
        let err =
            parse_allowed_edges(&json!([{"id": "a", "secret": "s"}, {"id": "a", "secret": "s"}]))
                .unwrap_err();
        assert_eq!(err.field, "edges[1].id");
        let err = parse_allowed_edges(&json!([{"id": "a b", "secret": "s"}])).unwrap_err();
        assert_eq!(err.field, "edges[0].id");
        let err = parse_allowed_edges(&json!([{"id": "a", "secret": "my secret"}])).unwrap_err();
        assert_eq!(err.field, "edges[0].secret");
        assert!(!err.to_string().contains("my secret"));
        assert!(parse_allowed_edges(&json!({})).is_err());
    }
}
