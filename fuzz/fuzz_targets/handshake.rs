//! The handshake lines (`protocol::handshake`): what an unauthenticated edge sends the hub
//! (`take_line`, `parse_auth_line`) and what a hub sends an edge (`take_line_limited`,
//! `parse_reply`, `parse_config`, the latter also for CONFIG frames).
//!
//! Invariants checked besides "never panics":
//! - line splitting consumes exactly up to and including the first '\n' within the limit,
//!   strips one trailing '\r', leaves the rest of the buffer as it was, and leaves the buffer
//!   untouched when it returns `Ok(None)` or an error;
//! - an accepted auth line re-encodes to exactly the same bytes (the format is canonical);
//! - an accepted reply or config re-encodes to a value that parses back to itself, and
//!   encoding is idempotent; a reply is always one line.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::handshake::{
    encode_auth_line, encode_config, encode_reply, parse_auth_line, parse_config, parse_reply,
    take_line, take_line_limited, HandshakeError, HubReply, MAX_HANDSHAKE_LINE,
};

/// Splits lines off `data` with `limit` until none is left, checking each step; returns them.
fn split_lines(data: &[u8], limit: Option<usize>) -> Vec<Vec<u8>> {
    let max = limit.unwrap_or(MAX_HANDSHAKE_LINE);
    let mut buf = BytesMut::from(data);
    let mut lines = Vec::new();
    loop {
        let before = buf.clone();
        let result = match limit {
            Some(limit) => take_line_limited(&mut buf, limit),
            None => take_line(&mut buf),
        };
        let newline = before.iter().take(max).position(|&b| b == b'\n');
        match result {
            Ok(Some(line)) => {
                let newline = newline.expect("a line without a newline in the window");
                let consumed = before.len() - buf.len();
                assert_eq!(consumed, newline + 1);
                assert!(consumed <= max);
                assert_eq!(&before[consumed..], &buf[..]);
                let raw = &before[..newline];
                let expected = raw.strip_suffix(b"\r").unwrap_or(raw);
                assert_eq!(&line[..], expected);
                lines.push(line.to_vec());
            }
            Ok(None) => {
                assert_eq!(newline, None);
                assert!(before.len() < max);
                assert_eq!(&before[..], &buf[..]);
                return lines;
            }
            Err(HandshakeError::LineTooLong) => {
                assert_eq!(newline, None);
                assert!(before.len() >= max);
                assert_eq!(&before[..], &buf[..]);
                return lines;
            }
            Err(other) => panic!("take_line: unexpected {other:?}"),
        }
    }
}

fn check_auth_line(line: &[u8]) {
    if let Ok(auth) = parse_auth_line(line) {
        let encoded = encode_auth_line(&auth.edge_id, &auth.secret).expect("re-encode");
        assert_eq!(
            encoded.strip_suffix(b"\n"),
            Some(line),
            "auth line not canonical"
        );
    }
}

fn check_reply(line: &[u8]) {
    let Ok(reply) = parse_reply(line) else {
        return;
    };
    let encoded = encode_reply(&reply);
    assert_eq!(
        encoded.iter().position(|&b| b == b'\n'),
        Some(encoded.len() - 1)
    );
    let body = &encoded[..encoded.len() - 1];
    assert_eq!(parse_reply(body).as_ref(), Ok(&reply), "reply round trip");
    assert_eq!(encode_reply(&parse_reply(body).unwrap()), encoded);
    if let HubReply::Accepted(config) = &reply {
        config.validate().expect("an accepted config validates");
        // An accepting reply is also a valid CONFIG payload.
        assert_eq!(parse_config(line).as_ref(), Ok(config));
    }
}

fn check_config(payload: &[u8]) {
    let Ok(config) = parse_config(payload) else {
        return;
    };
    config.validate().expect("a parsed config validates");
    let encoded = encode_config(&config);
    assert_eq!(
        parse_config(&encoded).as_ref(),
        Ok(&config),
        "config round trip"
    );
    assert_eq!(encode_config(&parse_config(&encoded).unwrap()), encoded);
    assert!(!encoded.contains(&b'\n'));
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // Hub side: the auth line, with the real limit.
    for line in split_lines(rest, None) {
        check_auth_line(&line);
    }
    // Edge side: the reply, with a small limit so the limit itself gets exercised.
    let limit = usize::from(first) + 1;
    for line in split_lines(rest, Some(limit)) {
        check_reply(&line);
    }
    // A whole CONFIG frame payload, and the same bytes as a reply line.
    check_config(rest);
    check_reply(rest);
    check_auth_line(rest);
});
