//! The edge's start options: a connection token or explicit hub, id and secret, plus extras.

use std::net::IpAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{
    from_value, required, BindAddress, BufferBytes, ConfigError, EdgeId, HostName, Int, Millis,
    Port, Secret, StunServers, Text,
};
use crate::protocol::stun::StunServer;
use crate::protocol::token::{decode_token, MAX_HUBS};

use super::stun::DEFAULT_SERVER_TIMEOUT;
use crate::transport::tls::{validate_fingerprint, HubTrust};

pub(crate) const DEFAULT_HUB_PORT: u16 = 8443;
pub(crate) const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
pub(crate) const DEFAULT_STUN_SERVER: &str = "stun.cloudflare.com:3478";
/// A minute per STUN server is already far more than any answer takes.
pub(crate) const MAX_STUN_TIMEOUT_MS: u64 = 60_000;
/// With no frame from the hub for this long (it pings every 15 s), the edge reconnects.
pub(crate) const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(45);
pub(crate) const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A UDP session with no datagram either way for this long ends.
pub(crate) const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP connect, TLS handshake and the hub's answer must fit in this.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client accepted while no tunnel is up waits this long for one, by default.
pub(crate) const DEFAULT_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// The longest `connectWaitMs`: an hour.
pub(crate) const MAX_CONNECT_WAIT_MS: u64 = 3_600_000;
/// The most tunnels one edge keeps through one hub address (`connectionsPerHub`).
pub(crate) const MAX_CONNECTIONS_PER_HUB: u64 = 8;
/// The most tunnels the edge keeps to one hub process (`lanes`), and what `auto` opens once
/// the path is long: as many loss-limited TCP flows as rathole runs for eight connections.
pub(crate) const MAX_LANES: usize = 8;
/// A TCP+TLS tunnel whose round trip is at least this gets more lanes under `auto`: below
/// it, one TCP connection recovers from a loss within a few milliseconds.
pub(crate) const LONG_PATH_ROUND_TRIP: Duration = Duration::from_millis(20);

/// How many tunnels the edge keeps to each hub process (`lanes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lanes {
    /// One, and [`MAX_LANES`] once a TCP+TLS tunnel through the address measures a round
    /// trip of at least [`LONG_PATH_ROUND_TRIP`].
    Auto,
    Fixed(usize),
}

impl Lanes {
    /// The lanes to keep now, given a new TCP+TLS tunnel's round trip (None: not measured, or
    /// not TCP+TLS).
    pub(crate) fn wanted(self, round_trip: Option<Duration>) -> usize {
        match self {
            Lanes::Fixed(lanes) => lanes,
            Lanes::Auto if round_trip.is_some_and(|rtt| rtt >= LONG_PATH_ROUND_TRIP) => MAX_LANES,
            Lanes::Auto => 1,
        }
    }
}

impl<'de> Deserialize<'de> for Lanes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected, Visitor};
        struct LanesVisitor;

        impl Visitor<'_> for LanesVisitor {
            type Value = Lanes;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "must be 'auto' or an integer from 1 to {MAX_LANES}")
            }

            fn visit_u64<E: Error>(self, n: u64) -> Result<Lanes, E> {
                match usize::try_from(n) {
                    Ok(lanes @ 1..=MAX_LANES) => Ok(Lanes::Fixed(lanes)),
                    _ => Err(E::invalid_value(Unexpected::Unsigned(n), &self)),
                }
            }

            fn visit_str<E: Error>(self, text: &str) -> Result<Lanes, E> {
                match text {
                    "auto" => Ok(Lanes::Auto),
                    _ => Err(E::invalid_value(Unexpected::Str(text), &self)),
                }
            }
        }

        deserializer.deserialize_any(LanesVisitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum TransportMode {
    TcpTls,
    Quic,
    QuicWithFallback,
}

/// A hub the edge keeps tunnels to, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HubAddress {
    pub host: String,
    /// `host` as the name the hub's certificate is checked against.
    pub server_name: ServerName<'static>,
    pub port: u16,
}

impl std::fmt::Display for HubAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One entry of `hubs` as JavaScript gives it (index.d.ts `HubAddress`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HubEntryConfig {
    host: Option<HostName>,
    port: Option<Port>,
}

/// The hubs named by `hubHost`/`hubPort` or by `hubs` (one or the other): at least one, at
/// most [`MAX_HUBS`], none twice.
pub(crate) fn hub_list(
    hub_host: Option<HostName>,
    hub_port: Option<Port>,
    hubs: Option<Vec<HubEntryConfig>>,
) -> Result<Vec<HubAddress>, ConfigError> {
    let address = |host: HostName, port: Option<Port>| HubAddress {
        host: host.text,
        server_name: host.server_name,
        port: port.map_or(DEFAULT_HUB_PORT, |p| p.0),
    };
    let Some(entries) = hubs else {
        return Ok(vec![address(required(hub_host, "hubHost")?, hub_port)]);
    };
    if hub_host.is_some() || hub_port.is_some() {
        return Err(ConfigError::new(
            "hubs",
            "give either hubs or hubHost/hubPort, not both",
        ));
    }
    if entries.is_empty() || entries.len() > MAX_HUBS {
        return Err(ConfigError::new(
            "hubs",
            format!("must list 1 to {MAX_HUBS} hubs"),
        ));
    }
    let mut list: Vec<HubAddress> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let hub = address(required(entry.host, format!("hubs[{i}].host"))?, entry.port);
        if list.contains(&hub) {
            return Err(ConfigError::new(
                format!("hubs[{i}]"),
                format!("{hub} is listed twice"),
            ));
        }
        list.push(hub);
    }
    Ok(list)
}

#[derive(Clone)]
pub(crate) struct EdgeOptions {
    /// The hubs, each kept a tunnel to (one per address it resolves to).
    pub hubs: Vec<HubAddress>,
    /// Tunnels kept through each hub address, each to a distinct hub instance.
    pub connections_per_hub: usize,
    /// Tunnels to each hub process, for TCP+TLS on long lossy paths.
    pub lanes: Lanes,
    pub edge_id: String,
    pub secret: String,
    pub transport: TransportMode,
    pub bind_address: IpAddr,
    pub trust: HubTrust,
    pub stun_servers: Vec<StunServer>,
    /// How long one STUN server may take to answer, resolution and retransmits included.
    pub stun_timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    /// How long a client accepted while no tunnel is up waits for one; zero = reset at once.
    pub connect_wait: Duration,
    pub udp_idle_timeout: Duration,
    /// Bytes a tunnel may buffer for its streams, per direction.
    pub tunnel_buffer_bytes: u32,
}

impl std::fmt::Debug for EdgeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs and error messages.
        f.debug_struct("EdgeOptions")
            .field("hubs", &self.hubs)
            .field("edge_id", &self.edge_id)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// The edge's `start()` config as JavaScript gives it (index.d.ts `EdgeConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct EdgeConfig {
    token: Option<Text>,
    hub_host: Option<HostName>,
    hub_port: Option<Port>,
    hubs: Option<Vec<HubEntryConfig>>,
    connections_per_hub: Option<Int<usize, 1, MAX_CONNECTIONS_PER_HUB>>,
    lanes: Option<Lanes>,
    edge_id: Option<EdgeId>,
    secret: Option<Secret>,
    transport_mode: Option<TransportMode>,
    bind_address: Option<BindAddress>,
    hub_fingerprint: Option<Text>,
    ca_pem: Option<Text>,
    stun_servers: Option<StunServers>,
    stun_timeout_ms: Option<Int<u64, 1, MAX_STUN_TIMEOUT_MS>>,
    heartbeat_timeout_ms: Option<Millis>,
    reconnect_min_ms: Option<Millis>,
    reconnect_max_ms: Option<Millis>,
    connect_timeout_ms: Option<Millis>,
    connect_wait_ms: Option<Int<u64, 0, MAX_CONNECT_WAIT_MS>>,
    udp_idle_timeout_ms: Option<Millis>,
    tunnel_buffer_bytes: Option<BufferBytes>,
}

/// What a token stands for: these options, which come from one or the other.
pub(crate) const CONNECTION_FIELDS: [&str; 5] = ["hubHost", "hubPort", "hubs", "edgeId", "secret"];

/// The hubs, the edge's identity and the token's pin, from the token or the explicit options.
struct Connection {
    hubs: Vec<HubAddress>,
    edge_id: String,
    secret: String,
    fingerprint: Option<String>,
}

impl EdgeConfig {
    fn connection(&mut self) -> Result<Connection, ConfigError> {
        let Some(Text(token)) = self.token.take() else {
            return Ok(Connection {
                hubs: hub_list(self.hub_host.take(), self.hub_port.take(), self.hubs.take())?,
                edge_id: required(self.edge_id.take(), "edgeId")?.0,
                secret: required(self.secret.take(), "secret")?.0,
                fingerprint: None,
            });
        };
        let given = [
            self.hub_host.is_some(),
            self.hub_port.is_some(),
            self.hubs.is_some(),
            self.edge_id.is_some(),
            self.secret.is_some(),
        ];
        if let Some((both, _)) = CONNECTION_FIELDS.iter().zip(given).find(|(_, g)| *g) {
            return Err(ConfigError::new(
                *both,
                "give either token or hubHost/hubPort/hubs/edgeId/secret, not both",
            ));
        }
        let t = decode_token(&token).map_err(|e| ConfigError::new("token", e.to_string()))?;
        let hub = |host: &str, port: u16, field: &str| -> Result<HubAddress, ConfigError> {
            let host = HostName::parse(host).map_err(|reason| ConfigError::new(field, reason))?;
            Ok(HubAddress {
                host: host.text,
                server_name: host.server_name,
                port,
            })
        };
        let mut hubs = vec![hub(&t.hub_host, t.hub_port, "hubHost")?];
        for (i, (host, port)) in t.more_hubs.iter().enumerate() {
            let more = hub(host, *port, &format!("hubs[{}].host", i + 1))?;
            // A hand-made token may name a hub twice: one tunnel is enough.
            if !hubs.contains(&more) {
                hubs.push(more);
            }
        }
        Ok(Connection {
            hubs,
            edge_id: EdgeId::parse(&t.edge_id)
                .map_err(|reason| ConfigError::new("edgeId", reason))?
                .0,
            secret: Secret::parse(&t.secret)
                .map_err(|reason| ConfigError::new("secret", reason))?
                .0,
            fingerprint: t.hub_fingerprint,
        })
    }
}

impl EdgeOptions {
    pub(crate) fn from_json(value: &Value) -> Result<Self, ConfigError> {
        Self::from_config(from_value(value, "")?)
    }

    fn from_config(mut c: EdgeConfig) -> Result<Self, ConfigError> {
        let connection = c.connection()?;
        let fingerprint = c.hub_fingerprint.map(|t| t.0).or(connection.fingerprint);
        let trust = match (fingerprint, c.ca_pem) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "caPem",
                    "give either hubFingerprint or caPem, not both",
                ))
            }
            (Some(pin), None) => {
                validate_fingerprint(&pin)
                    .map_err(|e| ConfigError::new("hubFingerprint", e.to_string()))?;
                HubTrust::Pinned(pin)
            }
            (None, Some(Text(pem))) => {
                HubTrust::ca_from_pem(&pem).map_err(|e| ConfigError::new("caPem", e.to_string()))?
            }
            (None, None) => HubTrust::AnyKey,
        };
        let stun_servers = match c.stun_servers {
            Some(servers) => servers.0,
            None => vec![StunServer::parse(DEFAULT_STUN_SERVER)
                .map_err(|bad| ConfigError::new("stunServers", bad.to_string()))?],
        };
        let reconnect_min = c.reconnect_min_ms.map_or(DEFAULT_RECONNECT_MIN, |t| t.0);
        let reconnect_max = c.reconnect_max_ms.map_or(DEFAULT_RECONNECT_MAX, |t| t.0);
        if reconnect_max < reconnect_min {
            return Err(ConfigError::new(
                "reconnectMaxMs",
                "must not be less than reconnectMinMs",
            ));
        }
        Ok(Self {
            hubs: connection.hubs,
            connections_per_hub: c.connections_per_hub.map_or(1, |n| n.0),
            lanes: c.lanes.unwrap_or(Lanes::Auto),
            edge_id: connection.edge_id,
            secret: connection.secret,
            transport: c.transport_mode.unwrap_or(TransportMode::TcpTls),
            bind_address: c.bind_address.map_or(DEFAULT_BIND_ADDRESS, |a| a.0),
            trust,
            stun_servers,
            stun_timeout: c
                .stun_timeout_ms
                .map_or(DEFAULT_SERVER_TIMEOUT, |ms| Duration::from_millis(ms.0)),
            heartbeat_timeout: c
                .heartbeat_timeout_ms
                .map_or(DEFAULT_HEARTBEAT_TIMEOUT, |t| t.0),
            reconnect_min,
            reconnect_max,
            connect_timeout: c
                .connect_timeout_ms
                .map_or(DEFAULT_CONNECT_TIMEOUT, |t| t.0),
            connect_wait: c
                .connect_wait_ms
                .map_or(DEFAULT_CONNECT_WAIT, |ms| Duration::from_millis(ms.0)),
            udp_idle_timeout: c
                .udp_idle_timeout_ms
                .map_or(DEFAULT_UDP_IDLE_TIMEOUT, |t| t.0),
            tunnel_buffer_bytes: c
                .tunnel_buffer_bytes
                .map_or(crate::mux::flow::TUNNEL_WINDOW_BUDGET, |n| n.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::token::{encode_token, ConnectionToken};
    use serde_json::json;

    fn token(fingerprint: Option<&str>) -> String {
        encode_token(&ConnectionToken {
            hub_host: "hub.example.com".into(),
            hub_port: 9443,
            edge_id: "edge-1".into(),
            secret: "s3cret".into(),
            hub_fingerprint: fingerprint.map(str::to_string),
            more_hubs: Vec::new(),
        })
    }

    #[test]
    fn token_and_explicit_config_give_the_same_connection() {
        let from_token = EdgeOptions::from_json(&json!({"token": token(None)})).unwrap();
        let explicit = EdgeOptions::from_json(&json!({
            "hubHost": "hub.example.com", "hubPort": 9443, "edgeId": "edge-1", "secret": "s3cret"
        }))
        .unwrap();
        for o in [&from_token, &explicit] {
            let hubs: Vec<String> = o.hubs.iter().map(|h| h.to_string()).collect();
            assert_eq!(
                (hubs, o.edge_id.as_str(), o.secret.as_str()),
                (vec!["hub.example.com:9443".to_string()], "edge-1", "s3cret")
            );
            assert_eq!(o.connections_per_hub, 1);
            assert!(matches!(o.trust, HubTrust::AnyKey));
        }
    }

    #[test]
    fn several_hubs_from_the_list_or_a_token() {
        let listed = EdgeOptions::from_json(&json!({
            "hubs": [{"host": "hub-a"}, {"host": "10.0.0.2", "port": 443}, {"host": "::1", "port": 9}],
            "connectionsPerHub": 2, "edgeId": "e", "secret": "s"
        }))
        .unwrap();
        let hubs: Vec<String> = listed.hubs.iter().map(|h| h.to_string()).collect();
        assert_eq!(hubs, ["hub-a:8443", "10.0.0.2:443", "[::1]:9"]);
        assert_eq!(listed.connections_per_hub, 2);
        assert!(matches!(
            listed.hubs[1].server_name,
            ServerName::IpAddress(_)
        ));
        let token = encode_token(&ConnectionToken {
            more_hubs: vec![("hub-b".into(), 443), ("hub.example.com".into(), 9443)],
            ..crate::protocol::token::decode_token(&token(None)).unwrap()
        });
        let o = EdgeOptions::from_json(&json!({ "token": token })).unwrap();
        let hubs: Vec<String> = o.hubs.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            hubs,
            ["hub.example.com:9443", "hub-b:443"],
            "a repeated hub is kept once"
        );
    }

    #[test]
    fn stun_defaults_and_off_switch() {
        let base = json!({"hubHost": "h", "edgeId": "e", "secret": "s"});
        let o = EdgeOptions::from_json(&base).unwrap();
        assert_eq!(
            o.stun_servers,
            [StunServer::parse(DEFAULT_STUN_SERVER).unwrap()]
        );
        assert_eq!(o.stun_timeout, DEFAULT_SERVER_TIMEOUT);
        let off = json!({"hubHost": "h", "edgeId": "e", "secret": "s", "stunServers": [], "stunTimeoutMs": 250});
        let o = EdgeOptions::from_json(&off).unwrap();
        assert!(o.stun_servers.is_empty());
        assert_eq!(o.stun_timeout, Duration::from_millis(250));
    }

    #[test]
    fn token_fingerprint_pins_the_hub() {
        let pin = format!("sha256/{}", "A".repeat(43));
        let o = EdgeOptions::from_json(&json!({"token": token(Some(&pin))})).unwrap();
        assert!(matches!(o.trust, HubTrust::Pinned(p) if p == pin));
    }

    #[test]
    fn messages_are_the_field_path_then_the_reason() {
        let base = || json!({"hubHost": "h", "edgeId": "e", "secret": "s"});
        let with = |key: &str, value: Value| {
            let mut config = base();
            config[key] = value;
            config
        };
        let cases = [
            (json!({}), "hubHost: is required".to_string()),
            (
                with("hubPort", json!(0)),
                "hubPort: must be an integer from 1 to 65535".into(),
            ),
            (
                with("transportMode", json!("udp")),
                "transportMode: must be one of 'tcpTls', 'quic', 'quicWithFallback'".into(),
            ),
            (
                with("stunServers", json!("x")),
                "stunServers: must be an array of strings".into(),
            ),
            (
                with("stunServers", json!(["a:1", ""])),
                "stunServers[1]: must be a non-empty string".into(),
            ),
            (
                with("stunTimeoutMs", json!(60_001)),
                "stunTimeoutMs: must be an integer from 1 to 60000".into(),
            ),
            (
                json!({"token": token(None), "secret": "x"}),
                "secret: give either token or hubHost/hubPort/hubs/edgeId/secret, not both".into(),
            ),
            (
                json!({"hubs": [{"host": "a"}], "hubHost": "b", "edgeId": "e", "secret": "s"}),
                "hubs: give either hubs or hubHost/hubPort, not both".into(),
            ),
            (
                json!({"hubs": [], "edgeId": "e", "secret": "s"}),
                "hubs: must list 1 to 16 hubs".into(),
            ),
            (
                json!({"hubs": [{"host": "a"}, {"port": 1}], "edgeId": "e", "secret": "s"}),
                "hubs[1].host: is required".into(),
            ),
            (
                json!({"hubs": [{"host": "a"}, {"host": "a", "port": 8443}], "edgeId": "e", "secret": "s"}),
                "hubs[1]: a:8443 is listed twice".into(),
            ),
            (
                json!({"hubs": [{"host": "a", "weight": 1}], "edgeId": "e", "secret": "s"}),
                "hubs[0].weight: is not a known option (known: host, port)".into(),
            ),
            (
                with("connectionsPerHub", json!(0)),
                "connectionsPerHub: must be an integer from 1 to 8".into(),
            ),
            (
                with("lanes", json!(9)),
                "lanes: must be 'auto' or an integer from 1 to 8".into(),
            ),
            (
                with("lanes", json!("many")),
                "lanes: must be 'auto' or an integer from 1 to 8".into(),
            ),
            (
                with("lanes", json!(-1)),
                "lanes: must be 'auto' or an integer from 1 to 8".into(),
            ),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "reconnectMinMs": 5000, "reconnectMaxMs": 1000}),
                "reconnectMaxMs: must not be less than reconnectMinMs".into(),
            ),
            (with("caPem", json!(1)), "caPem: must be a string".into()),
            (
                with("hubPrt", json!(1)),
                "hubPrt: is not a known option (known: token, hubHost, hubPort, hubs, connectionsPerHub, lanes, edgeId, \
                 secret, transportMode, bindAddress, hubFingerprint, caPem, stunServers, stunTimeoutMs, \
                 heartbeatTimeoutMs, reconnectMinMs, reconnectMaxMs, connectTimeoutMs, connectWaitMs, \
                 udpIdleTimeoutMs, tunnelBufferBytes)"
                    .into(),
            ),
        ];
        for (config, message) in cases {
            match EdgeOptions::from_json(&config) {
                Err(err) => assert_eq!(err.to_string(), message, "{config}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }

    #[test]
    fn lanes_open_on_long_paths_under_auto_and_as_many_as_given_otherwise() {
        let lanes = |value: Value| {
            EdgeOptions::from_json(
                &json!({"hubHost": "h", "edgeId": "e", "secret": "s", "lanes": value}),
            )
            .unwrap()
            .lanes
        };
        let auto = EdgeOptions::from_json(&json!({"hubHost": "h", "edgeId": "e", "secret": "s"}))
            .unwrap()
            .lanes;
        assert_eq!((auto, lanes(json!("auto"))), (Lanes::Auto, Lanes::Auto));
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(
            [None, ms(0), ms(19), ms(20), ms(150)].map(|rtt| Lanes::Auto.wanted(rtt)),
            [1, 1, 1, MAX_LANES, MAX_LANES]
        );
        assert_eq!(lanes(json!(3)), Lanes::Fixed(3));
        assert_eq!(
            [None, ms(150)].map(|rtt| Lanes::Fixed(3).wanted(rtt)),
            [3, 3]
        );
    }

    #[test]
    fn the_hub_host_is_read_once_into_the_name_tls_checks() {
        let o = EdgeOptions::from_json(&json!({"token": token(None)})).unwrap();
        assert_eq!(
            o.hubs[0].server_name,
            ServerName::try_from("hub.example.com").unwrap()
        );
        let ip = json!({"hubHost": "10.0.0.1", "edgeId": "e", "secret": "s"});
        let o = EdgeOptions::from_json(&ip).unwrap();
        assert!(matches!(o.hubs[0].server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (json!({}), "hubHost"),
            (json!({"hubHost": "h", "edgeId": "e"}), "secret"),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "hubPort": 0}),
                "hubPort",
            ),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "transportMode": "udp"}),
                "transportMode",
            ),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "bindAddress": "x"}),
                "bindAddress",
            ),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "hubFingerprint": "abc"}),
                "hubFingerprint",
            ),
            (json!({"token": "!!"}), "token"),
            (json!({"token": token(None), "secret": "x"}), "secret"),
            (
                json!({"hubHost": "h", "edgeId": "e e", "secret": "s"}),
                "edgeId",
            ),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "stunServers": ["ok:1", "x:0"]}),
                "stunServers[1]",
            ),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "stunTimeoutMs": 0}),
                "stunTimeoutMs",
            ),
        ];
        for (config, field) in cases {
            match EdgeOptions::from_json(&config) {
                Err(err) => assert_eq!(err.field, field, "{config}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }
}
