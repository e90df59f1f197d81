//! The QUIC transport's own wire (`protocol::quic_messages`): control-stream messages, datagrams and
//! the open marker with its PROXY v2 header.
//!
//! The first input byte picks a chunk size; the rest is used as a control stream (decoded at
//! once and in chunks) and as one datagram.
//!
//! Invariants checked besides "never panics":
//! - a decoded control message (read as the edge's and as the hub's) re-encodes to exactly the
//!   bytes it consumed, except a CONFIG, whose JSON re-encodes to the same configuration;
//! - `Ok(None)`, a bad type and a bad length leave the buffer untouched; a bad payload
//!   consumes at most that message;
//! - chunked and all-at-once decoding agree;
//! - a datagram splits into a session id and a rest that re-encode to the datagram; an open
//!   re-encodes to the same datagram, its addresses re-encode to a header that parses back,
//!   and it counts as a repeat of itself.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::control::{
    parse_open_header, ControlMessage, EdgeMessage, HubMessage,
};
use remoteingress::fuzzing::frame::{FrameError, FrameType};
use remoteingress::fuzzing::proxy::{encode_v2, ProxyTransport};
use remoteingress::fuzzing::quic_messages::{
    decode_control, encode_control, encode_datagram, encode_open_datagram, is_repeated_open,
    parse_open, split_datagram, QuicWireError, CONTROL_HEADER_LEN, MAX_CONTROL_PAYLOAD,
    OPEN_MARKER, SESSION_ID_LEN,
};

#[derive(Debug, PartialEq, Eq)]
enum End {
    Pending(Vec<u8>),
    Failed(QuicWireError),
}

fn check_open_header(header: &[u8]) {
    if let Some(addrs) = parse_open_header(header) {
        let encoded = encode_v2(ProxyTransport::Datagram, &addrs);
        assert_eq!(parse_open_header(&encoded), Some(addrs));
    }
}

fn drain<M: ControlMessage + PartialEq>(
    buf: &mut BytesMut,
    messages: &mut Vec<M>,
) -> Option<QuicWireError> {
    loop {
        let before = buf.clone();
        match decode_control::<M>(buf) {
            Ok(Some(message)) => {
                let consumed = before.len() - buf.len();
                assert_eq!(&before[consumed..], &buf[..]);
                let mut again = BytesMut::new();
                encode_control(&message, &mut again);
                if message.kind() == FrameType::Config {
                    let decoded = decode_control::<M>(&mut again.clone());
                    assert_eq!(decoded, Ok(Some(message.clone())));
                } else {
                    assert_eq!(&again[..], &before[..consumed], "not canonical");
                }
                if let Some(open) = message.udp_open() {
                    check_open_header(&open.header);
                }
                messages.push(message);
            }
            Ok(None) => {
                assert_eq!(&before[..], &buf[..], "Ok(None) changed the buffer");
                return None;
            }
            Err(error) => {
                assert!(before.len() >= CONTROL_HEADER_LEN);
                let consumed = before.len() - buf.len();
                assert_eq!(&before[consumed..], &buf[..]);
                match &error {
                    // Refused from the header alone.
                    QuicWireError::NotControl(_)
                    | QuicWireError::Frame(
                        FrameError::UnknownType(_) | FrameError::Oversize { .. },
                    ) => {
                        assert_eq!(consumed, 0, "{error:?} changed the buffer")
                    }
                    // A bad payload, or a message the other end sends: that message at most.
                    _ => assert!(consumed <= CONTROL_HEADER_LEN + MAX_CONTROL_PAYLOAD),
                }
                return Some(error);
            }
        }
    }
}

fn decode_at_once<M: ControlMessage + PartialEq>(data: &[u8]) -> (Vec<M>, End) {
    let mut buf = BytesMut::from(data);
    let mut messages = Vec::new();
    let end = match drain(&mut buf, &mut messages) {
        Some(error) => End::Failed(error),
        None => End::Pending(buf.to_vec()),
    };
    (messages, end)
}

fn decode_in_chunks<M: ControlMessage + PartialEq>(data: &[u8], chunk: usize) -> (Vec<M>, End) {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for piece in data.chunks(chunk) {
        buf.put_slice(piece);
        if let Some(error) = drain(&mut buf, &mut messages) {
            return (messages, End::Failed(error));
        }
    }
    (messages, End::Pending(buf.to_vec()))
}

fn check_datagram(data: &[u8]) {
    match split_datagram(Bytes::copy_from_slice(data)) {
        Ok((session, rest)) => {
            assert_eq!(rest.len() + SESSION_ID_LEN, data.len());
            assert_eq!(encode_datagram(session, &rest), data);
            if let Some(addrs) = parse_open(&rest) {
                assert_eq!(rest[0], OPEN_MARKER);
                let header = &rest[1..];
                assert_eq!(parse_open_header(header), Some(addrs));
                assert_eq!(encode_open_datagram(session, header), data);
                assert!(is_repeated_open(&rest, header));
                check_open_header(header);
            }
            // A repeat is exactly the marker and the same header.
            if let Some((_, header)) = rest.split_first() {
                assert_eq!(is_repeated_open(&rest, header), rest[0] == OPEN_MARKER);
            }
            assert!(!is_repeated_open(&rest, &rest));
        }
        Err(QuicWireError::ShortDatagram(len)) => {
            assert_eq!(len, data.len());
            assert!(len < SESSION_ID_LEN);
        }
        Err(other) => panic!("split_datagram: unexpected {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 32) + 1;
    let whole = decode_at_once::<EdgeMessage>(rest);
    let chunked = decode_in_chunks::<EdgeMessage>(rest, chunk);
    assert_eq!(whole, chunked, "chunked decoding differs");
    let whole = decode_at_once::<HubMessage>(rest);
    let chunked = decode_in_chunks::<HubMessage>(rest, chunk);
    assert_eq!(whole, chunked, "chunked decoding differs");
    check_datagram(rest);
    check_open_header(rest);
});
