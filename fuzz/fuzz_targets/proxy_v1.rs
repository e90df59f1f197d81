//! PROXY protocol v1 headers (`protocol::proxy::parse_v1`), as a client or a proxy in front of
//! the edge sends them.
//!
//! Invariants checked besides "never panics":
//! - a header consumes at most 107 bytes, ending in CRLF;
//! - every prefix of the input either asks for more bytes or gives the same answer as the
//!   whole input (the parser decides as soon as the bytes that prove it are there);
//! - parsed addresses re-encode to a header that parses back to the same addresses, at most
//!   107 bytes long, and the input is byte-identical to that encoding when it was canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::proxy::{
    encode_v1, parse_v1, ProxyError, ProxyHeader, PROXY_V1_MAX_LEN,
};

fuzz_target!(|data: &[u8]| {
    let whole = parse_v1(data);
    match &whole {
        Ok(Some((header, consumed))) => {
            let consumed = *consumed;
            assert!(consumed <= data.len() && consumed <= PROXY_V1_MAX_LEN);
            assert!(data[..consumed].starts_with(b"PROXY "));
            assert!(data[..consumed].ends_with(b"\r\n"));
            if let ProxyHeader::Addresses(addrs) = header {
                let encoded = encode_v1(addrs);
                assert!(encoded.len() <= PROXY_V1_MAX_LEN);
                assert_eq!(
                    parse_v1(&encoded),
                    Ok(Some((*header, encoded.len()))),
                    "re-encoded header does not parse back"
                );
                // Same family on both sides and the addresses in Rust's Display form: the
                // input was canonical exactly when it equals the encoding.
                let text = String::from_utf8_lossy(&data[..consumed]);
                let canonical = format!(
                    "PROXY {} {} {} {} {}\r\n",
                    if addrs.source.is_ipv4() {
                        "TCP4"
                    } else {
                        "TCP6"
                    },
                    addrs.source.ip(),
                    addrs.destination.ip(),
                    addrs.source.port(),
                    addrs.destination.port()
                );
                if text == canonical {
                    assert_eq!(
                        encoded,
                        data[..consumed],
                        "canonical header re-encodes differently"
                    );
                }
            }
        }
        Ok(None) => {
            assert!(data.len() < PROXY_V1_MAX_LEN);
            assert!(!data.contains(&b'\n'));
        }
        Err(ProxyError::V1TooLong) => {
            assert!(data.len() >= PROXY_V1_MAX_LEN);
            assert!(!data[..PROXY_V1_MAX_LEN].contains(&b'\n'));
        }
        Err(_) => {}
    }
    for cut in 0..data.len().min(PROXY_V1_MAX_LEN + 1) {
        let partial = parse_v1(&data[..cut]);
        assert!(
            partial == Ok(None) || partial == whole,
            "prefix of {cut} bytes: {partial:?}, whole input: {whole:?}"
        );
    }
});
