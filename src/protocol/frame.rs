//! Multiplexing frames carried inside the tunnel.
//!
//! Wire format: `[stream_id u32 BE][type u8][len u32 BE][payload; len]`.
//! Stream 0 ([`CONTROL_STREAM_ID`]) carries tunnel-wide control frames
//! (CONFIG, PING, PONG); every other stream id names one proxied connection.

use bytes::{BufMut, Bytes, BytesMut};

use super::control::{ControlMessage, Direction, EdgeMessage, HubMessage};
use super::handshake::HandshakeError;
use super::proxy::{parse_v1, ProxyAddresses, ProxyHeader};

/// Size of the fixed frame header: stream id (4) + type (1) + length (4).
pub const FRAME_HEADER_LEN: usize = 9;
/// Largest DATA payload we send: small enough that one busy stream cannot
/// hold the shared tunnel for long, large enough to amortise the header.
pub const MAX_DATA_PAYLOAD: usize = 64 * 1024;
/// Largest payload a receiver accepts (peer-forceable): bounds the memory one
/// frame can make us buffer; room for a CONFIG frame listing every port.
pub const MAX_FRAME_PAYLOAD: usize = 1024 * 1024;
/// Stream id reserved for tunnel-wide control frames.
pub const CONTROL_STREAM_ID: u32 = 0;
/// WINDOW_UPDATE payload: one u32 BE credit.
pub const WINDOW_CREDIT_LEN: usize = 4;
/// The PING payload we send: the time in milliseconds, u64 BE, echoed back by the peer.
pub const PING_NONCE_LEN: usize = 8;
/// Longest PING/PONG payload accepted and echoed. Neither dialect fixes a length (4.13
/// documents none), so any opaque payload up to this is read.
pub const MAX_PING_PAYLOAD: usize = 64;

/// Frame types. Names ending in `Back` flow hub -> edge; the others
/// edge -> hub (PING/PONG/CONFIG are control frames on stream 0).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    Open = 0x01,
    Data = 0x02,
    Close = 0x03,
    DataBack = 0x04,
    CloseBack = 0x05,
    Config = 0x06,
    Ping = 0x07,
    Pong = 0x08,
    WindowUpdate = 0x09,
    WindowUpdateBack = 0x0A,
    UdpOpen = 0x0B,
    UdpData = 0x0C,
    UdpDataBack = 0x0D,
    UdpClose = 0x0E,
    /// Drain (`remoteingress/1` only): from the hub, open nothing more on this tunnel; the
    /// edge's answer gives the last id it opened.
    GoAway = 0x0F,
    /// (`remoteingress/1` only) The hub has taken stream `id`, before it reaches the target:
    /// from then on the edge no longer keeps what it sent there to carry it again.
    OpenAck = 0x10,
}

impl TryFrom<u8> for FrameType {
    type Error = FrameError;

    fn try_from(byte: u8) -> Result<Self, FrameError> {
        Ok(match byte {
            0x01 => FrameType::Open,
            0x02 => FrameType::Data,
            0x03 => FrameType::Close,
            0x04 => FrameType::DataBack,
            0x05 => FrameType::CloseBack,
            0x06 => FrameType::Config,
            0x07 => FrameType::Ping,
            0x08 => FrameType::Pong,
            0x09 => FrameType::WindowUpdate,
            0x0A => FrameType::WindowUpdateBack,
            0x0B => FrameType::UdpOpen,
            0x0C => FrameType::UdpData,
            0x0D => FrameType::UdpDataBack,
            0x0E => FrameType::UdpClose,
            0x0F => FrameType::GoAway,
            0x10 => FrameType::OpenAck,
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

impl FrameType {
    /// The one direction this type travels in; `None` for PING, PONG and UDP_CLOSE, which
    /// both ends send.
    pub fn direction(self) -> Option<Direction> {
        match self {
            FrameType::Open
            | FrameType::Data
            | FrameType::Close
            | FrameType::WindowUpdate
            | FrameType::UdpOpen
            | FrameType::UdpData => Some(Direction::EdgeToHub),
            FrameType::DataBack
            | FrameType::CloseBack
            | FrameType::WindowUpdateBack
            | FrameType::Config
            | FrameType::UdpDataBack
            | FrameType::OpenAck => Some(Direction::HubToEdge),
            FrameType::Ping | FrameType::Pong | FrameType::UdpClose | FrameType::GoAway => None,
        }
    }

    /// Whether frames of this type are about the whole tunnel rather than one stream or
    /// UDP session (and so ride stream 0).
    pub fn is_tunnel_wide(self) -> bool {
        matches!(
            self,
            FrameType::Config | FrameType::Ping | FrameType::Pong | FrameType::GoAway
        )
    }
}

impl From<FrameType> for u8 {
    fn from(frame_type: FrameType) -> u8 {
        // Lossless: the enum is #[repr(u8)].
        frame_type as u8
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub stream_id: u32,
    pub frame_type: FrameType,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame payload of {len} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte limit")]
    Oversize { len: u32 },
    #[error("window update payload must be {WINDOW_CREDIT_LEN} bytes, got {len}")]
    BadWindowUpdate { len: usize },
    #[error("window update with zero credit")]
    ZeroWindowUpdate,
    #[error("ping/pong payload of {len} bytes exceeds {MAX_PING_PAYLOAD} bytes")]
    BadPing { len: usize },
    /// A frame only the other end sends.
    #[error("unexpected {0:?} frame")]
    Unexpected(FrameType),
    #[error("{0:?} frame on stream 0")]
    OnControlStream(FrameType),
    #[error("OPEN for stream {stream} does not carry a PROXY v1 line with addresses")]
    BadOpen { stream: u32 },
    #[error("UDP_OPEN for session {session} does not carry a PROXY v2 datagram header")]
    BadUdpOpen { session: u32 },
    #[error("bad CONFIG: {0}")]
    BadConfig(#[from] HandshakeError),
    #[error("GOAWAY payload must be {expected} bytes, got {len}")]
    BadGoAway { expected: usize, len: usize },
    #[error("OPEN_ACK payload must be empty, got {len} bytes")]
    BadOpenAck { len: usize },
}

/// A frame's fixed header, checked: a known type and a length within [`MAX_FRAME_PAYLOAD`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub stream_id: u32,
    pub frame_type: FrameType,
    pub payload_len: usize,
}

/// Reads the header at the front of `buf`, leaving `buf` as it is.
///
/// `Ok(None)` = fewer than 9 bytes so far. An unknown type or a length above
/// [`MAX_FRAME_PAYLOAD`] is an error as soon as the header is present, so a
/// hostile length is refused before its payload is buffered.
pub fn decode_header(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let Some(&[s0, s1, s2, s3, type_byte, l0, l1, l2, l3]) = buf.first_chunk::<FRAME_HEADER_LEN>()
    else {
        return Ok(None);
    };
    let frame_type = FrameType::try_from(type_byte)?;
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    let payload_len = match usize::try_from(len) {
        Ok(n) if n <= MAX_FRAME_PAYLOAD => n,
        _ => return Err(FrameError::Oversize { len }),
    };
    Ok(Some(FrameHeader {
        stream_id: u32::from_be_bytes([s0, s1, s2, s3]),
        frame_type,
        payload_len,
    }))
}

/// Takes one complete frame off the front of `buf` (payload split off
/// zero-copy with `split_to().freeze()`).
///
/// `Ok(None)` = need more bytes (buf untouched); errors as [`decode_header`].
#[cfg(any(test, fuzzing))]
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    use bytes::Buf;
    let Some(header) = decode_header(buf)? else {
        return Ok(None);
    };
    // Cannot overflow: payload_len <= MAX_FRAME_PAYLOAD.
    if buf.len() < FRAME_HEADER_LEN + header.payload_len {
        return Ok(None);
    }
    buf.advance(FRAME_HEADER_LEN);
    let payload = buf.split_to(header.payload_len).freeze();
    Ok(Some(Frame {
        stream_id: header.stream_id,
        frame_type: header.frame_type,
        payload,
    }))
}

/// Appends header + payload to `dst`.
///
/// Frames are built locally, so an oversize payload is a caller bug: the
/// debug assertion catches it in tests; release builds send it and the peer
/// rejects it as [`FrameError::Oversize`].
#[cfg(any(test, fuzzing))]
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    debug_assert!(frame.payload.len() <= MAX_FRAME_PAYLOAD);
    // Saturate rather than truncate so a bug can never desynchronise framing
    // silently: the receiver sees an oversize length and fails the tunnel.
    let len = u32::try_from(frame.payload.len()).unwrap_or(u32::MAX);
    dst.reserve(FRAME_HEADER_LEN + frame.payload.len());
    encode_header(frame.stream_id, frame.frame_type, len, dst);
    dst.put_slice(&frame.payload);
}

/// Appends only the 9-byte header, for callers that write the payload
/// separately (e.g. vectored writes straight from a read buffer).
pub fn encode_header(stream_id: u32, frame_type: FrameType, payload_len: u32, dst: &mut BytesMut) {
    dst.reserve(FRAME_HEADER_LEN);
    dst.put_u32(stream_id);
    dst.put_u8(frame_type.into());
    dst.put_u32(payload_len);
}

impl Frame {
    pub fn new(stream_id: u32, frame_type: FrameType, payload: Bytes) -> Frame {
        Frame {
            stream_id,
            frame_type,
            payload,
        }
    }

    /// `frame_type` must be [`FrameType::WindowUpdate`] or
    /// [`FrameType::WindowUpdateBack`]; payload is the credit as u32 BE.
    pub fn window_update(stream_id: u32, frame_type: FrameType, credit: u32) -> Frame {
        debug_assert!(matches!(
            frame_type,
            FrameType::WindowUpdate | FrameType::WindowUpdateBack
        ));
        Frame::new(
            stream_id,
            frame_type,
            Bytes::copy_from_slice(&credit.to_be_bytes()),
        )
    }

    #[cfg(test)]
    pub fn ping(nonce: [u8; PING_NONCE_LEN]) -> Frame {
        Frame::new(
            CONTROL_STREAM_ID,
            FrameType::Ping,
            Bytes::copy_from_slice(&nonce),
        )
    }

    #[cfg(test)]
    pub fn pong(nonce: [u8; PING_NONCE_LEN]) -> Frame {
        Frame::new(
            CONTROL_STREAM_ID,
            FrameType::Pong,
            Bytes::copy_from_slice(&nonce),
        )
    }
}

/// WINDOW_UPDATE payload is exactly 4 bytes, u32 BE, non-zero (a zero credit
/// is meaningless and would only let a peer spin our flow-control loop).
pub fn decode_window_credit(payload: &[u8]) -> Result<u32, FrameError> {
    let bytes: [u8; WINDOW_CREDIT_LEN] = payload
        .try_into()
        .map_err(|_| FrameError::BadWindowUpdate { len: payload.len() })?;
    match u32::from_be_bytes(bytes) {
        0 => Err(FrameError::ZeroWindowUpdate),
        credit => Ok(credit),
    }
}

/// A PING/PONG payload: 0 to [`MAX_PING_PAYLOAD`] opaque bytes.
pub fn decode_ping(payload: Bytes) -> Result<Bytes, FrameError> {
    if payload.len() > MAX_PING_PAYLOAD {
        return Err(FrameError::BadPing { len: payload.len() });
    }
    Ok(payload)
}

/// Why a stream was reset (the single payload byte of a resetting CLOSE).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The port is not assigned to this edge.
    Refused = 1,
    /// Connecting to the target failed.
    Unreachable = 2,
    /// Socket error or reset.
    Aborted = 3,
    /// Too many streams.
    Limit = 4,
}

impl ResetReason {
    /// The reason for a wire byte, `None` if unknown.
    pub fn from_byte(byte: u8) -> Option<ResetReason> {
        match byte {
            1 => Some(ResetReason::Refused),
            2 => Some(ResetReason::Unreachable),
            3 => Some(ResetReason::Aborted),
            4 => Some(ResetReason::Limit),
            _ => None,
        }
    }
}

/// CLOSE / CLOSE_BACK: empty payload = half-close (FIN); a 1-byte payload =
/// reset of both directions with a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    HalfClose,
    Reset(ResetReason),
}

/// Payload for a CLOSE / CLOSE_BACK frame: empty, or `[reason]`.
pub fn close_payload(kind: CloseKind) -> Bytes {
    // Static slices: no allocation on the close path.
    match kind {
        CloseKind::HalfClose => Bytes::new(),
        CloseKind::Reset(ResetReason::Refused) => Bytes::from_static(&[1]),
        CloseKind::Reset(ResetReason::Unreachable) => Bytes::from_static(&[2]),
        CloseKind::Reset(ResetReason::Aborted) => Bytes::from_static(&[3]),
        CloseKind::Reset(ResetReason::Limit) => Bytes::from_static(&[4]),
    }
}

/// Empty = half-close; a known first byte = reset with that reason. An
/// unknown byte or a longer payload is still a reset (`Aborted`): a close is
/// never worth failing the whole tunnel over, and a newer peer may add reasons.
pub fn decode_close(payload: &[u8]) -> CloseKind {
    match payload {
        [] => CloseKind::HalfClose,
        [byte] => CloseKind::Reset(ResetReason::from_byte(*byte).unwrap_or(ResetReason::Aborted)),
        _ => CloseKind::Reset(ResetReason::Aborted),
    }
}

/// A frame about one connection stream, in either direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamFrame {
    Data { stream: u32, payload: Bytes },
    Close { stream: u32, close: CloseKind },
    WindowUpdate { stream: u32, credit: u32 },
}

/// A frame an edge sends, decoded at the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeFrame {
    /// A client connected: the stream that carries it and the client's addresses.
    Open {
        stream: u32,
        addresses: ProxyAddresses,
    },
    Stream(StreamFrame),
    UdpData {
        session: u32,
        payload: Bytes,
    },
    Control(EdgeMessage),
}

/// A frame a hub sends, decoded at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubFrame {
    Stream(StreamFrame),
    UdpData { session: u32, payload: Bytes },
    Control(HubMessage),
}

/// A frame's type checked against the direction it travels in, and its stream id against
/// what the type is about.
fn check_route(frame: &Frame, direction: Direction) -> Result<(), FrameError> {
    let kind = frame.frame_type;
    if kind.direction().is_some_and(|travels| travels != direction) {
        return Err(FrameError::Unexpected(kind));
    }
    if frame.stream_id == CONTROL_STREAM_ID && !kind.is_tunnel_wide() {
        return Err(FrameError::OnControlStream(kind));
    }
    Ok(())
}

impl EdgeFrame {
    pub fn decode(frame: Frame) -> Result<Self, FrameError> {
        check_route(&frame, Direction::EdgeToHub)?;
        let Frame {
            stream_id: id,
            frame_type,
            payload,
        } = frame;
        Ok(match frame_type {
            FrameType::Open => EdgeFrame::Open {
                stream: id,
                addresses: decode_open(id, &payload)?,
            },
            FrameType::Data => EdgeFrame::Stream(StreamFrame::Data {
                stream: id,
                payload,
            }),
            FrameType::Close => EdgeFrame::Stream(StreamFrame::Close {
                stream: id,
                close: decode_close(&payload),
            }),
            FrameType::WindowUpdate => EdgeFrame::Stream(StreamFrame::WindowUpdate {
                stream: id,
                credit: decode_window_credit(&payload)?,
            }),
            FrameType::UdpData => EdgeFrame::UdpData {
                session: id,
                payload,
            },
            control => EdgeFrame::Control(EdgeMessage::decode(control, id, payload)?),
        })
    }
}

impl HubFrame {
    pub fn decode(frame: Frame) -> Result<Self, FrameError> {
        check_route(&frame, Direction::HubToEdge)?;
        let Frame {
            stream_id: id,
            frame_type,
            payload,
        } = frame;
        Ok(match frame_type {
            FrameType::DataBack => HubFrame::Stream(StreamFrame::Data {
                stream: id,
                payload,
            }),
            FrameType::CloseBack => HubFrame::Stream(StreamFrame::Close {
                stream: id,
                close: decode_close(&payload),
            }),
            FrameType::WindowUpdateBack => HubFrame::Stream(StreamFrame::WindowUpdate {
                stream: id,
                credit: decode_window_credit(&payload)?,
            }),
            FrameType::UdpDataBack => HubFrame::UdpData {
                session: id,
                payload,
            },
            control => HubFrame::Control(HubMessage::decode(control, id, payload)?),
        })
    }
}

/// An OPEN's payload: exactly one PROXY v1 line with addresses.
fn decode_open(stream: u32, payload: &[u8]) -> Result<ProxyAddresses, FrameError> {
    match parse_v1(payload) {
        Ok(Some((ProxyHeader::Addresses(addresses), used))) if used == payload.len() => {
            Ok(addresses)
        }
        _ => Err(FrameError::BadOpen { stream }),
    }
}

/// A tunnel-wide message as a frame: a UDP session's id rides in the stream-id field.
pub fn control_frame(message: &impl ControlMessage) -> Frame {
    Frame::new(message.session(), message.kind(), message.payload())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len().is_multiple_of(2), "odd hex length");
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode(frame, &mut dst);
        dst.to_vec()
    }

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = decode(&mut buf).unwrap() {
            out.push(frame);
        }
        assert!(buf.is_empty(), "leftover bytes");
        out
    }

    /// Every frame type, for tests here and in `roundtrip_tests`.
    pub(crate) const ALL_TYPES: [FrameType; 16] = [
        FrameType::Open,
        FrameType::Data,
        FrameType::Close,
        FrameType::DataBack,
        FrameType::CloseBack,
        FrameType::Config,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::WindowUpdate,
        FrameType::WindowUpdateBack,
        FrameType::UdpOpen,
        FrameType::UdpData,
        FrameType::UdpDataBack,
        FrameType::UdpClose,
        FrameType::GoAway,
        FrameType::OpenAck,
    ];

    #[test]
    fn byte_exact_vectors_for_every_type() {
        let cases: Vec<(Frame, &str)> = vec![
            (
                Frame::new(1, FrameType::Open, Bytes::from_static(b"\x1f\x90")),
                "00000001 01 00000002 1f90",
            ),
            (
                Frame::new(7, FrameType::Data, Bytes::from_static(b"hi")),
                "00000007 02 00000002 6869",
            ),
            (
                Frame::new(7, FrameType::Close, close_payload(CloseKind::HalfClose)),
                "00000007 03 00000000",
            ),
            (
                Frame::new(0x0102_0304, FrameType::DataBack, Bytes::from_static(b"ok")),
                "01020304 04 00000002 6f6b",
            ),
            (
                Frame::new(
                    9,
                    FrameType::CloseBack,
                    close_payload(CloseKind::Reset(ResetReason::Unreachable)),
                ),
                "00000009 05 00000001 02",
            ),
            (
                Frame::new(0, FrameType::Config, Bytes::from_static(b"{}")),
                "00000000 06 00000002 7b7d",
            ),
            (
                Frame::ping([1, 2, 3, 4, 5, 6, 7, 8]),
                "00000000 07 00000008 0102030405060708",
            ),
            (
                Frame::pong([0xff; 8]),
                "00000000 08 00000008 ffffffffffffffff",
            ),
            (
                Frame::window_update(3, FrameType::WindowUpdate, 65536),
                "00000003 09 00000004 00010000",
            ),
            (
                Frame::window_update(u32::MAX, FrameType::WindowUpdateBack, 1),
                "ffffffff 0a 00000004 00000001",
            ),
            (
                Frame::new(11, FrameType::UdpOpen, Bytes::from_static(b"\x00\x35")),
                "0000000b 0b 00000002 0035",
            ),
            (
                Frame::new(11, FrameType::UdpData, Bytes::from_static(b"q")),
                "0000000b 0c 00000001 71",
            ),
            (
                Frame::new(11, FrameType::UdpDataBack, Bytes::from_static(b"r")),
                "0000000b 0d 00000001 72",
            ),
            (
                Frame::new(11, FrameType::UdpClose, Bytes::new()),
                "0000000b 0e 00000000",
            ),
            (
                Frame::new(0, FrameType::GoAway, Bytes::from_static(&[0, 0, 0, 9])),
                "00000000 0f 00000004 00000009",
            ),
            (
                Frame::new(9, FrameType::OpenAck, Bytes::new()),
                "00000009 10 00000000",
            ),
        ];
        assert_eq!(cases.len(), ALL_TYPES.len());
        for (frame, wire) in cases {
            let wire = hex(wire);
            assert_eq!(encoded(&frame), wire, "{frame:?}");
            assert_eq!(decode_all(&wire), vec![frame]);
        }
    }

    #[test]
    fn frame_type_byte_round_trip() {
        for t in ALL_TYPES {
            assert_eq!(FrameType::try_from(u8::from(t)), Ok(t));
        }
        let known: Vec<u8> = ALL_TYPES.iter().map(|&t| t.into()).collect();
        assert_eq!(known, (1..=16).collect::<Vec<u8>>());
    }

    #[test]
    fn unknown_types_rejected_from_header_alone() {
        for byte in [0x00u8, 0x11, 0xFF] {
            assert_eq!(
                FrameType::try_from(byte),
                Err(FrameError::UnknownType(byte))
            );
            // Header only, payload never arrives: still an immediate error.
            let mut buf = BytesMut::from(&[0, 0, 0, 1, byte, 0, 0, 0, 5][..]);
            assert_eq!(decode(&mut buf), Err(FrameError::UnknownType(byte)));
        }
    }

    #[test]
    fn partial_input_at_every_split_point() {
        let mut wire = BytesMut::new();
        encode(
            &Frame::new(7, FrameType::Data, Bytes::from_static(b"hello")),
            &mut wire,
        );
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &wire[..cut], "buffer modified at cut {cut}");
        }
        let mut buf = wire.clone();
        let frame = decode(&mut buf).unwrap().unwrap();
        assert_eq!(&frame.payload[..], b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_at_a_time_stream() {
        let frames = vec![
            Frame::new(1, FrameType::Open, Bytes::from_static(b"\x00\x50")),
            Frame::new(1, FrameType::Data, Bytes::from(vec![0xAB; 300])),
            Frame::new(1, FrameType::Close, Bytes::new()),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(f, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire.iter() {
            buf.put_u8(b);
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_buffer_in_order() {
        let frames = vec![
            Frame::new(5, FrameType::Data, Bytes::from_static(b"one")),
            Frame::new(6, FrameType::DataBack, Bytes::new()),
            Frame::ping(*b"12345678"),
            Frame::new(5, FrameType::Data, Bytes::from_static(b"three")),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(f, &mut wire);
        }
        assert_eq!(decode_all(&wire), frames);

        // A trailing partial frame stays in the buffer untouched.
        let mut buf = wire.clone();
        buf.put_slice(&[0, 0, 0, 9, 2, 0]);
        for f in &frames {
            assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(f));
        }
        assert_eq!(decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], &[0, 0, 0, 9, 2, 0]);
    }

    #[test]
    fn empty_payloads() {
        for t in ALL_TYPES {
            let frame = Frame::new(42, t, Bytes::new());
            let wire = encoded(&frame);
            assert_eq!(wire.len(), FRAME_HEADER_LEN);
            assert_eq!(decode_all(&wire), vec![frame]);
        }
    }

    #[test]
    fn max_payload_accepted_and_one_more_rejected() {
        let frame = Frame::new(
            3,
            FrameType::Data,
            Bytes::from(vec![0x5A; MAX_FRAME_PAYLOAD]),
        );
        let wire = encoded(&frame);
        assert_eq!(&wire[5..9], &[0x00, 0x10, 0x00, 0x00]);
        // Header alone with the maximum length: just waiting for the payload.
        let mut head = BytesMut::from(&wire[..FRAME_HEADER_LEN]);
        assert_eq!(decode(&mut head), Ok(None));
        assert_eq!(decode_all(&wire), vec![frame]);

        let over = u32::try_from(MAX_FRAME_PAYLOAD + 1).unwrap();
        let mut buf = BytesMut::new();
        encode_header(3, FrameType::Data, over, &mut buf);
        assert_eq!(decode(&mut buf), Err(FrameError::Oversize { len: over }));

        let mut buf = BytesMut::new();
        encode_header(3, FrameType::Data, u32::MAX, &mut buf);
        assert_eq!(
            decode(&mut buf),
            Err(FrameError::Oversize { len: u32::MAX })
        );
    }

    #[test]
    fn encode_header_matches_encode() {
        let frame = Frame::new(77, FrameType::UdpData, Bytes::from_static(b"abc"));
        let mut split = BytesMut::new();
        encode_header(77, FrameType::UdpData, 3, &mut split);
        split.put_slice(b"abc");
        assert_eq!(&split[..], &encoded(&frame)[..]);
    }

    #[test]
    fn window_credit() {
        assert_eq!(decode_window_credit(&[0, 0, 0, 1]), Ok(1));
        assert_eq!(decode_window_credit(&[0xff; 4]), Ok(u32::MAX));
        assert_eq!(
            decode_window_credit(&[0, 0, 0, 0]),
            Err(FrameError::ZeroWindowUpdate)
        );
        for len in [0usize, 3, 5, 8] {
            assert_eq!(
                decode_window_credit(&vec![1; len]),
                Err(FrameError::BadWindowUpdate { len })
            );
        }
        for credit in [1u32, 4096, MAX_DATA_PAYLOAD as u32, u32::MAX] {
            let f = Frame::window_update(1, FrameType::WindowUpdateBack, credit);
            assert_eq!(decode_window_credit(&f.payload), Ok(credit));
        }
    }

    #[test]
    fn ping_payload() {
        let nonce = [9, 8, 7, 6, 5, 4, 3, 2];
        assert_eq!(
            decode_ping(Frame::ping(nonce).payload),
            Ok(Bytes::copy_from_slice(&nonce))
        );
        assert_eq!(
            decode_ping(Frame::pong(nonce).payload),
            Ok(Bytes::copy_from_slice(&nonce))
        );
        assert_eq!(Frame::ping(nonce).stream_id, CONTROL_STREAM_ID);
        assert_eq!(Frame::pong(nonce).frame_type, FrameType::Pong);
        // Any length up to the limit is read as it is (4.13 fixes none).
        for len in [0usize, 4, 7, 9, MAX_PING_PAYLOAD] {
            let payload = Bytes::from(vec![len as u8; len]);
            assert_eq!(decode_ping(payload.clone()), Ok(payload));
        }
        for len in [MAX_PING_PAYLOAD + 1, 1024] {
            assert_eq!(
                decode_ping(Bytes::from(vec![0; len])),
                Err(FrameError::BadPing { len })
            );
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_payload(CloseKind::HalfClose), Bytes::new());
        for (reason, byte) in [
            (ResetReason::Refused, 1u8),
            (ResetReason::Unreachable, 2),
            (ResetReason::Aborted, 3),
            (ResetReason::Limit, 4),
        ] {
            let payload = close_payload(CloseKind::Reset(reason));
            assert_eq!(&payload[..], &[byte]);
            assert_eq!(decode_close(&payload), CloseKind::Reset(reason));
            assert_eq!(ResetReason::from_byte(byte), Some(reason));
        }
        assert_eq!(decode_close(&[]), CloseKind::HalfClose);
        // Lenient: unknown reasons and longer payloads are still resets.
        for bad in [&[0u8][..], &[5], &[0xff], &[1, 2], &[0, 0, 0]] {
            assert_eq!(
                decode_close(bad),
                CloseKind::Reset(ResetReason::Aborted),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payload_is_zero_copy() {
        let mut buf = BytesMut::new();
        encode(
            &Frame::new(1, FrameType::Data, Bytes::from(vec![7u8; 1000])),
            &mut buf,
        );
        let start = buf.as_ptr() as usize;
        let frame = decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.payload.as_ptr() as usize, start + FRAME_HEADER_LEN);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            FrameError::UnknownType(0x0f).to_string(),
            "unknown frame type 0x0f"
        );
        assert_eq!(
            FrameError::Oversize { len: 1_048_577 }.to_string(),
            "frame payload of 1048577 bytes exceeds the 1048576-byte limit"
        );
    }

    fn raw(bytes: &[u8]) -> Frame {
        decode(&mut BytesMut::from(bytes)).unwrap().unwrap()
    }

    #[test]
    fn frames_decode_typed_for_the_direction_they_travel_in() {
        let line = b"PROXY TCP4 203.0.113.7 198.51.100.1 5353 443\r\n";
        let open = Frame::new(5, FrameType::Open, Bytes::from_static(line));
        assert_eq!(
            EdgeFrame::decode(open),
            Ok(EdgeFrame::Open {
                stream: 5,
                addresses: ProxyAddresses {
                    source: "203.0.113.7:5353".parse().unwrap(),
                    destination: "198.51.100.1:443".parse().unwrap(),
                },
            })
        );
        assert_eq!(
            EdgeFrame::decode(raw(&hex("00000003 02 00000002 6869"))),
            Ok(EdgeFrame::Stream(StreamFrame::Data {
                stream: 3,
                payload: Bytes::from_static(b"hi"),
            }))
        );
        assert_eq!(
            HubFrame::decode(raw(&hex("00000003 04 00000002 6869"))),
            Ok(HubFrame::Stream(StreamFrame::Data {
                stream: 3,
                payload: Bytes::from_static(b"hi"),
            }))
        );
        assert_eq!(
            HubFrame::decode(raw(&hex("00000003 05 00000001 02"))),
            Ok(HubFrame::Stream(StreamFrame::Close {
                stream: 3,
                close: CloseKind::Reset(ResetReason::Unreachable),
            }))
        );
        assert_eq!(
            EdgeFrame::decode(raw(&hex("00000003 09 00000004 00010000"))),
            Ok(EdgeFrame::Stream(StreamFrame::WindowUpdate {
                stream: 3,
                credit: 65_536,
            }))
        );
        assert_eq!(
            HubFrame::decode(raw(&hex("00000009 0D 00000001 ff"))),
            Ok(HubFrame::UdpData {
                session: 9,
                payload: Bytes::from_static(&[0xff]),
            })
        );
        assert_eq!(
            HubFrame::decode(raw(&hex("00000000 07 00000008 0102030405060708"))),
            Ok(HubFrame::Control(HubMessage::Ping(Bytes::from_static(&[
                1, 2, 3, 4, 5, 6, 7, 8
            ]))))
        );
        assert_eq!(
            HubFrame::decode(raw(&hex("00000000 07 00000000"))),
            Ok(HubFrame::Control(HubMessage::Ping(Bytes::new())))
        );
        assert_eq!(
            EdgeFrame::decode(raw(&hex("00000009 0E 00000000"))),
            Ok(EdgeFrame::Control(EdgeMessage::UdpClose { session: 9 }))
        );
        assert_eq!(
            HubFrame::decode(raw(&hex("00000005 10 00000000"))),
            Ok(HubFrame::Control(HubMessage::OpenAck { stream: 5 }))
        );
    }

    #[test]
    fn a_frame_in_the_wrong_direction_or_on_the_wrong_stream_is_a_codec_error() {
        for (bytes, expected) in [
            (
                "00000001 04 00000001 78",
                FrameError::Unexpected(FrameType::DataBack),
            ),
            (
                "00000001 06 00000002 7b7d",
                FrameError::Unexpected(FrameType::Config),
            ),
            (
                "00000001 0D 00000000",
                FrameError::Unexpected(FrameType::UdpDataBack),
            ),
            (
                "00000001 10 00000000",
                FrameError::Unexpected(FrameType::OpenAck),
            ),
            (
                "00000000 02 00000001 78",
                FrameError::OnControlStream(FrameType::Data),
            ),
            (
                "00000000 0B 00000000",
                FrameError::OnControlStream(FrameType::UdpOpen),
            ),
            (
                "00000001 01 00000003 474554",
                FrameError::BadOpen { stream: 1 },
            ),
            (
                "00000002 0B 00000003 686472",
                FrameError::BadUdpOpen { session: 2 },
            ),
            (
                &format!("00000000 07 00000041 {}", "00".repeat(65)),
                FrameError::BadPing { len: 65 },
            ),
        ] {
            assert_eq!(
                EdgeFrame::decode(raw(&hex(bytes))),
                Err(expected),
                "{bytes}"
            );
        }
        for (bytes, expected) in [
            (
                "00000001 02 00000001 78",
                FrameError::Unexpected(FrameType::Data),
            ),
            (
                "00000001 01 00000000",
                FrameError::Unexpected(FrameType::Open),
            ),
            (
                "00000001 0B 00000000",
                FrameError::Unexpected(FrameType::UdpOpen),
            ),
            (
                "00000000 05 00000000",
                FrameError::OnControlStream(FrameType::CloseBack),
            ),
            (
                "00000001 0A 00000004 00000000",
                FrameError::ZeroWindowUpdate,
            ),
            (
                "00000000 10 00000000",
                FrameError::OnControlStream(FrameType::OpenAck),
            ),
            ("00000005 10 00000001 00", FrameError::BadOpenAck { len: 1 }),
        ] {
            assert_eq!(HubFrame::decode(raw(&hex(bytes))), Err(expected), "{bytes}");
        }
        assert_eq!(
            FrameError::OnControlStream(FrameType::Open).to_string(),
            "Open frame on stream 0"
        );
        assert_eq!(
            FrameError::Unexpected(FrameType::DataBack).to_string(),
            "unexpected DataBack frame"
        );
    }

    #[test]
    fn tunnel_wide_messages_become_frames_on_stream_0_or_their_session() {
        let ping = control_frame(&EdgeMessage::Ping(Bytes::from_static(&[7; 8])));
        assert_eq!(encoded(&ping), hex("00000000 07 00000008 0707070707070707"));
        let close = control_frame(&HubMessage::UdpClose { session: 4 });
        assert_eq!(encoded(&close), hex("00000004 0E 00000000"));
        let ack = control_frame(&HubMessage::OpenAck { stream: 5 });
        assert_eq!(encoded(&ack), hex("00000005 10 00000000"));
    }
}
