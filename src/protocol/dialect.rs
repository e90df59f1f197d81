//! The two dialects of the TCP+TLS protocol and how a peer is classified.
//!
//! A peer that negotiates ALPN [`ALPN`] speaks ours, `remoteingress/1`. A peer that negotiates
//! no ALPN speaks the protocol 4.13 documents, which has no ALPN: the same login and frames,
//! without our extensions. The dialect is the one place where those extensions are switched:
//! what we send to a peer depends on it, what we accept does not (both dialects are read
//! liberally where the documentation is silent). QUIC requires an ALPN and 4.13 documents none,
//! so a QUIC peer always speaks `remoteingress/1`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::client_policy::ClientPolicy;
use super::frame::{close_payload, CloseKind};
use super::handshake::{EdgeConfig, DEFAULT_MAX_UDP_SESSIONS};

/// The application protocol our peers negotiate, over TCP+TLS and QUIC.
pub const ALPN: &[u8] = b"remoteingress/1";
/// See [`Dialect::close_linger`]: as long as Linux keeps an orphaned connection waiting for
/// the other side's FIN (`tcp_fin_timeout`).
pub const UPSTREAM_413_CLOSE_LINGER: Duration = Duration::from_secs(60);

/// Which protocol a peer speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Ours: ALPN `remoteingress/1`.
    RemoteIngress1,
    /// The protocol 4.13 documents: no ALPN.
    Upstream413,
}

impl Dialect {
    /// The dialect of a TCP+TLS peer by the ALPN it negotiated; `None` for a protocol that is
    /// neither (rustls already refuses those in the handshake).
    pub fn from_alpn(alpn: Option<&[u8]>) -> Option<Dialect> {
        match alpn {
            None => Some(Dialect::Upstream413),
            Some(ALPN) => Some(Dialect::RemoteIngress1),
            Some(_) => None,
        }
    }

    /// The name `getStatus()`, the events and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::RemoteIngress1 => "remoteingress/1",
            Dialect::Upstream413 => "4.13",
        }
    }

    /// A CLOSE or CLOSE_BACK payload: 4.13 documents no reset reason, so every close is
    /// empty there.
    pub fn close_payload(self, kind: CloseKind) -> Bytes {
        match self {
            Dialect::RemoteIngress1 => close_payload(kind),
            Dialect::Upstream413 => close_payload(CloseKind::HalfClose),
        }
    }

    /// The config as this peer is sent it (login answer and CONFIG): a 4.13 peer gets only
    /// the documented keys, so the UDP session limit and the client rules stay the hub's own.
    pub fn config_for_peer(self, config: &EdgeConfig) -> EdgeConfig {
        match self {
            Dialect::RemoteIngress1 => config.clone(),
            Dialect::Upstream413 => EdgeConfig {
                max_udp_sessions: DEFAULT_MAX_UDP_SESSIONS,
                instance_id: None,
                clients: ClientPolicy::default(),
                port_clients: BTreeMap::new(),
                ..config.clone()
            },
        }
    }

    /// Whether a refused login is answered with `{"error":...}` before the close; 4.13
    /// documents no such answer, so a 4.13 edge is only closed.
    pub fn answers_refusals(self) -> bool {
        self == Dialect::RemoteIngress1
    }

    /// How long a stream waits, after our close, for a peer that has gone quiet to close its
    /// side. 4.13 documents CLOSE as "closed", so a 4.13 peer may never answer ours; in our
    /// dialect a close is a half-close and the peer always closes its side too.
    pub fn close_linger(self) -> Option<Duration> {
        match self {
            Dialect::RemoteIngress1 => None,
            Dialect::Upstream413 => Some(UPSTREAM_413_CLOSE_LINGER),
        }
    }

    /// Whether a draining hub tells the edge so (GOAWAY); 4.13 has no such message, so a 4.13
    /// edge only sees the close at the end.
    pub fn drains(self) -> bool {
        self == Dialect::RemoteIngress1
    }

    /// Whether the hub acknowledges each connection stream it takes (OPEN_ACK), so the edge
    /// can carry one its tunnel lost before that on another; 4.13 has no such message.
    pub fn acknowledges_opens(self) -> bool {
        self == Dialect::RemoteIngress1
    }

    /// Whether stream and UDP session ids come from one growing counter. 4.13 documents no
    /// rule for ids, so a 4.13 edge may use any id not open at the moment.
    pub fn ids_grow(self) -> bool {
        self == Dialect::RemoteIngress1
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Dialect {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::ResetReason;
    use crate::protocol::handshake::{encode_reply, parse_reply, HubReply};

    #[test]
    fn a_peer_is_classified_by_its_alpn() {
        assert_eq!(Dialect::from_alpn(None), Some(Dialect::Upstream413));
        assert_eq!(
            Dialect::from_alpn(Some(b"remoteingress/1")),
            Some(Dialect::RemoteIngress1)
        );
        assert_eq!(Dialect::from_alpn(Some(b"h2")), None);
        assert_eq!(Dialect::from_alpn(Some(b"")), None);
    }

    #[test]
    fn a_413_peer_gets_no_reset_reason() {
        let reset = CloseKind::Reset(ResetReason::Unreachable);
        assert_eq!(&Dialect::RemoteIngress1.close_payload(reset)[..], &[2]);
        assert!(Dialect::Upstream413.close_payload(reset).is_empty());
        for dialect in [Dialect::RemoteIngress1, Dialect::Upstream413] {
            assert!(dialect.close_payload(CloseKind::HalfClose).is_empty());
        }
    }

    #[test]
    fn a_413_peer_gets_exactly_the_documented_keys() {
        let config = EdgeConfig {
            listen_ports: vec![80, 443],
            listen_ports_udp: vec![53],
            stun_interval_secs: 300,
            max_udp_sessions: 100,
            instance_id: Some("hub-a".into()),
            clients: serde_json::from_str(r#"{"deny":["192.0.2.0/24"]}"#).unwrap(),
            port_clients: BTreeMap::from([(
                443,
                serde_json::from_str(r#"{"maxConnectionsPerSource":8}"#).unwrap(),
            )]),
        };
        let answer =
            |dialect: Dialect| encode_reply(&HubReply::Accepted(dialect.config_for_peer(&config)));
        assert_eq!(
            answer(Dialect::Upstream413),
            b"{\"listenPorts\":[80,443],\"listenPortsUdp\":[53],\"stunIntervalSecs\":300}\n"
        );
        assert_eq!(
            answer(Dialect::RemoteIngress1),
            b"{\"listenPorts\":[80,443],\"listenPortsUdp\":[53],\"stunIntervalSecs\":300,\"maxUdpSessions\":100,\"instanceId\":\"hub-a\",\"clients\":{\"deny\":[\"192.0.2.0/24\"]},\"portClients\":{\"443\":{\"maxConnectionsPerSource\":8}}}\n"
        );
        let answer = answer(Dialect::RemoteIngress1);
        let read_back = parse_reply(answer.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(read_back, HubReply::Accepted(config.clone()));
    }
}
