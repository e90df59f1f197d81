//! Tunnel frames (`protocol::frame`), as a peer sends them over TLS.
//!
//! Invariants checked besides "never panics":
//! - a decoded frame re-encodes to exactly the bytes it consumed (the format is canonical);
//! - `Ok(None)` and errors leave the buffer untouched;
//! - feeding the same bytes in chunks (size from the first input byte) yields the same frames
//!   and the same final error or leftover as feeding them at once;
//! - the payload helpers agree with their encoders;
//! - a frame decodes as an edge's or a hub's (typed) in at most one direction, unless it is a
//!   PING, PONG or UDP_CLOSE, and a tunnel-wide message re-encodes to the frame.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::frame::{
    close_payload, control_frame, decode, decode_close, decode_ping, decode_window_credit, encode,
    EdgeFrame, Frame, FrameError, FrameType, HubFrame, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD,
    MAX_PING_PAYLOAD,
};

/// The typed decoders, each for the direction it reads.
fn check_typed(frame: &Frame) {
    let from_edge = EdgeFrame::decode(frame.clone());
    let from_hub = HubFrame::decode(frame.clone());
    let both_ways = matches!(
        frame.frame_type,
        FrameType::Ping | FrameType::Pong | FrameType::UdpClose
    );
    if !both_ways {
        assert!(
            from_edge.is_err() || from_hub.is_err(),
            "{frame:?} read both ways"
        );
    }
    // Canonical, except a CONFIG's JSON, a UDP_CLOSE frame's ignored payload, and the
    // stream id of a PING or PONG, which is read as 0.
    let canonical = !matches!(frame.frame_type, FrameType::Config | FrameType::UdpClose)
        && (frame.stream_id == 0 || !frame.frame_type.is_tunnel_wide());
    if let Ok(EdgeFrame::Control(message)) = &from_edge {
        if canonical {
            assert_eq!(&control_frame(message), frame);
        }
    }
    if let Ok(HubFrame::Control(message)) = &from_hub {
        if canonical {
            assert_eq!(&control_frame(message), frame);
        }
        let again = HubFrame::decode(control_frame(message));
        assert_eq!(again.as_ref(), from_hub.as_ref());
    }
}

/// How a decoding session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Waiting for more bytes; these were left over.
    Pending(Vec<u8>),
    Failed(FrameError),
}

fn check_payload_helpers(frame: &Frame) {
    let payload = &frame.payload[..];
    match decode_window_credit(payload) {
        Ok(credit) => {
            assert_ne!(credit, 0);
            assert_eq!(payload, credit.to_be_bytes());
        }
        Err(FrameError::ZeroWindowUpdate) => assert_eq!(payload, [0u8; 4]),
        Err(FrameError::BadWindowUpdate { len }) => {
            assert_eq!(len, payload.len());
            assert_ne!(len, 4);
        }
        Err(other) => panic!("decode_window_credit: unexpected {other:?}"),
    }
    match decode_ping(frame.payload.clone()) {
        Ok(echoed) => {
            assert_eq!(payload, echoed);
            assert!(payload.len() <= MAX_PING_PAYLOAD);
        }
        Err(FrameError::BadPing { len }) => {
            assert_eq!(len, payload.len());
            assert!(len > MAX_PING_PAYLOAD);
        }
        Err(other) => panic!("decode_ping: unexpected {other:?}"),
    }
    let kind = decode_close(payload);
    assert_eq!(decode_close(&close_payload(kind)), kind);
    if matches!(payload, [] | [1..=4]) {
        // Empty and the known reasons are canonical; anything else reads as Aborted.
        assert_eq!(close_payload(kind)[..], *payload);
    }
}

/// Decodes everything `buf` holds, checking each step.
fn drain(buf: &mut BytesMut, frames: &mut Vec<Frame>) -> Option<FrameError> {
    loop {
        let before = buf.clone();
        match decode(buf) {
            Ok(Some(frame)) => {
                let consumed = before.len() - buf.len();
                assert_eq!(consumed, FRAME_HEADER_LEN + frame.payload.len());
                assert!(frame.payload.len() <= MAX_FRAME_PAYLOAD);
                assert_eq!(&before[consumed..], &buf[..], "rest of buffer changed");
                let mut again = BytesMut::new();
                encode(&frame, &mut again);
                assert_eq!(&again[..], &before[..consumed], "not canonical");
                check_payload_helpers(&frame);
                check_typed(&frame);
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(&before[..], &buf[..], "Ok(None) changed the buffer");
                return None;
            }
            Err(error) => {
                assert!(
                    before.len() >= FRAME_HEADER_LEN,
                    "error before a full header"
                );
                assert_eq!(&before[..], &buf[..], "an error changed the buffer");
                return Some(error);
            }
        }
    }
}

fn decode_at_once(data: &[u8]) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let end = match drain(&mut buf, &mut frames) {
        Some(error) => End::Failed(error),
        None => End::Pending(buf.to_vec()),
    };
    (frames, end)
}

fn decode_in_chunks(data: &[u8], chunk: usize) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk) {
        buf.put_slice(piece);
        if let Some(error) = drain(&mut buf, &mut frames) {
            return (frames, End::Failed(error));
        }
    }
    (frames, End::Pending(buf.to_vec()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = decode_at_once(rest);
    let chunked = decode_in_chunks(rest, usize::from(first % 32) + 1);
    assert_eq!(whole, chunked, "chunked decoding differs");
});
