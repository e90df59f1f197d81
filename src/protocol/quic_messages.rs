//! What the QUIC transport puts on the wire besides the handshake lines: control messages,
//! datagrams, and the stream that carries a datagram too large for a QUIC datagram.
//!
//! - Control stream (the first bidirectional stream the edge opens), after the handshake lines:
//!   `[type u8][len u32 BE][payload]`, types as in [`FrameType`]: CONFIG, PING and PONG as in
//!   the frame protocol, UDP_OPEN `[session u32][PROXY v2]` and UDP_CLOSE `[session u32]`,
//!   OPEN_ACK `[stream u32]`, WINDOW_UPDATE (edge) and WINDOW_UPDATE_BACK (hub)
//!   `[stream u32][credit u32]`, a stream named by its QUIC stream index.
//! - Datagram: `[session u32][payload]`. A session opens with `[session u32][0xFF][PROXY v2]`;
//!   the edge also registers every open on the control stream, so an open survives the loss
//!   of its datagram. A datagram for a known session is data whatever its first byte, except
//!   an exact repeat of that session's open.
//! - Oversized datagram: a unidirectional stream holding `[session u32][payload]`, then FIN.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::control::{parse_open_header, ControlMessage};
use super::frame::{FrameError, FrameType, MAX_FRAME_PAYLOAD};
use super::proxy::ProxyAddresses;

/// Control message header: type (1) + length (4).
pub const CONTROL_HEADER_LEN: usize = 5;
/// Largest control payload accepted (peer-forceable): room for a CONFIG listing every port.
pub const MAX_CONTROL_PAYLOAD: usize = MAX_FRAME_PAYLOAD;
/// Every datagram, and every oversized-datagram stream, starts with the session id.
pub const SESSION_ID_LEN: usize = 4;
/// First payload byte of a datagram that opens a session.
pub const OPEN_MARKER: u8 = 0xFF;
/// Largest UDP payload, so the largest oversized-datagram stream is this plus the session id.
pub const MAX_UDP_PAYLOAD: usize = 65_535;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuicWireError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{0:?} is not a control message")]
    NotControl(FrameType),
    #[error("{kind:?} payload of {len} bytes is malformed")]
    BadPayload { kind: FrameType, len: usize },
    #[error("datagram of {0} bytes is shorter than a session id")]
    ShortDatagram(usize),
}

/// Whether a message of this type names a UDP session (or, OPEN_ACK and the window updates, a
/// connection stream) at the front of its payload.
fn carries_session(kind: FrameType) -> bool {
    matches!(
        kind,
        FrameType::UdpOpen
            | FrameType::UdpClose
            | FrameType::OpenAck
            | FrameType::WindowUpdate
            | FrameType::WindowUpdateBack
    )
}

/// Appends `message` as the control stream carries it: `[type][len][session?][payload]`.
pub fn encode_control(message: &impl ControlMessage, dst: &mut BytesMut) {
    let kind = message.kind();
    let payload = message.payload();
    let session_len = if carries_session(kind) {
        SESSION_ID_LEN
    } else {
        0
    };
    let payload_len = session_len + payload.len();
    dst.reserve(CONTROL_HEADER_LEN + payload_len);
    dst.put_u8(kind.into());
    // Our own messages stay far below 4 GiB: a CONFIG is bounded by the port count.
    dst.put_u32(u32::try_from(payload_len).unwrap_or(u32::MAX));
    if session_len > 0 {
        dst.put_u32(message.session());
    }
    dst.put_slice(&payload);
}

/// Takes one complete control message off the front of `buf`, decoded for the direction `M`
/// travels in. `Ok(None)` = need more bytes (buf untouched). A bad type or length is an error
/// as soon as the header is present.
pub fn decode_control<M: ControlMessage>(buf: &mut BytesMut) -> Result<Option<M>, QuicWireError> {
    let Some(&[type_byte, l0, l1, l2, l3]) = buf.first_chunk::<CONTROL_HEADER_LEN>() else {
        return Ok(None);
    };
    let kind = FrameType::try_from(type_byte)?;
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    let payload_len = match usize::try_from(len) {
        Ok(n) if n <= MAX_CONTROL_PAYLOAD => n,
        _ => return Err(FrameError::Oversize { len }.into()),
    };
    if !matches!(
        kind,
        FrameType::Config
            | FrameType::Ping
            | FrameType::Pong
            | FrameType::UdpOpen
            | FrameType::UdpClose
            | FrameType::GoAway
            | FrameType::OpenAck
            | FrameType::WindowUpdate
            | FrameType::WindowUpdateBack
    ) {
        return Err(QuicWireError::NotControl(kind));
    }
    if buf.len() < CONTROL_HEADER_LEN + payload_len {
        return Ok(None);
    }
    buf.advance(CONTROL_HEADER_LEN);
    let mut payload = buf.split_to(payload_len).freeze();
    let bad = || QuicWireError::BadPayload {
        kind,
        len: payload_len,
    };
    let session = if carries_session(kind) {
        if payload.len() < SESSION_ID_LEN {
            return Err(bad());
        }
        payload.get_u32()
    } else {
        0
    };
    if matches!(kind, FrameType::UdpClose | FrameType::OpenAck) && !payload.is_empty() {
        return Err(bad());
    }
    Ok(Some(M::decode(kind, session, payload).map_err(
        |e| match e {
            FrameError::BadPing { .. } => bad(),
            other => QuicWireError::Frame(other),
        },
    )?))
}

/// `[session][payload]`, as a datagram or as the content of an oversized-datagram stream.
pub fn encode_datagram(session: u32, payload: &[u8]) -> Bytes {
    let mut datagram = BytesMut::with_capacity(SESSION_ID_LEN + payload.len());
    datagram.put_u32(session);
    datagram.put_slice(payload);
    datagram.freeze()
}

/// `[session][0xFF][PROXY v2 header]`.
pub fn encode_open_datagram(session: u32, header: &[u8]) -> Bytes {
    let mut datagram = BytesMut::with_capacity(SESSION_ID_LEN + 1 + header.len());
    datagram.put_u32(session);
    datagram.put_u8(OPEN_MARKER);
    datagram.put_slice(header);
    datagram.freeze()
}

/// Splits a datagram into its session id and the rest (zero-copy).
pub fn split_datagram(mut datagram: Bytes) -> Result<(u32, Bytes), QuicWireError> {
    if datagram.len() < SESSION_ID_LEN {
        return Err(QuicWireError::ShortDatagram(datagram.len()));
    }
    let session = datagram.get_u32();
    Ok((session, datagram))
}

/// The addresses of an open (the rest of a datagram after the session id, or a UDP_OPEN
/// header), or `None` when `rest` is not exactly a marker and a PROXY v2 datagram header.
pub fn parse_open(rest: &[u8]) -> Option<ProxyAddresses> {
    match rest.split_first() {
        Some((&OPEN_MARKER, header)) => parse_open_header(header),
        _ => None,
    }
}

/// Whether `rest` (a datagram after its session id) is an exact repeat of the open whose
/// PROXY header was `header`, rather than data.
pub fn is_repeated_open(rest: &[u8], header: &[u8]) -> bool {
    rest.split_first()
        .is_some_and(|(&marker, tail)| marker == OPEN_MARKER && tail == header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::control::tests::addresses;
    use crate::protocol::control::{EdgeMessage, HubMessage, UdpOpen};
    use crate::protocol::handshake::EdgeConfig;
    use crate::protocol::proxy::{encode_v2, ProxyTransport};

    #[test]
    fn control_messages_are_byte_exact() {
        let mut buf = BytesMut::new();
        encode_control(
            &EdgeMessage::Ping(Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8])),
            &mut buf,
        );
        encode_control(
            &EdgeMessage::UdpClose {
                session: 0x0102_0304,
            },
            &mut buf,
        );
        let open = UdpOpen {
            session: 9,
            addresses: addresses(),
            header: Bytes::from_static(b"hdr"),
        };
        encode_control(&EdgeMessage::UdpOpen(open), &mut buf);
        encode_control(&HubMessage::Pong(Bytes::from_static(&[8; 8])), &mut buf);
        encode_control(&HubMessage::OpenAck { stream: 0x0506 }, &mut buf);
        encode_control(
            &EdgeMessage::WindowUpdate {
                stream: 0x0506,
                credit: 0x0001_0000,
            },
            &mut buf,
        );
        encode_control(
            &HubMessage::WindowUpdate {
                stream: 1,
                credit: 0x0A0B_0C0D,
            },
            &mut buf,
        );
        assert_eq!(
            &buf[..],
            &[
                0x07, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, //
                0x0E, 0, 0, 0, 4, 1, 2, 3, 4, //
                0x0B, 0, 0, 0, 7, 0, 0, 0, 9, b'h', b'd', b'r', //
                0x08, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8, 8, //
                0x10, 0, 0, 0, 4, 0, 0, 5, 6, //
                0x09, 0, 0, 0, 8, 0, 0, 5, 6, 0, 1, 0, 0, //
                0x0A, 0, 0, 0, 8, 0, 0, 0, 1, 0x0A, 0x0B, 0x0C, 0x0D,
            ][..]
        );
    }

    fn round_trip_one_byte_at_a_time<M: ControlMessage + PartialEq>(messages: &[M]) {
        let mut wire = BytesMut::new();
        for message in messages {
            encode_control(message, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(message) = decode_control::<M>(&mut buf).unwrap() {
                decoded.push(message);
            }
        }
        assert_eq!(decoded, messages);
        assert!(buf.is_empty());
    }

    #[test]
    fn control_messages_round_trip_one_byte_at_a_time() {
        round_trip_one_byte_at_a_time(&[
            HubMessage::Config(EdgeConfig {
                listen_ports: vec![80],
                ..EdgeConfig::default()
            }),
            HubMessage::Ping(Bytes::from_static(&[9; 8])),
            HubMessage::Pong(Bytes::from_static(&[7; 8])),
            HubMessage::UdpClose { session: u32::MAX },
            HubMessage::OpenAck { stream: 7 },
            HubMessage::WindowUpdate {
                stream: 7,
                credit: 65_536,
            },
        ]);
        round_trip_one_byte_at_a_time(&[
            EdgeMessage::Ping(Bytes::from_static(&[9; 8])),
            EdgeMessage::UdpOpen(UdpOpen::new(3, addresses())),
            EdgeMessage::UdpClose { session: 4 },
            EdgeMessage::Pong(Bytes::from_static(&[7; 8])),
            EdgeMessage::WindowUpdate {
                stream: 1,
                credit: u32::MAX,
            },
        ]);
    }

    /// Each message's bytes, decoded for the direction `M` travels in, fail with its error.
    fn assert_refused<'a, M: ControlMessage + PartialEq>(
        cases: impl IntoIterator<Item = (&'a [u8], QuicWireError)>,
    ) {
        for (bytes, expected) in cases {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(decode_control::<M>(&mut buf), Err(expected), "{bytes:?}");
        }
    }

    #[test]
    fn control_decoder_refuses_bad_types_lengths_payloads_and_directions() {
        // A PING of 65 bytes: one more than any PING payload may have.
        let long_ping: Vec<u8> = [0x07, 0, 0, 0, 65].into_iter().chain([0; 65]).collect();
        let cases: [(&[u8], QuicWireError); 7] = [
            (&[0x42, 0, 0, 0, 0], FrameError::UnknownType(0x42).into()),
            (
                &[0x02, 0, 0, 0, 1, 0],
                QuicWireError::NotControl(FrameType::Data),
            ),
            (
                &[0x06, 0, 0x10, 0, 1],
                FrameError::Oversize { len: 0x0010_0001 }.into(),
            ),
            (
                &long_ping,
                QuicWireError::BadPayload {
                    kind: FrameType::Ping,
                    len: 65,
                },
            ),
            (
                &[0x0E, 0, 0, 0, 5, 0, 0, 0, 1, 0],
                QuicWireError::BadPayload {
                    kind: FrameType::UdpClose,
                    len: 5,
                },
            ),
            (
                &[0x0B, 0, 0, 0, 2, 0, 0],
                QuicWireError::BadPayload {
                    kind: FrameType::UdpOpen,
                    len: 2,
                },
            ),
            // CONFIG travels from the hub only.
            (
                &[0x06, 0, 0, 0, 2, b'{', b'}'],
                FrameError::Unexpected(FrameType::Config).into(),
            ),
        ];
        assert_refused::<EdgeMessage>(cases);
        // OPEN_ACK names a stream and nothing more, and travels from the hub only.
        let mut long_ack = BytesMut::from(&[0x10, 0, 0, 0, 5, 0, 0, 0, 1, 0][..]);
        assert_eq!(
            decode_control::<HubMessage>(&mut long_ack),
            Err(QuicWireError::BadPayload {
                kind: FrameType::OpenAck,
                len: 5,
            })
        );
        let mut ack = BytesMut::from(&[0x10, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(
            decode_control::<EdgeMessage>(&mut ack),
            Err(FrameError::Unexpected(FrameType::OpenAck).into())
        );
        // A window update names a stream and grants a nonzero credit, in its own direction.
        let window_updates: [(&[u8], QuicWireError); 4] = [
            (
                &[0x0A, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
                FrameError::ZeroWindowUpdate.into(),
            ),
            (
                &[0x0A, 0, 0, 0, 6, 0, 0, 0, 1, 0, 1],
                FrameError::BadWindowUpdate { len: 2 }.into(),
            ),
            (
                &[0x0A, 0, 0, 0, 3, 0, 0, 1],
                QuicWireError::BadPayload {
                    kind: FrameType::WindowUpdateBack,
                    len: 3,
                },
            ),
            (
                &[0x09, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1],
                FrameError::Unexpected(FrameType::WindowUpdate).into(),
            ),
        ];
        assert_refused::<HubMessage>(window_updates);
        // UDP_OPEN travels from the edge only.
        let mut open = BytesMut::new();
        encode_control(
            &EdgeMessage::UdpOpen(UdpOpen::new(1, addresses())),
            &mut open,
        );
        assert_eq!(
            decode_control::<HubMessage>(&mut open),
            Err(FrameError::Unexpected(FrameType::UdpOpen).into())
        );
        // An oversized length is refused from the header alone.
        let mut header_only = BytesMut::from(&[0x06, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(decode_control::<HubMessage>(&mut header_only).is_err());
        let mut partial = BytesMut::from(&[0x07, 0, 0, 0, 8, 1][..]);
        assert_eq!(decode_control::<HubMessage>(&mut partial), Ok(None));
        assert_eq!(partial.len(), 6);
    }

    #[test]
    fn datagrams_split_into_session_and_payload() {
        let datagram = encode_datagram(0xA1B2_C3D4, b"\xFFpayload");
        assert_eq!(&datagram[..5], &[0xA1, 0xB2, 0xC3, 0xD4, 0xFF]);
        let (session, rest) = split_datagram(datagram).unwrap();
        assert_eq!(session, 0xA1B2_C3D4);
        assert_eq!(&rest[..], b"\xFFpayload");
        assert_eq!(
            split_datagram(Bytes::from_static(&[1, 2, 3])),
            Err(QuicWireError::ShortDatagram(3))
        );
        let (session, rest) = split_datagram(Bytes::from_static(&[0, 0, 0, 5])).unwrap();
        assert_eq!((session, rest.len()), (5, 0));
    }

    #[test]
    fn open_datagrams_carry_a_whole_proxy_v2_header() {
        let header = encode_v2(ProxyTransport::Datagram, &addresses());
        let open = encode_open_datagram(12, &header);
        assert_eq!(&open[..5], &[0, 0, 0, 12, OPEN_MARKER]);
        let (session, rest) = split_datagram(open).unwrap();
        assert_eq!(session, 12);
        assert_eq!(parse_open(&rest), Some(addresses()));
        assert!(is_repeated_open(&rest, &header));
        // Data that merely starts with the marker is not an open, nor a repeat.
        assert_eq!(parse_open(b"\xFFhello"), None);
        assert!(!is_repeated_open(b"\xFFhello", &header));
        // Trailing bytes, a stream header, or a missing marker are not opens.
        let mut trailing = rest.to_vec();
        trailing.push(0);
        assert_eq!(parse_open(&trailing), None);
        let stream = encode_v2(ProxyTransport::Stream, &addresses());
        assert_eq!(parse_open_header(&stream), None);
        assert_eq!(parse_open(&header), None);
        assert_eq!(parse_open(&[]), None);
    }
}
