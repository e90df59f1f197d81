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
use crate::protocol::token::decode_token;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum TransportMode {
    TcpTls,
    Quic,
    QuicWithFallback,
}

#[derive(Clone)]
pub(crate) struct EdgeOptions {
    pub hub_host: String,
    /// `hub_host` as the name the hub's certificate is checked against.
    pub hub_server_name: ServerName<'static>,
    pub hub_port: u16,
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
            .field("hub_host", &self.hub_host)
            .field("hub_port", &self.hub_port)
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

/// What a token stands for: these four options, which come from one or the other.
pub(crate) const CONNECTION_FIELDS: [&str; 4] = ["hubHost", "hubPort", "edgeId", "secret"];

/// The hub, the edge's identity and the token's pin, from the token or the explicit options.
struct Connection {
    hub: HostName,
    hub_port: u16,
    edge_id: String,
    secret: String,
    fingerprint: Option<String>,
}

impl EdgeConfig {
    fn connection(&mut self) -> Result<Connection, ConfigError> {
        let Some(Text(token)) = self.token.take() else {
            return Ok(Connection {
                hub: required(self.hub_host.take(), "hubHost")?,
                hub_port: self.hub_port.map_or(DEFAULT_HUB_PORT, |p| p.0),
                edge_id: required(self.edge_id.take(), "edgeId")?.0,
                secret: required(self.secret.take(), "secret")?.0,
                fingerprint: None,
            });
        };
        let given = [
            self.hub_host.is_some(),
            self.hub_port.is_some(),
            self.edge_id.is_some(),
            self.secret.is_some(),
        ];
        if let Some((both, _)) = CONNECTION_FIELDS.iter().zip(given).find(|(_, g)| *g) {
            return Err(ConfigError::new(
                *both,
                "give either token or hubHost/hubPort/edgeId/secret, not both",
            ));
        }
        let t = decode_token(&token).map_err(|e| ConfigError::new("token", e.to_string()))?;
        Ok(Connection {
            hub: HostName::parse(&t.hub_host)
                .map_err(|reason| ConfigError::new("hubHost", reason))?,
            hub_port: t.hub_port,
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
            hub_host: connection.hub.text,
            hub_server_name: connection.hub.server_name,
            hub_port: connection.hub_port,
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
            assert_eq!(
                (
                    o.hub_host.as_str(),
                    o.hub_port,
                    o.edge_id.as_str(),
                    o.secret.as_str()
                ),
                ("hub.example.com", 9443, "edge-1", "s3cret")
            );
            assert!(matches!(o.trust, HubTrust::AnyKey));
        }
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
                "secret: give either token or hubHost/hubPort/edgeId/secret, not both".into(),
            ),
            (
                json!({"hubHost": "h", "edgeId": "e", "secret": "s", "reconnectMinMs": 5000, "reconnectMaxMs": 1000}),
                "reconnectMaxMs: must not be less than reconnectMinMs".into(),
            ),
            (with("caPem", json!(1)), "caPem: must be a string".into()),
            (
                with("hubPrt", json!(1)),
                "hubPrt: is not a known option (known: token, hubHost, hubPort, edgeId, secret, \
                 transportMode, bindAddress, hubFingerprint, caPem, stunServers, stunTimeoutMs, \
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
    fn the_hub_host_is_read_once_into_the_name_tls_checks() {
        let o = EdgeOptions::from_json(&json!({"token": token(None)})).unwrap();
        assert_eq!(
            o.hub_server_name,
            ServerName::try_from("hub.example.com").unwrap()
        );
        let ip = json!({"hubHost": "10.0.0.1", "edgeId": "e", "secret": "s"});
        let o = EdgeOptions::from_json(&ip).unwrap();
        assert!(matches!(o.hub_server_name, ServerName::IpAddress(_)));
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
