//! Tunnel-wide messages, typed by the direction they travel in: CONFIG, PING, PONG, UDP_OPEN
//! and UDP_CLOSE. Both transports carry the same payloads and differ only in the header around
//! them: a frame names the UDP session in its stream-id field, the QUIC control stream at the
//! front of the payload (see `quic_messages`).

use bytes::Bytes;

use super::frame::{decode_ping, decode_window_credit, FrameError, FrameType};
use super::handshake::{encode_config, parse_config, EdgeConfig};
use super::proxy::{encode_v2, parse_v2, ProxyAddresses, ProxyHeader, ProxyTransport};

/// The opaque bytes a PING carries and its PONG echoes: at most
/// [`MAX_PING_PAYLOAD`](super::frame::MAX_PING_PAYLOAD).
pub type PingPayload = Bytes;

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    EdgeToHub,
    HubToEdge,
}

/// A UDP session's start: its id and the client's addresses, which travel as the PROXY v2
/// header the hub puts before every datagram it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpOpen {
    pub session: u32,
    pub addresses: ProxyAddresses,
    /// `addresses` encoded, as sent and received.
    pub header: Bytes,
}

impl UdpOpen {
    pub fn new(session: u32, addresses: ProxyAddresses) -> Self {
        let header = Bytes::from(encode_v2(ProxyTransport::Datagram, &addresses));
        Self {
            session,
            addresses,
            header,
        }
    }

    /// The open whose header is `header`, which must be exactly one PROXY v2 datagram header.
    pub fn decode(session: u32, header: Bytes) -> Result<Self, FrameError> {
        let addresses = parse_open_header(&header).ok_or(FrameError::BadUdpOpen { session })?;
        Ok(Self {
            session,
            addresses,
            header,
        })
    }
}

/// The addresses in a PROXY v2 datagram header that fills `header` exactly.
pub fn parse_open_header(header: &[u8]) -> Option<ProxyAddresses> {
    match parse_v2(header) {
        Ok(Some((ProxyHeader::Addresses(addresses), Some(ProxyTransport::Datagram), used)))
            if used == header.len() =>
        {
            Some(addresses)
        }
        _ => None,
    }
}

/// The length of an edge's GOAWAY payload: the last id it opened.
pub const GOAWAY_ANSWER_LEN: usize = 4;

/// Tunnel-wide messages an edge sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeMessage {
    Ping(PingPayload),
    Pong(PingPayload),
    UdpOpen(UdpOpen),
    UdpClose {
        session: u32,
    },
    /// The answer to the hub's GOAWAY: no stream or UDP session past `last_id` will come.
    GoAway {
        last_id: u32,
    },
    /// Credit for the hub to send `credit` more bytes on connection stream `stream` (QUIC: the
    /// stream's index; over TCP+TLS the frame reader decodes it as a stream frame).
    WindowUpdate {
        stream: u32,
        credit: u32,
    },
}

/// Tunnel-wide messages a hub sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubMessage {
    /// New ports or STUN interval: the same JSON as the handshake answer.
    Config(EdgeConfig),
    Ping(PingPayload),
    Pong(PingPayload),
    UdpClose {
        session: u32,
    },
    /// The hub is draining: open nothing more on this tunnel.
    GoAway,
    /// The hub has taken the edge's connection stream `stream` (over QUIC, the QUIC stream's
    /// index), before connecting its target.
    OpenAck {
        stream: u32,
    },
    /// Credit for the edge to send `credit` more bytes on connection stream `stream`.
    WindowUpdate {
        stream: u32,
        credit: u32,
    },
}

/// What the messages of both directions share, so the tunnel code is written once for both
/// ends. Each is decoded for the direction it travels in: a message only the other end sends
/// is a protocol error.
pub trait ControlMessage: Clone + std::fmt::Debug + Send + Sync + 'static {
    const DIRECTION: Direction;
    fn ping(payload: PingPayload) -> Self;
    /// Credit for the peer's side of connection stream `stream`.
    fn window_update(stream: u32, credit: u32) -> Self;
    fn kind(&self) -> FrameType;
    /// The UDP session or connection stream the message is about; 0 for a tunnel-wide one.
    fn session(&self) -> u32;
    /// The payload, without the session id.
    fn payload(&self) -> Bytes;
    /// The session a UDP_OPEN starts, for the QUIC transport, which also sends it as a datagram.
    fn udp_open(&self) -> Option<&UdpOpen> {
        None
    }
    /// `payload` is the message's payload without the session id, which `session` holds.
    fn decode(kind: FrameType, session: u32, payload: Bytes) -> Result<Self, FrameError>;
}

impl ControlMessage for EdgeMessage {
    const DIRECTION: Direction = Direction::EdgeToHub;

    fn ping(payload: PingPayload) -> Self {
        EdgeMessage::Ping(payload)
    }

    fn window_update(stream: u32, credit: u32) -> Self {
        EdgeMessage::WindowUpdate { stream, credit }
    }

    fn kind(&self) -> FrameType {
        match self {
            EdgeMessage::Ping(_) => FrameType::Ping,
            EdgeMessage::Pong(_) => FrameType::Pong,
            EdgeMessage::UdpOpen(_) => FrameType::UdpOpen,
            EdgeMessage::UdpClose { .. } => FrameType::UdpClose,
            EdgeMessage::GoAway { .. } => FrameType::GoAway,
            EdgeMessage::WindowUpdate { .. } => FrameType::WindowUpdate,
        }
    }

    fn session(&self) -> u32 {
        match self {
            EdgeMessage::Ping(_) | EdgeMessage::Pong(_) | EdgeMessage::GoAway { .. } => 0,
            EdgeMessage::UdpOpen(open) => open.session,
            EdgeMessage::UdpClose { session } => *session,
            EdgeMessage::WindowUpdate { stream, .. } => *stream,
        }
    }

    fn payload(&self) -> Bytes {
        match self {
            EdgeMessage::Ping(payload) | EdgeMessage::Pong(payload) => payload.clone(),
            EdgeMessage::UdpOpen(open) => open.header.clone(),
            EdgeMessage::UdpClose { .. } => Bytes::new(),
            EdgeMessage::GoAway { last_id } => Bytes::copy_from_slice(&last_id.to_be_bytes()),
            EdgeMessage::WindowUpdate { credit, .. } => {
                Bytes::copy_from_slice(&credit.to_be_bytes())
            }
        }
    }

    fn udp_open(&self) -> Option<&UdpOpen> {
        match self {
            EdgeMessage::UdpOpen(open) => Some(open),
            _ => None,
        }
    }

    fn decode(kind: FrameType, session: u32, payload: Bytes) -> Result<Self, FrameError> {
        Ok(match kind {
            FrameType::Ping => EdgeMessage::Ping(decode_ping(payload)?),
            FrameType::Pong => EdgeMessage::Pong(decode_ping(payload)?),
            FrameType::UdpOpen => EdgeMessage::UdpOpen(UdpOpen::decode(session, payload)?),
            // A UDP_CLOSE frame's payload means nothing; the QUIC decoder checks its length.
            FrameType::UdpClose => EdgeMessage::UdpClose { session },
            FrameType::GoAway => {
                let last_id = payload
                    .as_ref()
                    .try_into()
                    .map_err(|_| FrameError::BadGoAway {
                        expected: GOAWAY_ANSWER_LEN,
                        len: payload.len(),
                    })?;
                EdgeMessage::GoAway {
                    last_id: u32::from_be_bytes(last_id),
                }
            }
            FrameType::WindowUpdate => EdgeMessage::WindowUpdate {
                stream: session,
                credit: decode_window_credit(&payload)?,
            },
            other => return Err(FrameError::Unexpected(other)),
        })
    }
}

impl ControlMessage for HubMessage {
    const DIRECTION: Direction = Direction::HubToEdge;

    fn ping(payload: PingPayload) -> Self {
        HubMessage::Ping(payload)
    }

    fn window_update(stream: u32, credit: u32) -> Self {
        HubMessage::WindowUpdate { stream, credit }
    }

    fn kind(&self) -> FrameType {
        match self {
            HubMessage::Config(_) => FrameType::Config,
            HubMessage::Ping(_) => FrameType::Ping,
            HubMessage::Pong(_) => FrameType::Pong,
            HubMessage::UdpClose { .. } => FrameType::UdpClose,
            HubMessage::GoAway => FrameType::GoAway,
            HubMessage::OpenAck { .. } => FrameType::OpenAck,
            HubMessage::WindowUpdate { .. } => FrameType::WindowUpdateBack,
        }
    }

    fn session(&self) -> u32 {
        match self {
            HubMessage::Config(_)
            | HubMessage::Ping(_)
            | HubMessage::Pong(_)
            | HubMessage::GoAway => 0,
            HubMessage::UdpClose { session } => *session,
            HubMessage::OpenAck { stream } | HubMessage::WindowUpdate { stream, .. } => *stream,
        }
    }

    fn payload(&self) -> Bytes {
        match self {
            HubMessage::Config(config) => Bytes::from(encode_config(config)),
            HubMessage::Ping(payload) | HubMessage::Pong(payload) => payload.clone(),
            HubMessage::UdpClose { .. } | HubMessage::GoAway | HubMessage::OpenAck { .. } => {
                Bytes::new()
            }
            HubMessage::WindowUpdate { credit, .. } => {
                Bytes::copy_from_slice(&credit.to_be_bytes())
            }
        }
    }

    fn decode(kind: FrameType, session: u32, payload: Bytes) -> Result<Self, FrameError> {
        Ok(match kind {
            FrameType::Config => HubMessage::Config(parse_config(&payload)?),
            FrameType::Ping => HubMessage::Ping(decode_ping(payload)?),
            FrameType::Pong => HubMessage::Pong(decode_ping(payload)?),
            FrameType::UdpClose => HubMessage::UdpClose { session },
            FrameType::GoAway if payload.is_empty() => HubMessage::GoAway,
            FrameType::GoAway => {
                return Err(FrameError::BadGoAway {
                    expected: 0,
                    len: payload.len(),
                })
            }
            FrameType::OpenAck if payload.is_empty() => HubMessage::OpenAck { stream: session },
            FrameType::OpenAck => return Err(FrameError::BadOpenAck { len: payload.len() }),
            FrameType::WindowUpdateBack => HubMessage::WindowUpdate {
                stream: session,
                credit: decode_window_credit(&payload)?,
            },
            other => return Err(FrameError::Unexpected(other)),
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::handshake::HandshakeError;
    use std::net::SocketAddr;

    /// Client and edge addresses of one UDP session, for tests here and in `quic_messages`.
    pub(crate) fn addresses() -> ProxyAddresses {
        ProxyAddresses {
            source: "203.0.113.7:5353".parse::<SocketAddr>().unwrap(),
            destination: "198.51.100.1:53".parse::<SocketAddr>().unwrap(),
        }
    }

    fn round_trip<M: ControlMessage + PartialEq>(message: M) {
        let decoded = M::decode(message.kind(), message.session(), message.payload());
        assert_eq!(decoded.as_ref(), Ok(&message));
    }

    #[test]
    fn every_message_round_trips_in_its_own_direction() {
        round_trip(EdgeMessage::Ping(Bytes::from_static(&[1; 8])));
        round_trip(EdgeMessage::Pong(Bytes::new()));
        round_trip(EdgeMessage::UdpOpen(UdpOpen::new(7, addresses())));
        round_trip(EdgeMessage::UdpClose { session: 9 });
        round_trip(HubMessage::Config(EdgeConfig {
            listen_ports: vec![80, 443],
            listen_ports_udp: vec![53],
            ..EdgeConfig::default()
        }));
        round_trip(HubMessage::Ping(Bytes::from_static(&[3; 4])));
        round_trip(HubMessage::Pong(Bytes::from_static(&[4; 64])));
        round_trip(HubMessage::UdpClose { session: u32::MAX });
        round_trip(HubMessage::GoAway);
        round_trip(EdgeMessage::GoAway { last_id: 0 });
        round_trip(EdgeMessage::GoAway {
            last_id: 0x0102_0304,
        });
        round_trip(EdgeMessage::WindowUpdate {
            stream: 4,
            credit: 1,
        });
        round_trip(HubMessage::WindowUpdate {
            stream: u32::MAX,
            credit: 0x7fff_ffff,
        });
    }

    #[test]
    fn window_update_payloads_are_a_nonzero_credit() {
        let update = HubMessage::WindowUpdate {
            stream: 9,
            credit: 0x0102_0304,
        };
        assert_eq!(update.kind(), FrameType::WindowUpdateBack);
        assert_eq!(
            (update.session(), &update.payload()[..]),
            (9, &[1, 2, 3, 4][..])
        );
        assert_eq!(
            EdgeMessage::decode(FrameType::WindowUpdate, 1, Bytes::from_static(&[0; 4])),
            Err(FrameError::ZeroWindowUpdate)
        );
        assert_eq!(
            HubMessage::decode(FrameType::WindowUpdateBack, 1, Bytes::from_static(&[0, 1])),
            Err(FrameError::BadWindowUpdate { len: 2 })
        );
    }

    #[test]
    fn goaway_payloads_are_exact() {
        assert_eq!(
            &EdgeMessage::GoAway {
                last_id: 0x0102_0304
            }
            .payload()[..],
            [1, 2, 3, 4]
        );
        assert!(HubMessage::GoAway.payload().is_empty());
        assert_eq!(
            EdgeMessage::decode(FrameType::GoAway, 0, Bytes::from_static(&[1, 2, 3])),
            Err(FrameError::BadGoAway {
                expected: 4,
                len: 3
            })
        );
        assert_eq!(
            HubMessage::decode(FrameType::GoAway, 0, Bytes::from_static(&[0])),
            Err(FrameError::BadGoAway {
                expected: 0,
                len: 1
            })
        );
    }

    #[test]
    fn a_message_only_the_other_end_sends_is_refused() {
        let config = Bytes::from_static(br#"{"listenPorts":[80]}"#);
        assert_eq!(
            EdgeMessage::decode(FrameType::Config, 0, config),
            Err(FrameError::Unexpected(FrameType::Config))
        );
        let open = UdpOpen::new(1, addresses()).header;
        assert_eq!(
            HubMessage::decode(FrameType::UdpOpen, 1, open),
            Err(FrameError::Unexpected(FrameType::UdpOpen))
        );
        let credit = Bytes::from_static(&[0, 1, 0, 0]);
        for kind in [
            FrameType::Open,
            FrameType::Data,
            FrameType::WindowUpdateBack,
        ] {
            assert_eq!(
                EdgeMessage::decode(kind, 1, credit.clone()),
                Err(FrameError::Unexpected(kind))
            );
        }
        for kind in [FrameType::DataBack, FrameType::WindowUpdate] {
            assert_eq!(
                HubMessage::decode(kind, 1, credit.clone()),
                Err(FrameError::Unexpected(kind))
            );
        }
    }

    #[test]
    fn payloads_are_checked() {
        assert_eq!(
            EdgeMessage::decode(FrameType::Ping, 0, Bytes::from_static(&[0; 65])),
            Err(FrameError::BadPing { len: 65 })
        );
        assert_eq!(
            HubMessage::decode(FrameType::Pong, 0, Bytes::from(vec![0; 1000])),
            Err(FrameError::BadPing { len: 1000 })
        );
        // A stream header, trailing bytes, or no header at all: not a UDP open.
        let stream = Bytes::from(encode_v2(ProxyTransport::Stream, &addresses()));
        let mut trailing = UdpOpen::new(4, addresses()).header.to_vec();
        trailing.push(0);
        for header in [stream, Bytes::from(trailing), Bytes::new()] {
            assert_eq!(
                EdgeMessage::decode(FrameType::UdpOpen, 4, header),
                Err(FrameError::BadUdpOpen { session: 4 })
            );
        }
        assert_eq!(
            HubMessage::decode(FrameType::Config, 0, Bytes::from_static(b"[]")),
            Err(FrameError::BadConfig(HandshakeError::Malformed(
                "JSON is not an object"
            )))
        );
    }

    #[test]
    fn udp_opens_carry_their_addresses_as_a_proxy_v2_datagram_header() {
        let open = UdpOpen::new(12, addresses());
        assert_eq!(
            &open.header[..],
            &encode_v2(ProxyTransport::Datagram, &addresses())[..]
        );
        assert_eq!(parse_open_header(&open.header), Some(addresses()));
        let message = EdgeMessage::UdpOpen(open.clone());
        assert_eq!(message.udp_open(), Some(&open));
        assert_eq!(
            (message.kind(), message.session()),
            (FrameType::UdpOpen, 12)
        );
    }
}
