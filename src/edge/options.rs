//! The edge's start options: a connection token or explicit hub, id and secret, plus extras.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::config::{bind_address, ConfigError, Fields};
use crate::protocol::handshake::{validate_edge_id, validate_secret};
use crate::protocol::stun::StunServer;
use crate::protocol::token::decode_token;

use super::stun::DEFAULT_SERVER_TIMEOUT;
use crate::transport::tls::{server_name, validate_fingerprint, HubTrust};

pub const DEFAULT_HUB_PORT: u16 = 8443;
pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";
pub const DEFAULT_STUN_SERVER: &str = "stun.cloudflare.com:3478";
/// A minute per STUN server is already far more than any answer takes.
pub const MAX_STUN_TIMEOUT_MS: u64 = 60_000;
/// With no frame from the hub for this long (it pings every 15 s), the edge reconnects.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(45);
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A UDP session with no datagram either way for this long ends.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP connect, TLS handshake and the hub's answer must fit in this.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportMode {
    TcpTls,
    Quic,
    QuicWithFallback,
}

#[derive(Clone)]
pub struct EdgeOptions {
    pub hub_host: String,
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

const CONNECTION_FIELDS: [&str; 4] = ["hubHost", "hubPort", "edgeId", "secret"];

impl EdgeOptions {
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let f = Fields::of(
            value,
            "",
            &[
                "token",
                "hubHost",
                "hubPort",
                "edgeId",
                "secret",
                "transportMode",
                "bindAddress",
                "hubFingerprint",
                "caPem",
                "stunServers",
                "stunTimeoutMs",
                "heartbeatTimeoutMs",
                "reconnectMinMs",
                "reconnectMaxMs",
                "connectTimeoutMs",
                "udpIdleTimeoutMs",
                "tunnelBufferBytes",
            ],
        )?;
        let (hub_host, hub_port, edge_id, secret, token_fingerprint) = match f.string("token")? {
            Some(token) => {
                if let Some(both) = CONNECTION_FIELDS.iter().find(|k| f.has(k)) {
                    return Err(ConfigError::new(
                        *both,
                        "give either token or hubHost/hubPort/edgeId/secret, not both",
                    ));
                }
                let t =
                    decode_token(&token).map_err(|e| ConfigError::new("token", e.to_string()))?;
                (
                    t.hub_host,
                    t.hub_port,
                    t.edge_id,
                    t.secret,
                    t.hub_fingerprint,
                )
            }
            None => (
                f.required_string("hubHost")?,
                f.port("hubPort", 1)?.unwrap_or(DEFAULT_HUB_PORT),
                f.required_string("edgeId")?,
                f.required_string("secret")?,
                None,
            ),
        };
        validate_edge_id(&edge_id).map_err(|e| ConfigError::new("edgeId", e.to_string()))?;
        validate_secret(&secret).map_err(|e| ConfigError::new("secret", e.to_string()))?;
        server_name(&hub_host).map_err(|reason| ConfigError::new("hubHost", reason))?;

        let transport = f
            .choice(
                "transportMode",
                &[
                    ("tcpTls", TransportMode::TcpTls),
                    ("quic", TransportMode::Quic),
                    ("quicWithFallback", TransportMode::QuicWithFallback),
                ],
            )?
            .unwrap_or(TransportMode::TcpTls);

        let fingerprint = match f.string("hubFingerprint")? {
            Some(explicit) => Some(explicit),
            None => token_fingerprint,
        };
        let ca_pem = f.string("caPem")?;
        let trust = match (fingerprint, ca_pem) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "caPem",
                    "give either hubFingerprint or caPem, not both",
                ))
            }
            (Some(pin), None) => {
                validate_fingerprint(&pin)
                    .map_err(|reason| ConfigError::new("hubFingerprint", reason))?;
                HubTrust::Pinned(pin)
            }
            (None, Some(pem)) => {
                HubTrust::ca_from_pem(&pem).map_err(|e| ConfigError::new("caPem", e.to_string()))?
            }
            (None, None) => HubTrust::AnyKey,
        };

        let stun_servers = f
            .string_list("stunServers")?
            .unwrap_or_else(|| vec![DEFAULT_STUN_SERVER.to_string()])
            .iter()
            .enumerate()
            .map(|(i, server)| {
                StunServer::parse(server)
                    .map_err(|bad| ConfigError::new(format!("stunServers[{i}]"), bad.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reconnect_min = f.millis("reconnectMinMs")?.unwrap_or(DEFAULT_RECONNECT_MIN);
        let reconnect_max = f.millis("reconnectMaxMs")?.unwrap_or(DEFAULT_RECONNECT_MAX);
        if reconnect_max < reconnect_min {
            return Err(ConfigError::new(
                "reconnectMaxMs",
                "must not be less than reconnectMinMs",
            ));
        }
        Ok(Self {
            hub_host,
            hub_port,
            edge_id,
            secret,
            transport,
            bind_address: bind_address(&f, "bindAddress", DEFAULT_BIND_ADDRESS)?,
            trust,
            stun_servers,
            stun_timeout: f
                .integer("stunTimeoutMs", 1, MAX_STUN_TIMEOUT_MS)?
                .map_or(DEFAULT_SERVER_TIMEOUT, Duration::from_millis),
            heartbeat_timeout: f
                .millis("heartbeatTimeoutMs")?
                .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
            reconnect_min,
            reconnect_max,
            connect_timeout: f
                .millis("connectTimeoutMs")?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            udp_idle_timeout: f
                .millis("udpIdleTimeoutMs")?
                .unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT),
            tunnel_buffer_bytes: f
                .buffer_bytes("tunnelBufferBytes")?
                .unwrap_or(crate::mux::flow::TUNNEL_WINDOW_BUDGET),
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
