//! The hub's start options and its list of allowed edges, read from JavaScript values.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::config::{bind_address, ConfigError, Fields};
use crate::protocol::handshake::{
    validate_edge_id, validate_secret, EdgeConfig, DEFAULT_STUN_INTERVAL_SECS,
};

pub const DEFAULT_TUNNEL_PORT: u16 = 8443;
pub const DEFAULT_TARGET_HOST: &str = "127.0.0.1";
pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";
/// How often the hub pings each edge.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// An edge silent for this long is dropped (catches half-open TCP connections).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(45);
/// A UDP session with no datagram either way for this long ends.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Edges connected at once, by default.
pub const DEFAULT_MAX_EDGES: usize = 1024;
/// Tunneled TCP connections one edge may have open at once, by default; more are refused, so
/// one edge cannot exhaust the hub's sockets.
pub const DEFAULT_MAX_STREAMS_PER_EDGE: u32 = 65_536;
/// UDP sessions one edge may have open at once, by default.
pub const DEFAULT_MAX_UDP_SESSIONS_PER_EDGE: usize = crate::tunnel::MAX_UDP_SESSIONS_PER_TUNNEL;
/// TLS or QUIC handshake plus the edge's auth line must finish within this, by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections between accept and a finished login at once, by default. Past it new
/// connections are dropped, so a storm of slow or bogus handshakes cannot take the hub's
/// memory and CPU from established tunnels.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 512;
/// Of those, from one source address (IPv6: one /64), by default. A source past it, or a new
/// connection when the table is full, evicts an older one instead of being refused.
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 8;

/// Limits an operator may set (`limits` in the start options). The frame size is not among
/// them: it is part of the wire protocol.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub max_edges: usize,
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
            max_streams_per_edge: DEFAULT_MAX_STREAMS_PER_EDGE,
            max_udp_sessions_per_edge: DEFAULT_MAX_UDP_SESSIONS_PER_EDGE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_handshakes_per_source: DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE,
            tunnel_buffer_bytes: crate::mux::flow::TUNNEL_WINDOW_BUDGET,
        }
    }
}

impl HubLimits {
    fn from_json(value: Option<&Value>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let Some(value) = value else {
            return Ok(defaults);
        };
        let f = Fields::of(
            value,
            "limits",
            &[
                "maxEdges",
                "maxStreamsPerEdge",
                "maxUdpSessionsPerEdge",
                "handshakeTimeoutMs",
                "maxPendingHandshakes",
                "maxPendingHandshakesPerSource",
                "tunnelBufferBytes",
            ],
        )?;
        let count = |key: &str, max: u64, default: usize| -> Result<usize, ConfigError> {
            Ok(f.integer(key, 1, max)?
                .map_or(default, |n| usize::try_from(n).unwrap_or(default)))
        };
        Ok(Self {
            max_edges: count("maxEdges", 1_000_000, defaults.max_edges)?,
            max_streams_per_edge: f
                .integer("maxStreamsPerEdge", 1, 1 << 20)?
                .map_or(defaults.max_streams_per_edge, |n| {
                    u32::try_from(n).unwrap_or(defaults.max_streams_per_edge)
                }),
            max_udp_sessions_per_edge: count(
                "maxUdpSessionsPerEdge",
                crate::protocol::handshake::MAX_UDP_SESSIONS_LIMIT as u64,
                defaults.max_udp_sessions_per_edge,
            )?,
            handshake_timeout: f
                .millis("handshakeTimeoutMs")?
                .unwrap_or(defaults.handshake_timeout),
            max_pending_handshakes: count(
                "maxPendingHandshakes",
                1_000_000,
                defaults.max_pending_handshakes,
            )?,
            max_pending_handshakes_per_source: count(
                "maxPendingHandshakesPerSource",
                1_000_000,
                defaults.max_pending_handshakes_per_source,
            )?,
            tunnel_buffer_bytes: f
                .buffer_bytes("tunnelBufferBytes")?
                .unwrap_or(defaults.tunnel_buffer_bytes),
        })
    }
}

/// Header the hub puts in front of each TCP connection to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
    None,
}

/// Header the hub puts on UDP datagrams to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpProxyHeader {
    EveryDatagram,
    FirstDatagram,
    None,
}

#[derive(Debug, Clone)]
pub struct HubOptions {
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
}

#[derive(Clone)]
pub struct TlsPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem { .. }")
    }
}

impl HubOptions {
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let f = Fields::of(
            value,
            "",
            &[
                "tunnelPort",
                "targetHost",
                "bindAddress",
                "tls",
                "proxyProtocol",
                "udpProxyHeader",
                "heartbeatIntervalMs",
                "heartbeatTimeoutMs",
                "udpIdleTimeoutMs",
                "limits",
                "quic",
            ],
        )?;
        let tls = match f.raw("tls") {
            None => None,
            Some(tls) => {
                let t = Fields::of(tls, "tls", &["certPem", "keyPem"])?;
                Some(TlsPem {
                    cert_pem: t.required_string("certPem")?,
                    key_pem: t.required_string("keyPem")?,
                })
            }
        };
        let heartbeat_interval = f
            .millis("heartbeatIntervalMs")?
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let heartbeat_timeout = f
            .millis("heartbeatTimeoutMs")?
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT);
        if heartbeat_timeout <= heartbeat_interval {
            return Err(ConfigError::new(
                "heartbeatTimeoutMs",
                "must be longer than heartbeatIntervalMs",
            ));
        }
        Ok(Self {
            tunnel_port: f.port("tunnelPort", 0)?.unwrap_or(DEFAULT_TUNNEL_PORT),
            target_host: match f.string("targetHost")? {
                None => DEFAULT_TARGET_HOST.to_string(),
                Some(h) if h.is_empty() => {
                    return Err(ConfigError::new("targetHost", "must not be empty"))
                }
                Some(h) => h,
            },
            bind_address: bind_address(&f, "bindAddress", DEFAULT_BIND_ADDRESS)?,
            tls,
            proxy_protocol: f
                .choice(
                    "proxyProtocol",
                    &[
                        ("v1", ProxyProtocol::V1),
                        ("v2", ProxyProtocol::V2),
                        ("none", ProxyProtocol::None),
                    ],
                )?
                .unwrap_or(ProxyProtocol::V1),
            udp_proxy_header: f
                .choice(
                    "udpProxyHeader",
                    &[
                        ("everyDatagram", UdpProxyHeader::EveryDatagram),
                        ("firstDatagram", UdpProxyHeader::FirstDatagram),
                        ("none", UdpProxyHeader::None),
                    ],
                )?
                .unwrap_or(UdpProxyHeader::EveryDatagram),
            heartbeat_interval,
            heartbeat_timeout,
            udp_idle_timeout: f
                .millis("udpIdleTimeoutMs")?
                .unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT),
            limits: HubLimits::from_json(f.raw("limits"))?,
            quic: f.boolean("quic")?.unwrap_or(true),
        })
    }
}

/// One entry of `updateAllowedEdges`.
#[derive(Clone, PartialEq, Eq)]
pub struct AllowedEdge {
    pub id: String,
    pub secret: String,
    pub config: EdgeConfig,
}

impl std::fmt::Debug for AllowedEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs and error messages.
        f.debug_struct("AllowedEdge")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Reads the array `updateAllowedEdges` takes. Duplicate ids are an error.
pub fn parse_allowed_edges(value: &Value) -> Result<Vec<AllowedEdge>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(ConfigError::new("edges", "must be an array"));
    };
    let mut edges: Vec<AllowedEdge> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("edges[{i}]");
        let f = Fields::of(
            item,
            &path,
            &[
                "id",
                "secret",
                "listenPorts",
                "listenPortsUdp",
                "stunIntervalSecs",
            ],
        )?;
        let id = f.required_string("id")?;
        validate_edge_id(&id).map_err(|e| ConfigError::new(f.name("id"), e.to_string()))?;
        let secret = f.required_string("secret")?;
        validate_secret(&secret).map_err(|e| ConfigError::new(f.name("secret"), e.to_string()))?;
        if edges.iter().any(|e| e.id == id) {
            return Err(ConfigError::new(
                f.name("id"),
                format!("{id:?} appears more than once"),
            ));
        }
        let config = EdgeConfig {
            listen_ports: f.port_list("listenPorts")?,
            listen_ports_udp: f.port_list("listenPortsUdp")?,
            stun_interval_secs: f
                .integer("stunIntervalSecs", 1, 7 * 24 * 3600)?
                .unwrap_or(DEFAULT_STUN_INTERVAL_SECS),
            // The hub's limit, set when the list is applied.
            ..EdgeConfig::default()
        };
        edges.push(AllowedEdge { id, secret, config });
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
    fn allowed_edges_are_validated() {
        let edges = parse_allowed_edges(&json!([
            {"id": "a", "secret": "s", "listenPorts": [443, 80]},
            {"id": "b", "secret": "t"}
        ]))
        .unwrap();
        assert_eq!(edges[0].config.listen_ports, vec![80, 443]);
        assert_eq!(edges[1].config.stun_interval_secs, 300);
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
