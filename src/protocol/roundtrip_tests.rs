//! Property tests: every wire format's encoder and decoder are inverses, for arbitrary valid
//! values, and the stream decoders give the same answer however the bytes are split.
//!
//! The fuzz targets in fuzz/ (run with scripts/fuzz.sh) cover the other direction: arbitrary
//! bytes into the decoders.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use crate::config::Int;
use crate::protocol::client_policy::{
    Cidr, CidrList, ClientPolicy, MAX_FIRST_BYTE_TIMEOUT_MS, MAX_PER_SOURCE_LIMIT,
};
use crate::protocol::control::{
    parse_open_header, ControlMessage, EdgeMessage, HubMessage, UdpOpen,
};
use crate::protocol::frame::tests::ALL_TYPES;
use crate::protocol::frame::{
    self, close_payload, decode_close, decode_ping, decode_window_credit, CloseKind, Frame,
    FrameType, ResetReason, FRAME_HEADER_LEN,
};
use crate::protocol::frame::{control_frame, EdgeFrame, HubFrame};
use crate::protocol::handshake::{
    encode_auth_line, encode_config, encode_reply, parse_auth_line, parse_config, parse_reply,
    take_line, take_line_limited, EdgeConfig, HubReply, DEFAULT_MAX_UDP_SESSIONS, MAX_REPLY_LINE,
    MAX_STUN_INTERVAL_SECS, MAX_UDP_SESSIONS_LIMIT, MIN_STUN_INTERVAL_SECS,
};
use crate::protocol::proxy::{
    encode_v1, encode_v2, parse_v1, parse_v2, ProxyAddresses, ProxyHeader, ProxyTransport,
    PROXY_V1_MAX_LEN,
};
use crate::protocol::quic_messages::{
    decode_control, encode_control, encode_datagram, encode_open_datagram, is_repeated_open,
    parse_open, split_datagram, OPEN_MARKER,
};
use crate::protocol::token::{decode_token, encode_token, ConnectionToken};

// ---------------------------------------------------------------------------------------------
// Strategies

fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn ping_payload() -> impl Strategy<Value = Bytes> {
    payload(crate::protocol::frame::MAX_PING_PAYLOAD)
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u32>(),
        prop::sample::select(&ALL_TYPES[..]),
        payload(300),
    )
        .prop_map(|(id, kind, payload)| Frame::new(id, kind, payload))
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        // IPv4-mapped IPv6, which the encoders produce for mixed families.
        any::<[u8; 4]>().prop_map(|v4| IpAddr::V6(std::net::Ipv4Addr::from(v4).to_ipv6_mapped())),
    ]
}

fn any_addresses() -> impl Strategy<Value = ProxyAddresses> {
    (any_ip(), any::<u16>(), any_ip(), any::<u16>()).prop_map(|(s, sp, d, dp)| ProxyAddresses {
        source: SocketAddr::new(s, sp),
        destination: SocketAddr::new(d, dp),
    })
}

fn any_transport() -> impl Strategy<Value = ProxyTransport> {
    prop_oneof![Just(ProxyTransport::Stream), Just(ProxyTransport::Datagram)]
}

/// Edge ids and secrets: 1..=256 bytes of visible ASCII.
fn identity() -> impl Strategy<Value = String> {
    "[!-~]{1,256}"
}

fn port() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn any_config() -> impl Strategy<Value = EdgeConfig> {
    (
        prop::collection::vec(port(), 0..40),
        prop::collection::vec(port(), 0..40),
        MIN_STUN_INTERVAL_SECS..=MAX_STUN_INTERVAL_SECS,
        prop_oneof![Just(DEFAULT_MAX_UDP_SESSIONS), 1..=MAX_UDP_SESSIONS_LIMIT],
        prop::option::of("[!-~]{1,64}"),
        any_client_policy(),
        prop::collection::btree_map(port(), any_client_policy(), 0..3),
    )
        .prop_map(
            |(
                listen_ports,
                listen_ports_udp,
                stun_interval_secs,
                max_udp_sessions,
                instance_id,
                clients,
                port_clients,
            )| {
                EdgeConfig {
                    listen_ports,
                    listen_ports_udp,
                    stun_interval_secs,
                    max_udp_sessions,
                    instance_id,
                    clients,
                    port_clients,
                }
            },
        )
}

fn any_cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a))),
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| format!("{}/{p}", Ipv6Addr::from(a))),
    ]
    .prop_map(|text| Cidr::parse(&text).expect("a generated block parses"))
}

fn any_client_policy() -> impl Strategy<Value = ClientPolicy> {
    let list = || prop::option::of(prop::collection::vec(any_cidr(), 0..4).prop_map(CidrList));
    let count = || prop::option::of((1..=MAX_PER_SOURCE_LIMIT as u32).prop_map(Int));
    (
        list(),
        list(),
        (count(), count(), count()),
        prop::option::of((1..=MAX_UDP_SESSIONS_LIMIT as u32).prop_map(Int)),
        prop::option::of((0..=MAX_FIRST_BYTE_TIMEOUT_MS as u32).prop_map(Int)),
        prop::option::of((32u8..=128).prop_map(Int)),
    )
        .prop_map(
            |(allow, deny, (most, rate, burst), udp, first_byte, prefix)| ClientPolicy {
                allow,
                deny,
                max_connections_per_source: most,
                connection_rate_per_source: rate,
                connection_burst_per_source: burst,
                max_udp_sessions_per_source: udp,
                first_byte_timeout_ms: first_byte,
                ipv6_prefix_length: prefix,
            },
        )
}

fn any_edge_message() -> impl Strategy<Value = EdgeMessage> {
    prop_oneof![
        ping_payload().prop_map(EdgeMessage::Ping),
        ping_payload().prop_map(EdgeMessage::Pong),
        (1..=u32::MAX, any_addresses()).prop_map(|(session, addresses)| {
            EdgeMessage::UdpOpen(UdpOpen::new(session, single_family(&addresses)))
        }),
        (1..=u32::MAX).prop_map(|session| EdgeMessage::UdpClose { session }),
    ]
}

fn any_hub_message() -> impl Strategy<Value = HubMessage> {
    prop_oneof![
        any_config().prop_map(HubMessage::Config),
        ping_payload().prop_map(HubMessage::Ping),
        ping_payload().prop_map(HubMessage::Pong),
        (1..=u32::MAX).prop_map(|session| HubMessage::UdpClose { session }),
    ]
}

/// What the PROXY encoders promise to write: the addresses as given when both are IPv4,
/// otherwise both as IPv6 (IPv4-mapped where needed).
fn single_family(addrs: &ProxyAddresses) -> ProxyAddresses {
    let v6 = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    };
    if addrs.source.is_ipv4() && addrs.destination.is_ipv4() {
        *addrs
    } else {
        ProxyAddresses {
            source: v6(addrs.source),
            destination: v6(addrs.destination),
        }
    }
}

fn encode_frames(frames: &[Frame]) -> BytesMut {
    let mut wire = BytesMut::new();
    for f in frames {
        frame::encode(f, &mut wire);
    }
    wire
}

fn encode_controls<M: ControlMessage>(messages: &[M]) -> BytesMut {
    let mut wire = BytesMut::new();
    for m in messages {
        encode_control(m, &mut wire);
    }
    wire
}

/// Decodes `wire` whole, then in pieces of `chunk` bytes: both give `messages` back.
fn check_control_round_trip<M: ControlMessage + PartialEq>(
    messages: &[M],
    chunk: usize,
) -> Result<(), TestCaseError> {
    let wire = encode_controls(messages);
    let mut buf = wire.clone();
    let mut got = Vec::new();
    while let Some(m) = decode_control::<M>(&mut buf).unwrap() {
        got.push(m);
    }
    prop_assert_eq!(&got, messages);
    prop_assert!(buf.is_empty());

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for piece in wire.chunks(chunk) {
        buf.put_slice(piece);
        loop {
            let before = buf.clone();
            match decode_control::<M>(&mut buf).unwrap() {
                Some(m) => got.push(m),
                None => {
                    prop_assert_eq!(&buf, &before, "Ok(None) changed the buffer");
                    break;
                }
            }
        }
    }
    prop_assert_eq!(&got, messages);
    prop_assert!(buf.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Frames

proptest! {
    #[test]
    fn frames_round_trip_at_once(frames in prop::collection::vec(any_frame(), 1..8)) {
        let wire = encode_frames(&frames);
        prop_assert_eq!(
            wire.len(),
            frames.iter().map(|f| FRAME_HEADER_LEN + f.payload.len()).sum::<usize>()
        );
        let mut buf = wire.clone();
        let mut got = Vec::new();
        while let Some(f) = frame::decode(&mut buf).unwrap() {
            got.push(f);
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frames_round_trip_byte_at_a_time(frames in prop::collection::vec(any_frame(), 1..5)) {
        let wire = encode_frames(&frames);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in wire.iter() {
            buf.put_u8(byte);
            let before = buf.clone();
            match frame::decode(&mut buf).unwrap() {
                Some(f) => got.push(f),
                None => prop_assert_eq!(&buf, &before, "Ok(None) changed the buffer"),
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frames_round_trip_in_random_chunks(
        frames in prop::collection::vec(any_frame(), 1..8),
        chunk in 1usize..64,
    ) {
        let wire = encode_frames(&frames);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.put_slice(piece);
            while let Some(f) = frame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frame_payload_helpers_round_trip(
        stream in any::<u32>(),
        credit in 1..=u32::MAX,
        nonce in any::<[u8; 8]>(),
        reason in prop::sample::select(&[
            ResetReason::Refused,
            ResetReason::Unreachable,
            ResetReason::Aborted,
            ResetReason::Limit,
        ][..]),
    ) {
        for kind in [FrameType::WindowUpdate, FrameType::WindowUpdateBack] {
            let f = Frame::window_update(stream, kind, credit);
            prop_assert_eq!(decode_window_credit(&f.payload), Ok(credit));
        }
        let echoed = Bytes::copy_from_slice(&nonce);
        prop_assert_eq!(decode_ping(Frame::ping(nonce).payload), Ok(echoed.clone()));
        prop_assert_eq!(decode_ping(Frame::pong(nonce).payload), Ok(echoed));
        for kind in [CloseKind::HalfClose, CloseKind::Reset(reason)] {
            prop_assert_eq!(decode_close(&close_payload(kind)), kind);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol

proptest! {
    #[test]
    fn proxy_v1_round_trip(addrs in any_addresses(), trailing in payload(40)) {
        let encoded = encode_v1(&addrs);
        prop_assert!(encoded.len() <= PROXY_V1_MAX_LEN);
        let mut wire = encoded.clone();
        wire.extend_from_slice(&trailing);
        let expected = ProxyHeader::Addresses(single_family(&addrs));
        prop_assert_eq!(parse_v1(&wire), Ok(Some((expected, encoded.len()))));
        for cut in 0..encoded.len() {
            prop_assert_eq!(parse_v1(&wire[..cut]), Ok(None), "cut at {}", cut);
        }
    }

    #[test]
    fn proxy_v2_round_trip(
        addrs in any_addresses(),
        transport in any_transport(),
        trailing in payload(40),
    ) {
        let encoded = encode_v2(transport, &addrs);
        let mut wire = encoded.clone();
        wire.extend_from_slice(&trailing);
        let expected = ProxyHeader::Addresses(single_family(&addrs));
        prop_assert_eq!(
            parse_v2(&wire),
            Ok(Some((expected, Some(transport), encoded.len())))
        );
        for cut in 0..encoded.len() {
            prop_assert_eq!(parse_v2(&wire[..cut]), Ok(None), "cut at {}", cut);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection tokens

fn any_token() -> impl Strategy<Value = ConnectionToken> {
    (
        // Any non-empty text, quotes, backslashes, control and non-ASCII characters included.
        ".{1,60}",
        port(),
        identity(),
        identity(),
        prop::option::of(".{1,80}"),
        prop::collection::vec((".{1,60}", port()), 0..4),
    )
        .prop_map(
            |(hub_host, hub_port, edge_id, secret, hub_fingerprint, more_hubs)| ConnectionToken {
                hub_host,
                hub_port,
                edge_id,
                secret,
                hub_fingerprint,
                more_hubs,
            },
        )
}

proptest! {
    #[test]
    fn token_round_trip(token in any_token(), padding in 0usize..3) {
        let encoded = encode_token(&token);
        prop_assert!(!encoded.contains(['+', '/', '=']));
        prop_assert_eq!(decode_token(&encoded), Ok(token.clone()));
        // Surrounding whitespace and '=' padding are tolerated.
        let pasted = format!(" \t{encoded}{}\r\n", "=".repeat(padding));
        prop_assert_eq!(decode_token(&pasted), Ok(token));
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake

proptest! {
    #[test]
    fn auth_line_round_trip(
        edge_id in identity(),
        secret in identity(),
        crlf in any::<bool>(),
        after in payload(40),
    ) {
        let mut wire = encode_auth_line(&edge_id, &secret).unwrap();
        if crlf {
            let newline = wire.pop();
            prop_assert_eq!(newline, Some(b'\n'));
            wire.extend_from_slice(b"\r\n");
        }
        let line_len = wire.len();
        wire.extend_from_slice(&after);
        let mut buf = BytesMut::from(&wire[..]);
        let line = take_line(&mut buf).unwrap().expect("a whole line");
        // Bytes after the newline (already frames) stay in the buffer.
        prop_assert_eq!(&buf[..], &after[..]);
        let auth = parse_auth_line(&line).unwrap();
        prop_assert_eq!(&auth.edge_id, &edge_id);
        prop_assert_eq!(&auth.secret, &secret);
        for cut in 0..line_len {
            let mut partial = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(take_line(&mut partial), Ok(None));
            prop_assert_eq!(partial.len(), cut);
        }
    }

    #[test]
    fn config_round_trip(config in any_config()) {
        let encoded = encode_config(&config);
        prop_assert!(!encoded.contains(&b'\n'));
        prop_assert_eq!(parse_config(&encoded), Ok(config.clone()));

        let reply = HubReply::Accepted(config);
        let wire = encode_reply(&reply);
        let mut buf = BytesMut::from(&wire[..]);
        let line = take_line_limited(&mut buf, MAX_REPLY_LINE).unwrap().expect("a whole line");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&line[..], &encoded[..]);
        prop_assert_eq!(parse_reply(&line), Ok(reply));
    }

    #[test]
    fn rejection_round_trip(error in ".{0,80}") {
        let reply = HubReply::Rejected { error };
        let wire = encode_reply(&reply);
        // Always one line, whatever the message holds.
        prop_assert_eq!(wire.iter().position(|&b| b == b'\n'), Some(wire.len() - 1));
        prop_assert_eq!(parse_reply(&wire[..wire.len() - 1]), Ok(reply));
    }
}

// ---------------------------------------------------------------------------------------------
// QUIC control messages and datagrams

proptest! {
    #[test]
    fn control_messages_round_trip(
        edge in prop::collection::vec(any_edge_message(), 1..8),
        hub in prop::collection::vec(any_hub_message(), 1..8),
        chunk in 1usize..32,
    ) {
        check_control_round_trip(&edge, chunk)?;
        check_control_round_trip(&hub, chunk)?;
        check_control_round_trip(&edge, 1)?;
        check_control_round_trip(&hub, 1)?;
    }

    #[test]
    fn control_messages_as_frames_decode_only_in_their_direction(
        edge in any_edge_message(),
        hub in any_hub_message(),
    ) {
        let from_edge = control_frame(&edge);
        prop_assert_eq!(EdgeFrame::decode(from_edge.clone()), Ok(EdgeFrame::Control(edge)));
        let from_hub = control_frame(&hub);
        prop_assert_eq!(HubFrame::decode(from_hub.clone()), Ok(HubFrame::Control(hub)));
        // PING, PONG and UDP_CLOSE travel both ways; the rest only one way.
        let both_ways = |f: &Frame| matches!(f.frame_type, FrameType::Ping | FrameType::Pong | FrameType::UdpClose);
        if !both_ways(&from_edge) {
            prop_assert!(HubFrame::decode(from_edge).is_err());
        }
        if !both_ways(&from_hub) {
            prop_assert!(EdgeFrame::decode(from_hub).is_err());
        }
    }

    #[test]
    fn data_datagram_round_trip(session in any::<u32>(), data in payload(300)) {
        let datagram = encode_datagram(session, &data);
        let (got_session, rest) = split_datagram(datagram).unwrap();
        prop_assert_eq!(got_session, session);
        prop_assert_eq!(&rest, &data);
        if data.first() != Some(&OPEN_MARKER) {
            prop_assert_eq!(parse_open(&rest), None);
        }
    }

    #[test]
    fn open_datagram_round_trip(session in any::<u32>(), addrs in any_addresses()) {
        let header = encode_v2(ProxyTransport::Datagram, &addrs);
        let expected = single_family(&addrs);
        prop_assert_eq!(parse_open_header(&header), Some(expected));

        let datagram = encode_open_datagram(session, &header);
        let (got_session, rest) = split_datagram(datagram).unwrap();
        prop_assert_eq!(got_session, session);
        prop_assert_eq!(parse_open(&rest), Some(expected));
        prop_assert!(is_repeated_open(&rest, &header));

        // The same header on the control stream.
        let message = EdgeMessage::UdpOpen(UdpOpen::new(session, addrs));
        let mut wire = BytesMut::new();
        encode_control(&message, &mut wire);
        match decode_control::<EdgeMessage>(&mut wire).unwrap() {
            Some(EdgeMessage::UdpOpen(open)) => {
                prop_assert_eq!(open.session, session);
                prop_assert_eq!(&open.header[..], &header[..]);
                prop_assert_eq!(open.addresses, expected);
            }
            other => prop_assert!(false, "decoded {:?}", other),
        }

        // A stream header is not an open.
        let stream = encode_v2(ProxyTransport::Stream, &addrs);
        prop_assert_eq!(parse_open_header(&stream), None);
    }
}
